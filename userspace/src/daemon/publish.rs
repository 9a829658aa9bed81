//! The one policy for host ports, for an endpoint's `-p` (bpfnet's connect, Docker's handover,
//! CNI's port mappings) and a service's `--publish` alike: a publication is refused on an
//! internal network, on a host address that is not the daemon's namespace's, and on a port that
//! someone holds — another endpoint, a service, or an earlier publication of the same request.
//! How a front-end picks among candidates (a range, the first free port of one) stays its own.
use std::{collections::HashMap, fmt, net::IpAddr};

use super::{DaemonResult, Error};
use crate::{
    ipam::HostAddress,
    ports::{Protocol, PublishedPort},
    state::{Frontend, Network, State},
};

/// Refuses any publication on an internal network; `what`: whose ("its containers", "its
/// services"), for the message.
pub(super) fn refuse_on_internal(net: &Network, what: &str) -> DaemonResult<()> {
    if !net.internal {
        return Ok(());
    }
    Err(Error::invalid(format!("network {:?} is internal: nothing reaches it from outside, so {what} cannot be published", net.name)))
}

/// Refuses a publication on a host address of a family (`spec`, as the user wrote it) the
/// network lacks: IPv6 on a network without IPv6, IPv4 on an IPv6-only one; `what`: who would
/// have no address of that family ("its containers", "its services").
pub(super) fn refuse_family_without(net: &Network, port: &PublishedPort, spec: &str, what: &str) -> DaemonResult<()> {
    match port.host_ip {
        Some(ip) if ip.is_ipv6() && net.ipv6.is_none() => Err(Error::invalid(format!(
            "cannot publish {spec:?} on IPv6: network {:?} has no IPv6 subnet, so {what} have no IPv6 address",
            net.name
        ))),
        Some(ip) if ip.is_ipv4() && net.ipv4.is_none() => Err(Error::invalid(format!(
            "cannot publish {spec:?} on IPv4: network {:?} is IPv6-only, so {what} have no IPv4 address",
            net.name
        ))),
        _ => Ok(()),
    }
}

/// Refuses a host address that is not one of the daemon's namespace (`local`); `spec`: the
/// publication as the user wrote it. `0.0.0.0` and `::` stand for every address of a family.
pub(super) fn check_host_address(ip: Option<IpAddr>, local: &[HostAddress], spec: &str) -> DaemonResult<()> {
    match ip {
        Some(ip) if !ip.is_unspecified() && !local.iter().any(|a| a.ip == ip) => {
            Err(Error::invalid(format!("cannot publish {spec:?}: {ip} is not an address of the daemon's namespace")))
        }
        _ => Ok(()),
    }
}

/// Who holds a port a publication wants.
pub(super) enum Holder {
    Endpoint { held: PublishedPort, container: String, network: String, id: String },
    Service { held: PublishedPort, name: String },
    /// An earlier publication of the same request.
    SameRequest { held: PublishedPort },
    /// The masquerade's port range (`bpfnet daemon --nat-ports`), from which containers'
    /// connections take their source ports: a connection there would take the publication's
    /// clients.
    Masquerade { first: u16, last: u16 },
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Holder::Endpoint { held, container, network, id } => {
                write!(f, "{held} is already published by {container} (network {network:?}, endpoint {id})")
            }
            Holder::Service { held, name } => write!(f, "{held} is already published by service {name}"),
            Holder::SameRequest { held } => write!(f, "it overlaps {held}, published by the same request"),
            Holder::Masquerade { first, last } => write!(
                f,
                "host ports {first}-{last} are the masquerade's (`bpfnet daemon --nat-ports`): containers' outgoing connections take their source ports there"
            ),
        }
    }
}

impl Holder {
    /// The refusal to return: bad input within one request, else a conflict with what exists.
    pub(super) fn refusal(&self, spec: &str) -> Error {
        match self {
            Holder::SameRequest { .. } | Holder::Masquerade { .. } => Error::invalid(format!("cannot publish {spec:?}: {self}")),
            _ => Error::conflict(format!("cannot publish {spec:?}: {self}")),
        }
    }
}

/// Every publication a new one must not overlap, with those of the request being checked,
/// indexed so that a batch of thousands of services checks each against a few entries.
pub(super) struct Holders {
    /// Services' ports (one each), by protocol and port, with the service's name (`None`: an
    /// endpoint's publication of this request).
    single: HashMap<(Protocol, u16), Vec<(PublishedPort, Option<String>)>>,
    /// Endpoints' publications (ranges), with (container, network, short id); `None`: this
    /// request's.
    ranges: Vec<(PublishedPort, Option<(String, String, String)>)>,
    /// The masquerade's port range (see [`Holder::Masquerade`]).
    masquerade: (u16, u16),
}

impl Holders {
    /// What `state` holds, but the publications of endpoint `except` (which it is replacing).
    /// Docker publishes an endpoint's ports at every start of its container: a detached
    /// endpoint of Docker's holds none (one Docker forgot, after a crash, must not either).
    /// `masquerade`: the masquerade's port range, which no publication may overlap.
    pub(super) fn of(state: &State, except: Option<&str>, masquerade: (u16, u16)) -> Self {
        let mut holders = Holders { single: HashMap::new(), ranges: Vec::new(), masquerade };
        for s in state.services.values() {
            if let Some(p) = s.publish {
                holders.single.entry((p.protocol, p.host_port)).or_default().push((p, Some(s.name.clone())));
            }
        }
        let attached = state.endpoints.iter().map(|e| &e.allocation);
        let allocated = state.allocations.iter().filter(|a| a.frontend != Frontend::Docker);
        for a in attached.chain(allocated).filter(|a| Some(a.id.as_str()) != except) {
            let network = state.network_by_id(&a.network_id).map_or("?", |n| n.name.as_str());
            for p in &a.ports {
                holders.ranges.push((*p, Some((a.container_name.clone(), network.to_string(), a.id[..12].to_string()))));
            }
        }
        holders
    }

    /// Who holds a port of `port`, if anyone does.
    pub(super) fn holder(&self, port: &PublishedPort) -> Option<Holder> {
        let (first, last) = self.masquerade;
        let port_last = port.host_port.saturating_add(port.count.saturating_sub(1));
        if port.host_port <= last && first <= port_last {
            return Some(Holder::Masquerade { first, last });
        }
        for host_port in port.host_port..=port_last {
            let found = self.single.get(&(port.protocol, host_port)).into_iter().flatten().find(|(q, _)| q.overlaps(port));
            if let Some((held, name)) = found {
                return Some(match name {
                    Some(name) => Holder::Service { held: *held, name: name.clone() },
                    None => Holder::SameRequest { held: *held },
                });
            }
        }
        self.ranges.iter().find(|(q, _)| q.overlaps(port)).map(|(held, owner)| match owner {
            Some((container, network, id)) => Holder::Endpoint { held: *held, container: container.clone(), network: network.clone(), id: id.clone() },
            None => Holder::SameRequest { held: *held },
        })
    }

    /// Records a publication of the request being checked: an endpoint's (`service` `None`) or
    /// that of a service of the batch.
    pub(super) fn take(&mut self, port: PublishedPort, service: Option<&str>) {
        match service {
            Some(name) => self.single.entry((port.protocol, port.host_port)).or_default().push((port, Some(name.to_string()))),
            None => self.ranges.push((port, None)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_publication_overlaps_the_masquerade_range() {
        let holders = Holders::of(&State::default(), None, (61_000, 65_535));
        let refused = holders.holder(&crate::ports::parse("61000:80").unwrap()).expect("in the range");
        assert!(refused.to_string().contains("--nat-ports"), "{refused}");
        assert!(matches!(refused.refusal("61000:80"), Error::Invalid(_)));
        assert!(holders.holder(&crate::ports::parse("60999-61000:80-81").unwrap()).is_some(), "a range reaching into it");
        assert!(holders.holder(&crate::ports::parse("60990-60999:80-89").unwrap()).is_none());
    }
}
