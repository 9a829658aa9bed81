//! The socket programs' maps: host-local access to published ports (`curl 127.0.0.1:8080` from
//! the daemon's namespace) is translated when the socket connects, not per packet.
//!
//! - `HOST_ADDRS`: every address of the daemon's namespace (a port published on every address
//!   matches these, and 127.0.0.0/8).
//! - `SOCK_REVNAT`: (socket cookie, container address and port) -> the address and port the
//!   application asked for, so `getpeername()` and `recvfrom()` show what it connected to.
use bytemuck::{Pod, Zeroable};

use crate::IpKey;

pub const MAX_HOST_ADDRS: u32 = 1_024;
pub const SOCK_REVNAT_ENTRIES: u32 = 65_536;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Pod, Zeroable)]
pub struct SockRevKey {
    pub cookie: u64,
    /// The container the socket was sent to.
    pub addr: IpKey,
    /// Network order.
    pub port: u16,
    pub _pad: [u8; 6],
}

const _: () = assert!(core::mem::size_of::<SockRevKey>() == 32);

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Pod, Zeroable)]
pub struct SockRevValue {
    /// What the application asked for.
    pub addr: IpKey,
    /// Network order.
    pub port: u16,
    pub _pad: [u8; 2],
}

const _: () = assert!(core::mem::size_of::<SockRevValue>() == 20);
