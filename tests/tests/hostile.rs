//! Hostile neighbours: the attacks of the security review, each reproduced end to end against
//! the real daemon — a router on the uplink's segment that routes container subnets through the
//! host and sends forged frames, containers that send raw frames (CAP_NET_RAW), a host process
//! that binds the port a container used, local clients that hold connections open — with what
//! must still work checked beside each. Needs root.
use std::{
    io::{Read, Write},
    net::{Ipv4Addr, TcpListener, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use bpfnet_lab::{
    checks::{addr, counter, json},
    frames::{ethernet, mac_of, send_frames, Capture, Ip, UdpRecorder, ICMP, TCP, UDP},
    netns,
    sandbox::{run, run_ok, Outside, FAR_IP, UPLINK_IP},
    traffic::{tcp_connect, tcp_echo_server, tcp_exchange, tcp_round_trip, tcp_name_server, udp_echo_server, udp_exchange, udp_whoami, udp_whoami_server, NameClient},
    Sandbox,
};

const T: Duration = Duration::from_secs(3);
/// How long to wait for traffic that must NOT arrive.
const BLOCKED: Duration = Duration::from_millis(800);
const ROUTER_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);

/// The outside world and the daemon; `web` (10.240.0.0/24) with `web1` (.2, port 8080
/// published to its TCP echo server on 7000, another on the unpublished 7002) and `priv`
/// (10.241.0.0/24, internal) with `int1` (.2, a UDP echo server on 7001).
struct World {
    sb: Sandbox,
    outside: Outside,
    web1: String,
    int1: String,
}

fn world(tag: &str, daemon_args: &[&str]) -> World {
    let mut sb = Sandbox::new(tag).unwrap();
    let outside = sb.add_outside().unwrap();
    udp_whoami_server(&outside.far, addr(FAR_IP, 8001)).unwrap();
    sb.start_daemon_with(&bpfnet_lab::sandbox::DaemonOptions { args: daemon_args, ..Default::default() }).unwrap();
    let web1 = sb.add_netns("web1").unwrap();
    let int1 = sb.add_netns("int1").unwrap();
    sb.bpfnet_ok(&["network", "create", "web", "--subnet", "10.240.0.0/24"]).unwrap();
    sb.bpfnet_ok(&["network", "create", "priv", "--subnet", "10.241.0.0/24", "--internal"]).unwrap();
    sb.bpfnet_ok(&["network", "connect", "web", &web1, "-p", "8080:7000"]).unwrap();
    sb.bpfnet_ok(&["network", "connect", "priv", &int1]).unwrap();
    tcp_echo_server(&web1, addr("10.240.0.2", 7000)).unwrap();
    tcp_echo_server(&web1, addr("10.240.0.2", 7002)).unwrap();
    udp_echo_server(&int1, addr("10.241.0.2", 7001)).unwrap();
    World { sb, outside, web1, int1 }
}

/// The MAC a container sends to for its gateway (the datapath answers its ARP).
fn gateway_mac(sb: &Sandbox, ns: &str, gateway: &str) -> [u8; 6] {
    sb.ping(ns, gateway).unwrap();
    let text = run_ok("ip", &["-n", ns, "neigh", "show", gateway]).unwrap();
    let word = text.split_whitespace().skip_while(|w| *w != "lladdr").nth(1).unwrap_or_else(|| panic!("no neighbour entry: {text}"));
    let bytes: Vec<u8> = word.split(':').map(|b| u8::from_str_radix(b, 16).unwrap()).collect();
    bytes.try_into().unwrap()
}

/// Raw frames from the outside router to the host's uplink.
fn from_lan(w: &World, packets: Vec<Vec<u8>>) {
    let (to, from) = (mac_of(&w.sb.host(), "up0").unwrap(), mac_of(&w.outside.ext, "eth0").unwrap());
    send_frames(&w.outside.ext, "eth0", packets.iter().map(|p| ethernet(to, from, p)).collect()).unwrap();
}

/// Raw frames from a container to its gateway.
fn from_container(sb: &Sandbox, ns: &str, gateway: &str, packets: Vec<Vec<u8>>) {
    let (to, from) = (gateway_mac(sb, ns, gateway), mac_of(ns, "eth0").unwrap());
    send_frames(ns, "eth0", packets.iter().map(|p| ethernet(to, from, p)).collect()).unwrap();
}

/// A DNS query for `name` (type A), as bytes.
fn dns_query(name: &str) -> Vec<u8> {
    let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// Whether the other side still holds `s` open: a read waits (rather than reaching the end,
/// after whatever was sent, or a reset).
fn still_open(s: &TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match (&*s).read(&mut buf) {
            Ok(0) => return false,
            Ok(_) => continue,
            Err(e) => return matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
        }
    }
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

/// Finding 1: a LAN peer routing to a container subnet through the host reaches nothing but
/// published ports.
#[test]
fn the_lan_reaches_containers_only_through_published_ports() {
    let w = world("lan", &[]);
    let ext = &w.outside.ext;
    run_ok("ip", &["-n", ext, "route", "add", "10.240.0.0/24", "via", UPLINK_IP]).unwrap();
    run_ok("ip", &["-n", ext, "route", "add", "10.241.0.0/24", "via", UPLINK_IP]).unwrap();
    assert!(!w.sb.ping(ext, "10.240.0.2").unwrap(), "ping from the LAN straight to a container");
    assert!(tcp_connect(ext, addr("10.240.0.2", 7002), BLOCKED).is_err(), "an unpublished port from the LAN");
    assert!(udp_exchange(ext, addr("10.241.0.2", 7001), b"in", BLOCKED).is_err(), "an internal network's container from the LAN");
    assert!(counter(&w.sb, "drop_uplink_to_container") >= 3);
    // The published port still works, and the container's own way out.
    assert_eq!(tcp_exchange(ext, addr(UPLINK_IP, 8080), b"published", T).unwrap(), b"published");
    assert_eq!(udp_whoami(&w.web1, 0, addr(FAR_IP, 8001), T).unwrap().ip().to_string(), UPLINK_IP);
}

/// Finding 2: a publication on 127.0.0.1 is for the host's own processes; the LAN and
/// containers sending raw frames to 127.0.0.1 reach nothing.
#[test]
fn a_loopback_publication_answers_the_hosts_processes_only() {
    let mut w = world("loop", &[]);
    // web1 (10.240.0.2) is the attacker; the target publishes on 127.0.0.1 only.
    let target = w.sb.add_netns("target").unwrap();
    w.sb.bpfnet_ok(&["network", "connect", "web", &target, "--ip", "10.240.0.3", "-p", "127.0.0.1:5353:7001/udp"]).unwrap();
    let recorder = UdpRecorder::start(&target, addr("10.240.0.3", 7001)).unwrap();

    let host = w.sb.host();
    netns::within(&host, || Ok(UdpSocket::bind("0.0.0.0:0")?.send_to(b"from-host", "127.0.0.1:5353")?)).unwrap();
    assert!(recorder.wait_for(b"from-host", T), "the host's process reaches the loopback publication");

    from_lan(&w, vec![Ip::new(ROUTER_IP, ip("127.0.0.1"), UDP).udp(4444, 5353, b"from-lan")]);
    from_container(&w.sb, &w.web1, "10.240.0.1", vec![Ip::new(ip("10.240.0.2"), ip("127.0.0.1"), UDP).udp(4444, 5353, b"from-container")]);
    std::thread::sleep(BLOCKED);
    assert_eq!(recorder.count(b"from-lan"), 0, "a LAN frame to 127.0.0.1 reached the container");
    assert_eq!(recorder.count(b"from-container"), 0, "a container's frame to 127.0.0.1 reached the container");
    assert!(counter(&w.sb, "drop_martian") >= 2);
}

/// Finding 8 (and martian sources): frames from the LAN with a container's, the host's own or a
/// loopback source reach no host socket and make the resolver forward nothing.
#[test]
fn spoofed_and_martian_sources_from_the_lan_reach_nothing() {
    let w = world("spoof", &[]);
    let upstream = UdpRecorder::start(&w.outside.far, addr(FAR_IP, 53)).unwrap();
    let listener = UdpRecorder::start(&w.sb.host(), addr("0.0.0.0", 9999)).unwrap();
    let query = dns_query("spoofed.example");
    from_lan(
        &w,
        vec![
            Ip::new(ip("10.240.0.2"), ip("10.240.0.1"), UDP).udp(5353, 53, &query),
            Ip::new(ip("10.240.0.2"), ip(UPLINK_IP), UDP).udp(4444, 9999, b"as-a-container"),
            Ip::new(ip(UPLINK_IP), ip(UPLINK_IP), UDP).udp(4444, 9999, b"as-the-host"),
            Ip::new(ip("127.0.0.1"), ip(UPLINK_IP), UDP).udp(4444, 9999, b"as-loopback"),
            Ip::new(ROUTER_IP, ip(UPLINK_IP), UDP).udp(4444, 9999, b"as-itself"),
        ],
    );
    assert!(listener.wait_for(b"as-itself", T), "the router's own datagram reaches the host");
    std::thread::sleep(BLOCKED);
    for marker in [&b"as-a-container"[..], b"as-the-host", b"as-loopback"] {
        assert_eq!(listener.count(marker), 0, "{}", String::from_utf8_lossy(marker));
    }
    assert_eq!(upstream.count(b"spoofed"), 0, "the resolver forwarded a spoofed query");
    assert!(counter(&w.sb, "drop_uplink_spoofed") >= 3 && counter(&w.sb, "drop_martian") >= 1);
}

/// Findings 5 and 3: nothing leaves an internal network — raw ICMP kinds, fragments, another
/// network's published port through the gateway, names forwarded by the resolver.
#[test]
fn internal_networks_have_no_way_out() {
    let w = world("internal", &[]);
    let upstream = UdpRecorder::start(&w.outside.far, addr(FAR_IP, 53)).unwrap();
    let capture = Capture::start(&w.outside.far, "eth0").unwrap();
    let (me, far) = (ip("10.241.0.2"), ip(FAR_IP));
    let mut quoted = Ip::new(far, me, UDP).udp(53, 5353, b"q");
    quoted.extend_from_slice(b"data carried out in an error");
    let mut fragment = Ip { frag: 100, ..Ip::new(me, far, UDP) }.packet(&[0x5a; 64]);
    fragment.truncate(20 + 64);
    from_container(
        &w.sb,
        &w.int1,
        "10.241.0.1",
        vec![
            Ip::new(me, far, ICMP).icmp(13, 0, &[0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            Ip::new(me, far, ICMP).icmp(3, 3, &[&[0u8; 4][..], &quoted].concat()),
            fragment,
        ],
    );
    std::thread::sleep(BLOCKED);
    assert_eq!(capture.from_source(me), 0, "a frame of the internal container reached the outside");
    assert!(counter(&w.sb, "drop_internal") >= 3);
    assert!(tcp_connect(&w.int1, addr("10.241.0.1", 8080), BLOCKED).is_err(), "another network's published port via the gateway");

    let out = w.sb.exec(&w.int1, &["dig", "+time=1", "+tries=1", "@10.241.0.1", "data.exfil.example", "TXT"]).unwrap().stdout;
    assert!(out.contains("status: REFUSED"), "{out}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(upstream.count(b"exfil"), 0, "the resolver forwarded an internal network's query");
    // A network that is not internal still gets its names forwarded.
    w.sb.exec(&w.web1, &["dig", "+time=1", "+tries=1", "@10.240.0.1", "allowed.example"]).unwrap();
    assert!(upstream.wait_for(b"allowed", T), "forwarding for a network that is not internal");
}

/// Finding 4: a host process that binds the port a container's connection uses (to the same
/// server) gets its answers; the container does not take them.
#[test]
fn masquerade_never_takes_the_answers_to_the_hosts_own_sockets() {
    let w = world("ports", &[]);
    assert_eq!(udp_whoami(&w.web1, 40000, addr(FAR_IP, 8001), T).unwrap(), addr(UPLINK_IP, 40000), "the container's port is kept");
    let host = udp_whoami(&w.sb.host(), 40000, addr(FAR_IP, 8001), T).expect("the host's own socket gets its answer");
    assert_eq!(host, addr(UPLINK_IP, 40000));
    // While the host holds a port, a container's new flow from it gets another one.
    let _held = netns::within(&w.sb.host(), || Ok(UdpSocket::bind(("0.0.0.0", 40001))?)).unwrap();
    let other = udp_whoami(&w.web1, 40001, addr(FAR_IP, 8001), T).unwrap();
    assert_ne!(other.port(), 40001, "a port a host socket holds is not given to a translation");
}

/// Finding 11: a host service listening on a port a container publishes keeps its clients on
/// the host (as the TC path decides for the LAN).
#[test]
fn a_host_service_keeps_its_clients_when_a_container_publishes_its_port() {
    let w = world("listener", &[]);
    let host = w.sb.host();
    tcp_name_server(&host, addr("0.0.0.0", 2323), "host-service").unwrap();
    tcp_name_server(&w.web1, addr("10.240.0.2", 80), "container").unwrap();
    w.sb.bpfnet_ok(&["network", "disconnect", "web", &w.web1]).unwrap();
    w.sb.bpfnet_ok(&["network", "connect", "web", &w.web1, "--ip", "10.240.0.2", "-p", "2323:80", "-p", "2324:80"]).unwrap();
    for to in ["127.0.0.1", UPLINK_IP] {
        let (name, _) = NameClient::connect(&host, addr(to, 2323), T).unwrap().ask().unwrap();
        assert_eq!(name, "host-service", "the host's client of {to}:2323");
    }
    // A port no host service holds goes to the container.
    let (name, _) = NameClient::connect(&host, addr("127.0.0.1", 2324), T).unwrap().ask().unwrap();
    assert_eq!(name, "container");
}

/// Finding 6: floods of five times the connection table (`--ct-max 4096`) — SYNs from 20,000
/// spoofed LAN addresses to a published port, 20,000 answered UDP flows from one container —
/// evict neither an idle connection through the published port nor an idle masqueraded one:
/// the next segment of each, from either side, arrives (it used to be answered by a reset). The
/// pressure shows in `stats`.
#[test]
fn established_connections_survive_floods_from_the_lan_and_from_a_container() {
    let mut w = world("flood", &["--ct-max", "4096"]);
    let mut published = tcp_connect(&w.outside.ext, addr(UPLINK_IP, 8080), T).unwrap();
    assert_eq!(tcp_round_trip(&mut published, b"before").unwrap(), b"before");
    let far_listener = netns::within(&w.outside.far, || Ok(TcpListener::bind(addr(FAR_IP, 9000))?)).unwrap();
    let mut masqueraded = tcp_connect(&w.web1, addr(FAR_IP, 9000), T).unwrap();
    let (mut server_side, _) = far_listener.accept().unwrap();
    server_side.write_all(b"before").unwrap();
    let mut got = [0u8; 6];
    masqueraded.set_read_timeout(Some(T)).unwrap();
    masqueraded.read_exact(&mut got).unwrap();

    // From the LAN: SYNs from 198.18.0.0/17, each a new connection to the published port.
    let syns = (0..20_000u32).map(|i| Ip::new(Ipv4Addr::from(0xc612_0000 + i), ip(UPLINK_IP), TCP).tcp_syn(1024 + (i % 50_000) as u16, 8080)).collect();
    from_lan(&w, syns);
    // From a container: datagrams from 20,000 ports to a server that answers each.
    let attacker = w.sb.add_netns("atk").unwrap();
    w.sb.bpfnet_ok(&["network", "connect", "web", &attacker, "--ip", "10.240.0.3"]).unwrap();
    // In bursts the server keeps up with, so that nearly every flow is answered.
    let (to, from) = (gateway_mac(&w.sb, &attacker, "10.240.0.1"), mac_of(&attacker, "eth0").unwrap());
    for burst in 0..40u32 {
        let flows = (0..500u32).map(|i| ethernet(to, from, &Ip::new(ip("10.240.0.3"), ip(FAR_IP), UDP).udp(10_000 + (burst * 500 + i) as u16, 8001, b"flood")));
        send_frames(&attacker, "eth0", flows.collect()).unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_secs(1));

    // The LAN client's next segment reaches the container; the far server's reaches web1.
    assert_eq!(tcp_round_trip(&mut published, b"after").unwrap(), b"after", "the published connection survives");
    server_side.write_all(b"pushed").unwrap();
    masqueraded.read_exact(&mut got).expect("the masqueraded connection survives");
    assert_eq!(&got, b"pushed");
    // Both floods filled what they could: the new-connection table, the container's share.
    let stats = json(&w.sb.bpfnet_ok(&["stats", "--json"]).unwrap());
    let ct = &stats["conntrack"];
    assert!(ct["pending_pressure_percent"].as_f64().unwrap() > 50.0, "{ct}");
    assert!(ct["entries"].as_u64().unwrap() <= 4096 / 4 + 16, "one container holds at most its share: {ct}");
    assert!(counter(&w.sb, "ct_endpoint_share_full") > 0, "{ct}");
}

/// Findings 7 and 9: connections held open to the resolver (from a container) and to the
/// metrics port (from the host) are capped: the daemon's descriptors stay bounded, the API and
/// other clients are served.
#[test]
fn the_resolver_and_the_metrics_port_hold_their_limits() {
    let w = world("limits", &["--metrics", "127.0.0.1:9464"]);
    let pid = w.sb.daemon_pid().unwrap();
    let before = open_fds(pid);
    let held_dns = netns::within(&w.web1, || {
        Ok((0..300).filter_map(|_| TcpStream::connect_timeout(&addr("10.240.0.1", 53), Duration::from_secs(1)).ok()).collect::<Vec<_>>())
    })
    .unwrap();
    let held_metrics = netns::within(&w.sb.host(), || {
        Ok((0..200).filter_map(|_| TcpStream::connect_timeout(&addr("127.0.0.1", 9464), Duration::from_secs(1)).ok()).collect::<Vec<_>>())
    })
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let during = open_fds(pid);
    assert!(during < before + 16 + 32 + 40, "the daemon holds {during} descriptors, {before} before");
    // Over the cap, closed at once.
    let open = held_dns.iter().filter(|s| still_open(s)).count();
    assert!(open <= 16, "{open} resolver connections of one client stay open");
    // The API answers, and another container's names resolve.
    let started = Instant::now();
    w.sb.bpfnet_ok(&["network", "ls"]).unwrap();
    assert!(started.elapsed() < Duration::from_secs(2), "the API took {:?}", started.elapsed());
    let out = w.sb.exec(&w.int1, &["dig", "+time=1", "+tries=2", "@10.241.0.1", w.int1.as_str()]).unwrap().stdout;
    assert!(out.contains("status: NOERROR") && out.contains("10.241.0.2"), "{out}");
    // Idle metrics connections are closed after the timeout; then scraping works.
    std::thread::sleep(Duration::from_secs(6));
    let open = held_metrics.iter().filter(|s| still_open(s)).count();
    assert_eq!(open, 0, "idle metrics connections are closed");
    drop((held_dns, held_metrics));
    let text = netns::within(&w.sb.host(), || {
        let mut s = TcpStream::connect(("127.0.0.1", 9464))?;
        std::io::Write::write_all(&mut s, b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        Ok(text)
    })
    .unwrap();
    assert!(text.contains("bpfnet_datapath_packets_total"), "{text}");
}

/// The smaller findings: the state is root's only, and a request over the daemon's limit is
/// refused with a message (it used to die of SIGPIPE).
#[test]
fn the_state_is_private_and_an_oversized_request_is_refused_readably() {
    use std::os::unix::fs::PermissionsExt;
    let w = world("small", &[]);
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&w.sb.state_dir()), 0o700);
    assert_eq!(mode(&w.sb.state_dir().join("state.json")), 0o600);
    assert!(!w.sb.state_dir().join("state.json.tmp").exists());
    let backends: Vec<String> = (0..3000).map(|i| format!("--backend=/run/netns/backend-with-a-long-name-{i:05}:8080")).collect();
    let mut args = vec!["service", "create", "big", "--network", "web", "--port", "80"];
    args.extend(backends.iter().map(String::as_str));
    let r = w.sb.bpfnet(&args).unwrap();
    assert!(!r.ok, "{}", r.stderr);
    assert!(r.stderr.contains("more than the 65536 bytes the daemon accepts"), "{}", r.stderr);
}

/// Finding 10: with the state directory on a full filesystem, a change that cannot be recorded
/// is not made — a disconnect leaves the container connected and reachable, a batch of services
/// is refused whole — and a restart brings back exactly what was acknowledged.
#[test]
fn a_full_disk_refuses_changes_whole_and_a_restart_brings_back_what_was_acknowledged() {
    let mut sb = Sandbox::new("full").unwrap();
    let state = sb.state_dir();
    std::fs::create_dir_all(&state).unwrap();
    // Unmounted by the sandbox's cleanup, which unmounts whatever lies below its directory.
    run_ok("mount", &["-t", "tmpfs", "-o", "size=512k,mode=0700", "bpfnet-full", state.to_str().unwrap()]).unwrap();
    sb.start_daemon().unwrap();
    let c1 = sb.add_netns("c1").unwrap();
    sb.bpfnet_ok(&["network", "create", "web", "--subnet", "10.240.0.0/24"]).unwrap();
    sb.bpfnet_ok(&["network", "connect", "web", &c1, "-p", "8080:80"]).unwrap();
    let services = sb.state_dir().with_file_name("services.json");
    let list: Vec<String> = (0..40).map(|i| format!(r#"{{"name": "s{i}", "network": "web", "port": "80", "publish": "{}", "backends": ["{c1}"]}}"#, 9000 + i)).collect();
    std::fs::write(&services, format!(r#"{{"services": [{}]}}"#, list.join(","))).unwrap();

    // Fill the filesystem (dd stops at ENOSPC).
    let filler = state.join("filler");
    let _ = run("dd", &["if=/dev/zero", &format!("of={}", filler.display()), "bs=4k"]);
    let r = sb.bpfnet(&["network", "disconnect", "web", &c1]).unwrap();
    assert!(!r.ok && r.stderr.contains("No space left"), "the disconnect must fail, saying why: {}", r.stderr);
    assert!(sb.ping(&sb.host(), "10.240.0.2").unwrap(), "the refused disconnect left the container reachable");
    assert!(sb.bpfnet_ok(&["network", "inspect", "web"]).unwrap().contains("10.240.0.2"));
    let r = sb.bpfnet(&["service", "apply", services.to_str().unwrap()]).unwrap();
    assert!(!r.ok, "the batch cannot be recorded: {}", r.stdout);
    assert_eq!(json(&sb.bpfnet_ok(&["service", "ls", "--json"]).unwrap()).as_array().unwrap().len(), 0, "no service of the refused batch");
    assert!(!state.join("state.json.tmp").exists(), "no temporary file left behind");

    // Room again, and a restart: what was acknowledged, no more, no less.
    std::fs::remove_file(&filler).unwrap();
    sb.stop_daemon(libc::SIGTERM).unwrap();
    sb.start_daemon().unwrap();
    assert!(sb.ping(&sb.host(), "10.240.0.2").unwrap(), "the container is still connected after the restart");
    assert_eq!(json(&sb.bpfnet_ok(&["service", "ls", "--json"]).unwrap()).as_array().unwrap().len(), 0, "no service came back");
    sb.bpfnet_ok(&["network", "disconnect", "web", &c1]).unwrap();
    assert!(!sb.ping(&sb.host(), "10.240.0.2").unwrap());
}
