//! End-to-end tests: the real daemon in a private "host" namespace, containers as namespaces,
//! real TCP/UDP/ICMP traffic. Each test builds its own sandbox; its Drop removes it, also when the
//! test fails. Needs root.
use std::time::{Duration, Instant};

use bpfnet_lab::{
    checks::{addr, counter, json, map_dumps, snapshot},
    sandbox::{run_ok, DaemonOptions},
    traffic::{payload, tcp_connect, tcp_echo_server, tcp_exchange, tcp_round_trip, udp_echo_server, udp_exchange},
    Sandbox,
};

const T: Duration = Duration::from_secs(2);
/// How long to wait for traffic that must NOT arrive.
const BLOCKED: Duration = Duration::from_millis(700);

/// The reference scenario: backend {con1, con2}, frontend {con3, con2 (eth1)}.
struct Reference {
    sb: Sandbox,
    con1: String,
    con2: String,
    con3: String,
}

fn reference(tag: &str) -> Reference {
    let mut sb = Sandbox::new(tag).unwrap();
    sb.start_daemon().unwrap();
    let con1 = sb.add_netns("con1").unwrap();
    let con2 = sb.add_netns("con2").unwrap();
    let con3 = sb.add_netns("con3").unwrap();
    sb.bpfnet_ok(&["network", "create", "backend", "--subnet", "10.201.1.0/24"]).unwrap();
    sb.bpfnet_ok(&["network", "create", "frontend", "--subnet", "10.201.2.0/24"]).unwrap();
    sb.bpfnet_ok(&["network", "connect", "backend", &con1]).unwrap(); // 10.201.1.2
    sb.bpfnet_ok(&["network", "connect", "backend", &con2]).unwrap(); // 10.201.1.3
    sb.bpfnet_ok(&["network", "connect", "frontend", &con3]).unwrap(); // 10.201.2.2
    sb.bpfnet_ok(&["network", "connect", "frontend", &con2]).unwrap(); // 10.201.2.3 on eth1
    Reference { sb, con1, con2, con3 }
}

#[test]
fn reference_scenario_forwards_tcp_udp_and_isolates_networks() {
    let Reference { sb, con1, con2, con3 } = reference("ref");

    // Plumbing: con2 got eth0 (backend) then eth1 (frontend), default route via backend's gateway.
    let con2_addrs = sb.exec(&con2, &["ip", "-br", "-4", "addr"]).unwrap().stdout;
    assert!(con2_addrs.lines().any(|l| l.starts_with("eth0") && l.contains("10.201.1.3/24")), "{con2_addrs}");
    assert!(con2_addrs.lines().any(|l| l.starts_with("eth1") && l.contains("10.201.2.3/24")), "{con2_addrs}");
    let routes = sb.exec(&con2, &["ip", "route", "show", "default"]).unwrap().stdout;
    assert!(routes.contains("default via 10.201.1.1 dev eth0"), "{routes}");
    let mac = sb.exec(&con1, &["cat", "/sys/class/net/eth0/address"]).unwrap().stdout;
    assert_eq!(mac.trim(), "02:42:0a:c9:01:02", "MAC derived from the address");

    for (ns, ip) in [(&con1, "10.201.1.2"), (&con2, "10.201.1.3"), (&con2, "10.201.2.3"), (&con3, "10.201.2.2")] {
        tcp_echo_server(ns, addr(ip, 7000)).unwrap();
        udp_echo_server(ns, addr(ip, 7001)).unwrap();
    }

    // Must pass: same-network pairs, both directions, TCP and UDP with real payloads.
    let allowed = [
        (&con1, "10.201.1.3"),
        (&con2, "10.201.1.2"),
        (&con2, "10.201.2.2"),
        (&con3, "10.201.2.3"),
    ];
    for (i, (from, to)) in allowed.iter().enumerate() {
        let data = payload(i as u8, 3000);
        assert_eq!(tcp_exchange(from, addr(to, 7000), &data, T).unwrap(), data, "TCP {from} -> {to}");
        let data = payload(100 + i as u8, 1200);
        assert_eq!(udp_exchange(from, addr(to, 7001), &data, T).unwrap(), data, "UDP {from} -> {to}");
    }
    // Gateways answer, and the host reaches every container.
    assert!(sb.ping(&con1, "10.201.1.1").unwrap());
    assert!(sb.ping(&con3, "10.201.2.1").unwrap());
    for ip in ["10.201.1.2", "10.201.1.3", "10.201.2.2", "10.201.2.3"] {
        assert!(sb.ping(&sb.host(), ip).unwrap(), "host -> {ip}");
    }

    // Must be dropped: con1 <-> con3 (different networks), also con3 -> con2's backend address.
    let before = counter(&sb, "drop_isolation");
    for (from, to) in [(&con1, "10.201.2.2"), (&con3, "10.201.1.2"), (&con3, "10.201.1.3")] {
        assert!(tcp_exchange(from, addr(to, 7000), b"x", BLOCKED).is_err(), "TCP {from} -> {to} must fail");
        assert!(udp_exchange(from, addr(to, 7001), b"x", BLOCKED).is_err(), "UDP {from} -> {to} must fail");
        assert!(!sb.ping(from, to).unwrap(), "ping {from} -> {to} must fail");
    }
    assert!(counter(&sb, "drop_isolation") >= before + 9, "isolation drops are counted");
    assert!(counter(&sb, "redirected") > 0);
    assert!(counter(&sb, "arp_replied") > 0);

    // Inspect is shaped like docker's.
    let inspect = json(&sb.bpfnet_ok(&["network", "inspect", "backend"]).unwrap());
    let net = &inspect[0];
    assert_eq!(net["Name"], "backend");
    assert_eq!(net["Driver"], "bpfnet");
    assert_eq!(net["IPAM"]["Config"][0]["Subnet"], "10.201.1.0/24");
    assert_eq!(net["IPAM"]["Config"][0]["Gateway"], "10.201.1.1");
    let containers = net["Containers"].as_object().unwrap();
    assert_eq!(containers.len(), 2);
    let c1 = containers.values().find(|c| c["Name"] == con1.as_str()).expect("con1 listed");
    assert_eq!(c1["IPv4Address"], "10.201.1.2/24");
    assert_eq!(c1["MacAddress"], "02:42:0a:c9:01:02");
    assert_eq!(c1["EndpointID"].as_str().unwrap().len(), 64);
    let ls = json(&sb.bpfnet_ok(&["network", "ls", "--json"]).unwrap());
    assert_eq!(ls.as_array().unwrap().len(), 2);

    // No bridge and no iptables rule anywhere in the sandbox's host namespace.
    let links = sb.exec(&sb.host(), &["ip", "-d", "link"]).unwrap().stdout;
    assert!(!links.contains("bridge"), "{links}");
    let rules = sb.exec(&sb.host(), &["iptables-save"]).unwrap().stdout;
    assert!(!rules.lines().any(|l| l.starts_with("-A")), "{rules}");
}

#[test]
fn namespaces_can_be_named_by_pid_or_path_and_the_api_socket_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let mut sb = Sandbox::new("pid").unwrap();
    sb.start_daemon().unwrap();
    let mode = std::fs::metadata(sb.socket()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "API socket mode");
    let a = sb.add_netns("a").unwrap();
    let b = sb.add_netns("b").unwrap();
    // A process living in namespace b, named by its PID.
    let mut sleeper = std::process::Command::new("ip")
        .args(["netns", "exec", &b, "sleep", "60"])
        .spawn()
        .unwrap();
    let pid = sleeper.id().to_string();
    sb.bpfnet_ok(&["network", "create", "n", "--subnet", "10.212.0.0/24"]).unwrap();
    let path = format!("/run/netns/{a}");
    sb.bpfnet_ok(&["network", "connect", "n", &path]).unwrap();
    // `ip netns exec` setns()es before exec: wait until the PID's namespace is b's.
    let b_ino = std::fs::metadata(format!("/run/netns/{b}")).map(|m| std::os::unix::fs::MetadataExt::ino(&m)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::metadata(format!("/proc/{pid}/ns/net")).map(|m| std::os::unix::fs::MetadataExt::ino(&m)).ok() != Some(b_ino) {
        assert!(Instant::now() < deadline, "sleeper never entered {b}");
        std::thread::sleep(Duration::from_millis(20));
    }
    sb.bpfnet_ok(&["network", "connect", "n", &pid]).unwrap();
    assert!(sb.ping(&a, "10.212.0.3").unwrap(), "path-named a reaches PID-named b");
    // Disconnect by another name of the same namespace.
    sb.bpfnet_ok(&["network", "disconnect", "n", &b]).unwrap();
    assert!(!sb.ping(&a, "10.212.0.3").unwrap());
    sleeper.kill().ok();
    sleeper.wait().ok();
}

#[test]
fn icc_false_blocks_containers_but_not_the_gateway() {
    let mut sb = Sandbox::new("icc").unwrap();
    sb.start_daemon().unwrap();
    let a = sb.add_netns("a").unwrap();
    let b = sb.add_netns("b").unwrap();
    sb.bpfnet_ok(&["network", "create", "quiet", "--subnet", "10.202.0.0/24", "-o", "icc=false"]).unwrap();
    sb.bpfnet_ok(&["network", "connect", "quiet", &a]).unwrap();
    sb.bpfnet_ok(&["network", "connect", "quiet", &b]).unwrap();
    tcp_echo_server(&b, addr("10.202.0.3", 7000)).unwrap();
    udp_echo_server(&b, addr("10.202.0.3", 7001)).unwrap();

    assert!(tcp_exchange(&a, addr("10.202.0.3", 7000), b"x", BLOCKED).is_err());
    assert!(udp_exchange(&a, addr("10.202.0.3", 7001), b"x", BLOCKED).is_err());
    assert!(counter(&sb, "drop_icc") >= 2);
    assert!(sb.ping(&a, "10.202.0.1").unwrap(), "gateway reachable with icc=false");
    assert!(sb.ping(&b, "10.202.0.1").unwrap());
    let ls = json(&sb.bpfnet_ok(&["network", "ls", "--json"]).unwrap());
    assert_eq!(ls[0]["icc"], false);

    // Without --subnet: the first free /16 of Docker's default pool, gateway on its first address.
    sb.bpfnet_ok(&["network", "create", "auto1"]).unwrap();
    sb.bpfnet_ok(&["network", "create", "auto2", "--internal"]).unwrap();
    for (name, subnet, gateway) in [("auto1", "172.17.0.0/16", "172.17.0.1"), ("auto2", "172.18.0.0/16", "172.18.0.1")] {
        let net = json(&sb.bpfnet_ok(&["network", "inspect", name]).unwrap());
        assert_eq!(net[0]["IPAM"]["Config"][0]["Subnet"], subnet);
        assert_eq!(net[0]["IPAM"]["Config"][0]["Gateway"], gateway);
    }
    let c = sb.add_netns("c").unwrap();
    sb.bpfnet_ok(&["network", "connect", "auto1", &c]).unwrap();
    assert!(sb.ping(&c, "172.17.0.1").unwrap());
}

#[test]
fn internal_network_reaches_only_its_own_members_and_gateway() {
    let mut sb = Sandbox::new("int").unwrap();
    sb.start_daemon().unwrap();
    let a = sb.add_netns("a").unwrap();
    let b = sb.add_netns("b").unwrap();
    let o = sb.add_netns("o").unwrap();
    sb.bpfnet_ok(&["network", "create", "inner", "--subnet", "10.210.0.0/24", "--internal"]).unwrap();
    sb.bpfnet_ok(&["network", "create", "outer", "--subnet", "10.211.0.0/24"]).unwrap();
    sb.bpfnet_ok(&["network", "connect", "inner", &a]).unwrap();
    sb.bpfnet_ok(&["network", "connect", "inner", &b]).unwrap();
    sb.bpfnet_ok(&["network", "connect", "outer", &o]).unwrap();
    let routes = sb.exec(&a, &["ip", "route", "show", "default"]).unwrap().stdout;
    assert!(routes.trim().is_empty(), "an internal network gives no default route: {routes}");
    assert!(sb.ping(&a, "10.210.0.3").unwrap(), "members talk to each other");
    assert!(sb.ping(&a, "10.210.0.1").unwrap(), "and to their gateway");
    // Leaving the network (here: another network's gateway, a host address) is dropped.
    sb.exec(&a, &["ip", "route", "add", "10.211.0.0/24", "via", "10.210.0.1"]).unwrap();
    assert!(!sb.ping(&a, "10.211.0.1").unwrap());
    assert!(counter(&sb, "drop_internal") >= 1);
    // A non-internal network may reach host addresses, as with Docker.
    sb.exec(&o, &["ip", "route", "add", "10.210.0.0/24", "via", "10.211.0.1"]).unwrap();
    assert!(sb.ping(&o, "10.210.0.1").unwrap());
}

#[test]
fn disconnect_and_reconnect() {
    let mut sb = Sandbox::new("dis").unwrap();
    sb.start_daemon().unwrap();
    let a = sb.add_netns("a").unwrap();
    let b = sb.add_netns("b").unwrap();
    sb.bpfnet_ok(&["network", "create", "net1", "--subnet", "10.203.0.0/24"]).unwrap();
    sb.bpfnet_ok(&["network", "connect", "net1", &a]).unwrap();
    sb.bpfnet_ok(&["network", "connect", "net1", &b, "--ip", "10.203.0.50"]).unwrap();
    tcp_echo_server(&b, addr("0.0.0.0", 7000)).unwrap();
    assert_eq!(tcp_exchange(&a, addr("10.203.0.50", 7000), b"one", T).unwrap(), b"one");

    let err = sb.bpfnet(&["network", "rm", "net1"]).unwrap();
    assert!(!err.ok && err.stderr.contains("active endpoints"), "{}", err.stderr);

    sb.bpfnet_ok(&["network", "disconnect", "net1", &b]).unwrap();
    let links = sb.exec(&b, &["ip", "-br", "link"]).unwrap().stdout;
    assert!(!links.contains("eth0"), "interface removed: {links}");
    assert!(tcp_exchange(&a, addr("10.203.0.50", 7000), b"x", BLOCKED).is_err());
    let again = sb.bpfnet(&["network", "disconnect", "net1", &b]).unwrap();
    assert!(!again.ok && again.stderr.contains("is not connected"), "{}", again.stderr);

    // Reconnect with the same address; the server (bound to 0.0.0.0 in b) is reachable again.
    sb.bpfnet_ok(&["network", "connect", "net1", &b, "--ip", "10.203.0.50"]).unwrap();
    assert_eq!(tcp_exchange(&a, addr("10.203.0.50", 7000), b"two", T).unwrap(), b"two");
    let routes = sb.exec(&b, &["ip", "route", "show", "default"]).unwrap().stdout;
    assert!(routes.contains("via 10.203.0.1"), "{routes}");

    sb.bpfnet_ok(&["network", "disconnect", "net1", &a]).unwrap();
    sb.bpfnet_ok(&["network", "disconnect", "net1", &b]).unwrap();
    sb.bpfnet_ok(&["network", "rm", "net1"]).unwrap();
    assert_eq!(sb.bpfnet_ok(&["network", "ls", "--json"]).unwrap().trim(), "[]");
    let lo = sb.exec(&sb.host(), &["ip", "-4", "addr", "show", "dev", "lo"]).unwrap().stdout;
    assert!(!lo.contains("10.203.0.1"), "gateway address removed with the network: {lo}");
}

#[test]
fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let mut sb = Sandbox::new("bad").unwrap();
    sb.start_daemon().unwrap();
    let a = sb.add_netns("a").unwrap();
    let b = sb.add_netns("b").unwrap();
    let c = sb.add_netns("c").unwrap();
    sb.bpfnet_ok(&["network", "create", "tiny", "--subnet", "10.204.0.0/30"]).unwrap();
    sb.bpfnet_ok(&["network", "create", "big", "--subnet", "10.205.0.0/24"]).unwrap();
    sb.bpfnet_ok(&["network", "connect", "tiny", &a]).unwrap(); // takes the only address, .2
    sb.bpfnet_ok(&["network", "connect", "big", &a, "--ip", "10.205.0.9"]).unwrap();
    // c already has an eth0 of its own: creating the endpoint's veth pair fails.
    run_ok("ip", &["-n", &c, "link", "add", "eth0", "type", "veth", "peer", "name", "other0"]).unwrap();
    // The host namespace already routes 10.99.0.0/16 (say, to a VPN): no network may take it.
    let host = sb.host();
    run_ok("ip", &["-n", &host, "link", "add", "vpn0", "type", "veth", "peer", "name", "vpn1"]).unwrap();
    run_ok("ip", &["-n", &host, "link", "set", "vpn0", "up"]).unwrap();
    run_ok("ip", &["-n", &host, "route", "add", "10.99.0.0/16", "dev", "vpn0"]).unwrap();

    let before = snapshot(&sb);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["network", "create", "x", "--subnet", "10.206.0.0"], "prefix length"),
        (vec!["network", "create", "x", "--subnet", "10.206.0.1/24"], "host bits are set"),
        (vec!["network", "create", "x", "--subnet", "300.1.0.0/16"], "invalid subnet"),
        (vec!["network", "create", "x", "--subnet", "10.205.0.128/25"], "overlaps with network \"big\""),
        (vec!["network", "create", "x", "--subnet", "10.99.0.0/16"], "which the host already routes"),
        (vec!["network", "create", "x", "--subnet", "127.1.0.0/16"], "reserved for loopback"),
        (vec!["network", "create", "x", "--subnet", "10.206.0.0/24", "--gateway", "10.207.0.1"], "outside the subnet"),
        (vec!["network", "create", "x", "--subnet", "10.206.0.0/24", "-o", "icc=maybe"], "invalid value"),
        (vec!["network", "create", "x", "--subnet", "10.206.0.0/24", "-o", "mtu=1400"], "unknown network option"),
        (vec!["network", "create", "x", "--subnet", "10.206.0.0/24", "--ip-range", "10.207.0.0/25"], "not inside the subnet"),
        (vec!["network", "create", "x", "--subnet", "10.206.0.0/24", "--ip-range", "10.206.0.1/25"], "host bits"),
        (vec!["network", "create", "x y"], "invalid network name"),
        (vec!["network", "create", "big", "--subnet", "10.206.0.0/24"], "already exists"),
        (vec!["network", "rm", "big"], "active endpoints"),
        (vec!["network", "rm", "nonet"], "not found"),
        (vec!["network", "inspect", "nonet"], "not found"),
        (vec!["network", "connect", "nonet", &b], "network \"nonet\" not found"),
        (vec!["network", "connect", "big", "bpfnetlab-no-such-ns"], "does not exist"),
        (vec!["network", "connect", "big", &b, "--ip", "10.206.0.5"], "outside the subnet"),
        (vec!["network", "connect", "big", &b, "--ip", "10.205.0.9"], "already in use"),
        (vec!["network", "connect", "big", &b, "--ip", "10.205.0.1"], "gateway"),
        (vec!["network", "connect", "big", &b, "--ip", "10.205.0.255"], "broadcast"),
        (vec!["network", "connect", "tiny", &b], "no free address"),
        (vec!["network", "connect", "big", &a], "already connected"),
        (vec!["network", "connect", "big", &c], "eth0 in"),
        (vec!["network", "disconnect", "big", &b], "not connected"),
    ];
    for (args, expected) in &cases {
        let r = sb.bpfnet(args).unwrap();
        assert!(!r.ok, "{args:?} must fail");
        assert!(r.stderr.contains(expected), "{args:?}: expected {expected:?} in: {}", r.stderr);
        assert!(r.stderr.starts_with("Error: "), "{args:?}: {}", r.stderr);
        assert_eq!(snapshot(&sb), before, "{args:?} left something behind");
    }
    // The failed connect left nothing in c either (its own eth0 is untouched, no bpfnet address).
    let c_addrs = sb.exec(&c, &["ip", "-br", "-4", "addr"]).unwrap().stdout;
    assert!(!c_addrs.contains("10.205"), "{c_addrs}");
    // The daemon is still healthy and the address pool intact: b gets the next free address.
    let created = json(&sb.bpfnet_ok(&["network", "connect", "big", &b, "--json"]).unwrap());
    assert_eq!(created["ipv4_address"], "10.205.0.2/24");
}

#[test]
fn daemon_restart_keeps_open_connections_and_state() {
    let mut sb = Sandbox::new("rst").unwrap();
    sb.start_daemon().unwrap();
    let a = sb.add_netns("a").unwrap();
    let b = sb.add_netns("b").unwrap();
    sb.bpfnet_ok(&["network", "create", "keep", "--subnet", "10.208.0.0/24"]).unwrap();
    sb.bpfnet_ok(&["network", "connect", "keep", &a]).unwrap();
    sb.bpfnet_ok(&["network", "connect", "keep", &b]).unwrap();
    tcp_echo_server(&b, addr("10.208.0.3", 7000)).unwrap();
    let mut conn = tcp_connect(&a, addr("10.208.0.3", 7000), T).unwrap();
    assert_eq!(tcp_round_trip(&mut conn, b"before").unwrap(), b"before");
    let inspect_before = sb.bpfnet_ok(&["network", "inspect", "keep"]).unwrap();

    // Stopped daemon: the pinned datapath keeps forwarding, old and new connections alike.
    sb.stop_daemon(libc::SIGTERM).unwrap();
    assert_eq!(tcp_round_trip(&mut conn, b"while stopped").unwrap(), b"while stopped");
    assert_eq!(tcp_exchange(&a, addr("10.208.0.3", 7000), b"new", T).unwrap(), b"new");

    sb.start_daemon().unwrap();
    assert_eq!(tcp_round_trip(&mut conn, b"after restart").unwrap(), b"after restart");
    assert_eq!(sb.bpfnet_ok(&["network", "inspect", "keep"]).unwrap(), inspect_before, "state survived");

    // A crash in the middle of a connect (right after the veth is made, before anything is
    // recorded): the next start removes the unrecorded veth, and the connection lives on.
    sb.stop_daemon(libc::SIGTERM).unwrap();
    sb.start_daemon_with_env(&[("BPFNET_TEST_CRASH_AFTER", "veth")]).unwrap();
    let d = sb.add_netns("d").unwrap();
    assert!(!sb.bpfnet(&["network", "connect", "keep", &d]).unwrap().ok, "the daemon dies mid-request");
    assert!(!sb.wait_daemon_exit().unwrap().success());
    let host = sb.host();
    let host_links = || run_ok("ip", &["-n", &host, "-br", "link"]).unwrap();
    assert_eq!(host_links().lines().count(), 4, "lo, two endpoints and the orphan: {}", host_links());
    assert!(sb.exec(&d, &["ip", "link", "show", "eth0"]).unwrap().ok, "the crash left d's eth0");
    sb.start_daemon().unwrap();
    assert_eq!(host_links().lines().count(), 3, "orphan removed: {}", host_links());
    assert!(!sb.exec(&d, &["ip", "link", "show", "eth0"]).unwrap().ok, "and its container side");
    assert_eq!(tcp_round_trip(&mut conn, b"after a crash").unwrap(), b"after a crash");
    // d can connect now (eth0 is free again).
    sb.bpfnet_ok(&["network", "connect", "keep", &d]).unwrap();

    // A plain crash (SIGKILL) and restart: the reconciler converges and the connection lives on.
    sb.stop_daemon(libc::SIGKILL).unwrap();
    sb.start_daemon().unwrap();
    assert_eq!(tcp_round_trip(&mut conn, b"after crash").unwrap(), b"after crash");
    let c = sb.add_netns("c").unwrap();
    sb.bpfnet_ok(&["network", "connect", "keep", &c]).unwrap();
    assert_eq!(tcp_exchange(&c, addr("10.208.0.3", 7000), b"newcomer", T).unwrap(), b"newcomer");
}

#[test]
fn endpoints_of_a_deleted_namespace_are_removed() {
    let mut sb = Sandbox::new("gone").unwrap();
    sb.start_daemon().unwrap();
    let a = sb.add_netns("a").unwrap();
    sb.bpfnet_ok(&["network", "create", "n", "--subnet", "10.209.0.0/24"]).unwrap();
    sb.bpfnet_ok(&["network", "connect", "n", &a]).unwrap();
    sb.delete_netns("a").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let inspect = json(&sb.bpfnet_ok(&["network", "inspect", "n"]).unwrap());
        if inspect[0]["Containers"].as_object().unwrap().is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "endpoint not collected: {inspect}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Nothing of it is left in the datapath's maps.
    let maps = map_dumps(&sb);
    assert_eq!(maps, "ENDPOINTS:\nFound 0 elements\nIFACES:\nFound 0 elements\nPORTS:\nFound 0 elements\n", "{maps}");
    // Its address is free again.
    let b = sb.add_netns("b").unwrap();
    let created = json(&sb.bpfnet_ok(&["network", "connect", "n", &b, "--json"]).unwrap());
    assert_eq!(created["ipv4_address"], "10.209.0.2/24");
}

#[test]
fn cleanup_removes_everything_bpfnet_created() {
    let Reference { mut sb, con1, .. } = reference("cln");
    sb.stop_daemon(libc::SIGTERM).unwrap();
    let (state, bpffs) = (sb.state_dir(), sb.bpffs());
    let r = sb.daemon_cleanup().unwrap();
    assert!(r.ok, "{}", r.stderr);
    let links = sb.exec(&sb.host(), &["ip", "-br", "link"]).unwrap().stdout;
    assert_eq!(links.lines().count(), 1, "only lo is left: {links}");
    let lo = sb.exec(&sb.host(), &["ip", "-4", "addr", "show", "dev", "lo"]).unwrap().stdout;
    assert!(!lo.contains("10.201"), "gateway addresses removed: {lo}");
    assert!(!sb.exec(&con1, &["ip", "link", "show", "eth0"]).unwrap().ok, "container side removed");
    assert!(!bpffs.exists(), "pins and bpffs mount removed");
    assert!(!state.exists(), "state removed");
}

#[test]
fn the_daemon_logs_every_change_and_with_trace_every_packets_fate() {
    let mut sb = Sandbox::new("log").unwrap();
    sb.start_daemon_with(&DaemonOptions { args: &["--trace"], ..Default::default() }).unwrap();
    let a = sb.add_netns("a").unwrap();
    let b = sb.add_netns("b").unwrap();
    let c = sb.add_netns("c").unwrap();
    sb.bpfnet_ok(&["network", "create", "n1", "--subnet", "10.228.0.0/24"]).unwrap();
    sb.bpfnet_ok(&["network", "create", "n2", "--subnet", "10.228.1.0/24"]).unwrap();
    sb.bpfnet_ok(&["network", "connect", "n1", &a]).unwrap();
    sb.bpfnet_ok(&["network", "connect", "n1", &b]).unwrap();
    sb.bpfnet_ok(&["network", "connect", "n2", &c]).unwrap();
    assert!(sb.ping(&a, "10.228.0.3").unwrap());
    assert!(!sb.ping(&a, "10.228.1.2").unwrap());
    sb.bpfnet_ok(&["network", "disconnect", "n1", &b]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let log = std::fs::read_to_string(sb.daemon_log()).unwrap();
    for expected in [
        "network n1 created: subnet 10.228.0.0/24, gateway 10.228.0.1",
        &format!("connected: {a} eth0 10.228.0.2/24 on network n1"),
        &format!("disconnected: {b} eth0 10.228.0.3 from network n1"),
        ": 10.228.0.2 -> 10.228.0.3 protocol 1",
        ": 10.228.0.3 -> 10.228.0.2 protocol 1",
        ": 10.228.0.2 -> 10.228.1.2 protocol 1",
    ] {
        assert!(log.contains(expected), "{expected:?} not in the log:\n{log}");
    }
    assert!(log.lines().any(|l| l.contains("datapath: redirected on ifindex") && l.contains("10.228.0.2 -> 10.228.0.3")), "{log}");
    assert!(log.lines().any(|l| l.contains("datapath: drop_isolation on ifindex") && l.contains("10.228.0.2 -> 10.228.1.2")), "{log}");

    // Off by default: the same traffic logs nothing.
    sb.stop_daemon(libc::SIGTERM).unwrap();
    sb.start_daemon().unwrap();
    let traced = |sb: &Sandbox| std::fs::read_to_string(sb.daemon_log()).unwrap().matches("datapath:").count();
    let before = traced(&sb);
    assert!(!sb.ping(&a, "10.228.1.2").unwrap());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(traced(&sb), before, "no trace without --trace");
}
