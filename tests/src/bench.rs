//! Side-by-side benchmark of three paths — container to container, container to the outside
//! (masquerade) and outside to a published port (`-p`) — for bpfnet and Docker's default datapath
//! (a Linux bridge, br_netfilter and the iptables rules dockerd 20.10 installs for one user-defined
//! bridge network, with its MASQUERADE and DNAT rules), each against a direct veth pair between
//! two namespaces (the limit). See docs/BENCHMARKS.md for the method and the latest results.
//!
//! Everything is built inside one [`Sandbox`] (namespaces `bpfnetlab-bench-...`); nothing on the
//! machine's own namespace is touched. Per repetition every mode is measured on every configuration,
//! in short slices taken round-robin across the configurations (their order rotated with every
//! repetition and round), client and server pinned to one CPU; each configuration is compared with
//! the direct pair measured in the same repetition: only same-run ratios count.
use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, ChildStdout, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use serde::Serialize;

use crate::{
    sandbox::{self, run_ok, Sandbox},
    traffic::Mode,
};

/// How a benchmark measures: how long, how often, what, and the A/A control (shared by `bench`
/// and `cross-node-bench`).
#[derive(clap::Args, Debug, Clone)]
pub struct Run {
    /// Seconds measured per configuration, mode and repetition.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Repetitions; configurations are interleaved within each and their order rotated.
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// What to measure, comma-separated: rr (TCP_RR), crr (TCP_CRR), stream (one TCP stream,
    /// container to container only), udp (64-byte UDP_RR).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Mode::Rr, Mode::Crr, Mode::Stream, Mode::Udp])]
    pub modes: Vec<Mode>,
    /// Seconds of discarded warm-up traffic per configuration before each mode's measurements.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Length of one slice: each measurement of `--seconds` is cut into slices of about this many
    /// seconds, interleaved round-robin with the other configurations' slices (0: one piece).
    /// The host under these VMs changes their speed by 10-30% for fractions of a second; half-second
    /// slices put every configuration through the same slow and fast moments.
    #[arg(long, default_value_t = 0.5)]
    pub slice: f64,
    /// Also measure a second, identical reference ("A/A control"): its ratio to the reference
    /// shows the noise of the method itself.
    #[arg(long)]
    pub control: bool,
}

impl Default for Run {
    fn default() -> Self {
        Run { seconds: 5.0, reps: 3, modes: vec![Mode::Rr, Mode::Crr, Mode::Stream, Mode::Udp], warmup: 1.0, slice: 0.5, control: false }
    }
}

impl Run {
    /// Interleaved slices per measurement, and each one's length.
    pub fn slices(&self) -> (usize, f64) {
        let slices = if self.slice > 0.0 { ((self.seconds / self.slice).round() as usize).max(1) } else { 1 };
        (slices, self.seconds / slices as f64)
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct Options {
    #[command(flatten)]
    pub run: Run,
    /// Container to container only (no masquerade or published-port paths, no cross-node section).
    #[arg(long)]
    pub c2c_only: bool,
    /// Leave out the cross-node section (a container to one on another node: routed vs a
    /// Docker-style overlay vs bpfnet's; see `bpfnet-lab cross-node-bench --help`).
    #[arg(long)]
    pub skip_cross_node: bool,
    /// Leave out the IPv6 rows (container to container over IPv6: a direct pair, the bridge
    /// through ip6tables, bpfnet on a dual-stack network).
    #[arg(long)]
    pub skip_ipv6: bool,
    /// Print the report as JSON on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Write the results (table, per-repetition rates, command, date, machine) to this markdown
    /// file: between its `bench-results` markers if it has them, else appended (docs/BENCHMARKS.md).
    #[arg(long, value_name = "PATH")]
    pub markdown_out: Option<PathBuf>,
    /// For callers that print the report themselves (the demo): nothing on stdout, progress on stderr.
    #[arg(skip)]
    pub quiet: bool,
}

impl Default for Options {
    /// The CLI's defaults; e.g. `Options { run: Run { seconds: 1.0, reps: 1, ..Default::default() }, ..Default::default() }`.
    fn default() -> Self {
        Options { run: Run::default(), c2c_only: false, skip_cross_node: false, skip_ipv6: false, json: false, markdown_out: None, quiet: false }
    }
}

impl Options {
    /// The demo's short run: 2 s per measurement, 1 repetition, every mode; prints nothing itself.
    pub fn quick() -> Self {
        Options { run: Run { seconds: 2.0, reps: 1, warmup: 0.5, ..Default::default() }, quiet: true, ..Default::default() }
    }
}

/// The configurations, in their order in tables (the order of measurement rotates).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Config {
    Direct,
    Bridge,
    Bpfnet,
    RoutedOut,
    BridgeOut,
    BpfnetOut,
    RoutedIn,
    BridgeIn,
    BpfnetIn,
    DirectV6,
    BridgeV6,
    BpfnetV6,
    BridgeOutV6,
    BpfnetOutV6,
    BridgeInV6,
    BpfnetInV6,
    Control,
}

impl Config {
    fn name(self) -> &'static str {
        match self {
            Config::Direct => "direct",
            Config::Bridge => "bridge+iptables",
            Config::Bpfnet => "bpfnet",
            Config::RoutedOut => "out: routed, no NAT (reference)",
            Config::BridgeOut => "out: bridge+iptables MASQUERADE",
            Config::BpfnetOut => "out: bpfnet masquerade",
            Config::RoutedIn => "in: routed, no NAT (reference)",
            Config::BridgeIn => "in: bridge+iptables DNAT",
            Config::BpfnetIn => "in: bpfnet -p",
            Config::DirectV6 => "IPv6: direct",
            Config::BridgeV6 => "IPv6: bridge+ip6tables",
            Config::BpfnetV6 => "IPv6: bpfnet",
            Config::BridgeOutV6 => "IPv6 out: bridge+ip6tables MASQUERADE",
            Config::BpfnetOutV6 => "IPv6 out: bpfnet masquerade",
            Config::BridgeInV6 => "IPv6 in: bridge+ip6tables DNAT",
            Config::BpfnetInV6 => "IPv6 in: bpfnet -p",
            Config::Control => "direct again (A/A control)",
        }
    }
    fn describe(self) -> &'static str {
        match self {
            Config::Direct => "veth pair directly between the two namespaces (the limit, for every path)",
            Config::Bridge => "container to container: Linux bridge, br_netfilter, Docker 20.10's iptables rules for one bridge network",
            Config::Bpfnet => "container to container: bpfnet daemon, one network, both namespaces connected with `bpfnet network connect`",
            Config::RoutedOut => {
                "container to a server behind the host's uplink by plain kernel forwarding: the NAT paths' two veth hops, \
                 no bridge, no netfilter hook registered, no NAT (the outside has a route to the container)"
            }
            Config::BridgeOut => "container to a server behind the host's uplink: bridge, forwarding, Docker's MASQUERADE rule",
            Config::BpfnetOut => "container to a server behind the host's uplink: bpfnet masquerade",
            Config::RoutedIn => "a client behind the uplink to the container's own address, forwarded as routed out (the reference for `in`)",
            Config::BridgeIn => "a client behind the uplink to a published port (-p 8080:5201): Docker's DNAT rule, no userland proxy",
            Config::BpfnetIn => "a client behind the uplink to a published port: `bpfnet network connect ... -p 8080:5201`",
            Config::DirectV6 => "IPv6 over a veth pair directly between two namespaces (the limit for the IPv6 rows, their ratios' reference)",
            Config::BridgeV6 => {
                "IPv6 container to container on the bridge: br_netfilter through ip6tables, Docker's rules for the network \
                 (its ip6tables mirror of the IPv4 ones)"
            }
            Config::BpfnetV6 => "IPv6 container to container: bpfnet, the same network made dual-stack (`--subnet fd00:201::/64`)",
            Config::BridgeOutV6 => "IPv6 container to a server behind the uplink: bridge, IPv6 forwarding, Docker's ip6tables MASQUERADE",
            Config::BpfnetOutV6 => "IPv6 container to a server behind the uplink: bpfnet's NAT66 to the uplink's IPv6 address",
            Config::BridgeInV6 => "IPv6 client behind the uplink to a port published on [::] (-p 8080:5202): Docker's ip6tables DNAT",
            Config::BpfnetInV6 => "IPv6 client behind the uplink to a port published on [::]: `-p [::]:8080:5202`",
            Config::Control => "a second veth pair built like direct: the method's own noise",
        }
    }
    /// The bulk stream is measured container to container only (it does not separate datapaths).
    fn measures(self, mode: Mode) -> bool {
        mode != Mode::Stream
            || matches!(self, Config::Direct | Config::Bridge | Config::Bpfnet | Config::Control)
            || matches!(self, Config::DirectV6 | Config::BridgeV6 | Config::BpfnetV6)
    }

    fn is_ipv6(self) -> bool {
        matches!(
            self,
            Config::DirectV6 | Config::BridgeV6 | Config::BpfnetV6 | Config::BridgeOutV6 | Config::BpfnetOutV6 | Config::BridgeInV6 | Config::BpfnetInV6
        )
    }

    /// The configuration this one's ratio is to: the direct pair of its address family.
    fn reference(self) -> Config {
        if self.is_ipv6() { Config::DirectV6 } else { Config::Direct }
    }
}

pub(crate) fn mode_cli_name(mode: Mode) -> String {
    mode.to_possible_value().map(|v| v.get_name().to_string()).unwrap_or_else(|| format!("{mode:?}"))
}

pub(crate) fn mode_title(mode: Mode) -> &'static str {
    match mode {
        Mode::Rr => "TCP_RR",
        Mode::Crr => "TCP_CRR",
        Mode::Stream => "TCP_STREAM",
        Mode::Udp => "UDP_RR 64 B",
    }
}

pub(crate) fn mode_unit(mode: Mode) -> &'static str {
    match mode {
        Mode::Rr => "tr/s",
        Mode::Crr => "conn/s",
        Mode::Stream => "Gb/s",
        Mode::Udp => "tr/s",
    }
}

// ---- the report ----

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// When the run ended, UTC.
    pub date: String,
    /// The command that produced it.
    pub command: String,
    pub machine: Machine,
    pub seconds: f64,
    pub warmup_seconds: f64,
    /// Each measurement was made of this many slices of `seconds / slices`, interleaved.
    pub slices: usize,
    pub reps: usize,
    /// The CPU both client and server were pinned to.
    pub cpu: usize,
    /// The configurations, in table order.
    pub configs: Vec<ConfigInfo>,
    /// One entry per measured mode.
    pub results: Vec<ModeResult>,
    /// Evidence that each datapath carried the traffic (iptables and bpfnet counters).
    pub checks: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConfigInfo {
    pub name: String,
    pub description: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub kernel: String,
    pub cpu_model: String,
    pub iptables: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModeResult {
    /// `rr`, `crr` or `stream`.
    pub mode: String,
    /// `TCP_RR`, `TCP_CRR`, `TCP_STREAM`.
    pub title: String,
    /// Unit of `rates`: `tr/s`, `conn/s` or `bit/s`.
    pub unit: String,
    pub configs: Vec<ConfigResult>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConfigResult {
    pub config: String,
    /// Rate of each repetition, in repetition order (transactions/s, connections/s, bits/s).
    pub rates: Vec<f64>,
    /// Each repetition's rate divided by the direct pair's rate of the same repetition.
    pub ratios: Vec<f64>,
    pub median_rate: f64,
    pub median_ratio: f64,
    pub min_ratio: f64,
    pub max_ratio: f64,
}

pub(crate) fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

impl ConfigResult {
    pub(crate) fn new(config: &str, rates: Vec<f64>, direct: &[f64]) -> Self {
        let rates: Vec<f64> = rates.into_iter().filter(|r| !r.is_nan()).collect();
        let ratios: Vec<f64> = rates.iter().zip(direct).map(|(r, d)| r / d).collect();
        ConfigResult {
            config: config.to_string(),
            median_rate: median(&rates),
            median_ratio: median(&ratios),
            min_ratio: ratios.iter().copied().fold(f64::INFINITY, f64::min),
            max_ratio: ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            rates,
            ratios,
        }
    }
}

/// A rate in the unit of its table column: `52.1k` (per second) or `9.41` (Gb/s).
pub(crate) fn format_rate(mode: &str, rate: f64) -> String {
    if mode == "stream" {
        format!("{:.2}", rate / 1e9)
    } else if rate >= 1000.0 {
        format!("{:.1}k", rate / 1000.0)
    } else {
        format!("{rate:.0}")
    }
}

impl ModeResult {
    /// The unit of the table's cells (Gb/s for streams, per second otherwise).
    pub fn table_unit(&self) -> &str {
        if self.mode == "stream" {
            "Gb/s"
        } else {
            &self.unit
        }
    }

    fn cell(&self, c: &ConfigResult) -> String {
        let rate = format_rate(&self.mode, c.median_rate);
        if c.config == Config::Direct.name() {
            format!("{rate} (1.00x)")
        } else if c.ratios.len() > 1 {
            format!("{rate} ({:.2}x, {:.2}-{:.2})", c.median_ratio, c.min_ratio, c.max_ratio)
        } else {
            format!("{rate} ({:.2}x)", c.median_ratio)
        }
    }
}

/// Renders rows as a markdown table with padded columns (readable as plain text too).
pub(crate) fn render_table(header: &[String], rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..header.len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).chain([header[i].chars().count()]).max().unwrap_or(0))
        .collect();
    let line = |cells: &[String]| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        format!("| {} |\n", padded.join(" | "))
    };
    let mut out = line(header);
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    out.push_str(&format!("|-{}-|\n", rule.join("-|-")));
    for row in rows {
        out.push_str(&line(row));
    }
    out
}

impl Report {
    /// The result table: one row per configuration, one column per mode; each cell is the median
    /// rate over the repetitions, then (median ratio to direct, min-max of the per-repetition ratios).
    pub fn markdown_table(&self) -> String {
        let mut header = vec!["config".to_string()];
        header.extend(self.results.iter().map(|m| format!("{} {} (x direct)", m.title, m.table_unit())));
        let rows: Vec<Vec<String>> = self
            .configs
            .iter()
            .map(|info| {
                let mut row = vec![info.name.clone()];
                for m in &self.results {
                    let c = m.configs.iter().find(|c| c.config == info.name && !c.rates.is_empty());
                    row.push(c.map(|c| m.cell(c)).unwrap_or_else(|| "-".into()));
                }
                row
            })
            .collect();
        render_table(&header, &rows)
    }

    /// The NAT rows against the routed reference (`None` without it, as with `--c2c-only`): per
    /// repetition each NAT rate divided by the routed rate of the same repetition; median, then
    /// min-max. Above 1.00x the translation costs less than nothing against plain forwarding.
    pub fn markdown_vs_routed(&self) -> Option<String> {
        let routed_out = Config::RoutedOut.name();
        let routed_in = Config::RoutedIn.name();
        let modes: Vec<&ModeResult> = self
            .results
            .iter()
            .filter(|m| m.configs.iter().any(|c| (c.config == routed_out || c.config == routed_in) && !c.rates.is_empty()))
            .collect();
        if modes.is_empty() {
            return None;
        }
        let rows_of = [
            (Config::BpfnetOut, routed_out),
            (Config::BridgeOut, routed_out),
            (Config::BpfnetIn, routed_in),
            (Config::BridgeIn, routed_in),
        ];
        let mut header = vec!["NAT path".to_string()];
        header.extend(modes.iter().map(|m| format!("{} (x routed)", m.title)));
        let rows: Vec<Vec<String>> = rows_of
            .iter()
            .map(|(config, reference)| {
                let mut row = vec![config.name().to_string()];
                for m in &modes {
                    let find = |name: &str| m.configs.iter().find(|c| c.config == name).map(|c| c.rates.clone()).unwrap_or_default();
                    let result = ConfigResult::new(config.name(), find(config.name()), &find(reference));
                    row.push(if result.ratios.is_empty() {
                        "-".into()
                    } else {
                        format!("{:.2}x ({:.2}-{:.2})", result.median_ratio, result.min_ratio, result.max_ratio)
                    });
                }
                row
            })
            .collect();
        Some(render_table(&header, &rows))
    }

    /// Every repetition's rate, in the table's units, with its ratio to direct.
    pub fn markdown_raw(&self) -> String {
        let mut header = vec!["mode".to_string(), "config".to_string()];
        header.extend((1..=self.reps).map(|r| format!("rep {r}")));
        let mut rows = vec![];
        for m in &self.results {
            for c in m.configs.iter().filter(|c| !c.rates.is_empty()) {
                let mut row = vec![format!("{} ({})", m.title, m.table_unit()), c.config.clone()];
                row.extend(
                    c.rates.iter().zip(&c.ratios).map(|(r, x)| format!("{} ({x:.2}x)", format_rate(&m.mode, *r))),
                );
                rows.push(row);
            }
        }
        render_table(&header, &rows)
    }

    /// A compact report: how the run was made, the table, and the checks made during the run.
    pub fn markdown(&self) -> String {
        let mut s = format!("{}\n\n{}", self.summary_line(), self.markdown_table());
        if let Some(vs_routed) = self.markdown_vs_routed() {
            s.push_str(&format!("\nNAT against the routed reference (the same two hops without NAT):\n\n{vs_routed}"));
        }
        if !self.checks.is_empty() {
            s.push('\n');
            for c in &self.checks {
                s.push_str(&format!("- {c}\n"));
            }
        }
        s
    }

    /// One line on how the run was made.
    pub fn summary_line(&self) -> String {
        format!(
            "{}: {} CPUs ({}), kernel {}, {}; {}, {} repetition(s), client and server pinned to CPU {}",
            self.date,
            self.machine.nproc,
            self.machine.cpu_model,
            self.machine.kernel,
            self.machine.iptables,
            self.timing(),
            self.reps,
            self.cpu
        )
    }

    fn timing(&self) -> String {
        let slices = if self.slices > 1 {
            format!(" in {} interleaved slices of {:.2} s", self.slices, self.seconds / self.slices as f64)
        } else {
            String::new()
        };
        format!("{} s per measurement{slices}, after {} s of discarded warm-up", self.seconds, self.warmup_seconds)
    }

    /// The section `--markdown-out` writes: date, command, machine, the table and the raw rates.
    pub fn markdown_section(&self) -> String {
        let mut s = String::new();
        s.push_str("## Latest results\n\n");
        s.push_str(&format!("- Date: {}\n", self.date));
        s.push_str(&format!("- Command: `{}`\n", self.command));
        s.push_str(&format!(
            "- Machine: {} CPUs ({}), kernel `{}`, `{}`\n",
            self.machine.nproc, self.machine.cpu_model, self.machine.kernel, self.machine.iptables
        ));
        s.push_str(&format!(
            "- {}, {} repetition(s), client and server pinned to CPU {}\n\n",
            self.timing(),
            self.reps,
            self.cpu
        ));
        s.push_str(&self.markdown_table());
        s.push_str(
            "\nEach cell: median rate over the repetitions (ratio to direct: median of the per-repetition \
             ratios, then their min-max; the IPv6 rows' ratios are to the IPv6 direct pair).\n",
        );
        if let Some(vs_routed) = self.markdown_vs_routed() {
            s.push_str(&format!(
                "\nThe NAT paths against the routed reference (the same two veth hops, plain kernel forwarding, \
                 no netfilter hook, no NAT; median of the per-repetition ratios, then their min-max): what is \
                 left below 1.00x is the cost of the translation, the rest of the gap to direct is the hops'.\n\n{vs_routed}"
            ));
        }
        s.push_str("\nPer repetition (rate, and ratio to direct measured in the same repetition):\n\n");
        s.push_str(&self.markdown_raw());
        if !self.checks.is_empty() {
            s.push_str("\nChecks made during the run:\n\n");
            for c in &self.checks {
                s.push_str(&format!("- {c}\n"));
            }
        }
        s
    }
}

/// Puts `section` between the markers `<!-- MARK:begin ... -->` and `<!-- MARK:end -->` of
/// `path` (or appends it with markers, or creates the file); `tool`: the command that writes it.
pub(crate) fn write_markdown(path: &Path, mark: &str, tool: &str, section: &str) -> Result<()> {
    let begin_mark = format!("<!-- {mark}:begin");
    let end_mark = format!("<!-- {mark}:end -->");
    let block = format!("{begin_mark} (written by `{tool}`; edits inside are overwritten) -->\n{section}{end_mark}\n");
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let new = match (old.find(&begin_mark), old.find(&end_mark)) {
        (Some(b), Some(e)) if b < e => {
            format!("{}{block}{}", &old[..b], old[e + end_mark.len()..].trim_start_matches('\n'))
        }
        _ if old.is_empty() => format!("# Benchmarks\n\n{block}"),
        _ => format!("{}\n\n{block}", old.trim_end()),
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, new).with_context(|| format!("writing {}", path.display()))
}

// ---- the world ----

/// Where a configuration's client and server live.
struct Pair {
    config: Config,
    client_ns: String,
    server_ns: String,
    server: SocketAddr,
}

pub(crate) const PORT: u16 = 5201;

/// Sets sysctls inside `ns`.
fn sysctl(ns: &str, settings: &[(&str, &str)]) -> Result<()> {
    let assignments: Vec<String> = settings.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut args = vec!["netns", "exec", ns, "sysctl", "-q", "-w"];
    args.extend(assignments.iter().map(String::as_str));
    run_ok("ip", &args).map(|_| ())
}

/// The same base for every namespace: no IPv6, no reverse-path filter, forwarding as given.
pub(crate) fn base_sysctls(ns: &str, forwarding: bool) -> Result<()> {
    sysctl(
        ns,
        &[
            ("net.ipv6.conf.all.disable_ipv6", "1"),
            ("net.ipv6.conf.default.disable_ipv6", "1"),
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.default.rp_filter", "0"),
            ("net.ipv4.ip_forward", if forwarding { "1" } else { "0" }),
        ],
    )
}

/// A "container" namespace: the base, plus what TCP_CRR needs to not run out of ports.
pub(crate) fn container_ns(sb: &mut Sandbox, role: &str) -> Result<String> {
    let ns = sb.add_netns(role)?;
    base_sysctls(&ns, false)?;
    sysctl(&ns, &[("net.ipv4.tcp_tw_reuse", "1"), ("net.ipv4.ip_local_port_range", "1024 65535")])?;
    Ok(ns)
}

pub(crate) fn ip(ns: &str, args: &[&str]) -> Result<()> {
    let mut all = vec!["-n", ns];
    all.extend_from_slice(args);
    run_ok("ip", &all).map(|_| ())
}

/// (a) A veth pair straight between two namespaces (`net`: the third octet of its /24).
fn build_direct(sb: &mut Sandbox, config: Config, role: &str, net: u8) -> Result<Pair> {
    let a = container_ns(sb, &format!("{role}-a"))?;
    let b = container_ns(sb, &format!("{role}-b"))?;
    ip(&a, &["link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", &b])?;
    for (ns, host) in [(&a, 2), (&b, 3)] {
        ip(ns, &["addr", "add", &format!("10.{net}.0.{host}/24"), "dev", "eth0"])?;
        ip(ns, &["link", "set", "eth0", "up"])?;
    }
    Ok(Pair { config, client_ns: a, server_ns: b, server: SocketAddr::from(([10, net, 0, 3], PORT)) })
}

/// IPv6 servers listen on a port of their own (a namespace may serve both families).
pub(crate) const PORT6: u16 = 5202;

/// IPv6 on in `ns` (the base turns it off), without duplicate address detection to wait for.
fn ipv6_on(ns: &str) -> Result<()> {
    sysctl(
        ns,
        &[
            ("net.ipv6.conf.all.disable_ipv6", "0"),
            ("net.ipv6.conf.default.disable_ipv6", "0"),
            ("net.ipv6.conf.lo.disable_ipv6", "0"),
            ("net.ipv6.conf.all.accept_dad", "0"),
            ("net.ipv6.conf.default.accept_dad", "0"),
        ],
    )
}

/// The IPv6 limit: a veth pair straight between two namespaces, fd00:203::2 and ::3.
fn build_direct_v6(sb: &mut Sandbox) -> Result<Pair> {
    let a = container_ns(sb, "direct6-a")?;
    let b = container_ns(sb, "direct6-b")?;
    ipv6_on(&a)?;
    ipv6_on(&b)?;
    ip(&a, &["link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", &b])?;
    for (ns, host) in [(&a, 2), (&b, 3)] {
        ip(ns, &["addr", "add", &format!("fd00:203::{host}/64"), "dev", "eth0", "nodad"])?;
        ip(ns, &["link", "set", "eth0", "up"])?;
    }
    let server = SocketAddr::new("fd00:203::3".parse().unwrap(), PORT6);
    Ok(Pair { config: Config::DirectV6, client_ns: a, server_ns: b, server })
}

const BRIDGE: &str = "br-bench";
const BRIDGE_SUBNET: &str = "10.202.0.0/24";
const BRIDGE_SUBNET6: &str = "fd00:202::/64";

/// The filter and nat rules dockerd 20.10 installs for one user-defined bridge network (as
/// `iptables-save` shows them on a Docker host), in the order it creates them.
fn docker_rules() -> Vec<Vec<&'static str>> {
    let rules: &[&[&str]] = &[
        // filter
        &["-t", "filter", "-N", "DOCKER"],
        &["-t", "filter", "-N", "DOCKER-ISOLATION-STAGE-1"],
        &["-t", "filter", "-N", "DOCKER-ISOLATION-STAGE-2"],
        &["-t", "filter", "-N", "DOCKER-USER"],
        &["-t", "filter", "-P", "FORWARD", "DROP"],
        &["-t", "filter", "-A", "FORWARD", "-j", "DOCKER-USER"],
        &["-t", "filter", "-A", "FORWARD", "-j", "DOCKER-ISOLATION-STAGE-1"],
        &[
            "-t",
            "filter",
            "-A",
            "FORWARD",
            "-o",
            BRIDGE,
            "-m",
            "conntrack",
            "--ctstate",
            "RELATED,ESTABLISHED",
            "-j",
            "ACCEPT",
        ],
        &["-t", "filter", "-A", "FORWARD", "-o", BRIDGE, "-j", "DOCKER"],
        &["-t", "filter", "-A", "FORWARD", "-i", BRIDGE, "!", "-o", BRIDGE, "-j", "ACCEPT"],
        &["-t", "filter", "-A", "FORWARD", "-i", BRIDGE, "-o", BRIDGE, "-j", "ACCEPT"],
        &[
            "-t",
            "filter",
            "-A",
            "DOCKER-ISOLATION-STAGE-1",
            "-i",
            BRIDGE,
            "!",
            "-o",
            BRIDGE,
            "-j",
            "DOCKER-ISOLATION-STAGE-2",
        ],
        &["-t", "filter", "-A", "DOCKER-ISOLATION-STAGE-1", "-j", "RETURN"],
        &["-t", "filter", "-A", "DOCKER-ISOLATION-STAGE-2", "-o", BRIDGE, "-j", "DROP"],
        &["-t", "filter", "-A", "DOCKER-ISOLATION-STAGE-2", "-j", "RETURN"],
        &["-t", "filter", "-A", "DOCKER-USER", "-j", "RETURN"],
        // nat
        &["-t", "nat", "-N", "DOCKER"],
        &["-t", "nat", "-A", "PREROUTING", "-m", "addrtype", "--dst-type", "LOCAL", "-j", "DOCKER"],
        &[
            "-t",
            "nat",
            "-A",
            "OUTPUT",
            "!",
            "-d",
            "127.0.0.0/8",
            "-m",
            "addrtype",
            "--dst-type",
            "LOCAL",
            "-j",
            "DOCKER",
        ],
        &["-t", "nat", "-A", "POSTROUTING", "-s", BRIDGE_SUBNET, "!", "-o", BRIDGE, "-j", "MASQUERADE"],
        &["-t", "nat", "-A", "DOCKER", "-i", BRIDGE, "-j", "RETURN"],
    ];
    rules.iter().map(|r| r.to_vec()).collect()
}

/// The uplink of a host namespace `host` to a new "outside" namespace `role`: host 192.0.2.1/24,
/// outside 192.0.2.2/24, the host's default route through it. The outside has no route to any
/// container subnet. Returns the outside namespace, set up to run clients and servers.
pub(crate) fn uplink_to_outside(sb: &mut Sandbox, host: &str, role: &str) -> Result<String> {
    let ext = container_ns(sb, role)?;
    sb.connect_uplink(host, &ext)?;
    Ok(ext)
}

/// The server behind the uplink, and the published port clients behind it use.
const OUTSIDE_SERVER: [u8; 4] = [192, 0, 2, 2];
pub(crate) const UPLINK: [u8; 4] = [192, 0, 2, 1];
const PUBLISHED_PORT: u16 = 8080;

/// Docker's rules for `-p 8080:5201` (tcp and udp) on the bridge container 10.202.0.3, with
/// `userland-proxy: false`; with `ipv6`, its ip6tables rules for the IPv6 servers' port on
/// fd00:202::3.
fn docker_publish_rules(ipv6: bool) -> Vec<Vec<String>> {
    let (to, dest, port) = if ipv6 { ("[fd00:202::3]", "fd00:202::3/128", PORT6) } else { ("10.202.0.3", "10.202.0.3/32", PORT) };
    let mut rules = vec![];
    for proto in ["tcp", "udp"] {
        let line = format!(
            "-t nat -A DOCKER ! -i {BRIDGE} -p {proto} -m {proto} --dport {PUBLISHED_PORT} -j DNAT --to-destination {to}:{port}"
        );
        rules.push(line.split_whitespace().map(String::from).collect());
        let line = format!("-t filter -A DOCKER -d {dest} ! -i {BRIDGE} -o {BRIDGE} -p {proto} -m {proto} --dport {port} -j ACCEPT");
        rules.push(line.split_whitespace().map(String::from).collect());
    }
    rules
}

/// IPv6 on an uplink made by [`uplink_to_outside`]: host 2001:db8:2::1/64, outside
/// 2001:db8:2::2/64, the host's IPv6 default route through it.
fn uplink_v6(host: &str, ext: &str) -> Result<()> {
    ipv6_on(ext)?;
    ip(host, &["addr", "add", "2001:db8:2::1/64", "dev", "up0", "nodad"])?;
    ip(ext, &["addr", "add", "2001:db8:2::2/64", "dev", "eth0", "nodad"])?;
    ip(host, &["-6", "route", "add", "default", "via", "2001:db8:2::2"])
}

/// The IPv6 NAT rows' server behind the uplink, and the host address their clients reach.
const OUTSIDE_SERVER6: &str = "2001:db8:2::2";
const UPLINK6: &str = "2001:db8:2::1";

/// The IPv6 NAT pairs (out and in) of a host with the uplink `ext` and the server `server_ns`.
fn nat_pairs_v6(out: Config, inward: Config, client_ns: &str, server_ns: &str, ext: &str) -> [Pair; 2] {
    let outside = SocketAddr::new(OUTSIDE_SERVER6.parse().unwrap(), PORT6);
    let published = SocketAddr::new(UPLINK6.parse().unwrap(), PUBLISHED_PORT);
    [
        Pair { config: out, client_ns: client_ns.to_string(), server_ns: ext.to_string(), server: outside },
        Pair { config: inward, client_ns: ext.to_string(), server_ns: server_ns.to_string(), server: published },
    ]
}

/// (b) Docker's default datapath: a bridge in a host namespace with bridged traffic through iptables.
/// With `nat`, also an uplink to an outside namespace and a published port: pairs for
/// masquerade (container to outside) and DNAT (outside to the published port). With `ipv6`,
/// the network dual-stack as `docker network create --ipv6` makes it (ip6tables 20.10's rules
/// too, bridged IPv6 through ip6tables), and an IPv6 pair.
fn build_bridge(sb: &mut Sandbox, nat: bool, ipv6: bool) -> Result<(Vec<Pair>, String)> {
    let host = sb.add_netns("bridge-host")?;
    base_sysctls(&host, true)?;
    // Built into this kernel and per namespace: bridged IPv4 goes through iptables, as on a Docker host.
    sysctl(&host, &[("net.bridge.bridge-nf-call-iptables", "1")])?;
    ip(&host, &["link", "add", BRIDGE, "type", "bridge"])?;
    ip(&host, &["addr", "add", "10.202.0.1/24", "dev", BRIDGE])?;
    ip(&host, &["link", "set", BRIDGE, "up"])?;
    let mut containers = vec![];
    for n in 1..=2u8 {
        let ns = container_ns(sb, &format!("bridge-c{n}"))?;
        let host_end = format!("veth-c{n}");
        ip(&ns, &["link", "add", "eth0", "type", "veth", "peer", "name", &host_end, "netns", &host])?;
        ip(&host, &["link", "set", &host_end, "master", BRIDGE])?;
        ip(&host, &["link", "set", &host_end, "up"])?;
        ip(&ns, &["addr", "add", &format!("10.202.0.{}/24", n + 1), "dev", "eth0"])?;
        ip(&ns, &["link", "set", "eth0", "up"])?;
        ip(&ns, &["route", "add", "default", "via", "10.202.0.1"])?;
        containers.push(ns);
    }
    for rule in docker_rules() {
        let mut args = vec!["netns", "exec", &host, "iptables", "-w"];
        args.extend(rule);
        run_ok("ip", &args)?;
    }
    if ipv6 {
        ipv6_on(&host)?;
        sysctl(&host, &[("net.bridge.bridge-nf-call-ip6tables", "1")])?;
        ip(&host, &["addr", "add", "fd00:202::1/64", "dev", BRIDGE, "nodad"])?;
        for (n, ns) in containers.iter().enumerate() {
            ipv6_on(ns)?;
            ip(ns, &["addr", "add", &format!("fd00:202::{}/64", n + 2), "dev", "eth0", "nodad"])?;
            ip(ns, &["-6", "route", "add", "default", "via", "fd00:202::1"])?;
        }
        for rule in docker_rules() {
            // Docker's ip6tables rules are the IPv4 ones with IPv6 prefixes.
            let rule: Vec<&str> = rule
                .into_iter()
                .map(|a| match a {
                    BRIDGE_SUBNET => BRIDGE_SUBNET6,
                    "127.0.0.0/8" => "::1/128",
                    a => a,
                })
                .collect();
            let mut args = vec!["netns", "exec", &host, "ip6tables", "-w"];
            args.extend(rule);
            run_ok("ip", &args)?;
        }
    }
    let check = run_ok("ip", &["netns", "exec", &host, "sysctl", "-n", "net.bridge.bridge-nf-call-iptables"])?;
    if check.trim() != "1" {
        bail!("bridge-nf-call-iptables is {:?} in {host}", check.trim());
    }
    let server_ns = containers.pop().unwrap();
    let client_ns = containers.pop().unwrap();
    let mut pairs = vec![Pair {
        config: Config::Bridge,
        client_ns: client_ns.clone(),
        server_ns: server_ns.clone(),
        server: SocketAddr::from(([10, 202, 0, 3], PORT)),
    }];
    if ipv6 {
        let server = SocketAddr::new("fd00:202::3".parse().unwrap(), PORT6);
        pairs.push(Pair { config: Config::BridgeV6, client_ns: client_ns.clone(), server_ns: server_ns.clone(), server });
    }
    if nat {
        let ext = uplink_to_outside(sb, &host, "bridge-ext")?;
        for rule in docker_publish_rules(false) {
            let mut args = vec!["netns", "exec", &host, "iptables", "-w"];
            args.extend(rule.iter().map(String::as_str));
            run_ok("ip", &args)?;
        }
        if ipv6 {
            // Docker turns IPv6 forwarding on for its IPv6 networks.
            uplink_v6(&host, &ext)?;
            sysctl(&host, &[("net.ipv6.conf.all.forwarding", "1")])?;
            for rule in docker_publish_rules(true) {
                let mut args = vec!["netns", "exec", &host, "ip6tables", "-w"];
                args.extend(rule.iter().map(String::as_str));
                run_ok("ip", &args)?;
            }
            pairs.extend(nat_pairs_v6(Config::BridgeOutV6, Config::BridgeInV6, &client_ns, &server_ns, &ext));
        }
        pairs.push(Pair {
            config: Config::BridgeOut,
            client_ns,
            server_ns: ext.clone(),
            server: SocketAddr::from((OUTSIDE_SERVER, PORT)),
        });
        pairs.push(Pair { config: Config::BridgeIn, client_ns: ext, server_ns, server: SocketAddr::from((UPLINK, PUBLISHED_PORT)) });
    }
    Ok((pairs, host))
}

/// (d) The NAT paths' reference: a container behind a host namespace that forwards as a plain
/// router (no bridge, no iptables rule, so no netfilter hook registered in it, no NAT), its
/// uplink to an outside namespace that has a route back to the container's subnet. What is left
/// between a NAT row and this one is the cost of translating, not of the two hops.
fn build_routed(sb: &mut Sandbox) -> Result<Vec<Pair>> {
    let host = sb.add_netns("routed-host")?;
    base_sysctls(&host, true)?;
    let container = container_ns(sb, "routed-c")?;
    ip(&container, &["link", "add", "eth0", "type", "veth", "peer", "name", "veth-c", "netns", &host])?;
    ip(&host, &["addr", "add", "10.205.0.1/24", "dev", "veth-c"])?;
    ip(&host, &["link", "set", "veth-c", "up"])?;
    ip(&container, &["addr", "add", "10.205.0.2/24", "dev", "eth0"])?;
    ip(&container, &["link", "set", "eth0", "up"])?;
    ip(&container, &["route", "add", "default", "via", "10.205.0.1"])?;
    let ext = uplink_to_outside(sb, &host, "routed-ext")?;
    ip(&ext, &["route", "add", "10.205.0.0/24", "via", "192.0.2.1"])?;
    Ok(vec![
        Pair { config: Config::RoutedOut, client_ns: container.clone(), server_ns: ext.clone(), server: SocketAddr::from((OUTSIDE_SERVER, PORT)) },
        Pair { config: Config::RoutedIn, client_ns: ext, server_ns: container, server: SocketAddr::from(([10, 205, 0, 2], PORT)) },
    ])
}

/// (c) bpfnet: the daemon in the sandbox's host namespace, one network, two containers; with
/// `nat`, an uplink to an outside namespace and `-p 8080:5201` (tcp and udp) on the server;
/// with `ipv6`, the network dual-stack and an IPv6 pair.
fn build_bpfnet(sb: &mut Sandbox, nat: bool, ipv6: bool) -> Result<Vec<Pair>> {
    let host = sb.host();
    base_sysctls(&host, true)?;
    if ipv6 {
        // The IPv6 gateway goes on lo.
        ipv6_on(&host)?;
    }
    // The uplink before the daemon starts: it takes the default route's interface (and its
    // IPv6 address for NAT66).
    let ext = if nat { Some(uplink_to_outside(sb, &host, "bpfnet-ext")?) } else { None };
    if let (Some(ext), true) = (&ext, ipv6) {
        uplink_v6(&host, ext)?;
    }
    sb.start_daemon()?;
    let c1 = container_ns(sb, "bpfnet-c1")?;
    let c2 = container_ns(sb, "bpfnet-c2")?;
    let mut create = vec!["network", "create", "bench", "--subnet", "10.201.0.0/24"];
    if ipv6 {
        create.extend(["--subnet", "fd00:201::/64"]);
    }
    sb.bpfnet_ok(&create)?;
    sb.bpfnet_ok(&["network", "connect", "bench", &c1, "--ip", "10.201.0.2"])?;
    // Each family's servers have their own port: IPv4's on 0.0.0.0, IPv6's on [::].
    let mut publish = vec![format!("0.0.0.0:{PUBLISHED_PORT}:{PORT}"), format!("0.0.0.0:{PUBLISHED_PORT}:{PORT}/udp")];
    if ipv6 {
        publish.extend([format!("[::]:{PUBLISHED_PORT}:{PORT6}"), format!("[::]:{PUBLISHED_PORT}:{PORT6}/udp")]);
    }
    let mut args = vec!["network", "connect", "bench", c2.as_str(), "--ip", "10.201.0.3"];
    if ipv6 {
        args.extend(["--ip6", "fd00:201::3"]);
    }
    if nat {
        for p in &publish {
            args.extend(["-p", p.as_str()]);
        }
    }
    sb.bpfnet_ok(&args)?;
    let mut pairs = vec![Pair {
        config: Config::Bpfnet,
        client_ns: c1.clone(),
        server_ns: c2.clone(),
        server: SocketAddr::from(([10, 201, 0, 3], PORT)),
    }];
    if ipv6 {
        let server = SocketAddr::new("fd00:201::3".parse().unwrap(), PORT6);
        pairs.push(Pair { config: Config::BpfnetV6, client_ns: c1.clone(), server_ns: c2.clone(), server });
    }
    if let Some(ext) = ext {
        if ipv6 {
            pairs.extend(nat_pairs_v6(Config::BpfnetOutV6, Config::BpfnetInV6, &c1, &c2, &ext));
        }
        pairs.push(Pair { config: Config::BpfnetOut, client_ns: c1, server_ns: ext.clone(), server: SocketAddr::from((OUTSIDE_SERVER, PORT)) });
        pairs.push(Pair { config: Config::BpfnetIn, client_ns: ext, server_ns: c2, server: SocketAddr::from((UPLINK, PUBLISHED_PORT)) });
    }
    Ok(pairs)
}

fn wait_for_ping(sb: &Sandbox, pair: &Pair) -> Result<()> {
    let to = pair.server.ip().to_string();
    for _ in 0..10 {
        if sb.ping(&pair.client_ns, &to)? {
            return Ok(());
        }
    }
    bail!("{}: {} cannot ping {to}", pair.config.name(), pair.client_ns)
}

// ---- processes ----

/// A benchmark server (`bpfnet-lab net serve`) pinned to the CPU; killed by PID when dropped.
pub struct Server {
    child: Child,
    /// Kept open: the server writes nothing more, but must not get SIGPIPE.
    stdout: BufReader<ChildStdout>,
}

impl Server {
    /// `ipv6`: the server listens on IPv6 instead of IPv4.
    pub(crate) fn start(lab: &Path, ns: &str, cpu: usize, port: u16, ipv6: bool) -> Result<Server> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, "taskset", "-c", &cpu.to_string()])
            .arg(lab)
            .args(["net", "serve", "--port", &port.to_string()])
            .args(ipv6.then_some("--ipv6"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the benchmark server")?;
        let stdout = BufReader::new(child.stdout.take().unwrap());
        // Owned by the guard from here on, so an error below still kills the process.
        let mut server = Server { child, stdout };
        // `ip netns exec` and `taskset` exec the server: the child's PID is the server's. It prints
        // "listening" once its socket is bound; EOF means it died.
        let mut line = String::new();
        server.stdout.read_line(&mut line)?;
        if line.trim() != "listening" {
            bail!("benchmark server in {ns} did not start (said {line:?})");
        }
        Ok(server)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: signalling our own child by PID.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// Runs one client (`bpfnet-lab net client`) pinned to the CPU inside `ns`; returns its rate.
pub(crate) fn client(lab: &Path, ns: &str, cpu: usize, to: SocketAddr, mode: Mode, seconds: f64) -> Result<f64> {
    let child = Command::new("ip")
        .args(["netns", "exec", ns, "taskset", "-c", &cpu.to_string()])
        .arg(lab)
        .args([
            "net",
            "client",
            "--to",
            &to.to_string(),
            "--mode",
            &mode_cli_name(mode),
            "--seconds",
            &seconds.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting the benchmark client")?;
    let pid = child.id() as i32;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(Duration::from_secs_f64(seconds + 30.0)) {
        Ok(out) => out?,
        Err(_) => {
            // SAFETY: signalling our own child by PID; the thread above reaps it.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let _ = rx.recv();
            bail!("benchmark client in {ns} to {to} ({mode:?}) did not finish in {} s", seconds + 30.0);
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("benchmark client in {ns} to {to} ({mode:?}) failed: {}{stdout}", String::from_utf8_lossy(&out.stderr));
    }
    stdout.trim().parse::<f64>().with_context(|| format!("benchmark client printed {stdout:?}"))
}

pub(crate) fn flush_conntrack(ns: &str) {
    // Fails (harmlessly) when the table is empty.
    let _ = sandbox::run("ip", &["netns", "exec", ns, "conntrack", "-F"]);
}

// ---- facts ----

pub fn lab_binary() -> PathBuf {
    let built = sandbox::repo_root().join("target/release/bpfnet-lab");
    if built.exists() {
        built
    } else {
        std::env::current_exe().unwrap_or(built)
    }
}

pub fn machine() -> Machine {
    let text = |program: &str, args: &[&str]| {
        sandbox::run(program, args).map(|r| r.stdout.trim().to_string()).unwrap_or_default()
    };
    let nproc = text("nproc", &["--all"])
        .parse()
        .unwrap_or_else(|_| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    Machine { nproc, kernel: text("uname", &["-r"]), cpu_model, iptables: text("iptables", &["-V"]) }
}

pub(crate) fn shell_quote(arg: &str) -> String {
    if !arg.is_empty() && arg.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=,:+@".contains(c)) {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

/// The command line of this run; a canonical `bench` command when the caller is not `bench` (the demo).
fn command_line(opts: &Options) -> String {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("bench") {
        let root = sandbox::repo_root();
        let program = Path::new(&args[0]);
        let program = program.strip_prefix(&root).unwrap_or(program).display().to_string();
        std::iter::once(program).chain(args[1..].iter().cloned()).map(|a| shell_quote(&a)).collect::<Vec<_>>().join(" ")
    } else {
        let modes: Vec<String> = opts.run.modes.iter().map(|m| mode_cli_name(*m)).collect();
        format!(
            "target/release/bpfnet-lab bench --seconds {} --reps {} --warmup {} --slice {} --modes {}{}",
            opts.run.seconds,
            opts.run.reps,
            opts.run.warmup,
            opts.run.slice,
            modes.join(","),
            if opts.run.control { " --control" } else { "" }
        )
    }
}

pub(crate) fn date_utc() -> String {
    sandbox::run("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).map(|r| r.stdout.trim().to_string()).unwrap_or_default()
}

/// Packets counted by the `DOCKER-USER` chain (every packet the bridge passed through FORWARD).
fn docker_user_packets(host: &str) -> Option<u64> {
    let out =
        run_ok("ip", &["netns", "exec", host, "iptables", "-w", "-t", "filter", "-L", "DOCKER-USER", "-n", "-v", "-x"])
            .ok()?;
    out.lines().find(|l| l.contains("RETURN"))?.split_whitespace().next()?.parse().ok()
}

/// bpfnet's datapath counters: (redirected, dropped).
fn bpfnet_counters(sb: &Sandbox) -> Option<(u64, u64)> {
    let json: serde_json::Value = serde_json::from_str(&sb.bpfnet_ok(&["stats", "--json"]).ok()?).ok()?;
    let mut redirected = 0;
    let mut dropped = 0;
    for c in json.get("counters")?.as_array()? {
        let packets = c.get("packets")?.as_u64()?;
        if c.get("drop")?.as_bool()? {
            dropped += packets;
        } else if c.get("name")?.as_str()? == "redirected" {
            redirected += packets;
        }
    }
    Some((redirected, dropped))
}

#[derive(Default)]
struct NatCounters {
    masquerade: u64,
    dnat: u64,
    bpfnet_out: u64,
    bpfnet_in: u64,
}

/// Packets through the bridge host's MASQUERADE and DNAT rules, and bpfnet's NAT counters.
fn nat_counters(sb: &Sandbox, bridge_host: &str) -> NatCounters {
    let mut c = NatCounters::default();
    if let Ok(out) = run_ok("ip", &["netns", "exec", bridge_host, "iptables", "-w", "-t", "nat", "-L", "-n", "-v", "-x"]) {
        for line in out.lines() {
            let packets: u64 = line.split_whitespace().next().and_then(|p| p.parse().ok()).unwrap_or(0);
            if line.contains("MASQUERADE") {
                c.masquerade += packets;
            } else if line.contains("DNAT") {
                c.dnat += packets;
            }
        }
    }
    if let Some(json) = sb.bpfnet_ok(&["stats", "--json"]).ok().and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok()) {
        for counter in json["counters"].as_array().into_iter().flatten() {
            let packets = counter["packets"].as_u64().unwrap_or(0);
            match counter["name"].as_str() {
                Some("nat_out") => c.bpfnet_out += packets,
                Some("nat_in" | "xdp_nat_in") => c.bpfnet_in += packets,
                _ => {}
            }
        }
    }
    c
}

/// The memory of bpfnet's pinned maps, as the kernel charges it (bpftool's `bytes_memlock`).
fn bpfnet_map_memory(sb: &Sandbox) -> Option<String> {
    let dir = std::fs::read_dir(sb.bpffs()).ok()?.flatten().map(|e| e.path()).find(|p| {
        p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("maps-v"))
    })?;
    let mut total = 0u64;
    let mut parts = vec![];
    let mut pins: Vec<PathBuf> = std::fs::read_dir(&dir).ok()?.flatten().map(|e| e.path()).collect();
    pins.sort();
    for pin in pins {
        let out = run_ok("bpftool", &["-j", "map", "show", "pinned", pin.to_str()?]).ok()?;
        let info: serde_json::Value = serde_json::from_str(&out).ok()?;
        let bytes = info["bytes_memlock"].as_u64().unwrap_or(0);
        total += bytes;
        parts.push(format!(
            "{} {:.1} MiB ({} entries)",
            pin.file_name()?.to_string_lossy(),
            bytes as f64 / (1 << 20) as f64,
            info["max_entries"].as_u64().unwrap_or(0)
        ));
    }
    Some(format!("bpfnet map memory: {:.1} MiB in all: {}", total as f64 / (1 << 20) as f64, parts.join(", ")))
}

// ---- the run ----

/// Builds the three configurations, measures them and returns the report; prints progress on
/// stderr and the table (or, with `json`, the JSON report) on stdout.
// `rates` is indexed [mode][config][rep] while rep, mode and config are iterated in other orders.
#[allow(clippy::needless_range_loop)]
pub fn run(opts: &Options) -> Result<Report> {
    if opts.run.reps == 0 || opts.run.modes.is_empty() || opts.run.seconds.is_nan() || opts.run.seconds <= 0.0 {
        bail!("nothing to measure: need --reps >= 1, --seconds > 0 and at least one mode");
    }
    let lab = lab_binary();
    if !lab.exists() {
        bail!("{} not found: run `cargo xtask build`", lab.display());
    }
    let machine = machine();
    let cpu = if machine.nproc > 1 { 1 } else { 0 };

    let (slices, slice_seconds) = opts.run.slices();

    // Declared before the servers, so the servers (dropped first) are killed before the namespaces go.
    let mut sb = Sandbox::new("bench")?;
    eprintln!("bench: building the configurations in namespaces {}-*", sb.name);
    let nat = !opts.c2c_only;
    let ipv6 = !opts.skip_ipv6;
    let mut pairs = vec![build_direct(&mut sb, Config::Direct, "direct", 203)?];
    if ipv6 {
        pairs.push(build_direct_v6(&mut sb)?);
    }
    let (bridge, bridge_host) = build_bridge(&mut sb, nat, ipv6)?;
    pairs.extend(bridge);
    pairs.extend(build_bpfnet(&mut sb, nat, ipv6)?);
    if nat {
        pairs.extend(build_routed(&mut sb)?);
    }
    if opts.run.control {
        pairs.push(build_direct(&mut sb, Config::Control, "control", 204)?);
    }
    // Table order; direct first (every ratio is to it).
    pairs.sort_by_key(|p| p.config);
    for pair in &pairs {
        wait_for_ping(&sb, pair)?;
    }
    let mut servers = vec![];
    let mut serving: Vec<(&str, bool)> = vec![];
    for pair in &pairs {
        let key = (pair.server_ns.as_str(), pair.server.is_ipv6());
        if !serving.contains(&key) {
            servers.push(Server::start(&lab, &pair.server_ns, cpu, pair.server.port(), key.1)?);
            serving.push(key);
        }
    }
    let nat_before = nat_counters(&sb, &bridge_host);
    let bridge_packets_before = docker_user_packets(&bridge_host).unwrap_or(0);
    let bpfnet_before = bpfnet_counters(&sb).unwrap_or((0, 0));

    // One piece of traffic; conntrack of the bridge's host is flushed before every one, so no
    // configuration ever pays for another's entries (TCP_CRR leaves thousands in TIME_WAIT).
    // bpfnet's own table is flushed likewise before each of its NAT measurements.
    let measure = |pair: &Pair, mode: Mode, seconds: f64, what: &str| {
        if !pair.config.measures(mode) {
            return Ok(f64::NAN);
        }
        flush_conntrack(&bridge_host);
        if matches!(pair.config, Config::BpfnetOut | Config::BpfnetIn | Config::BpfnetOutV6 | Config::BpfnetInV6) {
            sb.bpfnet_ok(&["conntrack", "flush"])?;
        }
        client(&lab, &pair.client_ns, cpu, pair.server, mode, seconds)
            .with_context(|| format!("{what} of {} on {}", mode_title(mode), pair.config.name()))
    };

    // rates[mode][config][rep]
    let n = pairs.len();
    let mut rates = vec![vec![vec![f64::NAN; opts.run.reps]; n]; opts.run.modes.len()];
    for rep in 0..opts.run.reps {
        // The order of configurations rotates with the repetition and, within it, with every round
        // of slices, so no configuration always runs first or after the same neighbour.
        let order = |round: usize| -> Vec<usize> {
            let mut o: Vec<usize> = (0..n).collect();
            o.rotate_left((rep + round) % n);
            o
        };
        for (m, &mode) in opts.run.modes.iter().enumerate() {
            if opts.run.warmup > 0.0 {
                for c in order(0) {
                    measure(&pairs[c], mode, opts.run.warmup, "warm-up")?;
                }
            }
            let mut sums = vec![0.0; n];
            for round in 0..slices {
                for c in order(round) {
                    sums[c] += measure(&pairs[c], mode, slice_seconds, "measurement")?;
                }
            }
            for c in order(0) {
                if !pairs[c].config.measures(mode) {
                    continue;
                }
                // Slices are equally long: the rate over the whole measurement is their mean.
                let rate = sums[c] / slices as f64;
                rates[m][c][rep] = rate;
                eprintln!(
                    "bench: rep {}/{} {:<10} {:<26} {:>10} {}",
                    rep + 1,
                    opts.run.reps,
                    mode_title(mode),
                    pairs[c].config.name(),
                    format_rate(&mode_cli_name(mode), rate),
                    mode_unit(mode)
                );
            }
        }
    }
    flush_conntrack(&bridge_host);

    let mut checks = vec![];
    if let Some(after) = docker_user_packets(&bridge_host) {
        checks.push(format!(
            "bridge+iptables: {} packets went through Docker's FORWARD chains (DOCKER-USER counter) during the run",
            after.saturating_sub(bridge_packets_before)
        ));
    }
    if let Some((redirected, dropped)) = bpfnet_counters(&sb) {
        checks.push(format!(
            "bpfnet: {} packets redirected container to container by the datapath, {} dropped, during the run",
            redirected.saturating_sub(bpfnet_before.0),
            dropped.saturating_sub(bpfnet_before.1)
        ));
    }
    if nat {
        let after = nat_counters(&sb, &bridge_host);
        checks.push(format!(
            "bridge+iptables NAT: {} packets matched MASQUERADE, {} DNAT (nat table counters; only a connection's first \
             packet passes the nat table)",
            after.masquerade.saturating_sub(nat_before.masquerade),
            after.dnat.saturating_sub(nat_before.dnat)
        ));
        checks.push(format!(
            "bpfnet NAT: {} packets translated out of the uplink, {} translated into containers, during the run",
            after.bpfnet_out.saturating_sub(nat_before.bpfnet_out),
            after.bpfnet_in.saturating_sub(nat_before.bpfnet_in)
        ));
    }
    if let Some(memory) = bpfnet_map_memory(&sb) {
        checks.push(memory);
    }
    drop(servers);
    drop(sb);

    let results = opts
        .run.modes
        .iter()
        .enumerate()
        .map(|(m, &mode)| {
            // Each configuration's ratio is to the direct pair of its address family.
            let reference = |config: Config| {
                let r = pairs.iter().position(|p| p.config == config.reference()).unwrap_or(0);
                rates[m][r].clone()
            };
            ModeResult {
                mode: mode_cli_name(mode),
                title: mode_title(mode).into(),
                unit: match mode {
                    Mode::Stream => "bit/s".into(),
                    _ => mode_unit(mode).into(),
                },
                configs: pairs
                    .iter()
                    .enumerate()
                    .map(|(c, pair)| ConfigResult::new(pair.config.name(), rates[m][c].clone(), &reference(pair.config)))
                    .collect(),
            }
        })
        .collect();

    let report = Report {
        date: date_utc(),
        command: command_line(opts),
        machine,
        seconds: opts.run.seconds,
        warmup_seconds: opts.run.warmup,
        slices,
        reps: opts.run.reps,
        cpu,
        configs: pairs
            .iter()
            .map(|p| ConfigInfo { name: p.config.name().into(), description: p.config.describe().into() })
            .collect(),
        results,
        checks,
    };

    if opts.json && !opts.quiet {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if !opts.quiet {
        print!("{}", report.markdown());
    }
    if let Some(path) = &opts.markdown_out {
        write_markdown(path, "bench-results", "bpfnet-lab bench --markdown-out", &report.markdown_section())?;
        eprintln!("bench: results written to {}", path.display());
    }
    if !opts.c2c_only && !opts.skip_cross_node && !opts.quiet {
        let cross = crate::clusterbench::Options {
            run: opts.run.clone(),
            connects: 100,
            endpoints: 1000,
            services: 1000,
            markdown_out: opts.markdown_out.clone(),
        };
        let cross = crate::clusterbench::run(&cross)?;
        if !opts.json {
            print!("\n## Cross-node\n\n{}", cross.markdown());
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        let direct = [100_000.0, 110_000.0, 90_000.0];
        let rr = ModeResult {
            mode: "rr".into(),
            title: "TCP_RR".into(),
            unit: "tr/s".into(),
            configs: vec![
                ConfigResult::new("direct", direct.to_vec(), &direct),
                ConfigResult::new("bpfnet", vec![97_000.0, 104_500.0, 90_000.0], &direct),
            ],
        };
        Report {
            date: "2000-01-01 00:00 UTC".into(),
            command: "bpfnet-lab bench".into(),
            machine: Machine { nproc: 2, kernel: "6.18".into(), cpu_model: "cpu".into(), iptables: "iptables".into() },
            seconds: 5.0,
            warmup_seconds: 1.0,
            slices: 10,
            reps: 3,
            cpu: 1,
            configs: ["direct", "bpfnet"]
                .iter()
                .map(|n| ConfigInfo { name: n.to_string(), description: String::new() })
                .collect(),
            results: vec![rr],
            checks: vec![],
        }
    }

    #[test]
    fn medians_and_ratios() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        let r = report();
        let bpfnet = &r.results[0].configs[1];
        assert_eq!(bpfnet.ratios, vec![0.97, 0.95, 1.0]);
        assert_eq!((bpfnet.median_ratio, bpfnet.min_ratio, bpfnet.max_ratio), (0.97, 0.95, 1.0));
        assert_eq!(bpfnet.median_rate, 97_000.0);
    }

    #[test]
    fn table_cells() {
        let table = report().markdown_table();
        assert!(table.contains("TCP_RR tr/s (x direct)"), "{table}");
        assert!(table.contains("| direct | 100.0k (1.00x)"), "{table}");
        assert!(table.contains("97.0k (0.97x, 0.95-1.00)"), "{table}");
        assert_eq!(format_rate("stream", 9.41e9), "9.41");
    }

    #[test]
    fn nat_rows_against_the_routed_reference() {
        let mut r = report();
        assert_eq!(r.markdown_vs_routed(), None, "no routed reference, no table");
        let direct = [100_000.0, 110_000.0, 90_000.0];
        let routed = [80_000.0, 80_000.0, 80_000.0];
        r.results[0].configs.push(ConfigResult::new(Config::RoutedOut.name(), routed.to_vec(), &direct));
        r.results[0].configs.push(ConfigResult::new(Config::BpfnetOut.name(), vec![84_000.0, 80_000.0, 76_000.0], &direct));
        let table = r.markdown_vs_routed().unwrap();
        assert!(table.contains("TCP_RR (x routed)"), "{table}");
        let row = |name: &str| table.lines().find(|l| l.starts_with(&format!("| {name} "))).unwrap_or_default().to_string();
        assert!(row(Config::BpfnetOut.name()).ends_with("| 1.00x (0.95-1.05) |"), "{table}");
        // A row whose configuration was not measured says so.
        assert!(row(Config::BridgeIn.name()).ends_with("| -                 |"), "{table}");
    }

    #[test]
    fn markdown_out_replaces_only_its_section() {
        let dir = std::env::temp_dir().join(format!("bpfnetlab-bench-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("B.md");
        std::fs::write(&path, "# Title\n\nprose\n").unwrap();
        write_markdown(&path, "bench-results", "bpfnet-lab bench --markdown-out", "first\n").unwrap();
        write_markdown(&path, "bench-results", "bpfnet-lab bench --markdown-out", "second\n").unwrap();
        std::fs::write(&path, std::fs::read_to_string(&path).unwrap() + "\nafter\n").unwrap();
        write_markdown(&path, "bench-results", "bpfnet-lab bench --markdown-out", "third\n").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(text.starts_with("# Title\n\nprose\n\n<!-- bench-results:begin"), "{text}");
        assert!(text.contains("third\n<!-- bench-results:end -->\n"), "{text}");
        assert!(!text.contains("first") && !text.contains("second"), "{text}");
        assert!(text.ends_with("after\n"), "{text}");
    }
}
