//! Project tasks: `cargo xtask setup | build-ebpf | build | test | demo | bench | sweep`.
//!
//! Every task that needs tools runs `setup` first; setup installs only what is missing, so a warm
//! run costs a few `dpkg-query` calls.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

/// Debian packages: the eBPF toolchain (docs/DEVELOPMENT.md), LLVM 22 to build bpf-linker, and
/// the tools tests, demo and benchmark use.
const DEBIAN_PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "libstd-rust-web-dev-bpf",
    "llvm-22-dev",
    "iproute2",
    "iputils-ping",
    "iptables",
    "nftables",
    "ethtool",
    "conntrack",
    "bpftool",
    // dig: the tests' DNS client.
    "bind9-dnsutils",
    // The etcd client crate compiles etcd's .proto files (protoc and Google's well-known types).
    "protobuf-compiler",
    "libprotobuf-dev",
];
/// etcd for the cluster tests (members run inside the tests' node namespaces). Its package
/// enables a systemd unit: on a machine with systemd it is stopped and disabled right after the
/// install, so that no etcd runs in the machine's own namespace.
const CLUSTER_PACKAGES: &[&str] = &["etcd-server", "etcd-client"];
/// The container engines the front-end tests drive (inside a sandbox namespace), without the
/// packages they only recommend (as Debian's docker.io recommends apparmor, git, ...). The machine's
/// policy-rc.d keeps apt from starting dockerd in the root namespace.
const ENGINE_PACKAGES: &[&str] = &["docker.io", "busybox-static", "podman", "containernetworking-plugins"];
const BPF_LINKER_VERSION: &str = "0.13.0";

#[derive(Parser)]
#[command(name = "xtask", about = "bpfnet project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install missing Debian packages and bpf-linker (idempotent).
    Setup,
    /// Build the eBPF object with Debian's rustc for bpfel-unknown-none.
    BuildEbpf,
    /// Build everything: the eBPF object, then `target/release/bpfnet` embedding it.
    Build,
    /// Run the whole test suite: unit, datapath (BPF_PROG_TEST_RUN) and end-to-end tests.
    Test {
        /// Extra arguments for the test binaries (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The demo: reference scenario in a sandbox, connectivity matrix, short benchmark.
    Demo,
    /// Benchmark bpfnet against a direct veth pair and a Docker-style bridge with iptables.
    Bench {
        /// Arguments for the benchmark (see `target/release/bpfnet-lab bench --help`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Remove namespaces, mounts and files left by interrupted tests, demos or benchmarks.
    Sweep,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn cargo_home_bin() -> PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cargo"));
    home.join("bin")
}

/// The packages of `list` that are not installed.
fn missing_packages(list: &[&'static str]) -> Vec<&'static str> {
    list.iter()
        .copied()
        .filter(|p| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
                .unwrap_or(false)
        })
        .collect()
}

fn setup() -> Result<()> {
    let missing = missing_packages(DEBIAN_PACKAGES);
    let missing_engines = missing_packages(ENGINE_PACKAGES);
    let missing_cluster = missing_packages(CLUSTER_PACKAGES);
    if !missing.is_empty() || !missing_engines.is_empty() || !missing_cluster.is_empty() {
        run(Command::new("apt-get").arg("update").arg("-qq"))?;
    }
    let no_recommends = Some("--no-install-recommends");
    for (list, extra) in [(&missing, None), (&missing_engines, no_recommends), (&missing_cluster, no_recommends)] {
        if list.is_empty() {
            continue;
        }
        eprintln!("xtask: installing Debian packages: {}", list.join(" "));
        run(Command::new("apt-get")
            .args(["install", "-y", "-qq"])
            .args(extra)
            .args(list.iter())
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }

    if !missing_cluster.is_empty() && Path::new("/run/systemd/system").exists() {
        let _ = Command::new("systemctl").args(["disable", "--now", "etcd.service"]).status();
    }

    let linker = cargo_home_bin().join("bpf-linker");
    let have_linker = Command::new(&linker)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION))
        .unwrap_or(false);
    if !have_linker {
        eprintln!("xtask: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about 2 minutes)");
        // Its build script takes the first llvm-config on PATH: LLVM 22's must come first.
        let path = format!("/usr/lib/llvm-22/bin:{}", std::env::var("PATH").unwrap_or_default());
        run(Command::new("cargo")
            .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION, "--locked"])
            .args(["--no-default-features", "--features", "llvm-22"])
            .env("PATH", path))?;
    }
    Ok(())
}

fn build_ebpf() -> Result<()> {
    // Debian's rustc ships core for bpfel-unknown-none; rustup accepts /usr as a path toolchain.
    let path = format!("{}:{}", cargo_home_bin().display(), std::env::var("PATH").unwrap_or_default());
    run(Command::new("cargo")
        .args(["+/usr", "build", "--quiet", "--release", "--target", "bpfel-unknown-none"])
        .arg("--target-dir")
        .arg(root().join("target/bpf"))
        .current_dir(root().join("datapath-ebpf"))
        .env("RUSTC_BOOTSTRAP", "aya_ebpf")
        .env("PATH", path)
        // The userspace toolchain's variables must not leak into the Debian toolchain's build.
        .env_remove("RUSTC")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO"))
}

fn build() -> Result<()> {
    setup()?;
    build_ebpf()?;
    run(Command::new("cargo")
        .args(["build", "--quiet", "--release", "-p", "bpfnet", "-p", "bpfnet-tests", "--bins"])
        .current_dir(root()))
}

fn lab(args: &[&str], extra: &[String]) -> Result<()> {
    run(Command::new(root().join("target/release/bpfnet-lab")).args(args).args(extra).current_dir(root()))
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Setup => setup(),
        Task::BuildEbpf => build_ebpf(),
        Task::Build => build(),
        Task::Test { args } => {
            build()?;
            lab(&["sweep"], &[])?;
            // Release profile: the tests drive the binaries `build` just made, without a debug rebuild.
            // One test thread: end-to-end tests time real traffic on a 2-core machine.
            run(Command::new("cargo")
                .args(["test", "--release", "--workspace", "--exclude", "xtask", "--", "--test-threads=1"])
                .args(&args)
                .current_dir(root()))
        }
        Task::Demo => {
            build()?;
            lab(&["demo"], &[])
        }
        Task::Bench { args } => {
            build()?;
            lab(&["bench"], &args)
        }
        Task::Sweep => lab(&["sweep"], &[]),
    }
}
