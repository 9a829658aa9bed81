//! The daemon process: enters its namespace, takes its lock, starts the `Daemon`, serves the
//! HTTP/JSON API on a unix socket (mode 0600), and stops on SIGTERM/SIGINT leaving the datapath up.
use std::{
    os::{fd::AsRawFd, unix::fs::PermissionsExt},
    path::Path,
    sync::Arc,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use axum::{
    extract::{Path as UrlPath, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use tokio::{net::UnixListener, signal::unix::SignalKind, sync::Mutex};

use crate::{
    api,
    daemon::{self, ApiError, Config, Daemon},
};

type Shared = Arc<Mutex<Daemon>>;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(api::ErrorBody { error: self.message })).into_response()
    }
}

type Reply<T> = std::result::Result<Json<T>, ApiError>;

async fn list(State(d): State<Shared>) -> Json<Vec<api::NetworkSummary>> {
    Json(d.lock().await.list_networks())
}
async fn create(State(d): State<Shared>, Json(req): Json<api::CreateNetwork>) -> Reply<api::NetworkInspect> {
    d.lock().await.create_network(req).await.map(Json)
}
async fn inspect(State(d): State<Shared>, UrlPath(name): UrlPath<String>) -> Reply<api::NetworkInspect> {
    d.lock().await.inspect(&name).map(Json)
}
async fn remove(State(d): State<Shared>, UrlPath(name): UrlPath<String>) -> Reply<serde_json::Value> {
    d.lock().await.remove_network(&name).await.map(|()| Json(serde_json::json!({})))
}
async fn connect(
    State(d): State<Shared>,
    UrlPath(name): UrlPath<String>,
    Json(req): Json<api::Connect>,
) -> Reply<api::EndpointCreated> {
    d.lock().await.connect(&name, req).await.map(Json)
}
async fn disconnect(
    State(d): State<Shared>,
    UrlPath(name): UrlPath<String>,
    Json(req): Json<api::Disconnect>,
) -> Reply<serde_json::Value> {
    d.lock().await.disconnect(&name, req).await.map(|()| Json(serde_json::json!({})))
}
async fn stats(State(d): State<Shared>) -> Reply<api::Stats> {
    d.lock().await.stats().map(Json)
}

pub fn router(daemon: Shared) -> Router {
    Router::new()
        .route("/networks", get(list).post(create))
        .route("/networks/{name}", get(inspect).delete(remove))
        .route("/networks/{name}/connect", post(connect))
        .route("/networks/{name}/disconnect", post(disconnect))
        .route("/stats", get(stats))
        .with_state(daemon)
}

/// Holds an exclusive lock on the state directory for the daemon's lifetime.
fn lock_state_dir(dir: &Path) -> Result<std::fs::File> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let file = std::fs::File::create(dir.join("lock"))?;
    // SAFETY: flock on an fd we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        bail!("another bpfnet daemon is using the state directory {}", dir.display());
    }
    Ok(file)
}

fn bind_socket(path: &Path) -> Result<UnixListener> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    // The state-dir lock proves no daemon of ours serves this socket; a leftover file is stale.
    std::fs::remove_file(path).ok();
    // SAFETY: umask only changes this process's file creation mask; restored right after.
    let old = unsafe { libc::umask(0o177) };
    let listener = UnixListener::bind(path);
    unsafe { libc::umask(old) };
    let listener = listener.with_context(|| format!("binding the API socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Runs the daemon until SIGTERM or SIGINT. The caller has already entered the right namespace.
pub async fn run(config: Config) -> Result<()> {
    let _lock = lock_state_dir(&config.state_dir)?;
    let daemon = Arc::new(Mutex::new(Daemon::start(&config).await?));
    let listener = bind_socket(&config.socket)?;
    eprintln!("bpfnet: daemon ready, API on {}", config.socket.display());

    // A container that exits takes its namespace and veth with it: notice and free its address.
    let collector = {
        let daemon = daemon.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            loop {
                tick.tick().await;
                if let Err(e) = daemon.lock().await.collect_gone_endpoints().await {
                    eprintln!("bpfnet: checking endpoints failed: {e:#}");
                }
            }
        })
    };

    let mut term = tokio::signal::unix::signal(SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(SignalKind::interrupt())?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    };
    axum::serve(listener, router(daemon.clone())).with_graceful_shutdown(shutdown).await?;
    collector.abort();
    // Wait for an in-flight request to finish before the state is dropped.
    let _ = daemon.lock().await;
    std::fs::remove_file(&config.socket).ok();
    eprintln!("bpfnet: daemon stopped; the datapath stays attached and keeps forwarding");
    Ok(())
}

pub async fn cleanup(config: Config) -> Result<()> {
    let lock = lock_state_dir(&config.state_dir)?;
    daemon::cleanup(&config).await?;
    drop(lock);
    std::fs::remove_file(config.state_dir.join("lock")).ok();
    std::fs::remove_dir(&config.state_dir).ok(); // only if nothing else lives there
    Ok(())
}
