//! Docker's own CLI driving bpfnet through the network plugin: dockerd (run with
//! --iptables=false --userland-proxy=false) and the bpfnet daemon share a sandbox's "host"
//! namespace, with an outside router and server behind the uplink. Needs root and Debian's
//! docker.io and busybox-static (installed by `cargo xtask test`).
use std::time::Duration;

use serde_json::json;

use bpfnet_lab::{
    checks::{addr, counter, json},
    engines::{docker_installed, Docker, BUSYBOX_IMAGE},
    sandbox::{DaemonOptions, Outside, FAR_IP, FAR_IP6, UPLINK_IP, UPLINK_IP6},
    traffic::{tcp_whoami, tcp_whoami_server, udp_whoami, udp_whoami_server},
    Sandbox,
};

const T: Duration = Duration::from_secs(3);

/// A sandbox with the outside world (a whoami server on far), the bpfnet daemon serving the
/// plugin, dockerd, and the busybox image.
fn docker_sandbox(tag: &str) -> (Sandbox, Outside, Docker) {
    docker_sandbox_with(tag, false)
}

/// As [`docker_sandbox`]; with `ipv6`, the outside has IPv6 too ([`Sandbox::add_ipv6_outside`]).
fn docker_sandbox_with(tag: &str, ipv6: bool) -> (Sandbox, Outside, Docker) {
    assert!(docker_installed(), "dockerd is missing: `cargo xtask setup` installs docker.io");
    let mut sb = Sandbox::new(tag).unwrap();
    let outside = sb.add_outside().unwrap();
    if ipv6 {
        sb.add_ipv6_outside(&outside).unwrap();
    }
    tcp_whoami_server(&outside.far, addr(FAR_IP, 8000)).unwrap();
    let plugin = Docker::plugin_arg(&sb);
    sb.start_daemon_with(&DaemonOptions { args: &[&plugin], ..Default::default() }).unwrap();
    let docker = Docker::start(&sb).unwrap();
    docker.import_busybox().unwrap();
    (sb, outside, docker)
}

/// `docker run -d` of a container that idles, with extra `docker run` arguments.
fn run_idle(docker: &Docker, name: &str, args: &[&str]) -> String {
    let mut all = vec!["run", "-d", "--name", name];
    all.extend_from_slice(args);
    all.extend_from_slice(&[BUSYBOX_IMAGE, "sleep", "600"]);
    docker.ok(&all).unwrap()
}

fn pings(docker: &Docker, from: &str, to: &str) -> bool {
    docker.run(&["exec", from, "ping", "-c", "1", "-W", "1", to]).unwrap().ok
}

/// bpfnet's network for a Docker network.
fn bpfnet_network(sb: &Sandbox, docker: &Docker, name: &str) -> serde_json::Value {
    let id = docker.ok(&["network", "inspect", "-f", "{{.Id}}", name]).unwrap();
    let bpfnet_name = bpfnet::docker::network_name(&id);
    json(&sb.bpfnet_ok(&["network", "inspect", &bpfnet_name]).unwrap())[0].clone()
}

#[test]
fn docker_cli_drives_the_reference_scenario() {
    let (sb, outside, docker) = docker_sandbox("docker");

    // Networks: what Docker's IPAM gave is what bpfnet uses; options reach it.
    docker.ok(&["network", "create", "-d", "bpfnet", "--subnet", "10.212.1.0/24", "backend"]).unwrap();
    docker.ok(&["network", "create", "-d", "bpfnet", "--subnet", "10.212.2.0/24", "--gateway", "10.212.2.254", "frontend"]).unwrap();
    docker.ok(&["network", "create", "-d", "bpfnet", "--subnet", "10.212.3.0/24", "--internal", "isolated"]).unwrap();
    docker.ok(&["network", "create", "-d", "bpfnet", "--subnet", "10.212.4.0/24", "-o", "icc=false", "noicc"]).unwrap();
    let backend = bpfnet_network(&sb, &docker, "backend");
    assert_eq!(backend["IPAM"]["Config"][0]["Subnet"], "10.212.1.0/24", "{backend}");
    assert_eq!(bpfnet_network(&sb, &docker, "frontend")["IPAM"]["Config"][0]["Gateway"], "10.212.2.254");
    assert_eq!(bpfnet_network(&sb, &docker, "isolated")["Internal"], true);
    assert_eq!(bpfnet_network(&sb, &docker, "noicc")["Options"]["icc"], "false");

    // Bad input reaches the docker CLI as a readable message, and nothing is left behind.
    let bad = docker.run(&["network", "create", "-d", "bpfnet", "-o", "colour=blue", "bad"]).unwrap();
    assert!(!bad.ok && bad.stderr.contains("unknown network option \"colour\""), "{}", bad.stderr);
    let overlap = docker.run(&["network", "create", "-d", "bpfnet", "--subnet", "10.212.1.0/25", "overlap"]).unwrap();
    assert!(!overlap.ok && overlap.stderr.contains("overlaps"), "{}", overlap.stderr);
    let networks = json(&sb.bpfnet_ok(&["network", "ls", "--json"]).unwrap());
    assert_eq!(networks.as_array().unwrap().len(), 4, "{networks}");

    // The scenario: con1, con2 on backend; con3 on frontend; con2 joins frontend too (eth1).
    run_idle(&docker, "con1", &["--network", "backend", "--network-alias", "db"]);
    run_idle(&docker, "con2", &["--network", "backend", "-p", "8080:80", "-p", "8081:81/udp"]);
    run_idle(&docker, "con3", &["--network", "frontend", "--ip", "10.212.2.9"]);
    docker.ok(&["network", "connect", "frontend", "con2"]).unwrap();
    let con2_addrs = docker.ok(&["exec", "con2", "ip", "-o", "-4", "addr"]).unwrap();
    assert!(con2_addrs.contains("eth0") && con2_addrs.contains("10.212.1.3/24"), "{con2_addrs}");
    assert!(con2_addrs.contains("eth1") && con2_addrs.contains("10.212.2.1/24"), "{con2_addrs}");
    let mac = docker.ok(&["exec", "con1", "cat", "/sys/class/net/eth0/address"]).unwrap();
    assert_eq!(mac, "02:42:0a:d4:01:02", "the MAC bpfnet answers ARP with");
    let route = docker.ok(&["exec", "con1", "ip", "route"]).unwrap();
    assert!(route.contains("default via 10.212.1.1 dev eth0"), "{route}");

    // The matrix, with Docker's names (its resolver, 127.0.0.11, serves remote-driver networks).
    assert!(pings(&docker, "con1", "con2"), "con1 -> con2 by name");
    assert!(pings(&docker, "con2", "db"), "con2 -> con1 by its alias");
    assert!(pings(&docker, "con2", "10.212.2.9"), "con2 -> con3 over frontend");
    assert!(pings(&docker, "con3", "10.212.2.1"), "con3 -> con2 over frontend");
    assert!(!pings(&docker, "con1", "10.212.2.9"), "con1 -> con3 crosses networks: dropped");
    assert!(!pings(&docker, "con3", "10.212.1.2"), "con3 -> con1 crosses networks: dropped");
    assert!(!pings(&docker, "con3", "db"), "con1's alias is not a name on frontend");

    // -p from outside: the container sees the client's own address (no docker-proxy, no SNAT).
    let con2 = docker.pid("con2").unwrap();
    tcp_whoami_server(&con2, addr("0.0.0.0", 80)).unwrap();
    udp_whoami_server(&con2, addr("0.0.0.0", 81)).unwrap();
    let seen = tcp_whoami(&outside.ext, addr(UPLINK_IP, 8080), T).unwrap();
    assert_eq!(seen.ip().to_string(), "192.0.2.2", "the client's address, preserved");
    let seen = udp_whoami(&outside.ext, 0, addr(UPLINK_IP, 8081), T).unwrap();
    assert_eq!(seen.ip().to_string(), "192.0.2.2");
    let ports = sb.bpfnet_ok(&["port", "ls"]).unwrap();
    assert!(ports.contains("8080") && ports.contains("8081"), "{ports}");
    // A second container asking for the same host port is refused, readably.
    let clash = docker.run(&["run", "-d", "--name", "clash", "--network", "backend", "-p", "8080:80", BUSYBOX_IMAGE, "sleep", "600"]).unwrap();
    assert!(!clash.ok && clash.stderr.contains("8080") && clash.stderr.contains("already published"), "{}", clash.stderr);
    docker.run(&["rm", "-f", "clash"]).unwrap();

    // Masquerade out: the outside sees the uplink's address; an internal network has no way out.
    let con1 = docker.pid("con1").unwrap();
    assert_eq!(tcp_whoami(&con1, addr(FAR_IP, 8000), T).unwrap().ip().to_string(), UPLINK_IP);
    run_idle(&docker, "con4", &["--network", "isolated"]);
    let route = docker.ok(&["exec", "con4", "ip", "route"]).unwrap();
    assert!(!route.contains("default"), "an internal network gives no default route: {route}");
    assert!(!pings(&docker, "con4", FAR_IP));
    // icc=false: containers of that network do not reach each other.
    run_idle(&docker, "con5", &["--network", "noicc"]);
    run_idle(&docker, "con6", &["--network", "noicc"]);
    assert!(!pings(&docker, "con5", "con6"), "icc=false");

    // bpfnet sees Docker's endpoints; removing containers cleans up, ports included.
    let endpoints = json(&sb.bpfnet_ok(&["endpoint", "ls", "--json"]).unwrap());
    let docker_eps = endpoints.as_array().unwrap().iter().filter(|e| e["frontend"] == "docker").count();
    assert_eq!(docker_eps, 7, "{endpoints}");
    docker.ok(&["network", "disconnect", "frontend", "con2"]).unwrap();
    assert!(!pings(&docker, "con3", "10.212.2.1"), "disconnected");
    docker.ok(&["rm", "-f", "con2"]).unwrap();
    assert!(tcp_whoami(&outside.ext, addr(UPLINK_IP, 8080), Duration::from_millis(700)).is_err(), "8080 unpublished");
    let ports = sb.bpfnet_ok(&["port", "ls"]).unwrap();
    assert!(!ports.contains("8080"), "{ports}");
    docker.ok(&["rm", "-f", "con1", "con3", "con4", "con5", "con6"]).unwrap();
    let endpoints = json(&sb.bpfnet_ok(&["endpoint", "ls", "--json"]).unwrap());
    assert_eq!(endpoints.as_array().unwrap().len(), 0, "{endpoints}");
    for name in ["backend", "frontend", "isolated", "noicc"] {
        docker.ok(&["network", "rm", name]).unwrap();
    }
    let networks = json(&sb.bpfnet_ok(&["network", "ls", "--json"]).unwrap());
    assert_eq!(networks.as_array().unwrap().len(), 0, "{networks}");
    let leftovers = sb.exec(&sb.host(), &["ip", "-o", "link", "show"]).unwrap().stdout;
    assert!(!leftovers.contains("bn") && !leftovers.contains("bh"), "no veth left: {leftovers}");
}

#[test]
fn restarts_of_either_daemon_lose_nothing() {
    let (mut sb, _outside, mut docker) = docker_sandbox("dockerrst");
    docker.ok(&["network", "create", "-d", "bpfnet", "--subnet", "10.213.1.0/24", "web"]).unwrap();
    run_idle(&docker, "ca", &["--network", "web", "--restart", "always"]);
    run_idle(&docker, "cb", &["--network", "web", "-p", "9090:90"]);
    assert!(pings(&docker, "ca", "cb"));

    // bpfnet restarts: forwarding goes on meanwhile, and Docker's next calls are served.
    sb.stop_daemon(libc::SIGKILL).unwrap();
    assert!(pings(&docker, "ca", "cb"), "forwarding without the daemon");
    let plugin = Docker::plugin_arg(&sb);
    sb.start_daemon_with(&DaemonOptions { args: &[&plugin], ..Default::default() }).unwrap();
    run_idle(&docker, "cc", &["--network", "web"]);
    assert!(pings(&docker, "cc", "ca"));

    // dockerd restarts: its network is still bpfnet's (Docker does not create it again), the
    // containers it restarts get endpoints again, and the old ones are gone.
    docker.restart(&sb).unwrap();
    let a_running = docker.ok(&["inspect", "-f", "{{.State.Running}}", "ca"]).unwrap();
    assert_eq!(a_running, "true", "restarted by its policy");
    run_idle(&docker, "cd", &["--network", "web", "-p", "9090:90"]);
    assert!(pings(&docker, "cd", "ca"), "a new container reaches the restarted one");
    let endpoints = json(&sb.bpfnet_ok(&["endpoint", "ls", "--json"]).unwrap());
    assert_eq!(endpoints.as_array().unwrap().len(), 2, "ca and cd only: {endpoints}");

    // dockerd killed: restarted, it drops the endpoints it had without telling the driver;
    // bpfnet frees them when Docker gives their addresses out again.
    docker.kill();
    docker.restart(&sb).unwrap();
    docker.run(&["rm", "-f", "cd"]).unwrap();
    run_idle(&docker, "ce", &["--network", "web", "-p", "9090:90"]);
    assert!(pings(&docker, "ce", "ca"));
}

#[test]
fn bpfnet_ipam_keeps_docker_networks_clear_of_others() {
    let (sb, _outside, docker) = docker_sandbox("dockeripam");
    // A network of bpfnet's own CLI takes the first default subnet (172.17.0.0/16).
    sb.bpfnet_ok(&["network", "create", "own"]).unwrap();
    let own = json(&sb.bpfnet_ok(&["network", "inspect", "own"]).unwrap());
    assert_eq!(own[0]["IPAM"]["Config"][0]["Subnet"], "172.17.0.0/16");

    // Docker with bpfnet's IPAM: a subnet clear of it, addresses from bpfnet.
    docker.ok(&["network", "create", "-d", "bpfnet", "--ipam-driver", "bpfnet", "auto"]).unwrap();
    let subnet = docker.ok(&["network", "inspect", "-f", "{{range .IPAM.Config}}{{.Subnet}} {{.Gateway}}{{end}}", "auto"]).unwrap();
    assert_eq!(subnet, "172.18.0.0/16 172.18.0.1", "the next free subnet, its first address the gateway");
    assert_eq!(bpfnet_network(&sb, &docker, "auto")["IPAM"]["Config"][0]["Subnet"], "172.18.0.0/16");
    run_idle(&docker, "i1", &["--network", "auto"]);
    run_idle(&docker, "i2", &["--network", "auto"]);
    let ip = |c: &str| docker.ok(&["inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", c]).unwrap();
    assert_eq!((ip("i1"), ip("i2")), ("172.18.0.2".to_string(), "172.18.0.3".to_string()));
    assert!(pings(&docker, "i1", "i2"));

    // A requested subnet, gateway and address; a clash is refused readably.
    docker
        .ok(&["network", "create", "-d", "bpfnet", "--ipam-driver", "bpfnet", "--subnet", "10.214.0.0/24", "--gateway", "10.214.0.254", "fixed"])
        .unwrap();
    run_idle(&docker, "i3", &["--network", "fixed", "--ip", "10.214.0.7"]);
    assert_eq!(ip("i3"), "10.214.0.7");
    let clash = docker.run(&["network", "create", "-d", "bpfnet", "--ipam-driver", "bpfnet", "--subnet", "172.17.5.0/24", "clash"]).unwrap();
    assert!(!clash.ok && clash.stderr.contains("overlaps with network \"own\""), "{}", clash.stderr);
    let taken = docker.run(&["run", "-d", "--name", "i4", "--network", "fixed", "--ip", "10.214.0.7", BUSYBOX_IMAGE, "sleep", "600"]).unwrap();
    assert!(!taken.ok && taken.stderr.contains("10.214.0.7"), "{}", taken.stderr);
    docker.run(&["rm", "-f", "i4"]).unwrap();

    // Addresses and pools come back when Docker releases them.
    docker.ok(&["rm", "-f", "i2", "i3"]).unwrap();
    run_idle(&docker, "i5", &["--network", "auto"]);
    assert_eq!(ip("i5"), "172.18.0.3", "i2's address, released");
    docker.ok(&["rm", "-f", "i1", "i5"]).unwrap();
    docker.ok(&["network", "rm", "auto", "fixed"]).unwrap();
    let state = std::fs::read_to_string(sb.state_dir().join("state.json")).unwrap();
    assert_eq!(json(&state)["pools"], serde_json::json!([]), "every pool released");
    docker.ok(&["network", "create", "-d", "bpfnet", "--ipam-driver", "bpfnet", "--subnet", "10.214.0.0/24", "again"]).unwrap();

    // --ip-range: bpfnet's IPAM hands addresses out of it.
    docker
        .ok(&["network", "create", "-d", "bpfnet", "--ipam-driver", "bpfnet", "--subnet", "10.215.0.0/24", "--ip-range", "10.215.0.64/26", "ranged"])
        .unwrap();
    run_idle(&docker, "r1", &["--network", "ranged"]);
    assert_eq!(ip("r1"), "10.215.0.64", "the range's first address");
    docker.ok(&["rm", "-f", "r1"]).unwrap();
}

#[test]
fn docker_dual_stack_networks_carry_ipv6_with_either_ipam() {
    let (sb, outside, docker) = docker_sandbox_with("docker6", true);
    // Docker's own IPAM, a given IPv6 subnet; bpfnet's IPAM, an IPv6 /64 of its pool.
    docker.ok(&["network", "create", "-d", "bpfnet", "--ipv6", "--subnet", "10.216.1.0/24", "--subnet", "fd00:216:1::/64", "dual"]).unwrap();
    docker.ok(&["network", "create", "-d", "bpfnet", "--ipam-driver", "bpfnet", "--ipv6", "--subnet", "10.216.2.0/24", "dualipam"]).unwrap();
    let dual = bpfnet_network(&sb, &docker, "dual");
    assert_eq!((dual["EnableIPv6"].clone(), dual["IPAM"]["Config"][1]["Subnet"].clone()), (json!(true), json!("fd00:216:1::/64")), "{dual}");
    let pooled = bpfnet_network(&sb, &docker, "dualipam");
    assert_eq!(pooled["IPAM"]["Config"][1]["Subnet"], "fd62:7066::/64", "{pooled}");

    run_idle(&docker, "d1", &["--network", "dual"]);
    run_idle(&docker, "d2", &["--network", "dual", "--ip6", "fd00:216:1::50"]);
    run_idle(&docker, "p1", &["--network", "dualipam"]);
    let ip6 = |c: &str| docker.ok(&["inspect", "-f", "{{range .NetworkSettings.Networks}}{{.GlobalIPv6Address}}{{end}}", c]).unwrap();
    assert_eq!(ip6("d2"), "fd00:216:1::50");
    let (d1, p1) = (ip6("d1"), ip6("p1"));
    assert!(d1.starts_with("fd00:216:1::") && p1.starts_with("fd62:7066::"), "{d1} {p1}");
    // What Docker says is what bpfnet holds.
    let holds = bpfnet_network(&sb, &docker, "dual")["Containers"].as_object().unwrap().values().any(|c| c["IPv6Address"] == format!("{d1}/64"));
    assert!(holds, "bpfnet's endpoint has Docker's address {d1}");

    let ping6 = |from: &str, to: &str| docker.run(&["exec", from, "ping", "-6", "-c", "1", "-W", "1", to]).unwrap().ok;
    assert!(ping6("d1", "fd00:216:1::50"), "between containers of the network");
    assert!(ping6("d1", "fd00:216:1::1"), "to the gateway");
    assert!(ping6("p1", "fd62:7066::1"));
    let isolated = counter(&sb, "drop_isolation");
    assert!(!ping6("d1", &p1), "not to another network's container");
    assert!(counter(&sb, "drop_isolation") > isolated);

    // -p 8090:7000 on a dual-stack network: published on both families, each to the container's
    // address of that family, the client's own address kept.
    run_idle(&docker, "w6", &["--network", "dual", "-p", "8090:7000"]);
    tcp_whoami_server(&docker.pid("w6").unwrap(), addr("::", 7000)).unwrap();
    let seen = tcp_whoami(&outside.far, addr(UPLINK_IP6, 8090), T).unwrap();
    assert_eq!(seen.ip().to_string(), FAR_IP6, "over IPv6");
    let seen = tcp_whoami(&outside.far, addr(UPLINK_IP, 8090), T).unwrap();
    assert_eq!(seen.ip().to_canonical().to_string(), FAR_IP, "over IPv4");
    // IPv6 out through NAT66 too.
    tcp_whoami_server(&outside.far, addr(FAR_IP6, 8001)).unwrap();
    let out = docker.run(&["exec", "w6", "nc", "-w", "2", FAR_IP6, "8001"]).unwrap();
    assert!(out.stdout.contains(UPLINK_IP6), "the outside sees the uplink's IPv6 address: {out:?}");

    docker.ok(&["rm", "-f", "d1", "d2", "p1", "w6"]).unwrap();
    docker.ok(&["network", "rm", "dual", "dualipam"]).unwrap();
    let state = json(&std::fs::read_to_string(sb.state_dir().join("state.json")).unwrap());
    assert_eq!((state["pools"].clone(), state["networks"].clone()), (json!([]), json!([])), "every pool and network released");
}
