//! End-to-end service load balancing: Docker Swarm's example (replicas behind a published port,
//! each answering with its name) driven through the CLI, with real connections from outside,
//! from a container through the VIP and from the host, counted per replica against a bound
//! that fails on an uneven spread. Needs root.
use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use bpfnet_lab::{
    checks::{addr, assert_even, json},
    netns,
    sandbox::{Outside, FAR_IP, FAR_IP6, UPLINK_IP, UPLINK_IP6},
    traffic::{spread, tcp_connect, tcp_name_server, udp_name_server, udp_refused, NameClient},
    Sandbox,
};

const T: Duration = Duration::from_secs(3);
const SUBNET: &str = "10.220.0.0/24";
const CLIENT_IP: &str = "10.220.0.2";

/// The sandbox, the outside, the client container's namespace, and `replicas` replica
/// namespaces (`web1`...), each connected to network `front` and serving its name on TCP 80
/// and UDP 53.
fn swarm(tag: &str, replicas: usize) -> (Sandbox, Outside, String, Vec<String>) {
    let mut sb = Sandbox::new(tag).unwrap();
    let outside = sb.add_outside().unwrap();
    sb.start_daemon().unwrap();
    sb.bpfnet_ok(&["network", "create", "front", "--subnet", SUBNET]).unwrap();
    let client = sb.add_netns("client").unwrap();
    sb.bpfnet_ok(&["network", "connect", "front", &client]).unwrap(); // 10.220.0.2
    let replicas = (1..=replicas).map(|i| replica(&mut sb, i)).collect();
    (sb, outside, client, replicas)
}

fn replica(sb: &mut Sandbox, i: usize) -> String {
    let name = format!("web{i}");
    let ns = sb.add_netns(&name).unwrap();
    sb.bpfnet_ok(&["network", "connect", "front", &ns]).unwrap();
    tcp_name_server(&ns, addr("0.0.0.0", 80), &name).unwrap();
    udp_name_server(&ns, addr("0.0.0.0", 53), &name).unwrap();
    ns
}

/// The VIP `service inspect` shows for `name`.
fn vip_of(sb: &Sandbox, name: &str) -> String {
    let s = json(&sb.bpfnet_ok(&["service", "inspect", name]).unwrap());
    let vip = s[0]["Endpoint"]["VirtualIPs"][0]["Addr"].as_str().unwrap().to_string();
    vip.split('/').next().unwrap().to_string()
}

fn backends_of(sb: &Sandbox, name: &str) -> Vec<(String, String)> {
    let s = json(&sb.bpfnet_ok(&["service", "inspect", name]).unwrap());
    s[0]["Backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["Name"].as_str().unwrap().to_string(), b["State"].as_str().unwrap().to_string()))
        .collect()
}

#[test]
fn the_swarm_example_spreads_connections_from_outside_from_containers_and_from_the_host() {
    let (sb, outside, client, replicas) = swarm("svc-swarm", 3);
    let mut args = vec!["service", "create", "web", "--network", "front", "--port", "80", "--publish", "8080", "--json"];
    for ns in &replicas {
        args.extend(["--backend", ns.as_str()]);
    }
    let created = json(&sb.bpfnet_ok(&args).unwrap());
    assert_eq!(created["Spec"]["Name"], "web");
    let vip = created["Endpoint"]["VirtualIPs"][0]["Addr"].as_str().unwrap();
    assert_eq!(vip, "10.220.0.6/24", "the network's next free address (after the client and 3 replicas)");
    assert_eq!(created["Endpoint"]["Ports"][0]["PublishedPort"], 8080);
    assert_eq!(created["Backends"].as_array().unwrap().len(), 3);
    let table = sb.bpfnet_ok(&["service", "ls"]).unwrap();
    assert!(table.contains("web") && table.contains("10.220.0.6:80/tcp") && table.contains("0.0.0.0:8080->80/tcp"), "{table}");
    let vip: SocketAddr = addr("10.220.0.6", 80);

    // From outside, through the published port: the replica sees the client's own address.
    let seen = spread(&outside.far, addr(UPLINK_IP, 8080), 3000, T).unwrap();
    assert_even(&seen, 3, 3000, "outside -> published port");
    let (_, seen_as) = NameClient::connect(&outside.far, addr(UPLINK_IP, 8080), T).unwrap().ask().unwrap();
    assert_eq!(seen_as, FAR_IP);

    // From a container of the network, through the VIP (ARP for it answered by the datapath).
    let seen = spread(&client, vip, 3000, T).unwrap();
    assert_even(&seen, 3, 3000, "container -> VIP");
    let (_, seen_as) = NameClient::connect(&client, vip, T).unwrap().ask().unwrap();
    assert_eq!(seen_as, CLIENT_IP, "east-west, the backend sees the client's address");

    // From the host, through 127.0.0.1 and through the VIP (socket programs).
    let seen = spread(&sb.host(), addr("127.0.0.1", 8080), 3000, T).unwrap();
    assert_even(&seen, 3, 3000, "host -> 127.0.0.1:8080");
    let seen = spread(&sb.host(), vip, 300, T).unwrap();
    assert_eq!(seen.values().sum::<usize>(), 300, "host -> VIP: {seen:?}");

    // A replica reaching its own service: sent to itself, it is seen from the gateway's address
    // (hairpin, so that the answer comes back through the datapath); sent to another, as itself.
    let mut seen = BTreeMap::new();
    for _ in 0..40 {
        let (name, seen_as) = NameClient::connect(&replicas[0], vip, T).unwrap().ask().unwrap();
        let expected = if name == "web1" { "10.220.0.1" } else { "10.220.0.3" };
        assert_eq!(seen_as, expected, "web1 -> VIP answered by {name}");
        *seen.entry(name == "web1").or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 2, "both cases met in 40 tries: {seen:?}");
    let stats = json(&sb.bpfnet_ok(&["stats", "--json"]).unwrap());
    let balanced = stats["counters"].as_array().unwrap().iter().find(|c| c["name"] == "service_balanced").unwrap()["packets"].as_u64().unwrap();
    assert!(balanced >= 6000, "new connections counted: {balanced}");
}

#[test]
fn connections_stay_on_their_backend_through_changes_drains_and_a_restart() {
    let (mut sb, _outside, client, mut replicas) = swarm("svc-change", 3);
    let mut args = vec!["service", "create", "web", "--network", "front", "--port", "80"];
    for ns in &replicas {
        args.extend(["--backend", ns.as_str()]);
    }
    sb.bpfnet_ok(&args).unwrap();
    let vip = addr(&vip_of(&sb, "web"), 80);
    let mut long = NameClient::connect(&client, vip, T).unwrap();
    let (mine, _) = long.ask().unwrap();

    // A fourth replica: about a quarter of new connections reach it; the open one stays.
    replicas.push(replica(&mut sb, 4));
    sb.bpfnet_ok(&["service", "add-backend", "web", &replicas[3]]).unwrap();
    assert_eq!(long.ask().unwrap().0, mine, "an open connection stays on its backend when one is added");
    let seen = spread(&client, vip, 400, T).unwrap();
    assert!(seen.get("web4").is_some_and(|n| (50..=150).contains(n)), "the new replica takes about 1/4: {seen:?}");

    // Another replica goes: nothing new reaches it, the open connection stays.
    let other = (1..=4).map(|i| format!("web{i}")).find(|n| *n != mine).unwrap();
    let other_ns = &replicas[other[3..].parse::<usize>().unwrap() - 1];
    sb.bpfnet_ok(&["service", "rm-backend", "web", other_ns]).unwrap();
    assert_eq!(long.ask().unwrap().0, mine);
    let seen = spread(&client, vip, 300, T).unwrap();
    assert!(!seen.contains_key(&other) && seen.len() == 3, "{other} removed: {seen:?}");

    // Draining our own backend: the open connection goes on, new ones go elsewhere, and the
    // backend leaves once the connection has ended.
    let mine_ns = replicas[mine[3..].parse::<usize>().unwrap() - 1].clone();
    sb.bpfnet_ok(&["service", "rm-backend", "web", &mine_ns, "--drain"]).unwrap();
    assert!(backends_of(&sb, "web").contains(&(mine_ns.clone(), "draining".into())), "{:?}", backends_of(&sb, "web"));
    assert_eq!(long.ask().unwrap().0, mine, "a draining backend keeps its connections");
    let seen = spread(&client, vip, 200, T).unwrap();
    assert!(!seen.contains_key(&mine), "nothing new reaches a draining backend: {seen:?}");
    drop(long);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while backends_of(&sb, "web").iter().any(|(n, _)| *n == mine_ns) {
        assert!(std::time::Instant::now() < deadline, "the drained backend stays: {:?}", backends_of(&sb, "web"));
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(backends_of(&sb, "web").len(), 2);

    // A restart keeps the service and its open connections.
    let mut long = NameClient::connect(&client, vip, T).unwrap();
    let (mine, _) = long.ask().unwrap();
    sb.stop_daemon(libc::SIGTERM).unwrap();
    assert_eq!(long.ask().unwrap().0, mine, "forwarding goes on while the daemon is down");
    sb.start_daemon().unwrap();
    assert_eq!(long.ask().unwrap().0, mine, "and after it is back");
    assert_eq!(backends_of(&sb, "web").len(), 2, "the service came back with its backends");
    let seen = spread(&client, vip, 200, T).unwrap();
    assert_eq!(seen.len(), 2, "both backends take new connections: {seen:?}");
}

/// A UDP question from `ns`, from local port `from_port`: which replica answered.
fn udp_ask(ns: &str, from_port: u16, to: SocketAddr) -> String {
    netns::within(ns, move || {
        let socket = std::net::UdpSocket::bind(("0.0.0.0", from_port))?;
        socket.set_read_timeout(Some(T))?;
        socket.send_to(b"?", to)?;
        let mut buf = [0u8; 256];
        let (n, _) = socket.recv_from(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf[..n]).split(' ').next().unwrap().to_string())
    })
    .unwrap()
}

#[test]
fn udp_affinity_refusals_and_clear_errors() {
    let (sb, outside, client, replicas) = swarm("svc-udp", 3);
    let backends: Vec<&str> = replicas.iter().flat_map(|ns| ["--backend", ns.as_str()]).collect();

    // UDP: datagrams from many ports spread; a removed backend's flows are forgotten, so a
    // client that keeps its port is not stranded on it.
    let mut args = vec!["service", "create", "dns", "--network", "front", "--port", "53/udp"];
    args.extend(&backends);
    sb.bpfnet_ok(&args).unwrap();
    let dns = addr(&vip_of(&sb, "dns"), 53);
    let mut seen = BTreeMap::new();
    for port in 20_000..20_300u16 {
        *seen.entry(udp_ask(&client, port, dns)).or_insert(0usize) += 1;
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
    let first = udp_ask(&client, 5555, dns);
    assert_eq!(udp_ask(&client, 5555, dns), first, "a flow stays on its backend");
    let first_ns = &replicas[first[3..].parse::<usize>().unwrap() - 1];
    sb.bpfnet_ok(&["service", "rm-backend", "dns", first_ns]).unwrap();
    let next = udp_ask(&client, 5555, dns);
    assert_ne!(next, first, "the removed backend's UDP flow was purged and balanced again");

    // Client-IP affinity: one client, one backend.
    let mut args = vec!["service", "create", "sticky", "--network", "front", "--port", "80", "--vip", "10.220.0.200"];
    args.extend(["--affinity", "client-ip:600"]);
    args.extend(&backends);
    sb.bpfnet_ok(&args).unwrap();
    let seen = spread(&client, addr("10.220.0.200", 80), 60, T).unwrap();
    assert_eq!(seen.len(), 1, "affinity keeps the client on one backend: {seen:?}");

    // No backend: refused at once (a reset, ICMP port unreachable, ECONNREFUSED for the host).
    sb.bpfnet_ok(&["service", "create", "nobody", "--network", "front", "--port", "9000", "--publish", "9000"]).unwrap();
    sb.bpfnet_ok(&["service", "create", "nobody-udp", "--network", "front", "--port", "9001/udp"]).unwrap();
    let refused = |ns: &str, to: SocketAddr| {
        let started = std::time::Instant::now();
        let err = tcp_connect(ns, to, T).map(|_| ()).unwrap_err();
        let refused = format!("{err:#}").contains("refused");
        assert!(refused && started.elapsed() < Duration::from_secs(1), "{to} from {ns}: {err:#}");
    };
    refused(&outside.far, addr(UPLINK_IP, 9000));
    refused(&client, addr(&vip_of(&sb, "nobody"), 9000));
    refused(&sb.host(), addr("127.0.0.1", 9000));
    assert!(udp_refused(&client, addr(&vip_of(&sb, "nobody-udp"), 9001), T).unwrap(), "port unreachable for UDP");

    // Errors that change nothing.
    sb.bpfnet_ok(&["network", "create", "inside", "--internal"]).unwrap();
    sb.bpfnet_ok(&["service", "create", "in1", "--network", "inside", "--port", "80"]).unwrap();
    let before = sb.bpfnet_ok(&["service", "ls", "--json"]).unwrap();
    for (args, says) in [
        (vec!["service", "create", "x", "--network", "nope", "--port", "80"], "network \"nope\" not found"),
        (vec!["service", "create", "x", "--network", "front", "--port", "80", "--backend", &outside.far], "is not connected to network \"front\""),
        (vec!["service", "create", "x", "--network", "front", "--port", "80", "--backend", "/nonexistent/ns"], "not a usable network namespace"),
        (vec!["service", "create", "x", "--network", "front", "--port", "80", "--vip", "10.99.0.5"], "outside the subnet 10.220.0.0/24"),
        (vec!["service", "create", "x", "--network", "front", "--port", "80", "--vip", CLIENT_IP], "already in use"),
        (vec!["service", "create", "x", "--network", "front", "--port", "80", "--vip", "10.220.0.200"], "service sticky"),
        (vec!["service", "create", "x", "--network", "front", "--port", "80", "--publish", "9000"], "already published by service nobody"),
        (vec!["service", "create", "dns", "--network", "front", "--port", "80"], "exists already"),
        (vec!["service", "create", "x", "--network", "front", "--port", "0"], "invalid --port"),
        (vec!["service", "create", "x", "--network", "front", "--port", "80", "--affinity", "cookie"], "invalid --affinity"),
        (vec!["service", "add-backend", "nope", &client], "service \"nope\" not found"),
        (vec!["service", "rm-backend", "dns", &outside.far], "is not a backend"),
        (vec!["network", "rm", "inside"], "has services (in1)"),
        (vec!["network", "connect", "front", &outside.ext, "-p", "9000:80"], "already published by service nobody"),
        (vec!["service", "create", "x", "--network", "inside", "--port", "80", "--publish", "9100"], "is internal"),
        (vec!["service", "create", "x", "--network", "front", "--port", "53/udp", "--publish", "5353/udp"], "the protocol is the service's (--port 53/udp)"),
    ] {
        let ran = sb.bpfnet(&args).unwrap();
        assert!(!ran.ok && ran.stderr.contains(says), "{args:?}: expected {says:?}, got {}", ran.stderr);
    }
    assert_eq!(sb.bpfnet_ok(&["service", "ls", "--json"]).unwrap(), before, "nothing changed");
    assert!(sb.bpfnet_ok(&["network", "ls"]).unwrap().contains("inside"), "the network stays");

    // Many at once from a file (all or none): one bad entry and nothing is created.
    let file = sb.state_dir().with_file_name("services.json");
    let batch = |extra: &str| {
        format!(
            r#"{{"services": [{{"name": "b1", "network": "front", "port": "81", "backends": ["{}"]}},
                             {{"name": "b2", "network": "front", "port": "82/udp", "backends": ["{}:5353"]}}{extra}]}}"#,
            replicas[0], replicas[1]
        )
    };
    std::fs::write(&file, batch(r#", {"name": "b3", "network": "nope", "port": "83"}"#)).unwrap();
    let ran = sb.bpfnet(&["service", "apply", file.to_str().unwrap()]).unwrap();
    assert!(!ran.ok && ran.stderr.contains("network \"nope\" not found"), "{}", ran.stderr);
    assert_eq!(sb.bpfnet_ok(&["service", "ls", "--json"]).unwrap(), before, "none of the batch was created");
    std::fs::write(&file, batch("")).unwrap();
    let out = sb.bpfnet_ok(&["service", "apply", file.to_str().unwrap()]).unwrap();
    assert!(out.starts_with("2 services created"), "{out}");
    let b1 = addr(&vip_of(&sb, "b1"), 81);
    assert!(tcp_connect(&client, b1, T).is_err(), "web1 serves nothing on 81: refused, not balanced elsewhere");
    sb.bpfnet_ok(&["service", "rm", "b1", "b2"]).unwrap();

    sb.bpfnet_ok(&["service", "rm", "nobody", "nobody-udp", "sticky", "in1"]).unwrap();
    sb.bpfnet_ok(&["network", "rm", "inside"]).unwrap();
    let left = json(&sb.bpfnet_ok(&["service", "ls", "--json"]).unwrap());
    assert_eq!(left.as_array().unwrap().len(), 1);
    // A removed service's port answers no more (the host has nothing there either).
    refused(&sb.host(), addr("127.0.0.1", 9000));
}

#[test]
fn a_dual_stack_service_balances_ipv6_from_outside_from_containers_and_from_the_host() {
    let mut sb = Sandbox::new("svc-v6").unwrap();
    let outside = sb.add_outside().unwrap();
    sb.add_ipv6_outside(&outside).unwrap();
    sb.start_daemon().unwrap();
    sb.bpfnet_ok(&["network", "create", "dual", "--subnet", "10.223.0.0/24", "--subnet", "fd00:223::/64"]).unwrap();
    sb.bpfnet_ok(&["network", "create", "v4only", "--subnet", "10.224.0.0/24"]).unwrap();
    let client = sb.add_netns("client").unwrap();
    sb.bpfnet_ok(&["network", "connect", "dual", &client]).unwrap(); // 10.223.0.2, fd00:223::2
    let mut replicas = Vec::new();
    for i in 1..=3 {
        let name = format!("web{i}");
        let ns = sb.add_netns(&name).unwrap();
        sb.bpfnet_ok(&["network", "connect", "dual", &ns]).unwrap();
        // One socket for both families (IPV6_V6ONLY off).
        tcp_name_server(&ns, addr("::", 80), &name).unwrap();
        replicas.push(ns);
    }
    let mut args = vec!["service", "create", "web", "--network", "dual", "--port", "80", "--publish", "8080", "--json"];
    for ns in &replicas {
        args.extend(["--backend", ns.as_str()]);
    }
    let created = json(&sb.bpfnet_ok(&args).unwrap());
    let vips: Vec<&str> = created["Endpoint"]["VirtualIPs"].as_array().unwrap().iter().map(|v| v["Addr"].as_str().unwrap()).collect();
    assert_eq!(vips, ["10.223.0.6/24", "fd00:223::6/64"], "a VIP of each family, each the next free address");
    let table = sb.bpfnet_ok(&["service", "ls"]).unwrap();
    assert!(table.contains("10.223.0.6:80/tcp [fd00:223::6]:80/tcp"), "{table}");
    let vip6 = addr("fd00:223::6", 80);

    // From outside over IPv6, through the published port: the replica sees the client's address.
    let seen = spread(&outside.far, addr(UPLINK_IP6, 8080), 3000, T).unwrap();
    assert_even(&seen, 3, 3000, "outside -> [uplink]:8080");
    let (_, seen_as) = NameClient::connect(&outside.far, addr(UPLINK_IP6, 8080), T).unwrap().ask().unwrap();
    assert_eq!(seen_as, FAR_IP6);
    // And over IPv4, the same replicas.
    let seen = spread(&outside.far, addr(UPLINK_IP, 8080), 300, T).unwrap();
    assert_eq!(seen.values().sum::<usize>(), 300, "outside -> IPv4 published port: {seen:?}");

    // From a container through the IPv6 VIP (neighbour discovery answered by the datapath).
    let seen = spread(&client, vip6, 3000, T).unwrap();
    assert_even(&seen, 3, 3000, "container -> [VIP6]");
    let (_, seen_as) = NameClient::connect(&client, vip6, T).unwrap().ask().unwrap();
    assert_eq!(seen_as, "fd00:223::2", "east-west, the backend sees the client's IPv6 address");
    // A replica reaching its own service over IPv6: from the gateway's IPv6 address when it lands
    // on itself.
    for _ in 0..30 {
        let (name, seen_as) = NameClient::connect(&replicas[0], vip6, T).unwrap().ask().unwrap();
        let expected = if name == "web1" { "fd00:223::1" } else { "fd00:223::3" };
        assert_eq!(seen_as, expected, "web1 -> [VIP6] answered by {name}");
    }

    // From the host: [::1]:8080 and the IPv6 VIP (socket programs).
    let seen = spread(&sb.host(), addr("::1", 8080), 3000, T).unwrap();
    assert_even(&seen, 3, 3000, "host -> [::1]:8080");
    let seen = spread(&sb.host(), vip6, 300, T).unwrap();
    assert_eq!(seen.values().sum::<usize>(), 300, "host -> [VIP6]: {seen:?}");

    // The service's name resolves to both VIPs.
    let aaaa = sb.exec(&client, &["dig", "+short", "+time=1", "+tries=2", "@10.223.0.1", "web", "AAAA"]).unwrap().stdout;
    assert_eq!(aaaa.trim(), "fd00:223::6");

    // A restart keeps the IPv6 VIP and its backends.
    sb.stop_daemon(libc::SIGTERM).unwrap();
    sb.start_daemon().unwrap();
    let seen = spread(&client, vip6, 300, T).unwrap();
    assert_eq!(seen.len(), 3, "every backend after a restart: {seen:?}");

    // Bad input, refused with nothing made: an IPv6 VIP on a network without IPv6, an IPv6
    // publication of a service there, a VIP6 an endpoint holds.
    let refusals: [(&[&str], &str); 3] = [
        (&["service", "create", "a", "--network", "v4only", "--port", "80", "--vip6", "fd00:224::9"], "has no IPv6 subnet"),
        (&["service", "create", "b", "--network", "v4only", "--port", "80", "--publish", "[::]:9090"], "has no IPv6 subnet"),
        (&["service", "create", "c", "--network", "dual", "--port", "81", "--vip6", "fd00:223::3"], "already in use"),
    ];
    for (args, why) in refusals {
        let out = sb.bpfnet(args).unwrap();
        assert!(!out.ok && out.stderr.contains(why), "{args:?}: {}", out.stderr);
    }
    let names: Vec<String> = json(&sb.bpfnet_ok(&["service", "ls", "--json"]).unwrap())
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["web"], "nothing half-made");

    // Removed, the IPv6 VIP leads nowhere.
    sb.bpfnet_ok(&["service", "rm", "web"]).unwrap();
    assert!(tcp_connect(&client, vip6, Duration::from_millis(700)).is_err(), "the VIP6 answers no more");
}
