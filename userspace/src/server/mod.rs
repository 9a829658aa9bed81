//! The daemon process: takes its locks, starts the `Daemon`, serves the HTTP/JSON API on a unix
//! socket (mode 0600), collects endpoints whose namespace has gone, and stops on SIGTERM/SIGINT
//! leaving the datapath up. `socket` binds the API socket without ever taking over another
//! daemon's or destroying a file; `limits` keeps hostile or broken clients from starving others.
//!
//! This is the only place where a daemon [`Error`] becomes an HTTP status code.
mod socket;

use std::{sync::Arc, time::Duration};

use anyhow::{Context, Result};
use axum::{
    extract::{DefaultBodyLimit, Path as UrlPath, State},
    http::{Method, StatusCode, Uri},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use tokio::{runtime::Handle, signal::unix::SignalKind, sync::Mutex};

pub use crate::limits::Limits;

use crate::{
    api, bpffs,
    cluster::Membership,
    conntrack::{self, Conntrack},
    daemon::{self, views, Config, Daemon, DaemonResult, Error},
    limits,
    datapath::Counters,
    netns,
    plumbing::Netlink,
    snapshot::Published,
    worker::{self, on_worker},
};

/// How often the collector looks for endpoints whose namespace has gone.
const COLLECT_EVERY: Duration = Duration::from_secs(2);
/// How often expired connections are removed from the connection table.
const EXPIRE_EVERY: Duration = Duration::from_secs(5);

/// What every handler reaches: the daemon for changes (one at a time, run on the worker), and
/// what reads need without waiting for a change in progress.
#[derive(Clone)]
struct App {
    recorder: crate::metrics::Recorder,
    daemon: Arc<Mutex<Daemon>>,
    worker: Handle,
    published: Published,
    counters: Arc<Counters>,
    conntrack: Arc<std::sync::Mutex<Conntrack>>,
    uplinks: Arc<std::sync::RwLock<Vec<api::Uplink>>>,
    /// This node's membership (`--cluster`).
    cluster: Option<Arc<Membership>>,
}


impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = match &self {
            Error::Invalid(_) => StatusCode::BAD_REQUEST,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::Conflict(_) => StatusCode::CONFLICT,
            Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::Internal(e) => {
                log::error!("request failed: {e:#}");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        (status, Json(api::ErrorBody { error: self.to_string() })).into_response()
    }
}

type Reply<T> = std::result::Result<Json<T>, Error>;

/// [`worker::on_worker`], answered as JSON.
async fn to_completion<T: Send + 'static>(
    worker: &Handle,
    request: impl std::future::Future<Output = DaemonResult<T>> + Send + 'static,
) -> Reply<T> {
    on_worker(worker, request).await.map(Json)
}

async fn list(State(app): State<App>) -> Json<Vec<api::NetworkSummary>> {
    Json(views::list_networks(&app.published.get()))
}
async fn inspect(State(app): State<App>, UrlPath(name): UrlPath<String>) -> Reply<api::NetworkInspect> {
    views::inspect(&app.published.get(), &name).map(Json)
}
async fn ports(State(app): State<App>) -> Json<Vec<api::PortMapping>> {
    Json(views::list_ports(&app.published.get()))
}
async fn stats(State(app): State<App>) -> Reply<api::Stats> {
    let counters = app.counters.read().map_err(Error::internal)?;
    let state = app.published.get();
    Ok(Json(api::Stats {
        counters: counters
            .into_iter()
            .map(|(c, packets)| api::CounterValue { name: c.name().into(), drop: c.is_drop(), packets })
            .collect(),
        networks: state.networks.len(),
        endpoints: state.endpoints.len(),
        services: state.services.len(),
        backends: state.services.values().map(|s| s.backends.len()).sum(),
        conntrack: with_conntrack(&app, |ct| ct.usage()).await?,
        uplinks: app.uplinks.read().unwrap_or_else(|e| e.into_inner()).clone(),
        cluster: app.cluster.as_ref().map(|c| c.status()),
        overlay_networks: state.networks.iter().filter(|n| n.driver.is_overlay()).count(),
        remote_endpoints: state.remote_endpoints.len(),
    }))
}

fn membership(app: &App) -> Result<&Membership, Error> {
    app.cluster.as_deref().ok_or_else(|| {
        Error::invalid("this daemon is not a node of a cluster: start it with --cluster ETCD_URL[,ETCD_URL...] --node NAME")
    })
}
async fn nodes(State(app): State<App>) -> Reply<api::Nodes> {
    Ok(Json(membership(&app)?.list().await?))
}
async fn node_remove(State(app): State<App>, UrlPath(name): UrlPath<String>) -> Reply<serde_json::Value> {
    membership(&app)?.remove(&name).await?;
    Ok(Json(serde_json::json!({})))
}

/// Runs `f` on the connection table off the async threads (a full table takes a while to walk).
async fn with_conntrack<T: Send + 'static>(app: &App, f: impl FnOnce(&mut Conntrack) -> T + Send + 'static) -> Result<T, Error> {
    let ct = app.conntrack.clone();
    tokio::task::spawn_blocking(move || f(&mut ct.lock().unwrap_or_else(|e| e.into_inner())))
        .await
        .map_err(|e| Error::internal(anyhow::anyhow!("connection table task: {e}")))
}
async fn conntrack_list(State(app): State<App>) -> Reply<Vec<api::Connection>> {
    with_conntrack(&app, |ct| ct.connections()).await.map(Json)
}
async fn conntrack_flush(State(app): State<App>) -> Reply<api::Flushed> {
    let connections = with_conntrack(&app, |ct| ct.flush()).await?;
    log::info!("connection table flushed: {connections} connections");
    Ok(Json(api::Flushed { connections }))
}
async fn create(State(app): State<App>, Json(req): Json<api::CreateNetwork>) -> Reply<api::NetworkInspect> {
    to_completion(&app.worker, async move { app.daemon.lock_owned().await.create_network(req).await }).await
}
async fn remove(State(app): State<App>, UrlPath(name): UrlPath<String>) -> Reply<serde_json::Value> {
    let worker = app.worker.clone();
    to_completion(&worker, async move {
        app.daemon.lock_owned().await.remove_network(&name).await.map(|()| serde_json::json!({}))
    })
    .await
}
async fn connect(
    State(app): State<App>,
    UrlPath(name): UrlPath<String>,
    Json(req): Json<api::Connect>,
) -> Reply<api::EndpointCreated> {
    // Opening the namespace is the user's input meeting the filesystem: done before the lock.
    let ns = netns::resolve(&req.netns).map_err(Error::invalid)?;
    to_completion(&app.worker, async move { app.daemon.lock_owned().await.connect(&name, ns, req).await }).await
}
async fn disconnect(
    State(app): State<App>,
    UrlPath(name): UrlPath<String>,
    Json(req): Json<api::Disconnect>,
) -> Reply<serde_json::Value> {
    let identity = netns::resolve(&req.netns).ok().map(|ns| (ns.dev, ns.inode));
    let worker = app.worker.clone();
    to_completion(&worker, async move {
        app.daemon.lock_owned().await.disconnect(&name, &req.netns, identity).await.map(|()| serde_json::json!({}))
    })
    .await
}

async fn endpoints(State(app): State<App>) -> Json<Vec<api::EndpointView>> {
    Json(views::list_endpoints(&app.published.get()))
}
async fn endpoint_inspect(State(app): State<App>, UrlPath(id): UrlPath<String>) -> Reply<api::EndpointView> {
    views::inspect_endpoint(&app.published.get(), &id).map(Json)
}
async fn allocate(State(app): State<App>, Json(req): Json<api::Allocate>) -> Reply<api::EndpointView> {
    let frontend = match req.frontend.as_deref() {
        None => crate::state::Frontend::Api,
        Some(name) => crate::state::Frontend::parse(name)
            .ok_or_else(|| Error::invalid(format!("unknown front-end {name:?}: expected api, docker or cni")))?,
    };
    to_completion(&app.worker, async move {
        app.daemon.lock_owned().await.allocate_for(&req.network, req.name, req.spec, frontend, req.id).await
    })
    .await
}
async fn attach(
    State(app): State<App>,
    UrlPath(id): UrlPath<String>,
    Json(req): Json<api::Attach>,
) -> Reply<api::EndpointCreated> {
    let ns = netns::resolve(&req.netns).map_err(Error::invalid)?;
    to_completion(&app.worker, async move { app.daemon.lock_owned().await.attach(&id, ns, req).await }).await
}
async fn detach(State(app): State<App>, UrlPath(id): UrlPath<String>) -> Reply<api::EndpointView> {
    to_completion(&app.worker.clone(), async move { app.daemon.lock_owned().await.detach(&id).await }).await
}
async fn release(State(app): State<App>, UrlPath(id): UrlPath<String>) -> Reply<serde_json::Value> {
    let worker = app.worker.clone();
    to_completion(&worker, async move { app.daemon.lock_owned().await.release(&id).await.map(|()| serde_json::json!({})) })
        .await
}

async fn services(State(app): State<App>) -> Json<Vec<api::ServiceSummary>> {
    Json(views::list_services(&app.published.get()))
}
async fn service_inspect(State(app): State<App>, UrlPath(name): UrlPath<String>) -> Reply<api::ServiceInspect> {
    views::inspect_service(&app.published.get(), &name).map(Json)
}
/// Resolves each request's backends (their namespaces, each opened once) before the daemon's lock.
fn resolve_all(reqs: Vec<api::CreateService>) -> Result<Vec<(api::CreateService, Vec<daemon::BackendArg>)>, Error> {
    let mut resolver = daemon::BackendResolver::default();
    reqs.into_iter()
        .map(|req| {
            let backends = resolver.resolve(&req.backends)?;
            Ok((req, backends))
        })
        .collect()
}
async fn service_create(State(app): State<App>, Json(req): Json<api::CreateService>) -> Reply<api::ServiceInspect> {
    let name = req.name.clone();
    let reqs = resolve_all(vec![req])?;
    to_completion(&app.worker, async move {
        let mut daemon = app.daemon.lock_owned().await;
        daemon.create_services(reqs).await?;
        daemon.inspect_service(&name)
    })
    .await
}
async fn service_create_batch(State(app): State<App>, Json(req): Json<api::CreateServices>) -> Reply<api::ServicesCreated> {
    let reqs = tokio::task::spawn_blocking(move || resolve_all(req.services))
        .await
        .map_err(|e| Error::internal(anyhow::anyhow!("resolving backends: {e}")))??;
    to_completion(&app.worker, async move { app.daemon.lock_owned().await.create_services(reqs).await }).await
}
async fn service_remove(State(app): State<App>, UrlPath(name): UrlPath<String>) -> Reply<serde_json::Value> {
    let worker = app.worker.clone();
    to_completion(&worker, async move {
        app.daemon.lock_owned().await.remove_service(&name).await.map(|()| serde_json::json!({}))
    })
    .await
}
async fn backend_add(
    State(app): State<App>,
    UrlPath(name): UrlPath<String>,
    Json(req): Json<api::AddBackend>,
) -> Reply<api::ServiceInspect> {
    let arg = daemon::resolve_backends(&[req.backend])?.remove(0);
    to_completion(&app.worker, async move { app.daemon.lock_owned().await.add_backend(&name, arg).await }).await
}
async fn backend_remove(
    State(app): State<App>,
    UrlPath(name): UrlPath<String>,
    Json(req): Json<api::RemoveBackend>,
) -> Reply<api::ServiceInspect> {
    let arg = daemon::resolve_backends(&[req.netns])?.remove(0);
    to_completion(&app.worker, async move { app.daemon.lock_owned().await.remove_backend(&name, arg, req.drain).await }).await
}

async fn no_such_route(method: Method, uri: Uri) -> Error {
    Error::not_found(format!("the API has no {method} {}", uri.path()))
}

fn router(app: App) -> Router {
    Router::new()
        .route("/networks", get(list).post(create))
        .route("/networks/{name}", get(inspect).delete(remove))
        .route("/networks/{name}/connect", post(connect))
        .route("/networks/{name}/disconnect", post(disconnect))
        .route("/endpoints", get(endpoints).post(allocate))
        .route("/endpoints/{id}", get(endpoint_inspect).delete(release))
        .route("/endpoints/{id}/attach", post(attach))
        .route("/endpoints/{id}/detach", post(detach))
        .route("/stats", get(stats))
        .route("/nodes", get(nodes))
        .route("/nodes/{name}", axum::routing::delete(node_remove))
        .route("/conntrack", get(conntrack_list).delete(conntrack_flush))
        .route("/ports", get(ports))
        .route("/services", get(services).post(service_create))
        .route("/services/batch", post(service_create_batch).layer(DefaultBodyLimit::max(limits::MAX_BATCH_BODY)))
        .route("/services/{name}", get(service_inspect).delete(service_remove))
        .route("/services/{name}/backends", post(backend_add))
        .route("/services/{name}/backends/remove", post(backend_remove))
        .route_layer(axum::middleware::from_fn_with_state(app.recorder.clone(), crate::metrics::Recorder::layer))
        .fallback(no_such_route)
        .with_state(app)
}

/// Holds an exclusive lock on a directory (flock on the directory itself) while it is kept.
/// The daemon locks its state directory and its bpffs directory: two daemons sharing either would
/// undo each other's work (each reconciles the pinned maps to its own state).
fn lock_dir(dir: &std::path::Path, what: &str) -> Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(dir).with_context(|| format!("opening {}", dir.display()))?;
    // SAFETY: flock on an fd we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        anyhow::bail!("another bpfnet daemon is using the {what} {}", dir.display());
    }
    Ok(file)
}

fn lock_dirs(config: &Config) -> Result<(std::fs::File, std::fs::File)> {
    crate::state::make_private_dir(&config.state_dir)?;
    let state = lock_dir(&config.state_dir, "state directory")?;
    bpffs::ensure(&config.bpffs)?;
    let pins = lock_dir(&config.bpffs, "bpffs directory")?;
    Ok((state, pins))
}

/// Runs the daemon until SIGTERM or SIGINT. The caller has already entered the right namespace.
pub async fn run(config: Config, limits: Limits) -> Result<()> {
    limits::raise_fd_limit();
    // Checked before touching anything, so a refused start changes nothing.
    socket::check_free(&config.socket)?;
    let _locks = lock_dirs(&config)?;
    let worker = worker::start()?;
    let daemon = {
        let config = config.clone();
        worker.spawn(async move { Daemon::start(&config).await }).await??
    };
    let published = daemon.published();
    let uplinks = Arc::new(std::sync::RwLock::new(daemon.uplinks()));
    let counters = Arc::new(Counters::open(&config.bpffs)?);
    let conntrack = Arc::new(std::sync::Mutex::new(Conntrack::open(&config.bpffs)?));
    let cluster = match &config.cluster {
        Some(cluster) => Some(Arc::new(join_cluster(cluster, &daemon.uplinks()).await?)),
        None => None,
    };
    let daemon = Arc::new(Mutex::new(daemon));
    let cluster_sync = match &cluster {
        Some(cluster) => {
            let (mtu, encap) = config.cluster.as_ref().map_or((None, true), |c| (c.overlay_mtu, c.encap_in_datapath));
            Some(follow_cluster(cluster.clone(), daemon.clone(), &worker, mtu, encap).await?)
        }
        None => None,
    };
    let recorder = crate::metrics::Recorder::default();
    let bound = socket::bind(&config.socket)?;
    let dns = config.dns.enabled.then(|| crate::dns::spawn(published.clone(), config.dns.clone()));
    let plugin = match &config.docker_plugin {
        Some(dir) => Some(serve_docker_plugin(dir, daemon.clone(), worker.clone(), limits, recorder.clone())?),
        None => None,
    };
    log::info!(
        "daemon ready, API on {} (at most {} connections, {} s per request head or body)",
        config.socket.display(),
        limits.max_connections,
        limits.client_timeout.as_secs_f32()
    );

    // A container that exits takes its namespace and veth with it: notice and free its address.
    // The same tick follows the namespace's addresses (an uplink's new address, say).
    let collector = {
        let (daemon, published, uplinks) = (daemon.clone(), published.clone(), uplinks.clone());
        worker.spawn(async move {
            let netlink = match Netlink::connect() {
                Ok(netlink) => netlink,
                Err(e) => return log::error!("the collector cannot open netlink: {e:#}"),
            };
            let mut tick = tokio::time::interval(COLLECT_EVERY);
            loop {
                tick.tick().await;
                if let Err(e) = daemon::collect_gone_endpoints(&daemon, &published, &netlink).await {
                    log::warn!("checking endpoints failed: {e:#}");
                }
                let mut d = daemon.lock().await;
                if let Err(e) = d.refresh_addresses().await {
                    log::warn!("following the namespace's addresses failed: {e:#}");
                }
                d.finish_drains();
                d.reconcile_claims().await;
                *uplinks.write().unwrap_or_else(|e| e.into_inner()) = d.uplinks();
            }
        })
    };

    // The datapath stamps deadlines; removing connections past theirs is the daemon's job.
    let expirer = {
        let ct = conntrack.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(EXPIRE_EVERY);
            loop {
                tick.tick().await;
                let ct = ct.clone();
                let removed = tokio::task::spawn_blocking(move || {
                    ct.lock().unwrap_or_else(|e| e.into_inner()).expire(conntrack::now_ns())
                })
                .await
                .unwrap_or(0);
                if removed > 0 {
                    log::debug!("connection table: {removed} expired entries removed");
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
    let metrics = match config.metrics {
        Some(addr) => {
            let sources = crate::metrics::Sources {
                published: published.clone(),
                counters: counters.clone(),
                conntrack: conntrack.clone(),
                recorder: recorder.clone(),
            };
            Some(crate::metrics::serve(addr, sources).await?)
        }
        None => None,
    };
    let app = App { recorder, daemon: daemon.clone(), worker, published, counters, conntrack, uplinks, cluster };
    limits::serve(bound.listener, router(app), &limits, shutdown).await;
    // Changes run to completion on their own tasks; taking the lock waits for the one in progress
    // (those queued behind it never start), and stops the collector between two batches. Idle
    // client connections are simply dropped with the process.
    let guard = daemon.lock().await;
    collector.abort();
    expirer.abort();
    if let Some(tasks) = cluster_sync {
        for task in tasks {
            task.abort();
        }
    }
    if let Some(dns) = dns {
        dns.abort();
    }
    if let Some(metrics) = metrics {
        metrics.abort();
    }
    socket::remove_if_ours(&config.socket, bound.inode);
    if let Some((task, path, inode)) = plugin {
        task.abort();
        socket::remove_if_ours(&path, inode);
    }
    drop(guard);
    log::info!("daemon stopped; the datapath stays attached and keeps forwarding");
    Ok(())
}

/// Registers this node in its cluster, reachable at `--underlay-address` or else its uplink's
/// address.
async fn join_cluster(config: &crate::cluster::ClusterConfig, uplinks: &[api::Uplink]) -> Result<Membership> {
    let underlay = match config.underlay {
        Some(address) => address,
        None => match uplinks.first() {
            Some(uplink) => uplink.address.parse().with_context(|| format!("the uplink {}'s address {:?}", uplink.interface, uplink.address))?,
            None => anyhow::bail!(
                "a cluster node needs an underlay address, where other nodes reach it: give --underlay-address, or an \
                 --uplink with an IPv4 address"
            ),
        },
    };
    Membership::start(config.clone(), underlay).await
}

/// Readies this node for overlay networks, then keeps it in line with the cluster: a watch of
/// etcd (on this runtime) hands each new view to the daemon (on the worker, under its lock).
async fn follow_cluster(
    cluster: Arc<Membership>,
    daemon: Arc<Mutex<Daemon>>,
    worker: &Handle,
    overlay_mtu: Option<u32>,
    encap_in_datapath: bool,
) -> Result<Vec<tokio::task::JoinHandle<()>>> {
    let store: Arc<dyn crate::store::shared::SharedStore> = cluster.clone();
    {
        let daemon = daemon.clone();
        worker.spawn(async move { daemon.lock().await.enable_overlay(store, overlay_mtu, encap_in_datapath).await }).await??;
    }
    let (views, mut view) = tokio::sync::watch::channel(None);
    let watch = tokio::spawn(cluster.watch(views));
    let sync = worker.spawn(async move {
        while view.changed().await.is_ok() {
            let latest = view.borrow_and_update().clone();
            if let Some(latest) = latest {
                daemon.lock().await.sync_cluster(latest).await;
            }
        }
    });
    Ok(vec![watch, sync])
}

/// Serves the Docker plugin's socket in `dir` (made if missing) until the returned task is
/// aborted; also returns the socket's path and inode, for its removal.
fn serve_docker_plugin(
    dir: &std::path::Path,
    daemon: Arc<Mutex<Daemon>>,
    worker: Handle,
    limits: Limits,
    recorder: crate::metrics::Recorder,
) -> Result<(tokio::task::JoinHandle<()>, std::path::PathBuf, u64)> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating the Docker plugin folder {}", dir.display()))?;
    let path = crate::docker::socket_path(dir);
    socket::check_free(&path)?;
    let bound = socket::bind(&path)?;
    log::info!("Docker network plugin {:?} on {}", crate::docker::PLUGIN_NAME, path.display());
    let router = crate::docker::router(daemon, worker, recorder);
    let task = tokio::spawn(async move { limits::serve(bound.listener, router, &limits, std::future::pending()).await });
    Ok((task, path, bound.inode))
}

pub async fn cleanup(config: Config) -> Result<()> {
    let locks = lock_dirs(&config)?;
    daemon::cleanup(&config).await?;
    drop(locks);
    socket::remove_if_stale(&config.socket);
    std::fs::remove_file(config.state_dir.join("lock")).ok(); // left by earlier versions
    std::fs::remove_dir(&config.state_dir).ok(); // only if nothing else lives there
    bpffs::remove_all(&config.bpffs)?;
    Ok(())
}
