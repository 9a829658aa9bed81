//! How maps, programs and globals are called in the eBPF object (and, for maps, the file names
//! under the daemon's bpffs directory).

pub mod map_names {
    pub const ENDPOINTS: &str = "ENDPOINTS";
    pub const IFACES: &str = "IFACES";
    pub const COUNTERS: &str = "COUNTERS";
    pub const UPLINKS: &str = "UPLINKS";
    pub const CONNTRACK: &str = "CONNTRACK";
    pub const FRAGMENTS: &str = "FRAGMENTS";
    pub const PORTS: &str = "PORTS";
    /// Every map the datapath pins, in a stable order.
    pub const ALL: [&str; 7] = [ENDPOINTS, IFACES, COUNTERS, UPLINKS, CONNTRACK, FRAGMENTS, PORTS];
}

pub mod program_names {
    /// TC ingress on the host-side veth of every endpoint: traffic leaving a container.
    pub const FROM_CONTAINER: &str = "from_container";
    /// TC ingress on every uplink: replies to masqueraded connections and ICMP errors about them.
    pub const FROM_UPLINK: &str = "from_uplink";
}

/// Globals of the eBPF object that the daemon sets when it loads the program.
pub mod global_names {
    /// `u8`, non-zero: log every packet's outcome through aya-log (`bpfnet daemon --trace`).
    pub const TRACE: &str = "TRACE";
    /// [`crate::CtConfig`]: connection lifetimes and the masquerade port range.
    pub const CT_CONFIG: &str = "CT_CONFIG";
}
