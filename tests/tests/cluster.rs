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

    // The leader killed: requests that meet its dead member are tried on the others, those that
    // meet the election wait for it, so every change still succeeds, from every node.
    let leader = c.leader()?;
    c.stop_etcd(leader, true);
    for k in 0..6 {
        let i = k % 3;
        c.nodes[i].bpfnet_ok(&["network", "create", &format!("one-down-{k}"), "-d", "overlay", "--subnet", &format!("10.0.{}.0/24", 50 + k)])?;
        c.nodes[i].bpfnet_ok(&["network", "rm", &format!("one-down-{k}")]).or_else(|e| {
            // Another node may still hold it as the watch delivers: refused readably, never lost.
            if format!("{e:#}").contains("endpoints") { Ok(String::new()) } else { Err(e) }
        })?;
    }
    ensure!(nodes(&c, 2)?["cluster"]["reachable"] == true);
    c.start_etcd(leader)?;
    c.wait_etcd_healthy(Duration::from_secs(30))?;

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

/// `network connect NET NS --json` on node `i`: the container's address.
fn connect(c: &Cluster, i: usize, net: &str, ns: &str, extra: &[&str]) -> Result<String> {
    let mut args = vec!["network", "connect", net, ns, "--json"];
    args.extend_from_slice(extra);
    let out: serde_json::Value = serde_json::from_str(&c.nodes[i].bpfnet_ok(&args)?)?;
    let cidr = out["ipv4_address"].as_str().context("no address")?;
    Ok(cidr.split('/').next().unwrap_or_default().to_string())
}

/// The VNI the cluster gave overlay network `name` (as etcd holds it).
fn vni_of(c: &Cluster, name: &str) -> Result<u32> {
    let out: serde_json::Value = serde_json::from_str(&c.etcdctl(&["get", &format!("/bpfnet/v1/networks/{name}"), "--print-value-only"])?.stdout)?;
    out["vni"].as_u64().map(|v| v as u32).context("vni")
}

/// A VXLAN datagram (VNI `vni`) carrying an ICMP echo from `src` to `dst`, sent from namespace
/// `from` to `to`:4789 with an ordinary UDP socket (what any LAN host can do).
fn send_vxlan(from: &str, to: &str, vni: u32, src: &str, dst: &str) -> Result<()> {
    use bpfnet_lab::frames::Ip;
    let inner = Ip::new(src.parse()?, dst.parse()?, 1).icmp(8, 0, &[0, 1, 0, 1, 0xbe, 0xef]);
    send_vxlan_of(from, to, vni, 0x0800, &inner)
}

/// `inner` (a packet of Ethernet type `inner_type`) in five VXLAN datagrams (VNI `vni`) from
/// namespace `from` to `to`:4789.
fn send_vxlan_of(from: &str, to: &str, vni: u32, inner_type: u16, inner: &[u8]) -> Result<()> {
    let mut datagram = vec![0x08, 0, 0, 0];
    datagram.extend_from_slice(&(vni << 8).to_be_bytes());
    datagram.extend_from_slice(&[0x02, 0x42, 1, 2, 3, 4, 0x02, 0x42, 5, 6, 7, 8]);
    datagram.extend_from_slice(&inner_type.to_be_bytes());
    datagram.extend_from_slice(inner);
    let to: std::net::SocketAddr = format!("{to}:4789").parse()?;
    bpfnet_lab::netns::within(from, move || {
        let socket = std::net::UdpSocket::bind("0.0.0.0:0")?;
        for _ in 0..5 {
            socket.send_to(&datagram, to)?;
        }
        Ok(())
    })
}

#[test]
fn overlay_networks_span_nodes_with_isolation_and_checked_tunnels() -> Result<()> {
    let mut c = Cluster::new("cl-overlay", 3)?;
    c.start_etcd_cluster()?;
    // n3 dies at the end: its member must not lead then (a new leader renews every lease, which
    // would add an election and a TTL to its death). Moved now, well before any lease counts.
    c.move_leader_away_from(2)?;

    for i in 0..3 {
        c.start_daemon(i, "4s", &[])?;
    }
    c.nodes[0].bpfnet_ok(&["network", "create", "ov", "--driver", "overlay", "--subnet", "10.0.9.0/24", "--gateway", "10.0.9.99"])?;
    c.nodes[0].bpfnet_ok(&["network", "create", "ov2", "-d", "overlay", "--subnet", "10.0.10.0/24", "--ip-range", "10.0.10.128/25"])?;
    c.nodes[1].bpfnet_ok(&["network", "create", "quiet", "-d", "overlay", "--subnet", "10.0.12.0/24", "-o", "icc=false"])?;
    c.nodes[2].bpfnet_ok(&["network", "create", "inner", "-d", "overlay", "--subnet", "10.0.13.0/24", "--internal"])?;
    // The cluster refuses a name or a subnet another node's overlay network has.
    let clash = c.bpfnet(2, &["network", "create", "ov", "-d", "overlay", "--subnet", "10.0.20.0/24"])?;
    ensure!(!clash.ok && clash.stderr.contains("already exists"), "{clash:?}");
    let clash = c.bpfnet(2, &["network", "create", "ov3", "-d", "overlay", "--subnet", "10.0.9.128/25"])?;
    ensure!(!clash.ok && clash.stderr.contains("overlaps"), "{clash:?}");

    // Every node lists them, DRIVER overlay.
    within(Duration::from_secs(5), || {
        Ok((0..3).all(|i| {
            c.nodes[i].bpfnet_ok(&["network", "ls", "--json"]).is_ok_and(|out| {
                let nets: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
                ["ov", "ov2", "quiet", "inner"].iter().all(|name| {
                    nets.as_array().is_some_and(|a| a.iter().any(|n| n["name"] == *name && n["driver"] == "overlay"))
                })
            })
        }))
    })
    .context("the overlay networks did not reach every node")?;

    // One container per node on ov, one on ov2 on n2 and n3, one on quiet on n1 and n2.
    let mut addr = std::collections::BTreeMap::new();
    for (i, ns, net) in [
        (0, "a1", "ov"),
        (1, "a2", "ov"),
        (2, "a3", "ov"),
        (1, "b2", "ov2"),
        (2, "b3", "ov2"),
        (0, "q1", "quiet"),
        (1, "q2", "quiet"),
        (0, "i1", "inner"),
        (2, "i3", "inner"),
    ] {
        let full = c.nodes[i].add_netns(ns)?;
        // a2 is also "web2" and publishes its port 80 on n2's port 8080.
        let extra: &[&str] = if ns == "a2" { &["--alias", "web2", "-p", "8080:80"] } else { &[] };
        addr.insert(ns, (i, full.clone(), connect(&c, i, net, &full, extra)?));
    }
    let ov_addresses: std::collections::BTreeSet<&String> = ["a1", "a2", "a3"].iter().map(|n| &addr[n].2).collect();
    ensure!(ov_addresses.len() == 3, "an address was handed out twice: {addr:?}");
    // ov2's --ip-range holds on every node.
    let in_range = |a: &str| ["10.0.10.128", "10.0.10.129"].contains(&a);
    ensure!(in_range(&addr["b2"].2) && in_range(&addr["b3"].2), "ov2's range: {addr:?}");
    let mtu = c.nodes[0].exec(&addr["a1"].1, &["cat", "/sys/class/net/eth0/mtu"])?.stdout;
    ensure!(mtu.trim() == "1450", "overlay endpoint MTU {mtu:?}, expected the underlay's 1500 less 50");

    // The connectivity matrix across nodes, expected vs observed.
    let expected = [
        ("a1", "a2", true),
        ("a1", "a3", true),
        ("a2", "a3", true),
        ("a3", "a1", true),
        ("b2", "b3", true),
        ("b2", "a1", false), // another network
        ("a1", "b3", false),
        ("q1", "q2", false), // icc=false, across nodes as on one host
        ("i1", "i3", true),  // --internal: its containers reach each other across nodes...
        ("i3", "i1", true),
    ];
    // The first packets may wait for the other node to see the new endpoints.
    within(Duration::from_secs(5), || Ok(c.nodes[0].ping(&addr["a1"].1, &addr["a2"].2)?))?;
    let mut wrong = Vec::new();
    for (from, to, reach) in expected {
        let (i, ns, _) = &addr[from];
        let got = c.nodes[*i].ping(ns, &addr[to].2)?;
        if got != reach {
            wrong.push(format!("{from} -> {to}: expected {reach}, got {got}"));
        }
    }
    ensure!(wrong.is_empty(), "connectivity across nodes: {wrong:?}");
    ensure!(bpfnet_lab::checks::counter(&c.nodes[0], "to_overlay") > 0 && bpfnet_lab::checks::counter(&c.nodes[1], "from_overlay") > 0);
    // The datapath wrapped and unwrapped VXLAN itself: n1's VXLAN device carried nothing.
    let device: serde_json::Value =
        serde_json::from_str(&c.nodes[0].exec(&c.nodes[0].host(), &["ip", "-s", "-j", "link", "show", "bpfnet-vxlan"])?.stdout)?;
    let (rx, tx) = (&device[0]["stats64"]["rx"]["packets"], &device[0]["stats64"]["tx"]["packets"]);
    ensure!(rx == 0 && tx == 0, "the VXLAN device carried packets (rx {rx}, tx {tx}): {device}");
    // ... and nothing beyond: not the outside, not another overlay network's container.
    ensure!(!c.nodes[0].ping(&addr["i1"].1, "10.250.0.254")?, "an internal overlay network reached the underlay");
    ensure!(!c.nodes[0].ping(&addr["i1"].1, &addr["a2"].2)?, "an internal overlay network reached another network");
    let stats = c.nodes[0].bpfnet_ok(&["stats"])?;
    ensure!(stats.contains("overlay: 4 networks, "), "{stats}");

    // An address is the cluster's: --ip of another node's container is refused, naming it.
    let taken = c.nodes[2].add_netns("x3")?;
    let refused = c.bpfnet(2, &["network", "connect", "ov", &taken, "--ip", &addr["a1"].2])?;
    ensure!(!refused.ok && refused.stderr.contains("already in use") && refused.stderr.contains("on node n1"), "{refused:?}");
    // A network with endpoints on other nodes cannot be removed.
    let refused = c.bpfnet(0, &["network", "rm", "ov2"])?;
    ensure!(!refused.ok && refused.stderr.contains("endpoints on other nodes: n2 (1), n3 (1)"), "{refused:?}");

    // Forged tunnels: from a LAN host (the underlay router) with a genuine inner packet, from a
    // genuine node with another node's container as inner source, and with an unknown VNI.
    let vni = vni_of(&c, "ov")?;
    let (spoofed, unknown) = (bpfnet_lab::checks::counter(&c.nodes[0], "drop_overlay_spoofed"), bpfnet_lab::checks::counter(&c.nodes[0], "drop_overlay_unknown_vni"));
    send_vxlan(c.underlay(), "10.250.0.1", vni, &addr["a2"].2, &addr["a1"].2)?;
    send_vxlan(&c.nodes[1].host(), "10.250.0.1", vni, &addr["a3"].2, &addr["a1"].2)?;
    send_vxlan(&c.nodes[1].host(), "10.250.0.1", 999, &addr["a2"].2, &addr["a1"].2)?;
    within(Duration::from_secs(2), || {
        Ok(bpfnet_lab::checks::counter(&c.nodes[0], "drop_overlay_spoofed") >= spoofed + 10
            && bpfnet_lab::checks::counter(&c.nodes[0], "drop_overlay_unknown_vni") >= unknown + 5)
    })
    .context("forged VXLAN datagrams were not all dropped and counted")?;
    // From a container of n1 (of a local network, and of the overlay network itself): VXLAN to
    // n2, masqueraded, would leave from n1's underlay address, which n2 trusts as n1's tunnel,
    // with a1 (an endpoint on n1) as the inner source. Never sent.
    c.nodes[0].bpfnet_ok(&["network", "create", "loc", "--subnet", "10.0.77.0/24"])?;
    let x1 = c.nodes[0].add_netns("x1")?;
    connect(&c, 0, "loc", &x1, &[])?;
    let listener = bpfnet_lab::frames::UdpRecorder::start(&addr["a2"].1, "0.0.0.0:7777".parse()?)?;
    let inner = bpfnet_lab::frames::Ip::new(addr["a1"].2.parse()?, addr["a2"].2.parse()?, 17).udp(5555, 7777, b"forged-tunnel");
    let forged = bpfnet_lab::checks::counter(&c.nodes[0], "drop_forged_tunnel");
    for sender in [&x1, &addr["a1"].1] {
        send_vxlan_of(sender, "10.250.0.2", vni, 0x0800, &inner)?;
    }
    ensure!(!listener.wait_for(b"forged-tunnel", Duration::from_secs(1)), "a container's VXLAN reached a2 as n1's tunnel");
    within(Duration::from_secs(2), || Ok(bpfnet_lab::checks::counter(&c.nodes[0], "drop_forged_tunnel") >= forged + 10))
        .context("containers' VXLAN to another node was not all dropped and counted")?;
    // The listener hears: a1's own datagram to a2 arrives.
    let to_a2 = format!("{}:7777", addr["a2"].2);
    bpfnet_lab::netns::within(&addr["a1"].1, move || Ok(std::net::UdpSocket::bind("0.0.0.0:0")?.send_to(b"forged-tunnel", to_a2)?))?;
    ensure!(listener.wait_for(b"forged-tunnel", Duration::from_secs(2)), "a1's own datagram did not reach a2");

    // Names across nodes: n1's resolver knows n2's container by its alias, and its address.
    let a1 = addr["a1"].1.clone();
    let dig = c.nodes[0].exec(&a1, &["dig", "+short", "+time=1", "+tries=1", "@10.0.9.99", "web2"])?.stdout;
    ensure!(dig.trim() == addr["a2"].2, "web2 from n1: {dig:?}");
    let reverse = c.nodes[0].exec(&a1, &["dig", "+short", "+time=1", "+tries=1", "@10.0.9.99", "-x", &addr["a2"].2])?.stdout;
    ensure!(reverse.trim().ends_with("-a2."), "reverse of a2 from n1: {reverse:?}");

    // Between nodes the sender's address is kept; to the outside it leaves masqueraded by its
    // own node's uplink; a port it publishes answers on its node, with the client's address.
    use bpfnet_lab::traffic::{tcp_connect, tcp_echo_server, tcp_round_trip, tcp_whoami, tcp_whoami_server};
    let t = Duration::from_secs(3);
    let a2: std::net::IpAddr = addr["a2"].2.parse()?;
    tcp_whoami_server(&addr["a2"].1, "0.0.0.0:80".parse()?)?;
    tcp_echo_server(&addr["a2"].1, "0.0.0.0:7000".parse()?)?;
    let seen = tcp_whoami(&a1, std::net::SocketAddr::new(a2, 80), t)?;
    ensure!(seen.ip().to_string() == addr["a1"].2, "a2 saw a1 as {seen}");
    tcp_whoami_server(c.underlay(), "10.250.0.254:9000".parse()?)?;
    let seen = tcp_whoami(&a1, "10.250.0.254:9000".parse()?, t)?;
    ensure!(seen.ip().to_string() == "10.250.0.1", "the outside saw a1 as {seen}, not n1's uplink");
    let seen = tcp_whoami(c.underlay(), "10.250.0.2:8080".parse()?, t)?;
    ensure!(seen.ip().to_string() == "10.250.0.254", "a2 saw the outside client as {seen}");

    // A connection between nodes lives through kill -9 and a restart of either daemon, and
    // through a full etcd outage (forwarding goes on with the last known state; cluster changes
    // are refused, local ones are not).
    let mut flow = tcp_connect(&a1, std::net::SocketAddr::new(a2, 7000), t)?;
    ensure!(tcp_round_trip(&mut flow, b"before")? == b"before");
    c.nodes[0].stop_daemon(libc::SIGKILL)?;
    ensure!(tcp_round_trip(&mut flow, b"n1 down")? == b"n1 down", "the flow broke with n1's daemon");
    c.start_daemon(0, "4s", &[])?;
    ensure!(tcp_round_trip(&mut flow, b"n1 back")? == b"n1 back", "the flow broke when n1's daemon started again");
    for i in 0..3 {
        c.stop_etcd(i, true);
    }
    std::thread::sleep(Duration::from_secs(2));
    ensure!(tcp_round_trip(&mut flow, b"no etcd")? == b"no etcd", "the flow broke without etcd");
    ensure!(c.nodes[0].ping(&a1, &addr["a2"].2)?, "no new traffic between nodes without etcd");
    let refused = c.bpfnet(0, &["network", "create", "ov9", "-d", "overlay", "--subnet", "10.0.19.0/24"])?;
    ensure!(!refused.ok && refused.stderr.contains("out of reach"), "{refused:?}");
    c.nodes[0].bpfnet_ok(&["network", "create", "local9", "--subnet", "10.0.29.0/24"])?;
    for i in 0..3 {
        c.start_etcd(i)?;
    }
    c.wait_etcd_healthy(Duration::from_secs(30))?;
    ensure!(tcp_round_trip(&mut flow, b"etcd back")? == b"etcd back");
    within(Duration::from_secs(15), || Ok(c.nodes[0].bpfnet(&["network", "create", "ov9", "-d", "overlay", "--subnet", "10.0.19.0/24"])?.ok))
        .context("cluster changes still refused after etcd came back")?;

    // A node that dies whole (daemon, etcd member and namespace gone) leaves every other node
    // within the lease's TTL (4 s) + 2 s: its three containers gone from n1's datapath and names.
    let remote = |c: &Cluster| -> Result<u64> {
        let stats: serde_json::Value = serde_json::from_str(&c.nodes[0].bpfnet_ok(&["stats", "--json"])?)?;
        stats["remote_endpoints"].as_u64().context("remote_endpoints")
    };
    let before = remote(&c)?;
    // The etcd outage above elected a leader anew, maybe n3's member: moved away, then one lease
    // renewal waited for, so that n3's lease counts from its own last renewal, not the move.
    if c.move_leader_away_from(2)? {
        std::thread::sleep(Duration::from_secs(2));
    }
    c.kill_node(2)?;
    let killed = Instant::now();
    let (mut gone_at, mut down_at) = (None, None);
    let took = within(Duration::from_secs(6), || {
        if gone_at.is_none() && remote(&c)? == before - 3 {
            gone_at = Some(killed.elapsed());
        }
        if down_at.is_none() && state_of(&c, 0, "n3")?.as_deref() == Some("down") {
            down_at = Some(killed.elapsed());
        }
        Ok(gone_at.is_some() && down_at.is_some())
    })
    .with_context(|| format!("n3's containers still on n1 after its lease expired (gone {gone_at:?}, down {down_at:?})"))?;
    eprintln!("n3's endpoints gone from n1 after {gone_at:?}, n3 down after {down_at:?}");
    eprintln!("a dead node's endpoints left n1's datapath after {took:?} (lease TTL 4 s)");
    ensure!(!c.nodes[0].ping(&addr["a1"].1, &addr["a3"].2)?, "n3's container still reachable");
    ensure!(c.nodes[0].ping(&addr["a1"].1, &addr["a2"].2)?, "n2's container lost with n3");
    Ok(())
}

/// As [`send_vxlan`], with an inner IPv6 echo request from `src` to `dst`.
fn send_vxlan6(from: &str, to: &str, vni: u32, src: &str, dst: &str) -> Result<()> {
    let (src, dst): (std::net::Ipv6Addr, std::net::Ipv6Addr) = (src.parse()?, dst.parse()?);
    let echo = [128u8, 0, 0, 0, 0, 1, 0, 1, 0xbe, 0xef];
    let mut inner = vec![0x60, 0, 0, 0, 0, echo.len() as u8, 58, 64];
    inner.extend_from_slice(&src.octets());
    inner.extend_from_slice(&dst.octets());
    inner.extend_from_slice(&echo);
    send_vxlan_of(from, to, vni, 0x86dd, &inner)
}

#[test]
fn dual_stack_overlay_networks_carry_ipv6_between_nodes() -> Result<()> {
    let mut c = Cluster::new("cl-ov6", 2)?;
    // IPv6 on the underlay's link too, for a client outside reaching the routing mesh over IPv6.
    run_ok_in(c.underlay(), &["ip", "addr", "add", "fd00:250::fe/64", "dev", "br0", "nodad"])?;
    for i in 0..2 {
        run_ok_in(&c.nodes[i].host(), &["ip", "addr", "add", &format!("fd00:250::{}/64", i + 1), "dev", "up0", "nodad"])?;
    }
    c.start_etcd_cluster()?;
    // n1 does VXLAN in the datapath, n2 through its VXLAN device: both ways over IPv6 too.
    c.start_daemon(0, "4s", &[])?;
    c.start_daemon(1, "4s", &["--overlay-encap", "device"])?;
    // An overlay network's IPv6 addresses pair with its IPv4 ones: its IPv6 subnet must be as
    // large, its IPv6 gateway the pair of its IPv4 gateway.
    let refusals: [(&[&str], &str); 2] = [
        (&["network", "create", "small", "-d", "overlay", "--subnet", "10.31.0.0/16", "--subnet", "fd00:31::/120"], "smaller than"),
        (&["network", "create", "gw", "-d", "overlay", "--subnet", "10.0.32.0/24", "--subnet", "fd00:32::/64", "--gateway", "fd00:32::99"], "pair"),
    ];
    for (args, why) in refusals {
        let ran = c.bpfnet(0, args)?;
        ensure!(!ran.ok && ran.stderr.contains(why), "{args:?}: {ran:?}");
    }
    c.nodes[0].bpfnet_ok(&["network", "create", "dual", "-d", "overlay", "--subnet", "10.0.30.0/24", "--subnet", "fd00:30::/64"])?;
    within(Duration::from_secs(5), || {
        let out = c.nodes[1].bpfnet_ok(&["network", "inspect", "dual"]);
        Ok(out.is_ok_and(|o| o.contains("fd00:30::/64") && o.contains("\"EnableIPv6\": true")))
    })
    .context("n2 did not make the dual-stack overlay network")?;

    let a1 = c.nodes[0].add_netns("a1")?;
    let a2 = c.nodes[1].add_netns("a2")?;
    let x2 = c.nodes[1].add_netns("x2")?;
    let y1 = c.nodes[0].add_netns("y1")?;
    let y2 = c.nodes[1].add_netns("y2")?;
    let connect6 = |i: usize, ns: &str, extra: &[&str]| -> Result<(String, String)> {
        let mut args = vec!["network", "connect", "dual", ns, "--json"];
        args.extend_from_slice(extra);
        let out: serde_json::Value = serde_json::from_str(&c.nodes[i].bpfnet_ok(&args)?)?;
        let bare = |key: &str| out[key].as_str().unwrap_or_default().split('/').next().unwrap_or_default().to_string();
        Ok((bare("ipv4_address"), bare("ipv6_address")))
    };
    ensure!(connect6(0, &a1, &[])? == ("10.0.30.2".into(), "fd00:30::2".into()));
    ensure!(connect6(1, &a2, &["--alias", "web2"])? == ("10.0.30.3".into(), "fd00:30::3".into()), "the pair of the address n2 claimed");
    // --ip6 names the IPv4 address too; a pair that is not one, or no pair, is refused (before
    // anything is claimed).
    let refused = c.bpfnet(1, &["network", "connect", "dual", &x2, "--ip", "10.0.30.50", "--ip6", "fd00:30::77"])?;
    ensure!(!refused.ok && refused.stderr.contains("fd00:30::77 goes with 10.0.30.119"), "{refused:?}");
    let refused = c.bpfnet(1, &["network", "connect", "dual", &x2, "--ip6", "fd00:30::1:0"])?;
    ensure!(!refused.ok && refused.stderr.contains("has none"), "{refused:?}");
    ensure!(connect6(1, &x2, &["--ip6", "fd00:30::77"])? == ("10.0.30.119".into(), "fd00:30::77".into()), "--ip6 alone");

    // IPv6 across the nodes, both ways: ping, and a bulk transfer at the overlay's MTU.
    let ping6 = |i: usize, ns: &str, ip: &str| -> Result<bool> { Ok(c.nodes[i].exec(ns, &["ping", "-6", "-c", "1", "-W", "1", "-q", ip])?.ok) };
    within(Duration::from_secs(5), || ping6(0, &a1, "fd00:30::3")).context("a1 -> a2 over IPv6")?;
    ensure!(ping6(1, &a2, "fd00:30::2")?, "a2 -> a1 over IPv6");
    use bpfnet_lab::traffic::{payload, tcp_echo_server, tcp_exchange, tcp_whoami, tcp_whoami_server};
    let t = Duration::from_secs(5);
    tcp_echo_server(&a2, "[fd00:30::3]:7000".parse()?)?;
    let data = payload(6, 300_000);
    ensure!(tcp_exchange(&a1, "[fd00:30::3]:7000".parse()?, &data, t)? == data, "a bulk transfer over IPv6 between nodes");
    tcp_whoami_server(&a2, "[fd00:30::3]:80".parse()?)?;
    let seen = tcp_whoami(&a1, "[fd00:30::3]:80".parse()?, t)?;
    ensure!(seen.ip().to_string() == "fd00:30::2", "a2 saw a1 as {seen}: the sender's address kept");
    ensure!(bpfnet_lab::checks::counter(&c.nodes[0], "ndp_replied") > 0, "neighbour discovery answered on the node");

    // Names: n1's resolver gives n2's container's IPv6 address.
    // The resolver follows the networks within a moment of their creation.
    let dig = || -> Result<String> { Ok(c.nodes[0].exec(&a1, &["dig", "+short", "+time=1", "+tries=1", "@10.0.30.1", "web2", "AAAA"])?.stdout) };
    within(Duration::from_secs(10), || Ok(dig()?.trim() == "fd00:30::3")).context("web2 AAAA from n1")?;

    // A service of the cluster over IPv6: its VIP6 pairs with its VIP (--vip6 names the VIP to
    // claim), its backends' IPv6 addresses with theirs; a container on either node reaches
    // both backends, one on its node, one on the other (through the datapath's VXLAN from n1,
    // the device's from n2), and sees the answers come from the VIP6.
    for ns in [&a1, &a2] {
        bpfnet_lab::traffic::tcp_name_server(ns, "[::]:8080".parse()?, ns)?;
    }
    c.nodes[0].bpfnet_ok(&["service", "create", "api", "--network", "dual", "--port", "8080", "--vip6", "fd00:30::80", "--backend", &a1, "--backend", "web2"])?;
    let listed: serde_json::Value = serde_json::from_str(&c.nodes[0].bpfnet_ok(&["service", "ls", "--json"])?)?;
    ensure!(listed[0]["vip"] == "10.0.30.128:8080/tcp" && listed[0]["vip6"] == "[fd00:30::80]:8080/tcp", "{listed}");
    within(Duration::from_secs(5), || Ok(c.nodes[1].bpfnet_ok(&["service", "ls"])?.contains("[fd00:30::80]:8080/tcp"))).context("n2 made the service with its VIP6")?;
    connect6(0, &y1, &[])?;
    connect6(1, &y2, &[])?;
    for (i, ns) in [(0, &y1), (1, &y2)] {
        let seen = bpfnet_lab::traffic::spread(ns, "[fd00:30::80]:8080".parse()?, 100, t)?;
        ensure!(seen.len() == 2 && seen.values().all(|n| *n > 10), "n{} through the VIP6: {seen:?}", i + 1);
    }
    let aaaa = c.nodes[0].exec(&y1, &["dig", "+short", "+time=1", "+tries=3", "@10.0.30.1", "api", "AAAA"])?.stdout;
    ensure!(aaaa.trim() == "fd00:30::80", "api AAAA: {aaaa}");

    // The routing mesh over IPv6: a client outside reaches a published cluster service on
    // every node's IPv6 address; n1 (VXLAN in its datapath) balances to the backend on n2 (VXLAN
    // by its device) through the tunnel, n2 to its own; the backend sees the client's address.
    c.nodes[0].bpfnet_ok(&["service", "create", "pub", "--network", "dual", "--port", "8080", "--publish", "9090", "--backend", "web2"])?;
    within(Duration::from_secs(5), || Ok(c.nodes[1].bpfnet_ok(&["service", "ls"])?.contains("pub"))).context("n2 made the published service")?;
    for node in ["fd00:250::1", "fd00:250::2"] {
        let to: std::net::SocketAddr = format!("[{node}]:9090").parse()?;
        let (name, seen_as) = within_answer(|| bpfnet_lab::traffic::NameClient::connect(c.underlay(), to, t)?.ask())
            .with_context(|| format!("no answer through {to}\nn1: {}\nn2: {}", c.nodes[0].bpfnet(&["stats"]).map(|o| o.stdout).unwrap_or_default(), c.nodes[1].bpfnet(&["stats"]).map(|o| o.stdout).unwrap_or_default()))?;
        ensure!(name == a2 && seen_as == "fd00:250::fe", "through {to}: {name} saw the client as {seen_as}");
    }
    ensure!(bpfnet_lab::checks::counter(&c.nodes[0], "mesh_out") > 0, "n1 sent the answers out");
    ensure!(bpfnet_lab::checks::counter(&c.nodes[1], "mesh_in") > 0, "n2 took the connection from n1");

    // Forged tunnels with inner IPv6: from a LAN host with a genuine inner source, from a
    // genuine node with the receiving node's own container as inner source.
    let vni = vni_of(&c, "dual")?;
    let spoofed = bpfnet_lab::checks::counter(&c.nodes[0], "drop_overlay_spoofed");
    send_vxlan6(c.underlay(), "10.250.0.1", vni, "fd00:30::3", "fd00:30::2")?;
    send_vxlan6(&c.nodes[1].host(), "10.250.0.1", vni, "fd00:30::2", "fd00:30::2")?;
    within(Duration::from_secs(2), || Ok(bpfnet_lab::checks::counter(&c.nodes[0], "drop_overlay_spoofed") >= spoofed + 10))
        .context("forged IPv6 VXLAN datagrams were not all dropped and counted")?;
    Ok(())
}

#[test]
fn nodes_allocating_at_the_same_moment_never_share_an_address() -> Result<()> {
    let mut c = Cluster::new("cl-ipam", 3)?;
    c.start_etcd_cluster()?;
    for i in 0..3 {
        c.start_daemon(i, "10s", &[])?;
    }
    c.nodes[0].bpfnet_ok(&["network", "create", "wide", "-d", "overlay", "--subnet", "10.0.32.0/22"])?;
    within(Duration::from_secs(5), || Ok((0..3).all(|i| c.nodes[i].bpfnet_ok(&["network", "inspect", "wide"]).is_ok())))?;
    // 1,000 addresses, a third asked for on each node at the same time (allocations only: the
    // claims are what is tested, not veth pairs).
    let per_node = 334;
    let sockets: Vec<std::path::PathBuf> = c.nodes.iter().map(|n| n.socket()).collect();
    let started = Instant::now();
    let workers: Vec<_> = sockets
        .into_iter()
        .enumerate()
        .map(|(i, socket)| {
            std::thread::spawn(move || -> Result<usize> {
                for k in 0..per_node {
                    let out = std::process::Command::new(bpfnet_lab::sandbox::bpfnet_bin())
                        .arg("--socket")
                        .arg(&socket)
                        .args(["endpoint", "create", "wide", &format!("n{}-e{k}", i + 1)])
                        .output()?;
                    ensure!(out.status.success(), "n{}: {}", i + 1, String::from_utf8_lossy(&out.stderr));
                }
                Ok(per_node)
            })
        })
        .collect();
    let mut made = 0;
    for w in workers {
        made += w.join().map_err(|_| anyhow::anyhow!("a worker panicked"))??;
    }
    eprintln!("{made} addresses claimed by 3 nodes at once in {:?}", started.elapsed());
    let mut seen = std::collections::BTreeMap::new();
    for i in 0..3 {
        let list: serde_json::Value = serde_json::from_str(&c.nodes[i].bpfnet_ok(&["endpoint", "ls", "--json"])?)?;
        for e in list.as_array().context("endpoints")? {
            let address = e["address"].as_str().or(e["ipv4_address"].as_str()).context("no address")?.split('/').next().unwrap().to_string();
            if let Some(other) = seen.insert(address.clone(), i) {
                bail!("{address} handed out on n{} and on n{}", other + 1, i + 1);
            }
        }
    }
    ensure!(seen.len() == made, "{} distinct addresses for {made} endpoints", seen.len());
    let claims = |c: &Cluster| -> Result<usize> {
        let keys = c.etcdctl(&["get", "--prefix", "/bpfnet/v1/endpoints/", "--keys-only"])?.stdout;
        Ok(keys.lines().filter(|l| !l.is_empty()).count())
    };
    ensure!(claims(&c)? == made, "etcd holds {} claims for {made} endpoints", claims(&c)?);

    // A connect that dies half-way (its address claimed, the veth made, nothing committed): the
    // restarted daemon removes what it made and gives the claim back — nothing stale in etcd.
    c.nodes[0].stop_daemon(libc::SIGTERM)?;
    c.start_daemon_with_env(0, "10s", &[], &[("BPFNET_TEST_CRASH_AFTER", "configured")])?;
    let victim = c.nodes[0].add_netns("victim")?;
    let crashed = c.bpfnet(0, &["network", "connect", "wide", &victim])?;
    ensure!(!crashed.ok, "the connect was to crash the daemon");
    c.nodes[0].wait_daemon_exit()?;
    ensure!(claims(&c)? == made + 1, "the interrupted connect's claim is not in etcd: {}", claims(&c)?);
    c.start_daemon(0, "10s", &[])?;
    within(Duration::from_secs(10), || Ok(claims(&c)? == made)).context("the interrupted connect's claim stayed in etcd")?;
    let addresses = c.nodes[0].exec(&victim, &["ip", "-br", "-4", "addr"])?.stdout;
    ensure!(!addresses.contains("10.0."), "the interrupted connect left an interface: {addresses}");
    Ok(())
}

#[test]
fn a_partitioned_node_rejoins_cleanly_even_after_etcd_compacted_its_watch() -> Result<()> {
    let mut c = Cluster::new("cl-partition", 3)?;
    c.start_etcd_cluster()?;
    c.start_daemon(0, "3s", &[])?;
    // n2 reaches etcd through the other nodes' members only, so the member it asks when it comes
    // back has certainly compacted. Its own member may still be catching up on the leader's log
    // then, and serve the events the compaction removed elsewhere: correct, but then there is no
    // compaction to notice and the re-list path this test is about does not run.
    let mut args = c.daemon_args(1, "3s");
    let own = format!("http://{}:2379", bpfnet_lab::cluster::underlay_ip(2));
    args[1] = c.etcd_urls.split(',').filter(|url| *url != own).collect::<Vec<_>>().join(",");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    c.nodes[1].start_daemon_with(&DaemonOptions { args: &args, ..Default::default() })?;
    c.start_daemon(2, "3s", &[])?;
    c.nodes[0].bpfnet_ok(&["network", "create", "ov", "-d", "overlay", "--subnet", "10.0.40.0/24"])?;
    let x1 = c.nodes[0].add_netns("x1")?;
    let x2 = c.nodes[1].add_netns("x2")?;
    within(Duration::from_secs(5), || Ok(c.nodes[1].bpfnet_ok(&["network", "inspect", "ov"]).is_ok()))?;
    let y2 = c.nodes[1].add_netns("y2")?;
    connect(&c, 0, "ov", &x1, &[])?;
    let x2_addr = connect(&c, 1, "ov", &x2, &[])?;
    connect(&c, 1, "ov", &y2, &[])?;
    within(Duration::from_secs(5), || Ok(c.nodes[0].ping(&x1, &x2_addr)?))?;

    // n2 is cut off from the underlay (and its etcd member from the others) for longer than its
    // lease: the others see it down and its container gone.
    run_ok_in(c.underlay(), &["ip", "link", "set", "n2", "down"])?;
    // (A request may meet n2's cut-off member and answer late or not at all: asked again.)
    within(Duration::from_secs(10), || Ok(state_of(&c, 0, "n2").ok().flatten().as_deref() == Some("down")))?;
    // Meanwhile the cluster changes, and etcd compacts its history past what n2 has seen.
    c.nodes[0].bpfnet_ok(&["network", "create", "later", "-d", "overlay", "--subnet", "10.0.41.0/24"])?;
    let status: serde_json::Value = serde_json::from_str(&c.etcdctl(&["get", "/", "--write-out=json"])?.stdout)?;
    let revision = status["header"]["revision"].as_u64().context("revision")?;
    let compacted = c.etcdctl(&["compact", &revision.to_string(), "--physical"])?;
    ensure!(compacted.ok, "{compacted:?}");
    ensure!(!c.nodes[0].ping(&x1, &x2_addr)?, "n2's container still reachable while n2 is cut off");
    // Cut off, n2 still serves its own changes at once (its claim to give back waits for etcd,
    // not its API): a disconnect, then a local network.
    let started = Instant::now();
    c.nodes[1].bpfnet_ok(&["network", "disconnect", "ov", &y2])?;
    std::thread::sleep(Duration::from_secs(3)); // a collector round or two, which must not hold the daemon
    let local = Instant::now();
    c.nodes[1].bpfnet_ok(&["network", "create", "cutoff", "--subnet", "10.0.42.0/24"])?;
    ensure!(local.elapsed() < Duration::from_secs(1), "a local change on a cut-off node took {:?}", local.elapsed());
    ensure!(started.elapsed() < Duration::from_secs(6), "changes on a cut-off node took {:?}", started.elapsed());
    // The partition lasts until n2's watch has noticed it (the connection's keepalive, 5 s + 2 s):
    // a watch stream that outlives a short cut resumes where it was, with no compaction to meet.
    within(Duration::from_secs(15), || Ok(std::fs::read_to_string(c.nodes[1].daemon_log())?.contains("the cluster watch ended")))
        .context("n2's watch did not end while n2 was cut off")?;

    // Back: n2 registers again, claims its address again, reads the whole cluster again.
    run_ok_in(c.underlay(), &["ip", "link", "set", "n2", "up"])?;
    let took = within(Duration::from_secs(20), || {
        Ok(state_of(&c, 0, "n2").ok().flatten().as_deref() == Some("up")
            && c.nodes[1].bpfnet_ok(&["network", "inspect", "later"]).is_ok()
            && c.nodes[0].ping(&x1, &x2_addr)?)
    })
    .context("n2 did not rejoin whole")?;
    eprintln!("a partitioned node was whole again {took:?} after the partition healed");
    let log = std::fs::read_to_string(c.nodes[1].daemon_log())?;
    ensure!(log.contains("compacted past revision"), "n2 did not notice the compaction: {log}");
    let nodes = nodes(&c, 2)?;
    let n2 = nodes["nodes"].as_array().context("nodes")?.iter().find(|n| n["name"] == "n2").context("n2")?.clone();
    ensure!(n2["endpoints"] == 1, "n2's claims after rejoining: {n2}");
    Ok(())
}

/// The service `name` as node `i` lists it (`None`: not listed).
fn service_on(c: &Cluster, i: usize, name: &str) -> Result<Option<serde_json::Value>> {
    let list: serde_json::Value = serde_json::from_str(&c.nodes[i].bpfnet_ok(&["service", "ls", "--json"])?)?;
    Ok(list.as_array().context("services")?.iter().find(|s| s["name"] == name).cloned())
}

/// Which replica answers a datagram from `ns`, port `from_port`, to `to` (a UDP name server).
fn udp_replica(ns: &str, from_port: u16, to: std::net::SocketAddr) -> Result<String> {
    bpfnet_lab::netns::within(ns, move || {
        let socket = std::net::UdpSocket::bind(("0.0.0.0", from_port))?;
        socket.set_read_timeout(Some(Duration::from_secs(2)))?;
        socket.send_to(b"?", to)?;
        let mut buf = [0u8; 256];
        let (n, _) = socket.recv_from(&mut buf).with_context(|| format!("no answer from {to} to port {from_port}"))?;
        let text = String::from_utf8_lossy(&buf[..n]).to_string();
        Ok(text.split(' ').next().unwrap_or_default().to_string())
    })
}

#[test]
fn the_routing_mesh_answers_on_every_node_with_the_clients_address() -> Result<()> {
    use bpfnet_lab::traffic::{spread, tcp_name_server, udp_name_server, NameClient};
    let mut c = Cluster::new("cl-mesh", 3)?;
    c.start_etcd_cluster()?;
    // n3 dies at the end: its member must not lead then (see the overlay test).
    c.move_leader_away_from(2)?;
    // n3 leaves VXLAN to its device: nodes of both kinds talk to each other.
    for i in 0..3 {
        c.start_daemon(i, "4s", if i == 2 { &["--overlay-encap", "device"] } else { &[] })?;
    }
    c.nodes[0].bpfnet_ok(&["network", "create", "ov", "-d", "overlay", "--subnet", "10.0.9.0/24"])?;
    within(Duration::from_secs(5), || Ok((1..3).all(|i| c.nodes[i].bpfnet_ok(&["network", "inspect", "ov"]).is_ok())))?;
    // Replicas: one on n1, one on n2, two on n3 (TCP and UDP name servers on port 80); a client
    // container on n2.
    let mut replicas = std::collections::BTreeMap::new();
    for (i, name) in [(0, "w1"), (1, "w2"), (2, "w3"), (2, "w4")] {
        let ns = c.nodes[i].add_netns(name)?;
        let address = connect(&c, i, "ov", &ns, &[])?;
        tcp_name_server(&ns, "0.0.0.0:80".parse()?, name)?;
        udp_name_server(&ns, "0.0.0.0:80".parse()?, name)?;
        replicas.insert(name, (i, ns, address));
    }
    let client = c.nodes[1].add_netns("cli")?;
    let client_addr = connect(&c, 1, "ov", &client, &[])?;

    // Created on n1, its replicas named across nodes: a namespace here, another node's
    // container by name, one by address.
    let (w2_name, w3_addr) = (replicas["w2"].1.clone(), replicas["w3"].2.clone());
    let refused = c.bpfnet(0, &["service", "create", "web", "--network", "ov", "--port", "80", "--publish", "10.250.0.1:8080"])?;
    ensure!(!refused.ok && refused.stderr.contains("every address of every node"), "{refused:?}");
    let refused = c.bpfnet(0, &["service", "create", "web", "--network", "ov", "--port", "80", "--backend", "nobody"])?;
    ensure!(!refused.ok && refused.stderr.contains("no endpoint of it on any node"), "{refused:?}");
    let created = c.nodes[0].bpfnet_ok(&[
        "service", "create", "web", "--network", "ov", "--port", "80", "--publish", "8080", "--backend", &replicas["w1"].1,
        "--backend", &w2_name, "--backend", &w3_addr, "--backend", &format!("{}:80", replicas["w4"].2),
    ])?;
    ensure!(created.contains("n3"), "inspect does not name the backends' nodes: {created}");
    // A UDP one created on n3: w1 by its container's name (another node's), w3 by namespace.
    c.nodes[2].bpfnet_ok(&[
        "service", "create", "dns", "--network", "ov", "--port", "80/udp", "--publish", "5353", "--backend", &replicas["w1"].1,
        "--backend", &replicas["w3"].1,
    ])?;
    // Defined once: the name is the cluster's.
    let clash = c.bpfnet(1, &["service", "create", "web", "--network", "ov", "--port", "81"])?;
    ensure!(!clash.ok && clash.stderr.contains("exists already"), "{clash:?}");
    // Every node has it, scope cluster, four backends.
    within(Duration::from_secs(5), || {
        Ok((0..3).all(|i| {
            service_on(&c, i, "web").ok().flatten().is_some_and(|s| s["scope"] == "cluster" && s["backends"] == 4)
        }))
    })
    .context("the cluster service did not reach every node with its four backends")?;

    // From outside, on every node's address: spread over every replica, wherever it lives, and
    // each replica sees the client's own address.
    let t = Duration::from_secs(3);
    for i in 1..=3 {
        let to: std::net::SocketAddr = format!("10.250.0.{i}:8080").parse()?;
        let seen = spread(c.underlay(), to, 80, t).with_context(|| format!("through n{i}"))?;
        ensure!(seen.len() == 4 && seen.values().all(|n| *n >= 5), "through n{i}: {seen:?}");
        for _ in 0..8 {
            let (replica, client_seen) = NameClient::connect(c.underlay(), to, t)?.ask()?;
            ensure!(client_seen == "10.250.0.254", "{replica} saw the client through n{i} as {client_seen}");
        }
    }
    ensure!(bpfnet_lab::checks::counter(&c.nodes[2], "mesh_in") > 0 && bpfnet_lab::checks::counter(&c.nodes[0], "mesh_out") > 0);

    // A stranger on the LAN (the underlay's router, no node) wraps a SYN to a backend port as the
    // routing mesh does: were it taken, the backend's answer would come back to the stranger in
    // VXLAN (the answers go to whoever handed the connection over). Neither on a node doing VXLAN
    // in its datapath (n1) nor on one leaving it to its device (n3).
    let listener = bpfnet_lab::frames::UdpRecorder::start(c.underlay(), "10.250.0.254:4789".parse()?)?;
    let vni = vni_of(&c, "ov")?;
    for (i, replica, sport) in [(0, "w1", 45_001u16), (2, "w3", 45_003)] {
        let before = bpfnet_lab::checks::counter(&c.nodes[i], "drop_overlay_stranger");
        let syn = bpfnet_lab::frames::Ip::new("10.250.0.254".parse()?, replicas[replica].2.parse()?, 6).tcp_syn(sport, 80);
        send_vxlan_of(c.underlay(), &format!("10.250.0.{}", i + 1), vni, 0x0800, &syn)?;
        // The backend's SYN-ACK would carry these ports: from 80 to the stranger's.
        let answer = [&80u16.to_be_bytes()[..], &sport.to_be_bytes()].concat();
        ensure!(!listener.wait_for(&answer, Duration::from_secs(1)), "n{}'s backend {replica} answered the stranger through the tunnel", i + 1);
        within(Duration::from_secs(2), || Ok(bpfnet_lab::checks::counter(&c.nodes[i], "drop_overlay_stranger") >= before + 5))
            .with_context(|| format!("n{}: a stranger's routing-mesh datagrams were not all dropped and counted", i + 1))?;
    }

    // Every node has the same table: a flow keeps its replica whichever node it lands on. An
    // address of all three nodes, routed to one and then another (as a load balancer in front
    // would), datagrams from the same ports.
    for i in 0..3 {
        run_ok_in(&c.nodes[i].host(), &["ip", "addr", "add", "10.250.0.100/32", "dev", "up0"])?;
    }
    let anycast: std::net::SocketAddr = "10.250.0.100:5353".parse()?;
    // The daemons follow their namespace's addresses every 2 s: the new one answers within that.
    run_ok_in(c.underlay(), &["ip", "route", "replace", "10.250.0.100/32", "via", "10.250.0.3"])?;
    within(Duration::from_secs(5), || Ok(udp_replica(c.underlay(), 39_999, anycast).is_ok()))?;
    let mut first = Vec::new();
    for (round, via) in ["10.250.0.1", "10.250.0.2", "10.250.0.3"].iter().enumerate() {
        run_ok_in(c.underlay(), &["ip", "route", "replace", "10.250.0.100/32", "via", via])?;
        for k in 0..12u16 {
            let replica = udp_replica(c.underlay(), 40_000 + k, anycast).with_context(|| format!("via {via}"))?;
            if round == 0 {
                first.push(replica);
            } else {
                ensure!(first[k as usize] == replica, "port {}: {} via n1, {replica} via {via}", 40_000 + k, first[k as usize]);
            }
        }
    }
    ensure!(first.iter().collect::<std::collections::BTreeSet<_>>().len() == 2, "12 flows all on one replica: {first:?}");

    // From a container on any node, by the VIP and by name: spread, with its own address seen.
    let inspect: serde_json::Value = serde_json::from_str(&c.nodes[1].bpfnet_ok(&["service", "inspect", "web"])?)?;
    let vip = inspect[0]["Endpoint"]["VirtualIPs"][0]["Addr"].as_str().context("vip")?.split('/').next().unwrap_or_default().to_string();
    let resolved = c.nodes[1].exec(&client, &["dig", "+short", "+time=1", "+tries=1", "@10.0.9.1", "web"])?.stdout;
    ensure!(resolved.trim() == vip, "web resolved on n2 to {resolved:?}, VIP {vip}");
    let to = std::net::SocketAddr::new(vip.parse()?, 80);
    let seen = spread(&client, to, 40, t)?;
    ensure!(seen.len() >= 3, "through the VIP from n2: {seen:?}");
    for _ in 0..6 {
        let (replica, client_seen) = NameClient::connect(&client, to, t)?.ask()?;
        ensure!(client_seen == client_addr, "{replica} saw the container as {client_seen}");
    }

    // A replica removed on one node leaves every node's table.
    c.nodes[1].bpfnet_ok(&["service", "rm-backend", "web", &w3_addr])?;
    within(Duration::from_secs(5), || Ok((0..3).all(|i| service_on(&c, i, "web").ok().flatten().is_some_and(|s| s["backends"] == 3))))?;
    let seen = spread(c.underlay(), "10.250.0.1:8080".parse()?, 40, t)?;
    ensure!(!seen.contains_key("w3") && seen.len() == 3, "after rm-backend: {seen:?}");

    // etcd out of reach altogether: the routing mesh goes on with the last state it read.
    for i in 0..3 {
        c.stop_etcd(i, true);
    }
    let seen = spread(c.underlay(), "10.250.0.2:8080".parse()?, 30, t)?;
    ensure!(seen.len() == 3 && !seen.contains_key("w3"), "without etcd: {seen:?}");
    for i in 0..3 {
        c.start_etcd(i)?;
    }
    c.wait_etcd_healthy(Duration::from_secs(30))?;
    // The outage elected a leader anew: kept off n3's member (see the overlay test), and a lease
    // renewal waited for.
    if c.move_leader_away_from(2)? {
        std::thread::sleep(Duration::from_secs(2));
    }

    // A node that dies takes its replicas out of every table within the lease's TTL + 2 s.
    c.kill_node(2)?;
    let took = within(Duration::from_secs(6), || Ok(service_on(&c, 0, "web")?.is_some_and(|s| s["backends"] == 2)))
        .context("n3's replica still in n1's table")?;
    eprintln!("a dead node's replicas left the routing mesh after {took:?} (lease TTL 4 s)");
    for i in 1..=2 {
        let seen = spread(c.underlay(), format!("10.250.0.{i}:8080").parse()?, 30, t)?;
        ensure!(seen.keys().map(String::as_str).collect::<Vec<_>>() == ["w1", "w2"], "through n{i} after n3 died: {seen:?}");
    }

    // Removed on any node: gone from all, the port closed.
    c.nodes[1].bpfnet_ok(&["service", "rm", "web"])?;
    within(Duration::from_secs(5), || Ok(service_on(&c, 0, "web")?.is_none()))?;
    ensure!(NameClient::connect(c.underlay(), "10.250.0.1:8080".parse()?, Duration::from_secs(1)).is_err(), "port 8080 still answers");
    Ok(())
}

#[test]
fn docker_and_podman_on_two_nodes_put_containers_on_an_overlay_network() -> Result<()> {
    use bpfnet_lab::engines::{docker_installed, podman_installed, Docker, Podman, BUSYBOX_IMAGE};
    ensure!(docker_installed() && podman_installed(), "dockerd or podman is missing: `cargo xtask setup` installs them");
    let mut c = Cluster::new("cl-docker", 2)?;
    c.start_etcd_cluster()?;
    let mut dockers = Vec::new();
    for i in 0..2 {
        let plugin = Docker::plugin_arg(&c.nodes[i]);
        c.start_daemon(i, "4s", &[&plugin])?;
        let docker = Docker::start(&c.nodes[i])?;
        docker.import_busybox()?;
        dockers.push(docker);
    }
    c.nodes[0].bpfnet_ok(&["network", "create", "ov", "-d", "overlay", "--subnet", "10.0.9.0/24"])?;
    within(Duration::from_secs(5), || Ok(c.nodes[1].bpfnet_ok(&["network", "inspect", "ov"]).is_ok()))?;

    // Docker's own IPAM knows one node only: refused, saying what to do instead.
    let refused = dockers[0].run(&["network", "create", "-d", "bpfnet", "--subnet", "10.0.9.0/24", "-o", "bpfnet.overlay=ov", "ovd"])?;
    ensure!(!refused.ok && refused.stderr.contains("--ipam-driver bpfnet --subnet 10.0.9.0/24"), "{}", refused.stderr);
    let refused = dockers[0].run(&[
        "network", "create", "-d", "bpfnet", "--ipam-driver", "bpfnet", "--subnet", "10.0.9.0/24", "-o", "bpfnet.overlay=ov", "-o",
        "icc=false", "ovd",
    ])?;
    ensure!(!refused.ok && refused.stderr.contains("has its own options"), "{}", refused.stderr);
    // On each node, a Docker network that stands for the overlay network there.
    for docker in &dockers {
        docker.ok(&["network", "create", "-d", "bpfnet", "--ipam-driver", "bpfnet", "--subnet", "10.0.9.0/24", "-o", "bpfnet.overlay=ov", "ovd"])?;
    }
    let networks: serde_json::Value = serde_json::from_str(&c.nodes[0].bpfnet_ok(&["network", "ls", "--json"])?)?;
    ensure!(networks.as_array().map(Vec::len) == Some(1), "a Docker network of its own was made: {networks}");

    // Two containers per node, started on both nodes at once: four distinct addresses.
    let run = |i: usize, name: &str| -> Result<()> {
        dockers[i].ok(&["run", "-d", "--name", name, "--network", "ovd", BUSYBOX_IMAGE, "sleep", "600"])?;
        Ok(())
    };
    std::thread::scope(|s| -> Result<()> {
        let a = s.spawn(|| run(0, "c1").and_then(|()| run(0, "c3")));
        let b = s.spawn(|| run(1, "c2").and_then(|()| run(1, "c4")));
        a.join().map_err(|_| anyhow::anyhow!("n1's docker run panicked"))??;
        b.join().map_err(|_| anyhow::anyhow!("n2's docker run panicked"))??;
        Ok(())
    })?;
    let address = |i: usize, name: &str| -> Result<String> {
        dockers[i].ok(&["inspect", "-f", "{{.NetworkSettings.Networks.ovd.IPAddress}}", name])
    };
    let addrs = [address(0, "c1")?, address(1, "c2")?, address(0, "c3")?, address(1, "c4")?];
    let distinct: std::collections::BTreeSet<&String> = addrs.iter().collect();
    ensure!(distinct.len() == 4 && addrs.iter().all(|a| a.starts_with("10.0.9.")), "addresses {addrs:?}");

    // Across nodes, both ways; and a container of bpfnet's own CLI reaches Docker's.
    let pings = |i: usize, from: &str, to: &str| -> Result<bool> { Ok(dockers[i].run(&["exec", from, "ping", "-c", "1", "-W", "1", to])?.ok) };
    within(Duration::from_secs(5), || pings(0, "c1", &addrs[1]))?;
    ensure!(pings(1, "c2", &addrs[0])? && pings(1, "c4", &addrs[2])?, "Docker's containers do not reach across nodes");
    let x2 = c.nodes[1].add_netns("x2")?;
    connect(&c, 1, "ov", &x2, &[])?;
    within(Duration::from_secs(5), || Ok(c.nodes[1].ping(&x2, &addrs[0])?))?;
    let claims = |i: usize| -> Result<u64> {
        let list = nodes(&c, 0)?;
        let node = list["nodes"].as_array().context("nodes")?.iter().find(|n| n["name"] == format!("n{}", i + 1)).cloned();
        node.and_then(|n| n["endpoints"].as_u64()).context("endpoints")
    };
    ensure!(claims(0)? == 2 && claims(1)? == 3, "claims n1 {} n2 {}", claims(0)?, claims(1)?);

    // CNI too: Podman on both nodes, its conflist naming the overlay network.
    let mut podmans = Vec::new();
    for i in 0..2 {
        let conflist = serde_json::json!({"cniVersion": "1.0.0", "name": "ov", "plugins": [{
            "type": "bpfnet", "network": "ov", "socket": c.nodes[i].socket().display().to_string()}]});
        let podman = Podman::new(&c.nodes[i], &[("ov", conflist)])?;
        podman.import_busybox()?;
        podman.run_detached(&format!("p{}", i + 1), &["--network", "ov", BUSYBOX_IMAGE, "sleep", "600"])?;
        podmans.push(podman);
    }
    let podman_ip = |i: usize| -> Result<String> {
        podmans[i].ok(&["inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", &format!("p{}", i + 1)])
    };
    let (p1, p2) = (podman_ip(0)?, podman_ip(1)?);
    ensure!(p1 != p2 && !addrs.contains(&p1) && !addrs.contains(&p2), "Podman's addresses {p1} {p2}, Docker's {addrs:?}");
    within(Duration::from_secs(5), || Ok(podmans[0].run(&["exec", "p1", "ping", "-c", "1", "-W", "1", &p2])?.ok))
        .context("Podman's container on n1 does not reach n2's")?;
    ensure!(podmans[1].run(&["exec", "p2", "ping", "-c", "1", "-W", "1", &addrs[0]])?.ok, "Podman on n2 does not reach Docker on n1");
    drop(podmans);

    // A container removed gives its address back to the cluster; the Docker network removed on
    // one node leaves the overlay network alone.
    dockers[0].ok(&["rm", "-f", "c3"])?;
    within(Duration::from_secs(5), || Ok(claims(0)? == 1))?;
    dockers[1].ok(&["rm", "-f", "c2", "c4"])?;
    dockers[1].ok(&["network", "rm", "ovd"])?;
    c.nodes[1].bpfnet_ok(&["network", "inspect", "ov"])?;
    ensure!(c.nodes[1].ping(&x2, &addrs[0])?, "the overlay network broke when a node's Docker network went");
    Ok(())
}

/// The first answer of `ask` within 5 seconds (a service another node just made, its first
/// connection's neighbour resolution).
fn within_answer<T>(mut ask: impl FnMut() -> Result<T>) -> Result<T> {
    let until = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match ask() {
            Ok(answer) => return Ok(answer),
            Err(e) if std::time::Instant::now() > until => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// `ip netns exec NS ARGS` that must succeed.
fn run_ok_in(ns: &str, args: &[&str]) -> Result<()> {
    let mut all = vec!["netns", "exec", ns];
    all.extend_from_slice(args);
    bpfnet_lab::sandbox::run_ok("ip", &all)?;
    Ok(())
}
