//! The peers of the service benchmark: N services as kube-proxy writes them for iptables (one
//! `KUBE-SERVICES` rule per service port, a chain per service choosing an endpoint with
//! `statistic --mode random`, a chain per endpoint doing the DNAT), for `iptables-nft-restore`
//! and `iptables-legacy-restore` alike, and as nftables with verdict maps (one lookup whatever
//! N, kube-proxy's nftables mode). Each service has a VIP and a node port, as a Kubernetes
//! NodePort service; the benchmark sends its traffic to one of them.
use std::{fmt::Write, net::Ipv4Addr};

/// One service: its VIP and port, the host port it is published on, its endpoints.
#[derive(Debug, Clone)]
pub struct Service {
    pub vip: Ipv4Addr,
    pub port: u16,
    pub node_port: u16,
    pub endpoints: Vec<(Ipv4Addr, u16)>,
    /// A UDP service (else TCP).
    pub udp: bool,
}

impl Service {
    fn proto(&self) -> &'static str {
        if self.udp { "udp" } else { "tcp" }
    }
}

/// kube-proxy's chain names: a hash of the service (or endpoint), so they are stable.
fn chain(prefix: &str, key: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    format!("{prefix}-{:016X}", h.finish())
}

/// `iptables-restore` input (nat table) for `services`: `KUBE-SERVICES` from PREROUTING and
/// OUTPUT, matched one rule per service, then `KUBE-NODEPORTS` for the published ports.
pub fn iptables_rules(services: &[Service]) -> String {
    let mut chains = String::from("*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-NODEPORTS - [0:0]\n");
    let mut rules = String::from(
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
    );
    for (i, s) in services.iter().enumerate() {
        let (svc, svc_chains, svc_rules) = service_chains(i, s, 0);
        chains.push_str(&svc_chains);
        let p = s.proto();
        let _ = writeln!(rules, "-A KUBE-SERVICES -d {}/32 -p {p} -m {p} --dport {} -j {svc}", s.vip, s.port);
        let _ = writeln!(rules, "-A KUBE-NODEPORTS -p {p} -m {p} --dport {} -j {svc}", s.node_port);
        rules.push_str(&svc_rules);
    }
    // As kube-proxy: node ports last, for local destinations only.
    rules.push_str("-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n");
    format!("{chains}{rules}COMMIT\n")
}

/// `iptables-restore --noflush` input that rewrites service `i`'s chains (a changed endpoint
/// set), as kube-proxy does for the services that changed: the service chain is declared (so
/// flushed) and filled again, with a chain per endpoint (named anew for `generation`).
pub fn iptables_service_update(i: usize, s: &Service, generation: usize) -> String {
    let (_, chains, rules) = service_chains(i, s, generation);
    format!("*nat\n{chains}{rules}COMMIT\n")
}

/// Service `i`'s chain name, its chain declarations (its own and one per endpoint) and its
/// rules: endpoint k of n taken with probability 1/(n-k) of what the ones before it left (an
/// even split), each endpoint's chain doing the DNAT.
fn service_chains(i: usize, s: &Service, generation: usize) -> (String, String, String) {
    let svc = chain("KUBE-SVC", &format!("{i}/{}:{}", s.vip, s.port));
    let mut chains = format!(":{svc} - [0:0]\n");
    let mut rules = String::new();
    let n = s.endpoints.len();
    for (k, (ip, port)) in s.endpoints.iter().enumerate() {
        let sep = chain("KUBE-SEP", &format!("{i}/{k}/{ip}:{port}/{generation}"));
        let _ = writeln!(chains, ":{sep} - [0:0]");
        if k + 1 < n {
            let p = 1.0 / (n - k) as f64;
            let _ = writeln!(rules, "-A {svc} -m statistic --mode random --probability {p:.11} -j {sep}");
        } else {
            let _ = writeln!(rules, "-A {svc} -j {sep}");
        }
        let p = s.proto();
        let _ = writeln!(rules, "-A {sep} -p {p} -m {p} -j DNAT --to-destination {ip}:{port}");
    }
    (svc, chains, rules)
}

/// `nft -f` input that rewrites service `i`'s chain (a changed endpoint set).
pub fn nftables_service_update(i: usize, s: &Service) -> String {
    format!("flush chain ip kube svc{i}\nadd rule ip kube svc{i} {}\n", dnat_rule(s))
}

/// A service chain's rule: an endpoint at random, translated to (one endpoint: no choice, and
/// no anonymous map, which costs nft a set per service).
fn dnat_rule(s: &Service) -> String {
    let p = s.proto();
    if let [(ip, port)] = s.endpoints[..] {
        return format!("meta l4proto {p} dnat ip to {ip}:{port}");
    }
    let targets: Vec<String> = s.endpoints.iter().enumerate().map(|(k, (ip, port))| format!("{k} : {ip} . {port}")).collect();
    format!("meta l4proto {p} dnat ip addr . port to numgen random mod {} map {{ {} }}", s.endpoints.len(), targets.join(", "))
}

/// `nft -f` input: the same services as verdict maps (`ip daddr . th dport` for VIPs, `th
/// dport` for node ports on local addresses), each service a chain choosing its endpoint with
/// `numgen random`, in table `ip kube`.
pub fn nftables_ruleset(services: &[Service]) -> String {
    let mut out = String::from("table ip kube {\n");
    let mut vips = Vec::new();
    let mut node_ports = Vec::new();
    for (i, s) in services.iter().enumerate() {
        let _ = writeln!(out, "  chain svc{i} {{\n    {}\n  }}", dnat_rule(s));
        vips.push(format!("{} . {} : goto svc{i}", s.vip, s.port));
        node_ports.push(format!("{} : goto svc{i}", s.node_port));
    }
    let _ = writeln!(out, "  map services {{\n    type ipv4_addr . inet_service : verdict\n    elements = {{ {} }}\n  }}", vips.join(", "));
    let _ = writeln!(out, "  map node_ports {{\n    type inet_service : verdict\n    elements = {{ {} }}\n  }}", node_ports.join(", "));
    out.push_str(
        "  chain nat_prerouting {\n    type nat hook prerouting priority dstnat; policy accept;\n    jump services\n  }\n\
         \x20 chain nat_output {\n    type nat hook output priority -100; policy accept;\n    jump services\n  }\n\
         \x20 chain services {\n    meta l4proto { tcp, udp } ip daddr . th dport vmap @services\n    \
         fib daddr type local meta l4proto { tcp, udp } th dport vmap @node_ports\n  }\n}\n",
    );
    out
}

/// Runs `tool ARGS FILE` inside namespace `ns` (the thread enters it; the tool inherits it), as
/// kube-proxy runs one restore per sync; returns the milliseconds it took, process start included.
pub fn load_timed(ns: &str, tool: &'static str, args: &'static [&'static str], file: &std::path::Path) -> anyhow::Result<f64> {
    let file = file.to_path_buf();
    crate::netns::within(ns, move || {
        let t = std::time::Instant::now();
        let out = std::process::Command::new(tool).args(args).arg(&file).output()?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        if !out.status.success() {
            anyhow::bail!("{tool}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(ms)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn services(n: usize) -> Vec<Service> {
        (0..n)
            .map(|i| Service {
                vip: Ipv4Addr::new(10, 96, (i / 250) as u8, (i % 250 + 2) as u8),
                port: 80,
                node_port: 30_000 + i as u16,
                endpoints: (0..3).map(|k| (Ipv4Addr::new(10, 244, 0, 10 + k), 8080)).collect(),
                udp: i == 2,
            })
            .collect()
    }

    #[test]
    fn iptables_rules_are_one_lookup_rule_per_service_and_split_evenly() {
        let text = iptables_rules(&services(2));
        assert!(text.starts_with("*nat\n") && text.ends_with("COMMIT\n"));
        assert_eq!(text.matches("-A KUBE-SERVICES -d ").count(), 2, "{text}");
        assert_eq!(text.matches("-A KUBE-NODEPORTS -p tcp").count(), 2);
        let udp = iptables_rules(&services(3));
        assert!(udp.contains("-A KUBE-NODEPORTS -p udp -m udp --dport 30002") && udp.contains("-p udp -m udp -j DNAT"), "{udp}");
        // Three endpoints: 1/3, then 1/2 of the rest, then the remainder.
        assert!(text.contains("--probability 0.33333333333") && text.contains("--probability 0.50000000000"), "{text}");
        assert_eq!(text.matches("-j DNAT --to-destination 10.244.0.12:8080").count(), 2);
        // Every chain used is declared.
        for line in text.lines().filter(|l| l.starts_with("-A ")) {
            let target = line.rsplit(" -j ").next().unwrap().split_whitespace().next().unwrap();
            if target.starts_with("KUBE-") {
                assert!(text.contains(&format!(":{target} ")), "{target} not declared");
            }
        }
    }

    /// The real tools take what is generated, loaded into a private namespace (never the
    /// machine's own): iptables-nft, iptables-legacy and nft. Needs root.
    #[test]
    fn the_real_tools_load_a_thousand_services() {
        let sb = crate::Sandbox::new("kubeproxy").unwrap();
        let host = sb.host();
        let dir = std::env::temp_dir().join(format!("bpfnet-kubeproxy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let rules = dir.join("rules");
        let ruleset = dir.join("ruleset.nft");
        std::fs::write(&rules, iptables_rules(&services(1000))).unwrap();
        std::fs::write(&ruleset, nftables_ruleset(&services(1000))).unwrap();
        for tool in ["iptables-nft-restore", "iptables-legacy-restore"] {
            let ran = sb.exec(&host, &[tool, rules.to_str().unwrap()]).unwrap();
            assert!(ran.ok, "{tool}: {}", ran.stderr);
        }
        let listed = sb.exec(&host, &["iptables-legacy-save", "-t", "nat"]).unwrap().stdout;
        assert_eq!(listed.matches("-A KUBE-SERVICES -d ").count(), 1000);
        let ran = sb.exec(&host, &["nft", "-f", ruleset.to_str().unwrap()]).unwrap();
        assert!(ran.ok, "nft: {}", ran.stderr);
        let listed = sb.exec(&host, &["nft", "list", "map", "ip", "kube", "services"]).unwrap().stdout;
        assert_eq!(listed.matches("goto svc").count(), 1000);
        // One service gets a fourth endpoint, as kube-proxy writes it.
        let mut changed = services(1000).remove(7);
        changed.endpoints.push((Ipv4Addr::new(10, 244, 0, 99), 8080));
        std::fs::write(&rules, iptables_service_update(7, &changed, 1)).unwrap();
        for (tool, save) in [("iptables-nft-restore", "iptables-nft-save"), ("iptables-legacy-restore", "iptables-legacy-save")] {
            let ran = sb.exec(&host, &[tool, "--noflush", rules.to_str().unwrap()]).unwrap();
            assert!(ran.ok, "{tool}: {}", ran.stderr);
            let listed = sb.exec(&host, &[save, "-t", "nat"]).unwrap().stdout;
            assert!(listed.contains("--to-destination 10.244.0.99:8080"), "{tool}: the new endpoint is there");
            assert_eq!(listed.matches("-A KUBE-SERVICES -d ").count(), 1000, "{tool}: the others stay");
        }
        std::fs::write(&ruleset, nftables_service_update(7, &changed)).unwrap();
        let ran = sb.exec(&host, &["nft", "-f", ruleset.to_str().unwrap()]).unwrap();
        assert!(ran.ok, "nft: {}", ran.stderr);
        let listed = sb.exec(&host, &["nft", "list", "chain", "ip", "kube", "svc7"]).unwrap().stdout;
        assert!(listed.contains("mod 4") && listed.contains("10.244.0.99"), "{listed}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn nftables_has_one_map_element_per_service() {
        let text = nftables_ruleset(&services(3));
        assert_eq!(text.matches(" : goto svc").count(), 6, "a VIP and a node port each: {text}");
        assert!(text.contains("10.96.0.2 . 80 : goto svc0") && text.contains("30002 : goto svc2"));
        assert!(text.contains("numgen random mod 3 map { 0 : 10.244.0.10 . 8080"), "{text}");
        assert_eq!(text.matches('{').count(), text.matches('}').count());
    }
}
