//! Real container engines inside a sandbox: dockerd runs in the sandbox's "host" namespace (where
//! the bpfnet daemon runs) and in a mount namespace of its own, so that every interface, address,
//! route and mount it makes stays in the sandbox; its files live in the sandbox's folder. Images
//! are built locally from Debian's busybox-static (no registry).
//!
//! Entering the namespace with `nsenter --net` rather than `ip netns exec`: the latter mounts a
//! fresh /sys, which hides the cgroup mounts dockerd needs.
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::sandbox::{run, run_with_limit, Ran, Sandbox, PREFIX};

/// Debian's docker client (a newer one may come first in PATH; either works with dockerd 20.10).
const DOCKER: &str = "/usr/bin/docker";
/// How long one docker command may take (a plugin that is down makes docker retry for ~15 s).
const DOCKER_LIMIT: Duration = Duration::from_secs(60);
/// The image the tests run: busybox-static with a link per applet.
pub const BUSYBOX_IMAGE: &str = "local/busybox";

/// Whether dockerd is installed (the test command's setup installs it).
pub fn docker_installed() -> bool {
    Path::new("/usr/sbin/dockerd").exists() && Path::new(DOCKER).exists()
}

/// dockerd in a sandbox; stopped (its containers removed) on drop.
pub struct Docker {
    dir: PathBuf,
    cgroup: String,
    child: Option<Child>,
}

impl Docker {
    /// Folder of the bpfnet daemon's plugin socket for sandbox `sb` (pass
    /// `--docker-plugin=<this>` to the daemon).
    pub fn plugin_dir(sb: &Sandbox) -> PathBuf {
        sb.dir.join("plugins")
    }

    /// The daemon argument that serves the plugin where [`Docker::start`]'s dockerd looks.
    pub fn plugin_arg(sb: &Sandbox) -> String {
        format!("--docker-plugin={}", Self::plugin_dir(sb).display())
    }

    /// Starts dockerd in `sb`'s host namespace, with the bpfnet plugin's spec file in its own
    /// /etc/docker/plugins, and waits until it answers.
    pub fn start(sb: &Sandbox) -> Result<Docker> {
        let dir = sb.dir.join("docker");
        for sub in ["etc/plugins", "root", "exec"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let spec = format!("unix://{}\n", bpfnet::docker::socket_path(&Self::plugin_dir(sb)).display());
        std::fs::write(dir.join("etc/plugins").join(format!("{}.spec", bpfnet::docker::PLUGIN_NAME)), spec)?;
        // Names nobody asked for go to a resolver in the sandbox (none: they fail fast), never
        // to the machine's.
        std::fs::write(dir.join("daemon.json"), r#"{"dns":["127.0.0.1"]}"#)?;
        let mut docker = Docker { dir, cgroup: format!("{}-docker", sb.name), child: None };
        docker.boot(sb)?;
        Ok(docker)
    }

    /// Runs dockerd and waits until it answers.
    fn boot(&mut self, sb: &Sandbox) -> Result<()> {
        let d = self.dir.display();
        let script = format!(
            "mount --bind {d}/etc /etc/docker && exec dockerd --config-file {d}/daemon.json \
             --data-root {d}/root --exec-root {d}/exec --pidfile {d}/pid -H unix://{d}/docker.sock \
             --bridge=none --iptables=false --ip6tables=false --ip-forward=false --ip-masq=false \
             --userland-proxy=false --storage-driver=overlay2 --cgroup-parent=/{}",
            self.cgroup
        );
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("dockerd.log"))?;
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", sb.host()))
            .args(["unshare", "--mount", "--propagation", "slave", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting dockerd")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.run(&["version", "--format", "{{.Server.Version}}"])?.ok {
            if let Some(status) = self.child.as_mut().unwrap().try_wait()? {
                self.child = None;
                bail!("dockerd exited with {status}: {}", self.log());
            }
            if Instant::now() > deadline {
                bail!("dockerd did not answer within 30 s: {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default()
    }

    /// Runs the docker CLI against this dockerd.
    pub fn run(&self, args: &[&str]) -> Result<Ran> {
        let mut cmd = Command::new(DOCKER);
        cmd.arg("-H").arg(format!("unix://{}/docker.sock", self.dir.display())).args(args);
        run_with_limit(cmd, DOCKER_LIMIT)
    }

    /// Runs the docker CLI; fails unless it succeeds. Returns stdout, trimmed.
    pub fn ok(&self, args: &[&str]) -> Result<String> {
        succeeded("docker", args, self.run(args)?)
    }

    /// Imports [`BUSYBOX_IMAGE`] from Debian's busybox-static.
    pub fn import_busybox(&self) -> Result<()> {
        let tar = busybox_tar(&self.dir)?;
        self.ok(&["import", "-c", r#"CMD ["/bin/sh"]"#, &tar.to_string_lossy(), BUSYBOX_IMAGE])?;
        Ok(())
    }

    /// The PID of a running container's first process: its network namespace is /proc/PID/ns/net.
    pub fn pid(&self, container: &str) -> Result<String> {
        let pid = self.ok(&["inspect", "-f", "{{.State.Pid}}", container])?;
        if pid == "0" || pid.is_empty() {
            bail!("container {container} is not running");
        }
        Ok(pid)
    }

    /// Stops dockerd for good (SIGTERM, then SIGKILL after 10 s), its containers removed first;
    /// then kills whatever of it is left (shims, container processes), also after a failed start.
    pub fn stop(&mut self) {
        if self.child.is_some() {
            if let Ok(ids) = self.run(&["ps", "-aq"]) {
                let ids: Vec<&str> = ids.stdout.split_whitespace().collect();
                if !ids.is_empty() {
                    let mut args = vec!["rm", "-f"];
                    args.extend(ids);
                    let _ = self.run(&args);
                }
            }
            self.signal(libc::SIGTERM, Duration::from_secs(10));
            self.signal(libc::SIGKILL, Duration::from_secs(5));
            self.child = None;
        }
        let exec = self.dir.join("exec");
        let _ = run("pkill", &["-KILL", "-f", &format!("containerd.* {}/", exec.display())]);
        remove_cgroups(&self.cgroup);
    }

    /// Kills dockerd and its containerd at once, as a crash of the engine would; the
    /// containers' processes survive it.
    pub fn kill(&mut self) {
        let containerd = std::fs::read_to_string(self.dir.join("exec/containerd/containerd.pid")).unwrap_or_default();
        self.signal(libc::SIGKILL, Duration::from_secs(5));
        if let Ok(pid) = containerd.trim().parse::<i32>() {
            // SAFETY: kill(2) on the containerd this dockerd started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        // The next dockerd would wait for a containerd whose pid still answers (a zombie not
        // reaped yet) instead of starting its own.
        let _ = std::fs::remove_file(self.dir.join("exec/containerd/containerd.pid"));
        self.child = None;
    }

    /// Restarts dockerd: stopped gracefully (SIGTERM; it stops its containers) unless
    /// [`Docker::kill`] ended it already, then started again; containers are kept.
    pub fn restart(&mut self, sb: &Sandbox) -> Result<()> {
        self.signal(libc::SIGTERM, Duration::from_secs(15));
        self.signal(libc::SIGKILL, Duration::from_secs(5));
        self.child = None;
        self.boot(sb)
    }

    fn signal(&mut self, signal: i32, wait: Duration) {
        let Some(child) = self.child.as_mut() else { return };
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        // The child is `sh -c exec dockerd` under nsenter/unshare: nsenter forks and waits, so
        // the pid file names dockerd itself.
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("pid")) {
            if let Ok(pid) = pid.trim().parse::<i32>() {
                // SAFETY: kill(2) on a pid we started.
                unsafe { libc::kill(pid, signal) };
            }
        }
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The trimmed stdout of an engine command `tool args` that ran as `r`, or why it failed.
fn succeeded(tool: &str, args: &[&str], r: Ran) -> Result<String> {
    if !r.ok {
        bail!("{tool} {} failed: {}{}", args.join(" "), r.stderr, r.stdout);
    }
    Ok(r.stdout.trim().to_string())
}

/// A root filesystem of Debian's busybox-static (a link per applet) tarred in `dir`.
fn busybox_tar(dir: &Path) -> Result<PathBuf> {
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin"))?;
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).context("copying busybox (package busybox-static)")?;
    let list = crate::sandbox::run_ok("/bin/busybox", &["--list"])?;
    for applet in list.lines().filter(|a| *a != "busybox" && !a.is_empty()) {
        let link = rootfs.join("bin").join(applet);
        if !link.exists() {
            std::os::unix::fs::symlink("busybox", link)?;
        }
    }
    let tar = dir.join("rootfs.tar");
    crate::sandbox::run_ok("tar", &["-C", &rootfs.to_string_lossy(), "-cf", &tar.to_string_lossy(), "."])?;
    Ok(tar)
}

/// Whether Podman and the reference CNI plugins are installed (`cargo xtask setup` does).
pub fn podman_installed() -> bool {
    Path::new("/usr/bin/podman").exists() && Path::new(CNI_PLUGINS).exists()
}

/// Debian's reference CNI plugins (bridge, host-local, portmap, ...).
pub const CNI_PLUGINS: &str = "/usr/lib/cni";

/// Podman with the CNI backend, in a sandbox's host namespace; its storage, configuration and
/// state in the sandbox's folder; bpfnet's CNI plugin (the `bpfnet` binary) in its plugin path.
pub struct Podman {
    dir: PathBuf,
    netns: String,
    cgroup: String,
}

impl Podman {
    /// Sets Podman up in `sb` with the network configurations `conflists` (name, JSON).
    pub fn new(sb: &Sandbox, conflists: &[(&str, serde_json::Value)]) -> Result<Podman> {
        // Short: Podman refuses a runroot path longer than 50 characters.
        let dir = sb.dir.join("p");
        for sub in ["cni", "plugins", "root", "r", "tmp"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let plugin = dir.join("plugins").join("bpfnet");
        if !plugin.exists() {
            std::os::unix::fs::symlink(crate::sandbox::bpfnet_bin(), &plugin)?;
        }
        for (name, conf) in conflists {
            std::fs::write(dir.join("cni").join(format!("{name}.conflist")), serde_json::to_vec_pretty(conf)?)?;
        }
        let d = dir.display();
        std::fs::write(
            dir.join("containers.conf"),
            format!(
                "[containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]\n\
                 [network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{d}/plugins\", \"{CNI_PLUGINS}\"]\nnetwork_config_dir = \"{d}/cni\"\n\
                 [engine]\nlock_type = \"file\"\nstop_timeout = 1\n"
            ),
        )?;
        std::fs::write(
            dir.join("storage.conf"),
            format!("[storage]\ndriver = \"overlay\"\ngraphroot = \"{d}/root\"\nrunroot = \"{d}/r\"\n"),
        )?;
        Ok(Podman { dir, netns: sb.host(), cgroup: format!("{}-podman", sb.name) })
    }

    /// Runs podman (in the sandbox's host namespace) with `args`.
    pub fn run(&self, args: &[&str]) -> Result<Ran> {
        let d = &self.dir;
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.netns))
            .arg("podman")
            .arg("--root")
            .arg(d.join("root"))
            .arg("--runroot")
            .arg(d.join("r"))
            .arg("--tmpdir")
            .arg(d.join("tmp"))
            .arg("--network-config-dir")
            .arg(d.join("cni"))
            .args(["--cgroup-manager", "cgroupfs", "--events-backend", "file", "--runtime", "runc"])
            .args(args)
            .env("CONTAINERS_CONF", d.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", d.join("storage.conf"));
        run_with_limit(cmd, DOCKER_LIMIT)
    }

    /// Runs podman; fails unless it succeeds. Returns stdout, trimmed.
    pub fn ok(&self, args: &[&str]) -> Result<String> {
        succeeded("podman", args, self.run(args)?)
    }

    /// `podman run -d` with the sandbox's cgroup parent and `args` (options, image, command).
    pub fn run_detached(&self, name: &str, args: &[&str]) -> Result<String> {
        let parent = format!("/{}", self.cgroup);
        let mut all = vec!["run", "-d", "--name", name, "--cgroup-parent", &parent];
        all.extend_from_slice(args);
        self.ok(&all)
    }

    pub fn import_busybox(&self) -> Result<()> {
        let tar = busybox_tar(&self.dir)?;
        self.ok(&["import", &tar.to_string_lossy(), BUSYBOX_IMAGE])?;
        Ok(())
    }

    /// The PID of a running container's first process.
    pub fn pid(&self, container: &str) -> Result<String> {
        self.ok(&["inspect", "-f", "{{.State.Pid}}", container])
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.run(&["rm", "-f", "-a", "-t", "0"]);
        let _ = run("pkill", &["-KILL", "-f", &format!("conmon.*{}/", self.dir.display())]);
        remove_cgroups(&self.cgroup);
    }
}

/// Removes the cgroup folders named `name` that dockerd made under every hierarchy (one child
/// per container), killing what still runs in them: container processes outlive a killed
/// dockerd and its shims.
fn remove_cgroups(name: &str) {
    let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else { return };
    let dirs: Vec<PathBuf> = hierarchies.flatten().map(|h| h.path().join(name)).filter(|d| d.is_dir()).collect();
    for dir in &dirs {
        let children = std::fs::read_dir(dir).map(|c| c.flatten().map(|c| c.path()).filter(|p| p.is_dir()).collect()).unwrap_or_else(|_| vec![]);
        for child in children.iter().chain([dir]) {
            let procs = std::fs::read_to_string(child.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines().filter_map(|p| p.trim().parse::<i32>().ok()) {
                // SAFETY: kill(2); these are processes of the sandbox's containers.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
    for dir in &dirs {
        for _ in 0..50 {
            let children: Vec<PathBuf> = std::fs::read_dir(dir).map(|c| c.flatten().map(|c| c.path()).filter(|p| p.is_dir()).collect()).unwrap_or_else(|_| vec![]);
            let done = children.iter().all(|c| std::fs::remove_dir(c).is_ok()) && std::fs::remove_dir(dir).is_ok();
            if done || !dir.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Sweeps what interrupted runs left of engines: dockerd and its containerd (by their sandbox
/// paths) and their cgroup folders.
pub fn sweep() {
    let _ = run("pkill", &["-KILL", "-f", &format!("dockerd --config-file {}/", crate::sandbox::WORK_DIR)]);
    let _ = run("pkill", &["-KILL", "-f", &format!("containerd --config {}/", crate::sandbox::WORK_DIR)]);
    let _ = run("pkill", &["-KILL", "-f", &format!("containerd-shim-runc-v2 -namespace moby -id .* -address {}/", crate::sandbox::WORK_DIR)]);
    if let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") {
        for h in hierarchies.flatten() {
            if let Ok(entries) = std::fs::read_dir(h.path()) {
                for e in entries.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if name.starts_with(&format!("{PREFIX}-")) && (name.ends_with("-docker") || name.ends_with("-podman")) {
                        remove_cgroups(&name);
                    }
                }
            }
        }
    }
}
