//! Network namespaces: naming them (name, path or PID), telling whether one is still there, and
//! running code inside one.
//!
//! A namespace argument comes from a user and is opened by a root daemon, so it is opened in a way
//! that can neither block nor touch anything but a namespace file: first with `O_PATH` (which opens
//! no device and waits for no FIFO writer), checked to be a regular file on nsfs, then re-opened
//! through that descriptor and asked for its namespace type.
use std::{
    ffi::CString,
    fs::File,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::{ffi::OsStrExt, fs::MetadataExt},
    },
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{bail, Context, Result};

/// `ioctl(NS_GET_NSTYPE)`: which kind of namespace a file refers to.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;
/// `statfs.f_type` of the namespace filesystem (nsfs).
const NSFS_MAGIC: i64 = 0x6e73_6673;

/// A namespace a user named, resolved to an open file and its identity.
#[derive(Debug, Clone)]
pub struct NetnsRef {
    /// What the user typed, kept for display.
    pub name: String,
    pub path: PathBuf,
    pub dev: u64,
    pub inode: u64,
    /// The namespace itself: entering it through this file reaches the namespace that was
    /// checked, even if the path is re-bound meanwhile.
    pub file: Arc<File>,
}

/// Where a namespace argument points: a PID (digits), a path (contains '/'), or a name under
/// /run/netns.
pub fn path_of(arg: &str) -> Result<PathBuf> {
    if arg.is_empty() {
        bail!("no network namespace given");
    }
    Ok(if arg.chars().all(|c| c.is_ascii_digit()) {
        PathBuf::from(format!("/proc/{arg}/ns/net"))
    } else if arg.contains('/') {
        PathBuf::from(arg)
    } else {
        Path::new("/run/netns").join(arg)
    })
}

/// Resolves `arg` (see [`path_of`]) to an open network namespace. Never blocks and never opens
/// anything that is not a namespace file.
pub fn resolve(arg: &str) -> Result<NetnsRef> {
    let path = path_of(arg)?;
    let file = open_netns(&path).map_err(|e| anyhow::anyhow!("{arg:?} is not a usable network namespace: {e:#}"))?;
    let meta = file.metadata()?;
    Ok(NetnsRef { name: arg.to_string(), path, dev: meta.dev(), inode: meta.ino(), file: Arc::new(file) })
}

fn open_netns(path: &Path) -> Result<File> {
    let c = CString::new(path.as_os_str().as_bytes()).context("the path contains a NUL byte")?;
    // SAFETY: open(2) with a valid C string; O_PATH never blocks and opens no device.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() == std::io::ErrorKind::NotFound {
            bail!("{} does not exist", path.display());
        }
        return Err(e).with_context(|| format!("opening {}", path.display()));
    }
    // SAFETY: fd was just returned by open(2) and is owned by nobody else.
    let opath = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: fstat/fstatfs write into zeroed structs we own; both accept O_PATH descriptors.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(opath.as_raw_fd(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error()).context("stat");
    }
    let kind = st.st_mode & libc::S_IFMT;
    if kind != libc::S_IFREG {
        let what = match kind {
            libc::S_IFIFO => "a FIFO",
            libc::S_IFCHR | libc::S_IFBLK => "a device",
            libc::S_IFDIR => "a directory",
            libc::S_IFSOCK => "a socket",
            _ => "not a namespace file",
        };
        bail!("{} is {what}, not a network namespace", path.display());
    }
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatfs(opath.as_raw_fd(), &mut fs) } != 0 {
        return Err(std::io::Error::last_os_error()).context("statfs");
    }
    if fs.f_type as i64 != NSFS_MAGIC {
        bail!("{} is an ordinary file, not a network namespace", path.display());
    }
    // A namespace file proper: re-open the very inode checked above for ioctl and setns.
    let file = File::open(format!("/proc/self/fd/{}", opath.as_raw_fd())).context("re-opening the namespace file")?;
    // SAFETY: ioctl on an fd we own, no pointer argument.
    let ns_type = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE) };
    if ns_type != libc::CLONE_NEWNET {
        bail!("{} is a namespace, but not a network namespace", path.display());
    }
    Ok(file)
}

/// Identity of the namespace the calling thread is in.
pub fn current() -> Result<(u64, u64)> {
    let meta = std::fs::metadata("/proc/thread-self/ns/net")?;
    Ok((meta.dev(), meta.ino()))
}

/// Moves the calling thread into the namespace `file` refers to.
pub fn enter(file: &File) -> Result<()> {
    // SAFETY: setns on an fd we own.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error()).context("entering the network namespace");
    }
    Ok(())
}

/// Runs `f` on a new thread inside the namespace `ns`, so the caller's threads stay where they
/// are. `f` gets its own single-threaded tokio runtime for netlink work.
pub fn run_in<T, F, Fut>(ns: Arc<File>, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T>>,
{
    std::thread::spawn(move || -> Result<T> {
        enter(&ns)?;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(f())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("thread working in namespace panicked"))?
}

/// The cookie of the calling thread's network namespace (`SO_NETNS_COOKIE`), as BPF programs see
/// it (`bpf_get_netns_cookie`).
pub fn cookie() -> Result<u64> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").context("opening a socket to read the namespace cookie")?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`.
    let rc = unsafe {
        libc::getsockopt(socket.as_raw_fd(), libc::SOL_SOCKET, SO_NETNS_COOKIE, (&mut cookie as *mut u64).cast(), &mut len)
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("reading the network namespace cookie");
    }
    Ok(cookie)
}

/// Where the cgroup v2 hierarchy is mounted (the first cgroup2 mount), if it is.
pub fn cgroup2_root() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mounts.lines().find_map(|line| {
        // "<id> <parent> <major:minor> <root> <mount point> <options> ... - <fstype> <source> ..."
        let (before, after) = line.split_once(" - ")?;
        if after.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        Some(PathBuf::from(before.split_whitespace().nth(4)?.replace("\\040", " ")))
    })
}
