//! IPv6 end to end (dual-stack networks on one host): the real daemon in a private "host"
//! namespace, containers as namespaces, real TCP/UDP/ICMPv6 traffic between them, to their
//! gateway and from the host; what must be dropped is, and counted; bad input is refused with
//! nothing changed. Needs root.
use std::time::Duration;

use bpfnet_lab::{
    checks::{addr, assert_consistent, counter, json},
    sandbox::{FAR_IP6, UPLINK_IP6},
    traffic::{
        payload, spread, tcp_connect, tcp_echo_server, tcp_exchange, tcp_name_server, tcp_whoami, tcp_whoami_server, udp_echo_server,
        udp_exchange, udp_refused, udp_whoami, udp_whoami_server,
    },
    Sandbox,
};

const T: Duration = Duration::from_secs(2);
/// How long to wait for traffic that must NOT arrive.
const BLOCKED: Duration = Duration::from_millis(700);

fn ping6(sb: &Sandbox, ns: &str, ip: &str) -> bool {
    sb.exec(ns, &["ping", "-6", "-c", "1", "-W", "1", "-q", ip]).unwrap().ok
}

/// `network connect NET NS [extra] --json`: the endpoint's (IPv4, IPv6) addresses.
fn connect(sb: &Sandbox, net: &str, ns: &str, extra: &[&str]) -> (String, String) {
    let mut args = vec!["network", "connect", net, ns, "--json"];
    args.extend_from_slice(extra);
    let out = json(&sb.bpfnet_ok(&args).unwrap());
    let bare = |key: &str| out[key].as_str().unwrap_or_default().split('/').next().unwrap().to_string();
    (bare("ipv4_address"), bare("ipv6_address"))
}

#[test]
fn dual_stack_networks_forward_ipv6_between_containers_and_isolate_them() {
    let mut sb = Sandbox::new("v6").unwrap();
    sb.start_daemon().unwrap();
    let a = sb.add_netns("a").unwrap();
    let b = sb.add_netns("b").unwrap();
    let c = sb.add_netns("c").unwrap();
    let d = sb.add_netns("d").unwrap();
    sb.bpfnet_ok(&["network", "create", "dual", "--subnet", "10.220.0.0/24", "--subnet", "fd00:220::/64"]).unwrap();
    // --ipv6 alone: the first /64 of the default pool.
    sb.bpfnet_ok(&["network", "create", "pooled", "--subnet", "10.221.0.0/24", "--ipv6"]).unwrap();
    sb.bpfnet_ok(&["network", "create", "v4only", "--subnet", "10.222.0.0/24"]).unwrap();
    assert_eq!(connect(&sb, "dual", &a, &[]), ("10.220.0.2".into(), "fd00:220::2".into()));
    assert_eq!(connect(&sb, "dual", &b, &["--ip6", "fd00:220::50"]), ("10.220.0.3".into(), "fd00:220::50".into()));
    assert_eq!(connect(&sb, "pooled", &c, &[]), ("10.221.0.2".into(), "fd62:7066::2".into()));
    assert_eq!(connect(&sb, "v4only", &d, &[]), ("10.222.0.2".into(), String::new()));

    // The container side: the address usable at once (no duplicate address detection pending),
    // the default route through the gateway, the link-local address from the MAC.
    let addrs = sb.exec(&a, &["ip", "-6", "-o", "addr", "show", "dev", "eth0"]).unwrap().stdout;
    let global = addrs.lines().find(|l| l.contains("fd00:220::2/64")).unwrap_or_else(|| panic!("{addrs}"));
    assert!(!global.contains("tentative"), "{addrs}");
    assert!(addrs.contains("fe80::42:aff:fedc:2/64"), "{addrs}");
    let routes = sb.exec(&a, &["ip", "-6", "route", "show", "default"]).unwrap().stdout;
    assert!(routes.contains("default via fd00:220::1 dev eth0"), "{routes}");
    let none = sb.exec(&d, &["ip", "-6", "-o", "addr", "show", "dev", "eth0"]).unwrap().stdout;
    assert!(none.trim().is_empty(), "an IPv4-only network's endpoint has no IPv6: {none}");

    // Between containers of the network, both ways, TCP and UDP with real payloads.
    for (ns, ip) in [(&a, "fd00:220::2"), (&b, "fd00:220::50"), (&c, "fd62:7066::2")] {
        tcp_echo_server(ns, addr(ip, 7000)).unwrap();
        udp_echo_server(ns, addr(ip, 7001)).unwrap();
    }
    for (i, (from, to)) in [(&a, "fd00:220::50"), (&b, "fd00:220::2")].into_iter().enumerate() {
        let data = payload(i as u8, 3000);
        assert_eq!(tcp_exchange(from, addr(to, 7000), &data, T).unwrap(), data, "TCP {from} -> {to}");
        let data = payload(50 + i as u8, 1200);
        assert_eq!(udp_exchange(from, addr(to, 7001), &data, T).unwrap(), data, "UDP {from} -> {to}");
    }
    assert!(ping6(&sb, &a, "fd00:220::50"));
    // The gateways answer, and the host reaches every dual-stack container.
    assert!(ping6(&sb, &a, "fd00:220::1"));
    assert!(ping6(&sb, &c, "fd62:7066::1"));
    for ip in ["fd00:220::2", "fd00:220::50", "fd62:7066::2"] {
        assert!(ping6(&sb, &sb.host(), ip), "host -> {ip}");
    }
    assert!(counter(&sb, "ndp_replied") > 0);

    // Names: the network's resolver answers AAAA (and ip6.arpa) on its IPv6 gateway too.
    std::thread::sleep(Duration::from_millis(500)); // the resolvers follow new networks within 200 ms
    let dig = |args: &[&str]| {
        let mut all = vec!["dig", "+time=1", "+tries=3", "+short", "@fd00:220::1"];
        all.extend_from_slice(args);
        sb.exec(&a, &all).unwrap().stdout.trim().to_string()
    };
    assert_eq!(dig(&["AAAA", &b]), "fd00:220::50");
    assert_eq!(dig(&["A", &b]), "10.220.0.3");
    assert_eq!(dig(&["-x", "fd00:220::50"]), format!("{b}."));

    // Other networks' containers are out of reach in IPv6 as in IPv4.
    let isolated = counter(&sb, "drop_isolation");
    assert!(tcp_exchange(&a, addr("fd62:7066::2", 7000), b"x", BLOCKED).is_err());
    assert!(udp_exchange(&c, addr("fd00:220::2", 7001), b"x", BLOCKED).is_err());
    assert!(!ping6(&sb, &c, "fd00:220::50"));
    assert!(counter(&sb, "drop_isolation") >= isolated + 3);

    // A source that is not the container's own: dropped and counted.
    sb.exec(&a, &["ip", "addr", "add", "fd00:220::99/64", "dev", "eth0", "nodad"]).unwrap();
    let spoofed = counter(&sb, "drop_spoofed_source");
    assert!(!sb.exec(&a, &["ping", "-6", "-c", "1", "-W", "1", "-q", "-I", "fd00:220::99", "fd00:220::50"]).unwrap().ok);
    assert!(counter(&sb, "drop_spoofed_source") > spoofed);
    sb.exec(&a, &["ip", "addr", "del", "fd00:220::99/64", "dev", "eth0"]).unwrap();

    // Docker-shaped inspect, listings with both families.
    let net = &json(&sb.bpfnet_ok(&["network", "inspect", "dual"]).unwrap())[0];
    assert_eq!(net["EnableIPv6"], true);
    assert_eq!(net["IPAM"]["Config"][1]["Subnet"], "fd00:220::/64");
    assert_eq!(net["IPAM"]["Config"][1]["Gateway"], "fd00:220::1");
    let ca = net["Containers"].as_object().unwrap().values().find(|e| e["Name"] == a.as_str()).unwrap();
    assert_eq!(ca["IPv6Address"], "fd00:220::2/64");
    let v4 = &json(&sb.bpfnet_ok(&["network", "inspect", "v4only"]).unwrap())[0];
    assert_eq!((v4["EnableIPv6"].clone(), v4["IPAM"]["Config"].as_array().unwrap().len()), (serde_json::json!(false), 1));
    let ls = sb.bpfnet_ok(&["network", "ls"]).unwrap();
    assert!(ls.lines().any(|l| l.contains("pooled") && l.contains("10.221.0.0/24, fd62:7066::/64")), "{ls}");
    let eps = sb.bpfnet_ok(&["endpoint", "ls"]).unwrap();
    assert!(eps.contains("10.220.0.3/24, fd00:220::50/64"), "{eps}");
    assert_consistent(&sb, &[a.clone(), b.clone(), c.clone(), d.clone()]);

    // A namespace on an IPv4-only network first, then a dual-stack one: an IPv6 default route
    // all the same; when that endpoint leaves, another dual-stack one carries it.
    let e = sb.add_netns("e").unwrap();
    connect(&sb, "v4only", &e, &[]);
    connect(&sb, "pooled", &e, &[]);
    let default6 = |ns: &str| sb.exec(ns, &["ip", "-6", "route", "show", "default"]).unwrap().stdout;
    assert!(default6(&e).contains("via fd62:7066::1"), "{}", default6(&e));
    connect(&sb, "dual", &e, &[]);
    sb.bpfnet_ok(&["network", "disconnect", "pooled", &e]).unwrap();
    assert!(default6(&e).contains("via fd00:220::1"), "moved: {}", default6(&e));
    sb.bpfnet_ok(&["network", "disconnect", "dual", &e]).unwrap();
    sb.bpfnet_ok(&["network", "disconnect", "v4only", &e]).unwrap();

    // A restart keeps it all; a disconnect removes the IPv6 entries too.
    sb.stop_daemon(libc::SIGTERM).unwrap();
    sb.start_daemon().unwrap();
    assert_eq!(tcp_exchange(&a, addr("fd00:220::50", 7000), b"again", T).unwrap(), b"again");
    sb.bpfnet_ok(&["network", "disconnect", "dual", &b]).unwrap();
    assert!(!ping6(&sb, &a, "fd00:220::50"));
    assert_consistent(&sb, &[a.clone(), b.clone(), c.clone(), d.clone()]);
    for net in ["dual", "pooled"] {
        for ns in [&a, &c] {
            sb.bpfnet(&["network", "disconnect", net, ns]).unwrap();
        }
        sb.bpfnet_ok(&["network", "rm", net]).unwrap();
    }
    assert_consistent(&sb, &[a, b, c, d]);
}

#[test]
fn icc_false_and_internal_hold_in_ipv6() {
    let mut sb = Sandbox::new("v6opt").unwrap();
    sb.start_daemon().unwrap();
    let a = sb.add_netns("a").unwrap();
    let b = sb.add_netns("b").unwrap();
    let i = sb.add_netns("i").unwrap();
    sb.bpfnet_ok(&["network", "create", "quiet", "--subnet", "10.223.0.0/24", "--subnet", "fd00:223::/64", "-o", "icc=false"]).unwrap();
    sb.bpfnet_ok(&["network", "create", "inner", "--subnet", "10.224.0.0/24", "--subnet", "fd00:224::/64", "--internal"]).unwrap();
    connect(&sb, "quiet", &a, &[]);
    connect(&sb, "quiet", &b, &[]);
    connect(&sb, "inner", &i, &[]);
    tcp_echo_server(&b, addr("fd00:223::3", 7000)).unwrap();
    let before = counter(&sb, "drop_icc");
    assert!(tcp_exchange(&a, addr("fd00:223::3", 7000), b"x", BLOCKED).is_err());
    assert!(counter(&sb, "drop_icc") > before);
    assert!(ping6(&sb, &a, "fd00:223::1"), "the gateway stays reachable with icc=false");

    // An internal network: its gateway, nothing beyond (here another network's gateway).
    let routes = sb.exec(&i, &["ip", "-6", "route", "show", "default"]).unwrap().stdout;
    assert!(routes.trim().is_empty(), "an internal network gives no default route: {routes}");
    assert!(ping6(&sb, &i, "fd00:224::1"));
    sb.exec(&i, &["ip", "-6", "route", "add", "fd00:223::/64", "via", "fd00:224::1"]).unwrap();
    let before = counter(&sb, "drop_internal");
    assert!(!ping6(&sb, &i, "fd00:223::1"));
    assert!(counter(&sb, "drop_internal") > before);
}

#[test]
fn bad_ipv6_input_is_refused_clearly_with_nothing_changed() {
    let mut sb = Sandbox::new("v6bad").unwrap();
    sb.start_daemon().unwrap();
    let a = sb.add_netns("a").unwrap();
    // A host namespace with IPv6 off cannot hold an IPv6 gateway: said so. (Turning it off
    // removes lo's IPv6 addresses: done before any network has one.)
    sb.exec(&sb.host(), &["sysctl", "-qw", "net.ipv6.conf.lo.disable_ipv6=1"]).unwrap();
    let out = sb.bpfnet(&["network", "create", "x", "--ipv6"]).unwrap();
    assert!(!out.ok && out.stderr.contains("IPv6 is off"), "{out:?}");
    sb.exec(&sb.host(), &["sysctl", "-qw", "net.ipv6.conf.lo.disable_ipv6=0"]).unwrap();
    assert_eq!(sb.bpfnet_ok(&["network", "ls", "--json"]).unwrap().trim(), "[]");
    sb.bpfnet_ok(&["network", "create", "dual", "--subnet", "10.225.0.0/24", "--subnet", "fd00:225::/64"]).unwrap();
    sb.bpfnet_ok(&["network", "create", "v4only", "--subnet", "10.226.0.0/24"]).unwrap();
    let networks = sb.bpfnet_ok(&["network", "ls", "--json"]).unwrap();
    for (args, expected) in [
        (vec!["network", "create", "x", "--subnet", "fd00:225::/80"], "overlaps with network \"dual\""),
        (vec!["network", "create", "x", "--subnet", "fd00:9::/121"], "/120 or shorter"),
        (vec!["network", "create", "x", "--subnet", "fd00:9::1/64"], "host bits"),
        (vec!["network", "create", "x", "--subnet", "fe80::/64"], "link-local"),
        (vec!["network", "create", "x", "--subnet", "fd00:9::/64", "--gateway", "fd00:8::1"], "outside the subnet"),
        (vec!["network", "create", "x", "--subnet", "fd00:9::/64", "--subnet", "fd00:10::/64"], "at most one IPv4 and one IPv6"),
        (vec!["network", "create", "x", "--gateway", "fd00:9::1"], "no IPv6 subnet"),
        (vec!["network", "connect", "v4only", &a, "--ip6", "fd00:226::5"], "has no IPv6 subnet"),
        (vec!["network", "connect", "dual", &a, "--ip6", "fd00:226::5"], "outside the subnet"),
        (vec!["network", "connect", "dual", &a, "--ip6", "fd00:225::1"], "gateway"),
        (vec!["network", "connect", "dual", &a, "--ip6", "10.225.0.9"], "other address family"),
    ] {
        let out = sb.bpfnet(&args).unwrap();
        assert!(!out.ok && out.stderr.contains(expected), "{args:?}: {out:?}");
    }
    assert_eq!(sb.bpfnet_ok(&["network", "ls", "--json"]).unwrap(), networks, "nothing changed");
    let links = sb.exec(&a, &["ip", "-o", "link"]).unwrap().stdout;
    assert_eq!(links.lines().count(), 1, "no interface made: {links}");
    assert_consistent(&sb, &[a]);
}

#[test]
fn containers_reach_the_outside_over_ipv6_masqueraded_to_the_uplinks_address() {
    let mut sb = Sandbox::new("v6nat").unwrap();
    let outside = sb.add_outside().unwrap();
    sb.add_ipv6_outside(&outside).unwrap();
    sb.start_daemon().unwrap();
    let a = sb.add_netns("a").unwrap();
    let plain = sb.add_netns("plain").unwrap();
    sb.bpfnet_ok(&["network", "create", "dual", "--subnet", "10.227.0.0/24", "--subnet", "fd00:227::/64"]).unwrap();
    sb.bpfnet_ok(&["network", "create", "plain", "--subnet", "10.228.0.0/24", "--ipv6", "-o", "masquerade=false"]).unwrap();
    let (_, a6) = connect(&sb, "dual", &a, &[]);
    connect(&sb, "plain", &plain, &[]);
    let stats = sb.bpfnet_ok(&["stats"]).unwrap();
    assert!(stats.contains(UPLINK_IP6), "stats names the uplink's IPv6 address: {stats}");

    // The server outside sees the uplink's IPv6 address, the container's port kept where free.
    tcp_whoami_server(&outside.far, addr(FAR_IP6, 8080)).unwrap();
    udp_whoami_server(&outside.far, addr(FAR_IP6, 8081)).unwrap();
    tcp_echo_server(&outside.far, addr(FAR_IP6, 8082)).unwrap();
    let seen = tcp_whoami(&a, addr(FAR_IP6, 8080), T).unwrap();
    assert_eq!(seen.ip().to_string(), UPLINK_IP6, "TCP source at the server");
    let seen = udp_whoami(&a, 40053, addr(FAR_IP6, 8081), T).unwrap();
    assert_eq!(seen.to_string(), format!("[{UPLINK_IP6}]:40053"), "UDP source and kept port at the server");
    // Full-size segments meet the 1280-byte hop: the router's "packet too big" must reach the
    // container's stack translated, or this transfer stalls.
    let data = payload(9, 200_000);
    assert_eq!(tcp_exchange(&a, addr(FAR_IP6, 8082), &data, Duration::from_secs(10)).unwrap(), data, "a bulk transfer both ways");
    assert!(counter(&sb, "nat_icmp_error") > 0, "the ICMPv6 error was translated");
    let route = sb.exec(&a, &["ip", "-6", "route", "get", FAR_IP6]).unwrap().stdout;
    assert!(route.contains("mtu 1280"), "the container learnt the path MTU: {route}");
    // A 4000-byte datagram leaves in fragments and its answer comes back in fragments, each
    // translated (the later ones by the first one's ports).
    udp_echo_server(&outside.far, addr(FAR_IP6, 8083)).unwrap();
    let data = payload(10, 4000);
    let (out_before, in_before) = (counter(&sb, "nat_out"), counter(&sb, "nat_in"));
    assert_eq!(udp_exchange(&a, addr(FAR_IP6, 8083), &data, T).unwrap(), data, "a fragmented datagram both ways");
    let (out, back) = (counter(&sb, "nat_out") - out_before, counter(&sb, "nat_in") - in_before);
    // 4000 bytes are 3 fragments at 1500 bytes (more at the container's learnt 1280).
    assert!(out >= 3 && back >= 3, "every fragment translated: {out} out, {back} back");
    assert!(ping6(&sb, &a, FAR_IP6), "ping through IPv6 masquerade");
    // "Time exceeded" from the router reaches the container (traceroute through NAT66).
    let out = sb.exec(&a, &["ping", "-6", "-c", "1", "-W", "1", "-t", "2", FAR_IP6]).unwrap();
    assert!(out.stdout.contains("Time exceeded"), "{}", out.stdout);
    assert!(counter(&sb, "nat_out") > 0 && counter(&sb, "nat_in") > 0);
    let conns = sb.bpfnet_ok(&["conntrack", "ls"]).unwrap();
    assert!(conns.contains(&a6) && conns.contains(UPLINK_IP6), "conntrack ls shows IPv6 connections: {conns}");

    // A rewrite of net.ipv6.conf.all.forwarding (to 0, by `sysctl -p` or another manager) turns
    // off every interface's, lo's and the endpoints' host sides': the daemon notices (lo) within
    // its 2-s tick and turns them on again; NAT66 goes on.
    let host = sb.host();
    sb.exec(&host, &["sysctl", "-qw", "net.ipv6.conf.all.forwarding=0"]).unwrap();
    let forwarding = |dev: &str| sb.exec(&host, &["cat", &format!("/proc/sys/net/ipv6/conf/{dev}/forwarding")]).unwrap().stdout.trim() == "1";
    let endpoints = json(&sb.bpfnet_ok(&["endpoint", "ls", "--json"]).unwrap());
    let of_a = endpoints.as_array().unwrap().iter().find(|e| e["ipv6_address"].as_str().is_some_and(|ip| ip.starts_with(&a6)));
    let host_side = of_a.and_then(|e| e["attachment"]["host_interface"].as_str()).expect("a's endpoint and its host side").to_string();
    assert!(!forwarding("lo") && !forwarding(&host_side), "the rewrite turned them off");
    let deadline = std::time::Instant::now() + Duration::from_secs(6);
    while !(forwarding("lo") && forwarding(&host_side)) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(forwarding("lo") && forwarding(&host_side), "IPv6 forwarding not turned on again");
    let seen = tcp_whoami(&a, addr(FAR_IP6, 8080), T).unwrap();
    assert_eq!(seen.ip().to_string(), UPLINK_IP6, "NAT66 after the rewrite");
    let log = std::fs::read_to_string(sb.daemon_log()).unwrap();
    assert!(log.contains("turned on again on lo and on 2 endpoint(s)"), "the daemon says so");

    // masquerade=false: untranslated (routed by the host), the outside has no route back.
    let nat_out = counter(&sb, "nat_out");
    assert!(tcp_connect(&plain, addr(FAR_IP6, 8080), BLOCKED).is_err(), "no masquerade, no answer");
    assert_eq!(counter(&sb, "nat_out"), nat_out, "nothing translated");
    // A host on the LAN cannot reach a container's IPv6 address through the host.
    sb.exec(&outside.ext, &["ip", "-6", "route", "add", "fd00:227::/64", "via", UPLINK_IP6]).unwrap();
    let before = counter(&sb, "drop_uplink_to_container");
    assert!(!ping6(&sb, &outside.ext, &a6));
    assert!(counter(&sb, "drop_uplink_to_container") > before);
}

#[test]
fn ports_published_on_ipv6_take_outside_clients_with_their_own_address() {
    let mut sb = Sandbox::new("v6pub").unwrap();
    let outside = sb.add_outside().unwrap();
    sb.add_ipv6_outside(&outside).unwrap();
    sb.start_daemon().unwrap();
    let web = sb.add_netns("web").unwrap();
    sb.bpfnet_ok(&["network", "create", "dual", "--subnet", "10.229.0.0/24", "--subnet", "fd00:229::/64"]).unwrap();
    sb.bpfnet_ok(&["network", "create", "v4only", "--subnet", "10.230.0.0/24"]).unwrap();
    // -p 8080:80 is both families; [::] IPv6 only; an address of the uplink just that one.
    let (_, web6) = connect(&sb, "dual", &web, &["-p", "8080:7000", "-p", "[::]:8081:7001/udp", "-p", &format!("[{UPLINK_IP6}]:8082:7002"), "-p", "[::]:8083:7003/udp"]);
    for (port, udp) in [(7000, false), (7001, true), (7002, false)] {
        let at = addr(&web6, port);
        if udp { udp_whoami_server(&web, at).unwrap() } else { tcp_whoami_server(&web, at).unwrap() }
    }
    tcp_whoami_server(&web, addr("10.229.0.2", 7000)).unwrap();

    // The container sees the outside client's own address, over either family.
    let seen = tcp_whoami(&outside.far, addr(UPLINK_IP6, 8080), T).unwrap();
    assert_eq!(seen.ip().to_string(), FAR_IP6, "the client's IPv6 address in the container");
    let seen = tcp_whoami(&outside.far, addr(bpfnet_lab::sandbox::UPLINK_IP, 8080), T).unwrap();
    assert_eq!(seen.ip().to_string(), bpfnet_lab::sandbox::FAR_IP, "-p 8080:80 takes IPv4 clients too");
    let seen = udp_whoami(&outside.far, 41000, addr(UPLINK_IP6, 8081), T).unwrap();
    assert_eq!(seen.to_string(), format!("[{FAR_IP6}]:41000"));
    // Something listens on the container's IPv4 address too: only the publication decides.
    udp_whoami_server(&web, addr("10.229.0.2", 7001)).unwrap();
    assert!(udp_whoami(&outside.far, 41001, addr(bpfnet_lab::sandbox::UPLINK_IP, 8081), BLOCKED).is_err(), "[::] is IPv6 only");
    let seen = tcp_whoami(&outside.far, addr(UPLINK_IP6, 8082), T).unwrap();
    assert_eq!(seen.ip().to_string(), FAR_IP6);
    // Nobody listens behind 8083: the container's "port unreachable" reaches the client
    // translated (from the address it asked, quoting what it sent).
    let before = counter(&sb, "nat_icmp_error");
    assert!(udp_refused(&outside.far, addr(UPLINK_IP6, 8083), T).unwrap(), "the client learns the port is closed");
    assert!(counter(&sb, "nat_icmp_error") > before);

    // Containers reach it through the host's IPv6 addresses too (hairpin): from the publisher's
    // network's IPv6 gateway, so that the answers come back the same way.
    let cli = sb.add_netns("cli").unwrap();
    sb.bpfnet_ok(&["network", "create", "clients", "--subnet", "10.231.0.0/24", "--subnet", "fd00:231::/64"]).unwrap();
    connect(&sb, "clients", &cli, &[]);
    for through in [UPLINK_IP6, "fd00:231::1"] {
        let seen = tcp_whoami(&cli, addr(through, 8080), T).unwrap();
        assert_eq!(seen.ip().to_string(), "fd00:229::1", "hairpin through {through}");
    }
    assert!(counter(&sb, "hairpin") > 0);

    // The host's own processes reach it through ::1 and its IPv6 addresses (socket programs),
    // and see the address they asked for as their peer.
    for through in ["::1", UPLINK_IP6] {
        let stream = tcp_connect(&sb.host(), addr(through, 8080), T).unwrap();
        assert_eq!(stream.peer_addr().unwrap(), addr(through, 8080), "getpeername shows what was asked");
        let seen = tcp_whoami(&sb.host(), addr(through, 8080), T).unwrap();
        assert!(seen.is_ipv6(), "{seen}");
        let seen = udp_whoami(&sb.host(), 0, addr(through, 8081), T).unwrap();
        assert!(seen.is_ipv6(), "UDP, answered from the address asked: {seen}");
    }

    // `port ls` shows a line per family the port reaches the container by.
    let ports = json(&sb.bpfnet_ok(&["port", "ls", "--json"]).unwrap());
    let hosts: Vec<&str> = ports.as_array().unwrap().iter().map(|p| p["host"].as_str().unwrap()).collect();
    for expected in ["0.0.0.0:8080", "[::]:8080", "[::]:8081", &format!("[{UPLINK_IP6}]:8082"), "[::]:8083"] {
        assert!(hosts.contains(&expected), "{expected} in {hosts:?}");
    }
    assert_eq!(hosts.len(), 5, "{hosts:?}");

    // Refused clearly, nothing changed: IPv6 on a network without, an address not the host's,
    // a family's every address already taken.
    let other = sb.add_netns("other").unwrap();
    for (net, spec, says) in [
        ("v4only", "[::]:9000:80", "has no IPv6 subnet"),
        ("dual", "[2001:db8:2::99]:9000:80", "not an address of the daemon's namespace"),
        ("dual", "[::]:8080:80", "is already published by"),
    ] {
        let out = sb.bpfnet(&["network", "connect", net, &other, "-p", spec]).unwrap();
        assert!(!out.ok && out.stderr.contains(says), "{spec}: {out:?}");
    }
    // IPv4's every address beside IPv6's: no clash.
    sb.bpfnet_ok(&["network", "connect", "dual", &other, "-p", "0.0.0.0:8081:7001/udp"]).unwrap();
}

#[test]
fn ipv6_only_networks_carry_ipv6_alone() {
    let mut sb = Sandbox::new("v6only").unwrap();
    let outside = sb.add_outside().unwrap();
    sb.add_ipv6_outside(&outside).unwrap();
    sb.start_daemon().unwrap();
    let a = sb.add_netns("a").unwrap();
    let b = sb.add_netns("b").unwrap();
    let d = sb.add_netns("d").unwrap();
    let c = sb.add_netns("c").unwrap();
    let e = sb.add_netns("e").unwrap();
    // What cannot be an IPv6-only network is refused, with nothing made.
    for (args, expected) in [
        (vec!["network", "create", "x", "--ipv4=false"], "needs IPv4 or IPv6"),
        (vec!["network", "create", "x", "--ipv4=false", "--ipv6", "--subnet", "10.232.0.0/24"], "--subnet 10.232.0.0/24 is IPv4, but the network is IPv6-only"),
        (vec!["network", "create", "x", "--ipv4=false", "--ipv6", "--gateway", "10.232.0.1"], "is IPv4, but the network is IPv6-only"),
        (vec!["network", "create", "x", "--ipv4=false", "--ipv6", "--ip-range", "10.232.0.0/25"], "is IPv4, but the network is IPv6-only"),
    ] {
        let out = sb.bpfnet(&args).unwrap();
        assert!(!out.ok && out.stderr.contains(expected), "{args:?}: {out:?}");
    }
    assert_eq!(sb.bpfnet_ok(&["network", "ls", "--json"]).unwrap().trim(), "[]");
    sb.bpfnet_ok(&["network", "create", "only6", "--ipv4=false", "--subnet", "fd00:232::/64"]).unwrap();
    sb.bpfnet_ok(&["network", "create", "dual", "--subnet", "10.233.0.0/24", "--subnet", "fd00:233::/64"]).unwrap();
    assert_eq!(connect(&sb, "only6", &a, &[]), (String::new(), "fd00:232::2".into()));
    assert_eq!(connect(&sb, "only6", &b, &["-p", "8080:7001"]), (String::new(), "fd00:232::3".into()));
    let (_, d6) = connect(&sb, "dual", &d, &[]);

    // The container side: IPv6 alone, its default route through the IPv6 gateway.
    let v4 = sb.exec(&a, &["ip", "-4", "-o", "addr", "show", "dev", "eth0"]).unwrap().stdout;
    assert!(v4.trim().is_empty(), "no IPv4 address: {v4}");
    let routes4 = sb.exec(&a, &["ip", "-4", "route"]).unwrap().stdout;
    assert!(routes4.trim().is_empty(), "no IPv4 route: {routes4}");
    let routes = sb.exec(&a, &["ip", "-6", "route", "show", "default"]).unwrap().stdout;
    assert!(routes.contains("default via fd00:232::1 dev eth0"), "{routes}");

    // Between its containers, to its gateway, from the host; isolated from other networks.
    tcp_echo_server(&b, addr("fd00:232::3", 7000)).unwrap();
    tcp_echo_server(&d, addr(&d6, 7000)).unwrap();
    let data = payload(3, 3000);
    assert_eq!(tcp_exchange(&a, addr("fd00:232::3", 7000), &data, T).unwrap(), data);
    assert!(ping6(&sb, &a, "fd00:232::1"));
    assert!(ping6(&sb, &sb.host(), "fd00:232::3"));
    let isolated = counter(&sb, "drop_isolation");
    assert!(tcp_exchange(&a, addr(&d6, 7000), b"x", BLOCKED).is_err());
    assert!(counter(&sb, "drop_isolation") > isolated);

    // To the outside through NAT66, and from it through -p 8080 (IPv6's half of it: IPv4's
    // has no address to go to, so the uplink's IPv4 address publishes nothing).
    tcp_whoami_server(&outside.far, addr(FAR_IP6, 8080)).unwrap();
    let seen = tcp_whoami(&a, addr(FAR_IP6, 8080), T).unwrap();
    assert_eq!(seen.ip().to_string(), UPLINK_IP6, "masqueraded to the uplink's IPv6 address");
    tcp_whoami_server(&b, addr("fd00:232::3", 7001)).unwrap();
    let seen = tcp_whoami(&outside.far, addr(UPLINK_IP6, 8080), T).unwrap();
    assert_eq!(seen.ip().to_string(), FAR_IP6, "the client's own address in the container");
    assert!(tcp_connect(&outside.far, addr(bpfnet_lab::sandbox::UPLINK_IP, 8080), BLOCKED).is_err(), "nothing on IPv4");
    let ports = json(&sb.bpfnet_ok(&["port", "ls", "--json"]).unwrap());
    let hosts: Vec<&str> = ports.as_array().unwrap().iter().map(|p| p["host"].as_str().unwrap()).collect();
    assert_eq!(hosts, ["[::]:8080"], "one line, IPv6's");

    // IPv4 the container makes up itself goes nowhere: dropped and counted.
    sb.exec(&a, &["ip", "addr", "add", "10.233.0.99/24", "dev", "eth0"]).unwrap();
    let dropped = counter(&sb, "drop_unsupported_protocol");
    assert!(!sb.exec(&a, &["ping", "-c", "1", "-W", "1", "-q", "10.233.0.2"]).unwrap().ok);
    assert!(counter(&sb, "drop_unsupported_protocol") > dropped, "its ARP and IPv4 dropped");
    sb.exec(&a, &["ip", "addr", "del", "10.233.0.99/24", "dev", "eth0"]).unwrap();

    // Names: AAAA (no A) on the IPv6 gateway.
    std::thread::sleep(Duration::from_millis(500));
    let dig = |args: &[&str]| {
        let mut all = vec!["dig", "+time=1", "+tries=3", "+short", "@fd00:232::1"];
        all.extend_from_slice(args);
        sb.exec(&a, &all).unwrap().stdout.trim().to_string()
    };
    assert_eq!(dig(&["AAAA", &b]), "fd00:232::3");
    assert_eq!(dig(&["A", &b]), "");

    // Listings: Docker-shaped inspect with one IPAM config, IPv6's; `network ls` shows it.
    let net = &json(&sb.bpfnet_ok(&["network", "inspect", "only6"]).unwrap())[0];
    assert_eq!(net["EnableIPv6"], true);
    assert_eq!(net["IPAM"]["Config"], serde_json::json!([{"Subnet": "fd00:232::/64", "Gateway": "fd00:232::1"}]));
    let ca = net["Containers"].as_object().unwrap().values().find(|e| e["Name"] == a.as_str()).unwrap();
    assert_eq!((ca["IPv4Address"].as_str(), ca["IPv6Address"].as_str()), (Some(""), Some("fd00:232::2/64")));
    let ls = sb.bpfnet_ok(&["network", "ls"]).unwrap();
    assert!(ls.lines().any(|l| l.contains("only6") && l.contains("fd00:232::/64") && l.contains("fd00:232::1")), "{ls}");

    // A service: an IPv6 VIP alone, balanced over both replicas from the network, from the
    // outside through --publish (IPv6's half), by name (AAAA, no A).
    for (ns, ip) in [(&a, "fd00:232::2"), (&b, "fd00:232::3")] {
        tcp_name_server(ns, addr(ip, 7080), ns).unwrap();
    }
    sb.bpfnet_ok(&["service", "create", "web6", "--network", "only6", "--port", "7080", "--vip6", "fd00:232::80", "--publish", "9090", "--backend", &a, "--backend", &b]).unwrap();
    connect(&sb, "only6", &e, &[]);
    let both = |seen: std::collections::BTreeMap<String, usize>| seen.keys().cloned().collect::<Vec<_>>() == [a.clone(), b.clone()] && seen.values().all(|n| *n > 20);
    let seen = spread(&e, addr("fd00:232::80", 7080), 200, T).unwrap();
    assert!(both(seen.clone()), "through the VIP6: {seen:?}");
    let seen = spread(&outside.far, addr(UPLINK_IP6, 9090), 200, T).unwrap();
    assert!(both(seen.clone()), "from the outside: {seen:?}");
    assert!(tcp_connect(&outside.far, addr(bpfnet_lab::sandbox::UPLINK_IP, 9090), BLOCKED).is_err(), "nothing on IPv4");
    assert_eq!(dig(&["AAAA", "web6"]), "fd00:232::80");
    assert_eq!(dig(&["A", "web6"]), "");
    let svc = json(&sb.bpfnet_ok(&["service", "ls", "--json"]).unwrap());
    assert_eq!((svc[0]["vip"].as_str(), svc[0]["vip6"].as_str()), (Some(""), Some("[fd00:232::80]:7080/tcp")), "{svc}");

    // What needs IPv4 is refused clearly, nothing changed.
    let networks = sb.bpfnet_ok(&["network", "ls", "--json"]).unwrap();
    for (args, expected) in [
        (vec!["network", "connect", "only6", &c, "--ip", "10.0.0.5"], "is IPv6-only"),
        (vec!["network", "connect", "only6", &c, "-p", "0.0.0.0:9000:80"], "is IPv6-only"),
        (vec!["service", "create", "web", "--network", "only6", "--port", "80", "--vip", "10.0.0.5"], "is IPv6-only"),
    ] {
        let out = sb.bpfnet(&args).unwrap();
        assert!(!out.ok && out.stderr.contains(expected), "{args:?}: {out:?}");
    }
    assert_eq!(sb.bpfnet_ok(&["network", "ls", "--json"]).unwrap(), networks, "nothing changed");
    assert_consistent(&sb, &[a.clone(), b.clone(), c.clone(), d.clone(), e.clone()]);

    // A restart keeps it all.
    sb.stop_daemon(libc::SIGTERM).unwrap();
    sb.start_daemon().unwrap();
    assert_eq!(tcp_exchange(&a, addr("fd00:232::3", 7000), b"again", T).unwrap(), b"again");
    let seen = tcp_whoami(&outside.far, addr(UPLINK_IP6, 8080), T).unwrap();
    assert_eq!(seen.ip().to_string(), FAR_IP6, "published after the restart");
    let seen = spread(&outside.far, addr(UPLINK_IP6, 9090), 200, T).unwrap();
    assert!(both(seen.clone()), "the service after the restart: {seen:?}");
    sb.bpfnet_ok(&["service", "rm", "web6"]).unwrap();
    for ns in [&a, &b, &e] {
        sb.bpfnet_ok(&["network", "disconnect", "only6", ns]).unwrap();
    }
    sb.bpfnet_ok(&["network", "rm", "only6"]).unwrap();
    assert_consistent(&sb, &[a, b, c, d, e]);
}
