//! Service scale: how long the daemon takes to install N services of B backends (one batch,
//! `bpfnet service apply`), and then to add or remove one backend of one service at that scale,
//! timed at the API socket (the daemon's work, its map writes and its save to disk; no CLI
//! process start). Every service gets distinct backends (each namespace serves on another port
//! per service), so every Maglev table is built and written, none shared.
use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::{
    checks::api_ok,
    sandbox::{DaemonOptions, Sandbox},
};

#[derive(clap::Args, Debug, Clone)]
pub struct Options {
    /// Services installed.
    #[arg(long, default_value_t = 10_000)]
    pub services: usize,
    /// Backends per service (one namespace each).
    #[arg(long, default_value_t = 10)]
    pub backends: usize,
    /// Backend changes timed (half additions, half removals, on services picked in turn).
    #[arg(long, default_value_t = 1_000)]
    pub changes: usize,
    /// Maglev table size the daemon is started with (a prime).
    #[arg(long, default_value_t = bpfnet::maglev::DEFAULT_TABLE_SIZE)]
    pub table_size: u32,
    /// Also install the same services with the peers (kube-proxy-style rules loaded by
    /// iptables-nft-restore and iptables-legacy-restore, nftables verdict maps by nft), each in a
    /// private namespace, and time one service's change with each (`--peer-changes` of them).
    #[arg(long)]
    pub peers: bool,
    #[arg(long, default_value_t = 100)]
    pub peer_changes: usize,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// A peer's times: installing every service, then changing one service's endpoints.
#[derive(Debug, Serialize)]
pub struct PeerReport {
    pub name: &'static str,
    pub install_ms: f64,
    pub change_p50_ms: f64,
    pub change_p99_ms: f64,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub services: usize,
    pub backends: usize,
    /// Wall time of the batch request, as the client sees it.
    pub install_ms: f64,
    /// The daemon's own account: all of it, and the part spent writing the datapath.
    pub install_daemon_ms: f64,
    pub install_datapath_ms: f64,
    pub add_p50_ms: f64,
    pub add_p99_ms: f64,
    pub remove_p50_ms: f64,
    pub remove_p99_ms: f64,
    pub changes: usize,
    /// Resident memory of the daemon after the install (kB), and the Maglev tables' size.
    pub daemon_rss_kb: u64,
    pub maglev_mb: f64,
    /// A daemon restart with every service installed: until the API answers (at the client,
    /// polled every 50 ms), and the daemon's own account (start to ready).
    pub restart_ms: f64,
    pub restart_daemon_ms: Option<f64>,
    pub peers: Vec<PeerReport>,
}

fn post(socket: &Path, path: &str, body: &str) -> Result<serde_json::Value> {
    api_ok(socket, "POST", path, body, Duration::from_secs(120))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

pub fn run(opts: &Options) -> Result<Report> {
    let mut sb = Sandbox::new("lbscale")?;
    let max = opts.services.to_string();
    let max_backends = (opts.services * (opts.backends + 1) + 16).to_string();
    let table_size = opts.table_size.to_string();
    let args = ["--max-services", &max, "--max-backends", &max_backends, "--maglev-table-size", &table_size];
    sb.start_daemon_with(&DaemonOptions { args: &args, ..Default::default() })?;
    sb.bpfnet_ok(&["network", "create", "scale", "--subnet", "10.96.0.0/16"])?;
    let mut namespaces = Vec::new();
    for i in 0..=opts.backends {
        let ns = sb.add_netns(&format!("b{i}"))?;
        sb.bpfnet_ok(&["network", "connect", "scale", &ns])?;
        namespaces.push(ns);
    }
    let spare = namespaces.pop().expect("one spare namespace");
    let services: Vec<serde_json::Value> = (0..opts.services)
        .map(|i| {
            let port = 10_000 + (i % 50_000);
            let backends: Vec<String> = namespaces.iter().map(|ns| format!("{ns}:{port}")).collect();
            serde_json::json!({ "name": format!("s{i}"), "network": "scale", "port": "80", "backends": backends })
        })
        .collect();
    let body = serde_json::json!({ "services": services }).to_string();
    eprintln!("lb-scale: installing {} services of {} backends ({} KB request)", opts.services, opts.backends, body.len() / 1024);
    let started = Instant::now();
    let done = post(&sb.socket(), "/services/batch", &body)?;
    let install_ms = started.elapsed().as_secs_f64() * 1e3;
    let log = std::fs::read_to_string(sb.daemon_log()).unwrap_or_default();
    if let Some(line) = log.lines().find(|l| l.contains("services: validated")) {
        eprintln!("lb-scale: daemon: {}", line.split("] ").last().unwrap_or(line));
    }
    if done["created"].as_u64() != Some(opts.services as u64) {
        bail!("the batch created {}", done["created"]);
    }

    eprintln!("lb-scale: {} backend changes", opts.changes);
    let (mut adds, mut removes) = (Vec::new(), Vec::new());
    for k in 0..opts.changes / 2 {
        let name = format!("s{}", (k * 7919) % opts.services);
        let port = 10_000 + ((k * 7919) % opts.services) % 50_000;
        let backend = serde_json::json!({ "backend": format!("{spare}:{port}") }).to_string();
        let t = Instant::now();
        post(&sb.socket(), &format!("/services/{name}/backends"), &backend)?;
        adds.push(t.elapsed().as_secs_f64() * 1e3);
        let remove = serde_json::json!({ "netns": format!("{spare}:{port}") }).to_string();
        let t = Instant::now();
        post(&sb.socket(), &format!("/services/{name}/backends/remove"), &remove)?;
        removes.push(t.elapsed().as_secs_f64() * 1e3);
    }
    adds.sort_by(f64::total_cmp);
    removes.sort_by(f64::total_cmp);
    let pid = sb.daemon_pid().context("daemon gone")?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let daemon_rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    // A restart: the daemon reads its services back, rebuilds their tables in place and
    // reconciles the datapath before its API answers.
    sb.stop_daemon(libc::SIGTERM)?;
    let restarting = Instant::now();
    sb.start_daemon_with(&DaemonOptions { args: &args, ..Default::default() })?;
    let restart_ms = restarting.elapsed().as_secs_f64() * 1e3;
    let log = std::fs::read_to_string(sb.daemon_log()).unwrap_or_default();
    if let Some(line) = log.lines().filter(|l| l.contains("started: state read")).last() {
        eprintln!("lb-scale: restart: {}", line.split("] ").last().unwrap_or(line));
    }
    let restart_daemon_ms = log
        .lines()
        .filter_map(|l| l.split("daemon ready in ").nth(1))
        .last()
        .and_then(|rest| rest.split(" ms").next())
        .and_then(|ms| ms.parse().ok());
    let table_size = bpfnet::maglev::table_size_for(opts.backends, opts.table_size);
    let report = Report {
        services: opts.services,
        backends: opts.backends,
        install_ms,
        install_daemon_ms: done["elapsed_ms"].as_f64().unwrap_or(0.0),
        install_datapath_ms: done["datapath_ms"].as_f64().unwrap_or(0.0),
        add_p50_ms: percentile(&adds, 0.5),
        add_p99_ms: percentile(&adds, 0.99),
        remove_p50_ms: percentile(&removes, 0.5),
        remove_p99_ms: percentile(&removes, 0.99),
        changes: adds.len() + removes.len(),
        daemon_rss_kb,
        maglev_mb: opts.services as f64 * table_size as f64 * 4.0 / 1e6,
        restart_ms,
        restart_daemon_ms,
        peers: if opts.peers { peers(&mut sb, opts)? } else { vec![] },
    };
    if opts.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "services x backends        {} x {} ({table_size}-slot Maglev tables, of at most {})",
            report.services, report.backends, opts.table_size
        );
        println!(
            "install (one batch)        {:.0} ms at the client, {:.0} ms in the daemon, {:.0} ms of it writing the datapath",
            report.install_ms, report.install_daemon_ms, report.install_datapath_ms
        );
        println!("add one backend            p50 {:.2} ms, p99 {:.2} ms ({} changes)", report.add_p50_ms, report.add_p99_ms, adds.len());
        println!("remove one backend         p50 {:.2} ms, p99 {:.2} ms ({} changes)", report.remove_p50_ms, report.remove_p99_ms, removes.len());
        println!("daemon memory (RSS)        {} MB; Maglev tables {:.0} MB", report.daemon_rss_kb / 1024, report.maglev_mb);
        println!(
            "daemon restart             {:.0} ms until its API answers ({} in the daemon)",
            report.restart_ms,
            report.restart_daemon_ms.map_or("?".to_string(), |ms| format!("{ms:.0} ms"))
        );
        for p in &report.peers {
            println!(
                "{:<26} install {:.0} ms; change one service p50 {:.2} ms, p99 {:.2} ms ({} changes, the tool's start included)",
                p.name, p.install_ms, p.change_p50_ms, p.change_p99_ms, opts.peer_changes
            );
        }
    }
    Ok(report)
}

/// The same services for the peers, each loaded into a namespace of its own, then changed one
/// service at a time (a fourth endpoint, alternately added and taken away), as kube-proxy does:
/// one restore (or `nft -f`) process per sync, only the changed chains.
fn peers(sb: &mut Sandbox, opts: &Options) -> Result<Vec<PeerReport>> {
    use crate::kubeproxy::{iptables_rules, iptables_service_update, load_timed, nftables_ruleset, nftables_service_update, Service};
    use std::net::Ipv4Addr;
    let endpoint = |k: usize| (Ipv4Addr::new(10, 98, (k / 250) as u8, (k % 250 + 2) as u8), 8080);
    let services: Vec<Service> = (0..opts.services)
        .map(|i| Service {
            vip: Ipv4Addr::new(10, 97, (i / 250) as u8, (i % 250 + 2) as u8),
            port: 80,
            node_port: 30_000 + (i % 30_000) as u16,
            endpoints: (0..opts.backends).map(endpoint).collect(),
            udp: false,
        })
        .collect();
    let dir = std::env::temp_dir().join(format!("bpfnet-lbscale-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("rules");
    let mut reports = Vec::new();
    for (name, tool, kind) in [
        ("iptables (nf_tables)", "iptables-nft-restore", 0),
        ("iptables-legacy", "iptables-legacy-restore", 0),
        ("nftables verdict map", "nft", 1),
    ] {
        eprintln!("lb-scale: {name}: installing {} services", opts.services);
        let ns = sb.add_netns(&format!("peer{}", reports.len()))?;
        let (full, load_args): (String, &'static [&'static str]) =
            if kind == 0 { (iptables_rules(&services), &[]) } else { (nftables_ruleset(&services), &["-f"]) };
        std::fs::write(&file, full)?;
        let install_ms = load_timed(&ns, tool, load_args, &file)?;
        let mut changes = Vec::with_capacity(opts.peer_changes);
        for k in 0..opts.peer_changes {
            let i = (k * 7919) % opts.services;
            let mut svc = services[i].clone();
            if k % 2 == 0 {
                svc.endpoints.push(endpoint(opts.backends));
            }
            let (update, args): (String, &'static [&'static str]) = if kind == 0 {
                (iptables_service_update(i, &svc, k + 1), &["--noflush"])
            } else {
                (nftables_service_update(i, &svc), &["-f"])
            };
            std::fs::write(&file, update)?;
            changes.push(load_timed(&ns, tool, args, &file)?);
        }
        changes.sort_by(f64::total_cmp);
        reports.push(PeerReport {
            name,
            install_ms,
            change_p50_ms: percentile(&changes, 0.5),
            change_p99_ms: percentile(&changes, 0.99),
        });
    }
    std::fs::remove_dir_all(&dir).ok();
    Ok(reports)
}
