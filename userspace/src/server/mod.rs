//! The HTTP/JSON API front-end: its routes and handlers over the daemon (changes on the worker,
//! reads from the published snapshot). `socket` binds the API socket (mode 0600) without ever
//! taking over another daemon's or destroying a file. The process around it (locks, tickers, the
//! cluster's watch, shutdown) is `crate::runtime`'s.
//!
//! This is the only place where a daemon [`Error`] becomes an HTTP status code.
pub(crate) mod socket;

use std::sync::Arc;

use anyhow::Result;
use axum::{
    extract::{DefaultBodyLimit, Path as UrlPath, State},
    http::{Method, StatusCode, Uri},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use tokio::{runtime::Handle, sync::Mutex};

use crate::{
    api,
    cluster::Membership,
    conntrack::Conntrack,
    daemon::{self, views, Daemon, DaemonResult, Error},
    limits,
    datapath::Counters,
    netns,
    snapshot::Published,
    worker::on_worker,
};

/// What every handler reaches: the daemon for changes (one at a time, run on the worker), and
/// what reads need without waiting for a change in progress.
#[derive(Clone)]
pub(crate) struct App {
    pub recorder: crate::metrics::Recorder,
    pub daemon: Arc<Mutex<Daemon>>,
    pub worker: Handle,
    pub published: Published,
    pub counters: Arc<Counters>,
    pub conntrack: Arc<std::sync::Mutex<Conntrack>>,
    pub uplinks: Arc<std::sync::RwLock<Vec<api::Uplink>>>,
    /// This node's membership (`--cluster`).
    pub cluster: Option<Arc<Membership>>,
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

pub(crate) fn router(app: App) -> Router {
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

