//! The API socket: bound only where nothing of value is, removed only while it is ours.
//!
//! A path that exists is replaced only if it is a stale socket (one that nobody answers on); a
//! socket another daemon serves, a regular file or a directory is refused with a clear error.
use std::{
    io::ErrorKind,
    os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt},
    path::Path,
};

use anyhow::{bail, Context, Result};
use tokio::net::UnixListener;

pub struct Bound {
    pub listener: UnixListener,
    /// Inode of the socket file we created: at exit it is removed only if it is still this one.
    pub inode: u64,
}

/// Whether a socket at `path` has a server behind it.
fn answered(path: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(path).is_ok()
}

/// Makes sure the daemon may bind `path`: nothing there, or a stale socket (removed).
pub fn check_free(path: &Path) -> Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("checking the API socket path {}", path.display())),
        Ok(meta) => meta,
    };
    let kind = meta.file_type();
    if kind.is_socket() {
        if answered(path) {
            bail!(
                "another daemon is serving the API socket {}: stop it first, or give this daemon its own --socket",
                path.display()
            );
        }
        std::fs::remove_file(path).with_context(|| format!("removing the stale socket {}", path.display()))?;
        log::info!("removed the stale API socket {} (nobody answered on it)", path.display());
        return Ok(());
    }
    if kind.is_dir() {
        bail!(
            "the API socket path {} is a directory; give --socket a file name, e.g. {}",
            path.display(),
            path.join("bpfnet.sock").display()
        );
    }
    bail!("{} exists and is not a socket; refusing to replace it (remove it, or choose another --socket)", path.display())
}

/// Binds the API socket at `path` (checked with [`check_free`]) with mode 0600.
pub fn bind(path: &Path) -> Result<Bound> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    // SAFETY: umask only changes this process's file creation mask; restored right after.
    let old = unsafe { libc::umask(0o177) };
    let listener = UnixListener::bind(path);
    unsafe { libc::umask(old) };
    let listener = listener.with_context(|| format!("binding the API socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    let inode = std::fs::symlink_metadata(path)?.ino();
    Ok(Bound { listener, inode })
}

/// Removes the socket at `path` if it is still the one this daemon bound.
pub fn remove_if_ours(path: &Path, inode: u64) {
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket() && m.ino() == inode) {
        std::fs::remove_file(path).ok();
    }
}

/// Removes the socket at `path` if it is a socket nobody answers on (for `--cleanup`).
pub fn remove_if_stale(path: &Path) {
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) && !answered(path) {
        std::fs::remove_file(path).ok();
    }
}
