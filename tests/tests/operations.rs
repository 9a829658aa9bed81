//! Running like a host daemon: the configuration file (flags win over it, a bad setting stops
//! the start with its name), Prometheus metrics scraped and parsed, the systemd unit's command
//! line and the example configuration accepted by the daemon's parser. Needs root.
use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::TcpStream,
    time::Duration,
};

use bpfnet_lab::{
    checks::json,
    netns,
    sandbox::{bpfnet_bin, repo_root, run, DaemonOptions},
    Sandbox,
};

/// One scrape of `GET /metrics` at `addr` inside namespace `ns`, parsed: series -> value. Every
/// line must be a comment or `name[{labels}] value`, and the text ends with `# EOF`.
fn scrape(ns: &str, addr: &str) -> BTreeMap<String, f64> {
    let addr = addr.to_string();
    let mut stream = netns::within(ns, move || Ok(TcpStream::connect(addr)?)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: bpfnet\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(body.trim_end().ends_with("# EOF"), "OpenMetrics text ends with # EOF: {body}");
    let mut series = BTreeMap::new();
    for line in body.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let (name, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("not a sample: {line:?}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("not a number in {line:?}"));
        assert!(name.chars().next().unwrap().is_ascii_alphabetic(), "{line:?}");
        series.insert(name.to_string(), value);
    }
    series
}

#[test]
fn configuration_file_and_metrics() {
    let mut sb = Sandbox::new("ops").unwrap();
    let config = sb.dir.join("config.toml");
    std::fs::write(&config, "ct-max = 4096\nmetrics = \"127.0.0.1:9464\"\nxdp = \"off\"\n").unwrap();
    let config_arg = config.display().to_string();
    // The command line's --ct-max wins over the file's; the file's metrics and xdp apply.
    sb.start_daemon_with(&DaemonOptions { args: &["--config", &config_arg, "--ct-max", "2048"], ..Default::default() }).unwrap();
    let stats = json(&sb.bpfnet_ok(&["stats", "--json"]).unwrap());
    assert_eq!(stats["conntrack"]["max_entries"], 2048, "{stats}");

    sb.bpfnet_ok(&["network", "create", "web", "--subnet", "10.219.0.0/24"]).unwrap();
    let c1 = sb.add_netns("c1").unwrap();
    let c2 = sb.add_netns("c2").unwrap();
    sb.bpfnet_ok(&["network", "connect", "web", &c1]).unwrap();
    sb.bpfnet_ok(&["network", "connect", "web", &c2]).unwrap();
    assert!(sb.ping(&c1, "10.219.0.3").unwrap());
    let m = scrape(&sb.host(), "127.0.0.1:9464");
    assert_eq!(m["bpfnet_networks"], 1.0, "{m:?}");
    assert_eq!(m["bpfnet_endpoints_attached"], 2.0);
    assert_eq!(m["bpfnet_endpoints_allocated"], 0.0);
    assert_eq!(m["bpfnet_services"], 0.0);
    assert_eq!(m["bpfnet_conntrack_capacity"], 2048.0);
    assert!(m["bpfnet_conntrack_pressure_ratio"] >= 0.0 && m["bpfnet_conntrack_pressure_ratio"] < 1.0);
    let redirected = m[r#"bpfnet_datapath_packets_total{counter="redirected",kind="forward"}"#];
    assert!(redirected >= 2.0, "the ping went through the datapath: {m:?}");
    assert!(m.contains_key(r#"bpfnet_datapath_packets_total{counter="drop_isolation",kind="drop"}"#));
    let creates = m[r#"bpfnet_api_request_duration_seconds_count{method="POST",route="/networks"}"#];
    assert_eq!(creates, 1.0, "one network create, timed");
    let connects = m[r#"bpfnet_api_request_duration_seconds_count{method="POST",route="/networks/{name}/connect"}"#];
    assert_eq!(connects, 2.0, "routes by pattern, not by network name");
    // Counters only grow.
    assert!(sb.ping(&c2, "10.219.0.2").unwrap());
    let again = scrape(&sb.host(), "127.0.0.1:9464");
    assert!(again[r#"bpfnet_datapath_packets_total{counter="redirected",kind="forward"}"#] > redirected);

    // A bad setting stops the start, naming it and the file.
    sb.stop_daemon(libc::SIGTERM).unwrap();
    std::fs::write(&config, "colour = \"blue\"\n").unwrap();
    let refused = sb.run_daemon_to_exit(&["--config".as_ref(), config.as_os_str()], Duration::from_secs(10)).unwrap();
    assert!(!refused.ok && refused.stderr.contains("unknown setting \"colour\"") && refused.stderr.contains("config.toml"), "{}", refused.stderr);
}

#[test]
fn the_systemd_unit_and_example_configuration_fit_the_daemon() {
    let unit = std::fs::read_to_string(repo_root().join("contrib/systemd/bpfnet.service")).unwrap();
    let exec = unit.lines().find_map(|l| l.strip_prefix("ExecStart=")).expect("an ExecStart line");
    let mut words = exec.split_whitespace().skip(1); // the binary
    assert_eq!(words.next(), Some("daemon"));
    let help = run(bpfnet_bin(), &["daemon", "--help"]).unwrap().stdout;
    for flag in words.filter(|w| w.starts_with("--")) {
        assert!(help.contains(flag), "the unit's {flag} is a daemon flag");
    }
    assert!(unit.contains("Before=docker.service"), "ordered before Docker, whose plugin it serves");
    assert!(unit.contains("Restart=on-failure"));
    // Every commented example setting, uncommented, is one the daemon accepts.
    let example = std::fs::read_to_string(repo_root().join("contrib/systemd/config.toml")).unwrap();
    let settings: String = example
        .lines()
        .filter_map(|l| l.strip_prefix("# "))
        .filter(|l| l.contains(" = "))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(settings.lines().count() >= 8, "{settings}");
    let path = std::env::temp_dir().join(format!("bpfnet-example-{}.toml", std::process::id()));
    std::fs::write(&path, &settings).unwrap();
    // --help after the settings: parsed and checked, nothing run.
    let r = run(bpfnet_bin(), &["daemon", "--config", &path.display().to_string(), "--help"]).unwrap();
    std::fs::remove_file(&path).ok();
    assert!(r.ok, "{}{}", r.stdout, r.stderr);
}
