//! `bpfnet daemon ...`: its flags (also the settings of its configuration file) and how they
//! become the daemon's configuration.
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::{daemon::{Config, XdpSetting}, datapath::LoadOptions, netns, runtime};

/// `--overlay-encap`.
#[derive(Clone, Copy, clap::ValueEnum)]
pub(super) enum OverlayEncapArg {
    Datapath,
    Device,
}

/// `--xdp`.
#[derive(Clone, Copy, clap::ValueEnum)]
pub(super) enum XdpArg {
    Auto,
    Native,
    Off,
}

#[derive(Args)]
pub struct DaemonArgs {
    /// Network namespace to run in (a name under /run/netns, a path, or a PID); all networks,
    /// gateways and host-side interfaces live there. Default: the daemon's own namespace.
    #[arg(long)]
    netns: Option<String>,
    /// Where the desired state is stored.
    #[arg(long, default_value = "/var/lib/bpfnet")]
    state_dir: PathBuf,
    /// BPF filesystem directory for pinned maps and links (mounted if it is not bpffs yet).
    #[arg(long, default_value = "/sys/fs/bpf/bpfnet")]
    bpffs: PathBuf,
    /// Remove everything bpfnet created (interfaces, pinned maps and links, state) and exit.
    #[arg(long)]
    cleanup: bool,
    /// Log one line per packet the datapath handles: what it did (forwarded, answered, dropped and
    /// why), on which interface, between which addresses. For debugging: it costs throughput.
    #[arg(long)]
    trace: bool,
    /// Most API connections open at once; one more is answered 503 (busy) and closed.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: u32,
    /// How long a client may take to send a request's head, then its body; idle connections are
    /// closed after it too. Examples: 10s, 500ms.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    client_timeout: std::time::Duration,
    /// Interface that traffic to the outside leaves by (repeatable). Containers' connections
    /// leave with its address (masquerade). Default: the interface of the default route.
    #[arg(long = "uplink", value_name = "IFACE")]
    uplinks: Vec<String>,
    /// Run the uplinks' published path in XDP: replies into containers and connections from
    /// outside to published ports and services are translated and delivered before the kernel
    /// allocates an skb (what XDP cannot do passes on to TC). `auto` (the default): native XDP on
    /// an uplink whose driver runs XDP before it builds an skb (a NIC), TC alone on a veth (XDP
    /// there queues every frame to the veth's NAPI ring and takes the GSO off the frames that
    /// pass: measured slower, see docs/BENCHMARKS.md); `native` on every uplink, or the daemon
    /// fails; `off` keeps TC alone. XDP needs complete checksums from the uplink (a NIC's frames
    /// have them; the peer of a veth uplink sends them with `ethtool -K PEER tx off`): frames
    /// whose checksum was left to offload take the TC path. `bpfnet stats` says which path each
    /// uplink takes and why.
    #[arg(long, value_name = "MODE", default_value = "auto")]
    xdp: XdpArg,
    /// Size of the table of established connections in entries; each connection takes two. New
    /// connections wait in a table a quarter of this size until they are established (a TCP
    /// handshake completed, an answer to UDP or ICMP): a flood of new connections evicts only
    /// new ones. Applies when the tables are created (pinned tables keep their size across
    /// restarts).
    #[arg(long, default_value_t = datapath_common::conntrack::DEFAULT_CT_ENTRIES, value_parser = clap::value_parser!(u32).range(64..))]
    ct_max: u32,
    /// Entries of the established table the connections of one container may hold (a connection
    /// to a published port counts for the container that serves it). Beyond its share, a
    /// container's connections still work, from the new-connection table, where floods can
    /// evict them: one container cannot fill the table. 0: no limit. Default: a quarter of
    /// --ct-max.
    #[arg(long, value_name = "ENTRIES")]
    ct_max_per_endpoint: Option<u32>,
    /// Lifetime of an idle established TCP connection.
    #[arg(long, default_value = "6h", value_parser = humantime::parse_duration)]
    ct_timeout_tcp: std::time::Duration,
    /// Lifetime of a TCP connection that has not been answered yet.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    ct_timeout_tcp_syn: std::time::Duration,
    /// Lifetime of a TCP connection after its FIN or RST.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    ct_timeout_tcp_close: std::time::Duration,
    /// Lifetime of an idle UDP flow.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    ct_timeout_udp: std::time::Duration,
    /// Lifetime of an ICMP echo exchange.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    ct_timeout_icmp: std::time::Duration,
    /// Source ports (and ICMP identifiers) masquerade picks from, as MIN-MAX, where a container's
    /// own port is taken. It must not overlap the host's ephemeral ports
    /// (net.ipv4.ip_local_port_range, Linux's default 32768-60999), which the host's own
    /// connections use: the daemon refuses to start if it does.
    #[arg(long, default_value = "61000-65535", value_parser = parse_port_range)]
    nat_ports: (u16, u16),
    /// cgroup v2 directory where the socket programs attach (they let processes of the daemon's
    /// namespace reach published ports, and act on that namespace's sockets only). Default: the
    /// root of the mounted cgroup v2 hierarchy.
    #[arg(long)]
    cgroup_root: Option<PathBuf>,
    /// Services the datapath holds. Each has room for a Maglev table of --maglev-table-size
    /// 4-byte slots, allocated when the table is created (default: 1024 x 16381 x 4 B = 64 MiB).
    #[arg(long, default_value_t = datapath_common::services::DEFAULT_MAX_SERVICES, value_parser = clap::value_parser!(u32).range(1..))]
    max_services: u32,
    /// The most slots a service's Maglev table takes (a prime). Each service's table is sized
    /// by its backends: the smallest of 251, 509, 1021, 2039, 4093, 8191, 16381, ... with 100
    /// slots per backend (each backend owns about M/N of them), and never more than this.
    #[arg(long, default_value_t = datapath_common::services::DEFAULT_MAGLEV_TABLE_SIZE, value_parser = parse_table_size)]
    maglev_table_size: u32,
    /// Backends of all services together (24 bytes each).
    #[arg(long, default_value_t = datapath_common::services::DEFAULT_MAX_BACKENDS, value_parser = clap::value_parser!(u32).range(2..))]
    max_backends: u32,
    /// Serve Docker's network plugin protocol, so that `docker network create -d bpfnet` makes
    /// bpfnet networks and `docker run --network NAME [-p H:C]` attaches containers to them. The
    /// plugin's socket, bpfnet.sock, goes into DIR, where dockerd looks for plugins (default:
    /// /run/docker/plugins). Run dockerd with --iptables=false --userland-proxy=false: bpfnet
    /// publishes the ports.
    #[arg(long, value_name = "DIR", num_args = 0..=1, require_equals = true, default_missing_value = crate::docker::DEFAULT_PLUGIN_DIR)]
    docker_plugin: Option<PathBuf>,
    /// Serve DNS on every network's gateway (port 53, UDP and TCP): the network's container
    /// names, aliases and services resolve to their addresses, other names are forwarded.
    #[arg(long, value_name = "on|off", default_value = "on", value_parser = parse_on_off, action = clap::ArgAction::Set)]
    dns: bool,
    /// Resolver that names bpfnet does not know are forwarded to (repeatable; IP or IP:PORT).
    /// Default: the nameservers of /etc/resolv.conf.
    #[arg(long = "dns-upstream", value_name = "ADDR", value_parser = parse_upstream)]
    dns_upstreams: Vec<std::net::SocketAddr>,
    /// Serve Prometheus metrics on ADDR:PORT (`GET /metrics`): datapath counters by reason, the
    /// connection table's use, networks, endpoints, services, backends, API request durations.
    /// Off by default. The address is one of the daemon's namespace (e.g. 127.0.0.1:9464).
    #[arg(long, value_name = "ADDR:PORT")]
    metrics: Option<std::net::SocketAddr>,
    /// Join a cluster: the etcd members' client URLs (comma-separated or repeated, e.g.
    /// http://10.0.0.1:2379,http://10.0.0.2:2379). The node registers under a lease it keeps
    /// alive; `bpfnet node ls` lists the cluster's nodes. Without it the daemon is a single host
    /// and needs no etcd. When etcd is out of reach the daemon starts (and forwards) anyway and
    /// registers once etcd answers.
    #[arg(long = "cluster", value_name = "ETCD_URL", value_delimiter = ',')]
    cluster: Vec<String>,
    /// This node's name in the cluster (letters, digits, '_', '.', '-'; unique). Default: the
    /// host's name.
    #[arg(long, value_name = "NAME", requires = "cluster")]
    node: Option<String>,
    /// Where other nodes reach this one (tunnels end there). Default: the uplink's address.
    #[arg(long, value_name = "IP", requires = "cluster")]
    underlay_address: Option<std::net::IpAddr>,
    /// How long the node's records outlive its daemon: a daemon restarted within it keeps its
    /// endpoints on the other nodes; a node dead for longer leaves them (and `node ls` shows it
    /// down). At least 2s (etcd's shortest lease).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_lease_ttl, requires = "cluster")]
    cluster_lease_ttl: std::time::Duration,
    /// MTU of containers' interfaces on overlay networks: room must be left for VXLAN's 50
    /// bytes on the underlay, or large packets are lost. Default: the uplink's MTU less 50.
    #[arg(long, value_name = "BYTES", requires = "cluster", value_parser = clap::value_parser!(u32).range(576..=65_000))]
    overlay_mtu: Option<u32>,
    /// Who wraps overlay traffic in VXLAN: `datapath` (the default: the TC programs add and take
    /// off the headers and route the packet out of the uplink themselves), or `device` (the
    /// node's VXLAN device, through the host's IP stack). Nodes of either kind talk to each other.
    #[arg(long, value_name = "WHO", requires = "cluster", default_value = "datapath")]
    overlay_encap: OverlayEncapArg,
    /// Configuration file: every flag of this command as a setting of the same name (e.g.
    /// `ct-max = 262144`, `uplink = ["eth0"]`, `docker-plugin = "/run/docker/plugins"`); flags
    /// given on the command line win. Default: /etc/bpfnet/config.toml, when it exists.
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
}

fn parse_on_off(text: &str) -> Result<bool, String> {
    match text {
        "on" | "true" => Ok(true),
        "off" | "false" => Ok(false),
        _ => Err(format!("expected on or off, not {text:?}")),
    }
}

fn parse_upstream(text: &str) -> Result<std::net::SocketAddr, String> {
    text.parse::<std::net::SocketAddr>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(|ip| std::net::SocketAddr::new(ip, crate::dns::PORT)))
        .map_err(|_| format!("expected an address such as 192.0.2.53 or 192.0.2.53:5353, not {text:?}"))
}

fn parse_lease_ttl(s: &str) -> Result<std::time::Duration, String> {
    let ttl = humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e}"))?;
    if ttl < crate::cluster::MIN_LEASE_TTL {
        return Err(format!("{s:?} is shorter than etcd's shortest lease, 2s"));
    }
    Ok(ttl)
}

fn parse_table_size(s: &str) -> Result<u32, String> {
    let m: u32 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    crate::maglev::check_table_size(m).map_err(|e| format!("{e:#}"))?;
    Ok(m)
}

/// The masquerade range must not overlap the ephemeral ports of the daemon's namespace
/// (`net.ipv4.ip_local_port_range`): ports drawn from it would collide with the host's own
/// connections.
fn check_nat_ports((min, max): (u16, u16)) -> Result<()> {
    let path = "/proc/sys/net/ipv4/ip_local_port_range";
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    let (low, high) = parse_local_port_range(&text).with_context(|| format!("{path} holds {:?}", text.trim()))?;
    if min <= high && low <= max {
        bail!(
            "--nat-ports {min}-{max} overlaps the host's ephemeral ports {low}-{high} (net.ipv4.ip_local_port_range): \
             masquerade's ports would collide with the host's own connections; choose a range outside it"
        );
    }
    Ok(())
}

/// `ip_local_port_range`'s two numbers.
fn parse_local_port_range(text: &str) -> Option<(u16, u16)> {
    let mut words = text.split_whitespace().map(str::parse::<u16>);
    match (words.next(), words.next(), words.next()) {
        (Some(Ok(low)), Some(Ok(high)), None) if low <= high => Some((low, high)),
        _ => None,
    }
}

fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let (a, b) = s.split_once('-').ok_or_else(|| format!("{s:?}: expected MIN-MAX, e.g. 61000-65535"))?;
    let parse = |p: &str| p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| format!("{p:?} is not a port (1-65535)"));
    let (a, b) = (parse(a)?, parse(b)?);
    if a > b {
        return Err(format!("{s:?}: MIN is above MAX"));
    }
    Ok((a, b))
}

pub fn run(args: DaemonArgs, socket: PathBuf) -> Result<()> {
    // A daemon outlives its clients and its log reader: a write to a closed socket or pipe must be
    // an error to handle, never a signal that kills it (main() set SIGPIPE's default for the CLI).
    // SAFETY: setting one signal's disposition before any thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .format_target(false)
        .init();
    // Enter the namespace before any thread exists, so every thread the runtime starts is in it.
    if let Some(ns) = &args.netns {
        netns::enter(&netns::resolve(ns)?.file)?;
    }
    check_nat_ports(args.nat_ports)?;
    let ns = |d: std::time::Duration| d.as_nanos().min(u64::MAX as u128) as u64;
    let ct_config = datapath_common::CtConfig {
        tcp_syn_ns: ns(args.ct_timeout_tcp_syn),
        tcp_established_ns: ns(args.ct_timeout_tcp),
        tcp_closing_ns: ns(args.ct_timeout_tcp_close),
        udp_ns: ns(args.ct_timeout_udp),
        icmp_ns: ns(args.ct_timeout_icmp),
        nat_port_min: args.nat_ports.0,
        nat_port_max: args.nat_ports.1,
        endpoint_max: args.ct_max_per_endpoint.unwrap_or(datapath_common::conntrack::default_endpoint_max(args.ct_max)),
    };
    let config = Config {
        state_dir: args.state_dir,
        bpffs: args.bpffs,
        socket,
        datapath: LoadOptions {
            trace: args.trace,
            ct_entries: args.ct_max,
            ct_config,
            netns_cookie: netns::cookie()?,
            max_services: args.max_services,
            maglev_table_size: args.maglev_table_size,
            max_backends: args.max_backends,
        },
        uplinks: args.uplinks,
        xdp: match args.xdp {
            XdpArg::Auto => XdpSetting::Auto,
            XdpArg::Native => XdpSetting::Native,
            XdpArg::Off => XdpSetting::Off,
        },
        cgroup_root: args.cgroup_root,
        docker_plugin: args.docker_plugin,
        metrics: args.metrics,
        cluster: if args.cluster.is_empty() {
            None
        } else {
            Some(crate::cluster::ClusterConfig {
                etcd: args.cluster,
                node: {
                    let node = match args.node {
                        Some(node) => node,
                        None => host_name()?,
                    };
                    // Checked before anything starts: a refused start changes nothing.
                    crate::ipam::validate_name("node", &node)?;
                    node
                },
                underlay: args.underlay_address,
                lease_ttl: args.cluster_lease_ttl,
                overlay_mtu: args.overlay_mtu,
                encap_in_datapath: matches!(args.overlay_encap, OverlayEncapArg::Datapath),
            })
        },
        dns: crate::dns::DnsConfig {
            enabled: args.dns,
            upstreams: if args.dns_upstreams.is_empty() {
                crate::dns::upstreams_from_resolv_conf(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default())
            } else {
                args.dns_upstreams
            },
        },
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    if args.cleanup {
        rt.block_on(runtime::cleanup(config))?;
        log::info!("removed every interface, pinned object and state file bpfnet created");
        Ok(())
    } else {
        let limits = runtime::Limits { max_connections: args.max_connections as usize, client_timeout: args.client_timeout };
        rt.block_on(runtime::run(config, limits))
    }
}

/// The host's name (the default node name of a cluster).
fn host_name() -> Result<String> {
    let text = std::fs::read_to_string("/proc/sys/kernel/hostname").context("reading the host's name")?;
    Ok(text.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ephemeral_range_is_read_and_checked_against_the_masquerade_range() {
        assert_eq!(parse_local_port_range("32768\t60999\n"), Some((32768, 60999)));
        assert_eq!(parse_local_port_range("60999 32768"), None);
        assert_eq!(parse_local_port_range("1 2 3"), None);
        assert_eq!(parse_local_port_range(""), None);
    }
}
