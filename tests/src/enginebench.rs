//! `bpfnet-lab engine-bench`: how long real engines take to give a container a working network,
//! on bpfnet and on their own bridge, side by side in one run. Docker: `docker run -d` until the
//! container answers a ping from the host, and `docker network connect` until its new address
//! answers, on a bpfnet network (the plugin) against Docker's bridge driver (same dockerd, run
//! with --iptables=false). Podman (CNI backend): `podman run -d` until the container answers,
//! bpfnet's CNI plugin against the reference bridge plugin (with host-local). The two sides
//! alternate container by container, so drift of the VM falls on both; p50 and p99 of N runs.
use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use serde_json::json;

use crate::{
    engines::{docker_installed, podman_installed, Docker, Podman, BUSYBOX_IMAGE},
    sandbox::{DaemonOptions, Sandbox},
};

#[derive(clap::Args, Debug, Clone)]
pub struct Options {
    /// Containers per configuration.
    #[arg(long, default_value_t = 100)]
    pub containers: usize,
    /// Endpoints connected one after another with `bpfnet network connect` for the CLI's own
    /// row (p50/p99 over all of them, and of the first and last 100); 0 leaves it out.
    #[arg(long, default_value_t = 1000)]
    pub endpoints: usize,
    /// Write the result tables into this markdown file (between markers, replacing the last run's).
    #[arg(long)]
    pub markdown_out: Option<PathBuf>,
}

/// Milliseconds of each run, sorted.
#[derive(Debug, Default, Clone)]
pub struct Timings(Vec<f64>);

impl Timings {
    fn push(&mut self, d: Duration) {
        self.0.push(d.as_secs_f64() * 1000.0);
    }
    fn quantile(&self, q: f64) -> f64 {
        let mut v = self.0.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        if v.is_empty() {
            return f64::NAN;
        }
        let i = ((v.len() as f64 - 1.0) * q).round() as usize;
        v[i]
    }
    pub fn p50(&self) -> f64 {
        self.quantile(0.5)
    }
    pub fn p99(&self) -> f64 {
        self.quantile(0.99)
    }
}

/// One measured operation on both sides.
#[derive(Debug, Default, Clone)]
pub struct Row {
    pub what: String,
    pub bpfnet: Timings,
    pub reference: Timings,
    pub reference_name: String,
}

/// Waits until `ip` answers a ping from namespace `ns` (10 ms apart, 10 s at most).
fn until_answers(ns: &str, ip: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ok = Command::new("ip")
            .args(["netns", "exec", ns, "ping", "-c", "1", "-W", "0.2", "-q", ip])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if ok {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{ip} did not answer within 10 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Docker: run and connect on a bpfnet network and on a bridge network, alternating.
pub fn docker(n: usize) -> Result<Vec<Row>> {
    let mut sb = Sandbox::new("enginebench")?;
    let plugin = Docker::plugin_arg(&sb);
    sb.start_daemon_with(&DaemonOptions { args: &[&plugin], ..Default::default() })?;
    let docker = Docker::start(&sb)?;
    docker.import_busybox()?;
    let host = sb.host();
    let nets = [("bpfnet", "10.230.0.0/16", "10.231.0.0/16"), ("bridge", "10.232.0.0/16", "10.233.0.0/16")];
    for (driver, first, second) in nets {
        docker.ok(&["network", "create", "-d", driver, "--subnet", first, &format!("{driver}-a")])?;
        docker.ok(&["network", "create", "-d", driver, "--subnet", second, &format!("{driver}-b")])?;
    }
    let mut run = Row { what: "`docker run -d` until the container answers".into(), reference_name: "Docker's bridge driver".into(), ..Default::default() };
    let mut connect = Row { what: "`docker network connect` until the new address answers".into(), reference_name: "Docker's bridge driver".into(), ..Default::default() };
    // A warm-up container per side: the first start pays for caches.
    for i in 0..n + 1 {
        for (driver, first, second) in nets {
            let name = format!("{driver}{i}");
            let ip = format!("{}.{}.{}", &first[..first.len() - 7], 1 + i / 250, 2 + i % 250);
            let ip2 = format!("{}.{}.{}", &second[..second.len() - 7], 1 + i / 250, 2 + i % 250);
            let t = Instant::now();
            docker.ok(&["run", "-d", "--name", &name, "--network", &format!("{driver}-a"), "--ip", &ip, BUSYBOX_IMAGE, "sleep", "3600"])?;
            until_answers(&host, &ip)?;
            let ran = t.elapsed();
            let t = Instant::now();
            docker.ok(&["network", "connect", "--ip", &ip2, &format!("{driver}-b"), &name])?;
            until_answers(&host, &ip2)?;
            let connected = t.elapsed();
            docker.ok(&["rm", "-f", &name])?;
            if i == 0 {
                continue;
            }
            let (r, c) = if driver == "bpfnet" { (&mut run.bpfnet, &mut connect.bpfnet) } else { (&mut run.reference, &mut connect.reference) };
            r.push(ran);
            c.push(connected);
        }
    }
    Ok(vec![run, connect])
}

/// Podman: run on a bpfnet network (CNI plugin) and on the reference bridge plugin, alternating.
pub fn podman(n: usize) -> Result<Row> {
    let mut sb = Sandbox::new("enginebenchp")?;
    sb.start_daemon()?;
    sb.bpfnet_ok(&["network", "create", "bnet", "--subnet", "10.234.0.0/16"])?;
    let bpfnet_conf = json!({"cniVersion": "1.0.0", "name": "bnet", "plugins": [{
        "type": "bpfnet", "network": "bnet", "socket": sb.socket().display().to_string(),
        "capabilities": {"portMappings": true, "ips": true}}]});
    let bridge_conf = json!({"cniVersion": "1.0.0", "name": "rbridge", "plugins": [{
        "type": "bridge", "bridge": "bpfnetlab-cni0", "isGateway": true, "ipMasq": false, "capabilities": {"ips": true},
        "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.235.0.0/16"}]], "routes": [{"dst": "0.0.0.0/0"}]}}]});
    let podman = Podman::new(&sb, &[("bnet", bpfnet_conf), ("rbridge", bridge_conf)])?;
    podman.import_busybox()?;
    let host = sb.host();
    let mut row = Row { what: "`podman run -d` until the container answers".into(), reference_name: "CNI's bridge plugin".into(), ..Default::default() };
    for i in 0..n + 1 {
        for (net, prefix) in [("bnet", "10.234"), ("rbridge", "10.235")] {
            let name = format!("{net}{i}");
            let ip = format!("{prefix}.{}.{}", 1 + i / 250, 2 + i % 250);
            let t = Instant::now();
            podman.run_detached(&name, &["--network", net, "--ip", &ip, BUSYBOX_IMAGE, "sleep", "3600"])?;
            until_answers(&host, &ip)?;
            let ran = t.elapsed();
            podman.ok(&["rm", "-f", "-t", "0", &name])?;
            if i == 0 {
                continue;
            }
            if net == "bnet" { row.bpfnet.push(ran) } else { row.reference.push(ran) }
        }
    }
    Ok(row)
}

/// `bpfnet network connect` times as a network fills up.
#[derive(Debug, Default, Clone)]
pub struct ConnectScale {
    pub all: Timings,
    pub first: Timings,
    pub last: Timings,
}

impl ConnectScale {
    pub fn line(&self, n: usize) -> String {
        format!(
            "`bpfnet network connect` (the CLI's whole run, from its start to its exit), {n} containers one after another on one network: p50 {:.1} ms, \
             p99 {:.1} ms; the first 100: p50 {:.1} ms, the last 100 (with {} endpoints already there): p50 {:.1} ms, \
             p99 {:.1} ms.",
            self.all.p50(),
            self.all.p99(),
            self.first.p50(),
            n.saturating_sub(100),
            self.last.p50(),
            self.last.p99()
        )
    }
}

/// The CLI: `n` namespaces connected one after another to one network, each connect timed.
pub fn cli_connects(n: usize) -> Result<ConnectScale> {
    let mut sb = Sandbox::new("enginebenchc")?;
    sb.start_daemon()?;
    sb.bpfnet_ok(&["network", "create", "scale", "--subnet", "10.236.0.0/20"])?;
    let mut scale = ConnectScale::default();
    let mut first = String::new();
    for i in 0..n {
        let ns = sb.add_netns(&format!("c{i}"))?;
        let t = Instant::now();
        sb.bpfnet_ok(&["network", "connect", "scale", &ns])?;
        let took = t.elapsed();
        scale.all.push(took);
        if i < 100 {
            scale.first.push(took);
        }
        if i + 100 >= n {
            scale.last.push(took);
        }
        if i == 0 {
            first = ns;
        } else if i + 1 == n {
            // The last container is reachable from the first, through the datapath.
            let ip = format!("10.236.{}.{}", (i + 2) / 256, (i + 2) % 256);
            let r = sb.exec(&first, &["ping", "-c", "1", "-W", "1", "-q", &ip])?;
            if !r.ok {
                bail!("the last container ({ip}) does not answer the first");
            }
        }
    }
    Ok(scale)
}

pub fn table(rows: &[Row], n: usize) -> String {
    let mut out = format!(
        "| operation ({n} containers each, alternating) | bpfnet p50 / p99 | reference p50 / p99 | bpfnet / reference (p50) |\n|---|---|---|---|\n"
    );
    for r in rows {
        out += &format!(
            "| {} | {:.0} / {:.0} ms | {}: {:.0} / {:.0} ms | {:.2} |\n",
            r.what,
            r.bpfnet.p50(),
            r.bpfnet.p99(),
            r.reference_name,
            r.reference.p50(),
            r.reference.p99(),
            r.bpfnet.p50() / r.reference.p50()
        );
    }
    out
}

pub fn run(opts: &Options) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    if docker_installed() {
        eprintln!("engine-bench: Docker, {} containers per driver", opts.containers);
        rows.extend(docker(opts.containers)?);
    } else {
        eprintln!("engine-bench: Docker is not installed (cargo xtask setup): skipped");
    }
    if podman_installed() {
        eprintln!("engine-bench: Podman, {} containers per plugin", opts.containers);
        rows.push(podman(opts.containers)?);
    } else {
        eprintln!("engine-bench: Podman is not installed (cargo xtask setup): skipped");
    }
    let mut text = table(&rows, opts.containers);
    if opts.endpoints > 0 {
        eprintln!("engine-bench: the CLI, {} connects on one network", opts.endpoints);
        text += &format!("\n{}\n", cli_connects(opts.endpoints)?.line(opts.endpoints));
    }
    println!("{text}");
    if let Some(path) = &opts.markdown_out {
        let when = crate::sandbox::run_ok("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_default();
        let section = format!(
            "## Starting containers: Docker and Podman on bpfnet and on their bridges\n\n\
             Run {when}on this 2-vCPU VM by `target/release/bpfnet-lab engine-bench --containers {n} --endpoints {e} --markdown-out {path}`. \
             Each time is from the engine command's start until the container's address answers a ping from the host's \
             namespace (polled every 10 ms); bpfnet and the reference alternate container by container; the first \
             container of each side is a warm-up and not counted.\n\n{text}\n",
            when = if when.trim().is_empty() { String::new() } else { format!("{} ", when.trim()) },
            n = opts.containers,
            e = opts.endpoints,
            path = path.display()
        );
        crate::bench::write_markdown(path, "engine-bench", "bpfnet-lab engine-bench", &section)?;
    }
    Ok(rows)
}
