//! Command line: `bpfnet daemon ...` runs the daemon; every other command is a client of its API.
//! One file per noun as they grow (`node`).
mod node;
use std::{collections::BTreeMap, io::Write, path::PathBuf, process::ExitCode};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::{api, client::Client, daemon::{Config, XdpSetting}, datapath::LoadOptions, netns, server};

#[derive(Parser)]
#[command(
    name = "bpfnet",
    version,
    about = "Container networks forwarded by eBPF instead of a Linux bridge and iptables",
    long_about = "bpfnet creates container networks and attaches network namespaces (\"containers\") to \
them. Packets between containers are forwarded by TC eBPF programs and BPF maps programmed by one \
privileged daemon: no bridge, no iptables rule.\n\nStart the daemon, then create networks and connect \
namespaces:\n  bpfnet daemon &\n  bpfnet network create backend --subnet 10.10.0.0/24\n  ip netns add con1\n  \
bpfnet network connect backend con1\n  bpfnet network inspect backend"
)]
struct Cli {
    /// The daemon's API socket.
    #[arg(long, global = true, env = "BPFNET_SOCKET", default_value = api::DEFAULT_SOCKET)]
    socket: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the privileged daemon that owns the datapath (or remove everything it made, --cleanup).
    Daemon(DaemonArgs),
    /// Manage networks and connect namespaces to them.
    #[command(subcommand)]
    Network(NetworkCommand),
    /// Show what the datapath did with packets: forwarded, answered, and drops by reason; how
    /// full the connection table is; the uplinks.
    Stats {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The connections the datapath tracks for NAT (masquerade, published ports): list or
    /// flush them.
    #[command(subcommand)]
    Conntrack(ConntrackCommand),
    /// Published ports (`network connect ... -p HOST_PORT:CONTAINER_PORT`).
    #[command(subcommand)]
    Port(PortCommand),
    /// The endpoint lifecycle step by step, as front-ends (Docker, CNI) drive it: reserve an
    /// address on a network, attach it to a namespace, detach it, release it. `network connect`
    /// and `network disconnect` do the same steps in one go.
    #[command(subcommand)]
    Endpoint(EndpointCommand),
    /// Services: a virtual IP and port on a network (and optionally a published host port),
    /// spread over replicas with Maglev consistent hashing, as Docker Swarm's routing mesh and
    /// Kubernetes' ClusterIP/NodePort do.
    #[command(subcommand)]
    Service(ServiceCommand),
    /// The nodes of the cluster this daemon belongs to (`bpfnet daemon --cluster ... --node
    /// NAME`): list them, forget one that is gone for good.
    #[command(subcommand)]
    Node(node::NodeCommand),
}

#[derive(Subcommand)]
enum ServiceCommand {
    /// Create a service. Example, three replicas behind port 8080 of the host:
    ///   bpfnet service create web --network frontend --port 80 --publish 8080 \
    ///     --backend web1 --backend web2 --backend web3
    Create {
        name: String,
        /// The network whose containers reach the service by its VIP; backends are on it.
        #[arg(long)]
        network: String,
        /// PORT[/tcp|/udp]: the port the service answers on its VIP.
        #[arg(long)]
        port: String,
        /// The VIP (default: the network's next free address, as Swarm allocates one).
        #[arg(long)]
        vip: Option<String>,
        /// [HOST_IP:]HOST_PORT: also reachable from outside (and the host) on this port.
        #[arg(long)]
        publish: Option<String>,
        /// client-ip[:SECONDS]: a client's new connections go to the backend its last one
        /// went to, while it keeps coming back within SECONDS (default 10800).
        #[arg(long)]
        affinity: Option<String>,
        /// NETNS[:PORT] of a replica (repeatable): a namespace connected to the network; PORT
        /// defaults to the service port. A service with no backend refuses connections.
        #[arg(long = "backend", value_name = "NETNS[:PORT]")]
        backends: Vec<String>,
        /// Print the service as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Create many services in one change from a JSON file (`{"services": [{"name": ...,
    /// "network": ..., "port": "80", "backends": ["ns1"]}]}`): all or none, one save.
    Apply {
        /// The file; `-` reads standard input.
        file: PathBuf,
    },
    /// Add a replica: new connections start reaching it (about 1/N of them move to it;
    /// existing connections stay where they are).
    AddBackend {
        name: String,
        #[arg(value_name = "NETNS[:PORT]")]
        backend: String,
    },
    /// Remove a replica: no new connections reach it, its UDP flows are forgotten; with
    /// --drain its connections (TCP and UDP) finish first and it goes when they have ended.
    RmBackend {
        name: String,
        #[arg(value_name = "NETNS[:PORT]")]
        backend: String,
        #[arg(long)]
        drain: bool,
    },
    /// List services.
    #[command(alias = "list")]
    Ls {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show services as JSON shaped like `docker service inspect` (VIP, ports, backends with
    /// their state).
    Inspect {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove services: no new connection reaches their backends; open TCP connections go on
    /// until they close, UDP flows are forgotten at once.
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

/// What an endpoint asks for on its network (`network connect`, `endpoint create`).
#[derive(Args)]
struct EndpointSpecArgs {
    /// Address to use instead of the next free one.
    #[arg(long)]
    ip: Option<String>,
    /// Another name for the container on this network (repeatable).
    #[arg(long = "alias")]
    aliases: Vec<String>,
    /// Publish a container port on the host (repeatable), as docker run -p:
    /// [HOST_IP:]HOST_PORT[-END]:CONTAINER_PORT[-END][/tcp|/udp]. Without HOST_IP the port is
    /// published on every address of the daemon's namespace; tcp is the default. Clients
    /// outside reach the container through the uplink, other containers through any host
    /// address; the container sees the client's real address.
    #[arg(short = 'p', long = "publish", value_name = "SPEC")]
    publish: Vec<String>,
}

impl From<EndpointSpecArgs> for api::EndpointSpec {
    fn from(a: EndpointSpecArgs) -> Self {
        Self { ip: a.ip, aliases: a.aliases, publish: a.publish }
    }
}

#[derive(Subcommand)]
enum EndpointCommand {
    /// Reserve an address (and published ports) on a network for a container, without attaching
    /// anything yet. Prints the new endpoint's id.
    Create {
        /// Network to allocate on.
        network: String,
        /// The container's name: letters, digits, '_', '.', '-'.
        name: String,
        // The address and published ports are reserved from now on; ports answer once attached.
        #[command(flatten)]
        spec: EndpointSpecArgs,
        /// Print the endpoint as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Attach an allocated endpoint to a network namespace: a veth pair whose inside end gets the
    /// endpoint's name (--interface, default the first free ethN), address and MAC, and, for the
    /// namespace's first network, a default route via the gateway.
    Attach {
        /// Endpoint id (or a unique prefix of it).
        endpoint: String,
        /// A name under /run/netns, a path to a namespace file, or a PID.
        netns: String,
        /// Interface name inside the namespace.
        #[arg(long)]
        interface: Option<String>,
        /// Print the attached endpoint as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove an endpoint's interface from its namespace; its address and ports stay reserved.
    Detach {
        /// Endpoint id (or a unique prefix of it).
        endpoint: String,
    },
    /// Free endpoints (each is detached first if it is attached).
    #[command(alias = "remove")]
    Rm {
        /// Endpoint ids (or unique prefixes).
        #[arg(required = true)]
        endpoints: Vec<String>,
    },
    /// List endpoints, attached and allocated.
    #[command(alias = "list")]
    Ls {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show endpoints as JSON.
    Inspect {
        /// Endpoint ids (or unique prefixes).
        #[arg(required = true)]
        endpoints: Vec<String>,
    },
}

#[derive(Subcommand)]
enum PortCommand {
    /// List published ports: host address and port, protocol, container address and port.
    #[command(alias = "list")]
    Ls {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ConntrackCommand {
    /// List tracked connections: tuple as sent, tuple of the replies (after NAT), state
    /// ([ASSURED]: established, in the table floods cannot evict from), seconds left, and
    /// packets/bytes each way.
    #[command(alias = "list")]
    Ls {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Forget every tracked connection. Masqueraded connections in progress break: their replies
    /// no longer find their container.
    Flush,
}

/// `--xdp`.
#[derive(Clone, Copy, clap::ValueEnum)]
enum XdpArg {
    Native,
    Off,
}

#[derive(Args)]
struct DaemonArgs {
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
    /// allocates an skb (what XDP cannot do passes on to TC). `native` needs the driver's XDP and
    /// fails otherwise; `off` keeps TC alone. Default: native where the uplink's driver has it.
    /// XDP needs complete checksums from the uplink (a NIC's frames have them; the peer of a veth
    /// uplink sends them with `ethtool -K PEER tx off`): frames whose checksum was left to
    /// offload take the TC path.
    #[arg(long, value_name = "MODE")]
    xdp: Option<XdpArg>,
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
    /// Services the datapath holds. Each takes a Maglev table of --maglev-table-size 4-byte
    /// slots, allocated when the table is created (default: 1024 x 16381 x 4 B = 64 MiB).
    #[arg(long, default_value_t = datapath_common::services::DEFAULT_MAX_SERVICES, value_parser = clap::value_parser!(u32).range(1..))]
    max_services: u32,
    /// Slots of each service's Maglev table: a prime, about 100 x the most backends a service
    /// has or more (each backend owns about M/N slots).
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

#[derive(Subcommand)]
enum NetworkCommand {
    /// Create a network. Without --subnet a free /16 is taken from 172.17-31.0.0 (then
    /// 192.168.0.0/20 blocks), as Docker does; the gateway defaults to the first address.
    Create {
        /// Network name: letters, digits, '_', '.', '-'.
        name: String,
        /// IPv4 subnet in CIDR form, e.g. 10.10.0.0/24.
        #[arg(long)]
        subnet: Option<String>,
        /// Gateway address (owned by the host) inside the subnet.
        #[arg(long)]
        gateway: Option<String>,
        /// No traffic leaves the network except to its gateway.
        #[arg(long)]
        internal: bool,
        /// `bpfnet` (the default: this host's network) or `overlay`: one network across the
        /// nodes of the cluster (the daemon runs with --cluster), defined once in etcd and listed
        /// on every node; its containers on different nodes reach each other through VXLAN.
        #[arg(short = 'd', long, value_name = "DRIVER")]
        driver: Option<String>,
        /// Driver options as KEY=VALUE; supported: icc=false (containers of the network cannot
        /// talk to each other, only to the gateway), masquerade=false (containers' traffic to the
        /// outside keeps their own address instead of leaving with the uplink's).
        #[arg(short = 'o', long = "opt", value_name = "KEY=VALUE")]
        options: Vec<String>,
    },
    /// List networks.
    #[command(alias = "list")]
    Ls {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show networks in detail, as JSON shaped like `docker network inspect`.
    Inspect {
        /// Networks to show.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove networks (refused while containers are connected).
    #[command(alias = "remove")]
    Rm {
        /// Networks to remove.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Connect a network namespace to a network: it gets a new interface (eth0, eth1, ... in join
    /// order), an address, and, for its first network, a default route via the gateway.
    Connect {
        /// Network to join.
        network: String,
        /// A name under /run/netns, a path to a namespace file, or a PID.
        netns: String,
        #[command(flatten)]
        spec: EndpointSpecArgs,
        /// Print the new endpoint as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Disconnect a network namespace from a network, removing its interface.
    Disconnect {
        /// Network to leave.
        network: String,
        /// The namespace as given to connect, or any other name of it (name, path or PID).
        netns: String,
    },
}

pub fn main() -> ExitCode {
    // Like other CLIs, end quietly when the reader of our output goes away (`bpfnet stats | head`).
    // SAFETY: restoring the default disposition of one signal before any thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let args = match crate::config_file::merge(std::env::args_os().collect(), &command()) {
        Ok(args) => args,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "Error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let cli = Cli::parse_from(args);
    let result = match cli.command {
        Command::Daemon(args) => run_daemon(args, cli.socket),
        command => runtime().and_then(|rt| rt.block_on(run_client(command, cli.socket))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Not eprintln!: it panics when stderr is closed.
            let _ = writeln!(std::io::stderr(), "Error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The command line's definition, global flags propagated to the subcommands.
pub fn command() -> clap::Command {
    let mut command = <Cli as clap::CommandFactory>::command();
    command.build();
    command
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

fn run_daemon(args: DaemonArgs, socket: PathBuf) -> Result<()> {
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
            None => XdpSetting::NativeWhereSupported,
            Some(XdpArg::Native) => XdpSetting::Native,
            Some(XdpArg::Off) => XdpSetting::Off,
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
        rt.block_on(server::cleanup(config))?;
        log::info!("removed every interface, pinned object and state file bpfnet created");
        Ok(())
    } else {
        let limits = server::Limits { max_connections: args.max_connections as usize, client_timeout: args.client_timeout };
        rt.block_on(server::run(config, limits))
    }
}

/// The host's name (the default node name of a cluster).
fn host_name() -> Result<String> {
    let text = std::fs::read_to_string("/proc/sys/kernel/hostname").context("reading the host's name")?;
    Ok(text.trim().to_string())
}

/// The daemon resolves namespace arguments itself: a relative path must not be read relative to
/// the daemon's working directory.
fn absolute_netns(arg: String) -> Result<String> {
    if arg.contains('/') && !arg.starts_with('/') {
        Ok(std::env::current_dir()?.join(&arg).to_string_lossy().into_owned())
    } else {
        Ok(arg)
    }
}

/// Percent-encodes a path segment (names are validated by the daemon; this keeps odd input intact).
fn segment(name: &str) -> String {
    name.bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b"-_.".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

fn parse_options(options: &[String]) -> Result<BTreeMap<String, String>> {
    options
        .iter()
        .map(|o| match o.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => bail!("invalid option {o:?}: expected KEY=VALUE, e.g. -o icc=false"),
        })
        .collect()
}

fn print_json<T: serde::Serialize>(value: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Prints rows as left-aligned columns.
fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<String>| {
        let text: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", text.join("   ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row.clone());
    }
}

async fn run_client(command: Command, socket: PathBuf) -> Result<()> {
    let client = Client::new(&socket);
    match command {
        Command::Daemon(_) => unreachable!("handled by main"),
        Command::Stats { json } => {
            let stats: api::Stats = client.get("/stats").await?;
            if json {
                return print_json(&stats);
            }
            println!("{} networks, {} endpoints, {} services ({} backends)", stats.networks, stats.endpoints, stats.services, stats.backends);
            let ct = &stats.conntrack;
            println!("connection table: {} of {} entries in use ({}%)", ct.entries, ct.max_entries, ct.pressure_percent);
            println!(
                "new connections:  {} of {} entries in use ({}%; when full, the oldest new ones are evicted)",
                ct.pending_entries, ct.pending_max_entries, ct.pending_pressure_percent
            );
            let uplinks: Vec<String> = stats
                .uplinks
                .iter()
                .map(|u| format!("{} ({}, {})", u.interface, u.address, if u.xdp { "XDP" } else { "TC" }))
                .collect();
            println!("uplinks: {}", if uplinks.is_empty() { "none".to_string() } else { uplinks.join(", ") });
            if let Some(c) = &stats.cluster {
                if !c.reachable {
                    println!("{}", node::unreachable_line(c));
                } else if !c.registered {
                    println!("cluster: node {} is not registered: {}", c.node, c.error.as_deref().unwrap_or("registering"));
                } else {
                    println!("cluster: node {} ({}), etcd {}", c.node, c.underlay, c.etcd.join(","));
                }
                println!(
                    "overlay: {} networks, {} endpoints on other nodes (through {})",
                    stats.overlay_networks,
                    stats.remote_endpoints,
                    crate::daemon::VXLAN_DEVICE
                );
            }
            let rows: Vec<Vec<String>> = stats
                .counters
                .iter()
                .map(|c| vec![c.name.clone(), if c.drop { "drop" } else { "pass" }.into(), c.packets.to_string()])
                .collect();
            print_table(&["COUNTER", "KIND", "PACKETS"], &rows);
        }
        Command::Conntrack(ConntrackCommand::Ls { json }) => {
            let conns: Vec<api::Connection> = client.get("/conntrack").await?;
            if json {
                return print_json(&conns);
            }
            let tuple = |t: &api::Tuple| match t.id {
                Some(id) => format!("{} -> {} id {id}", t.src, t.dst),
                None => format!("{} -> {}", t.src, t.dst),
            };
            let rows: Vec<Vec<String>> = conns
                .iter()
                .map(|c| {
                    vec![
                        c.protocol.clone(),
                        tuple(&c.original),
                        tuple(&c.reply),
                        c.nat.clone(),
                        // As `conntrack -L` marks them: in the established table, which floods
                        // cannot evict from.
                        if c.assured { format!("{} [ASSURED]", c.state) } else { c.state.clone() },
                        format!("{}s", c.expires_in_s),
                        format!("{}/{}", c.original_packets, c.reply_packets),
                        format!("{}/{}", c.original_bytes, c.reply_bytes),
                    ]
                })
                .collect();
            print_table(&["PROTO", "ORIGINAL", "REPLY", "NAT", "STATE", "EXPIRES", "PACKETS (ORIG/REPLY)", "BYTES (ORIG/REPLY)"], &rows);
        }
        Command::Port(PortCommand::Ls { json }) => {
            let ports: Vec<api::PortMapping> = client.get("/ports").await?;
            if json {
                return print_json(&ports);
            }
            let rows: Vec<Vec<String>> = ports
                .iter()
                .map(|p| {
                    let netns = if p.attached { p.netns.clone() } else { format!("{} (not attached)", p.netns) };
                    vec![p.host.clone(), p.protocol.clone(), p.container.clone(), netns, p.network.clone()]
                })
                .collect();
            print_table(&["HOST", "PROTO", "CONTAINER", "NAMESPACE", "NETWORK"], &rows);
        }
        Command::Conntrack(ConntrackCommand::Flush) => {
            let flushed: api::Flushed = client.delete("/conntrack").await?;
            println!("{} connections flushed", flushed.connections);
        }
        Command::Endpoint(cmd) => run_endpoint(&client, cmd).await?,
        Command::Service(cmd) => run_service(&client, cmd).await?,
        Command::Node(cmd) => node::run(&client, cmd).await?,
        Command::Network(cmd) => match cmd {
            NetworkCommand::Create { name, subnet, gateway, internal, options, driver } => {
                let req = api::CreateNetwork { name, subnet, gateway, internal, options: parse_options(&options)?, driver };
                let net: api::NetworkInspect = client.post("/networks", &req).await?;
                println!("{}", net.id);
            }
            NetworkCommand::Ls { json } => {
                let nets: Vec<api::NetworkSummary> = client.get("/networks").await?;
                if json {
                    return print_json(&nets);
                }
                let rows: Vec<Vec<String>> = nets
                    .iter()
                    .map(|n| {
                        vec![
                            n.id[..12].to_string(),
                            n.name.clone(),
                            n.driver.clone(),
                            n.subnet.clone(),
                            n.gateway.clone(),
                            if n.internal { "yes" } else { "no" }.into(),
                            if n.icc { "yes" } else { "no" }.into(),
                            n.endpoints.to_string(),
                        ]
                    })
                    .collect();
                print_table(&["NETWORK ID", "NAME", "DRIVER", "SUBNET", "GATEWAY", "INTERNAL", "ICC", "ENDPOINTS"], &rows);
            }
            NetworkCommand::Inspect { names } => {
                let mut out = Vec::new();
                for name in &names {
                    let net: api::NetworkInspect = client.get(&format!("/networks/{}", segment(name))).await?;
                    out.push(net);
                }
                print_json(&out)?;
            }
            NetworkCommand::Rm { names } => remove_each(&client, "networks", &names).await?,
            NetworkCommand::Connect { network, netns, spec, json } => {
                let req = api::Connect { netns: absolute_netns(netns.clone())?, spec: spec.into() };
                let ep: api::EndpointCreated =
                    client.post(&format!("/networks/{}/connect", segment(&network)), &req).await?;
                if json {
                    return print_json(&ep);
                }
                println!(
                    "{netns} joined {}: {} {} mac {} (host side {})",
                    ep.network, ep.interface, ep.ipv4_address, ep.mac_address, ep.host_interface
                );
                for port in &ep.ports {
                    println!("published {port}");
                }
                if let Some(resolver) = &ep.resolver {
                    println!("resolver {resolver} (names of {}: put `nameserver {resolver}` in the container's resolv.conf)", ep.network);
                }
            }
            NetworkCommand::Disconnect { network, netns } => {
                let req = api::Disconnect { netns: absolute_netns(netns)? };
                let _: serde_json::Value =
                    client.post(&format!("/networks/{}/disconnect", segment(&network)), &req).await?;
            }
        },
    }
    Ok(())
}

/// `NETNS[:PORT]` with a relative namespace path made absolute.
fn absolute_backend(arg: String) -> Result<String> {
    match arg.rsplit_once(':') {
        Some((ns, port)) if port.chars().all(|c| c.is_ascii_digit()) => Ok(format!("{}:{port}", absolute_netns(ns.to_string())?)),
        _ => absolute_netns(arg),
    }
}

fn print_service(s: &api::ServiceInspect) {
    let vip = &s.endpoint.virtual_ips[0];
    let port = &s.endpoint.ports[0];
    println!("service {} (id {})", s.spec.name, &s.id[..12]);
    println!("  vip       {} on network {}, port {}/{}", vip.addr, vip.network, port.target_port, port.protocol);
    if let (Some(p), Some(ip)) = (port.published_port, &port.published_ip) {
        println!("  published {ip}:{p}");
    }
    println!("  affinity  {}", s.spec.affinity);
    let rows: Vec<Vec<String>> = s.backends.iter().map(|b| vec![b.name.clone(), b.address.clone(), b.state.clone()]).collect();
    print_table(&["BACKEND", "ADDRESS", "STATE"], &rows);
}

async fn run_service(client: &Client<'_>, cmd: ServiceCommand) -> Result<()> {
    match cmd {
        ServiceCommand::Create { name, network, port, vip, publish, affinity, backends, json } => {
            let backends = backends.into_iter().map(absolute_backend).collect::<Result<Vec<_>>>()?;
            let req = api::CreateService { name, network, port, vip, publish, affinity, backends };
            let s: api::ServiceInspect = client.post("/services", &req).await?;
            if json {
                return print_json(&s);
            }
            print_service(&s);
        }
        ServiceCommand::Apply { file } => {
            let text = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())?
            } else {
                std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?
            };
            let mut req: api::CreateServices = serde_json::from_str(&text).with_context(|| format!("{} is not a services file", file.display()))?;
            for s in &mut req.services {
                s.backends = std::mem::take(&mut s.backends).into_iter().map(absolute_backend).collect::<Result<Vec<_>>>()?;
            }
            let done: api::ServicesCreated = client.post("/services/batch", &req).await?;
            println!("{} services created in {:.1} ms ({:.1} ms writing the datapath)", done.created, done.elapsed_ms, done.datapath_ms);
        }
        ServiceCommand::AddBackend { name, backend } => {
            let req = api::AddBackend { backend: absolute_backend(backend)? };
            let s: api::ServiceInspect = client.post(&format!("/services/{}/backends", segment(&name)), &req).await?;
            print_service(&s);
        }
        ServiceCommand::RmBackend { name, backend, drain } => {
            let req = api::RemoveBackend { netns: absolute_backend(backend)?, drain };
            let s: api::ServiceInspect = client.post(&format!("/services/{}/backends/remove", segment(&name)), &req).await?;
            print_service(&s);
        }
        ServiceCommand::Ls { json } => {
            let services: Vec<api::ServiceSummary> = client.get("/services").await?;
            if json {
                return print_json(&services);
            }
            let rows: Vec<Vec<String>> = services
                .iter()
                .map(|s| {
                    let backends = if s.draining > 0 { format!("{} (+{} draining)", s.backends, s.draining) } else { s.backends.to_string() };
                    vec![
                        s.name.clone(),
                        s.network.clone(),
                        s.vip.clone(),
                        s.published.clone().unwrap_or_else(|| "-".into()),
                        backends,
                        s.affinity.clone().unwrap_or_else(|| "-".into()),
                    ]
                })
                .collect();
            print_table(&["NAME", "NETWORK", "VIP", "PUBLISHED", "BACKENDS", "AFFINITY"], &rows);
        }
        ServiceCommand::Inspect { names } => {
            let mut out = Vec::new();
            for name in &names {
                let s: api::ServiceInspect = client.get(&format!("/services/{}", segment(name))).await?;
                out.push(s);
            }
            print_json(&out)?;
        }
        ServiceCommand::Rm { names } => remove_each(client, "services", &names).await?,
    }
    Ok(())
}

/// `DELETE /<kind>/<name>` for each name. Like docker: removes what can be removed, reports the
/// others, fails if any failed.
async fn remove_each(client: &Client<'_>, kind: &str, names: &[String]) -> Result<()> {
    let mut failed = 0;
    for name in names {
        match client.delete::<serde_json::Value>(&format!("/{kind}/{}", segment(name))).await {
            Ok(_) => println!("{name}"),
            Err(e) => {
                eprintln!("Error: {e:#}");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} {kind} could not be removed", names.len());
    }
    Ok(())
}

async fn run_endpoint(client: &Client<'_>, cmd: EndpointCommand) -> Result<()> {
    match cmd {
        EndpointCommand::Create { network, name, spec, json } => {
            let req = api::Allocate { network, name, spec: spec.into(), id: None, frontend: None };
            let ep: api::EndpointView = client.post("/endpoints", &req).await?;
            if json {
                return print_json(&ep);
            }
            println!("{}", ep.endpoint_id);
        }
        EndpointCommand::Attach { endpoint, netns, interface, json } => {
            let req = api::Attach { netns: absolute_netns(netns.clone())?, interface };
            let ep: api::EndpointCreated = client.post(&format!("/endpoints/{}/attach", segment(&endpoint)), &req).await?;
            if json {
                return print_json(&ep);
            }
            println!(
                "{netns} joined {}: {} {} mac {} (host side {})",
                ep.network, ep.interface, ep.ipv4_address, ep.mac_address, ep.host_interface
            );
        }
        EndpointCommand::Detach { endpoint } => {
            let _: api::EndpointView = client.post(&format!("/endpoints/{}/detach", segment(&endpoint)), &()).await?;
        }
        EndpointCommand::Rm { endpoints } => remove_each(client, "endpoints", &endpoints).await?,
        EndpointCommand::Ls { json } => {
            let eps: Vec<api::EndpointView> = client.get("/endpoints").await?;
            if json {
                return print_json(&eps);
            }
            let rows: Vec<Vec<String>> = eps
                .iter()
                .map(|e| {
                    let (netns, interface) = match &e.attachment {
                        Some(a) => (a.netns.clone(), a.interface.clone()),
                        None => ("-".into(), "-".into()),
                    };
                    vec![
                        e.endpoint_id[..12].to_string(),
                        e.name.clone(),
                        e.network.clone(),
                        e.ipv4_address.clone(),
                        if e.attachment.is_some() { "attached" } else { "allocated" }.into(),
                        netns,
                        interface,
                        e.frontend.clone(),
                    ]
                })
                .collect();
            print_table(&["ENDPOINT ID", "NAME", "NETWORK", "ADDRESS", "STATE", "NAMESPACE", "INTERFACE", "FRONTEND"], &rows);
        }
        EndpointCommand::Inspect { endpoints } => {
            let mut out = Vec::new();
            for id in &endpoints {
                let ep: api::EndpointView = client.get(&format!("/endpoints/{}", segment(id))).await?;
                out.push(ep);
            }
            print_json(&out)?;
        }
    }
    Ok(())
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
