//! Command line: `bpfnet daemon ...` runs the daemon; every other command is a client of its API.
//! One file per noun: `daemon` (its flags and configuration), `network`, `endpoint`, `service`,
//! `node`; the small nouns (`stats`, `conntrack`, `port`) and the shared printing here.
mod daemon;
mod endpoint;
mod network;
mod node;
mod service;

use std::{collections::BTreeMap, io::Write, path::PathBuf, process::ExitCode};

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};

use crate::{api, client::Client};

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
    Daemon(daemon::DaemonArgs),
    /// Manage networks and connect namespaces to them.
    #[command(subcommand)]
    Network(network::NetworkCommand),
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
    Endpoint(endpoint::EndpointCommand),
    /// Services: a virtual IP and port on a network (and optionally a published host port),
    /// spread over replicas with Maglev consistent hashing, as Docker Swarm's routing mesh and
    /// Kubernetes' ClusterIP/NodePort do.
    #[command(subcommand)]
    Service(service::ServiceCommand),
    /// The nodes of the cluster this daemon belongs to (`bpfnet daemon --cluster ... --node
    /// NAME`): list them, forget one that is gone for good.
    #[command(subcommand)]
    Node(node::NodeCommand),
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

/// The non-empty ones of `parts` (values of each address family, say), joined by `sep`.
fn joined(parts: &[&str], sep: &str) -> String {
    parts.iter().filter(|p| !p.is_empty()).copied().collect::<Vec<_>>().join(sep)
}

/// What `connect` and `endpoint attach` say of the endpoint made in `netns`.
fn print_joined(netns: &str, ep: &crate::api::EndpointCreated) {
    println!(
        "{netns} joined {}: {} {} mac {} (host side {})",
        ep.network,
        ep.interface,
        joined(&[&ep.ipv4_address, &ep.ipv6_address], " "),
        ep.mac_address,
        ep.host_interface
    );
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
        Command::Daemon(args) => daemon::run(args, cli.socket),
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
                .map(|u| {
                    let v6 = u.ipv6_address.as_deref().map(|a| format!(", {a}")).unwrap_or_default();
                    // XDP takes IPv4's published path; IPv6 goes on to TC, which does all of it.
                    let path = if u.xdp { "XDP (IPv6 in TC)" } else { "TC" };
                    format!("{} ({}{v6}, {path}: {})", u.interface, u.address, u.why)
                })
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
        Command::Endpoint(cmd) => endpoint::run(&client, cmd).await?,
        Command::Service(cmd) => service::run(&client, cmd).await?,
        Command::Node(cmd) => node::run(&client, cmd).await?,
        Command::Network(cmd) => network::run(&client, cmd).await?,
    }
    Ok(())
}

/// `DELETE /<kind>/<name>` for each name. Like docker: removes what can be removed, reports the
/// others, fails if any failed.
/// `inspect`: each named object of `kind` (`networks`, `endpoints`, `services`), as one JSON list.
async fn inspect_each<T: serde::de::DeserializeOwned + serde::Serialize>(client: &Client<'_>, kind: &str, names: &[String]) -> Result<()> {
    let mut out: Vec<T> = Vec::new();
    for name in names {
        out.push(client.get(&format!("/{kind}/{}", segment(name))).await?);
    }
    print_json(&out)
}

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
