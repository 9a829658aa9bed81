//! A private world for one test, demo or benchmark run.
//!
//! Every namespace is named `bpfnetlab-<run>-<role>` and every file lives under
//! `/tmp/bpfnetlab/<run>`, so `sweep()` can remove what an interrupted run left behind. Nothing is
//! created in the machine's own namespace: links are made inside the sandbox's namespaces.
use std::{
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

/// Prefix of every namespace, process argument and directory a sandbox creates.
pub const PREFIX: &str = "bpfnetlab";
pub const WORK_DIR: &str = "/tmp/bpfnetlab";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Repository root (this crate lives in `<root>/tests`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The `bpfnet` binary under test (built by `cargo xtask build`).
pub fn bpfnet_bin() -> PathBuf {
    std::env::var_os("BPFNET_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/release/bpfnet"))
}

/// How a test wants the daemon started.
#[derive(Default)]
pub struct DaemonOptions<'a> {
    /// Extra environment (test hooks such as BPFNET_TEST_CRASH_AFTER).
    pub env: &'a [(&'a str, &'a str)],
    /// Extra daemon arguments.
    pub args: &'a [&'a str],
    /// Soft limit on open files, as a service manager might set it (systemd: 1024).
    pub nofile_soft: Option<u64>,
    /// Stderr is a pipe whose reader has gone (`bpfnet daemon 2>&1 | head -1`).
    pub stderr_closed: bool,
}

/// Runs `cmd` to its end, killing it after `limit`; a killed run is `ok: false` with a note.
pub fn run_with_limit(mut cmd: Command, limit: Duration) -> Result<Ran> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {cmd:?}"))?;
    let deadline = Instant::now() + limit;
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            child.kill().ok();
            let out: Ran = child.wait_with_output()?.into();
            return Ok(Ran { ok: false, stderr: format!("(killed after {limit:?}) {}", out.stderr), ..out });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(child.wait_with_output()?.into())
}

/// The namespaces behind the uplink (see [`Sandbox::add_outside`]).
pub struct Outside {
    /// The router right behind the uplink.
    pub ext: String,
    /// A server one small-MTU hop further.
    pub far: String,
}

/// The uplink's address: what masqueraded traffic carries as its source.
pub const UPLINK_IP: &str = "192.0.2.1";
/// The server behind the outside router.
pub const FAR_IP: &str = "198.51.100.7";
/// The same over IPv6 (see [`Sandbox::add_ipv6_outside`]).
pub const UPLINK_IP6: &str = "2001:db8:2::1";
pub const FAR_IP6: &str = "2001:db8:100::7";

pub struct Sandbox {
    /// Unique run name: `bpfnetlab-<tag>-<pid>-<n>`.
    pub name: String,
    pub dir: PathBuf,
    namespaces: Vec<String>,
    daemon: Option<Child>,
}

/// Output of a command, with stdout/stderr as text.
#[derive(Debug)]
pub struct Ran {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Ran {
    fn from(o: Output) -> Self {
        Ran {
            ok: o.status.success(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

pub fn run(program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Result<Ran> {
    let program = program.as_ref();
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {program:?}"))?;
    Ok(out.into())
}

/// Runs a command that must succeed, returning its stdout.
pub fn run_ok(program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Result<String> {
    let program = program.as_ref();
    let r = run(program, args)?;
    if !r.ok {
        bail!("{program:?} {args:?} failed: {}{}", r.stderr, r.stdout);
    }
    Ok(r.stdout)
}

impl Sandbox {
    /// A new sandbox with its "host" namespace (where the daemon runs) already created.
    pub fn new(tag: &str) -> Result<Self> {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let name = format!("{PREFIX}-{tag}-{}-{n}", std::process::id());
        let dir = Path::new(WORK_DIR).join(&name);
        std::fs::create_dir_all(&dir)?;
        let mut sb = Sandbox { name, dir, namespaces: vec![], daemon: None };
        sb.add_netns("host")?;
        Ok(sb)
    }

    /// Full name of the namespace with role `role`.
    pub fn ns(&self, role: &str) -> String {
        format!("{}-{role}", self.name)
    }

    pub fn host(&self) -> String {
        self.ns("host")
    }

    /// Creates namespace `role` with loopback up; returns its full name.
    pub fn add_netns(&mut self, role: &str) -> Result<String> {
        let ns = self.ns(role);
        run_ok("ip", &["netns", "add", &ns])?;
        self.namespaces.push(ns.clone());
        run_ok("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn delete_netns(&mut self, role: &str) -> Result<()> {
        let ns = self.ns(role);
        run_ok("ip", &["netns", "del", &ns])?;
        self.namespaces.retain(|n| n != &ns);
        Ok(())
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("bpfnet.sock")
    }
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }
    pub fn bpffs(&self) -> PathBuf {
        self.dir.join("bpffs")
    }
    pub fn daemon_log(&self) -> PathBuf {
        self.dir.join("daemon.log")
    }

    /// `bpfnet daemon` in the host namespace with this sandbox's private paths.
    fn daemon_command(&self) -> Command {
        let mut cmd = Command::new(bpfnet_bin());
        cmd.args(["daemon", "--netns", &self.host()])
            .arg("--state-dir")
            .arg(self.state_dir())
            .arg("--bpffs")
            .arg(self.bpffs())
            .arg("--socket")
            .arg(self.socket())
            // Names the embedded DNS does not know go to the sandbox's own outside (the server
            // namespace, when there is one), never to the machine's resolver.
            .arg("--dns-upstream")
            .arg(format!("{FAR_IP}:53"));
        cmd
    }

    /// Starts `bpfnet daemon` inside the host namespace and waits until its API answers.
    pub fn start_daemon(&mut self) -> Result<()> {
        self.start_daemon_with(&DaemonOptions::default())
    }

    /// Like `start_daemon`, with extra environment (test hooks such as BPFNET_TEST_CRASH_AFTER).
    pub fn start_daemon_with_env(&mut self, env: &[(&str, &str)]) -> Result<()> {
        self.start_daemon_with(&DaemonOptions { env, ..Default::default() })
    }

    /// Starts the daemon with `options` and waits until its API answers.
    pub fn start_daemon_with(&mut self, options: &DaemonOptions) -> Result<()> {
        if self.daemon.is_some() {
            bail!("daemon already running");
        }
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.daemon_log())?;
        let mut cmd = self.daemon_command();
        cmd.args(options.args).envs(options.env.iter().copied()).stdin(Stdio::null()).stdout(log.try_clone()?);
        if options.stderr_closed {
            cmd.stderr(Stdio::piped());
        } else {
            cmd.stderr(log);
        }
        if let Some(soft) = options.nofile_soft {
            // SAFETY: only async-signal-safe calls between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    let mut lim: libc::rlimit = std::mem::zeroed();
                    libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
                    lim.rlim_cur = soft.min(lim.rlim_max);
                    libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().context("starting bpfnet daemon")?;
        // The reader goes away at once: every line the daemon logs meets a closed pipe.
        drop(child.stderr.take());
        self.daemon = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.bpfnet(&["network", "ls"])?.ok {
                return Ok(());
            }
            if let Some(status) = self.daemon.as_mut().unwrap().try_wait()? {
                self.daemon = None;
                bail!("daemon exited with {status}: {}", std::fs::read_to_string(self.daemon_log()).unwrap_or_default());
            }
            if Instant::now() > deadline {
                bail!("daemon did not answer within 20 s: {}", std::fs::read_to_string(self.daemon_log()).unwrap_or_default());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// PID of the running daemon.
    pub fn daemon_pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(|c| c.id())
    }

    /// Whether the daemon this sandbox started is still running.
    pub fn daemon_alive(&mut self) -> bool {
        self.daemon.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Runs another `bpfnet daemon` in the host namespace with exactly `args` after `--netns`,
    /// expecting it to exit by itself (a refused start); it is killed after `limit`.
    pub fn run_daemon_to_exit(&self, args: &[&std::ffi::OsStr], limit: Duration) -> Result<Ran> {
        let mut cmd = Command::new(bpfnet_bin());
        cmd.args(["daemon", "--netns", &self.host()]).args(args);
        run_with_limit(cmd, limit)
    }

    /// Runs the CLI against this sandbox's daemon, killing it after `limit`
    /// (a call that hangs is reported as a failure, not waited for).
    pub fn bpfnet_within(&self, args: &[&str], limit: Duration) -> Result<Ran> {
        let mut cmd = Command::new(bpfnet_bin());
        cmd.arg("--socket").arg(self.socket()).args(args);
        run_with_limit(cmd, limit)
    }

    /// Waits for a daemon that is expected to exit by itself (a test hook crashed it).
    pub fn wait_daemon_exit(&mut self) -> Result<std::process::ExitStatus> {
        let mut child = self.daemon.take().context("no daemon running")?;
        Ok(child.wait()?)
    }

    /// Stops the daemon with SIGTERM (or SIGKILL, as a crash) and waits for it.
    pub fn stop_daemon(&mut self, signal: i32) -> Result<()> {
        if let Some(mut child) = self.daemon.take() {
            // SAFETY: signalling our own child by PID.
            unsafe { libc::kill(child.id() as i32, signal) };
            let status = child.wait()?;
            if signal == libc::SIGTERM && !status.success() {
                bail!("daemon exited with {status} on SIGTERM: {}", std::fs::read_to_string(self.daemon_log()).unwrap_or_default());
            }
        }
        Ok(())
    }

    /// `bpfnet daemon --cleanup` for this sandbox (the daemon must be stopped).
    pub fn daemon_cleanup(&self) -> Result<Ran> {
        Ok(self.daemon_command().arg("--cleanup").stdin(Stdio::null()).output()?.into())
    }

    /// Runs the CLI against this sandbox's daemon.
    pub fn bpfnet(&self, args: &[&str]) -> Result<Ran> {
        let out = Command::new(bpfnet_bin())
            .arg("--socket")
            .arg(self.socket())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("running bpfnet")?;
        Ok(out.into())
    }

    /// Runs the CLI and requires success; returns stdout.
    pub fn bpfnet_ok(&self, args: &[&str]) -> Result<String> {
        let r = self.bpfnet(args)?;
        if !r.ok {
            bail!("bpfnet {args:?} failed: {}", r.stderr);
        }
        Ok(r.stdout)
    }

    /// `ip netns exec NS ARGS...`
    pub fn exec(&self, ns: &str, args: &[&str]) -> Result<Ran> {
        let mut all = vec!["netns", "exec", ns];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// The outside world behind an uplink (call before starting the daemon, which takes the
    /// default route's interface as its uplink):
    /// ```text
    /// host up0 192.0.2.1/24 ── ext eth0 192.0.2.2/24 (a router)
    ///                           ext eth1 198.51.100.1/24 ── far eth0 198.51.100.7/24 (a server)
    /// ```
    /// The host's default route goes via 192.0.2.2. Neither outside namespace has a route to any
    /// container subnet: only masqueraded traffic can be answered. ext reaches far through a route
    /// whose MTU is locked at 1280, the "small hop" path-MTU discovery must learn about.
    pub fn add_outside(&mut self) -> Result<Outside> {
        let host = self.host();
        let ext = self.add_netns("ext")?;
        self.connect_uplink(&host, &ext)?;
        let far = self.add_netns("far")?;
        run_ok("ip", &["-n", &ext, "link", "add", "eth1", "type", "veth", "peer", "name", "eth0", "netns", &far])?;
        for (ns, dev, addr) in [(&ext, "eth1", "198.51.100.1/24"), (&far, "eth0", "198.51.100.7/24")] {
            run_ok("ip", &["-n", ns, "addr", "add", addr, "dev", dev])?;
            no_dad(ns, dev)?;
            run_ok("ip", &["-n", ns, "link", "set", dev, "up"])?;
        }
        run_ok("ip", &["-n", &far, "route", "add", "default", "via", "198.51.100.1"])?;
        run_ok("ip", &["-n", &ext, "route", "replace", "198.51.100.0/24", "dev", "eth1", "src", "198.51.100.1", "mtu", "lock", "1280"])?;
        run_ok("ip", &["netns", "exec", &ext, "sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        Ok(Outside { ext, far })
    }

    /// IPv6 on the outside of [`Self::add_outside`] (call before starting the daemon, which takes
    /// the uplink's IPv6 address for IPv6 masquerade when it starts):
    /// ```text
    /// host up0 2001:db8:2::1/64 ── ext eth0 2001:db8:2::2/64 (a router)
    ///                               ext eth1 2001:db8:100::1/64 ── far eth0 2001:db8:100::7/64
    /// ```
    /// The host's IPv6 default route goes via 2001:db8:2::2; ext reaches far over a 1280-byte
    /// hop, as for IPv4; neither outside namespace has a route to a container subnet.
    pub fn add_ipv6_outside(&self, outside: &Outside) -> Result<()> {
        let host = self.host();
        let (ext, far) = (&outside.ext, &outside.far);
        for (ns, dev, addr) in [
            (&host, "up0", "2001:db8:2::1/64"),
            (ext, "eth0", "2001:db8:2::2/64"),
            (ext, "eth1", "2001:db8:100::1/64"),
            (far, "eth0", "2001:db8:100::7/64"),
        ] {
            run_ok("ip", &["-n", ns, "addr", "add", addr, "dev", dev, "nodad"])?;
        }
        run_ok("ip", &["-n", &host, "-6", "route", "add", "default", "via", "2001:db8:2::2"])?;
        run_ok("ip", &["-n", far, "-6", "route", "add", "default", "via", "2001:db8:100::1"])?;
        // The metric of the connected route the address made: replaced, not shadowed.
        run_ok("ip", &["-n", ext, "-6", "route", "replace", "2001:db8:100::/64", "dev", "eth1", "metric", "256", "mtu", "lock", "1280"])?;
        run_ok("ip", &["netns", "exec", ext, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"])?;
        Ok(())
    }

    /// Joins the namespace `host` to the namespace `outside` by an uplink: `up0` 192.0.2.1/24 in
    /// `host`, `eth0` 192.0.2.2/24 in `outside`, and `host`'s default route through it.
    pub fn connect_uplink(&self, host: &str, outside: &str) -> Result<()> {
        run_ok("ip", &["-n", host, "link", "add", "up0", "type", "veth", "peer", "name", "eth0", "netns", outside])?;
        for (ns, dev, addr) in [(host, "up0", "192.0.2.1/24"), (outside, "eth0", "192.0.2.2/24")] {
            run_ok("ip", &["-n", ns, "addr", "add", addr, "dev", dev])?;
            no_dad(ns, dev)?;
            run_ok("ip", &["-n", ns, "link", "set", dev, "up"])?;
        }
        run_ok("ip", &["-n", host, "route", "add", "default", "via", "192.0.2.2"])?;
        Ok(())
    }

    /// Makes `dev` in `ns` send complete TCP/UDP checksums (`ethtool -K DEV tx off`), as frames
    /// from a NIC carry them; a veth otherwise leaves them to offload, which XDP cannot finish.
    pub fn checksums_in_software(&self, ns: &str, dev: &str, on: bool) -> Result<()> {
        run_ok("ip", &["netns", "exec", ns, "ethtool", "-K", dev, "tx", if on { "off" } else { "on" }])?;
        Ok(())
    }

    /// One ping with a 1 s timeout.
    pub fn ping(&self, ns: &str, ip: &str) -> Result<bool> {
        Ok(self.exec(ns, &["ping", "-c", "1", "-W", "1", "-q", ip])?.ok)
    }

    /// Tears everything down; also run by `Drop`. Safe to call twice.
    pub fn cleanup(&mut self) {
        self.stop_daemon(libc::SIGKILL).ok();
        if self.state_dir().exists() {
            let _ = self.daemon_cleanup();
        }
        for ns in self.namespaces.drain(..).rev() {
            let _ = run("ip", &["netns", "del", &ns]);
        }
        unmount_below(&self.dir);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.cleanup();
    }
}

fn unmount_below(dir: &Path) {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else { return };
    let prefix = dir.to_string_lossy().into_owned();
    for line in mounts.lines() {
        if let Some(target) = line.split_whitespace().nth(1) {
            if target.starts_with(&prefix) {
                let _ = run("umount", &["-l", target]);
            }
        }
    }
}

/// No IPv6 duplicate address detection on `dev` in `ns` (before it comes up, so that its
/// link-local address is usable at once): a link-local address still tentative cannot source
/// the neighbour solicitations of forwarded packets (a router resolving the next hop for a
/// client's packet), which stalls the first IPv6 connections across it for a second or two.
fn no_dad(ns: &str, dev: &str) -> Result<()> {
    run_ok("ip", &["netns", "exec", ns, "sysctl", "-qw", &format!("net.ipv6.conf.{dev}.accept_dad=0")])?;
    Ok(())
}

/// Removes whatever interrupted runs left: daemons and tools started for sandboxes, their
/// namespaces, mounts and files. Touches only names with the sandbox prefix.
pub fn sweep() -> Result<usize> {
    // The pattern must not start with '-' (pkill would take it for an option).
    let _ = run("pkill", &["-KILL", "-f", &format!("daemon --netns {PREFIX}-")]);
    let _ = run("pkill", &["-KILL", "-f", "bpfnet-lab net "]);
    // etcd members of clusters (see `cluster`), named after their sandbox.
    let _ = run("pkill", &["-KILL", "-f", &format!("etcd --name {PREFIX}-")]);
    crate::engines::sweep();
    let mut removed = 0;
    let list = run_ok("ip", &["netns", "list"])?;
    for ns in list.lines().filter_map(|l| l.split_whitespace().next()) {
        if ns.starts_with(&format!("{PREFIX}-")) {
            run("ip", &["netns", "del", ns])?;
            removed += 1;
        }
    }
    unmount_below(Path::new(WORK_DIR));
    let _ = std::fs::remove_dir_all(WORK_DIR);
    Ok(removed)
}
