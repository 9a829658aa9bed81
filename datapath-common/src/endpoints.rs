//! `ENDPOINTS`: endpoint address ([`crate::IpKey`]) -> where to deliver a packet for it.
use bytemuck::{Pod, Zeroable};

/// Default size of the endpoint maps; the daemon can override it when it creates them.
pub const MAX_ENDPOINTS: u32 = 65_536;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Pod, Zeroable)]
pub struct EndpointInfo {
    /// Host-side veth of the endpoint: the target of `bpf_redirect_peer`.
    pub host_ifindex: u32,
    /// Datapath network id (small integer chosen by the daemon); isolation compares these.
    pub network_id: u32,
    /// MAC address of the container's interface.
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}

const _: () = assert!(core::mem::size_of::<EndpointInfo>() == 16);
