//! What tests look at: the daemon's JSON, the pinned maps, everything a request could leave
//! behind in the sandbox, and raw HTTP exchanges with the API socket (for requests the CLI would
//! never send).
use std::{
    collections::{BTreeMap, BTreeSet},
    io::{Read, Write},
    net::SocketAddr,
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::{sandbox::run_ok, Sandbox};

pub fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

pub fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Each of `replicas` answered `count / replicas` connections, within 4.5 standard deviations
/// of a binomial spread (a fair split fails this about once in 10^5 runs; a skew does not pass).
pub fn assert_even(seen: &BTreeMap<String, usize>, replicas: usize, count: usize, what: &str) {
    let p = 1.0 / replicas as f64;
    let (mean, sd) = (count as f64 * p, (count as f64 * p * (1.0 - p)).sqrt());
    assert_eq!(seen.len(), replicas, "{what}: every replica answers: {seen:?}");
    assert_eq!(seen.values().sum::<usize>(), count, "{what}: every connection answered");
    for (name, n) in seen {
        assert!((*n as f64 - mean).abs() <= 4.5 * sd, "{what}: {name} took {n} of {count} (expected {mean:.0} ± {:.0}): {seen:?}", 4.5 * sd);
    }
}

/// A datapath counter, as `bpfnet stats --json` reports it.
pub fn counter(sb: &Sandbox, name: &str) -> u64 {
    let stats = json(&sb.bpfnet_ok(&["stats", "--json"]).unwrap());
    stats["counters"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap()["packets"].as_u64().unwrap()
}

/// The contents of the pinned ENDPOINTS, IFACES and PORTS maps, as bpftool prints them.
pub fn map_dumps(sb: &Sandbox) -> String {
    let maps_dir = std::fs::read_dir(sb.bpffs())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("maps-v"))
        .expect("pinned maps directory");
    let mut out = String::new();
    for name in ["ENDPOINTS", "IFACES", "PORTS"] {
        let pin = maps_dir.join(name);
        out += &format!("{name}:\n{}", run_ok("bpftool", &["map", "dump", "pinned", pin.to_str().unwrap()]).unwrap());
    }
    out
}

/// The interfaces of the host namespace whose ingress runs `from_container` (the endpoints'
/// program, a cls_bpf filter), by name.
pub fn endpoint_filters(sb: &Sandbox) -> BTreeSet<String> {
    endpoint_programs(sb).into_keys().collect()
}

/// The id of the `from_container` program each interface of the host namespace runs at ingress.
pub fn endpoint_programs(sb: &Sandbox) -> BTreeMap<String, u64> {
    let host = sb.host();
    let links = json(&run_ok("ip", &["-n", &host, "-j", "link"]).unwrap());
    links
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["ifname"].as_str())
        .filter_map(|name| {
            let filters = run_ok("tc", &["-n", &host, "filter", "show", "dev", name, "ingress"]).unwrap_or_default();
            let line = filters.lines().find(|l| l.contains("from_container") && l.contains("direct-action"))?;
            let words: Vec<&str> = line.split_whitespace().collect();
            let id = words.iter().position(|w| *w == "id").and_then(|i| words.get(i + 1)).and_then(|w| w.parse().ok())?;
            Some((name.to_string(), id))
        })
        .collect()
}

/// Everything observable that a request could leave behind: links, addresses and routes of the
/// host namespace, map entries, pinned links and the state file.
pub fn snapshot(sb: &Sandbox) -> String {
    let host = sb.host();
    let links = run_ok("ip", &["-n", &host, "-br", "link"]).unwrap();
    let addrs = run_ok("ip", &["-n", &host, "-br", "addr"]).unwrap();
    let routes = run_ok("ip", &["-n", &host, "route"]).unwrap();
    let maps = map_dumps(sb);
    let filters = endpoint_filters(sb);
    let state = std::fs::read_to_string(sb.state_dir().join("state.json")).unwrap_or_default();
    format!("{links}\n{addrs}\n{routes}\n{maps}\n{filters:?}\n{state}")
}

/// A raw HTTP/1.1 exchange on the API socket: sends `request` as is, then reads until the
/// daemon closes the connection or `wait` passes. Returns the status code (0 when nothing came
/// back) and the body.
pub fn raw_exchange(socket: &Path, request: &[u8], wait: Duration) -> Result<(u16, String)> {
    let mut stream = UnixStream::connect(socket).context("connecting to the API socket")?;
    stream.set_read_timeout(Some(wait))?;
    stream.write_all(request)?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if response_complete(&buf) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let (head, mut body) = text.split_once("\r\n\r\n").map(|(h, b)| (h.to_string(), b.to_string())).unwrap_or_default();
    // Only the first response: what follows belongs to another (the rest of a broken request).
    if let Some(n) = content_length(&head) {
        body.truncate(n);
    }
    Ok((status, body))
}

fn content_length(head: &str) -> Option<usize> {
    head.lines().find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").and_then(|v| v.trim().parse().ok()))
}

/// Whether `buf` holds a whole response with a content-length body.
fn response_complete(buf: &[u8]) -> bool {
    let text = String::from_utf8_lossy(buf);
    let Some((head, body)) = text.split_once("\r\n\r\n") else { return false };
    content_length(head).is_some_and(|n| body.len() >= n)
}

/// One API request that must be answered 200, waiting at most `wait`: its JSON reply (`Null`
/// when the body is not JSON).
pub fn api_ok(socket: &Path, method: &str, path: &str, body: &str, wait: Duration) -> Result<Value> {
    let (status, reply) = raw_exchange(socket, &http_request(method, path, body), wait)?;
    if status != 200 {
        bail!("{method} {path}: {status} {reply}");
    }
    Ok(serde_json::from_str(&reply).unwrap_or(Value::Null))
}

/// A well-formed request with a JSON content type and `body`.
pub fn http_request(method: &str, path: &str, body: &str) -> Vec<u8> {
    format!(
        "{method} {path} HTTP/1.1\r\nhost: bpfnet\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Everything the state says, and everything the kernel and the datapath hold, side by side: they
/// must agree exactly (after a crash and a restart, say). `containers` are the namespaces to check
/// for interfaces bpfnet made.
pub fn assert_consistent(sb: &Sandbox, containers: &[String]) {
    let state = json(&std::fs::read_to_string(sb.state_dir().join("state.json")).unwrap());
    assert_eq!(state["connecting"], serde_json::json!([]), "no interrupted connect is left");
    let endpoints = state["endpoints"].as_array().unwrap();
    let networks = state["networks"].as_array().unwrap();

    // Host-side veths, by their mark, and their ifindexes.
    let links = json(&run_ok("ip", &["-n", &sb.host(), "-j", "-d", "link"]).unwrap());
    let marked: BTreeSet<String> = links
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["ifalias"].as_str().and_then(|a| a.strip_prefix("bpfnet:")).map(str::to_string))
        .collect();
    // (Besides lo and the sandbox's uplink, `up0`, where there is one.)
    let non_lo = links.as_array().unwrap().iter().filter(|l| l["ifname"] != "lo" && l["ifname"] != "up0").count();
    let ids: BTreeSet<String> = endpoints.iter().map(|e| e["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(marked, ids, "one marked veth per endpoint, no other");
    assert_eq!(non_lo, ids.len(), "no unmarked interface is left");

    // Gateways on lo: exactly the networks'.
    let lo = run_ok("ip", &["-n", &sb.host(), "-4", "-o", "addr", "show", "dev", "lo"]).unwrap();
    let gateways: BTreeSet<String> =
        lo.lines().filter(|l| l.contains("lo:bpfnet")).map(|l| l.split_whitespace().nth(3).unwrap().trim_end_matches("/32").to_string()).collect();
    // (An IPv6-only network has none.)
    let wanted: BTreeSet<String> = networks.iter().filter_map(|n| n["gateway"].as_str().map(str::to_string)).collect();
    assert_eq!(gateways, wanted, "gateway addresses");
    // IPv6 gateways on lo: every address there but the loopback's own.
    let lo6 = run_ok("ip", &["-n", &sb.host(), "-6", "-o", "addr", "show", "dev", "lo"]).unwrap();
    let gateways6: BTreeSet<String> = lo6
        .lines()
        .map(|l| l.split_whitespace().nth(3).unwrap().trim_end_matches("/128").to_string())
        .filter(|a| a != "::1")
        .collect();
    let wanted6: BTreeSet<String> = networks.iter().filter_map(|n| n["ipv6"]["gateway"].as_str().map(str::to_string)).collect();
    assert_eq!(gateways6, wanted6, "IPv6 gateway addresses");

    // Datapath maps: ENDPOINTS by address, IFACES by host ifindex.
    let maps_dir = std::fs::read_dir(sb.bpffs()).unwrap().flatten().map(|e| e.path()).find(|p| p.to_string_lossy().contains("maps-v")).unwrap();
    let dump = |name: &str| -> Vec<Vec<u8>> {
        let out = json(&run_ok("bpftool", &["-j", "map", "dump", "pinned", maps_dir.join(name).to_str().unwrap()]).unwrap());
        out.as_array()
            .unwrap()
            .iter()
            .map(|e| e["key"].as_array().unwrap().iter().map(|b| u8::from_str_radix(b.as_str().unwrap().trim_start_matches("0x"), 16).unwrap()).collect())
            .collect()
    };
    let map_ips: BTreeSet<String> = dump("ENDPOINTS")
        .iter()
        .map(|k| {
            let v6 = std::net::Ipv6Addr::from(<[u8; 16]>::try_from(&k[..16]).unwrap());
            v6.to_ipv4_mapped().map_or_else(|| v6.to_string(), |v4| v4.to_string())
        })
        .collect();
    let ips: BTreeSet<String> = endpoints
        .iter()
        .flat_map(|e| [&e["address"], &e["address6"]])
        .filter_map(|a| a.as_str().map(str::to_string))
        .collect();
    assert_eq!(map_ips, ips, "ENDPOINTS entries");
    let map_ifindexes: BTreeSet<u64> = dump("IFACES").iter().map(|k| u32::from_le_bytes([k[0], k[1], k[2], k[3]]) as u64).collect();
    let ifindexes: BTreeSet<u64> = endpoints.iter().map(|e| e["host_ifindex"].as_u64().unwrap()).collect();
    assert_eq!(map_ifindexes, ifindexes, "IFACES entries");

    // The program: a filter on every endpoint's host side, on no other interface.
    let names: BTreeSet<String> = endpoints.iter().map(|e| e["host_interface"].as_str().unwrap().to_string()).collect();
    let programs = endpoint_programs(sb);
    assert_eq!(programs.keys().cloned().collect::<BTreeSet<_>>(), names, "interfaces that run from_container");
    let ids: BTreeSet<u64> = programs.values().copied().collect();
    assert!(ids.len() <= 1, "every endpoint runs the running daemon's program: {programs:?}");

    // Container sides: every ethN belongs to an endpoint of that namespace, with its address.
    for ns in containers {
        let addrs = run_ok("ip", &["-n", ns, "-4", "-o", "addr"]).unwrap();
        let theirs: BTreeSet<String> = addrs
            .lines()
            .filter(|l| l.split_whitespace().nth(1).is_some_and(|i| i.starts_with("eth")))
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                format!("{} {}", f[1], f[3].split('/').next().unwrap())
            })
            .collect();
        // (An endpoint of an IPv6-only network has no IPv4 address.)
        let recorded: BTreeSet<String> = endpoints
            .iter()
            .filter(|e| e["container_name"] == ns.as_str())
            .filter_map(|e| Some(format!("{} {}", e["interface"].as_str().unwrap(), e["address"].as_str()?)))
            .collect();
        assert_eq!(theirs, recorded, "interfaces of {ns}");
    }
}

