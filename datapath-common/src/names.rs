//! How maps, programs and globals are called in the eBPF object (and, for maps, the file names
//! under the daemon's bpffs directory).

pub mod map_names {
    pub const ENDPOINTS: &str = "ENDPOINTS";
    pub const IFACES: &str = "IFACES";
    pub const COUNTERS: &str = "COUNTERS";
    pub const UPLINKS: &str = "UPLINKS";
    pub const CONNTRACK: &str = "CONNTRACK";
    pub const CT_PENDING: &str = "CT_PENDING";
    pub const CT_QUOTA: &str = "CT_QUOTA";
    pub const FRAGMENTS: &str = "FRAGMENTS";
    pub const PORTS: &str = "PORTS";
    pub const HOST_ADDRS: &str = "HOST_ADDRS";
    pub const SOCK_REVNAT: &str = "SOCK_REVNAT";
    pub const SERVICES: &str = "SERVICES";
    pub const BACKENDS: &str = "BACKENDS";
    pub const MAGLEV: &str = "MAGLEV";
    pub const AFFINITY: &str = "AFFINITY";
    pub const VIPS: &str = "VIPS";
    pub const OVERLAY_VNIS: &str = "OVERLAY_VNIS";
    pub const MESH_BACKENDS: &str = "MESH_BACKENDS";
    pub const OVERLAY_NODE: &str = "OVERLAY_NODE";
    pub const OVERLAY_PEERS: &str = "OVERLAY_PEERS";
    pub const OVERLAY_PROGS: &str = "OVERLAY_PROGS";
    pub const CONTAINER_PROGS: &str = "CONTAINER_PROGS";
    /// Every map the datapath pins, in a stable order.
    pub const ALL: [&str; 22] = [
        ENDPOINTS, IFACES, COUNTERS, UPLINKS, CONNTRACK, CT_PENDING, CT_QUOTA, FRAGMENTS, PORTS, HOST_ADDRS, SOCK_REVNAT, SERVICES, BACKENDS, MAGLEV,
        AFFINITY, VIPS, OVERLAY_VNIS, MESH_BACKENDS, OVERLAY_NODE, OVERLAY_PEERS, OVERLAY_PROGS, CONTAINER_PROGS,
    ];
}

pub mod program_names {
    /// TC ingress on the host-side veth of every endpoint: traffic leaving a container.
    pub const FROM_CONTAINER: &str = "from_container";
    /// TC ingress on every uplink: replies to masqueraded connections and ICMP errors about them.
    pub const FROM_UPLINK: &str = "from_uplink";
    /// XDP on every uplink (`bpfnet daemon --xdp native`): the published path and replies into
    /// containers before the kernel allocates an skb; everything else passes on to `from_uplink`.
    pub const XDP_FROM_UPLINK: &str = "xdp_from_uplink";
    /// TC ingress on the node's VXLAN device (clusters): packets from endpoints on other nodes,
    /// checked against what etcd says and delivered into their container.
    pub const FROM_OVERLAY: &str = "from_overlay";
    /// Not attached: `from_container` tail-calls it (through `CONTAINER_PROGS`, slot 0) with a
    /// container's IPv6 packet: a program of its own, with the verifier's budget and a stack of
    /// its own.
    pub const FROM_CONTAINER_V6: &str = "from_container_v6";
    /// Not attached: `from_uplink` tail-calls it (through `OVERLAY_PROGS`) with a packet whose
    /// VXLAN headers it took off.
    pub const FROM_UNDERLAY: &str = "from_underlay";
    /// cgroup socket programs at the cgroup root, acting only on sockets of the daemon's
    /// namespace: a published port reached from the host itself.
    pub const SOCK_CONNECT4: &str = "sock_connect4";
    pub const SOCK_SENDMSG4: &str = "sock_sendmsg4";
    pub const SOCK_RECVMSG4: &str = "sock_recvmsg4";
    pub const SOCK_GETPEERNAME4: &str = "sock_getpeername4";
    pub const SOCK_CONNECT6: &str = "sock_connect6";
    pub const SOCK_SENDMSG6: &str = "sock_sendmsg6";
    pub const SOCK_RECVMSG6: &str = "sock_recvmsg6";
    pub const SOCK_GETPEERNAME6: &str = "sock_getpeername6";
    pub const SOCKET_PROGRAMS: [&str; 8] = [
        SOCK_CONNECT4,
        SOCK_SENDMSG4,
        SOCK_RECVMSG4,
        SOCK_GETPEERNAME4,
        SOCK_CONNECT6,
        SOCK_SENDMSG6,
        SOCK_RECVMSG6,
        SOCK_GETPEERNAME6,
    ];
}

/// Globals of the eBPF object that the daemon sets when it loads the program.
pub mod global_names {
    /// `u8`, non-zero: log every packet's outcome through aya-log (`bpfnet daemon --trace`).
    pub const TRACE: &str = "TRACE";
    /// [`crate::CtConfig`]: connection lifetimes and the masquerade port range.
    pub const CT_CONFIG: &str = "CT_CONFIG";
    /// `u64`: the cookie of the daemon's network namespace; the socket programs act on sockets
    /// of that namespace only (0: on none).
    pub const NETNS_COOKIE: &str = "NETNS_COOKIE";
}
