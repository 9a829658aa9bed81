//! The CNI plugin (the `bpfnet` binary run with CNI_COMMAND set) driven directly, as a runtime
//! would: ADD/CHECK/DEL/VERSION/STATUS/GC, runtimeConfig's capabilities, and the error paths
//! with the spec's codes. Needs root.
use std::{
    io::Write,
    process::{Command, Stdio},
};

use bpfnet_lab::{checks::json, sandbox::bpfnet_bin, Sandbox};
use serde_json::{json as j, Value};

/// Runs the plugin: `(succeeded, stdout as JSON)`.
fn cni(command: &str, env: &[(&str, &str)], config: &Value) -> (bool, Value) {
    let mut child = Command::new(bpfnet_bin())
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_PATH", "/opt/cni/bin")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // VERSION does not read its input.
    let _ = child.stdin.take().unwrap().write_all(config.to_string().as_bytes());
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let value = if stdout.trim().is_empty() { Value::Null } else { json(&stdout) };
    (out.status.success(), value)
}

fn config(sb: &Sandbox, version: &str, network: &str, runtime: Value) -> Value {
    j!({"cniVersion": version, "name": network, "type": "bpfnet", "network": network,
        "socket": sb.socket().display().to_string(), "runtimeConfig": runtime})
}

fn attachment<'a>(container: &'a str, netns: &'a str, ifname: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![("CNI_CONTAINERID", container), ("CNI_NETNS", netns), ("CNI_IFNAME", ifname)]
}

#[test]
fn cni_plugin_add_check_del_and_errors() {
    let mut sb = Sandbox::new("cni").unwrap();
    sb.start_daemon().unwrap();
    sb.bpfnet_ok(&["network", "create", "web", "--subnet", "10.215.0.0/24"]).unwrap();
    sb.bpfnet_ok(&["network", "create", "hidden", "--subnet", "10.215.1.0/24", "--internal"]).unwrap();
    let c1 = sb.add_netns("c1").unwrap();
    let c2 = sb.add_netns("c2").unwrap();
    let (p1, p2) = (format!("/run/netns/{c1}"), format!("/run/netns/{c2}"));

    let (ok, version) = cni("VERSION", &[], &j!({"cniVersion": "1.0.0"}));
    assert!(ok && version["supportedVersions"].as_array().unwrap().contains(&j!("1.0.0")), "{version}");

    // ADD: the result says what was made; runtimeConfig's ports and address are honoured.
    let runtime = j!({"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
                                        {"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": "127.0.0.1"}],
                      "ips": ["10.215.0.50/24"]});
    let (ok, added) = cni("ADD", &attachment("c0ffee01", &p1, "eth0"), &config(&sb, "1.0.0", "web", runtime));
    assert!(ok, "{added}");
    assert_eq!(added["cniVersion"], "1.0.0");
    assert_eq!(added["interfaces"][0]["name"], "eth0");
    assert_eq!(added["interfaces"][0]["mac"], "02:42:0a:d7:00:32");
    assert_eq!(added["interfaces"][0]["sandbox"], p1.as_str());
    assert_eq!(added["ips"][0]["address"], "10.215.0.50/24");
    assert_eq!(added["ips"][0]["gateway"], "10.215.0.1");
    assert_eq!(added["routes"][0], j!({"dst": "0.0.0.0/0", "gw": "10.215.0.1"}));
    assert_eq!(added["dns"], j!({"nameservers": ["10.215.0.1"]}), "the network's resolver");
    let ports = sb.bpfnet_ok(&["port", "ls"]).unwrap();
    assert!(ports.contains("8080") && ports.contains("127.0.0.1:5353"), "{ports}");
    let (ok, added2) = cni("ADD", &attachment("c0ffee02", &p2, "eth0"), &config(&sb, "1.0.0", "web", j!({})));
    assert!(ok, "{added2}");
    assert!(sb.ping(&c2, "10.215.0.50").unwrap(), "the two attachments talk");
    let eps = json(&sb.bpfnet_ok(&["endpoint", "ls", "--json"]).unwrap());
    assert!(eps.as_array().unwrap().iter().all(|e| e["frontend"] == "cni"), "{eps}");
    // An internal network: no route out in the result.
    let (ok, internal) = cni("ADD", &attachment("c0ffee01", &p1, "eth1"), &config(&sb, "1.0.0", "hidden", j!({})));
    assert!(ok && internal["routes"].is_null(), "{internal}");

    // CHECK: as added; elsewhere is an error.
    assert!(cni("CHECK", &attachment("c0ffee01", &p1, "eth0"), &config(&sb, "1.0.0", "web", j!({}))).0);
    let (ok, err) = cni("CHECK", &attachment("c0ffee01", &p2, "eth0"), &config(&sb, "1.0.0", "web", j!({})));
    assert!(!ok && err["code"] == 51 && err["details"].as_str().unwrap().contains("not eth0 in"), "{err}");

    // Errors carry the spec's codes and say what is wrong.
    let (ok, err) = cni("ADD", &attachment("c0ffee03", &p2, "eth1"), &config(&sb, "1.0.0", "nosuch", j!({})));
    assert!(!ok && err["code"] == 50 && err["details"].as_str().unwrap().contains("nosuch"), "{err}");
    let mut bad = config(&sb, "1.0.0", "web", j!({}));
    bad["network"] = j!(5);
    let (ok, err) = cni("ADD", &attachment("c0ffee03", &p2, "eth1"), &bad);
    assert!(!ok && err["code"] == 7, "{err}");
    let (ok, err) = cni("ADD", &[("CNI_CONTAINERID", "c0ffee03"), ("CNI_NETNS", &p2)], &config(&sb, "1.0.0", "web", j!({})));
    assert!(!ok && err["code"] == 4, "CNI_IFNAME missing: {err}");
    let taken = j!({"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]});
    let (ok, err) = cni("ADD", &attachment("c0ffee03", &p2, "eth1"), &config(&sb, "1.0.0", "web", taken));
    assert!(!ok && err["code"] == 51 && err["details"].as_str().unwrap().contains("already published"), "{err}");
    let (ok, err) = cni("ADD", &attachment("c0ffee03", "/run/netns/nosuch", "eth1"), &config(&sb, "1.0.0", "web", j!({})));
    assert!(!ok && err["details"].as_str().unwrap().contains("nosuch"), "{err}");
    let eps = json(&sb.bpfnet_ok(&["endpoint", "ls", "--json"]).unwrap());
    assert_eq!(eps.as_array().unwrap().len(), 3, "a failed ADD leaves nothing: {eps}");

    // DEL: idempotent, also after a daemon restart.
    assert!(cni("DEL", &attachment("c0ffee01", &p1, "eth1"), &config(&sb, "1.0.0", "hidden", j!({}))).0);
    assert!(cni("DEL", &attachment("c0ffee01", &p1, "eth1"), &config(&sb, "1.0.0", "hidden", j!({}))).0, "DEL twice");
    sb.stop_daemon(libc::SIGTERM).unwrap();
    let (ok, err) = cni("DEL", &attachment("c0ffee01", &p1, "eth0"), &config(&sb, "1.0.0", "web", j!({})));
    assert!(!ok && err["code"] == 11 && err["details"].as_str().unwrap().contains("cannot reach the bpfnet daemon"), "{err}");
    let (ok, err) = cni("STATUS", &[], &config(&sb, "1.1.0", "web", j!({})));
    assert!(!ok && err["code"] == 11, "{err}");
    sb.start_daemon().unwrap();
    assert!(cni("STATUS", &[], &config(&sb, "1.1.0", "web", j!({}))).0);
    assert!(cni("DEL", &attachment("c0ffee01", &p1, "eth0"), &config(&sb, "1.0.0", "web", j!({}))).0);
    assert!(cni("DEL", &attachment("c0ffee01", &p1, "eth0"), &config(&sb, "1.0.0", "web", j!({}))).0);
    let ports = sb.bpfnet_ok(&["port", "ls"]).unwrap();
    assert!(!ports.contains("8080"), "{ports}");

    // GC: what the runtime no longer knows is released.
    assert!(cni("ADD", &attachment("c0ffee04", &p1, "eth0"), &config(&sb, "1.0.0", "web", j!({}))).0);
    let mut gc = config(&sb, "1.1.0", "web", j!({}));
    gc["cni.dev/valid-attachments"] = j!([{"containerID": "c0ffee04", "ifname": "eth0"}]);
    let (ok, out) = cni("GC", &[], &gc);
    assert!(ok, "{out}");
    let eps = json(&sb.bpfnet_ok(&["endpoint", "ls", "--json"]).unwrap());
    let names: Vec<&str> = eps.as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["c0ffee04"], "c0ffee02 collected, c0ffee04 kept");
}

#[test]
fn cni_add_on_an_ipv6_only_network_gives_ipv6_alone() {
    let mut sb = Sandbox::new("cni6").unwrap();
    sb.start_daemon().unwrap();
    sb.bpfnet_ok(&["network", "create", "only6", "--ipv4=false", "--subnet", "fd00:215:6::/64"]).unwrap();
    let c1 = sb.add_netns("c1").unwrap();
    let c2 = sb.add_netns("c2").unwrap();
    let (p1, p2) = (format!("/run/netns/{c1}"), format!("/run/netns/{c2}"));
    let runtime = j!({"ips": ["fd00:215:6::50/64"], "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]});
    let (ok, added) = cni("ADD", &attachment("c0ffee61", &p1, "eth0"), &config(&sb, "1.0.0", "only6", runtime));
    assert!(ok, "{added}");
    assert_eq!(added["ips"], j!([{"interface": 0, "address": "fd00:215:6::50/64", "gateway": "fd00:215:6::1"}]), "{added}");
    assert_eq!(added["routes"], j!([{"dst": "::/0", "gw": "fd00:215:6::1"}]), "no IPv4 route: {added}");
    assert_eq!(added["dns"], j!({"nameservers": ["fd00:215:6::1"]}), "the resolver on the IPv6 gateway");
    let (ok, added2) = cni("ADD", &attachment("c0ffee62", &p2, "eth0"), &config(&sb, "1.0.0", "only6", j!({})));
    assert!(ok, "{added2}");
    let ping = sb.exec(&c2, &["ping", "-6", "-c", "1", "-W", "1", "-q", "fd00:215:6::50"]).unwrap();
    assert!(ping.ok, "the two attachments talk: {ping:?}");
    let ports = sb.bpfnet_ok(&["port", "ls"]).unwrap();
    assert!(ports.contains("[::]:8080") && !ports.contains("0.0.0.0:8080"), "IPv6's half only: {ports}");
    // An IPv4 address asked for: refused, nothing left.
    let (ok, err) = cni("ADD", &attachment("c0ffee63", &p2, "eth1"), &config(&sb, "1.0.0", "only6", j!({"ips": ["10.215.6.5/24"]})));
    assert!(!ok && err["details"].as_str().unwrap().contains("IPv6-only"), "{err}");
    for (id, p) in [("c0ffee61", &p1), ("c0ffee62", &p2)] {
        assert!(cni("DEL", &attachment(id, p, "eth0"), &config(&sb, "1.0.0", "only6", j!({}))).0);
    }
    assert_eq!(json(&sb.bpfnet_ok(&["endpoint", "ls", "--json"]).unwrap()), j!([]));
}
