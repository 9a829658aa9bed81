//! End-to-end NAT: the daemon in a sandbox whose host namespace has an uplink to a private
//! "outside" (a router namespace and a server behind it) that has no route to any container
//! subnet, so only traffic bpfnet masquerades can be answered. Needs root.
use std::time::Duration;

use bpfnet_lab::{
    checks::{addr, counter, json},
    sandbox::{Outside, FAR_IP, UPLINK_IP},
    traffic::{
        payload, tcp_connect, tcp_echo_server, tcp_exchange, tcp_round_trip, tcp_whoami, tcp_whoami_server,
        udp_echo_server, udp_exchange, udp_refused, udp_whoami, udp_whoami_server,
    },
    Sandbox,
};

const T: Duration = Duration::from_secs(3);
/// How long to wait for traffic that must NOT arrive.
const BLOCKED: Duration = Duration::from_millis(800);

/// A sandbox with the outside world, servers on `far`, and the daemon started.
fn with_outside(tag: &str, daemon_args: &[&str]) -> (Sandbox, Outside) {
    let mut sb = Sandbox::new(tag).unwrap();
    let outside = sb.add_outside().unwrap();
    tcp_whoami_server(&outside.far, addr(FAR_IP, 8000)).unwrap();
    udp_whoami_server(&outside.far, addr(FAR_IP, 8001)).unwrap();
    tcp_echo_server(&outside.far, addr(FAR_IP, 7000)).unwrap();
    udp_echo_server(&outside.far, addr(FAR_IP, 7001)).unwrap();
    sb.start_daemon_with(&bpfnet_lab::sandbox::DaemonOptions { args: daemon_args, ..Default::default() }).unwrap();
    (sb, outside)
}

#[test]
fn containers_reach_the_outside_with_the_uplink_address() {
    let (mut sb, outside) = with_outside("masq", &[]);
    let log = std::fs::read_to_string(sb.daemon_log()).unwrap();
    assert!(log.contains("uplink up0 (192.0.2.1)"), "the default route's interface is the uplink, said at start:\n{log}");
    let con1 = sb.add_netns("con1").unwrap();
    let con2 = sb.add_netns("con2").unwrap();
    sb.bpfnet_ok(&["network", "create", "web", "--subnet", "10.210.0.0/24"]).unwrap();
    sb.bpfnet_ok(&["network", "connect", "web", &con1]).unwrap(); // 10.210.0.2
    sb.bpfnet_ok(&["network", "connect", "web", &con2]).unwrap(); // 10.210.0.3

    // TCP and UDP: the server sees the uplink's address.
    let seen = tcp_whoami(&con1, addr(FAR_IP, 8000), T).unwrap();
    assert_eq!(seen.ip().to_string(), UPLINK_IP);
    let seen = udp_whoami(&con1, 0, addr(FAR_IP, 8001), T).unwrap();
    assert_eq!(seen.ip().to_string(), UPLINK_IP);
    // Real payloads both ways.
    let data = payload(1, 20_000);
    assert_eq!(tcp_exchange(&con1, addr(FAR_IP, 7000), &data, T).unwrap(), data);
    let data = payload(2, 1000);
    assert_eq!(udp_exchange(&con2, addr(FAR_IP, 7001), &data, T).unwrap(), data);
    // Ping: the outside has no route to 10.210.0.0/24, so a reply proves the source was translated.
    assert!(sb.ping(&con1, FAR_IP).unwrap(), "ping through masquerade");
    assert!(sb.ping(&con2, "192.0.2.2").unwrap(), "ping the router right behind the uplink");

    // Two containers sending from the same port to the same server never share a reply tuple.
    let a = udp_whoami(&con1, 40000, addr(FAR_IP, 8001), T).unwrap();
    let b = udp_whoami(&con2, 40000, addr(FAR_IP, 8001), T).unwrap();
    assert_eq!(a, addr(UPLINK_IP, 40000), "the first keeps its port, as with iptables");
    assert!(b.ip() == a.ip() && (61000..=65535).contains(&b.port()), "the second gets one from the range: {b}");

    // conntrack ls shows the connections with their translation, and stats the table's use.
    let conns = json(&sb.bpfnet_ok(&["conntrack", "ls", "--json"]).unwrap());
    let conns = conns.as_array().unwrap();
    let tcp = conns
        .iter()
        .find(|c| c["protocol"] == "tcp" && c["original"]["dst"] == format!("{FAR_IP}:8000"))
        .expect("the TCP connection is tracked");
    assert!(tcp["original"]["src"].as_str().unwrap().starts_with("10.210.0.2:"), "{tcp}");
    let reply_dst = tcp["reply"]["dst"].as_str().unwrap();
    assert!(reply_dst.starts_with(&format!("{UPLINK_IP}:")), "replies come to the uplink address: {tcp}");
    assert_eq!(tcp["nat"], "masquerade");
    assert!(["CLOSING", "ESTABLISHED"].contains(&tcp["state"].as_str().unwrap()), "{tcp}");
    assert!(tcp["original_packets"].as_u64().unwrap() >= 3 && tcp["reply_packets"].as_u64().unwrap() >= 2, "{tcp}");
    assert!(conns.iter().any(|c| c["protocol"] == "icmp" && c["original"]["src"] == "10.210.0.2"), "ping tracked");
    let table = sb.bpfnet_ok(&["conntrack", "ls"]).unwrap();
    assert!(table.contains("masquerade") && table.contains(&format!("{FAR_IP}:8000")), "{table}");
    let stats = json(&sb.bpfnet_ok(&["stats", "--json"]).unwrap());
    assert!(stats["conntrack"]["entries"].as_u64().unwrap() >= 2 * conns.len() as u64 - 2, "{stats}");
    assert_eq!(stats["uplinks"][0]["interface"], "up0");
    assert!(counter(&sb, "nat_out") > 0 && counter(&sb, "nat_in") > 0);

    // Flush forgets them all.
    let flushed = sb.bpfnet_ok(&["conntrack", "flush"]).unwrap();
    assert!(flushed.contains("connections flushed"), "{flushed}");
    let after = json(&sb.bpfnet_ok(&["conntrack", "ls", "--json"]).unwrap());
    assert_eq!(after.as_array().unwrap().len(), 0, "{after}");

    // Disconnecting an endpoint forgets its connections.
    udp_whoami(&con2, 0, addr(FAR_IP, 8001), T).unwrap();
    sb.bpfnet_ok(&["network", "disconnect", "web", &con2]).unwrap();
    let left = json(&sb.bpfnet_ok(&["conntrack", "ls", "--json"]).unwrap());
    assert!(
        !left.as_array().unwrap().iter().any(|c| c["original"]["src"].as_str().unwrap().starts_with("10.210.0.3")),
        "{left}"
    );
    drop(outside);
    sb.cleanup();
}

#[test]
fn internal_and_unmasqueraded_networks_do_not_reach_the_outside() {
    let (mut sb, _outside) = with_outside("nomasq", &[]);
    let plain = sb.add_netns("plain").unwrap();
    let internal = sb.add_netns("internal").unwrap();
    sb.bpfnet_ok(&["network", "create", "plain", "--subnet", "10.211.0.0/24", "-o", "masquerade=false"]).unwrap();
    sb.bpfnet_ok(&["network", "create", "sealed", "--subnet", "10.212.0.0/24", "--internal"]).unwrap();
    sb.bpfnet_ok(&["network", "connect", "plain", &plain]).unwrap();
    sb.bpfnet_ok(&["network", "connect", "sealed", &internal]).unwrap();
    let inspect = json(&sb.bpfnet_ok(&["network", "ls", "--json"]).unwrap());
    let plain_net = inspect.as_array().unwrap().iter().find(|n| n["name"] == "plain").unwrap();
    assert_eq!(plain_net["masquerade"], false);

    // masquerade=false: the packet leaves untranslated and the outside cannot answer it.
    assert!(tcp_connect(&plain, addr(FAR_IP, 8000), BLOCKED).is_err(), "no masquerade, no answer");
    assert_eq!(counter(&sb, "nat_out"), 0);
    // --internal: the container gets no default route; one that adds its own is dropped at its
    // veth.
    let routes = sb.exec(&internal, &["ip", "route", "show", "default"]).unwrap().stdout;
    assert!(routes.trim().is_empty(), "{routes}");
    sb.exec(&internal, &["ip", "route", "add", "default", "via", "10.212.0.1"]).unwrap();
    let before = counter(&sb, "drop_internal");
    assert!(tcp_connect(&internal, addr(FAR_IP, 8000), BLOCKED).is_err());
    assert!(!sb.ping(&internal, FAR_IP).unwrap());
    assert!(counter(&sb, "drop_internal") > before);
    let conns = json(&sb.bpfnet_ok(&["conntrack", "ls", "--json"]).unwrap());
    assert_eq!(conns.as_array().unwrap().len(), 0, "nothing tracked: {conns}");
}

#[test]
fn path_mtu_discovery_and_fragmented_datagrams_work_through_masquerade() {
    let (sb, outside) = with_outside("pmtu", &[]);
    let mut sb = sb;
    let con = sb.add_netns("con").unwrap();
    sb.bpfnet_ok(&["network", "create", "web", "--subnet", "10.213.0.0/24"]).unwrap();
    sb.bpfnet_ok(&["network", "connect", "web", &con]).unwrap();

    // Full-size TCP segments with DF meet the 1280-byte hop: the router's "fragmentation
    // needed" must reach the container's stack, or this transfer stalls.
    let data = payload(3, 200_000);
    assert_eq!(tcp_exchange(&con, addr(FAR_IP, 7000), &data, Duration::from_secs(10)).unwrap(), data);
    assert!(counter(&sb, "nat_icmp_error") > 0, "the ICMP error was translated");
    let route = sb.exec(&con, &["ip", "route", "get", FAR_IP]).unwrap().stdout;
    assert!(route.contains("mtu 1280"), "the container learnt the path MTU: {route}");

    // A 4000-byte datagram leaves as fragments and comes back as fragments.
    let data = payload(4, 4000);
    assert_eq!(udp_exchange(&con, addr(FAR_IP, 7001), &data, T).unwrap(), data);

    // Time exceeded from the router reaches the container (traceroute through NAT).
    let out = sb.exec(&con, &["ping", "-c", "1", "-W", "1", "-t", "1", FAR_IP]).unwrap();
    assert!(out.stdout.contains("Time to live exceeded") || out.stdout.contains("Time exceeded"), "{}", out.stdout);
    drop(outside);
}

#[test]
fn masqueraded_connections_survive_daemon_restarts_and_crashes() {
    let (mut sb, _outside) = with_outside("ctrestart", &[]);
    let con = sb.add_netns("con").unwrap();
    sb.bpfnet_ok(&["network", "create", "web", "--subnet", "10.214.0.0/24"]).unwrap();
    sb.bpfnet_ok(&["network", "connect", "web", &con]).unwrap();
    let mut stream = tcp_connect(&con, addr(FAR_IP, 7000), T).unwrap();
    let data = payload(5, 5000);
    assert_eq!(tcp_round_trip(&mut stream, &data).unwrap(), data);

    sb.stop_daemon(libc::SIGTERM).unwrap();
    assert_eq!(tcp_round_trip(&mut stream, &data).unwrap(), data, "while the daemon is stopped");
    sb.start_daemon().unwrap();
    assert_eq!(tcp_round_trip(&mut stream, &data).unwrap(), data, "after a restart");
    sb.stop_daemon(libc::SIGKILL).unwrap();
    sb.start_daemon().unwrap();
    assert_eq!(tcp_round_trip(&mut stream, &data).unwrap(), data, "after a crash and a restart");
    // The connection is still the one tracked before the restarts.
    let conns = json(&sb.bpfnet_ok(&["conntrack", "ls", "--json"]).unwrap());
    let c = conns.as_array().unwrap().iter().find(|c| c["original"]["dst"] == format!("{FAR_IP}:7000")).unwrap();
    assert!(c["original_packets"].as_u64().unwrap() >= 8, "{c}");
}

#[test]
fn expired_connections_are_removed_and_the_uplink_can_be_named() {
    // --uplink names the interface; a short UDP lifetime lets the daemon expire a flow.
    let (sb, _outside) = with_outside("expire", &["--uplink", "up0", "--ct-timeout-udp", "2s", "--ct-max", "4096"]);
    let mut sb = sb;
    let con = sb.add_netns("con").unwrap();
    sb.bpfnet_ok(&["network", "create", "web", "--subnet", "10.215.0.0/24"]).unwrap();
    sb.bpfnet_ok(&["network", "connect", "web", &con]).unwrap();
    udp_whoami(&con, 0, addr(FAR_IP, 8001), T).unwrap();
    let conns = json(&sb.bpfnet_ok(&["conntrack", "ls", "--json"]).unwrap());
    let udp = conns.as_array().unwrap().iter().find(|c| c["protocol"] == "udp").expect("tracked").clone();
    assert!(udp["expires_in_s"].as_u64().unwrap() <= 2, "{udp}");
    assert_eq!(udp["state"], "REPLIED");
    let stats = json(&sb.bpfnet_ok(&["stats", "--json"]).unwrap());
    assert_eq!(stats["conntrack"]["max_entries"], 4096);
    // The expirer runs every 5 s.
    let deadline = std::time::Instant::now() + Duration::from_secs(12);
    loop {
        let conns = json(&sb.bpfnet_ok(&["conntrack", "ls", "--json"]).unwrap());
        if conns.as_array().unwrap().is_empty() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the flow was never expired: {conns}");
        std::thread::sleep(Duration::from_millis(500));
    }
    // A misnamed uplink stops the start with a clear error.
    sb.stop_daemon(libc::SIGTERM).unwrap();
    let out = sb
        .run_daemon_to_exit(
            &[
                "--uplink".as_ref(),
                "nosuch0".as_ref(),
                "--state-dir".as_ref(),
                sb.state_dir().as_os_str(),
                "--bpffs".as_ref(),
                sb.bpffs().as_os_str(),
                "--socket".as_ref(),
                sb.socket().as_os_str(),
            ],
            Duration::from_secs(20),
        )
        .unwrap();
    assert!(!out.ok);
    assert!(out.stderr.contains("--uplink nosuch0: there is no interface nosuch0"), "{}", out.stderr);
}

#[test]
fn published_ports_reach_containers_from_outside_and_from_other_containers() {
    let (mut sb, outside) = with_outside("publish", &[]);
    let web = sb.add_netns("web").unwrap();
    let other = sb.add_netns("other").unwrap();
    sb.bpfnet_ok(&["network", "create", "web", "--subnet", "10.216.0.0/24"]).unwrap();
    sb.bpfnet_ok(&["network", "create", "other", "--subnet", "10.217.0.0/24"]).unwrap();
    let out = sb.bpfnet_ok(&["network", "connect", "web", &web, "-p", "8080:80", "-p", "8081:81", "--publish", "5353:53/udp", "-p", "5354:54/udp"]).unwrap();
    assert!(out.contains("published 0.0.0.0:8080->80/tcp"), "{out}");
    sb.bpfnet_ok(&["network", "connect", "other", &other]).unwrap();
    tcp_whoami_server(&web, addr("10.216.0.2", 80)).unwrap();
    tcp_echo_server(&web, addr("10.216.0.2", 81)).unwrap();
    udp_whoami_server(&web, addr("10.216.0.2", 53)).unwrap();

    // From outside: the container sees the client's own address.
    let seen = tcp_whoami(&outside.far, addr(UPLINK_IP, 8080), T).unwrap();
    assert_eq!(seen.ip().to_string(), FAR_IP, "no proxy, no source NAT");
    let seen = udp_whoami(&outside.far, 0, addr(UPLINK_IP, 5353), T).unwrap();
    assert_eq!(seen.ip().to_string(), FAR_IP);
    let data = payload(6, 50_000);
    assert_eq!(tcp_exchange(&outside.far, addr(UPLINK_IP, 8081), &data, T).unwrap(), data);
    // Nobody listens on 54 in the container: its "port unreachable" comes back translated, so the
    // client's socket says "connection refused" (as through Docker's DNAT) instead of waiting.
    let icmp_before = counter(&sb, "nat_icmp_error");
    assert!(udp_refused(&outside.far, addr(UPLINK_IP, 5354), T).unwrap(), "connection refused");
    assert!(counter(&sb, "nat_icmp_error") > icmp_before);
    assert!(!udp_refused(&outside.far, addr(UPLINK_IP, 5353), T).unwrap(), "a listener answers");

    // From a container of another network, through the uplink's address and its own gateway;
    // and the publishing container through the host to itself.
    for (from, to) in [(&other, UPLINK_IP), (&other, "10.217.0.1"), (&web, UPLINK_IP), (&web, "10.216.0.1")] {
        let seen = tcp_whoami(from, addr(to, 8080), T).unwrap_or_else(|e| panic!("{from} -> {to}:8080: {e:#}"));
        assert_eq!(seen.ip().to_string(), "10.216.0.1", "hairpin arrives from the publisher's gateway");
        assert_eq!(tcp_exchange(from, addr(to, 8081), &data, T).unwrap(), data);
    }
    assert!(counter(&sb, "hairpin") > 0);

    // port ls, inspect and conntrack ls show them.
    let ports = json(&sb.bpfnet_ok(&["port", "ls", "--json"]).unwrap());
    let ports = ports.as_array().unwrap();
    assert_eq!(ports.len(), 4, "{ports:?}");
    assert!(ports.iter().any(|p| p["host"] == "0.0.0.0:5353" && p["protocol"] == "udp" && p["container"] == "10.216.0.2:53"));
    let table = sb.bpfnet_ok(&["port", "ls"]).unwrap();
    assert!(table.contains("0.0.0.0:8080") && table.contains("10.216.0.2:80"), "{table}");
    let inspect = json(&sb.bpfnet_ok(&["network", "inspect", "web"]).unwrap());
    let endpoint = inspect[0]["Containers"].as_object().unwrap().values().next().unwrap().clone();
    assert_eq!(endpoint["Ports"][0], "0.0.0.0:8080->80/tcp");
    let conns = json(&sb.bpfnet_ok(&["conntrack", "ls", "--json"]).unwrap());
    assert!(
        conns.as_array().unwrap().iter().any(|c| c["nat"] == "published" && c["original"]["src"].as_str().unwrap().starts_with(FAR_IP)),
        "{conns}"
    );

    // Clashes and bad specs are refused with a clear error, and change nothing.
    let third = sb.add_netns("third").unwrap();
    let before = bpfnet_lab::checks::snapshot(&sb);
    for (args, says) in [
        (vec!["-p", "8080:9"], "is already published by"),
        (vec!["-p", "8000-8090:1000-1090"], "0.0.0.0:8080->80/tcp is already published by"),
        (vec!["-p", "0:80"], "ports are 1-65535"),
        (vec!["-p", "70000:80"], "ports are 1-65535"),
        (vec!["-p", "9000-9001:80-82"], "2 host ports but 3 container ports"),
        (vec!["-p", "9000:80/sctp"], "unknown protocol \"sctp\""),
        (vec!["-p", "10.9.9.9:9000:80"], "10.9.9.9 is not an address of the daemon's namespace"),
        (vec!["-p", "9000:80", "-p", "9000:81"], "overlaps 0.0.0.0:9000->80/tcp"),
    ] {
        let mut full = vec!["network", "connect", "other", third.as_str()];
        full.extend(args.iter().copied());
        let r = sb.bpfnet(&full).unwrap();
        assert!(!r.ok && r.stderr.contains(says), "{args:?}: {}", r.stderr);
    }
    let held = sb.bpfnet(&["network", "connect", "other", &third, "-p", "8080:9"]).unwrap();
    assert!(held.stderr.contains(&web), "the error names the holder: {}", held.stderr);
    assert_eq!(bpfnet_lab::checks::snapshot(&sb), before, "a refused connect leaves nothing behind");
    // The same port on UDP, or on one specific address, is another port.
    sb.bpfnet_ok(&["network", "connect", "other", &third, "-p", "8080:9/udp", "-p", "192.0.2.1:6000:9"]).unwrap();

    // Disconnecting removes the ports and their connections.
    sb.bpfnet_ok(&["network", "disconnect", "web", &web]).unwrap();
    let ports = json(&sb.bpfnet_ok(&["port", "ls", "--json"]).unwrap());
    assert_eq!(ports.as_array().unwrap().len(), 2, "{ports}");
    assert!(tcp_connect(&outside.far, addr(UPLINK_IP, 8080), BLOCKED).is_err(), "the port is gone");
    let conns = json(&sb.bpfnet_ok(&["conntrack", "ls", "--json"]).unwrap());
    assert!(!conns.to_string().contains("10.216.0.2"), "{conns}");
}

#[test]
fn processes_of_the_host_reach_published_ports_and_only_in_the_daemons_namespace() {
    let (mut sb, outside) = with_outside("hostlocal", &[]);
    let log = std::fs::read_to_string(sb.daemon_log()).unwrap();
    assert!(log.contains("socket programs attached at"), "{log}");
    let web = sb.add_netns("web").unwrap();
    sb.bpfnet_ok(&["network", "create", "web", "--subnet", "10.218.0.0/24"]).unwrap();
    sb.bpfnet_ok(&["network", "connect", "web", &web, "-p", "8080:80", "-p", "8081:81", "-p", "5353:53/udp"]).unwrap();
    tcp_whoami_server(&web, addr("10.218.0.2", 80)).unwrap();
    tcp_echo_server(&web, addr("10.218.0.2", 81)).unwrap();
    udp_whoami_server(&web, addr("10.218.0.2", 53)).unwrap();
    let host = sb.host();

    // TCP to loopback, the uplink's address and a gateway: the container answers, and sees the
    // host by the address the host speaks to it from (its network's gateway).
    for to in ["127.0.0.1", UPLINK_IP, "10.218.0.1"] {
        let seen = tcp_whoami(&host, addr(to, 8080), T).unwrap_or_else(|e| panic!("host -> {to}:8080: {e:#}"));
        assert_eq!(seen.ip().to_string(), "10.218.0.1", "host -> {to}");
    }
    // The application sees the address it connected to (getpeername), and real payloads pass.
    let mut stream = tcp_connect(&host, addr("127.0.0.1", 8081), T).unwrap();
    assert_eq!(stream.peer_addr().unwrap(), addr("127.0.0.1", 8081));
    let data = payload(7, 30_000);
    assert_eq!(tcp_round_trip(&mut stream, &data).unwrap(), data);
    // UDP: the answer comes from the address the datagram was sent to (recvmsg).
    let seen = udp_whoami(&host, 0, addr("127.0.0.1", 5353), T).unwrap();
    assert_eq!(seen.ip().to_string(), "10.218.0.1");

    // Nothing else changes: a port nobody published, and the same port in another namespace.
    assert!(tcp_connect(&host, addr("127.0.0.1", 8082), BLOCKED).is_err());
    assert!(tcp_connect(&outside.ext, addr("127.0.0.1", 8080), BLOCKED).is_err(), "other namespaces are untouched");
    assert!(tcp_connect(&outside.ext, addr("192.0.2.2", 8080), BLOCKED).is_err());

    // A restart replaces the socket programs' links (never two of each) and keeps them working.
    sb.stop_daemon(libc::SIGTERM).unwrap();
    sb.start_daemon().unwrap();
    let pins: Vec<String> =
        std::fs::read_dir(sb.bpffs().join("sockets")).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    // connect, sendmsg, recvmsg and getpeername, for IPv4 and for IPv6: one link each.
    let mut kinds: Vec<&str> = pins.iter().map(|p| p.split('-').next().unwrap()).collect();
    kinds.sort();
    kinds.dedup();
    assert_eq!((pins.len(), kinds.len()), (8, 8), "{pins:?}");
    assert_eq!(tcp_whoami(&host, addr("127.0.0.1", 8080), T).unwrap().ip().to_string(), "10.218.0.1");
    // Disconnecting unpublishes for the host too.
    sb.bpfnet_ok(&["network", "disconnect", "web", &web]).unwrap();
    assert!(tcp_connect(&host, addr("127.0.0.1", 8080), BLOCKED).is_err());
}

/// Lets this process hold a few thousand sockets (clients and the echo servers' ends).
fn raise_open_files() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain getrlimit/setrlimit on a valid struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max.min(65_536);
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
}

#[test]
fn a_thousand_concurrent_connections_each_way_deliver_their_exact_payloads() {
    raise_open_files();
    let (mut sb, outside) = with_outside("thousand", &[]);
    let con = sb.add_netns("con").unwrap();
    sb.bpfnet_ok(&["network", "create", "web", "--subnet", "10.219.0.0/24"]).unwrap();
    sb.bpfnet_ok(&["network", "connect", "web", &con, "-p", "8081:81"]).unwrap();
    tcp_echo_server(&con, addr("10.219.0.2", 81)).unwrap();
    const N: usize = 1000;
    // All open at once: 1000 masqueraded out, 1000 to the published port in.
    let mut streams = Vec::with_capacity(2 * N);
    for i in 0..N {
        streams.push(tcp_connect(&con, addr(FAR_IP, 7000), T).unwrap_or_else(|e| panic!("outbound {i}: {e:#}")));
        streams.push(tcp_connect(&outside.far, addr(UPLINK_IP, 8081), T).unwrap_or_else(|e| panic!("inbound {i}: {e:#}")));
    }
    let conns = json(&sb.bpfnet_ok(&["conntrack", "ls", "--json"]).unwrap());
    assert!(conns.as_array().unwrap().len() >= 2 * N, "every connection is tracked: {}", conns.as_array().unwrap().len());
    for (i, stream) in streams.iter_mut().enumerate() {
        let data = payload(i as u8, 100 + i % 1400);
        let back = tcp_round_trip(stream, &data).unwrap_or_else(|e| panic!("connection {i}: {e:#}"));
        assert_eq!(back, data, "connection {i} got its own bytes back");
    }
    assert_eq!(counter(&sb, "drop_nat_no_port") + counter(&sb, "drop_ct_insert_failed"), 0);
}

#[test]
fn established_connections_survive_a_flood_that_overfills_the_connection_table() {
    // 4096 established entries, 1024 for new connections (512 connections); the flood makes 6000.
    let (mut sb, outside) = with_outside("flood", &["--ct-max", "4096"]);
    let con = sb.add_netns("con").unwrap();
    sb.bpfnet_ok(&["network", "create", "web", "--subnet", "10.220.0.0/24"]).unwrap();
    sb.bpfnet_ok(&["network", "connect", "web", &con, "-p", "8081:81"]).unwrap();
    tcp_echo_server(&con, addr("10.220.0.2", 81)).unwrap();
    let mut out = tcp_connect(&con, addr(FAR_IP, 7000), T).unwrap();
    let mut inbound = tcp_connect(&outside.far, addr(UPLINK_IP, 8081), T).unwrap();
    let data = payload(9, 2000);
    // A flood of new UDP flows from the container, each from its own port.
    for round in 0..60 {
        let sockets: Vec<std::net::UdpSocket> = (0..100)
            .map(|_| bpfnet_lab::netns::within(&con, || Ok(std::net::UdpSocket::bind("0.0.0.0:0")?)).unwrap())
            .collect();
        for s in &sockets {
            s.send_to(b"flood", addr(FAR_IP, 9999)).unwrap();
        }
        // The established connections are in use all along, as live connections are.
        assert_eq!(tcp_round_trip(&mut out, &data).unwrap(), data, "outbound, round {round}");
        assert_eq!(tcp_round_trip(&mut inbound, &data).unwrap(), data, "inbound, round {round}");
    }
    let stats = json(&sb.bpfnet_ok(&["stats", "--json"]).unwrap());
    let ct = &stats["conntrack"];
    assert_eq!((ct["max_entries"].as_u64(), ct["pending_max_entries"].as_u64()), (Some(4096), Some(1024)));
    // Unanswered, the flood's flows never left the table of new connections, which it filled;
    // the established table holds the two live connections.
    assert!(ct["pending_pressure_percent"].as_f64().unwrap() > 50.0, "the flood filled the new connections' table: {ct}");
    assert!(ct["entries"].as_u64().unwrap() <= 16, "{ct}");
    assert!(counter(&sb, "nat_out") >= 6000, "every flood flow was masqueraded");
    let shown = sb.bpfnet_ok(&["stats"]).unwrap();
    assert!(shown.contains("connection table:"), "{shown}");
}

#[test]
fn masquerade_follows_a_new_uplink_address() {
    let (mut sb, _outside) = with_outside("newaddr", &[]);
    let con = sb.add_netns("con").unwrap();
    sb.bpfnet_ok(&["network", "create", "web", "--subnet", "10.221.0.0/24"]).unwrap();
    sb.bpfnet_ok(&["network", "connect", "web", &con]).unwrap();
    assert_eq!(tcp_whoami(&con, addr(FAR_IP, 8000), T).unwrap().ip().to_string(), UPLINK_IP);
    // The uplink's address changes (as after a new DHCP lease).
    let host = sb.host();
    for args in [
        vec!["addr", "flush", "dev", "up0"],
        vec!["addr", "add", "192.0.2.9/24", "dev", "up0"],
        vec!["route", "add", "default", "via", "192.0.2.2"],
    ] {
        let mut all = vec!["-n", host.as_str()];
        all.extend(args);
        bpfnet_lab::sandbox::run_ok("ip", &all).unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let stats = json(&sb.bpfnet_ok(&["stats", "--json"]).unwrap());
        if stats["uplinks"][0]["address"] == "192.0.2.9" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the new address was not taken: {stats}");
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(tcp_whoami(&con, addr(FAR_IP, 8000), T).unwrap().ip().to_string(), "192.0.2.9");
    let log = std::fs::read_to_string(sb.daemon_log()).unwrap();
    assert!(log.contains("uplink up0 now has address 192.0.2.9"), "{log}");
}
