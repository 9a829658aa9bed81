//! Creating and removing networks.
use std::net::IpAddr;

use ipnetwork::IpNetwork;

use super::{views, Daemon, Error, DaemonResult, GATEWAY_LABEL};
use crate::{
    api, ids,
    ipam::{self, HostNetworks},
    state::{Driver, Network, Subnet},
};

impl Daemon {
    /// What a new subnet must stay clear of besides networks: the prefixes the host routes and
    /// the addresses it holds; with `pools`, also the pools Docker's IPAM holds (as if routed).
    pub(super) async fn host_networks(&self, pools: bool) -> DaemonResult<HostNetworks> {
        let ours: Vec<IpAddr> = self.state.endpoints.iter().flat_map(|e| e.addresses()).collect();
        let mut routes = self.netlink.routed_prefixes(&ours).await.map_err(Error::internal)?;
        if pools {
            routes.extend(self.state.pools.iter().map(|p| p.subnet));
        }
        Ok(HostNetworks { routes, addresses: self.netlink.host_addresses(GATEWAY_LABEL).await.map_err(Error::internal)? })
    }

    pub async fn create_network(&mut self, req: api::CreateNetwork) -> DaemonResult<api::NetworkInspect> {
        ipam::validate_name("network", &req.name).map_err(Error::invalid)?;
        if self.state.network_by_name(&req.name).is_some() {
            return Err(Error::conflict(format!("network with name {:?} already exists", req.name)));
        }
        let overlay = match req.driver.as_deref() {
            None | Some("bpfnet") => false,
            Some("overlay") => true,
            Some(other) => return Err(Error::invalid(format!("unknown network driver {other:?}: bpfnet (this host's) or overlay (the cluster's)"))),
        };
        let ipv4 = if req.ipv4.unwrap_or(true) {
            // A subnet of the default pool: none Docker's IPAM holds.
            let host = self.host_networks(req.subnet.is_none()).await?;
            let subnet = ipam::choose_subnet(&self.state, req.subnet.as_deref(), &host).map_err(Error::refused)?;
            // A pool Docker's IPAM holds is for the Docker network made on exactly it.
            if let Some(pool) = self.state.pools.iter().find(|p| p.subnet != subnet && ipam::overlaps(&p.subnet, &subnet)) {
                return Err(Error::conflict(format!("subnet {subnet} overlaps with {}, an address pool Docker holds", pool.subnet)));
            }
            let gateway = ipam::choose_gateway(&subnet, req.gateway.as_deref()).map_err(Error::invalid)?;
            Some(Subnet { subnet, gateway })
        } else {
            let ipv4_given = [("--subnet", &req.subnet), ("--gateway", &req.gateway), ("--ip-range", &req.ip_range)];
            if let Some((flag, Some(value))) = ipv4_given.iter().find(|(_, v)| v.is_some()) {
                return Err(Error::invalid(format!("{flag} {value} is IPv4, but the network is IPv6-only (--ipv4=false)")));
            }
            if !req.ipv6 && req.subnet6.is_none() {
                return Err(Error::invalid("a network needs IPv4 or IPv6: with --ipv4=false give --ipv6 or an IPv6 --subnet"));
            }
            if overlay {
                return Err(Error::invalid(
                    "an overlay network needs an IPv4 subnet: its IPv6 addresses pair with the IPv4 ones the cluster claims",
                ));
            }
            None
        };
        let ip_range = match (req.ip_range.as_deref(), ipv4) {
            (Some(r), Some(v4)) => Some(ipam::parse_ip_range(r, &v4.subnet).map_err(Error::invalid)?),
            // A Docker network takes the range of the pool Docker's IPAM reserved for it.
            (_, v4) => v4.and_then(|v4| self.state.pools.iter().find(|p| p.subnet == v4.subnet)).and_then(|p| p.ip_range),
        };
        let options = ipam::parse_options(&req.options).map_err(Error::invalid)?;
        let ipv6 = if req.ipv6 || req.subnet6.is_some() {
            // The IPv6 gateway goes on lo: a namespace with IPv6 off cannot hold it.
            let lo = std::fs::read_to_string("/proc/sys/net/ipv6/conf/lo/disable_ipv6").unwrap_or_else(|_| "1".into());
            if lo.trim() != "0" {
                return Err(Error::refused(anyhow::anyhow!(
                    "IPv6 is off in the daemon's namespace (net.ipv6.conf.lo.disable_ipv6 is not 0): turn it on for dual-stack networks"
                )));
            }
            let pool = ipam::DEFAULT_IPV6_POOL.parse().expect("a valid prefix");
            // A /64 of the default pool: none Docker's IPAM holds either.
            let host = self.host_networks(req.subnet6.is_none()).await?;
            let subnet6 = ipam::choose_subnet6(&self.state, req.subnet6.as_deref(), &host, &pool).map_err(Error::refused)?;
            // A pool Docker's IPAM holds is for the Docker network made on exactly it.
            if let Some(held) = self.state.pools.iter().find(|p| p.subnet != subnet6 && ipam::overlaps(&p.subnet, &subnet6)) {
                return Err(Error::conflict(format!("subnet {subnet6} overlaps with {}, an address pool Docker holds", held.subnet)));
            }
            let gateway6 = if let (true, Some(v4)) = (overlay, ipv4) {
                overlay_gateway6(&v4.subnet, v4.gateway, &subnet6, req.gateway6.as_deref())?
            } else {
                ipam::choose_gateway(&subnet6, req.gateway6.as_deref()).map_err(Error::invalid)?
            };
            Some(Subnet { subnet: subnet6, gateway: gateway6 })
        } else if let Some(gateway6) = &req.gateway6 {
            return Err(Error::invalid(format!("gateway {gateway6} is IPv6 but the network has no IPv6 subnet: add --ipv6 or an IPv6 --subnet")));
        } else {
            None
        };
        let net = Network {
            id: ids::random_id(),
            name: req.name,
            ipv4,
            internal: req.internal,
            icc: options.icc,
            masquerade: options.masquerade,
            options: req.options,
            datapath_id: self.state.free_datapath_id(),
            created: ids::now_rfc3339(),
            driver: Driver::Local,
            ip_range,
            ipv6,
        };
        let net = if overlay { self.create_overlay_network(net).await? } else {
            self.install_network(&net).await?;
            net
        };
        let sides: Vec<String> = net.ipv4.iter().chain(&net.ipv6).map(|side| format!("subnet {}, gateway {}", side.subnet, side.gateway)).collect();
        log::info!("network {} created: {} (id {}, driver {})", net.name, sides.join("; "), &net.id[..12], net.driver.name());
        Ok(views::inspect_network(&self.state, &net))
    }

    /// Makes `net` on this host: its gateway addresses, then its record.
    pub(super) async fn install_network(&mut self, net: &Network) -> DaemonResult<()> {
        let gateway = net.gateway();
        // The addresses first: a crash before the save leaves a labelled gateway of no network,
        // which the reconciler removes.
        for address in net.gateways() {
            if let Err(e) = self.netlink.add_labelled_local_address(self.gateway_ifindex, address, GATEWAY_LABEL).await {
                self.remove_gateways(net).await;
                return Err(Error::internal(e));
            }
        }
        super::crash_point("gateway-added");
        self.state.networks.push(net.clone());
        if let Err(e) = self.commit() {
            self.state.networks.pop();
            self.remove_gateways(net).await;
            return Err(Error::internal(e));
        }
        if let Err(e) = self.refresh_host_addresses().await {
            log::warn!("telling the socket programs about gateway {gateway}: {e:#}");
        }
        Ok(())
    }

    pub async fn remove_network(&mut self, name: &str) -> DaemonResult<()> {
        let net = self.network(name)?.clone();
        let users: Vec<&str> = self.state.endpoints_of(&net.id).map(|e| e.container_name.as_str()).collect();
        if !users.is_empty() {
            return Err(Error::conflict(format!(
                "network {name:?} has active endpoints ({}): disconnect them first",
                users.join(", ")
            )));
        }
        let allocated: Vec<String> = self
            .state
            .allocations
            .iter()
            .filter(|a| a.network_id == net.id)
            .map(|a| format!("{} ({})", &a.id[..12], a.container_name))
            .collect();
        if !allocated.is_empty() {
            return Err(Error::conflict(format!(
                "network {name:?} has allocated endpoints ({}): release them first (`bpfnet endpoint rm`)",
                allocated.join(", ")
            )));
        }
        let services: Vec<&str> =
            self.state.services.values().filter(|s| s.network_id == net.id).map(|s| s.name.as_str()).collect();
        if !services.is_empty() {
            return Err(Error::conflict(format!(
                "network {name:?} has services ({}): remove them first (`bpfnet service rm`)",
                services.join(", ")
            )));
        }
        if net.driver.is_overlay() {
            self.remove_overlay_network(&net).await?;
        }
        self.forget_network(&net).await?;
        log::info!("network {name} removed (id {})", &net.id[..12]);
        Ok(())
    }

    /// Removes `net` from this host: its record, then its gateway addresses.
    pub(super) async fn forget_network(&mut self, net: &Network) -> DaemonResult<()> {
        let name = &net.name;
        let before = self.state.clone();
        self.state.networks.retain(|n| n.id != net.id);
        if let Err(e) = self.commit() {
            self.state = before;
            return Err(Error::internal(e));
        }
        super::crash_point("network-forgotten");
        // Committed: a failure from here on is the reconciler's to finish, not the user's error.
        self.remove_gateways(net).await;
        if let Err(e) = self.refresh_host_addresses().await {
            log::warn!("telling the socket programs that gateway {} is gone: {e:#}", net.gateway());
        }
        if net.driver.is_overlay() {
            if let Err(e) = self.program_overlay() {
                log::warn!("network {name}: updating the overlay maps: {e:#}");
            }
        }
        Ok(())
    }

    /// Removes the gateway addresses of `net` (failures logged: the next start retries).
    async fn remove_gateways(&self, net: &Network) {
        for address in net.gateways() {
            if let Err(e) = self.netlink.delete_addresses(self.gateway_ifindex, Some(address), Some(GATEWAY_LABEL)).await {
                log::warn!("network {}: removing its gateway {address}: {e:#} (retried at the next start)", net.name);
            }
        }
    }

    pub(super) fn network(&self, name: &str) -> DaemonResult<&Network> {
        self.state.network_by_name(name).ok_or_else(|| Error::not_found(format!("network {name:?} not found")))
    }
}

/// An overlay network's IPv6 gateway: the address paired with its IPv4 gateway (see
/// `ipam::paired_address6`), as every IPv6 address of it is; `--gateway` may name it, no other.
fn overlay_gateway6(subnet: &IpNetwork, gateway: IpAddr, subnet6: &IpNetwork, requested: Option<&str>) -> DaemonResult<IpAddr> {
    let host_bits = |n: &IpNetwork| if n.is_ipv4() { 32 } else { 128 } - n.prefix() as u32;
    if host_bits(subnet6) < host_bits(subnet) {
        return Err(Error::invalid(format!(
            "IPv6 subnet {subnet6} is smaller than {subnet}: an overlay network's IPv6 addresses pair with its IPv4 ones (one each), \
             so its IPv6 subnet needs at least as many addresses"
        )));
    }
    let paired = ipam::paired_address6(subnet, subnet6, gateway).ok_or_else(|| Error::invalid(format!("no IPv6 address pairs with gateway {gateway}")))?;
    match requested {
        Some(text) if text.parse::<IpAddr>().ok() != Some(paired) => Err(Error::invalid(format!(
            "gateway {text}: an overlay network's IPv6 addresses pair with its IPv4 ones, so its IPv6 gateway is {paired} (that of {gateway})"
        ))),
        _ => Ok(paired),
    }
}
