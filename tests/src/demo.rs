//! The demo: the reference scenario through the CLI in a private sandbox, a connectivity matrix
//! (expected vs observed, with real TCP and UDP payloads), icc=false, the outside world
//! (masquerade, a published port reached from outside, from the host and from another network),
//! Docker Swarm's service example (three replicas, connections counted per replica), a daemon
//! restart under traffic, failure behaviour (kill -9, a lost state file, a bad argument,
//! a container exiting), the datapath counters, a short side-by-side benchmark, and three hosts
//! (an overlay network across three nodes on etcd, names across nodes, a node that dies). Exits non-zero if anything
//! observed differs from what is expected.
use std::{net::SocketAddr, time::Duration};

use anyhow::{bail, Result};

use crate::{
    bench,
    svcbench,
    sandbox::{Outside, FAR_IP, FAR_IP6, UPLINK_IP, UPLINK_IP6},
    traffic::{
        payload, spread, tcp_connect, tcp_echo_server, tcp_exchange, tcp_name_server, tcp_round_trip, tcp_whoami,
        tcp_whoami_server, udp_echo_server, udp_exchange,
    },
    Sandbox,
};

const WAIT: Duration = Duration::from_millis(800);

fn step(title: &str) {
    println!("\n== {title}");
}

/// Runs the CLI, echoing the command line (with the sandbox's socket left out) and its output.
fn cli(sb: &Sandbox, args: &[&str]) -> Result<String> {
    println!("$ bpfnet {}", args.join(" "));
    let out = sb.bpfnet_ok(args)?;
    print!("{out}");
    Ok(out)
}

fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

/// Prints the matrix of `sources` (name, namespace, networks) to `targets` (name, address,
/// network): expected and observed; what differs goes into `failures`.
fn matrix(targets: &[(&str, &str, &str)], sources: &[(&str, &String, &[&str])], failures: &mut Vec<String>) {
    // Wide enough for "blocked/blocked WRONG" and for the longest heading.
    let width = targets.iter().map(|(name, ip, _)| name.len() + ip.len() + 3).max().unwrap_or(0).max(24);
    print!("{:<8}", "from\\to");
    for (name, ip, _) in targets {
        print!("{:<width$}", format!("{name} {ip}"));
    }
    println!();
    for (src, ns, nets) in sources {
        print!("{src:<8}");
        for (dst, ip, net) in targets {
            if src == dst {
                print!("{:<width$}", "-");
                continue;
            }
            let expected = nets.contains(net);
            let observed = reachable(ns, ip);
            let word = |b: bool| if b { "pass" } else { "blocked" };
            let mark = if expected == observed { "ok" } else { "WRONG" };
            print!("{:<width$}", format!("{}/{} {mark}", word(expected), word(observed)));
            if expected != observed {
                failures.push(format!("{src} -> {dst} {ip}: expected {}, observed {}", word(expected), word(observed)));
            }
        }
        println!();
    }
}

/// Does TCP and UDP traffic with a payload get through and come back intact?
fn reachable(from: &str, ip: &str) -> bool {
    let data = payload(ip.len() as u8, 1400);
    let tcp = tcp_exchange(from, addr(ip, 7000), &data, WAIT).is_ok_and(|back| back == data);
    let udp = udp_exchange(from, addr(ip, 7001), &data, WAIT).is_ok_and(|back| back == data);
    tcp && udp
}

/// Docker's own CLI on bpfnet networks (dockerd in a sandbox of its own, beside a daemon that
/// serves the plugin): two networks, three containers, the matrix by name, a name lookup, `-p`
/// from outside, and how long `docker run` takes against Docker's bridge driver.
fn docker_section() -> Result<Vec<String>> {
    use crate::engines::{Docker, BUSYBOX_IMAGE};
    let mut failures = Vec::new();
    let mut sb = Sandbox::new("demodocker")?;
    let outside = sb.add_outside()?;
    let plugin = Docker::plugin_arg(&sb);
    sb.start_daemon_with(&crate::sandbox::DaemonOptions { args: &[&plugin], ..Default::default() })?;
    let docker = Docker::start(&sb)?;
    docker.import_busybox()?;
    let show = |args: &[&str]| -> Result<String> {
        println!("$ docker {}", args.join(" "));
        let out = docker.ok(args)?;
        if !out.is_empty() && args[0] != "run" && args[1] != "create" {
            println!("{out}");
        }
        Ok(out)
    };
    show(&["network", "create", "-d", "bpfnet", "--subnet", "10.240.1.0/24", "web"])?;
    show(&["network", "create", "-d", "bpfnet", "--subnet", "10.240.2.0/24", "db"])?;
    show(&["run", "-d", "--name", "web1", "--network", "web", "-p", "8080:80", BUSYBOX_IMAGE, "sleep", "600"])?;
    show(&["run", "-d", "--name", "web2", "--network", "web", "--network-alias", "www", BUSYBOX_IMAGE, "sleep", "600"])?;
    show(&["run", "-d", "--name", "db1", "--network", "db", BUSYBOX_IMAGE, "sleep", "600"])?;
    cli(&sb, &["network", "ls"])?;
    cli(&sb, &["endpoint", "ls"])?;
    println!("ping by name (docker exec FROM ping TO), expected / observed:");
    let names = [("web1", "web"), ("web2", "web"), ("db1", "db")];
    for (from, from_net) in names {
        print!("  {from:<5}");
        for (to, to_net) in names.iter().filter(|(to, _)| *to != from) {
            let expected = from_net == *to_net;
            let observed = docker.run(&["exec", from, "ping", "-c", "1", "-W", "1", to])?.ok;
            let word = |b: bool| if b { "pass" } else { "blocked" };
            print!("  -> {to:<5} {}/{} {}", word(expected), word(observed), if expected == observed { "ok" } else { "WRONG" });
            if expected != observed {
                failures.push(format!("docker: {from} -> {to}: expected {}, observed {}", word(expected), word(observed)));
            }
        }
        println!();
    }
    println!("$ docker exec web1 nslookup www        # Docker's resolver, on a bpfnet network");
    let lookup = docker.run(&["exec", "web1", "nslookup", "www"])?.stdout;
    print!("{lookup}");
    if !lookup.contains("10.240.1.3") {
        failures.push("docker: www (web2's alias) did not resolve".into());
    }
    let web1 = docker.pid("web1")?;
    tcp_whoami_server(&web1, addr("0.0.0.0", 80))?;
    let seen = crate::traffic::tcp_whoami(&outside.ext, addr(crate::sandbox::UPLINK_IP, 8080), WAIT);
    match seen {
        Ok(seen) => println!("-p 8080:80 from outside (192.0.2.2): web1 sees the client as {seen}"),
        Err(e) => failures.push(format!("docker: -p 8080:80 from outside: {e:#}")),
    }
    drop(docker);
    drop(sb);
    println!("How long until a container's network answers, 5 containers each (`bpfnet-lab engine-bench` for 100 and Podman):");
    match crate::enginebench::docker(5) {
        Ok(rows) => print!("{}", crate::enginebench::table(&rows, 5)),
        Err(e) => failures.push(format!("docker: engine benchmark: {e:#}")),
    }
    Ok(failures)
}

/// What users rely on when things go wrong (each has a test in tests/tests/hardening.rs).
fn failure_behaviour(sb: &mut Sandbox, conn: &mut std::net::TcpStream) -> Result<()> {
    let mut round_trip = |label: &str| -> Result<()> {
        let ok = tcp_round_trip(conn, label.as_bytes()).is_ok_and(|b| b == label.as_bytes());
        println!("open connection con1 -> con2, {label:<32} {}", if ok { "ok" } else { "FAILED" });
        if !ok {
            bail!("the connection broke: {label}");
        }
        Ok(())
    };

    println!("kill -9 the daemon, then start it again:");
    sb.stop_daemon(libc::SIGKILL)?;
    round_trip("daemon killed")?;
    sb.start_daemon()?;
    round_trip("daemon restarted")?;

    println!("\nthe state file goes missing; the daemon refuses to start rather than tear containers down:");
    sb.stop_daemon(libc::SIGTERM)?;
    let state = sb.state_dir().join("state.json");
    let moved = sb.dir.join("state.json.moved");
    std::fs::rename(&state, &moved)?;
    match sb.start_daemon() {
        Ok(()) => bail!("the daemon started without its state file"),
        Err(e) => {
            let text = format!("{e:#}");
            let why = text.lines().find(|l| l.contains("is missing")).unwrap_or(&text);
            println!("  {}", why.trim());
        }
    }
    round_trip("state file missing")?;
    std::fs::rename(&moved, &state)?;
    sb.start_daemon()?;
    round_trip("file back, daemon started")?;

    println!("\na namespace argument that is not a namespace is refused at once:");
    println!("$ bpfnet network connect backend /dev/zero");
    let r = sb.bpfnet(&["network", "connect", "backend", "/dev/zero"])?;
    print!("{}", r.stderr);
    if r.ok || !r.stderr.contains("is a device") {
        bail!("/dev/zero was not refused as a device");
    }

    println!("\ncon4 joins frontend, then exits (its namespace is deleted); its endpoint and address are freed:");
    let con4 = sb.add_netns("con4")?;
    cli(sb, &["network", "connect", "frontend", &con4])?;
    let endpoints = |sb: &Sandbox| -> Result<usize> {
        let nets: serde_json::Value = serde_json::from_str(&sb.bpfnet_ok(&["network", "ls", "--json"])?)?;
        Ok(nets.as_array().into_iter().flatten().map(|n| n["endpoints"].as_u64().unwrap_or(0) as usize).sum())
    };
    let before = endpoints(sb)?;
    sb.delete_netns("con4")?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while endpoints(sb)? == before {
        if std::time::Instant::now() > deadline {
            bail!("the endpoint of the deleted namespace was not collected");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("endpoints: {before} before, {} after (collected within the 2 s collector period)", endpoints(sb)?);
    Ok(())
}

/// An endpoint allocated on the backend network, attached to one namespace, detached, attached
/// to another, released; con1 pings its address at each step. Returns what differed.
fn endpoint_lifecycle(sb: &mut Sandbox, con1: &str) -> Result<Vec<String>> {
    let mut failures = Vec::new();
    let w1 = sb.add_netns("w1")?;
    let w2 = sb.add_netns("w2")?;
    let id = cli(sb, &["endpoint", "create", "backend", "web", "--ip", "10.210.1.50"])?.trim().to_string();
    let mut expect = |what: &str, expected: bool| -> Result<()> {
        // Answering endpoints get three pings: the first after an attach to a fresh namespace
        // is lost now and then (seen in this demo, not in the tests: see the issue's note).
        let tries = if expected { 3 } else { 1 };
        let answered_at = (1..=tries).find(|_| sb.ping(con1, "10.210.1.50").unwrap_or(false));
        let observed = answered_at.is_some();
        let word = |b: bool| if b { "answers" } else { "silent" };
        let mark = if expected == observed { "ok" } else { "WRONG" };
        let late = match answered_at {
            Some(n) if n > 1 => format!(" (ping {n})"),
            _ => String::new(),
        };
        println!("con1 -> 10.210.1.50 {what}: {}{late} (expected {}) {mark}", word(observed), word(expected));
        if expected != observed {
            failures.push(format!("endpoint {what}: expected {}, observed {}", word(expected), word(observed)));
        }
        Ok(())
    };
    expect("allocated only", false)?;
    cli(sb, &["endpoint", "attach", &id[..12], &w1, "--interface", "web0"])?;
    expect("attached to w1 as web0", true)?;
    cli(sb, &["endpoint", "detach", &id[..12]])?;
    expect("detached", false)?;
    cli(sb, &["endpoint", "ls"])?;
    cli(sb, &["endpoint", "attach", &id[..12], &w2])?;
    expect("attached to w2", true)?;
    cli(sb, &["endpoint", "rm", &id[..12]])?;
    expect("released", false)?;
    Ok(failures)
}

/// Masquerade and published ports, observed from both ends, over IPv4 and IPv6. Returns what
/// differed.
fn outside_world(sb: &mut Sandbox, outside: &Outside) -> Result<Vec<String>> {
    let mut failures = vec![];
    println!("outside: a router (ext, 192.0.2.2 and 2001:db8:2::2) behind the host's uplink up0 (192.0.2.1,");
    println!("{UPLINK_IP6}), and a server far ({FAR_IP}, {FAR_IP6}) behind it; neither has a route to any");
    println!("container subnet.");
    let con1 = sb.ns("con1");
    for (far, uplink, from) in [(FAR_IP, UPLINK_IP, "10.210.1.2"), (FAR_IP6, UPLINK_IP6, "fd00:210:1::2")] {
        tcp_whoami_server(&outside.far, addr(far, 8000))?;
        let seen = tcp_whoami(&con1, addr(far, 8000), WAIT)?;
        println!("con1 ({from}) connects to {}; the server sees the client as {seen}", addr(far, 8000));
        if seen.ip().to_string() != uplink {
            failures.push(format!("masquerade: the server saw {seen}, not the uplink's address {uplink}"));
        }
    }
    let web = sb.add_netns("web")?;
    cli(sb, &["network", "connect", "backend", &web, "-p", "8080:80"])?;
    tcp_whoami_server(&web, addr("10.210.1.4", 80))?;
    tcp_whoami_server(&web, addr("fd00:210:1::4", 80))?;
    let host = sb.host();
    for (who, ns, to, expect) in [
        ("far", &outside.far, UPLINK_IP, FAR_IP),
        ("the host itself", &host, "127.0.0.1", "10.210.1.1"),
        ("con3 (frontend)", &sb.ns("con3"), UPLINK_IP, "10.210.1.1"),
        ("far", &outside.far, UPLINK_IP6, FAR_IP6),
        ("the host itself", &host, "::1", "fd00:210:1::1"),
        ("con3 (frontend)", &sb.ns("con3"), UPLINK_IP6, "fd00:210:1::1"),
    ] {
        match tcp_whoami(ns, addr(to, 8080), WAIT) {
            Ok(seen) => {
                println!("{who} connects to {}; web sees the client as {seen}", addr(to, 8080));
                if seen.ip().to_string() != expect {
                    failures.push(format!("published port from {who}: web saw {seen}, expected {expect}"));
                }
            }
            Err(e) => failures.push(format!("published port from {who} through {to}: {e:#}")),
        }
    }
    cli(sb, &["port", "ls"])?;
    cli(sb, &["conntrack", "ls"])?;
    Ok(failures)
}

/// Docker Swarm's example: three replicas behind `--publish 8088` to port 80, each answering with
/// its name; new connections from outside, from a container through the VIP and from the host,
/// counted per replica.
fn swarm_example(sb: &mut Sandbox, outside: &Outside) -> Result<Vec<String>> {
    let mut failures = vec![];
    let mut args = vec!["service", "create", "web", "--network", "frontend", "--port", "80", "--publish", "8088"];
    let mut replicas = vec![];
    for i in 1..=3 {
        let name = format!("web{i}");
        let ns = sb.add_netns(&name)?;
        sb.bpfnet_ok(&["network", "connect", "frontend", &ns])?;
        tcp_name_server(&ns, addr("0.0.0.0", 80), &name)?;
        replicas.push(ns);
    }
    println!("replicas web1, web2, web3 on frontend, each answering with its name on port 80");
    for ns in &replicas {
        args.extend(["--backend", ns.as_str()]);
    }
    let shown: Vec<String> = args.iter().map(|a| a.rsplit('-').next().filter(|_| a.starts_with("bpfnetlab-")).unwrap_or(a).to_string()).collect();
    println!("$ bpfnet {}", shown.join(" "));
    print!("{}", sb.bpfnet_ok(&args)?);
    cli(sb, &["service", "ls"])?;
    let vip = sb.bpfnet_ok(&["service", "inspect", "web"])?;
    let vip: serde_json::Value = serde_json::from_str(&vip)?;
    let vip = vip[0]["Endpoint"]["VirtualIPs"][0]["Addr"].as_str().unwrap_or("").split('/').next().unwrap_or("").to_string();
    const N: usize = 3000;
    println!("\n{N} new TCP connections from each client; how many each replica answered:");
    println!("{:<34} {:>6} {:>6} {:>6}", "client -> address", "web1", "web2", "web3");
    let host = sb.host();
    let con3 = sb.ns("con3");
    for (label, ns, to) in [
        (format!("outside (far) -> {UPLINK_IP}:8088"), &outside.far, addr(UPLINK_IP, 8088)),
        (format!("con3 -> VIP {vip}:80"), &con3, addr(&vip, 80)),
        ("the host -> 127.0.0.1:8088".to_string(), &host, addr("127.0.0.1", 8088)),
    ] {
        match spread(ns, to, N, WAIT) {
            Ok(seen) => {
                let count = |n: &str| seen.get(n).copied().unwrap_or(0);
                println!("{label:<34} {:>6} {:>6} {:>6}", count("web1"), count("web2"), count("web3"));
                // Within 4.5 standard deviations of an even split.
                let sd = (N as f64 * (1.0 / 3.0) * (2.0 / 3.0)).sqrt();
                if seen.len() != 3 || seen.values().any(|&n| (n as f64 - N as f64 / 3.0).abs() > 4.5 * sd) {
                    failures.push(format!("uneven spread from {label}: {seen:?}"));
                }
            }
            Err(e) => failures.push(format!("service from {label}: {e:#}")),
        }
    }
    Ok(failures)
}

/// Three hosts: node namespaces with their own daemons on a three-member etcd cluster; an overlay
/// network across them, the matrix by name across nodes, the routing mesh answered from every
/// node, and a node that dies.
fn three_hosts() -> Result<Vec<String>> {
    use crate::cluster::Cluster;
    let mut failures = Vec::new();
    let mut c = Cluster::new("demohosts", 3)?;
    c.start_etcd_cluster()?;
    for i in 0..3 {
        c.start_daemon(i, "4s", &[])?;
    }
    let on = |c: &Cluster, i: usize, args: &[&str]| -> Result<String> {
        println!("[n{}] $ bpfnet {}", i + 1, args.join(" "));
        let out = c.nodes[i].bpfnet_ok(args)?;
        print!("{out}");
        Ok(out)
    };
    on(&c, 1, &["node", "ls"])?;
    on(&c, 0, &["network", "create", "web", "--driver", "overlay", "--subnet", "10.0.9.0/24", "--gateway", "10.0.9.99"])?;
    on(&c, 0, &["network", "create", "db", "--driver", "overlay", "--subnet", "10.0.8.0/24"])?;
    for i in 0..3 {
        for _ in 0..50 {
            if c.nodes[i].bpfnet(&["network", "inspect", "web"])?.ok && c.nodes[i].bpfnet(&["network", "inspect", "db"])?.ok {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    on(&c, 2, &["network", "ls"])?;
    let mut web = vec![];
    for i in 0..3 {
        let name = format!("w{}", i + 1);
        let ns = c.nodes[i].add_netns(&name)?;
        on(&c, i, &["network", "connect", "web", &ns, "--alias", &name])?;
        web.push(ns);
    }
    let d2 = c.nodes[1].add_netns("d2")?;
    let out = on(&c, 1, &["network", "connect", "db", &d2, "--json"])?;
    let d2_ip = serde_json::from_str::<serde_json::Value>(&out)?["ipv4_address"].as_str().unwrap_or_default().split('/').next().unwrap_or_default().to_string();

    println!("\nBy name across nodes (each node's resolver at 10.0.9.99 answers for every node), then a ping (expected / observed):");
    for i in 0..3 {
        for j in 0..3 {
            if i == j {
                continue;
            }
            let target = format!("w{}", j + 1);
            // A node's resolver follows a network that reached it within 200 ms: asked at once
            // after the connects, it may not listen yet.
            let mut ip = String::new();
            for _ in 0..10 {
                ip = c.nodes[i].exec(&web[i], &["dig", "+short", "+time=1", "+tries=1", "@10.0.9.99", &target])?.stdout.trim().to_string();
                if ip.parse::<std::net::IpAddr>().is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let reached = !ip.is_empty() && c.nodes[i].ping(&web[i], &ip)?;
            let mark = if reached { "ok" } else { "WRONG" };
            println!("  w{} (n{}) -> {target} = {ip:<12} pass/{} {mark}", i + 1, i + 1, if reached { "pass" } else { "blocked" });
            if !reached {
                failures.push(format!("w{} -> {target} across nodes", i + 1));
            }
        }
    }
    let isolated = !c.nodes[0].ping(&web[0], &d2_ip)?;
    println!("  w1 (n1, web) -> d2 (n2, db) {d2_ip}: blocked/{} {}", if isolated { "blocked" } else { "pass" }, if isolated { "ok" } else { "WRONG" });
    if !isolated {
        failures.push("web reached db across nodes".into());
    }
    on(&c, 0, &["stats"]).map(|_| ())?;

    println!("\nThe routing mesh: service `site` on n1, replicas w2 (n2) and w3 (n3), published on port 8080 of every node");
    for (i, ns) in web.iter().enumerate() {
        crate::traffic::tcp_name_server(ns, "0.0.0.0:80".parse()?, &format!("w{}", i + 1))?;
    }
    on(&c, 0, &["service", "create", "site", "--network", "web", "--port", "80", "--publish", "8080", "--backend", "w2", "--backend", "w3"])?;
    std::thread::sleep(Duration::from_millis(500));
    on(&c, 2, &["service", "ls"])?;
    for i in 1..=3 {
        let to: std::net::SocketAddr = format!("{}:8080", crate::cluster::underlay_ip(i)).parse()?;
        match crate::traffic::spread(c.underlay(), to, 60, Duration::from_secs(3)) {
            Ok(seen) => {
                let (_, client) = crate::traffic::NameClient::connect(c.underlay(), to, Duration::from_secs(3))?.ask()?;
                let counted: Vec<String> = seen.iter().map(|(name, n)| format!("{name} {n}")).collect();
                let right = seen.len() == 2 && client == crate::cluster::UNDERLAY_ROUTER;
                println!(
                    "  60 connections from outside to n{i}:8080 -> {} (the replica saw the client as {client}) {}",
                    counted.join(", "),
                    if right { "ok" } else { "WRONG" }
                );
                if !right {
                    failures.push(format!("routing mesh through n{i}: {seen:?}, client seen as {client}"));
                }
            }
            Err(e) => failures.push(format!("routing mesh through n{i}: {e:#}")),
        }
    }

    println!("\nNode n3 dies (its daemon killed, lease TTL 4 s): its container leaves the other nodes");
    c.nodes[2].stop_daemon(libc::SIGKILL)?;
    let died = std::time::Instant::now();
    let w3_ip = c.nodes[0].exec(&web[0], &["dig", "+short", "+time=1", "+tries=1", "@10.0.9.99", "w3"])?.stdout.trim().to_string();
    let mut gone = None;
    while died.elapsed() < Duration::from_secs(10) {
        let down = c.nodes[0].bpfnet_ok(&["node", "ls", "--json"]).is_ok_and(|out| {
            serde_json::from_str::<serde_json::Value>(&out).is_ok_and(|v| {
                v["nodes"].as_array().is_some_and(|a| a.iter().any(|n| n["name"] == "n3" && n["state"] == "down"))
            })
        });
        if down && !c.nodes[0].ping(&web[0], &w3_ip)? {
            gone = Some(died.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    match gone {
        Some(t) => println!("n3 down and w3 ({w3_ip}) unreachable from n1 after {:.1} s", t.as_secs_f64()),
        None => failures.push("n3's container still reachable 10 s after n3 died".into()),
    }
    on(&c, 0, &["node", "ls"])?;
    let still = c.nodes[0].ping(&web[0], &c.nodes[1].exec(&web[0], &["dig", "+short", "+time=1", "+tries=1", "@10.0.9.99", "w2"])?.stdout.trim().to_string())?;
    println!("w1 -> w2 (n2) after n3 died: {}", if still { "pass" } else { "blocked (WRONG)" });
    if !still {
        failures.push("w1 lost w2 when n3 died".into());
    }
    let to: std::net::SocketAddr = format!("{}:8080", crate::cluster::underlay_ip(1)).parse()?;
    match crate::traffic::spread(c.underlay(), to, 30, Duration::from_secs(3)) {
        Ok(seen) if seen.keys().map(String::as_str).collect::<Vec<_>>() == ["w2"] => {
            println!("the routing mesh after n3 died: 30 connections to n1:8080 -> w2 {} ok", seen["w2"])
        }
        Ok(seen) => failures.push(format!("the routing mesh after n3 died: {seen:?}")),
        Err(e) => failures.push(format!("the routing mesh after n3 died: {e:#}")),
    }
    Ok(failures)
}

pub fn run() -> Result<()> {
    println!("bpfnet demo: containers are network namespaces, the daemon runs in a private \"host\"");
    println!("namespace; nothing on this machine's own network is touched.");
    let mut sb = Sandbox::new("demo")?;
    // The uplink first, both families: the daemon takes the interface of the default route and
    // its addresses.
    let outside = sb.add_outside()?;
    sb.add_ipv6_outside(&outside)?;
    sb.start_daemon()?;
    let con1 = sb.add_netns("con1")?;
    let con2 = sb.add_netns("con2")?;
    let con3 = sb.add_netns("con3")?;
    let mut failures = Vec::new();

    step("Reference scenario (dual stack): backend {con1, con2}, frontend {con3}, then con2 joins frontend");
    cli(&sb, &["network", "create", "backend", "--subnet", "10.210.1.0/24", "--subnet", "fd00:210:1::/64"])?;
    cli(&sb, &["network", "create", "frontend", "--subnet", "10.210.2.0/24", "--subnet", "fd00:210:2::/64"])?;
    cli(&sb, &["network", "connect", "backend", &con1])?;
    cli(&sb, &["network", "connect", "backend", &con2])?;
    cli(&sb, &["network", "connect", "frontend", &con3])?;
    cli(&sb, &["network", "connect", "frontend", &con2])?;
    cli(&sb, &["network", "ls"])?;
    println!("$ ip netns exec con2 ip -br addr show scope global");
    print!("{}", sb.exec(&con2, &["ip", "-br", "addr", "show", "scope", "global"])?.stdout);

    let targets4 = [
        ("con1", "10.210.1.2", "backend"),
        ("con2", "10.210.1.3", "backend"),
        ("con2", "10.210.2.3", "frontend"),
        ("con3", "10.210.2.2", "frontend"),
    ];
    let targets6 = [
        ("con1", "fd00:210:1::2", "backend"),
        ("con2", "fd00:210:1::3", "backend"),
        ("con2", "fd00:210:2::3", "frontend"),
        ("con3", "fd00:210:2::2", "frontend"),
    ];
    let sources = [("con1", &con1, &["backend"][..]), ("con2", &con2, &["backend", "frontend"][..]), ("con3", &con3, &["frontend"][..])];
    for (name, ip, _) in targets4.iter().chain(&targets6) {
        let ns = sb.ns(name);
        tcp_echo_server(&ns, addr(ip, 7000))?;
        udp_echo_server(&ns, addr(ip, 7001))?;
    }
    for (family, targets) in [("IPv4", &targets4), ("IPv6", &targets6)] {
        step(&format!("Connectivity matrix, {family}: TCP and UDP echo of a 1400-byte payload (expected / observed)"));
        matrix(targets, &sources, &mut failures);
    }

    step("icc=false: containers of one network cannot talk to each other, only to the gateway");
    let q1 = sb.add_netns("q1")?;
    let q2 = sb.add_netns("q2")?;
    cli(&sb, &["network", "create", "quiet", "--subnet", "10.210.3.0/24", "-o", "icc=false"])?;
    cli(&sb, &["network", "connect", "quiet", &q1])?;
    cli(&sb, &["network", "connect", "quiet", &q2])?;
    tcp_echo_server(&q2, addr("10.210.3.3", 7000))?;
    udp_echo_server(&q2, addr("10.210.3.3", 7001))?;
    let q_peer = reachable(&q1, "10.210.3.3");
    let q_gw = sb.ping(&q1, "10.210.3.1")?;
    println!("q1 -> q2 (10.210.3.3): {} (expected blocked)", if q_peer { "pass" } else { "blocked" });
    println!("q1 -> gateway 10.210.3.1 (ping): {} (expected pass)", if q_gw { "pass" } else { "blocked" });
    if q_peer || !q_gw {
        failures.push("icc=false behaves wrongly".into());
    }

    step("Endpoints step by step, as the Docker and CNI front-ends drive them: allocate, attach, detach, release");
    match endpoint_lifecycle(&mut sb, &con1) {
        Ok(f) => failures.extend(f),
        Err(e) => failures.push(format!("endpoint lifecycle: {e:#}")),
    }

    step("The outside, IPv4 and IPv6: masquerade, and a published port (-p 8080:80) reached from outside, the host and another network");
    match outside_world(&mut sb, &outside) {
        Ok(f) => failures.extend(f),
        Err(e) => failures.push(format!("outside world: {e:#}")),
    }

    step("Services: Docker Swarm's example, three replicas behind --publish 8088 (Maglev in the datapath)");
    match swarm_example(&mut sb, &outside) {
        Ok(f) => failures.extend(f),
        Err(e) => failures.push(format!("swarm example: {e:#}")),
    }

    step("Daemon restart: an open TCP connection con1 -> con2 keeps working while it is down");
    let mut conn = tcp_connect(&con1, addr("10.210.1.3", 7000), WAIT)?;
    let mut check = |label: &str| {
        let ok = tcp_round_trip(&mut conn, label.as_bytes()).is_ok_and(|b| b == label.as_bytes());
        println!("round trip {label:<22} {}", if ok { "ok" } else { "FAILED" });
        ok
    };
    let before = check("before stop");
    sb.stop_daemon(libc::SIGTERM)?;
    let during = check("daemon stopped");
    sb.start_daemon()?;
    let after = check("after restart");
    if !(before && during && after) {
        failures.push("connection did not survive the restart".into());
    }

    step("Failure behaviour: a crash, a lost state file, a bad argument, a container that exits");
    if let Err(e) = failure_behaviour(&mut sb, &mut conn) {
        failures.push(format!("failure behaviour: {e:#}"));
    }

    step("Datapath counters");
    cli(&sb, &["stats"])?;

    step("Short benchmark: container to container, to the outside, to a published port (2 s per measurement, 1 repetition; `cargo xtask bench` for the full one)");
    let opts = bench::Options::quick();
    match bench::run(&opts) {
        Ok(report) => println!("{}", report.markdown()),
        Err(e) => failures.push(format!("benchmark failed: {e:#}")),
    }

    step("Services at scale: new connections/s through a published service with 1 and 1,000 services installed, bpfnet (XDP, TC) and kube-proxy's iptables and nftables rules (1 s each; `bpfnet-lab svc-bench` for the full run and docs/svc-bench.svg for its plot)");
    match svcbench::run(&svcbench::Options::quick()) {
        Ok(report) => print!("{}", report.chart()),
        Err(e) => failures.push(format!("service benchmark failed: {e:#}")),
    }

    drop(sb);

    step("Three hosts: three node namespaces, each its own daemon, on a three-member etcd cluster; an overlay network across them");
    match three_hosts() {
        Ok(f) => failures.extend(f),
        Err(e) => failures.push(format!("three hosts: {e:#}")),
    }

    if crate::engines::docker_installed() {
        step("Docker: `docker network create -d bpfnet` and the docker CLI, unchanged (dockerd in a sandbox with --iptables=false --userland-proxy=false)");
        match docker_section() {
            Ok(f) => failures.extend(f),
            Err(e) => failures.push(format!("docker section: {e:#}")),
        }
    } else {
        step("Docker: not installed (`cargo xtask setup` installs it): section skipped");
    }

    if failures.is_empty() {
        println!("\nDemo finished: every observation matched the expectation; sandbox removed.");
        Ok(())
    } else {
        bail!("{} observations differ from expectations:\n  {}", failures.len(), failures.join("\n  "))
    }
}
