//! `PORTS`: published ports (`-p [HOST_IP:]HOST_PORT:CONTAINER_PORT[/PROTO]`): a host address,
//! port and protocol -> the container address and port a new connection is translated to.
use bytemuck::{Pod, Zeroable};

use crate::IpKey;

pub const MAX_PUBLISHED_PORTS: u32 = 65_536;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Pod, Zeroable)]
pub struct PortKey {
    /// The host address the port is published on; the unspecified address of a family
    /// (`0.0.0.0`, IPv4-mapped, or `::`): every address of the host of that family.
    pub addr: IpKey,
    /// Network order.
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

const _: () = assert!(core::mem::size_of::<PortKey>() == 20);

impl PortKey {
    /// The key of a port published on every IPv4 address of the host (`0.0.0.0`).
    pub const fn any_ipv4_address(port: u16, proto: u8) -> Self {
        Self { addr: IpKey::from_ipv4_word(0), port, proto, _pad: 0 }
    }

    /// The key of a port published on every IPv6 address of the host (`::`).
    pub const fn any_ipv6_address(port: u16, proto: u8) -> Self {
        Self { addr: IpKey { addr: [0; 4] }, port, proto, _pad: 0 }
    }

    /// The key of a port published on every address of the host of one family.
    #[inline(always)]
    pub const fn any_address(port: u16, proto: u8, ipv6: bool) -> Self {
        if ipv6 { Self::any_ipv6_address(port, proto) } else { Self::any_ipv4_address(port, proto) }
    }
}

/// Flags of a [`PortTarget`] (0 in entries written before they existed: the defaults).
pub mod port_flags {
    /// The publication wins over sockets of the host that are not connected (listeners,
    /// unbound-peer UDP sockets), as an iptables DNAT would: a container runtime that holds its
    /// containers' host ports open as reservations (Podman's conmon) must not take their traffic.
    /// Without it, a host service listening on the port keeps it. Sockets of the host's own
    /// connections keep their packets either way.
    pub const OVER_HOST_LISTENERS: u16 = 1;
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Pod, Zeroable)]
pub struct PortTarget {
    /// The container's address (delivery details come from `ENDPOINTS`); unused for a service.
    pub addr: IpKey,
    /// Network order.
    pub port: u16,
    /// [`port_flags`].
    pub flags: u16,
    /// Non-zero: the service (`SERVICES` index) whose backends take the connection.
    pub service: u32,
    /// Non-zero: a service's VIP, reachable only from containers of this network (by
    /// `datapath_id`) and from the host; 0: a published port, reachable from anywhere.
    pub network: u32,
}

const _: () = assert!(core::mem::size_of::<PortTarget>() == 28);
