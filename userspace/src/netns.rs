//! Network namespaces: naming them (name, path or PID), telling whether one is still there, and
//! running code inside one.
use std::{
    fs::File,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};

/// `ioctl(NS_GET_NSTYPE)`: which kind of namespace a file refers to.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// A namespace a user named, resolved to a file and its identity.
#[derive(Debug, Clone)]
pub struct NetnsRef {
    /// What the user typed, kept for display.
    pub name: String,
    pub path: PathBuf,
    pub dev: u64,
    pub inode: u64,
}

/// Resolves `arg`: a PID (digits), a path (contains '/'), or a name under /run/netns.
pub fn resolve(arg: &str) -> Result<NetnsRef> {
    let path = if !arg.is_empty() && arg.chars().all(|c| c.is_ascii_digit()) {
        PathBuf::from(format!("/proc/{arg}/ns/net"))
    } else if arg.contains('/') {
        PathBuf::from(arg)
    } else if arg.is_empty() {
        bail!("no network namespace given");
    } else {
        Path::new("/run/netns").join(arg)
    };
    let file = File::open(&path).map_err(|e| {
        anyhow::anyhow!("network namespace {arg:?} does not exist ({}: {e})", path.display())
    })?;
    // SAFETY: ioctl on an fd we own, no pointer argument.
    let kind = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE) };
    if kind != libc::CLONE_NEWNET {
        bail!("{arg:?} ({}) is not a network namespace", path.display());
    }
    let meta = file.metadata()?;
    Ok(NetnsRef { name: arg.to_string(), path, dev: meta.dev(), inode: meta.ino() })
}

/// Identity of the namespace the calling thread is in.
pub fn current() -> Result<(u64, u64)> {
    let meta = std::fs::metadata("/proc/thread-self/ns/net")?;
    Ok((meta.dev(), meta.ino()))
}

/// Moves the calling thread into the namespace at `path`.
pub fn enter(path: &Path) -> Result<()> {
    let file = File::open(path).with_context(|| format!("opening network namespace {}", path.display()))?;
    // SAFETY: setns on an fd we own.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("entering network namespace {}", path.display()));
    }
    Ok(())
}

/// Runs `f` on a new thread inside the namespace at `path`, so the caller's threads stay where
/// they are. `f` gets its own single-threaded tokio runtime for netlink work.
pub fn run_in<T, F, Fut>(path: &Path, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T>>,
{
    let path = path.to_path_buf();
    std::thread::spawn(move || -> Result<T> {
        enter(&path)?;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(f())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("thread working in namespace panicked"))?
}

