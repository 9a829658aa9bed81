//! What reads show, rendered from a committed state (never from a change in progress).
use std::{collections::BTreeMap, net::IpAddr};

use super::{DaemonResult, Error};
use crate::{
    api, ipam,
    state::{Allocation, Endpoint, Network, State},
};

pub fn list_networks(state: &State) -> Vec<api::NetworkSummary> {
    state
        .networks
        .iter()
        .map(|n| api::NetworkSummary {
            id: n.id.clone(),
            name: n.name.clone(),
            driver: n.driver.name().into(),
            subnet: n.ipv4.map(|v4| v4.subnet.to_string()).unwrap_or_default(),
            gateway: n.ipv4.map(|v4| v4.gateway.to_string()).unwrap_or_default(),
            subnet6: n.ipv6.map(|v6| v6.subnet.to_string()),
            gateway6: n.ipv6.map(|v6| v6.gateway.to_string()),
            internal: n.internal,
            icc: n.icc,
            masquerade: n.masquerade && !n.internal,
            endpoints: state.endpoints_of(&n.id).count(),
        })
        .collect()
}

pub fn inspect(state: &State, name: &str) -> DaemonResult<api::NetworkInspect> {
    let net = state.network_by_name(name).ok_or_else(|| Error::not_found(format!("network {name:?} not found")))?;
    Ok(inspect_network(state, net))
}

/// `network inspect`, shaped like `docker network inspect`.
pub fn inspect_network(state: &State, net: &Network) -> api::NetworkInspect {
    let containers = state
        .endpoints_of(&net.id)
        .map(|e| {
            (e.container_id.clone(), api::ContainerEndpoint {
                name: e.container_name.clone(),
                endpoint_id: e.id.clone(),
                mac_address: ipam::format_mac(&e.mac),
                ipv4_address: address_of(net, e.address4),
                ipv6_address: address_of(net, e.address6),
                interface: e.interface.clone(),
                host_interface: e.host_interface.clone(),
                netns: e.netns_path.display().to_string(),
                aliases: e.aliases.clone(),
                ports: e.ports.iter().flat_map(|p| p.shown(e.address4.is_some(), e.address6.is_some())).collect(),
            })
        })
        .collect();
    api::NetworkInspect {
        name: net.name.clone(),
        id: net.id.clone(),
        created: net.created.clone(),
        scope: if net.driver.is_overlay() { "swarm" } else { "local" }.into(),
        driver: net.driver.name().into(),
        enable_ipv6: net.ipv6.is_some(),
        ipam: api::Ipam {
            driver: "default".into(),
            options: BTreeMap::new(),
            config: net
                .ipv4
                .map(|v4| api::IpamConfig {
                    subnet: v4.subnet.to_string(),
                    gateway: v4.gateway.to_string(),
                    ip_range: net.ip_range.map(|r| r.to_string()),
                })
                .into_iter()
                .chain(net.ipv6.map(|v6| api::IpamConfig { subnet: v6.subnet.to_string(), gateway: v6.gateway.to_string(), ip_range: None }))
            .collect(),
        },
        internal: net.internal,
        attachable: true,
        containers,
        options: net.options.clone(),
        labels: BTreeMap::new(),
    }
}

/// `ADDRESS/PREFIX` of an endpoint's address on `net` (of either family), or empty.
pub fn address_of(net: &Network, address: Option<IpAddr>) -> String {
    match address.and_then(|ip| Some((ip, net.side_of(ip)?))) {
        Some((ip, side)) => format!("{ip}/{}", side.subnet.prefix()),
        None => address.map(|ip| ip.to_string()).unwrap_or_default(),
    }
}

/// An allocation's addresses with their prefixes, for messages: `10.1.0.2/24 fd00:1::2/64`.
pub fn addresses_of(net: &Network, a: &Allocation) -> String {
    a.addresses().map(|ip| address_of(net, Some(ip))).collect::<Vec<_>>().join(" ")
}

/// One endpoint as `endpoint ls` shows it; `attached`: where it is attached, if it is.
pub fn allocation_view(state: &State, a: &Allocation, attached: Option<&Endpoint>) -> api::EndpointView {
    let net = state.network_by_id(&a.network_id);
    api::EndpointView {
        endpoint_id: a.id.clone(),
        network: net.map_or_else(String::new, |n| n.name.clone()),
        name: a.container_name.clone(),
        ipv4_address: net.map_or_else(|| a.address4.map(|ip| ip.to_string()).unwrap_or_default(), |n| address_of(n, a.address4)),
        ipv6_address: net.map(|n| address_of(n, a.address6)).unwrap_or_default(),
        mac_address: ipam::format_mac(&a.mac),
        aliases: a.aliases.clone(),
        ports: a.ports.iter().flat_map(|p| p.shown(a.address4.is_some(), a.address6.is_some())).collect(),
        attachment: attached.map(|e| api::AttachmentView {
            netns: e.netns_path.display().to_string(),
            interface: e.interface.clone(),
            host_interface: e.host_interface.clone(),
        }),
        frontend: a.frontend.name().to_string(),
    }
}

/// `endpoint ls`: attached endpoints, then allocated ones.
pub fn list_endpoints(state: &State) -> Vec<api::EndpointView> {
    let attached = state.endpoints.iter().map(|e| allocation_view(state, &e.allocation, Some(e)));
    attached.chain(state.allocations.iter().map(|a| allocation_view(state, a, None))).collect()
}

/// `endpoint inspect`: the endpoint whose id is `id` or starts with it.
pub fn inspect_endpoint(state: &State, id: &str) -> DaemonResult<api::EndpointView> {
    endpoint_by_id(id, list_endpoints(state).into_iter().map(|e| (e.endpoint_id.clone(), e)))
}

/// The one of `candidates` (id, item) whose id is `id` or starts with it: endpoint ids as users
/// give them, hex digits, the whole id or a prefix.
pub fn endpoint_by_id<S: AsRef<str>, T>(id: &str, candidates: impl Iterator<Item = (S, T)>) -> DaemonResult<T> {
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(Error::invalid(format!("invalid endpoint id {id:?}: expected hex digits (the id or a prefix of it)")));
    }
    let mut found = candidates.filter(|(candidate, _)| candidate.as_ref().starts_with(id)).map(|(_, item)| item);
    match (found.next(), found.next()) {
        (Some(one), None) => Ok(one),
        (None, _) => Err(Error::not_found(format!("endpoint {id} not found"))),
        (Some(_), Some(_)) => Err(Error::invalid(format!("endpoint id {id} is ambiguous: give more of it"))),
    }
}

/// `port ls`: one line per published host port (also those of endpoints not attached yet).
pub fn list_ports(state: &State) -> Vec<api::PortMapping> {
    let mut out = Vec::new();
    let attached: std::collections::HashSet<&str> = state.endpoints.iter().map(|e| e.id.as_str()).collect();
    for ep in state.all_allocations() {
        let network = state.network_by_id(&ep.network_id).map_or_else(String::new, |n| n.name.clone());
        for p in &ep.ports {
            // One line per family it reaches the container by, as `docker port` shows them.
            let (v4, v6) = p.families();
            let mut families: Vec<(std::net::IpAddr, std::net::IpAddr)> = Vec::new();
            if let (true, Some(address4)) = (v4, ep.address4) {
                families.push((p.host_ip.unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into()), address4));
            }
            if let (true, Some(address6)) = (v6, ep.address6) {
                families.push((p.host_ip.unwrap_or(std::net::Ipv6Addr::UNSPECIFIED.into()), address6));
            }
            for (host, container) in families {
                for i in 0..p.count {
                    out.push(api::PortMapping {
                        host: std::net::SocketAddr::new(host, p.host_port + i).to_string(),
                        protocol: p.protocol.to_string(),
                        container: std::net::SocketAddr::new(container, p.container_port + i).to_string(),
                        network: network.clone(),
                        netns: ep.container_name.clone(),
                        endpoint_id: ep.id.clone(),
                        attached: attached.contains(ep.id.as_str()),
                    });
                }
            }
        }
    }
    out
}

fn service_ports(svc: &crate::state::Service) -> Vec<api::ServicePort> {
    vec![api::ServicePort {
        protocol: svc.protocol.to_string(),
        target_port: svc.port,
        published_port: svc.publish.map(|p| p.host_port),
        publish_mode: if svc.publish.is_some() { "ingress" } else { "vip" }.into(),
        // Every address: of IPv4 (and IPv6 too, as `-p`), or of IPv6 on an IPv6-only network.
        published_ip: svc.publish.map(|p| p.host_ip.map_or(if svc.vip4.is_some() { "0.0.0.0" } else { "::" }.to_string(), |ip| ip.to_string())),
    }]
}

fn affinity(svc: &crate::state::Service) -> Option<String> {
    svc.affinity_secs.map(|s| format!("client-ip:{s}"))
}

pub fn list_services(state: &State) -> Vec<api::ServiceSummary> {
    state
        .services
        .values()
        .map(|s| api::ServiceSummary {
            id: s.id.clone(),
            name: s.name.clone(),
            network: state.network_by_id(&s.network_id).map_or("?".into(), |n| n.name.clone()),
            vip: s.vip4.map(|v| format!("{v}:{}/{}", s.port, s.protocol)).unwrap_or_default(),
            vip6: s.vip6.map(|v| format!("[{v}]:{}/{}", s.port, s.protocol)),
            published: s.publish.map(|p| p.shown(s.vip4.is_some(), s.vip6.is_some()).join(", ")),
            backends: s.backends.iter().filter(|b| !b.draining).count(),
            draining: s.backends.iter().filter(|b| b.draining).count(),
            affinity: affinity(s),
            scope: if s.cluster { "cluster" } else { "local" }.into(),
        })
        .collect()
}

pub fn inspect_service(state: &State, name: &str) -> DaemonResult<api::ServiceInspect> {
    let svc = state.services.get(name).ok_or_else(|| Error::not_found(format!("service {name:?} not found")))?;
    let net = state.network_by_id(&svc.network_id);
    Ok(api::ServiceInspect {
        id: svc.id.clone(),
        created_at: svc.created.clone(),
        spec: api::ServiceSpec {
            name: svc.name.clone(),
            endpoint_spec: api::ServiceEndpointSpec { mode: "vip".into(), ports: service_ports(svc) },
            affinity: affinity(svc).unwrap_or_else(|| "none".into()),
        },
        endpoint: api::ServiceEndpoint {
            ports: service_ports(svc),
            virtual_ips: svc
                .vips()
                .map(|vip| {
                    let prefix = net.and_then(|n| n.side_of(vip)).map_or(crate::plumbing::full_prefix(vip), |side| side.subnet.prefix());
                    api::VirtualIp {
                        network_id: svc.network_id.clone(),
                        network: net.map_or("?".into(), |n| n.name.clone()),
                        addr: format!("{vip}/{prefix}"),
                    }
                })
                .collect(),
        },
        backends: svc
            .backends
            .iter()
            .map(|b| api::BackendView {
                name: b.container_name.clone(),
                endpoint_id: b.endpoint_id.clone(),
                address: b.address4.map(|a| format!("{a}:{}", b.port)).unwrap_or_default(),
                address6: b.address6.map(|a| format!("[{a}]:{}", b.port)),
                state: if b.draining { "draining" } else { "active" }.into(),
                node: b.node.clone(),
            })
            .collect(),
    })
}
