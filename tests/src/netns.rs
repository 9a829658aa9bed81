//! Running code inside a network namespace: a thread that `setns`es, so sockets it creates belong
//! to that namespace while the rest of the process stays where it is.
use std::{fs::File, os::fd::AsRawFd, path::PathBuf};

use anyhow::{bail, Context, Result};

pub fn path(name: &str) -> PathBuf {
    PathBuf::from("/run/netns").join(name)
}

/// Runs `f` on a fresh thread inside namespace `name` and returns its result. Sockets created by
/// `f` stay in that namespace when handed back.
pub fn within<T: Send + 'static>(name: &str, f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    let p = path(name);
    std::thread::spawn(move || {
        let file = File::open(&p).with_context(|| format!("opening {}", p.display()))?;
        // SAFETY: setns on an fd we own; affects only this thread.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns {}: {}", p.display(), std::io::Error::last_os_error());
        }
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("thread in namespace {name} panicked"))?
}
