//! The programs: one thin composition per hook of the library modules (`conntrack`, `nat`, `lb`,
//! `guard`, `route`, ...), which own their maps. `container`: a container's packets (TC), `container_v6` its IPv6 ones (tail-called);
//! `uplink`: packets arriving on an uplink (TC); `uplink_xdp`: the same published path in XDP,
//! before the kernel allocates an skb; `overlay`: packets from other nodes through the VXLAN
//! device (TC). The cgroup socket programs are `socket`'s.
pub mod container;
pub mod container_v6;
pub mod overlay;
pub mod uplink;
pub mod uplink_xdp;
