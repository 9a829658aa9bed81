//! Running code inside a network namespace: a thread that enters it (with bpfnet's own namespace
//! handling), so sockets it creates belong to that namespace while the rest of the process stays
//! where it is.
use anyhow::Result;

/// Runs `f` on a fresh thread inside namespace `name` (a name under /run/netns, a path or a PID)
/// and returns its result. Sockets created by `f` stay in that namespace when handed back.
pub fn within<T: Send + 'static>(name: &str, f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    let ns = bpfnet::netns::resolve(name)?;
    std::thread::spawn(move || {
        bpfnet::netns::enter(&ns.file)?;
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("thread in a namespace panicked"))?
}
