//! End-to-end XDP at the uplink: the published path (connections from outside to services and
//! published ports, replies to masqueraded connections) runs in XDP where it can, and passes on
//! to TC what it cannot, with the same results either way. The router behind the uplink is a veth
//! peer: it sends complete checksums only with TX checksum offload off, as a NIC's frames carry
//! them. Needs root.
use std::time::Duration;

use bpfnet_lab::{
    checks::{addr, assert_even, counter, json},
    sandbox::{DaemonOptions, Outside, FAR_IP, UPLINK_IP},
    traffic::{spread, tcp_name_server, tcp_whoami, tcp_whoami_server, udp_exchange, udp_name_server, NameClient},
    Sandbox,
};

const T: Duration = Duration::from_secs(3);

/// A sandbox with the outside (its router sending complete checksums), a server on `far`, the
/// daemon started with `daemon_args`, network `front` with a client container and three replicas
/// (`web1`...) serving their names on TCP 80 and UDP 53, and service `web` (TCP 80, published on
/// 8080) and `dns` (UDP 53, published on 5353) over them.
fn lab(tag: &str, daemon_args: &[&str]) -> (Sandbox, Outside, String, Vec<String>) {
    let mut sb = Sandbox::new(tag).unwrap();
    let outside = sb.add_outside().unwrap();
    sb.checksums_in_software(&outside.ext, "eth0", true).unwrap();
    tcp_whoami_server(&outside.far, addr(FAR_IP, 8000)).unwrap();
    sb.start_daemon_with(&DaemonOptions { args: daemon_args, ..Default::default() }).unwrap();
    sb.bpfnet_ok(&["network", "create", "front", "--subnet", "10.230.0.0/24"]).unwrap();
    let client = sb.add_netns("client").unwrap();
    sb.bpfnet_ok(&["network", "connect", "front", &client]).unwrap();
    let mut replicas = Vec::new();
    for i in 1..=3 {
        let name = format!("web{i}");
        let ns = sb.add_netns(&name).unwrap();
        sb.bpfnet_ok(&["network", "connect", "front", &ns]).unwrap();
        tcp_name_server(&ns, addr("0.0.0.0", 80), &name).unwrap();
        udp_name_server(&ns, addr("0.0.0.0", 53), &name).unwrap();
        replicas.push(ns);
    }
    for (service, port, publish) in [("web", "80", "8080"), ("dns", "53/udp", "5353")] {
        let mut args = vec!["service", "create", service, "--network", "front", "--port", port, "--publish", publish];
        for ns in &replicas {
            args.extend(["--backend", ns.as_str()]);
        }
        sb.bpfnet_ok(&args).unwrap();
    }
    (sb, outside, client, replicas)
}

fn uplink_path(sb: &Sandbox) -> bool {
    let stats = json(&sb.bpfnet_ok(&["stats", "--json"]).unwrap());
    stats["uplinks"][0]["xdp"].as_bool().unwrap()
}

#[test]
fn the_published_path_runs_in_xdp_and_passes_the_rest_to_tc() {
    let (mut sb, outside, client, _replicas) = lab("xdp", &["--xdp", "native"]);
    assert!(uplink_path(&sb), "--xdp native runs XDP on a veth uplink");
    let link = sb.exec(&sb.host(), &["ip", "link", "show", "up0"]).unwrap().stdout;
    assert!(link.contains("prog/xdp"), "the uplink runs an XDP program:\n{link}");

    // 3000 new connections from outside to the published service: balanced in XDP, evenly,
    // and each backend sees the client's own address.
    let web = addr(UPLINK_IP, 8080);
    let seen = spread(&outside.ext, web, 3000, T).unwrap();
    assert_even(&seen, 3, 3000, "outside -> :8080 in XDP");
    // A frame whose checksum happens to equal what an offloading sender leaves there (the
    // pseudo-header's sum: 1 in 65,536) is passed to TC, which balances it: a few may go there.
    let (in_xdp, in_tc) = (counter(&sb, "xdp_service_balanced"), counter(&sb, "service_balanced"));
    assert!(in_xdp + in_tc >= 3000 && in_tc <= 3, "new connections balanced in XDP: {in_xdp} (TC: {in_tc})");
    let (_, seen_as) = NameClient::connect(&outside.ext, web, T).unwrap().ask().unwrap();
    assert_eq!(seen_as, "192.0.2.2", "the backend sees the client");
    assert!(counter(&sb, "xdp_nat_in") >= 6000, "the clients' later packets are delivered in XDP too");

    // UDP through the published port (its checksum rewritten in software, exactly, or the
    // replica's stack would drop the datagram).
    let answer = udp_exchange(&outside.ext, addr(UPLINK_IP, 5353), b"?", T).unwrap();
    let answer = String::from_utf8(answer).unwrap();
    assert!(answer.starts_with("web") && answer.ends_with(" 192.0.2.2"), "a replica answered the client: {answer}");

    // A container's published port, and the replies to a masqueraded connection.
    let publisher = sb.add_netns("pub").unwrap();
    sb.bpfnet_ok(&["network", "connect", "front", &publisher, "-p", "9090:80"]).unwrap();
    tcp_whoami_server(&publisher, addr("0.0.0.0", 80)).unwrap();
    let before = counter(&sb, "xdp_nat_in");
    let seen_as = tcp_whoami(&outside.ext, addr(UPLINK_IP, 9090), T).unwrap();
    assert_eq!(seen_as.ip().to_string(), "192.0.2.2", "the publishing container sees the client");
    let seen_as = tcp_whoami(&client, addr(FAR_IP, 8000), T).unwrap();
    assert_eq!(seen_as.ip().to_string(), UPLINK_IP, "masqueraded");
    assert!(counter(&sb, "xdp_nat_in") >= before + 4, "published and masqueraded connections' packets in XDP");

    // A sender that leaves its checksums to offload (the default of a veth): XDP cannot finish
    // them and passes every such frame to TC, which delivers them all.
    sb.checksums_in_software(&outside.ext, "eth0", false).unwrap();
    let (in_xdp, in_tc) = (counter(&sb, "xdp_service_balanced"), counter(&sb, "service_balanced"));
    let seen = spread(&outside.ext, web, 300, T).unwrap();
    assert_eq!(seen.values().sum::<usize>(), 300, "every connection answered: {seen:?}");
    assert_eq!(counter(&sb, "xdp_service_balanced"), in_xdp, "none balanced in XDP");
    // (From what TC had balanced already: the few passed to it above.)
    assert_eq!(counter(&sb, "service_balanced"), in_tc + 300, "all balanced at TC");

    // `--xdp off`: TC alone, the XDP program detached.
    sb.checksums_in_software(&outside.ext, "eth0", true).unwrap();
    sb.stop_daemon(libc::SIGTERM).unwrap();
    sb.start_daemon_with(&DaemonOptions { args: &["--xdp", "off"], ..Default::default() }).unwrap();
    assert!(!uplink_path(&sb), "stats says TC");
    let link = sb.exec(&sb.host(), &["ip", "link", "show", "up0"]).unwrap().stdout;
    assert!(!link.contains("prog/xdp"), "no XDP program on the uplink:\n{link}");
    let in_xdp = counter(&sb, "xdp_service_balanced");
    let seen = spread(&outside.ext, web, 300, T).unwrap();
    assert_eq!(seen.values().sum::<usize>(), 300, "every connection answered: {seen:?}");
    assert_eq!(counter(&sb, "xdp_service_balanced"), in_xdp, "nothing in XDP");

    // The default (`--xdp auto`) keeps a veth uplink on TC, and says why.
    sb.stop_daemon(libc::SIGTERM).unwrap();
    sb.start_daemon().unwrap();
    assert!(!uplink_path(&sb), "auto runs XDP on a veth");
    let stats = sb.bpfnet_ok(&["stats"]).unwrap();
    assert!(stats.contains("up0 (192.0.2.1, TC: a veth, where XDP only adds a NAPI hop"), "{stats}");

    // Back on, the pinned XDP link is made again.
    sb.stop_daemon(libc::SIGTERM).unwrap();
    sb.start_daemon_with(&DaemonOptions { args: &["--xdp", "native"], ..Default::default() }).unwrap();
    assert!(uplink_path(&sb));
    let at_tc = counter(&sb, "service_balanced");
    let seen = spread(&outside.ext, web, 300, T).unwrap();
    assert_eq!(seen.values().sum::<usize>(), 300);
    // Seen once (299 of 300): the other counters say where a connection that missed XDP went.
    assert_eq!(
        counter(&sb, "xdp_service_balanced"),
        in_xdp + 300,
        "balanced in XDP again (meanwhile balanced at TC: {}; {})",
        counter(&sb, "service_balanced").saturating_sub(at_tc),
        sb.bpfnet_ok(&["stats"]).unwrap()
    );
}
