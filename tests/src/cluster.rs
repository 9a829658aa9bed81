//! A cluster on one machine: node namespaces, each with its own daemon, joined by an underlay
//! namespace, and a three-member etcd cluster with one member per node on its underlay address.
//!
//! ```text
//!  node n1: up0 10.250.0.1/24 ─┐
//!  node n2: up0 10.250.0.2/24 ─┼─ underlay: br0 10.250.0.254/24 (routes, ip_forward)
//!  node n3: up0 10.250.0.3/24 ─┘
//! ```
//! Each node is a [`Sandbox`] (its "host" namespace is the node; its daemon, state and bpffs are
//! private); the underlay lives in the cluster's own sandbox. etcd members run inside the node
//! namespaces as `etcd --name bpfnetlab-...` so that `sweep` finds them. Everything goes on drop.
use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::sandbox::{run, run_ok, DaemonOptions, Sandbox};

/// The underlay's router address; node `i` (from 1) is `10.250.0.i`.
pub const UNDERLAY_ROUTER: &str = "10.250.0.254";

pub fn underlay_ip(node: usize) -> String {
    format!("10.250.0.{node}")
}

pub struct Cluster {
    /// The underlay namespace (and the cluster's files).
    pub world: Sandbox,
    /// `nodes[i]` is node `n{i+1}`.
    pub nodes: Vec<Sandbox>,
    etcd: Vec<Option<Child>>,
    /// How many nodes run an etcd member (the first ones): all, or one (`start_single_etcd`).
    members: usize,
    /// `http://10.250.0.1:2379,...`: what daemons get as `--cluster`.
    pub etcd_urls: String,
    underlay: String,
}

impl Cluster {
    /// `count` node namespaces on an underlay (no daemon, no etcd yet).
    pub fn new(tag: &str, count: usize) -> Result<Self> {
        let mut world = Sandbox::new(tag)?;
        let underlay = world.add_netns("underlay")?;
        run_ok("ip", &["-n", &underlay, "link", "add", "br0", "type", "bridge"])?;
        run_ok("ip", &["-n", &underlay, "addr", "add", &format!("{UNDERLAY_ROUTER}/24"), "dev", "br0"])?;
        run_ok("ip", &["-n", &underlay, "link", "set", "br0", "up"])?;
        run_ok("ip", &["netns", "exec", &underlay, "sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        let mut nodes = Vec::new();
        for i in 1..=count {
            let node = Sandbox::new(&format!("{tag}-n{i}"))?;
            let host = node.host();
            let port = format!("n{i}");
            run_ok("ip", &["-n", &host, "link", "add", "up0", "type", "veth", "peer", "name", &port, "netns", &underlay])?;
            run_ok("ip", &["-n", &underlay, "link", "set", &port, "master", "br0", "up"])?;
            run_ok("ip", &["-n", &host, "addr", "add", &format!("{}/24", underlay_ip(i)), "dev", "up0"])?;
            run_ok("ip", &["-n", &host, "link", "set", "up0", "up"])?;
            run_ok("ip", &["-n", &host, "route", "add", "default", "via", UNDERLAY_ROUTER])?;
            nodes.push(node);
        }
        let etcd_urls = (1..=count).map(|i| format!("http://{}:2379", underlay_ip(i))).collect::<Vec<_>>().join(",");
        Ok(Self { world, etcd: (0..count).map(|_| None).collect(), members: count, nodes, etcd_urls, underlay })
    }

    /// The underlay namespace.
    pub fn underlay(&self) -> &str {
        &self.underlay
    }

    fn member_name(&self, i: usize) -> String {
        format!("{}-n{}", self.world.name, i + 1)
    }

    /// Starts etcd member `i` (from 0) in its node's namespace: the first start makes the
    /// cluster, a later one (its data dir exists) rejoins it.
    pub fn start_etcd(&mut self, i: usize) -> Result<()> {
        if self.etcd[i].is_some() {
            bail!("etcd member {} is running", i + 1);
        }
        let peers: Vec<String> =
            (0..self.members).map(|j| format!("{}=http://{}:2380", self.member_name(j), underlay_ip(j + 1))).collect();
        let ip = underlay_ip(i + 1);
        let data = self.world.dir.join(format!("etcd-n{}", i + 1));
        let log = self.world.dir.join(format!("etcd-n{}.log", i + 1));
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.nodes[i].host(), "etcd", "--name", &self.member_name(i)])
            .arg("--data-dir")
            .arg(&data)
            .args(["--logger=zap", &format!("--log-outputs={}", log.display())])
            .args(["--listen-peer-urls", &format!("http://{ip}:2380")])
            .args(["--initial-advertise-peer-urls", &format!("http://{ip}:2380")])
            .args(["--listen-client-urls", &format!("http://{ip}:2379,http://127.0.0.1:2379")])
            .args(["--advertise-client-urls", &format!("http://{ip}:2379")])
            .args(["--initial-cluster", &peers.join(",")])
            .args(["--initial-cluster-token", &self.world.name, "--initial-cluster-state", "new"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // etcd refuses to start when an ETCD_* variable names a flag also given.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("ETCD_") {
                cmd.env_remove(key);
            }
        }
        self.etcd[i] = Some(cmd.spawn().context("starting etcd (cargo xtask setup installs etcd-server)")?);
        Ok(())
    }

    /// Starts every member and waits until the cluster commits writes.
    pub fn start_etcd_cluster(&mut self) -> Result<()> {
        for i in 0..self.nodes.len() {
            self.start_etcd(i)?;
        }
        self.wait_etcd_healthy(Duration::from_secs(30))
    }

    /// A one-member etcd on node 1 (for benchmarks: quorum is not what they measure).
    pub fn start_single_etcd(&mut self) -> Result<()> {
        self.members = 1;
        self.etcd_urls = format!("http://{}:2379", underlay_ip(1));
        self.start_etcd(0)?;
        self.wait_etcd_healthy(Duration::from_secs(30))
    }

    /// `etcdctl ARGS` against every member, from node 1's namespace.
    pub fn etcdctl(&self, args: &[&str]) -> Result<crate::sandbox::Ran> {
        let endpoints = format!("--endpoints={}", self.etcd_urls);
        let host = self.nodes[0].host();
        let mut all = vec!["netns", "exec", &host, "etcdctl", &endpoints, "--command-timeout=3s"];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Waits until every running member answers `endpoint health` (a proposal committed).
    pub fn wait_etcd_healthy(&self, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        let endpoints: Vec<String> = self
            .etcd
            .iter()
            .enumerate()
            .filter(|(_, c)| c.is_some())
            .map(|(i, _)| format!("http://{}:2379", underlay_ip(i + 1)))
            .collect();
        let endpoints = format!("--endpoints={}", endpoints.join(","));
        let host = self.nodes[0].host();
        loop {
            let r = run("ip", &["netns", "exec", &host, "etcdctl", &endpoints, "--command-timeout=2s", "endpoint", "health"])?;
            if r.ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("etcd not healthy within {limit:?}: {}{}", r.stdout, r.stderr);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stops member `i` (SIGTERM, then SIGKILL after 3 s: a member whose peers are gone may
    /// hang), or kills it at once.
    pub fn stop_etcd(&mut self, i: usize, kill: bool) {
        let Some(mut child) = self.etcd[i].take() else { return };
        // SAFETY: signalling our own child by PID (`ip netns exec` execs etcd).
        unsafe { libc::kill(child.id() as i32, if kill { libc::SIGKILL } else { libc::SIGTERM }) };
        let deadline = Instant::now() + Duration::from_secs(3);
        while matches!(child.try_wait(), Ok(None)) {
            if Instant::now() > deadline {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.wait();
    }

    /// Makes sure member `i` is not etcd's leader (a new leader gives every lease a fresh TTL:
    /// a node whose member led would outlive its TTL by an election), moving leadership to another
    /// member if it is. Returns whether it moved (every lease's TTL then counts from now).
    /// The member (node index) that leads now.
    pub fn leader(&self) -> Result<usize> {
        let status = self.etcdctl(&["endpoint", "status", "--write-out=json"])?.stdout;
        let status: serde_json::Value = serde_json::from_str(&status).context("etcdctl endpoint status")?;
        let entries = status.as_array().context("endpoint status is no list")?;
        let leader = entries.iter().find_map(|e| e["Status"]["leader"].as_u64()).context("no leader")?;
        let url = entries
            .iter()
            .find(|e| e["Status"]["header"]["member_id"].as_u64() == Some(leader))
            .and_then(|e| e["Endpoint"].as_str())
            .context("the leader is not among the members answering")?;
        (0..self.nodes.len())
            .find(|i| url == format!("http://{}:2379", underlay_ip(i + 1)))
            .with_context(|| format!("no node has member {url}"))
    }

    pub fn move_leader_away_from(&self, i: usize) -> Result<bool> {
        let status = self.etcdctl(&["endpoint", "status", "--write-out=json"])?.stdout;
        let status: serde_json::Value = serde_json::from_str(&status).context("etcdctl endpoint status")?;
        let entries = status.as_array().context("endpoint status is no list")?;
        let leader = entries.iter().find_map(|e| e["Status"]["leader"].as_u64()).context("no leader")?;
        let id_of = |url: &str| {
            entries.iter().find(|e| e["Endpoint"] == url).and_then(|e| e["Status"]["header"]["member_id"].as_u64())
        };
        let mine = id_of(&format!("http://{}:2379", underlay_ip(i + 1))).context("member not found")?;
        if leader != mine {
            return Ok(false);
        }
        let other = (0..self.nodes.len()).find(|j| *j != i && self.etcd[*j].is_some()).context("no other member")?;
        let target = id_of(&format!("http://{}:2379", underlay_ip(other + 1))).context("member not found")?;
        let moved = self.etcdctl(&["move-leader", &format!("{target:x}")])?;
        if !moved.ok {
            bail!("etcdctl move-leader: {}{}", moved.stdout, moved.stderr);
        }
        Ok(true)
    }

    /// Node `i` dies whole: its daemon and etcd member killed, its namespace removed.
    pub fn kill_node(&mut self, i: usize) -> Result<()> {
        self.nodes[i].stop_daemon(libc::SIGKILL)?;
        self.stop_etcd(i, true);
        self.nodes[i].delete_netns("host")
    }

    /// Arguments that make a daemon node `n{i+1}` of this cluster, with leases of `ttl`.
    pub fn daemon_args(&self, i: usize, ttl: &str) -> Vec<String> {
        vec![
            "--cluster".into(),
            self.etcd_urls.clone(),
            "--node".into(),
            format!("n{}", i + 1),
            "--cluster-lease-ttl".into(),
            ttl.into(),
        ]
    }

    /// Starts node `i`'s daemon with `daemon_args(i, ttl)` and `extra` arguments.
    pub fn start_daemon(&mut self, i: usize, ttl: &str, extra: &[&str]) -> Result<()> {
        self.start_daemon_with_env(i, ttl, extra, &[])
    }

    /// [`Self::start_daemon`] with extra environment (test hooks such as BPFNET_TEST_CRASH_AFTER).
    pub fn start_daemon_with_env(&mut self, i: usize, ttl: &str, extra: &[&str], env: &[(&str, &str)]) -> Result<()> {
        let owned = self.daemon_args(i, ttl);
        let mut args: Vec<&str> = owned.iter().map(String::as_str).collect();
        args.extend_from_slice(extra);
        self.nodes[i].start_daemon_with(&DaemonOptions { args: &args, env, ..Default::default() })
    }

    /// `bpfnet ARGS` against node `i`'s daemon.
    pub fn bpfnet(&self, i: usize, args: &[&str]) -> Result<crate::sandbox::Ran> {
        self.nodes[i].bpfnet(args)
    }

    pub fn cleanup(&mut self) {
        for node in &mut self.nodes {
            node.stop_daemon(libc::SIGKILL).ok();
        }
        for i in 0..self.etcd.len() {
            self.stop_etcd(i, true);
        }
        for node in &mut self.nodes {
            node.cleanup();
        }
        self.world.cleanup();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.cleanup();
    }
}
