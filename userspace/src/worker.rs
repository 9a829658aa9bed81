//! The worker: one thread with a single-threaded runtime where every change and the collector
//! run, and the way front-ends (the HTTP API, the Docker plugin) hand a change to it. Kept apart
//! from any front-end, so that none imports another.
use anyhow::{Context, Result};
use tokio::runtime::Handle;

use crate::daemon::{DaemonResult, Error};

/// Starts the worker. Kernel work can block a thread for seconds (detaching a TCX program waits
/// for the RTNL lock, which the kernel holds while it destroys many namespaces); on the worker
/// it delays only other changes, never the threads that answer reads.
pub fn start() -> Result<Handle> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let handle = rt.handle().clone();
    std::thread::Builder::new()
        .name("bpfnet-worker".into())
        .spawn(move || rt.block_on(std::future::pending::<()>()))
        .context("starting the worker thread")?;
    Ok(handle)
}

/// Runs a change on its own task on the worker: if the client goes away (Ctrl-C on the CLI),
/// hyper drops the handler, but a change half-way through must still finish or roll back.
pub async fn on_worker<T: Send + 'static>(
    worker: &Handle,
    request: impl std::future::Future<Output = DaemonResult<T>> + Send + 'static,
) -> DaemonResult<T> {
    match worker.spawn(request).await {
        Ok(result) => result,
        Err(e) => Err(Error::internal(anyhow::anyhow!("request task failed: {e}"))),
    }
}
