//! The BPF filesystem where the daemon pins maps and links so that they outlive it.
use std::{
    ffi::CString,
    fs,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

pub fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else { return false };
    // SAFETY: statfs writes into a zeroed struct we own.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC }
}

fn mount_bpffs(dir: &Path) -> Result<()> {
    let target = CString::new(dir.as_os_str().as_bytes())?;
    let kind = CString::new("bpf")?;
    // SAFETY: plain mount(2) call with valid C strings.
    let rc = unsafe {
        libc::mount(kind.as_ptr(), target.as_ptr(), kind.as_ptr(), 0, std::ptr::null())
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("mounting bpffs on {}", dir.display()));
    }
    Ok(())
}

/// Makes `dir` a directory on a BPF filesystem: creates it on an existing bpffs, or mounts one.
/// The standard `/sys/fs/bpf` is mounted when it is not yet (as systemd would have done).
pub fn ensure(dir: &Path) -> Result<()> {
    if dir.exists() && is_bpffs(dir) {
        return Ok(());
    }
    let sys = Path::new("/sys/fs/bpf");
    if dir.starts_with(sys) && !is_bpffs(sys) {
        mount_bpffs(sys)?;
    }
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    if !is_bpffs(dir) {
        mount_bpffs(dir)?;
    }
    if !is_bpffs(dir) {
        bail!("{} is not on a BPF filesystem", dir.display());
    }
    Ok(())
}

/// Pinned maps live in a directory named after the map layout version: a daemon with another
/// layout creates fresh maps instead of misreading old ones (its program is swapped into the links).
pub fn maps_dir(root: &Path) -> PathBuf {
    root.join(format!("maps-v{}", datapath_common::LAYOUT_VERSION))
}

pub fn links_dir(root: &Path) -> PathBuf {
    root.join("links")
}

/// Links of the uplink program, one per uplink.
pub fn uplinks_dir(root: &Path) -> PathBuf {
    root.join("uplinks")
}

/// Links of the uplinks' XDP program (`--xdp native`), one per uplink.
pub fn xdp_dir(root: &Path) -> PathBuf {
    root.join("xdp")
}

/// The link of the overlay program on the node's VXLAN device (clusters).
pub fn overlay_dir(root: &Path) -> PathBuf {
    root.join("overlay")
}

/// Programs pinned for the next start to reuse, one directory per object, options and maps
/// (see `Datapath::load_pinned`).
pub fn programs_dir(root: &Path) -> PathBuf {
    root.join("programs")
}

/// Removes the program pins of other objects, options or maps than `keep`'s (unused from now on).
pub fn remove_other_program_pins(root: &Path, keep: &Path) {
    let Ok(entries) = fs::read_dir(programs_dir(root)) else { return };
    for entry in entries.flatten() {
        if entry.path() != keep {
            fs::remove_dir_all(entry.path()).ok();
        }
    }
}

/// Links of the socket programs at the cgroup root.
pub fn sockets_dir(root: &Path) -> PathBuf {
    root.join("sockets")
}

/// Removes the pinned maps of other layout versions (left by an older bpfnet): once this version's
/// programs are attached nothing uses them.
pub fn remove_other_layouts(root: &Path) {
    let current = maps_dir(root);
    let Ok(entries) = fs::read_dir(root) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path != current && name.starts_with("maps-v") {
            for pin in fs::read_dir(&path).into_iter().flatten().flatten() {
                fs::remove_file(pin.path()).ok();
            }
            if fs::remove_dir(&path).is_ok() {
                log::info!("removed the maps of an older datapath layout ({name})");
            }
        }
    }
}

/// Removes everything bpfnet pinned under `root` (every maps version and the links), and the mount
/// if `root` is a bpffs mount point of its own (never the system's /sys/fs/bpf).
pub fn remove_all(root: &Path) -> Result<()> {
    if !root.exists() {
        return Ok(());
    }
    for entry in fs::read_dir(root)?.flatten() {
        let sub = entry.path();
        if !sub.is_dir() {
            continue;
        }
        for pin in fs::read_dir(&sub)?.flatten() {
            if pin.path().is_dir() {
                // `programs/<key>/`: one level more.
                fs::remove_dir_all(pin.path()).with_context(|| format!("unpinning {}", pin.path().display()))?;
            } else {
                fs::remove_file(pin.path()).with_context(|| format!("unpinning {}", pin.path().display()))?;
            }
        }
        fs::remove_dir(&sub).ok();
    }
    let is_own_mount = root != Path::new("/sys/fs/bpf") && root.parent().is_some_and(|p| !is_bpffs(p)) && is_bpffs(root);
    if is_own_mount {
        let c = CString::new(root.as_os_str().as_bytes())?;
        // SAFETY: umount2 with a valid C string.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
    fs::remove_dir(root).ok();
    Ok(())
}
