//! `PORTS`: published ports (`-p [HOST_IP:]HOST_PORT:CONTAINER_PORT[/PROTO]`): a host address,
//! port and protocol -> the container address and port a new connection is translated to.
use bytemuck::{Pod, Zeroable};

use crate::IpKey;

pub const MAX_PUBLISHED_PORTS: u32 = 65_536;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Pod, Zeroable)]
pub struct PortKey {
    /// The host address the port is published on; all zeros: every address of the host.
    pub addr: IpKey,
    /// Network order.
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

const _: () = assert!(core::mem::size_of::<PortKey>() == 20);

impl PortKey {
    /// The key of a port published on every address.
    pub const fn any_address(port: u16, proto: u8) -> Self {
        Self { addr: IpKey { addr: [0; 4] }, port, proto, _pad: 0 }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Pod, Zeroable)]
pub struct PortTarget {
    /// The container's address (delivery details come from `ENDPOINTS`).
    pub addr: IpKey,
    /// Network order.
    pub port: u16,
    pub _pad: u16,
}

const _: () = assert!(core::mem::size_of::<PortTarget>() == 20);
