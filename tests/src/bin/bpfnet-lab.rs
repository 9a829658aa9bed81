//! `bpfnet-lab`: the demo, the benchmark, traffic tools and the sweep, for sandboxes only.
use std::{net::SocketAddr, process::ExitCode, time::Duration};

use anyhow::Result;
use bpfnet_lab::{bench, clusterbench, demo, enginebench, lbscale, sandbox, svcbench, traffic};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "bpfnet-lab", about = "Sandboxed demo, benchmark and traffic tools for bpfnet")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Reference scenario in a sandbox, connectivity matrix (expected vs observed), short benchmark.
    Demo,
    /// bpfnet vs a direct veth pair vs a Docker-style bridge with iptables, side by side.
    Bench(bench::Options),
    /// Cross-node: a container to a container on another node, routed without encapsulation vs a
    /// Docker-style overlay (bridge + kernel VXLAN) vs bpfnet's overlay, side by side.
    CrossNodeBench(clusterbench::Options),
    /// Service scale: installing N services of B backends in one batch, then adding and removing
    /// one backend at that scale (p50/p99), timed at the API socket.
    LbScale(lbscale::Options),
    /// Services side by side: new connections/s, TCP_RR and UDP_RR through a published service
    /// with 1 to 10,000 services installed, bpfnet (XDP and TC) against kube-proxy's iptables
    /// (nf_tables and legacy) and nftables rules; install and change times; a plot.
    SvcBench(svcbench::Options),
    /// Time from `docker run` / `podman run` / `docker network connect` to a container whose
    /// network answers, on bpfnet and on the engines' own bridges, side by side (p50/p99).
    EngineBench(enginebench::Options),
    /// Remove namespaces, processes, mounts and files left by interrupted sandboxes.
    Sweep,
    /// Traffic tools, run inside namespaces by the benchmark.
    #[command(subcommand)]
    Net(NetCommand),
}

#[derive(Subcommand)]
enum NetCommand {
    /// Benchmark server (echo or sink, chosen by the client's first byte).
    Serve {
        #[arg(long)]
        port: u16,
        /// Listen on IPv6 (`[::]`) instead of IPv4.
        #[arg(long)]
        ipv6: bool,
    },
    /// One measurement; prints the rate per second.
    Client {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, value_enum)]
        mode: traffic::Mode,
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
    },
}

fn main() -> ExitCode {
    let result: Result<()> = match Cli::parse().command {
        Command::Demo => demo::run(),
        Command::Bench(opts) => bench::run(&opts).map(|_| ()),
        Command::CrossNodeBench(opts) => clusterbench::run(&opts).map(|_| ()),
        Command::LbScale(opts) => lbscale::run(&opts).map(|_| ()),
        Command::SvcBench(opts) => svcbench::run(&opts).map(|_| ()),
        Command::EngineBench(opts) => enginebench::run(&opts).map(|_| ()),
        Command::Sweep => sandbox::sweep().map(|n| {
            if n > 0 {
                eprintln!("bpfnet-lab: removed {n} leftover namespaces");
            }
        }),
        Command::Net(NetCommand::Serve { port, ipv6 }) => traffic::serve(port, ipv6),
        Command::Net(NetCommand::Client { to, mode, seconds }) => {
            traffic::client(to, mode, Duration::from_secs_f64(seconds)).map(|rate| println!("{rate:.1}"))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
