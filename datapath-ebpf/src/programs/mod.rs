//! The programs: one thin composition per hook of the library modules (`conntrack`, `nat`, `lb`,
//! `guard`, `route`, ...), which own their maps. `container`: a container's packets (TC);
//! `uplink`: packets arriving on an uplink (TC); `uplink_xdp`: the same published path in XDP,
//! before the kernel allocates an skb; `overlay`: packets from other nodes through the VXLAN
//! device (TC). The cgroup socket programs are `socket`'s.
pub mod container;
pub mod overlay;
pub mod uplink;
pub mod uplink_xdp;
