//! The cross-node benchmark: a container on one node to a container on another, over the same
//! kind of underlay (two node namespaces on a bridge), three ways, side by side in one run:
//!
//! - **routed**: no encapsulation, plain kernel forwarding, each node routing the other's
//!   container subnet via the other's underlay address (the limit);
//! - **Docker-style overlay**: what Docker's overlay driver builds on each node: a Linux bridge
//!   with a kernel VXLAN device (VNI 4096, static FDB entries, no learning) and the container's
//!   veth on it, static neighbour entries, bridge netfilter on as dockerd sets it;
//! - **bpfnet**: two daemons on a one-member etcd, an overlay network, both containers connected
//!   with `bpfnet network connect`.
//!
//! Every ratio is to the routed path measured in the same repetition; the bpfnet row also reads
//! against the Docker-style overlay. Interleaved slices, rotating order, as `bench`.
use std::{net::SocketAddr, path::PathBuf};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::{
    bench::{self, client, container_ns, date_utc, format_rate, ip, median, mode_cli_name, mode_title, mode_unit, render_table, Server, PORT},
    cluster::{underlay_ip, Cluster},
    sandbox::run_ok,
};

#[derive(clap::Args, Debug, Clone)]
pub struct Options {
    #[command(flatten)]
    pub run: bench::Run,
    /// Connects timed for the control plane (0: none).
    #[arg(long, default_value_t = 100)]
    pub connects: usize,
    /// Endpoints the cluster holds while they are timed (allocated on node 2 beforehand).
    #[arg(long, default_value_t = 1000)]
    pub endpoints: usize,
    /// Cluster services installed for the control plane (0: none): created one by one on node 1,
    /// timed until node 2 has them all.
    #[arg(long, default_value_t = 1000)]
    pub services: usize,
    /// Write the results to this markdown file, between its `cross-node-results` markers.
    #[arg(long, value_name = "PATH")]
    pub markdown_out: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    Routed,
    Vxlan,
    Bpfnet,
    /// bpfnet with `--overlay-encap device`: the node's VXLAN device wraps the packets.
    BpfnetDevice,
    Control,
}

impl Path {
    fn name(self) -> &'static str {
        match self {
            Path::Routed => "routed (no encapsulation)",
            Path::Vxlan => "Docker-style overlay (bridge + VXLAN)",
            Path::Bpfnet => "bpfnet overlay",
            Path::BpfnetDevice => "bpfnet overlay, VXLAN device",
            Path::Control => "routed again (A/A control)",
        }
    }
}

/// One path's world (dropped at the end: its namespaces, daemons and etcd go with it).
struct World {
    path: Path,
    cluster: Cluster,
    client_ns: String,
    server_ns: String,
    server: SocketAddr,
}

/// The node namespaces: no IPv6, no rp_filter; forwarding where the path routes.
fn nodes(tag: &str, forwarding: bool) -> Result<Cluster> {
    let c = Cluster::new(tag, 2)?;
    for node in &c.nodes {
        bench::base_sysctls(&node.host(), forwarding)?;
    }
    Ok(c)
}

fn build_routed(path: Path, tag: &str) -> Result<World> {
    let mut c = nodes(tag, true)?;
    let mut containers = vec![];
    for i in 0..2 {
        let host = c.nodes[i].host();
        let ns = container_ns(&mut c.nodes[i], "c")?;
        let subnet = 210 + i;
        ip(&host, &["link", "add", "h0", "type", "veth", "peer", "name", "eth0", "netns", &ns])?;
        ip(&host, &["addr", "add", &format!("10.{subnet}.0.1/24"), "dev", "h0"])?;
        ip(&host, &["link", "set", "h0", "up"])?;
        ip(&ns, &["addr", "add", &format!("10.{subnet}.0.2/24"), "dev", "eth0"])?;
        ip(&ns, &["link", "set", "eth0", "up"])?;
        ip(&ns, &["route", "add", "default", "via", &format!("10.{subnet}.0.1")])?;
        let other = 1 - i;
        ip(&host, &["route", "add", &format!("10.{}.0.0/24", 210 + other), "via", &underlay_ip(other + 1)])?;
        containers.push(ns);
    }
    Ok(World { path, server: "10.211.0.2:5201".parse()?, client_ns: containers[0].clone(), server_ns: containers[1].clone(), cluster: c })
}

fn build_vxlan(tag: &str) -> Result<World> {
    let mut c = nodes(tag, false)?;
    let mac = |i: usize| format!("02:42:0a:dc:00:0{}", i + 2);
    let mut containers = vec![];
    for i in 0..2 {
        let host = c.nodes[i].host();
        let ns = container_ns(&mut c.nodes[i], "c")?;
        // As dockerd sets it for its bridges (and the overlay's): bridged traffic meets iptables.
        run_ok("ip", &["netns", "exec", &host, "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1"]).ok();
        ip(&host, &["link", "add", "br0", "type", "bridge"])?;
        ip(&host, &["link", "set", "br0", "up"])?;
        let local = underlay_ip(i + 1);
        ip(&host, &["link", "add", "vx0", "type", "vxlan", "id", "4096", "dstport", "4789", "local", &local, "dev", "up0", "nolearning"])?;
        ip(&host, &["link", "set", "vx0", "mtu", "1450", "master", "br0", "up"])?;
        ip(&host, &["link", "add", "h0", "mtu", "1450", "type", "veth", "peer", "name", "eth0", "netns", &ns])?;
        ip(&host, &["link", "set", "h0", "master", "br0", "up"])?;
        ip(&ns, &["link", "set", "eth0", "address", &mac(i), "mtu", "1450"])?;
        ip(&ns, &["addr", "add", &format!("10.220.0.{}/24", i + 2), "dev", "eth0"])?;
        ip(&ns, &["link", "set", "eth0", "up"])?;
        containers.push(ns);
    }
    for i in 0..2 {
        let other = 1 - i;
        let host = c.nodes[i].host();
        // What Docker programs from its gossip: where the other container's MAC lives, and its
        // address's MAC (Docker answers ARP in the overlay namespace; a static entry here).
        run_ok("ip", &["netns", "exec", &host, "bridge", "fdb", "add", &mac(other), "dev", "vx0", "dst", &underlay_ip(other + 1), "self", "permanent"])?;
        ip(&containers[i], &["neigh", "add", &format!("10.220.0.{}", other + 2), "lladdr", &mac(other), "dev", "eth0", "nud", "permanent"])?;
    }
    Ok(World { path: Path::Vxlan, server: "10.220.0.3:5201".parse()?, client_ns: containers[0].clone(), server_ns: containers[1].clone(), cluster: c })
}

fn build_bpfnet(path: Path, tag: &str) -> Result<World> {
    let mut c = nodes(tag, false)?;
    c.start_single_etcd()?;
    let encap = if path == Path::BpfnetDevice { "device" } else { "datapath" };
    for i in 0..2 {
        c.start_daemon(i, "30s", &["--xdp", "off", "--overlay-encap", encap])?;
    }
    c.nodes[0].bpfnet_ok(&["network", "create", "bench", "-d", "overlay", "--subnet", "10.230.0.0/20"])?;
    let mut containers = vec![];
    let mut addresses = vec![];
    for i in 0..2 {
        for _ in 0..50 {
            if c.nodes[i].bpfnet(&["network", "inspect", "bench"])?.ok {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let ns = container_ns(&mut c.nodes[i], "c")?;
        let out: serde_json::Value = serde_json::from_str(&c.nodes[i].bpfnet_ok(&["network", "connect", "bench", &ns, "--json"])?)?;
        let address = out["ipv4_address"].as_str().context("no address")?.split('/').next().unwrap_or_default().to_string();
        containers.push(ns);
        addresses.push(address);
    }
    let server = format!("{}:{PORT}", addresses[1]).parse()?;
    Ok(World { path, server, client_ns: containers[0].clone(), server_ns: containers[1].clone(), cluster: c })
}

/// One path's results for one mode.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub path: String,
    pub rates: Vec<f64>,
    /// Per repetition, to the routed path of the same repetition.
    pub ratios: Vec<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModeRows {
    pub mode: String,
    pub title: String,
    pub unit: String,
    pub rows: Vec<Row>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub date: String,
    pub seconds: f64,
    pub reps: usize,
    pub results: Vec<ModeRows>,
    /// Milliseconds from `network connect` returning on node 1 to the endpoint in node 2's
    /// datapath, sorted; and how many endpoints the cluster held meanwhile.
    pub propagation_ms: Vec<f64>,
    pub cluster_endpoints: usize,
    /// Cluster services installed: how many, seconds until node 1 had created them all, seconds
    /// until node 2 had them all.
    pub services: Option<(usize, f64, f64)>,
}

fn spread(values: &[f64]) -> String {
    let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if finite.is_empty() {
        return "-".into();
    }
    let (lo, hi) = finite.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
    if finite.len() > 1 {
        format!("{:.2}x, {lo:.2}-{hi:.2}", median(&finite))
    } else {
        format!("{:.2}x", median(&finite))
    }
}

impl Report {
    /// The table (ratios to routed), then bpfnet against the Docker-style overlay.
    pub fn markdown(&self) -> String {
        let mut header = vec!["path".to_string()];
        header.extend(self.results.iter().map(|m| format!("{} {} (x routed)", m.title, if m.mode == "stream" { "Gb/s" } else { &m.unit })));
        let paths: Vec<String> = self.results.first().map(|m| m.rows.iter().map(|r| r.path.clone()).collect()).unwrap_or_default();
        let rows: Vec<Vec<String>> = paths
            .iter()
            .map(|p| {
                let mut row = vec![p.clone()];
                for m in &self.results {
                    let r = m.rows.iter().find(|r| &r.path == p).expect("every path in every mode");
                    row.push(format!("{} ({})", format_rate(&m.mode, median(&r.rates)), spread(&r.ratios)));
                }
                row
            })
            .collect();
        let mut s = render_table(&header, &rows);
        let against: Vec<String> = self
            .results
            .iter()
            .filter_map(|m| {
                let b = m.rows.iter().find(|r| r.path == Path::Bpfnet.name())?;
                let v = m.rows.iter().find(|r| r.path == Path::Vxlan.name())?;
                let ratios: Vec<f64> = b.rates.iter().zip(&v.rates).map(|(b, v)| b / v).collect();
                Some(format!("{} {}", m.title, spread(&ratios)))
            })
            .collect();
        s.push_str(&format!("\nbpfnet against the Docker-style overlay (same repetition): {}\n", against.join(", ")));
        if !self.propagation_ms.is_empty() {
            let p = |q: f64| self.propagation_ms[((self.propagation_ms.len() - 1) as f64 * q).round() as usize];
            s.push_str(&format!(
                "\nControl plane: from `network connect` returning on node 1 to the endpoint in node 2's datapath (negative: \
                 node 2 had it before the connect returned, as the address is claimed before the veth is made), {} connects \
                 with {} endpoints in the cluster: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms\n",
                self.propagation_ms.len(),
                self.cluster_endpoints,
                p(0.5),
                p(0.99),
                self.propagation_ms.last().copied().unwrap_or(f64::NAN)
            ));
        }
        if let Some((count, created, everywhere)) = self.services {
            s.push_str(&format!(
                "\nCluster services: {count} created one by one on node 1 (one request each, an etcd transaction each) in \
                 {created:.2} s; all of them made on node 2 (published, tables built) {everywhere:.2} s after the first request\n"
            ));
        }
        s
    }

    pub fn markdown_section(&self) -> String {
        format!(
            "## Cross-node results\n\n- Date: {}\n- Command: `bpfnet-lab cross-node-bench --seconds {} --reps {}`\n- {} s per measurement, {} repetition(s)\n\n{}\nEach cell: median rate over the repetitions (median ratio to the routed path of the same repetition, then their min-max).\n",
            self.date,
            self.seconds,
            self.reps,
            self.seconds,
            self.reps,
            self.markdown()
        )
    }
}

pub fn run(opts: &Options) -> Result<Report> {
    if opts.run.reps == 0 || opts.run.modes.is_empty() || opts.run.seconds <= 0.0 {
        bail!("nothing to measure: need --reps >= 1, --seconds > 0 and at least one mode");
    }
    let lab = bench::lab_binary();
    let machine = bench::machine();
    let cpu = if machine.nproc > 1 { 1 } else { 0 };
    let (slices, slice_seconds) = opts.run.slices();

    eprintln!("cross-node bench: building the four paths (node namespaces, etcd, daemons)");
    let mut worlds = vec![
        build_routed(Path::Routed, "xn-routed")?,
        build_vxlan("xn-vxlan")?,
        build_bpfnet(Path::Bpfnet, "xn-bpfnet")?,
        build_bpfnet(Path::BpfnetDevice, "xn-bpfdev")?,
    ];
    if opts.run.control {
        worlds.push(build_routed(Path::Control, "xn-control")?);
    }
    for w in &worlds {
        let to = w.server.ip().to_string();
        let reached = (0..20).any(|_| w.cluster.nodes[0].ping(&w.client_ns, &to).unwrap_or(false));
        if !reached {
            bail!("{}: {} cannot reach {to}", w.path.name(), w.client_ns);
        }
    }
    let mut servers = vec![];
    for w in &worlds {
        servers.push(Server::start(&lab, &w.server_ns, cpu, PORT, false)?);
    }
    let n = worlds.len();
    let mut rates = vec![vec![vec![f64::NAN; opts.run.reps]; n]; opts.run.modes.len()];
    for rep in 0..opts.run.reps {
        let order = |round: usize| -> Vec<usize> {
            let mut o: Vec<usize> = (0..n).collect();
            o.rotate_left((rep + round) % n);
            o
        };
        for (m, &mode) in opts.run.modes.iter().enumerate() {
            let measure = |w: &World, seconds: f64| {
                client(&lab, &w.client_ns, cpu, w.server, mode, seconds).with_context(|| format!("{} on {}", mode_title(mode), w.path.name()))
            };
            if opts.run.warmup > 0.0 {
                for c in order(0) {
                    measure(&worlds[c], opts.run.warmup)?;
                }
            }
            let mut sums = vec![0.0; n];
            for round in 0..slices {
                for c in order(round) {
                    sums[c] += measure(&worlds[c], slice_seconds)?;
                }
            }
            for c in 0..n {
                rates[m][c][rep] = sums[c] / slices as f64;
                eprintln!(
                    "cross-node bench: rep {}/{} {:<10} {:<38} {:>10} {}",
                    rep + 1,
                    opts.run.reps,
                    mode_title(mode),
                    worlds[c].path.name(),
                    format_rate(&mode_cli_name(mode), rates[m][c][rep]),
                    mode_unit(mode)
                );
            }
        }
    }
    let bpfnet = worlds.iter().position(|w| w.path == Path::Bpfnet).expect("built");
    let tunnelled = bpfnet_counter(&worlds[bpfnet], "to_overlay");
    drop(servers);
    let (propagation_ms, cluster_endpoints) = if opts.connects > 0 {
        propagation(&mut worlds[bpfnet], opts.connects, opts.endpoints)?
    } else {
        (vec![], 0)
    };
    let services = if opts.services > 0 { Some(install_services(&worlds[bpfnet], opts.services)?) } else { None };
    let names: Vec<&str> = worlds.iter().map(|w| w.path.name()).collect();
    drop(worlds);
    if tunnelled == 0 {
        bail!("bpfnet's datapath tunnelled no packet: the bpfnet row did not measure the overlay");
    }
    let results = opts
        .run.modes
        .iter()
        .enumerate()
        .map(|(m, &mode)| ModeRows {
            mode: mode_cli_name(mode),
            title: mode_title(mode).into(),
            unit: mode_unit(mode).into(),
            rows: (0..n)
                .map(|c| Row {
                    path: names[c].into(),
                    rates: rates[m][c].clone(),
                    ratios: rates[m][c].iter().zip(&rates[m][0]).map(|(r, d)| r / d).collect(),
                })
                .collect(),
        })
        .collect();
    let report =
        Report { date: date_utc(), seconds: opts.run.seconds, reps: opts.run.reps, results, propagation_ms, cluster_endpoints, services };
    eprintln!("{}", report.markdown());
    if let Some(path) = &opts.markdown_out {
        bench::write_markdown(path, "cross-node-results", "bpfnet-lab cross-node-bench --markdown-out", &report.markdown_section())?;
    }
    Ok(report)
}

/// Creates `count` cluster services on node 1 (on the overlay network `bench`, each with one
/// backend on node 2 and a port of its own), one request each; returns how many, the seconds the
/// requests took, and the seconds until node 2 listed them all.
fn install_services(w: &World, count: usize) -> Result<(usize, f64, f64)> {
    use std::time::{Duration, Instant};
    eprintln!("cross-node bench: creating {count} cluster services on node 1");
    let socket = w.cluster.nodes[0].socket();
    let client = bpfnet::client::Client::new(&socket);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let started = Instant::now();
    runtime.block_on(async {
        for k in 0..count {
            let req = bpfnet::api::CreateService {
                name: format!("svc-{k}"),
                network: "bench".into(),
                port: format!("{}", 10_000 + k),
                vip: None,
                vip6: None,
                publish: None,
                affinity: None,
                backends: vec![format!("filler-{}", k % 100)],
            };
            let _: bpfnet::api::ServiceInspect = client.post("/services", &req).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        Ok::<(), anyhow::Error>(())
    })?;
    let created = started.elapsed().as_secs_f64();
    loop {
        let list: serde_json::Value = serde_json::from_str(&w.cluster.nodes[1].bpfnet_ok(&["service", "ls", "--json"])?)?;
        if list.as_array().map_or(0, Vec::len) >= count {
            break;
        }
        if started.elapsed() > Duration::from_secs(120) {
            bail!("node 2 did not have the {count} services within 120 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let everywhere = started.elapsed().as_secs_f64();
    eprintln!("cross-node bench: {count} services created in {created:.2} s, on node 2 after {everywhere:.2} s");
    Ok((count, created, everywhere))
}

/// A datapath counter of node 1's daemon in `w`.
fn bpfnet_counter(w: &World, name: &str) -> u64 {
    let Ok(out) = w.cluster.nodes[0].bpfnet_ok(&["stats", "--json"]) else { return 0 };
    let stats: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    stats["counters"].as_array().and_then(|a| a.iter().find(|c| c["name"] == name)).and_then(|c| c["packets"].as_u64()).unwrap_or(0)
}

/// Times `connects` connects on node 1 until node 2's datapath holds the new endpoint (its
/// pinned ENDPOINTS map, polled every 0.2 ms), with `endpoints` endpoints allocated on node 2
/// first. Returns the times in ms, sorted, and the endpoints the cluster held.
fn propagation(w: &mut World, connects: usize, endpoints: usize) -> Result<(Vec<f64>, usize)> {
    use std::time::{Duration, Instant};
    eprintln!("cross-node bench: allocating {endpoints} endpoints on node 2, then timing {connects} connects on node 1");
    for k in 0..endpoints {
        w.cluster.nodes[1].bpfnet_ok(&["endpoint", "create", "bench", &format!("filler-{k}")])?;
    }
    let maps = bpfnet::bpffs::maps_dir(&w.cluster.nodes[1].bpffs());
    let map = aya::maps::MapData::from_pin(maps.join(datapath_common::map_names::ENDPOINTS)).context("opening node 2's ENDPOINTS")?;
    let map: aya::maps::HashMap<_, datapath_common::IpKey, datapath_common::EndpointInfo> = aya::maps::HashMap::try_from(aya::maps::Map::HashMap(map))?;
    let mut times = vec![];
    let mut connect_ms = vec![];
    for k in 0..connects {
        let ns = w.cluster.nodes[0].add_netns(&format!("p{k}"))?;
        // A known address, so that node 2's map can be watched from the moment the connect starts.
        let address: std::net::IpAddr = format!("10.230.8.{}", k + 1).parse()?;
        let key = datapath_common::IpKey::from(address);
        let socket = w.cluster.nodes[0].socket();
        let started = Instant::now();
        let connect = std::thread::spawn(move || {
            std::process::Command::new(crate::sandbox::bpfnet_bin())
                .arg("--socket")
                .arg(socket)
                .args(["network", "connect", "bench", &ns, "--ip", &address.to_string()])
                .output()
        });
        let mut seen = None;
        while seen.is_none() {
            if map.get(&key, 0).is_ok() {
                seen = Some(started.elapsed());
            } else if started.elapsed() > Duration::from_secs(10) {
                bail!("{address} did not reach node 2's datapath within 10 s");
            } else {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        let out = connect.join().map_err(|_| anyhow::anyhow!("connect thread"))??;
        if !out.status.success() {
            bail!("connect: {}", String::from_utf8_lossy(&out.stderr));
        }
        // The connect's own time, measured from the same start (it may end after node 2 is ready).
        let returned = started.elapsed();
        connect_ms.push(returned.as_secs_f64() * 1000.0);
        times.push(seen.expect("seen").as_secs_f64() * 1000.0 - returned.as_secs_f64() * 1000.0);
    }
    connect_ms.sort_by(|a, b| a.total_cmp(b));
    eprintln!("cross-node bench: connects took p50 {:.1} ms", connect_ms[connect_ms.len() / 2]);
    times.sort_by(|a, b| a.total_cmp(b));
    Ok((times, endpoints + connects + 1))
}
