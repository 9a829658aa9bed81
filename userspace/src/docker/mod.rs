//! The Docker front-end: bpfnet as a Docker network plugin (libnetwork's remote driver
//! protocol), served by the daemon on a unix socket in the folder dockerd looks in for plugins
//! (`bpfnet daemon --docker-plugin[=DIR]`, `/run/docker/plugins/bpfnet.sock` by default).
//! `docker network create -d bpfnet` makes a bpfnet network, `docker run --network` an endpoint,
//! `-p` published ports; every call maps onto the daemon's endpoint lifecycle:
//!
//! | Docker's call | bpfnet |
//! |---|---|
//! | CreateNetwork / DeleteNetwork | network create (Docker's pool and gateway) / rm |
//! | CreateEndpoint | allocate, under Docker's endpoint id and with Docker's address |
//! | Join | attach: the veth pair made here, its container side handed to Docker |
//! | ProgramExternalConnectivity / Revoke... | publish the port map / withdraw it |
//! | Leave / DeleteEndpoint | detach / release |
//!
//! With `--ipam-driver bpfnet` Docker also asks bpfnet for the subnet and every address
//! (RequestPool, RequestAddress, ReleaseAddress, ReleasePool; see `daemon::pools`): subnets are
//! then chosen clear of every bpfnet network and of what the host routes.
//!
//! Docker's own resolver (127.0.0.11) keeps serving names on these networks.
//!
//! Clusters: a Docker network per node can stand for an overlay network of the cluster
//! (`docker network create -d bpfnet --ipam-driver bpfnet --subnet SUBNET -o bpfnet.overlay=NAME
//! NAME`, on each node; Docker 20.10's remote drivers are local-scope): its containers are then
//! endpoints of the overlay network, their addresses claimed cluster-wide, and they reach the
//! containers of every node. Names of other nodes' containers come from bpfnet's resolver on the
//! gateway (`docker run --dns GATEWAY`: Docker's resolver forwards what it does not know).
pub mod protocol;

use std::{collections::BTreeMap, net::IpAddr, path::Path, sync::Arc};

use axum::{
    body::Bytes,
    extract::{Path as UrlPath, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::post,
    Json, Router,
};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use tokio::{runtime::Handle, sync::Mutex};

use crate::{
    api,
    daemon::{Daemon, DaemonResult, Error},
    ipam,
    state::Frontend,
};
use protocol::{GENERIC_OPTIONS, INTERNAL_OPTION, OVERLAY_OPTION};

/// The plugin's name: `docker network create -d bpfnet`.
pub const PLUGIN_NAME: &str = "bpfnet";
/// Where dockerd looks for plugin sockets.
pub const DEFAULT_PLUGIN_DIR: &str = "/run/docker/plugins";
/// The address space of bpfnet's IPAM driver (Docker requires one; bpfnet has one).
const ADDRESS_SPACE: &str = "bpfnet";
/// Docker names the interface it moves into the container this, plus a number (eth0, eth1, ...).
const INTERFACE_PREFIX: &str = "eth";

/// The socket of the plugin in `dir`.
pub fn socket_path(dir: &Path) -> std::path::PathBuf {
    dir.join(format!("{PLUGIN_NAME}.sock"))
}

/// The bpfnet network that stands for Docker's network `id`: named by the first 12 digits of the
/// id, as `docker network ls` shows it (Docker does not tell a driver the network's name).
pub fn network_name(docker_id: &str) -> String {
    format!("docker-{}", &docker_id[..docker_id.len().min(12)])
}

#[derive(Clone)]
struct Plugin {
    daemon: Arc<Mutex<Daemon>>,
    worker: Handle,
    recorder: crate::metrics::Recorder,
}

/// An answer in the protocol's shape: the body on success, `{"Err": ...}` on failure.
struct Answer(Result<Value, (StatusCode, String)>);

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        match self.0 {
            Ok(body) => Json(body).into_response(),
            Err((status, message)) => (status, Json(json!({ "Err": message }))).into_response(),
        }
    }
}

impl From<Error> for Answer {
    fn from(e: Error) -> Self {
        if let Error::Internal(e) = &e {
            log::error!("docker plugin call failed: {e:#}");
        }
        Answer(Err((StatusCode::INTERNAL_SERVER_ERROR, format!("bpfnet: {e}"))))
    }
}

fn refused(message: impl Into<String>) -> Answer {
    Answer(Err((StatusCode::BAD_REQUEST, format!("bpfnet: {}", message.into()))))
}

/// Docker sends JSON without a content type; a call without a body (Plugin.Activate) is `{}`.
fn parse<T: DeserializeOwned>(call: &str, body: &Bytes) -> Result<T, Answer> {
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) { b"{}" } else { body };
    serde_json::from_slice(body).map_err(|e| refused(format!("unreadable {call} request: {e}")))
}

/// Runs a change on the worker under the daemon's lock, to completion even if dockerd hangs up.
async fn change<T: Send + 'static>(
    plugin: &Plugin,
    f: impl for<'a> FnOnce(&'a mut Daemon) -> std::pin::Pin<Box<dyn std::future::Future<Output = DaemonResult<T>> + Send + 'a>> + Send + 'static,
) -> DaemonResult<T> {
    let daemon = plugin.daemon.clone();
    crate::worker::on_worker(&plugin.worker, async move { f(&mut *daemon.lock().await).await }).await
}

/// `Ok` for what Docker asks to remove and bpfnet no longer has: Docker repeats removals (after
/// its own restart, or when a first attempt timed out).
fn gone_is_done(result: DaemonResult<()>) -> DaemonResult<()> {
    match result {
        Err(Error::NotFound(_)) => Ok(()),
        other => other,
    }
}

async fn call(State(plugin): State<Plugin>, UrlPath(name): UrlPath<String>, body: Bytes) -> Answer {
    log::debug!("docker: {name} {}", String::from_utf8_lossy(&body));
    let start = std::time::Instant::now();
    let (Ok(answer) | Err(answer)) = handle(&plugin, &name, &body).await;
    // Calls of the protocol only: a route per unknown name would be a series per typo.
    if !matches!(&answer.0, Err((StatusCode::NOT_FOUND, _))) {
        plugin.recorder.request("POST", &format!("docker:{name}"), start.elapsed().as_secs_f64());
    }
    answer
}

async fn handle(plugin: &Plugin, name: &str, body: &Bytes) -> Result<Answer, Answer> {
    let ok = |v: Value| Ok(Answer(Ok(v)));
    match name {
        "Plugin.Activate" => ok(json!({ "Implements": ["NetworkDriver", "IpamDriver"] })),
        "IpamDriver.GetCapabilities" => ok(json!({ "RequiresMACAddress": false, "RequiresRequestReplay": false })),
        "IpamDriver.GetDefaultAddressSpaces" => {
            ok(json!({ "LocalDefaultAddressSpace": ADDRESS_SPACE, "GlobalDefaultAddressSpace": ADDRESS_SPACE }))
        }
        "IpamDriver.RequestPool" => {
            let req: protocol::RequestPool = parse(name, body)?;
            let requested = (!req.pool.is_empty()).then_some(req.pool);
            let range = (!req.sub_pool.is_empty()).then_some(req.sub_pool);
            let v6 = req.v6;
            let subnet = change(plugin, move |d| {
                Box::pin(async move { d.request_pool(requested.as_deref(), range.as_deref(), v6).await })
            })
            .await?;
            ok(json!({ "PoolID": subnet.to_string(), "Pool": subnet.to_string(), "Data": {} }))
        }
        "IpamDriver.RequestAddress" => {
            let req: protocol::RequestAddress = parse(name, body)?;
            let requested: Option<IpAddr> = match req.address.as_str() {
                "" => None,
                text => Some(text.parse().map_err(|_| refused(format!("invalid address {text:?}")))?),
            };
            let gateway = req
                .options
                .as_ref()
                .and_then(|o| o.get("RequestAddressType"))
                .is_some_and(|t| t == protocol::GATEWAY_ADDRESS);
            let pool = req.pool_id;
            let (ip, prefix) =
                change(plugin, move |d| Box::pin(async move { d.request_address(&pool, requested, gateway).await })).await?;
            ok(json!({ "Address": format!("{ip}/{prefix}"), "Data": {} }))
        }
        "IpamDriver.ReleaseAddress" => {
            let req: protocol::ReleaseAddress = parse(name, body)?;
            let ip: IpAddr = req.address.parse().map_err(|_| refused(format!("invalid address {:?}", req.address)))?;
            let pool = req.pool_id;
            change(plugin, move |d| Box::pin(async move { gone_is_done(d.release_address(&pool, ip)) })).await?;
            ok(json!({}))
        }
        "IpamDriver.ReleasePool" => {
            let req: protocol::ReleasePool = parse(name, body)?;
            let pool = req.pool_id;
            change(plugin, move |d| Box::pin(async move { gone_is_done(d.release_pool(&pool)) })).await?;
            ok(json!({}))
        }
        "NetworkDriver.GetCapabilities" => ok(json!({ "Scope": "local", "ConnectivityScope": "local" })),
        "NetworkDriver.CreateNetwork" => {
            let req: protocol::CreateNetwork = parse(name, body)?;
            if let Some(binding) = overlay_binding(&req).map_err(refused)? {
                let id = req.network_id.clone();
                change(plugin, move |d| {
                    Box::pin(async move {
                        d.bind_docker_overlay(&id, &binding.overlay, &binding.pool, binding.gateway.as_deref(), binding.from_bpfnet_ipam)
                    })
                })
                .await?;
                return ok(json!({}));
            }
            let create = network_request(&req).map_err(refused)?;
            log::info!("docker: creating network {} for Docker's {}", create.name, &req.network_id);
            change(plugin, move |d| Box::pin(async move { d.create_network(create).await.map(|_| ()) })).await?;
            ok(json!({}))
        }
        "NetworkDriver.DeleteNetwork" => {
            let req: protocol::NetworkCall = parse(name, body)?;
            let id = req.network_id;
            change(plugin, move |d| {
                Box::pin(async move {
                    // One that stands for an overlay network only goes: the network is the cluster's.
                    if d.unbind_docker_network(&id)? {
                        return Ok(());
                    }
                    gone_is_done(d.remove_network(&network_name(&id)).await)
                })
            })
            .await?;
            ok(json!({}))
        }
        "NetworkDriver.CreateEndpoint" => {
            let req: protocol::CreateEndpoint = parse(name, body)?;
            let iface = req.interface.unwrap_or_default();
            let bare = |text: &str| -> Result<Option<IpAddr>, Answer> {
                match text.split_once('/').map_or(text, |(a, _)| a) {
                    "" => Ok(None),
                    ip => Ok(Some(ip.parse().map_err(|_| refused(format!("invalid address {text:?}")))?)),
                }
            };
            let address = bare(&iface.address)?;
            let address6 = bare(&iface.address_ipv6)?;
            let docker_network = req.network_id.clone();
            let id = req.endpoint_id.clone();
            let view = change(plugin, move |d| {
                Box::pin(async move {
                    let network = d.docker_network(&docker_network);
                    for ip in address.into_iter().chain(address6) {
                        d.reclaim_address(&network, ip, Frontend::Docker).await?;
                    }
                    let spec = api::EndpointSpec {
                        ip: address.map(|a| a.to_string()),
                        ip6: address6.map(|a| a.to_string()),
                        ..Default::default()
                    };
                    let name = format!("docker-{}", &id[..id.len().min(12)]);
                    d.allocate_for(&network, name, spec, Frontend::Docker, Some(id)).await
                })
            })
            .await?;
            // Docker gave the address; the MAC is bpfnet's (derived from the address, as
            // Docker's bridge does), unless Docker gave one, which must then be the same.
            if !iface.mac_address.is_empty() {
                if !iface.mac_address.eq_ignore_ascii_case(&view.mac_address) {
                    let id = req.endpoint_id.clone();
                    change(plugin, move |d| Box::pin(async move { d.release(&id).await })).await.ok();
                    return Err(refused(format!(
                        "bpfnet derives each endpoint's MAC address from its IP address ({}); it cannot use {}",
                        view.mac_address, iface.mac_address
                    )));
                }
                return ok(json!({ "Interface": {} }));
            }
            let mut out = serde_json::Map::new();
            if address.is_none() && !view.ipv4_address.is_empty() {
                out.insert("Address".into(), json!(view.ipv4_address));
            }
            if address6.is_none() && !view.ipv6_address.is_empty() {
                out.insert("AddressIPv6".into(), json!(view.ipv6_address));
            }
            out.insert("MacAddress".into(), json!(view.mac_address));
            ok(json!({ "Interface": out }))
        }
        "NetworkDriver.DeleteEndpoint" => {
            let req: protocol::EndpointCall = parse(name, body)?;
            let id = req.endpoint_id;
            change(plugin, move |d| Box::pin(async move { gone_is_done(d.release(&id).await) })).await?;
            ok(json!({}))
        }
        "NetworkDriver.EndpointOperInfo" => {
            // Checked for shape; bpfnet has no operational data beyond what Docker knows.
            let _: protocol::EndpointCall = parse(name, body)?;
            ok(json!({ "Value": {} }))
        }
        "NetworkDriver.Join" => {
            let req: protocol::Join = parse(name, body)?;
            let (id, key) = (req.endpoint_id.clone(), req.sandbox_key.clone());
            let handover = change(plugin, move |d| {
                Box::pin(async move { d.attach_handover(&id, &key, INTERFACE_PREFIX).await })
            })
            .await?;
            let mut out = json!({ "InterfaceName": { "SrcName": handover.interface, "DstPrefix": INTERFACE_PREFIX } });
            if let Some(gateway) = handover.gateway {
                out["Gateway"] = json!(gateway.to_string());
            }
            if let Some(gateway6) = handover.gateway6 {
                out["GatewayIPv6"] = json!(gateway6.to_string());
            }
            ok(out)
        }
        "NetworkDriver.Leave" => {
            let req: protocol::EndpointCall = parse(name, body)?;
            let id = req.endpoint_id;
            change(plugin, move |d| {
                Box::pin(async move {
                    match d.detach(&id).await {
                        // Not attached (its sandbox went first and the collector saw it): done.
                        Err(Error::Conflict(_)) => Ok(()),
                        other => gone_is_done(other.map(|_| ())),
                    }
                })
            })
            .await?;
            ok(json!({}))
        }
        "NetworkDriver.ProgramExternalConnectivity" => {
            let req: protocol::ProgramExternalConnectivity = parse(name, body)?;
            let requests = protocol::port_map(req.options.as_ref())
                .and_then(|bindings| bindings.iter().map(|b| b.request()).collect::<Result<Vec<_>, _>>())
                .map_err(refused)?;
            let id = req.endpoint_id;
            change(plugin, move |d| Box::pin(async move { d.publish(&id, &requests).await.map(|_| ()) })).await?;
            ok(json!({}))
        }
        "NetworkDriver.RevokeExternalConnectivity" => {
            let req: protocol::EndpointCall = parse(name, body)?;
            let id = req.endpoint_id;
            change(plugin, move |d| {
                Box::pin(async move {
                    match d.publish(&id, &[]).await {
                        Err(Error::Conflict(_)) => Ok(()),
                        other => gone_is_done(other.map(|_| ())),
                    }
                })
            })
            .await?;
            ok(json!({}))
        }
        "NetworkDriver.DiscoverNew" | "NetworkDriver.DiscoverDelete" => ok(json!({})),
        other => Err(Answer(Err((StatusCode::NOT_FOUND, format!("bpfnet: the plugin has no call {other}"))))),
    }
}

/// What `-o bpfnet.overlay=NAME` asks of CreateNetwork.
struct OverlayBinding {
    overlay: String,
    pool: String,
    gateway: Option<String>,
    from_bpfnet_ipam: bool,
}

/// The overlay network Docker's CreateNetwork binds to, if it names one (no other option then:
/// the overlay network has its own).
fn overlay_binding(req: &protocol::CreateNetwork) -> Result<Option<OverlayBinding>, String> {
    let options = req.options.clone().unwrap_or_default();
    let generic = options.get(GENERIC_OPTIONS).and_then(Value::as_object);
    let Some(overlay) = generic.and_then(|g| g.get(OVERLAY_OPTION)) else { return Ok(None) };
    let overlay = overlay.as_str().unwrap_or_default().to_string();
    if let Some(other) = generic.into_iter().flat_map(|g| g.keys()).find(|k| *k != OVERLAY_OPTION) {
        return Err(format!("-o {other} cannot go with -o {OVERLAY_OPTION}: the overlay network {overlay:?} has its own options"));
    }
    if options.get(INTERNAL_OPTION).is_some_and(|v| v == &Value::Bool(true)) {
        return Err(format!("--internal cannot go with -o {OVERLAY_OPTION}: the overlay network {overlay:?} says whether it is internal"));
    }
    let [pool] = req.ipv4_data.as_deref().unwrap_or_default() else {
        return Err(format!("a Docker network for overlay network {overlay:?} has one IPv4 pool, its subnet"));
    };
    if req.ipv6_data.as_ref().is_some_and(|v| !v.is_empty()) {
        return Err(format!("--ipv6 cannot go with -o {OVERLAY_OPTION}: overlay networks carry IPv4 only for now"));
    }
    Ok(Some(OverlayBinding {
        overlay,
        pool: pool.pool.clone(),
        gateway: pool.gateway.as_ref().map(|g| g.split_once('/').map_or(g.as_str(), |(a, _)| a).to_string()),
        from_bpfnet_ipam: pool.address_space == ADDRESS_SPACE,
    }))
}

/// The bpfnet network for Docker's CreateNetwork: Docker's pool and gateway (from its IPAM),
/// `--internal`, and the driver options (`-o icc=false`, `-o masquerade=false`).
fn network_request(req: &protocol::CreateNetwork) -> Result<api::CreateNetwork, String> {
    let pools = req.ipv4_data.as_deref().unwrap_or_default();
    let pool = match pools {
        [] => None,
        [one] => Some(one),
        _ => return Err("bpfnet networks have one IPv4 subnet; this one has several".into()),
    };
    let pool6 = match req.ipv6_data.as_deref().unwrap_or_default() {
        [] => None,
        [one] => Some(one),
        _ => return Err("bpfnet networks have one IPv6 subnet; this one has several".into()),
    };
    if pool.is_none() && pool6.is_none() {
        return Err("the network has no address pool: bpfnet networks have an IPv4 subnet, an IPv6 one, or both".into());
    }
    let bare = |gateway: &Option<String>| gateway.as_ref().map(|g| g.split_once('/').map_or(g.as_str(), |(a, _)| a).to_string());
    let options = req.options.clone().unwrap_or_default();
    let internal = options.get(INTERNAL_OPTION).is_some_and(|v| v == &Value::Bool(true));
    let mut driver_options = BTreeMap::new();
    if let Some(generic) = options.get(GENERIC_OPTIONS).and_then(Value::as_object) {
        for (key, value) in generic {
            let value = match value {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            driver_options.insert(key.clone(), value);
        }
    }
    ipam::parse_options(&driver_options).map_err(|e| format!("{e:#}"))?;
    Ok(api::CreateNetwork {
        driver: None,
        name: network_name(&req.network_id),
        subnet: pool.map(|p| p.pool.clone()),
        gateway: pool.and_then(|p| bare(&p.gateway)),
        internal,
        options: driver_options,
        ip_range: None,
        subnet6: pool6.map(|p| p.pool.clone()),
        gateway6: pool6.and_then(|p| bare(&p.gateway)),
        ipv6: pool6.is_some(),
        // `docker network create --ipv4=false` (Docker 28 and later): no IPv4 pool.
        ipv4: pool.is_none().then_some(false),
    })
}

/// The plugin's HTTP routes.
pub fn router(daemon: Arc<Mutex<Daemon>>, worker: Handle, recorder: crate::metrics::Recorder) -> Router {
    Router::new().route("/{call}", post(call)).with_state(Plugin { daemon, worker, recorder })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_network_as_docker_sends_it() {
        let req: protocol::CreateNetwork = serde_json::from_str(
            r#"{"NetworkID":"0123456789abcdef0123","Options":{"com.docker.network.enable_ipv6":false,
                "com.docker.network.generic":{"icc":"false"},"com.docker.network.internal":true},
                "IPv4Data":[{"AddressSpace":"LocalDefault","Gateway":"10.77.0.1/16","Pool":"10.77.0.0/16"}],"IPv6Data":[]}"#,
        )
        .unwrap();
        let create = network_request(&req).unwrap();
        assert_eq!(create.name, "docker-0123456789ab");
        assert_eq!(create.subnet.as_deref(), Some("10.77.0.0/16"));
        assert_eq!(create.gateway.as_deref(), Some("10.77.0.1"));
        assert!(create.internal);
        assert_eq!(create.options.get("icc").map(String::as_str), Some("false"));

        let bad: protocol::CreateNetwork = serde_json::from_str(
            r#"{"NetworkID":"ab","Options":{"com.docker.network.generic":{"colour":"blue"}},"IPv4Data":[{"Pool":"10.1.0.0/16"}]}"#,
        )
        .unwrap();
        assert!(network_request(&bad).is_err());
        let dual: protocol::CreateNetwork = serde_json::from_str(
            r#"{"NetworkID":"ab","IPv4Data":[{"Pool":"10.1.0.0/16"}],"IPv6Data":[{"Pool":"fd00::/64","Gateway":"fd00::1/64"}]}"#,
        )
        .unwrap();
        let create = network_request(&dual).unwrap();
        assert_eq!((create.subnet6.as_deref(), create.gateway6.as_deref(), create.ipv6), (Some("fd00::/64"), Some("fd00::1"), true));
        let v6_only: protocol::CreateNetwork =
            serde_json::from_str(r#"{"NetworkID":"ab","IPv4Data":[],"IPv6Data":[{"Pool":"fd00::/64"}]}"#).unwrap();
        let create = network_request(&v6_only).unwrap();
        assert_eq!((create.subnet.as_deref(), create.subnet6.as_deref(), create.ipv4), (None, Some("fd00::/64"), Some(false)), "IPv6-only");
        let none: protocol::CreateNetwork = serde_json::from_str(r#"{"NetworkID":"ab","IPv4Data":[],"IPv6Data":[]}"#).unwrap();
        assert!(network_request(&none).unwrap_err().contains("no address pool"));
    }
}
