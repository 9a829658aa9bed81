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
    api, bpffs,
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

/// Runs a request on its own task: if the client goes away (Ctrl-C on the CLI), hyper drops the
/// handler, but a change half-way through must still finish or roll back.
async fn to_completion<T: Send + 'static>(
    request: impl std::future::Future<Output = daemon::ApiResult<T>> + Send + 'static,
) -> Reply<T> {
    match tokio::spawn(request).await {
        Ok(result) => result.map(Json),
        Err(e) => Err(ApiError::internal(anyhow::anyhow!("request task failed: {e}"))),
    }
}

async fn list(State(d): State<Shared>) -> Json<Vec<api::NetworkSummary>> {
    Json(d.lock().await.list_networks())
}
async fn create(State(d): State<Shared>, Json(req): Json<api::CreateNetwork>) -> Reply<api::NetworkInspect> {
    to_completion(async move { d.lock_owned().await.create_network(req).await }).await
}
async fn inspect(State(d): State<Shared>, UrlPath(name): UrlPath<String>) -> Reply<api::NetworkInspect> {
    d.lock().await.inspect(&name).map(Json)
}
async fn remove(State(d): State<Shared>, UrlPath(name): UrlPath<String>) -> Reply<serde_json::Value> {
    to_completion(async move { d.lock_owned().await.remove_network(&name).await.map(|()| serde_json::json!({})) }).await
}
async fn connect(
    State(d): State<Shared>,
    UrlPath(name): UrlPath<String>,
    Json(req): Json<api::Connect>,
) -> Reply<api::EndpointCreated> {
    to_completion(async move { d.lock_owned().await.connect(&name, req).await }).await
}
async fn disconnect(
    State(d): State<Shared>,
    UrlPath(name): UrlPath<String>,
    Json(req): Json<api::Disconnect>,
) -> Reply<serde_json::Value> {
    to_completion(async move { d.lock_owned().await.disconnect(&name, req).await.map(|()| serde_json::json!({})) })
        .await
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

/// Holds an exclusive lock on a directory (flock on the directory itself) while it is kept.
/// The daemon locks its state directory and its bpffs directory: two daemons sharing either would
/// undo each other's work (each reconciles the pinned maps to its own state).
fn lock_dir(dir: &Path, what: &str) -> Result<std::fs::File> {
    let file = std::fs::File::open(dir).with_context(|| format!("opening {}", dir.display()))?;
    // SAFETY: flock on an fd we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        bail!("another bpfnet daemon is using the {what} {}", dir.display());
    }
    Ok(file)
}

fn lock_dirs(config: &Config) -> Result<(std::fs::File, std::fs::File)> {
    std::fs::create_dir_all(&config.state_dir).with_context(|| format!("creating {}", config.state_dir.display()))?;
    let state = lock_dir(&config.state_dir, "state directory")?;
    bpffs::ensure(&config.bpffs)?;
    let pins = lock_dir(&config.bpffs, "bpffs directory")?;
    Ok((state, pins))
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
    let _locks = lock_dirs(&config)?;
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
    // Requests run to completion on their own tasks; taking the lock waits for the last one, and
    // stops the collector between two rounds, never inside one.
    let guard = daemon.lock().await;
    collector.abort();
    drop(guard);
    std::fs::remove_file(&config.socket).ok();
    eprintln!("bpfnet: daemon stopped; the datapath stays attached and keeps forwarding");
    Ok(())
}

pub async fn cleanup(config: Config) -> Result<()> {
    let locks = lock_dirs(&config)?;
    daemon::cleanup(&config).await?;
    drop(locks);
    std::fs::remove_file(config.state_dir.join("lock")).ok(); // left by earlier versions
    std::fs::remove_dir(&config.state_dir).ok(); // only if nothing else lives there
    bpffs::remove_all(&config.bpffs)?;
    Ok(())
}
