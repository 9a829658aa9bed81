//! Podman (CNI backend) attaching containers to a bpfnet network through bpfnet's CNI plugin:
//! attach, traffic, `-p` from outside with the client's address, names through the network's
//! resolver, removal. Podman runs in the sandbox's host namespace beside the daemon. Needs root,
//! podman and containernetworking-plugins (installed by `cargo xtask setup`).
use std::time::Duration;

use bpfnet_lab::{
    checks::{addr, json},
    engines::{podman_installed, Podman, BUSYBOX_IMAGE},
    sandbox::UPLINK_IP,
    traffic::{tcp_whoami, tcp_whoami_server},
    Sandbox,
};
use serde_json::json as j;

const T: Duration = Duration::from_secs(3);

#[test]
fn podman_attaches_containers_through_the_cni_plugin() {
    assert!(podman_installed(), "podman is missing: `cargo xtask setup` installs it");
    let mut sb = Sandbox::new("podman").unwrap();
    let outside = sb.add_outside().unwrap();
    sb.start_daemon().unwrap();
    sb.bpfnet_ok(&["network", "create", "web", "--subnet", "10.218.0.0/24"]).unwrap();
    let conflist = j!({"cniVersion": "1.0.0", "name": "web", "plugins": [{
        "type": "bpfnet", "network": "web", "socket": sb.socket().display().to_string(),
        "capabilities": {"portMappings": true, "aliases": true, "ips": true}}]});
    let podman = Podman::new(&sb, &[("web", conflist)]).unwrap();
    podman.import_busybox().unwrap();

    podman.run_detached("p1", &["--network", "web", BUSYBOX_IMAGE, "sleep", "600"]).unwrap();
    podman.run_detached("p2", &["--network", "web", "-p", "8080:80", BUSYBOX_IMAGE, "sleep", "600"]).unwrap();
    let ip = |c: &str| podman.ok(&["inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", c]).unwrap();
    assert_eq!((ip("p1"), ip("p2")), ("10.218.0.2".to_string(), "10.218.0.3".to_string()), "bpfnet's addresses");
    // --ip reaches bpfnet through the `ips` capability.
    podman.run_detached("p3", &["--network", "web", "--ip", "10.218.0.50", BUSYBOX_IMAGE, "sleep", "600"]).unwrap();
    assert_eq!(ip("p3"), "10.218.0.50", "{}", std::fs::read_to_string(sb.daemon_log()).unwrap());
    podman.ok(&["rm", "-f", "-t", "0", "p3"]).unwrap();
    let eps = json(&sb.bpfnet_ok(&["endpoint", "ls", "--json"]).unwrap());
    assert!(eps.as_array().unwrap().iter().all(|e| e["frontend"] == "cni" && e["network"] == "web"), "{eps}");
    assert!(podman.run(&["exec", "p1", "ping", "-c", "1", "-W", "1", "10.218.0.3"]).unwrap().ok, "p1 -> p2");

    // Names: Podman put the network's resolver (from the CNI result) into resolv.conf.
    let resolv = podman.ok(&["exec", "p1", "cat", "/etc/resolv.conf"]).unwrap();
    assert!(resolv.contains("nameserver 10.218.0.1"), "{resolv}");
    let lookup = podman.ok(&["exec", "p1", "nslookup", "p2", "10.218.0.1"]).unwrap();
    assert!(lookup.contains("10.218.0.3"), "{lookup}");

    // -p from outside: the container sees the client's address.
    let p2 = podman.pid("p2").unwrap();
    tcp_whoami_server(&p2, addr("0.0.0.0", 80)).unwrap();
    let seen = tcp_whoami(&outside.ext, addr(UPLINK_IP, 8080), T).unwrap();
    assert_eq!(seen.ip().to_string(), "192.0.2.2");

    // Removal: the endpoint and its port go with the container.
    podman.ok(&["rm", "-f", "-t", "0", "p2"]).unwrap();
    let ports = sb.bpfnet_ok(&["port", "ls"]).unwrap();
    assert!(!ports.contains("8080"), "{ports}");
    podman.ok(&["rm", "-f", "-t", "0", "p1"]).unwrap();
    let eps = json(&sb.bpfnet_ok(&["endpoint", "ls", "--json"]).unwrap());
    assert_eq!(eps.as_array().unwrap().len(), 0, "{eps}");
}

#[test]
fn podman_containers_on_a_dual_stack_network_get_ipv6_through_the_cni_result() {
    assert!(podman_installed(), "podman is missing: `cargo xtask setup` installs it");
    let mut sb = Sandbox::new("podman6").unwrap();
    sb.start_daemon().unwrap();
    sb.bpfnet_ok(&["network", "create", "dual", "--subnet", "10.219.0.0/24", "--subnet", "fd00:219::/64"]).unwrap();
    let conflist = j!({"cniVersion": "1.0.0", "name": "dual", "plugins": [{
        "type": "bpfnet", "network": "dual", "socket": sb.socket().display().to_string(),
        "capabilities": {"portMappings": true, "aliases": true, "ips": true}}]});
    let podman = Podman::new(&sb, &[("dual", conflist)]).unwrap();
    podman.import_busybox().unwrap();
    podman.run_detached("q1", &["--network", "dual", BUSYBOX_IMAGE, "sleep", "600"]).unwrap();
    podman.run_detached("q2", &["--network", "dual", "--ip6", "fd00:219::50", BUSYBOX_IMAGE, "sleep", "600"]).unwrap();
    let ip6 = |c: &str| podman.ok(&["inspect", "-f", "{{range .NetworkSettings.Networks}}{{.GlobalIPv6Address}}{{end}}", c]).unwrap();
    assert_eq!((ip6("q1"), ip6("q2")), ("fd00:219::2".to_string(), "fd00:219::50".to_string()), "bpfnet's addresses, --ip6 through `ips`");
    assert!(podman.run(&["exec", "q1", "ping", "-6", "-c", "1", "-W", "1", "fd00:219::50"]).unwrap().ok, "q1 -> q2 over IPv6");
    assert!(podman.run(&["exec", "q2", "ping", "-6", "-c", "1", "-W", "1", "fd00:219::1"]).unwrap().ok, "q2 -> the IPv6 gateway");
    podman.ok(&["rm", "-f", "-t", "0", "q1", "q2"]).unwrap();
    let eps = json(&sb.bpfnet_ok(&["endpoint", "ls", "--json"]).unwrap());
    assert_eq!(eps.as_array().unwrap().len(), 0, "{eps}");
}
