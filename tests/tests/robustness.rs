//! The daemon against random input and random crashes: an API fuzz (random and truncated
//! requests against every route) and a bounded soak of changes with `kill -9` at random moments,
//! after which the state, the kernel and the datapath must agree exactly and traffic must flow.
use std::{
    io::Write,
    os::unix::net::UnixStream,
    time::{Duration, Instant},
};

use bpfnet_lab::{
    checks::{assert_consistent, json, raw_exchange, snapshot},
    sandbox::run_ok,
    Sandbox,
};
use serde_json::Value;

/// A small deterministic generator (xorshift64*): a failing run can be replayed from its seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

fn seed() -> u64 {
    std::env::var("BPFNET_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    })
}

/// A body of one of the shapes the API meets: wrong types, missing fields, bad values, broken
/// JSON, random bytes, deep nesting, or a real request cut short.
fn random_body(rng: &mut Rng, netns: &str) -> Vec<u8> {
    let shapes: Vec<String> = vec![
        String::new(),
        "{}".into(),
        "null".into(),
        "[]".into(),
        "\"text\"".into(),
        "{\"name\": 5}".into(),
        "{\"name\": \"\"}".into(),
        "{\"name\": \"fz\"}".into(),
        "{\"name\": \"x\", \"subnet\": \"10.240.0.0/25\"}".into(),
        "{\"name\": \"x\", \"subnet\": \"10.241.0.0/24\", \"gateway\": \"10.9.9.9\"}".into(),
        "{\"name\": \"x\", \"subnet\": \"10.241.0.0/24\", \"options\": {\"icc\": \"perhaps\"}}".into(),
        "{\"name\": \"bad name!\"}".into(),
        format!("{{\"name\": \"{}\"}}", "n".repeat(300)),
        "{\"netns\": \"/dev/zero\"}".into(),
        "{\"netns\": \"\"}".into(),
        "{\"netns\": \"no-such-namespace\"}".into(),
        format!("{{\"netns\": \"{netns}\", \"ip\": \"10.240.0.999\"}}"),
        format!("{{\"netns\": \"{netns}\", \"ip\": \"10.240.0.1\"}}"),
        format!("{{\"netns\": \"{netns}\", \"aliases\": [\"-bad\"]}}"),
        format!("{{\"netns\": \"{netns}\", \"aliases\": 7}}"),
        "{\"netns\": 18446744073709551616}".into(),
        "[".repeat(5000) + &"]".repeat(5000),
        "{\"name\": \"\\ud800\"}".into(),
    ];
    let mut body = rng.pick(&shapes).clone().into_bytes();
    match rng.below(10) {
        0 => body = (0..rng.below(200)).map(|_| rng.next() as u8).collect(),
        1 if !body.is_empty() => body.truncate(rng.below(body.len())),
        _ => {}
    }
    body
}

fn random_request(rng: &mut Rng, netns: &str) -> Vec<u8> {
    let method = *rng.pick(&["GET", "POST", "DELETE", "PUT", "PATCH", "HEAD", "OPTIONS", "BREW"]);
    let path = rng
        .pick(&[
            "/networks",
            "/networks/fz",
            "/networks/fz/connect",
            "/networks/fz/disconnect",
            "/networks/nothere/connect",
            "/networks/%ZZ",
            "/networks/..%2Fstats",
            "/stats",
            "/",
            "/networks/fz/connect/extra",
            "//networks",
        ])
        .to_string();
    let body = random_body(rng, netns);
    let content_type = if rng.chance(90) { "content-type: application/json\r\n" } else { "" };
    let length = match rng.below(20) {
        0 => format!("content-length: {}\r\n", body.len() + 1 + rng.below(10)), // promises more than it sends
        1 => String::new(),
        _ => format!("content-length: {}\r\n", body.len()),
    };
    let mut request = format!("{method} {path} HTTP/1.1\r\nhost: bpfnet\r\n{content_type}{length}\r\n").into_bytes();
    request.extend_from_slice(&body);
    request
}

/// Random and truncated requests against every route: the daemon stays up, answers every
/// complete request with JSON, and a rejected request changes nothing.
#[test]
fn api_fuzz_keeps_the_daemon_up_and_rejections_change_nothing() {
    let seed = seed();
    eprintln!("fuzz seed {seed} (replay with BPFNET_FUZZ_SEED={seed})");
    let mut rng = Rng::new(seed);
    let mut sb = Sandbox::new("fuzz").unwrap();
    // A short client timeout: requests that promise more body than they send are answered soon.
    sb.start_daemon_with(&bpfnet_lab::sandbox::DaemonOptions { args: &["--client-timeout", "300ms"], ..Default::default() })
        .unwrap();
    sb.bpfnet_ok(&["network", "create", "fz", "--subnet", "10.240.0.0/24"]).unwrap();
    let a = sb.add_netns("a").unwrap();
    sb.bpfnet_ok(&["network", "connect", "fz", &a]).unwrap();
    let (mut answered, mut rejected, mut truncated) = (0, 0, 0);
    for i in 0..300 {
        let request = random_request(&mut rng, &a);
        let shown = String::from_utf8_lossy(&request[..request.len().min(120)]).into_owned();
        let before = snapshot(&sb);
        if rng.chance(15) {
            // Cut short and hung up on: never a whole request.
            let cut = rng.below(request.len());
            let mut s = UnixStream::connect(sb.socket()).unwrap();
            let _ = s.write_all(&request[..cut]);
            drop(s);
            truncated += 1;
            std::thread::sleep(Duration::from_millis(20));
            assert_eq!(snapshot(&sb), before, "request {i} cut at {cut} changed something: {shown:?}");
        } else {
            let (status, body) = raw_exchange(&sb.socket(), &request, Duration::from_secs(5)).unwrap();
            assert!(status != 0, "request {i} got no answer: {shown:?}");
            answered += 1;
            let is_head = request.starts_with(b"HEAD ");
            if !is_head {
                let value: Value = serde_json::from_str(&body)
                    .unwrap_or_else(|e| panic!("request {i} ({status}) answered non-JSON ({e}): {body:?} to {shown:?}"));
                if status >= 400 {
                    assert!(value["error"].is_string(), "request {i}: {status} without an error text: {body} to {shown:?}");
                }
            }
            if status >= 400 {
                rejected += 1;
                assert_eq!(snapshot(&sb), before, "rejected request {i} ({status}) changed something: {shown:?}");
            }
        }
        if i % 50 == 49 {
            assert!(sb.daemon_alive(), "the daemon died by request {i}");
        }
    }
    eprintln!("{answered} answered ({rejected} rejected), {truncated} truncated");
    assert!(sb.daemon_alive());
    assert!(sb.bpfnet_ok(&["network", "ls"]).is_ok());
}

/// A bounded soak: random creates, removes, connects, disconnects, container exits, and
/// `kill -9` of the daemon in the middle of requests, each followed by a restart. Afterwards the
/// state, the kernel and the datapath agree exactly, and containers on a network reach each other.
#[test]
fn soak_with_random_kills_converges() {
    let seconds: u64 = std::env::var("BPFNET_SOAK_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
    let seed = seed();
    eprintln!("soak seed {seed}, {seconds} s (replay with BPFNET_FUZZ_SEED={seed})");
    let mut rng = Rng::new(seed);
    let mut sb = Sandbox::new("soak").unwrap();
    sb.start_daemon().unwrap();
    let containers: Vec<String> = (0..6).map(|i| sb.add_netns(&format!("c{i}")).unwrap()).collect();
    let nets = ["s0", "s1", "s2"];
    let subnet = |i: usize| format!("10.{}.0.0/24", 242 + i);
    let (mut ops, mut kills) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < deadline {
        let n = rng.below(nets.len());
        let c = &containers[rng.below(containers.len())];
        let args: Vec<String> = match rng.below(10) {
            0 => vec!["network".into(), "create".into(), nets[n].into(), "--subnet".into(), subnet(n)],
            1 => vec!["network".into(), "rm".into(), nets[n].into()],
            2..=5 => vec!["network".into(), "connect".into(), nets[n].into(), c.clone()],
            6 | 7 => vec!["network".into(), "disconnect".into(), nets[n].into(), c.clone()],
            _ => {
                // A container exits and another takes its name.
                run_ok("ip", &["netns", "del", c]).unwrap();
                run_ok("ip", &["netns", "add", c]).unwrap();
                run_ok("ip", &["-n", c, "link", "set", "lo", "up"]).unwrap();
                continue;
            }
        };
        ops += 1;
        if rng.chance(12) {
            // kill -9 while the request is (probably) in flight, then restart.
            let (socket, bin) = (sb.socket(), bpfnet_lab::sandbox::bpfnet_bin());
            let request = std::thread::spawn(move || {
                std::process::Command::new(bin).arg("--socket").arg(socket).args(&args).output().ok();
            });
            std::thread::sleep(Duration::from_millis(rng.below(40) as u64));
            sb.stop_daemon(libc::SIGKILL).unwrap();
            request.join().unwrap();
            kills += 1;
            sb.start_daemon().unwrap_or_else(|e| panic!("restart after kill {kills} failed: {e:#}"));
        } else {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            let r = sb.bpfnet(&refs).unwrap();
            // Refusals are expected (exists, not found, still connected), nothing else.
            let expected = ["already exists", "not found", "active endpoints", "already connected", "is not connected"];
            assert!(r.ok || expected.iter().any(|e| r.stderr.contains(e)), "{args:?}: {}", r.stderr);
        }
    }
    eprintln!("{ops} operations, {kills} kills");
    // One more restart, and a collector round for the containers that exited.
    sb.stop_daemon(libc::SIGKILL).unwrap();
    sb.start_daemon().unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert_consistent(&sb, &containers);

    // Traffic: every network's first endpoint reaches each of the others.
    let state = json(&std::fs::read_to_string(sb.state_dir().join("state.json")).unwrap());
    for net in state["networks"].as_array().unwrap() {
        let members: Vec<&Value> =
            state["endpoints"].as_array().unwrap().iter().filter(|e| e["network_id"] == net["id"]).collect();
        for other in members.iter().skip(1) {
            let from = members[0]["container_name"].as_str().unwrap();
            let to = other["address"].as_str().unwrap();
            assert!(sb.ping(from, to).unwrap(), "{from} -> {to} on {}", net["name"]);
        }
    }
}
