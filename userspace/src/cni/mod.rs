//! The CNI front-end: the `bpfnet` binary acts as a CNI plugin (spec 1.0.0, also 1.1's STATUS
//! and GC) when a runtime runs it with `CNI_COMMAND` set. It talks to the daemon over its API
//! and drives the same endpoint lifecycle as the CLI: ADD = allocate + attach, DEL = release,
//! CHECK = the endpoint is attached where the runtime says. Types and the protocol's plumbing
//! (environment, stdin, result and error JSON, version negotiation) come from `rscni-plugin`.
//!
//! Network configuration (in a conflist): `{"type": "bpfnet", "network": "NAME", "socket":
//! "/run/bpfnet/bpfnet.sock", "capabilities": {"portMappings": true, "ips": true, "aliases":
//! true}}`; `network` defaults to the configuration's `name`.
use std::{hash::Hasher, net::IpAddr, path::PathBuf};

use rscni_plugin::{
    cni::{Cni, Plugin},
    error::Error as CniError,
    types::{Args, CNIResult, Dns, Interface, IpConfig, NetConf, Route},
};
use rscni_types::ipnet::IpNet;
use serde_json::Value;
use siphasher::sip::SipHasher13;

use crate::{
    api,
    client::{ApiError, Client},
};

/// Runs the plugin (the process's whole job when `CNI_COMMAND` is set). Exit code 1 on error,
/// with the error JSON on stdout (the spec's codes).
pub fn main() -> std::process::ExitCode {
    let plugin = Plugin::default().msg("bpfnet CNI plugin: attaches containers to bpfnet networks through the bpfnet daemon");
    match plugin.run(&BpfnetCni) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(_) => std::process::ExitCode::FAILURE,
    }
}

/// Plugin-specific error code: the network named in the configuration does not exist.
const NO_SUCH_NETWORK: u32 = 50;
/// Plugin-specific error code: the daemon refused the request (its message says why).
const REFUSED: u32 = 51;

struct BpfnetCni;

/// What the plugin reads from its network configuration.
struct Conf {
    network: String,
    socket: PathBuf,
}

fn conf(netconf: &NetConf) -> Result<Conf, CniError> {
    let network = match netconf.custom.get("network") {
        None => netconf.name.clone(),
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(other) => return Err(CniError::InvalidNetworkConfig(format!("\"network\" must be a network's name, not {other}"))),
    };
    let socket = match netconf.custom.get("socket") {
        None => PathBuf::from(api::DEFAULT_SOCKET),
        Some(Value::String(s)) if s.starts_with('/') => PathBuf::from(s),
        Some(other) => return Err(CniError::InvalidNetworkConfig(format!("\"socket\" must be an absolute path, not {other}"))),
    };
    Ok(Conf { network, socket })
}

/// The endpoint of one attachment (container, interface, network): the same for ADD, CHECK and
/// DEL of it, so DEL needs nothing the runtime does not send again (and works after a restart or
/// an upgrade: SipHash-1-3 with fixed keys, not std's hasher, whose algorithm may change).
pub fn endpoint_id(container_id: &str, ifname: &str, network: &str) -> String {
    (0u64..4)
        .map(|part| {
            let mut h = SipHasher13::new_with_keys(0x6270_666e_6574_636e, part);
            for field in [container_id, ifname, network] {
                h.write(field.as_bytes());
                h.write_u8(0);
            }
            format!("{:016x}", h.finish())
        })
        .collect()
}

fn required<'a, T: AsRef<str> + 'a>(value: Option<&'a T>, var: &str) -> Result<&'a str, CniError> {
    value.map(AsRef::as_ref).ok_or_else(|| CniError::InvalidEnvValue(format!("{var} is not set")))
}

/// One API call from the plugin, on a runtime of its own; daemon errors become CNI errors.
fn call<T>(f: impl std::future::Future<Output = anyhow::Result<T>>) -> Result<T, CniError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CniError::IOFailure(format!("starting the plugin's runtime: {e}")))?;
    rt.block_on(f).map_err(to_cni_error)
}

fn to_cni_error(e: anyhow::Error) -> CniError {
    match e.downcast_ref::<ApiError>() {
        // Unreachable daemon: the runtime may try again later.
        Some(ApiError { status: None, message }) => CniError::TryAgainLater(message.clone()),
        Some(ApiError { status: Some(404), message }) => CniError::Custom(NO_SUCH_NETWORK, "not found".into(), message.clone()),
        Some(ApiError { message, .. }) => CniError::Custom(REFUSED, "refused by the bpfnet daemon".into(), message.clone()),
        None => CniError::IOFailure(format!("{e:#}")),
    }
}

fn is_not_found(e: &anyhow::Error) -> bool {
    matches!(e.downcast_ref::<ApiError>(), Some(ApiError { status: Some(404), .. }))
}

/// The container's name as its runtime knows it: `K8S_POD_NAME` in CNI_ARGS (Podman and
/// Kubernetes runtimes send it), else the container id, whole: a shortened id could name two
/// containers at once (and resolve to either). An id that is no valid name becomes one through
/// its hash.
fn container_name(args: Option<&str>, container_id: &str) -> String {
    match cni_arg(args, "K8S_POD_NAME") {
        Some(name) if crate::ipam::validate_name("container", name).is_ok() => name.to_string(),
        _ if crate::ipam::validate_name("container", container_id).is_ok() => container_id.to_string(),
        _ => format!("cni-{}", &endpoint_id(container_id, "", "")[..16]),
    }
}

/// A value of CNI_ARGS (`K1=V1;K2=V2`).
fn cni_arg<'a>(args: Option<&'a str>, key: &str) -> Option<&'a str> {
    args?.split(';').find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')).filter(|v| !v.is_empty())
}

/// `runtimeConfig`: `portMappings` as `-p` values, `ips` (the first IPv4), `aliases` for
/// this network; or the address in CNI_ARGS' `IP` (how Podman passes `--ip`, as for host-local).
fn runtime_spec(netconf: &NetConf, network: &str, cni_args: Option<&str>) -> Result<api::EndpointSpec, CniError> {
    let mut spec = api::EndpointSpec::default();
    // IP= in CNI_ARGS (Podman's --ip and --ip6): one address, or several separated by commas.
    for ip in cni_arg(cni_args, "IP").into_iter().flat_map(|ips| ips.split(',')).map(|ip| ip.split('/').next().unwrap_or(ip)) {
        let slot = if ip.contains(':') { &mut spec.ip6 } else { &mut spec.ip };
        *slot = Some(ip.to_string());
    }
    let Some(rc) = &netconf.runtime_config else { return Ok(spec) };
    for pm in &rc.port_mappings {
        let protocol = pm.protocol.map(|p| serde_json::to_value(p).ok().and_then(|v| v.as_str().map(str::to_string))).flatten();
        let protocol = protocol.unwrap_or_else(|| "tcp".into());
        let host_ip = pm.custom.get("hostIP").and_then(Value::as_str).filter(|s| !s.is_empty());
        let ports = format!("{}:{}/{protocol}", pm.host_port, pm.container_port);
        spec.publish.push(match host_ip {
            Some(ip) => format!("{ip}:{ports}"),
            None => ports,
        });
    }
    if let Some(ips) = rc.custom.get("ips").and_then(Value::as_array) {
        let bare: Vec<&str> = ips.iter().filter_map(Value::as_str).map(|s| s.split('/').next().unwrap_or(s)).collect();
        if let Some(ip) = bare.iter().find(|s| !s.contains(':')) {
            spec.ip = Some(ip.to_string());
        }
        if let Some(ip6) = bare.iter().find(|s| s.contains(':')) {
            spec.ip6 = Some(ip6.to_string());
        }
    }
    if let Some(aliases) = rc.custom.get("aliases").and_then(|a| a.get(network)).and_then(Value::as_array) {
        spec.aliases = aliases.iter().filter_map(Value::as_str).map(str::to_string).collect();
    }
    Ok(spec)
}

impl Cni for BpfnetCni {
    fn add(&self, args: Args) -> Result<CNIResult, CniError> {
        let conf = conf(args.config())?;
        let container = required(args.container_id(), "CNI_CONTAINERID")?.to_string();
        let ifname = required(args.ifname(), "CNI_IFNAME")?.to_string();
        let netns = args.netns().ok_or_else(|| CniError::InvalidEnvValue("CNI_NETNS is not set".into()))?.display().to_string();
        let spec = runtime_spec(args.config(), &conf.network, args.args())?;
        let id = endpoint_id(&container, &ifname, &conf.network);
        let name = container_name(args.args(), &container);
        call(async {
            let client = Client::new(&conf.socket);
            let net: api::NetworkInspect = client.get(&format!("/networks/{}", conf.network)).await?;
            let allocate = api::Allocate { network: conf.network.clone(), name, spec, id: Some(id.clone()), frontend: Some("cni".into()) };
            let _: api::EndpointView = client.post("/endpoints", &allocate).await?;
            let attach = api::Attach { netns: netns.clone(), interface: Some(ifname.clone()) };
            let created: api::EndpointCreated = match client.post(&format!("/endpoints/{id}/attach"), &attach).await {
                Ok(created) => created,
                Err(e) => {
                    // Nothing of a failed ADD stays.
                    let _: anyhow::Result<Value> = client.delete(&format!("/endpoints/{id}")).await;
                    return Err(e);
                }
            };
            Ok(result(&net, &created, &netns))
        })
    }

    fn del(&self, args: Args) -> Result<(), CniError> {
        let conf = conf(args.config())?;
        let container = required(args.container_id(), "CNI_CONTAINERID")?.to_string();
        let ifname = required(args.ifname(), "CNI_IFNAME")?.to_string();
        let id = endpoint_id(&container, &ifname, &conf.network);
        call(async {
            match Client::new(&conf.socket).delete::<Value>(&format!("/endpoints/{id}")).await {
                // Gone already (a DEL repeated, or an ADD that never completed): done.
                Err(e) if is_not_found(&e) => Ok(()),
                other => other.map(|_| ()),
            }
        })
    }

    fn check(&self, args: Args) -> Result<(), CniError> {
        let conf = conf(args.config())?;
        let container = required(args.container_id(), "CNI_CONTAINERID")?.to_string();
        let ifname = required(args.ifname(), "CNI_IFNAME")?.to_string();
        let netns = args.netns().map(|p| p.display().to_string());
        let id = endpoint_id(&container, &ifname, &conf.network);
        let view: api::EndpointView = call(async { Client::new(&conf.socket).get(&format!("/endpoints/{id}")).await })?;
        let Some(attachment) = view.attachment else {
            return Err(CniError::Custom(REFUSED, "not attached".into(), format!("endpoint {} is allocated but not attached", &id[..12])));
        };
        if Some(&attachment.netns) != netns.as_ref() || attachment.interface != ifname {
            return Err(CniError::Custom(
                REFUSED,
                "attached elsewhere".into(),
                format!("endpoint {} is {} in {}, not {ifname} in {}", &id[..12], attachment.interface, attachment.netns, netns.unwrap_or_default()),
            ));
        }
        Ok(())
    }

    fn status(&self, args: Args) -> Result<(), CniError> {
        let conf = conf(args.config())?;
        call(async { Client::new(&conf.socket).get::<Value>(&format!("/networks/{}", conf.network)).await.map(|_| ()) })
    }

    /// Releases this network's CNI endpoints that are not among the runtime's valid attachments.
    fn gc(&self, args: Args) -> Result<(), CniError> {
        let conf = conf(args.config())?;
        let valid: Vec<String> = args
            .config()
            .valid_attachments
            .iter()
            .flatten()
            .map(|a| endpoint_id(&a.container_id, &a.ifname, &conf.network))
            .collect();
        call(async {
            let client = Client::new(&conf.socket);
            let endpoints: Vec<api::EndpointView> = client.get("/endpoints").await?;
            for ep in endpoints.iter().filter(|e| e.frontend == "cni" && e.network == conf.network && !valid.contains(&e.endpoint_id)) {
                match client.delete::<Value>(&format!("/endpoints/{}", ep.endpoint_id)).await {
                    Err(e) if !is_not_found(&e) => return Err(e),
                    _ => {}
                }
            }
            Ok(())
        })
    }
}

/// The ADD result: the interface in the container, its addresses (IPv4 and IPv6, where the
/// network has them), the default routes (unless the network is internal), and the network's
/// resolver.
fn result(net: &api::NetworkInspect, created: &api::EndpointCreated, netns: &str) -> CNIResult {
    let gateways = net.ipam.config.iter().filter_map(|c| c.gateway.parse::<IpAddr>().ok());
    let gateway = gateways.clone().find(IpAddr::is_ipv4);
    let gateway6 = gateways.clone().find(IpAddr::is_ipv6);
    let address: Option<IpNet> = created.ipv4_address.parse().ok();
    let address6: Option<IpNet> = created.ipv6_address.parse().ok();
    let default = |dst: &str, gw: IpAddr| Route {
        dst: dst.parse().expect("a valid prefix"),
        gw: Some(gw),
        mtu: None,
        advmss: None,
        priority: None,
        table: None,
        scope: None,
    };
    CNIResult {
        interfaces: vec![Interface {
            name: created.interface.clone(),
            mac: created.mac_address.clone(),
            mtu: None,
            sandbox: Some(netns.to_string()),
            socket_path: None,
            pci_id: None,
        }],
        ips: address
            .map(|address| IpConfig { interface: Some(0), address, gateway })
            .into_iter()
            .chain(address6.map(|address| IpConfig { interface: Some(0), address, gateway: gateway6 }))
            .collect(),
        routes: match net.internal {
            false => gateway.map(|gw| default("0.0.0.0/0", gw)).into_iter().chain(gateway6.map(|gw| default("::/0", gw))).collect(),
            true => vec![],
        },
        dns: created.resolver.as_ref().map(|r| Dns { nameservers: vec![r.clone()], ..Default::default() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_ids_are_stable_and_distinct() {
        let a = endpoint_id("c0ffee", "eth0", "web");
        assert_eq!(a, endpoint_id("c0ffee", "eth0", "web"));
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, endpoint_id("c0ffee", "eth1", "web"));
        assert_ne!(a, endpoint_id("c0ffee", "eth0", "db"));
        // Fields cannot run into each other.
        assert_ne!(endpoint_id("ab", "c", "web"), endpoint_id("a", "bc", "web"));
        // Fixed forever: a DEL after an upgrade must find what the ADD made.
        assert_eq!(a, "5e738b1c5c8b2bf0b9b3d072e2d6b64bae3bc3a1f76d1a0c5dfbea7634f9f5d9");
    }

    #[test]
    fn static_address_from_cni_args_or_runtime_config() {
        let conf: NetConf = serde_json::from_str(r#"{"cniVersion":"1.0.0","name":"web","type":"bpfnet"}"#).unwrap();
        assert_eq!(runtime_spec(&conf, "web", Some("IgnoreUnknown=1;IP=10.1.0.9")).unwrap().ip.as_deref(), Some("10.1.0.9"));
        assert_eq!(runtime_spec(&conf, "web", None).unwrap().ip, None);
        let conf: NetConf =
            serde_json::from_str(r#"{"cniVersion":"1.0.0","name":"web","type":"bpfnet","runtimeConfig":{"ips":["fd00::5/64","10.1.0.7/24"]}}"#).unwrap();
        let spec = runtime_spec(&conf, "web", Some("IP=10.1.0.9")).unwrap();
        assert_eq!((spec.ip.as_deref(), spec.ip6.as_deref()), (Some("10.1.0.7"), Some("fd00::5")));
        let conf: NetConf = serde_json::from_str(r#"{"cniVersion":"1.0.0","name":"web","type":"bpfnet"}"#).unwrap();
        let spec = runtime_spec(&conf, "web", Some("IP=fd00::9")).unwrap();
        assert_eq!((spec.ip.as_deref(), spec.ip6.as_deref()), (None, Some("fd00::9")));
        let spec = runtime_spec(&conf, "web", Some("IP=10.1.0.9,fd00::9/64")).unwrap();
        assert_eq!((spec.ip.as_deref(), spec.ip6.as_deref()), (Some("10.1.0.9"), Some("fd00::9")));
    }

    #[test]
    fn a_dual_stack_result_carries_both_addresses_and_default_routes() {
        let net: api::NetworkInspect = serde_json::from_value(serde_json::json!({
            "Name": "web", "Id": "n", "Created": "", "Scope": "local", "Driver": "bpfnet", "EnableIPv6": true,
            "IPAM": {"Driver": "default", "Options": {}, "Config": [
                {"Subnet": "10.1.0.0/24", "Gateway": "10.1.0.1"}, {"Subnet": "fd00:1::/64", "Gateway": "fd00:1::1"}]},
            "Internal": false, "Attachable": true, "Containers": {}, "Options": {}, "Labels": {}
        }))
        .unwrap();
        let created: api::EndpointCreated = serde_json::from_value(serde_json::json!({
            "endpoint_id": "e", "network": "web", "interface": "eth0", "host_interface": "bn-e",
            "ipv4_address": "10.1.0.2/24", "ipv6_address": "fd00:1::2/64", "mac_address": "02:42:0a:01:00:02"
        }))
        .unwrap();
        let r = result(&net, &created, "/run/netns/x");
        let ips: Vec<(String, Option<IpAddr>)> = r.ips.iter().map(|c| (c.address.to_string(), c.gateway)).collect();
        assert_eq!(ips, vec![
            ("10.1.0.2/24".to_string(), Some("10.1.0.1".parse().unwrap())),
            ("fd00:1::2/64".to_string(), Some("fd00:1::1".parse().unwrap())),
        ]);
        let routes: Vec<(String, Option<IpAddr>)> = r.routes.iter().map(|r| (r.dst.to_string(), r.gw)).collect();
        assert_eq!(routes, vec![
            ("0.0.0.0/0".to_string(), Some("10.1.0.1".parse().unwrap())),
            ("::/0".to_string(), Some("fd00:1::1".parse().unwrap())),
        ]);
        let internal = api::NetworkInspect { internal: true, ..net };
        assert!(result(&internal, &created, "/run/netns/x").routes.is_empty());
    }

    #[test]
    fn an_ipv6_only_result_has_no_ipv4_address_or_route() {
        let net: api::NetworkInspect = serde_json::from_value(serde_json::json!({
            "Name": "v6", "Id": "n", "Created": "", "Scope": "local", "Driver": "bpfnet", "EnableIPv6": true,
            "IPAM": {"Driver": "default", "Options": {}, "Config": [{"Subnet": "fd00:6::/64", "Gateway": "fd00:6::1"}]},
            "Internal": false, "Attachable": true, "Containers": {}, "Options": {}, "Labels": {}
        }))
        .unwrap();
        let created: api::EndpointCreated = serde_json::from_value(serde_json::json!({
            "endpoint_id": "e", "network": "v6", "interface": "eth0", "host_interface": "bn-e",
            "ipv4_address": "", "ipv6_address": "fd00:6::2/64", "mac_address": "02:42:00:00:00:02"
        }))
        .unwrap();
        let r = result(&net, &created, "/run/netns/x");
        let ips: Vec<(String, Option<IpAddr>)> = r.ips.iter().map(|c| (c.address.to_string(), c.gateway)).collect();
        assert_eq!(ips, vec![("fd00:6::2/64".to_string(), Some("fd00:6::1".parse().unwrap()))]);
        let routes: Vec<(String, Option<IpAddr>)> = r.routes.iter().map(|r| (r.dst.to_string(), r.gw)).collect();
        assert_eq!(routes, vec![("::/0".to_string(), Some("fd00:6::1".parse().unwrap()))], "no IPv4 route through an IPv6 gateway");
    }

    #[test]
    fn container_names_from_cni_args() {
        assert_eq!(container_name(Some("IgnoreUnknown=1;K8S_POD_NAME=web1;K8S_POD_NAMESPACE=x"), "abcdef0123456789"), "web1");
        assert_eq!(container_name(None, "abcdef0123456789"), "abcdef0123456789");
        assert_eq!(container_name(Some("K8S_POD_NAME=bad name"), "abcdef0123456789"), "abcdef0123456789");
        // Two ids that share their first 12 digits are two names.
        let (a, b) = ("abcdef012345".repeat(2), format!("abcdef012345{}", "9".repeat(12)));
        assert_ne!(container_name(None, &a), container_name(None, &b));
        // An id no name can hold becomes one through its hash.
        let long = "f".repeat(100);
        let name = container_name(None, &long);
        assert!(name.starts_with("cni-") && name.len() == 20 && crate::ipam::validate_name("container", &name).is_ok(), "{name}");
    }
}
