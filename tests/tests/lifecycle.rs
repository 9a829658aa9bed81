//! The endpoint lifecycle as front-ends (Docker's CreateEndpoint/Join/Leave/DeleteEndpoint, CNI's
//! ADD/DEL) drive it through `bpfnet endpoint`: allocate, attach, detach, release, each checked
//! in the kernel and with real traffic, through restarts, crashes and vanished namespaces.
use std::time::{Duration, Instant};

use bpfnet_lab::{
    checks::{addr, json, map_dumps},
    sandbox::run_ok,
    traffic::{tcp_echo_server, tcp_exchange},
    Sandbox,
};

const T: Duration = Duration::from_secs(2);

fn endpoint_state(sb: &Sandbox, id: &str) -> String {
    let ep = json(&sb.bpfnet_ok(&["endpoint", "inspect", id]).unwrap());
    if ep[0]["attachment"].is_null() { "allocated".into() } else { ep[0]["attachment"]["interface"].as_str().unwrap().to_string() }
}

fn host_veths(sb: &Sandbox) -> usize {
    run_ok("ip", &["-n", &sb.host(), "-br", "link"]).unwrap().lines().filter(|l| l.starts_with("bn")).count()
}

#[test]
fn allocate_attach_detach_release_step_by_step() {
    let mut sb = Sandbox::new("life").unwrap();
    sb.start_daemon().unwrap();
    let a = sb.add_netns("a").unwrap();
    let b = sb.add_netns("b").unwrap();
    let c = sb.add_netns("c").unwrap();
    sb.bpfnet_ok(&["network", "create", "life", "--subnet", "10.231.0.0/24"]).unwrap();
    sb.bpfnet_ok(&["network", "connect", "life", &b]).unwrap(); // 10.231.0.2
    tcp_echo_server(&b, addr("10.231.0.2", 7000)).unwrap();

    // Allocate: an address and a port are reserved; nothing in the kernel changes.
    let maps_before = map_dumps(&sb);
    let created = json(&sb.bpfnet_ok(&["endpoint", "create", "life", "web", "--ip", "10.231.0.10", "-p", "8080:80", "--json"]).unwrap());
    let id = created["endpoint_id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 64);
    assert_eq!(created["ipv4_address"], "10.231.0.10/24");
    assert!(created["attachment"].is_null(), "{created}");
    assert_eq!(map_dumps(&sb), maps_before, "allocating programs nothing");
    assert_eq!(host_veths(&sb), 1, "only b's veth");
    let ports = json(&sb.bpfnet_ok(&["port", "ls", "--json"]).unwrap());
    assert_eq!((ports[0]["host"].as_str(), ports[0]["attached"].as_bool()), (Some("0.0.0.0:8080"), Some(false)), "{ports}");
    // What it holds cannot be taken by anyone else.
    let r = sb.bpfnet(&["network", "connect", "life", &c, "--ip", "10.231.0.10"]).unwrap();
    assert!(!r.ok && r.stderr.contains("already in use in network \"life\" by web"), "{}", r.stderr);
    let r = sb.bpfnet(&["network", "connect", "life", &c, "-p", "8080:81"]).unwrap();
    assert!(!r.ok && r.stderr.contains("already published by web"), "{}", r.stderr);

    // Attach under a name of the caller's choosing, by a prefix of the id.
    let short = &id[..12];
    let attached = json(&sb.bpfnet_ok(&["endpoint", "attach", short, &a, "--interface", "web0", "--json"]).unwrap());
    assert_eq!((attached["interface"].as_str(), attached["ipv4_address"].as_str()), (Some("web0"), Some("10.231.0.10/24")));
    let inside = sb.exec(&a, &["ip", "-br", "-4", "addr"]).unwrap().stdout;
    assert!(inside.lines().any(|l| l.starts_with("web0") && l.contains("10.231.0.10/24")), "{inside}");
    let route = sb.exec(&a, &["ip", "route", "show", "default"]).unwrap().stdout;
    assert!(route.contains("via 10.231.0.1 dev web0"), "{route}");
    assert_eq!(tcp_exchange(&a, addr("10.231.0.2", 7000), b"attached", T).unwrap(), b"attached");
    assert_eq!(endpoint_state(&sb, short), "web0");
    let r = sb.bpfnet(&["endpoint", "attach", short, &c]).unwrap();
    assert!(!r.ok && r.stderr.contains("is already attached"), "{}", r.stderr);

    // Survives a restart attached.
    sb.stop_daemon(libc::SIGTERM).unwrap();
    sb.start_daemon().unwrap();
    assert_eq!(tcp_exchange(&a, addr("10.231.0.2", 7000), b"restarted", T).unwrap(), b"restarted");

    // Detach: the interface and the datapath entries go; the address and the port stay reserved.
    sb.bpfnet_ok(&["endpoint", "detach", short]).unwrap();
    assert!(!sb.exec(&a, &["ip", "link", "show", "web0"]).unwrap().ok, "web0 removed");
    assert_eq!(endpoint_state(&sb, short), "allocated");
    assert_eq!(map_dumps(&sb), maps_before, "nothing of it left in the maps");
    assert!(sb.ping(&b, "10.231.0.1").unwrap(), "b pings its gateway");
    assert!(!sb.ping(&b, "10.231.0.10").unwrap(), "but nobody answers at the detached address");
    let r = sb.bpfnet(&["network", "connect", "life", &c, "--ip", "10.231.0.10"]).unwrap();
    assert!(!r.ok && r.stderr.contains("already in use"), "still reserved: {}", r.stderr);
    let r = sb.bpfnet(&["endpoint", "detach", short]).unwrap();
    assert!(!r.ok && r.stderr.contains("is not attached"), "{}", r.stderr);

    // Survives a restart detached, then attaches elsewhere.
    sb.stop_daemon(libc::SIGTERM).unwrap();
    sb.start_daemon().unwrap();
    assert_eq!(endpoint_state(&sb, short), "allocated");
    sb.bpfnet_ok(&["endpoint", "attach", short, &c]).unwrap();
    assert_eq!(endpoint_state(&sb, short), "eth0", "the first free ethN by default");
    assert_eq!(tcp_exchange(&c, addr("10.231.0.2", 7000), b"moved", T).unwrap(), b"moved");

    // Release: detached first, then freed.
    sb.bpfnet_ok(&["endpoint", "rm", short]).unwrap();
    assert!(!sb.exec(&c, &["ip", "link", "show", "eth0"]).unwrap().ok, "eth0 removed");
    assert_eq!(map_dumps(&sb), maps_before, "nothing of it left in the maps");
    assert!(!sb.ping(&b, "10.231.0.10").unwrap());
    let all = json(&sb.bpfnet_ok(&["endpoint", "ls", "--json"]).unwrap());
    assert_eq!(all.as_array().unwrap().len(), 1, "only b's endpoint: {all}");
    assert!(json(&sb.bpfnet_ok(&["port", "ls", "--json"]).unwrap()).as_array().unwrap().is_empty());
    let reused = json(&sb.bpfnet_ok(&["network", "connect", "life", &a, "--ip", "10.231.0.10", "-p", "8080:80", "--json"]).unwrap());
    assert_eq!(reused["ipv4_address"], "10.231.0.10/24", "address and port free again");
}

#[test]
fn lifecycle_errors_are_clear_and_change_nothing() {
    let mut sb = Sandbox::new("lifeerr").unwrap();
    sb.start_daemon().unwrap();
    let a = sb.add_netns("a").unwrap();
    sb.bpfnet_ok(&["network", "create", "n", "--subnet", "10.232.0.0/24"]).unwrap();
    let id = sb.bpfnet_ok(&["endpoint", "create", "n", "web"]).unwrap().trim().to_string();
    let state = || std::fs::read_to_string(sb.state_dir().join("state.json")).unwrap();
    let before = (state(), map_dumps(&sb), host_veths(&sb));
    for (args, says) in [
        (vec!["endpoint", "create", "nope", "web"], "network \"nope\" not found"),
        (vec!["endpoint", "create", "n", "bad name"], "invalid container name"),
        (vec!["endpoint", "create", "n", "x", "--ip", "10.9.0.1"], "outside the subnet"),
        (vec!["endpoint", "create", "n", "x", "-p", "0:80"], "ports are 1-65535"),
        (vec!["endpoint", "attach", "abc123", &a], "endpoint abc123 not found"),
        (vec!["endpoint", "attach", "xyz", &a], "invalid endpoint id"),
        (vec!["endpoint", "attach", &id, &a, "--interface", "a/b"], "invalid interface name"),
        (vec!["endpoint", "attach", &id, "/nonexistent/ns"], "not a usable network namespace"),
        (vec!["endpoint", "detach", &id], "is not attached"),
        (vec!["endpoint", "rm", "ffff0000"], "not found"),
    ] {
        let r = sb.bpfnet(&args).unwrap();
        assert!(!r.ok && r.stderr.contains(says), "{args:?}: {}", r.stderr);
    }
    assert_eq!((state(), map_dumps(&sb), host_veths(&sb)), before, "nothing changed");
    // A network with an allocated endpoint is not removed from under it.
    let r = sb.bpfnet(&["network", "rm", "n"]).unwrap();
    assert!(!r.ok && r.stderr.contains("has allocated endpoints") && r.stderr.contains("web"), "{}", r.stderr);
    let r = sb.bpfnet(&["endpoint", "inspect", "xyz"]).unwrap();
    assert!(!r.ok && r.stderr.contains("invalid endpoint id"), "{}", r.stderr);
    // Nor does `network disconnect` take a front-end's endpoint by its container name.
    let r = sb.bpfnet(&["network", "disconnect", "n", "web"]).unwrap();
    assert!(!r.ok && r.stderr.contains("not connected"), "{}", r.stderr);
    assert_eq!(state(), before.0);
    // An interface name the namespace already uses: refused, the allocation stays as it was.
    sb.exec(&a, &["ip", "link", "add", "taken0", "type", "veth", "peer", "name", "taken1"]).unwrap();
    let r = sb.bpfnet(&["endpoint", "attach", &id, &a, "--interface", "taken0"]).unwrap();
    assert!(!r.ok && r.stderr.contains("exists there already"), "{}", r.stderr);
    assert_eq!(endpoint_state(&sb, &id), "allocated");
    assert_eq!((state(), map_dumps(&sb), host_veths(&sb)), before, "nothing of the failed attach is left");
}

#[test]
fn a_vanished_namespace_detaches_a_front_end_endpoint_and_a_crash_mid_attach_keeps_the_allocation() {
    let mut sb = Sandbox::new("lifegone").unwrap();
    sb.start_daemon().unwrap();
    let a = sb.add_netns("a").unwrap();
    let b = sb.add_netns("b").unwrap();
    sb.bpfnet_ok(&["network", "create", "n", "--subnet", "10.233.0.0/24"]).unwrap();
    let id = sb.bpfnet_ok(&["endpoint", "create", "n", "web", "--ip", "10.233.0.20"]).unwrap().trim().to_string();
    sb.bpfnet_ok(&["endpoint", "attach", &id, &a]).unwrap();
    sb.bpfnet_ok(&["network", "connect", "n", &b]).unwrap();

    // Both namespaces vanish: the endpoint `connect` made goes entirely; the allocated one is
    // detached and stays reserved until its front-end releases it (as Docker's DeleteEndpoint
    // or CNI's DEL will).
    sb.delete_netns("a").unwrap();
    sb.delete_netns("b").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let all = json(&sb.bpfnet_ok(&["endpoint", "ls", "--json"]).unwrap());
        let all = all.as_array().unwrap();
        if all.len() == 1 && all[0]["attachment"].is_null() {
            assert_eq!(all[0]["endpoint_id"], id.as_str());
            break;
        }
        assert!(Instant::now() < deadline, "not collected: {all:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(host_veths(&sb), 0);

    // A crash in the middle of an attach: the next start removes what it made, and the
    // allocation is still there to attach again.
    let c = sb.add_netns("c").unwrap();
    sb.stop_daemon(libc::SIGTERM).unwrap();
    sb.start_daemon_with_env(&[("BPFNET_TEST_CRASH_AFTER", "programmed")]).unwrap();
    assert!(!sb.bpfnet(&["endpoint", "attach", &id, &c]).unwrap().ok, "the daemon dies mid-request");
    assert!(!sb.wait_daemon_exit().unwrap().success());
    assert_eq!(host_veths(&sb), 1, "the crash left the veth");
    sb.start_daemon().unwrap();
    assert_eq!(host_veths(&sb), 0, "the next start removed it");
    assert!(!sb.exec(&c, &["ip", "link", "show", "eth0"]).unwrap().ok, "and its container side");
    assert_eq!(endpoint_state(&sb, &id), "allocated");
    sb.bpfnet_ok(&["endpoint", "attach", &id, &c]).unwrap();
    assert!(sb.ping(&c, "10.233.0.1").unwrap(), "attached after the crash, the gateway answers");
    sb.bpfnet_ok(&["endpoint", "rm", &id]).unwrap();
    assert!(json(&sb.bpfnet_ok(&["endpoint", "ls", "--json"]).unwrap()).as_array().unwrap().is_empty());
}

/// `bpf(2)` with `attr`, from the calling thread (its network namespace decides what an ifindex
/// names). Returns the file descriptor or value the kernel gives.
fn bpf_call<T>(cmd: i64, attr: &mut T) -> i64 {
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>()) };
    assert!(r >= 0, "bpf({cmd}): {}", std::io::Error::last_os_error());
    r
}

/// What an older bpfnet left: the endpoint's program on a TCX link pinned under
/// `<bpffs>/links/<host veth>`, and no filter. Made with the program the filter runs now.
fn attach_as_older_version(sb: &Sandbox, veth: &str, prog_id: u64) {
    let host = sb.host();
    let ifindex: u32 = run_ok("ip", &["-n", &host, "-j", "link", "show", veth]).map(|o| json(&o)[0]["ifindex"].as_u64().unwrap() as u32).unwrap();
    let pin = std::ffi::CString::new(sb.bpffs().join("links").join(veth).to_str().unwrap()).unwrap();
    // BPF_PROG_GET_FD_BY_ID (13): { prog_id, next_id, open_flags }.
    let mut by_id = [prog_id as u32, 0, 0];
    let prog = bpf_call(13, &mut by_id);
    // BPF_LINK_CREATE (28) at BPF_TCX_INGRESS (46): { prog_fd, target_ifindex, attach_type, flags, relative, _, revision }.
    let mut create = [prog as u32, ifindex, 46, 0, 0, 0, 0, 0];
    let link = bpf_call(28, &mut create);
    // BPF_OBJ_PIN (6): { pathname, bpf_fd, file_flags, path_fd }.
    #[repr(C)]
    struct Pin(u64, u32, u32, i32, u32);
    bpf_call(6, &mut Pin(pin.as_ptr() as u64, link as u32, 0, 0, 0));
    unsafe {
        libc::close(link as i32);
        libc::close(prog as i32);
    }
    run_ok("tc", &["-n", &host, "filter", "del", "dev", veth, "ingress"]).unwrap();
}

/// Endpoints attached by an older bpfnet (TCX links pinned in bpffs) keep forwarding while the
/// daemon is stopped, and the next start moves them to filters with no pin left.
#[test]
fn endpoints_of_an_older_version_move_from_tcx_links_to_filters() {
    let mut sb = Sandbox::new("upgr").unwrap();
    sb.start_daemon().unwrap();
    let a = sb.add_netns("a").unwrap();
    let b = sb.add_netns("b").unwrap();
    sb.bpfnet_ok(&["network", "create", "n", "--subnet", "10.236.0.0/24"]).unwrap();
    sb.bpfnet_ok(&["network", "connect", "n", &a]).unwrap(); // 10.236.0.2
    sb.bpfnet_ok(&["network", "connect", "n", &b]).unwrap(); // 10.236.0.3
    let programs = bpfnet_lab::checks::endpoint_programs(&sb);
    assert_eq!(programs.len(), 2, "a filter on each endpoint's veth: {programs:?}");
    sb.stop_daemon(libc::SIGTERM).unwrap();

    // The netns of the ifindex the link is made for: the daemon's.
    let ns = std::fs::File::open(format!("/run/netns/{}", sb.host())).unwrap();
    let (sb_ref, programs_ref) = (&sb, &programs);
    std::thread::scope(|s| {
        s.spawn(move || {
            use std::os::fd::AsRawFd;
            assert_eq!(unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) }, 0, "entering the host namespace");
            for (veth, id) in programs_ref {
                attach_as_older_version(sb_ref, veth, *id);
            }
        });
    });
    assert!(bpfnet_lab::checks::endpoint_programs(&sb).is_empty(), "no filter is left");
    assert!(sb.ping(&a, "10.236.0.3").unwrap(), "the older version's links forward while no daemon runs");

    sb.start_daemon().unwrap();
    let pins: Vec<_> = std::fs::read_dir(sb.bpffs().join("links")).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(pins.is_empty(), "the TCX links are gone: {pins:?}");
    bpfnet_lab::checks::assert_consistent(&sb, &[a.clone(), b.clone()]);
    assert!(sb.ping(&a, "10.236.0.3").unwrap(), "a reaches b through the filters");
    let log = std::fs::read_to_string(sb.daemon_log()).unwrap();
    assert!(log.contains("removed 2 endpoint TCX links an older bpfnet pinned"), "{log}");
}

/// The last "started:" line of the daemon's log.
fn last_start_line(sb: &Sandbox) -> String {
    let log = std::fs::read_to_string(sb.daemon_log()).unwrap();
    log.lines().filter(|l| l.contains("started: state read")).last().unwrap_or_default().to_string()
}

/// A restart with the same binary and options takes the TC programs from the pins the last start
/// left (no verification: the same programs keep running); other options load them afresh.
#[test]
fn a_restart_reuses_the_verified_programs_unless_the_options_changed() {
    let mut sb = Sandbox::new("reuse").unwrap();
    sb.start_daemon().unwrap();
    assert!(last_start_line(&sb).contains("programs loaded (verified)"), "{}", last_start_line(&sb));
    let a = sb.add_netns("a").unwrap();
    let b = sb.add_netns("b").unwrap();
    sb.bpfnet_ok(&["network", "create", "n", "--subnet", "10.237.0.0/24"]).unwrap();
    sb.bpfnet_ok(&["network", "connect", "n", &a]).unwrap(); // 10.237.0.2
    sb.bpfnet_ok(&["network", "connect", "n", &b]).unwrap(); // 10.237.0.3
    let before = bpfnet_lab::checks::endpoint_programs(&sb);

    sb.stop_daemon(libc::SIGTERM).unwrap();
    sb.start_daemon().unwrap();
    assert!(last_start_line(&sb).contains("taken from the last start's pins"), "{}", last_start_line(&sb));
    assert_eq!(bpfnet_lab::checks::endpoint_programs(&sb), before, "the same programs run on");
    assert!(sb.ping(&a, "10.237.0.3").unwrap());
    let c = sb.add_netns("c").unwrap();
    sb.bpfnet_ok(&["network", "connect", "n", &c]).unwrap();
    bpfnet_lab::checks::assert_consistent(&sb, &[a.clone(), b.clone(), c]);

    // Another connection lifetime is baked into the programs: verified again, and they run.
    sb.stop_daemon(libc::SIGTERM).unwrap();
    sb.start_daemon_with(&bpfnet_lab::sandbox::DaemonOptions { args: &["--ct-timeout-udp", "61s"], ..Default::default() }).unwrap();
    assert!(last_start_line(&sb).contains("programs loaded (verified)"), "{}", last_start_line(&sb));
    let after = bpfnet_lab::checks::endpoint_programs(&sb);
    assert_ne!(after.values().next(), before.values().next(), "new programs on the endpoints");
    assert!(sb.ping(&a, "10.237.0.3").unwrap());
    let keys: Vec<_> = std::fs::read_dir(sb.bpffs().join("programs")).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(keys.len(), 1, "only the running programs stay pinned: {keys:?}");
}
