//! The embedded DNS resolver, asked with a real client (dig) from container namespaces: names,
//! aliases and services of the asker's network, PTR, UDP and TCP, isolation between networks, a
//! container on two networks, forwarding to the upstream, names following containers. Needs
//! root and dig (bind9-dnsutils, installed by `cargo xtask setup`).
use std::{net::UdpSocket, time::Duration};

use bpfnet_lab::{
    netns,
    sandbox::{Sandbox, FAR_IP},
};

/// `dig` from `ns` at `server`: (status, answers), e.g. ("NOERROR", ["10.1.0.2"]).
fn dig(sb: &Sandbox, ns: &str, server: &str, args: &[&str]) -> (String, Vec<String>) {
    let mut all = vec!["dig", "+time=1", "+tries=2"];
    let at = format!("@{server}");
    all.push(&at);
    all.extend_from_slice(args);
    let out = sb.exec(ns, &all).unwrap().stdout;
    let status = out
        .lines()
        .find_map(|l| l.split("status: ").nth(1))
        .map(|s| s.split(',').next().unwrap().to_string())
        .unwrap_or_else(|| format!("no answer: {out}"));
    let answers = out
        .split(";; ANSWER SECTION:")
        .nth(1)
        .map(|sec| sec.lines().skip(1).take_while(|l| !l.trim().is_empty()).filter_map(|l| l.split_whitespace().last()).map(str::to_string).collect())
        .unwrap_or_default();
    (status, answers)
}

/// An upstream resolver behind the uplink that answers every query YXDOMAIN (a status bpfnet
/// never gives itself), so an answer with it was forwarded.
fn fake_upstream(ns: &str) {
    let socket = netns::within(ns, || Ok(UdpSocket::bind((FAR_IP, 53))?)).unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            if n < 12 {
                continue;
            }
            buf[2] |= 0x80; // a response
            buf[3] = (buf[3] & 0xf0) | 6; // YXDOMAIN
            let _ = socket.send_to(&buf[..n], from);
        }
    });
}

#[test]
fn names_resolve_on_their_network_only() {
    let mut sb = Sandbox::new("dns").unwrap();
    let outside = sb.add_outside().unwrap();
    fake_upstream(&outside.far);
    sb.start_daemon().unwrap();
    sb.bpfnet_ok(&["network", "create", "web", "--subnet", "10.217.0.0/24"]).unwrap();
    sb.bpfnet_ok(&["network", "create", "other", "--subnet", "10.217.1.0/24"]).unwrap();
    let c1 = sb.add_netns("c1").unwrap();
    let c2 = sb.add_netns("c2").unwrap();
    let c3 = sb.add_netns("c3").unwrap();
    let out = sb.bpfnet_ok(&["network", "connect", "web", &c1, "--alias", "db", "--alias", "Cache"]).unwrap();
    assert!(out.contains("resolver 10.217.0.1"), "connect says where names are served: {out}");
    sb.bpfnet_ok(&["network", "connect", "web", &c2]).unwrap();
    sb.bpfnet_ok(&["network", "connect", "other", &c3]).unwrap();
    sb.bpfnet_ok(&["network", "connect", "other", &c2]).unwrap();
    sb.bpfnet_ok(&["service", "create", "api", "--network", "web", "--port", "80", "--backend", &c1]).unwrap();
    let vip = bpfnet_lab::checks::json(&sb.bpfnet_ok(&["service", "inspect", "api"]).unwrap())[0]["Endpoint"]["VirtualIPs"][0]["Addr"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let web = "10.217.0.1";
    let other = "10.217.1.1";
    std::thread::sleep(Duration::from_millis(500)); // the resolvers follow new networks within 200 ms

    // Names, aliases (any case), services; UDP and TCP.
    assert_eq!(dig(&sb, &c2, web, &[&c1]), ("NOERROR".into(), vec!["10.217.0.2".into()]));
    assert_eq!(dig(&sb, &c2, web, &["db"]), ("NOERROR".into(), vec!["10.217.0.2".into()]));
    assert_eq!(dig(&sb, &c2, web, &["cache"]), ("NOERROR".into(), vec!["10.217.0.2".into()]));
    assert_eq!(dig(&sb, &c2, web, &["+tcp", "db"]), ("NOERROR".into(), vec!["10.217.0.2".into()]));
    assert_eq!(dig(&sb, &c2, web, &["api"]), ("NOERROR".into(), vec![vip.clone()]));
    // AAAA of a known name: no records, no error; PTR of a container's address.
    assert_eq!(dig(&sb, &c2, web, &["db", "AAAA"]), ("NOERROR".into(), vec![]));
    assert_eq!(dig(&sb, &c2, web, &["-x", "10.217.0.2"]), ("NOERROR".into(), vec![format!("{c1}.")]));
    assert_eq!(dig(&sb, &c2, web, &["-x", &vip]), ("NOERROR".into(), vec!["api.".into()]));

    // Isolation: other's containers learn nothing of web, from either resolver.
    assert_eq!(dig(&sb, &c3, other, &["db"]).0, "NXDOMAIN");
    assert_eq!(dig(&sb, &c3, web, &["db"]).0, "REFUSED");
    // A container on both networks reaches both resolvers, each with its network's names.
    assert_eq!(dig(&sb, &c2, other, &[&c3]), ("NOERROR".into(), vec!["10.217.1.2".into()]));
    assert_eq!(dig(&sb, &c2, web, &[&c3]).0, "NXDOMAIN");

    // Other names go to the upstream resolver.
    assert_eq!(dig(&sb, &c2, web, &["example.org"]).0, "YXDOMAIN", "forwarded and answered upstream");
    assert_eq!(dig(&sb, &c2, web, &["-x", "192.0.2.77"]).0, "YXDOMAIN");

    // Names follow endpoints and services.
    sb.bpfnet_ok(&["service", "rm", "api"]).unwrap();
    sb.bpfnet_ok(&["network", "disconnect", "web", &c1]).unwrap();
    assert_eq!(dig(&sb, &c2, web, &["db"]).0, "NXDOMAIN");
    assert_eq!(dig(&sb, &c2, web, &["api"]).0, "NXDOMAIN");
    sb.bpfnet_ok(&["network", "connect", "web", &c1, "--alias", "db"]).unwrap();
    assert_eq!(dig(&sb, &c2, web, &["db"]).1.len(), 1);

    // A network removed takes its resolver along.
    sb.bpfnet_ok(&["network", "disconnect", "other", &c3]).unwrap();
    sb.bpfnet_ok(&["network", "disconnect", "other", &c2]).unwrap();
    sb.bpfnet_ok(&["network", "rm", "other"]).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let held = sb.exec(&sb.host(), &["ss", "-lun"]).unwrap().stdout;
    assert!(!held.contains("10.217.1.1:53") && held.contains("10.217.0.1:53"), "{held}");
}
