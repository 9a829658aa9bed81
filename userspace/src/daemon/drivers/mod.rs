//! Network drivers: what a kind of network does in the kernel for an endpoint. The core
//! (`endpoints`: allocation, write-ahead, state, rollback; `reconcile`) decides when; a driver
//! decides how, through the handles the core lends it ([`Kernel`]). Today every network is of
//! the `veth` kind: an overlay network's endpoints are veth pairs too, with an MTU that leaves
//! room for the encapsulation (the tunnel is the datapath's, see `datapath-ebpf/src/overlay.rs`);
//! macvlan, host or none would each be one more file here and one more arm in [`of`].
mod veth;

use std::{fs::File, net::IpAddr};

use anyhow::Result;

pub(super) use veth::{forward_ipv6, host_veth_name, InterfaceExists};
use crate::{
    conntrack::Conntrack,
    datapath::Datapath,
    netns::NetnsRef,
    plumbing::{LinkInfo, Netlink},
    state::{Driver, Endpoint, Network},
};

/// The kernel handles a driver works through, lent by the core for one call.
pub(super) struct Kernel<'a> {
    pub netlink: &'a Netlink,
    pub datapath: &'a mut Datapath,
    pub conntrack: &'a mut Conntrack,
}

impl Kernel<'_> {
    /// The same handles, for a nested call.
    pub fn reborrow(&mut self) -> Kernel<'_> {
        Kernel { netlink: self.netlink, datapath: self.datapath, conntrack: self.conntrack }
    }
}

/// One kind of network's kernel side of an endpoint. `backend`: the endpoint serves a service
/// (the datapath lets it answer through the VIP).
#[allow(async_fn_in_trait)]
pub(super) trait NetworkDriver {
    /// Makes the endpoint's interfaces, the container's named `peer` inside `peer_netns` (or,
    /// without one, here, for an engine to move), marks the host side and programs the datapath
    /// for it. Returns the host side's index (also in `ep.host_ifindex`). On error the caller
    /// tears down whatever was made.
    async fn make(&self, k: Kernel<'_>, net: &Network, ep: &mut Endpoint, backend: bool, peer: &str, peer_netns: Option<&File>) -> Result<u32>;

    /// Programs the host side `link` of an endpoint that exists: maps, program, link up, route,
    /// neighbour. Idempotent (connect and the reconciler).
    async fn program(&self, k: Kernel<'_>, net: &Network, ep: &Endpoint, backend: bool, link: &LinkInfo) -> Result<()>;

    /// Configures the container's side inside its namespace `ns` (address, and the default route
    /// through the gateway when `default_route`), once [`Self::make`] made it there.
    async fn configure_container(&self, k: Kernel<'_>, net: &Network, ep: &mut Endpoint, backend: bool, ns: &NetnsRef, default_route: bool) -> Result<()>;

    /// Removes everything the endpoint has in the kernel; `link`: its host side if that still
    /// exists; `taken`: those of its addresses another endpoint holds now (their entries stay).
    /// Idempotent; tolerates half-made endpoints; tries every step and reports every failure.
    async fn teardown(&self, k: Kernel<'_>, ep: &Endpoint, link: Option<&LinkInfo>, taken: &[IpAddr]) -> Result<()>;

    /// The endpoint's host side as it is now (it may have been renamed), if it exists.
    async fn locate(&self, netlink: &Netlink, ep: &Endpoint) -> Result<Option<LinkInfo>>;
}

/// The driver of the network `net`. A concrete type, not `impl NetworkDriver`: the futures of
/// its methods must be known to be `Send` (changes run on the worker). With a second kind this
/// becomes an enum of drivers that implements the trait by matching.
pub(super) fn of(net: &Network) -> veth::Veth {
    match net.driver {
        Driver::Local => veth::Veth { mtu: None },
        Driver::Overlay { mtu, .. } => veth::Veth { mtu: Some(mtu) },
    }
}

/// The driver of the endpoint `ep` (its network's; also for an endpoint whose network record is
/// gone).
pub(super) fn of_endpoint(_ep: &Endpoint) -> veth::Veth {
    veth::Veth { mtu: None }
}
