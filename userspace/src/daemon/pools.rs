//! Address pools for Docker's IPAM driver protocol (`docker network create --ipam-driver bpfnet`).
//! Docker asks for a pool before it creates the network, and for every address (the gateway's,
//! each container's) before it uses one; bpfnet picks subnets that clash with nothing the host
//! routes or holds and with no other network (Docker's own IPAM knows only Docker's networks).
//! A pool's id is its subnet.
use std::net::IpAddr;

use ipnetwork::IpNetwork;

use super::{Daemon, DaemonResult, Error};
use crate::{ipam, state::Pool};

impl Daemon {
    /// Reserves the subnet `requested`, or the first free one of the default pool (`v6`: an IPv6
    /// subnet, a /64 of the IPv6 pool by default); addresses are then handed out from
    /// `ip_range` (Docker's `--ip-range`) if given.
    pub async fn request_pool(&mut self, requested: Option<&str>, ip_range: Option<&str>, v6: bool) -> DaemonResult<IpNetwork> {
        let parse = |text: &str| if v6 { ipam::parse_subnet6(text) } else { ipam::parse_subnet(text) };
        if let Some(text) = requested {
            let net = parse(text).map_err(Error::invalid)?;
            if let Some(pool) = self.state.pools.iter().find(|p| ipam::overlaps(&p.subnet, &net)) {
                return Err(Error::conflict(format!("subnet {net} overlaps with {}, a pool Docker holds already", pool.subnet)));
            }
        }
        // An overlay network's own subnet: for a Docker network that stands for it on this node
        // (its addresses are then the cluster's, see `request_address`).
        let overlay = requested
            .filter(|_| !v6)
            .and_then(|text| ipam::parse_subnet(text).ok())
            .and_then(|net| self.state.networks.iter().filter(|n| n.driver.is_overlay()).filter_map(|n| n.ipv4).find(|v4| v4.subnet == net))
            .map(|v4| v4.subnet);
        let subnet = match overlay {
            Some(subnet) => subnet,
            None => {
                // Pools not yet networks count as taken too.
                let host = self.host_networks(true).await?;
                if v6 {
                    let pool = ipam::DEFAULT_IPV6_POOL.parse().expect("a valid prefix");
                    ipam::choose_subnet6(&self.state, requested, &host, &pool).map_err(Error::refused)?
                } else {
                    ipam::choose_subnet(&self.state, requested, &host).map_err(Error::refused)?
                }
            }
        };
        let ip_range = ip_range.map(|r| ipam::parse_ip_range(r, &subnet)).transpose().map_err(Error::invalid)?;
        self.state.pools.push(Pool { subnet, addresses: vec![], ip_range });
        if let Err(e) = self.commit() {
            self.state.pools.pop();
            return Err(Error::internal(e));
        }
        log::info!("address pool {subnet} reserved for Docker");
        Ok(subnet)
    }

    /// Gives out `requested` or the lowest free address of pool `pool_id` (the gateway's when
    /// `gateway`: the first address unless one is requested). Returns it with the prefix length.
    pub async fn request_address(&mut self, pool_id: &str, requested: Option<IpAddr>, gateway: bool) -> DaemonResult<(IpAddr, u8)> {
        let i = self.pool_index(pool_id)?;
        let subnet = self.state.pools[i].subnet;
        // What the network (once created) holds besides the pool's own record.
        let mut held: Vec<IpAddr> = self.state.pools[i].addresses.clone();
        // A dual-stack network's IPv6 pool: its gateway and its endpoints' IPv6 addresses.
        if let Some(net) = self.state.networks.iter().find(|n| n.ipv6.is_some_and(|v6| v6.subnet == subnet)) {
            held.extend(net.ipv6.map(|v6| v6.gateway));
            held.extend(self.state.allocations_of(&net.id).filter_map(|a| a.address6));
            held.extend(self.state.services.values().filter(|s| s.network_id == net.id).filter_map(|s| s.vip6));
        }
        let network = self.state.networks.iter().find_map(|n| Some((n, n.ipv4.filter(|v4| v4.subnet == subnet)?)));
        if let Some((net, v4)) = network {
            held.push(v4.gateway);
            held.extend(self.state.allocations_of(&net.id).filter_map(|a| a.address4));
            held.extend(self.state.services.values().filter(|s| s.network_id == net.id).filter_map(|s| s.vip4));
            if net.driver.is_overlay() {
                if gateway && requested.is_none_or(|ip| ip == v4.gateway) {
                    // Every node is the overlay network's gateway, at the same address.
                    return Ok((v4.gateway, subnet.prefix()));
                }
                // The cluster's address: claimed in etcd for this node now (the endpoint's
                // claim takes the reservation's place when Docker makes it).
                let net = net.clone();
                let ip = self.reserve_overlay_address(&net, requested, &held).await?;
                self.state.pools[i].addresses.push(ip);
                if let Err(e) = self.commit() {
                    self.state.pools[i].addresses.retain(|a| *a != ip);
                    return Err(Error::internal(e));
                }
                return Ok((ip, subnet.prefix()));
            }
        }
        let ip = match requested {
            Some(ip) => {
                ipam::check_host_address("address", ip, &subnet).map_err(Error::invalid)?;
                if self.state.pools[i].addresses.contains(&ip) {
                    return Err(Error::conflict(format!("address {ip} of pool {subnet} is already given out")));
                }
                ip
            }
            None => {
                let broadcast = ipam::broadcast(&subnet);
                // The gateway takes the subnet's first address; endpoints come from the range.
                let from = if gateway { subnet } else { self.state.pools[i].ip_range.unwrap_or(subnet) };
                let mut candidates = (0u128..)
                    .map_while(|o| ipam::nth_address(&from, o))
                    .filter(|ip| Some(*ip) != broadcast && *ip != subnet.network());
                let found = if gateway { candidates.next() } else { candidates.find(|ip| !held.contains(ip)) };
                found.ok_or_else(|| Error::conflict(format!("no free address left in pool {subnet}")))?
            }
        };
        self.state.pools[i].addresses.push(ip);
        if let Err(e) = self.commit() {
            self.state.pools[i].addresses.retain(|a| *a != ip);
            return Err(Error::internal(e));
        }
        Ok((ip, subnet.prefix()))
    }

    /// Takes `ip` back into pool `pool_id` (nothing to do if it is not given out).
    pub fn release_address(&mut self, pool_id: &str, ip: IpAddr) -> DaemonResult<()> {
        let i = self.pool_index(pool_id)?;
        let before = self.state.pools[i].addresses.len();
        self.state.pools[i].addresses.retain(|a| *a != ip);
        if self.state.pools[i].addresses.len() != before {
            self.commit().map_err(Error::internal)?;
        }
        Ok(())
    }

    /// Frees the pool `pool_id`.
    pub fn release_pool(&mut self, pool_id: &str) -> DaemonResult<()> {
        let i = self.pool_index(pool_id)?;
        let pool = self.state.pools.remove(i);
        if let Err(e) = self.commit() {
            self.state.pools.insert(i, pool);
            return Err(Error::internal(e));
        }
        log::info!("address pool {} released", pool.subnet);
        Ok(())
    }

    fn pool_index(&self, pool_id: &str) -> DaemonResult<usize> {
        self.state
            .pools
            .iter()
            .position(|p| p.subnet.to_string() == pool_id)
            .ok_or_else(|| Error::not_found(format!("no address pool {pool_id}")))
    }
}
