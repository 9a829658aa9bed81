//! What tests look at: the daemon's JSON, the pinned maps, everything a request could leave
//! behind in the sandbox, and raw HTTP exchanges with the API socket (for requests the CLI would
//! never send).
use std::{
    io::{Read, Write},
    net::SocketAddr,
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use anyhow::{Context, Result};
use serde_json::Value;

use crate::{sandbox::run_ok, Sandbox};

pub fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

pub fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// A datapath counter, as `bpfnet stats --json` reports it.
pub fn counter(sb: &Sandbox, name: &str) -> u64 {
    let stats = json(&sb.bpfnet_ok(&["stats", "--json"]).unwrap());
    stats["counters"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap()["packets"].as_u64().unwrap()
}

/// The contents of the pinned ENDPOINTS and IFACES maps, as bpftool prints them.
pub fn map_dumps(sb: &Sandbox) -> String {
    let maps_dir = std::fs::read_dir(sb.bpffs())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("maps-v"))
        .expect("pinned maps directory");
    let mut out = String::new();
    for name in ["ENDPOINTS", "IFACES"] {
        let pin = maps_dir.join(name);
        out += &format!("{name}:\n{}", run_ok("bpftool", &["map", "dump", "pinned", pin.to_str().unwrap()]).unwrap());
    }
    out
}

/// Everything observable that a request could leave behind: links, addresses and routes of the
/// host namespace, map entries, pinned links and the state file.
pub fn snapshot(sb: &Sandbox) -> String {
    let host = sb.host();
    let links = run_ok("ip", &["-n", &host, "-br", "link"]).unwrap();
    let addrs = run_ok("ip", &["-n", &host, "-br", "addr"]).unwrap();
    let routes = run_ok("ip", &["-n", &host, "route"]).unwrap();
    let maps = map_dumps(sb);
    let mut pinned: Vec<_> = std::fs::read_dir(sb.bpffs().join("links")).unwrap().flatten().map(|e| e.file_name()).collect();
    pinned.sort();
    let state = std::fs::read_to_string(sb.state_dir().join("state.json")).unwrap_or_default();
    format!("{links}\n{addrs}\n{routes}\n{maps}\n{pinned:?}\n{state}")
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

/// A well-formed request with a JSON content type and `body`.
pub fn http_request(method: &str, path: &str, body: &str) -> Vec<u8> {
    format!(
        "{method} {path} HTTP/1.1\r\nhost: bpfnet\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}
