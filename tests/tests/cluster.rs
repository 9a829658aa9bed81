//! Clusters: three node namespaces, each with its own daemon, and a three-member etcd cluster
//! (one member per node, on its underlay address). See `bpfnet_lab::cluster`.
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use bpfnet_lab::{cluster::Cluster, sandbox::DaemonOptions};

/// `node ls --json` on node `i`.
fn nodes(c: &Cluster, i: usize) -> Result<serde_json::Value> {
    let out = c.nodes[i].bpfnet_ok(&["node", "ls", "--json"])?;
    Ok(serde_json::from_str(&out)?)
}

/// Node `name`'s state as node `i` lists it (`None`: not listed).
fn state_of(c: &Cluster, i: usize, name: &str) -> Result<Option<String>> {
    let list = nodes(c, i)?;
    Ok(list["nodes"]
        .as_array()
        .context("no nodes array")?
        .iter()
        .find(|n| n["name"] == name)
        .map(|n| n["state"].as_str().unwrap_or_default().to_string()))
}

/// Polls until `f` holds, up to `limit`; returns how long it took.
fn within(limit: Duration, mut f: impl FnMut() -> Result<bool>) -> Result<Duration> {
    let start = Instant::now();
    loop {
        if f()? {
            return Ok(start.elapsed());
        }
        if start.elapsed() > limit {
            bail!("not within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn nodes_register_see_each_other_survive_restarts_and_a_dead_one_goes_down() -> Result<()> {
    let mut c = Cluster::new("cl-members", 3)?;
    c.start_etcd_cluster()?;
    for i in 0..3 {
        c.start_daemon(i, "3s", &[])?;
    }

    // Every node lists all three, up, at their underlay addresses; `*` marks the one answering.
    let list = nodes(&c, 1)?;
    let listed = list["nodes"].as_array().context("nodes")?;
    ensure!(listed.len() == 3, "expected 3 nodes: {list}");
    for (i, n) in listed.iter().enumerate() {
        ensure!(n["name"] == format!("n{}", i + 1) && n["state"] == "up", "{n}");
        ensure!(n["underlay"] == format!("10.250.0.{}", i + 1), "{n}");
        ensure!(n["this_node"] == (i == 1), "{n}");
    }
    ensure!(list["cluster"]["reachable"] == true && list["cluster"]["registered"] == true, "{list}");
    let table = c.nodes[1].bpfnet_ok(&["node", "ls"])?;
    ensure!(table.lines().next().unwrap_or_default().starts_with("NAME") && table.contains("n2 *"), "{table}");
    let stats = c.nodes[0].bpfnet_ok(&["stats"])?;
    ensure!(stats.contains("cluster: node n1 (10.250.0.1)"), "{stats}");

    // A node that is up cannot be removed, nor can a node remove itself.
    let refused = c.bpfnet(0, &["node", "rm", "n3"])?;
    ensure!(!refused.ok && refused.stderr.contains("is up"), "{refused:?}");
    let refused = c.bpfnet(0, &["node", "rm", "n1"])?;
    ensure!(!refused.ok && refused.stderr.contains("own node"), "{refused:?}");
    let refused = c.bpfnet(0, &["node", "rm", "n9"])?;
    ensure!(!refused.ok && refused.stderr.contains("no node \"n9\""), "{refused:?}");

    // kill -9 and restart: the node resumes its lease; no other node ever sees it down.
    c.nodes[1].stop_daemon(libc::SIGKILL)?;
    c.start_daemon(1, "3s", &[])?;
    let watch_until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < watch_until {
        ensure!(state_of(&c, 0, "n2")?.as_deref() == Some("up"), "n2 went down across a restart");
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = std::fs::read_to_string(c.nodes[1].daemon_log())?;
    ensure!(log.contains("resumes its lease"), "the restarted daemon took a new lease: {log}");

    // A node whose daemon dies goes down within the lease's TTL (3 s) + 2 s.
    c.nodes[2].stop_daemon(libc::SIGKILL)?;
    let took = within(Duration::from_secs(5), || Ok(state_of(&c, 0, "n3")?.as_deref() == Some("down")))
        .context("n3 did not go down within TTL + 2 s")?;
    eprintln!("a dead node went down after {took:?} (lease TTL 3 s)");

    // Its name is taken while n1 lives: a daemon elsewhere cannot claim it.
    let clash = c.nodes[2].start_daemon_with(&DaemonOptions {
        args: &["--cluster", &c.etcd_urls.clone(), "--node", "n1"],
        ..Default::default()
    });
    let message = format!("{:#}", clash.err().context("a second n1 started")?);
    ensure!(message.contains("node name \"n1\" is held by a live node at 10.250.0.1"), "{message}");

    // The dead node can now be removed, from any node; then it is gone from every list.
    c.nodes[0].bpfnet_ok(&["node", "rm", "n3"])?;
    ensure!(state_of(&c, 1, "n3")?.is_none(), "n3 still listed");
    ensure!(nodes(&c, 1)?["nodes"].as_array().map(Vec::len) == Some(2));

    // Without --cluster a daemon is a single host: `node ls` says how to join one.
    c.nodes[2].start_daemon()?;
    let single = c.bpfnet(2, &["node", "ls"])?;
    ensure!(!single.ok && single.stderr.contains("start it with --cluster"), "{single:?}");
    let stats = c.nodes[2].bpfnet_ok(&["stats"])?;
    ensure!(!stats.contains("cluster"), "{stats}");
    Ok(())
}

#[test]
fn a_node_starts_without_etcd_and_rides_out_an_etcd_outage() -> Result<()> {
    let mut c = Cluster::new("cl-outage", 3)?;
    // Daemons first: etcd is not there yet, they start anyway and register once it is.
    for i in 0..3 {
        c.start_daemon(i, "4s", &[])?;
    }
    let stats = c.nodes[0].bpfnet_ok(&["stats"])?;
    ensure!(stats.contains("cluster unreachable"), "{stats}");
    let refused = c.bpfnet(0, &["node", "ls"])?;
    ensure!(!refused.ok && refused.stderr.contains("out of reach"), "{refused:?}");
    c.start_etcd_cluster()?;
    within(Duration::from_secs(10), || {
        let list = nodes(&c, 0)?;
        Ok(list["nodes"].as_array().is_some_and(|n| n.len() == 3 && n.iter().all(|n| n["state"] == "up")))
    })
    .context("the nodes did not register once etcd was up")?;

    // Every member down: the daemons go on, say the cluster is unreachable, show the last list
    // read (marked stale) and refuse cluster changes readably.
    for i in 0..3 {
        c.stop_etcd(i, true);
    }
    within(Duration::from_secs(8), || Ok(c.nodes[0].bpfnet_ok(&["stats"])?.contains("cluster unreachable")))
        .context("stats did not say the cluster is unreachable")?;
    let stale = c.nodes[0].bpfnet_ok(&["node", "ls"])?;
    ensure!(stale.starts_with("cluster unreachable") && stale.contains("read") && stale.contains("n3"), "{stale}");
    let refused = c.bpfnet(0, &["node", "rm", "n3"])?;
    ensure!(!refused.ok && refused.stderr.contains("out of reach"), "{refused:?}");
    ensure!(c.nodes.iter_mut().all(|n| n.daemon_alive()), "a daemon died with etcd");
    c.nodes[0].bpfnet_ok(&["network", "create", "local", "--subnet", "10.77.0.0/24"])?;

    // etcd back (longer than the lease TTL later): every node is up again, the list fresh.
    std::thread::sleep(Duration::from_secs(5));
    for i in 0..3 {
        c.start_etcd(i)?;
    }
    c.wait_etcd_healthy(Duration::from_secs(30))?;
    within(Duration::from_secs(15), || {
        let list = nodes(&c, 0)?;
        Ok(list.get("stale_s").is_none()
            && list["cluster"]["reachable"] == true
            && list["nodes"].as_array().is_some_and(|n| n.len() == 3 && n.iter().all(|n| n["state"] == "up")))
    })
    .context("the cluster did not come back whole")?;
    Ok(())
}

#[test]
fn cluster_flags_are_checked() -> Result<()> {
    let sb = bpfnet_lab::Sandbox::new("cl-flags")?;
    for (args, expected) in [
        (vec!["--node", "n1"], "--cluster"),
        (vec!["--cluster", "http://127.0.0.1:2379", "--cluster-lease-ttl", "1s"], "shortest lease"),
        (vec!["--cluster", "http://127.0.0.1:2379", "--node", "bad/name"], "invalid node name"),
    ] {
        let mut all: Vec<std::ffi::OsString> = vec!["--state-dir".into(), sb.state_dir().into(), "--bpffs".into(), sb.bpffs().into()];
        all.extend(["--socket".into(), sb.socket().into()]);
        all.extend(args.iter().map(Into::into));
        let refs: Vec<&std::ffi::OsStr> = all.iter().map(|a| a.as_os_str()).collect();
        let ran = sb.run_daemon_to_exit(&refs, Duration::from_secs(20))?;
        ensure!(!ran.ok && ran.stderr.contains(expected), "{args:?}: {ran:?}");
    }
    Ok(())
}
