//! The daemon process around the core: takes its locks, starts the `Daemon` on the worker, joins
//! and follows the cluster, starts the front-ends (the HTTP API of `crate::server`, the Docker
//! plugin, DNS, metrics), runs the tickers (endpoints whose namespace has gone, addresses, drains,
//! claims; expired connections), and stops on SIGTERM/SIGINT leaving the datapath up.
use std::{sync::Arc, time::Duration};

use anyhow::{Context, Result};
use tokio::{runtime::Handle, signal::unix::SignalKind, sync::Mutex};

pub use crate::limits::Limits;

use crate::{
    api, bpffs,
    cluster::Membership,
    conntrack::{self, Conntrack},
    daemon::{self, Config, Daemon},
    datapath::Counters,
    limits,
    plumbing::Netlink,
    server::{self, socket, App},
    worker,
};

/// How often the collector looks for endpoints whose namespace has gone.
const COLLECT_EVERY: Duration = Duration::from_secs(2);
/// How often expired connections are removed from the connection table.
const EXPIRE_EVERY: Duration = Duration::from_secs(5);

/// Holds an exclusive lock on a directory (flock on the directory itself) while it is kept.
/// The daemon locks its state directory and its bpffs directory: two daemons sharing either would
/// undo each other's work (each reconciles the pinned maps to its own state).
fn lock_dir(dir: &std::path::Path, what: &str) -> Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(dir).with_context(|| format!("opening {}", dir.display()))?;
    // SAFETY: flock on an fd we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        anyhow::bail!("another bpfnet daemon is using the {what} {}", dir.display());
    }
    Ok(file)
}

fn lock_dirs(config: &Config) -> Result<(std::fs::File, std::fs::File)> {
    crate::state::make_private_dir(&config.state_dir)?;
    let state = lock_dir(&config.state_dir, "state directory")?;
    bpffs::ensure(&config.bpffs)?;
    let pins = lock_dir(&config.bpffs, "bpffs directory")?;
    Ok((state, pins))
}

/// Runs the daemon until SIGTERM or SIGINT. The caller has already entered the right namespace.
pub async fn run(config: Config, limits: Limits) -> Result<()> {
    let began = std::time::Instant::now();
    limits::raise_fd_limit();
    // Checked before touching anything, so a refused start changes nothing.
    socket::check_free(&config.socket)?;
    let _locks = lock_dirs(&config)?;
    let worker = worker::start()?;
    let daemon = {
        let config = config.clone();
        worker.spawn(async move { Daemon::start(&config).await }).await??
    };
    let published = daemon.published();
    let uplinks = Arc::new(std::sync::RwLock::new(daemon.uplinks()));
    let counters = Arc::new(Counters::open(&config.bpffs)?);
    let conntrack = Arc::new(std::sync::Mutex::new(Conntrack::open(&config.bpffs)?));
    let cluster = match &config.cluster {
        Some(cluster) => Some(Arc::new(join_cluster(cluster, &daemon.uplinks()).await?)),
        None => None,
    };
    let daemon = Arc::new(Mutex::new(daemon));
    let cluster_sync = match &cluster {
        Some(cluster) => {
            let (mtu, encap) = config.cluster.as_ref().map_or((None, true), |c| (c.overlay_mtu, c.encap_in_datapath));
            Some(follow_cluster(cluster.clone(), daemon.clone(), &worker, mtu, encap).await?)
        }
        None => None,
    };
    let recorder = crate::metrics::Recorder::default();
    let bound = socket::bind(&config.socket)?;
    let dns = config.dns.enabled.then(|| crate::dns::spawn(published.clone(), config.dns.clone()));
    let plugin = match &config.docker_plugin {
        Some(dir) => Some(serve_docker_plugin(dir, daemon.clone(), worker.clone(), limits, recorder.clone())?),
        None => None,
    };
    log::info!(
        "daemon ready in {} ms, API on {} (at most {} connections, {} s per request head or body)",
        began.elapsed().as_millis(),
        config.socket.display(),
        limits.max_connections,
        limits.client_timeout.as_secs_f32()
    );

    // A container that exits takes its namespace and veth with it: notice and free its address.
    // The same tick follows the namespace's addresses (an uplink's new address, say).
    let collector = {
        let (daemon, published, uplinks) = (daemon.clone(), published.clone(), uplinks.clone());
        worker.spawn(async move {
            let netlink = match Netlink::connect() {
                Ok(netlink) => netlink,
                Err(e) => return log::error!("the collector cannot open netlink: {e:#}"),
            };
            let mut tick = tokio::time::interval(COLLECT_EVERY);
            loop {
                tick.tick().await;
                if let Err(e) = daemon::collect_gone_endpoints(&daemon, &published, &netlink).await {
                    log::warn!("checking endpoints failed: {e:#}");
                }
                let mut d = daemon.lock().await;
                if let Err(e) = d.refresh_addresses().await {
                    log::warn!("following the namespace's addresses failed: {e:#}");
                }
                d.finish_drains();
                d.reconcile_claims().await;
                *uplinks.write().unwrap_or_else(|e| e.into_inner()) = d.uplinks();
            }
        })
    };

    // The datapath stamps deadlines; removing connections past theirs is the daemon's job.
    let expirer = {
        let ct = conntrack.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(EXPIRE_EVERY);
            loop {
                tick.tick().await;
                let ct = ct.clone();
                let removed = tokio::task::spawn_blocking(move || {
                    ct.lock().unwrap_or_else(|e| e.into_inner()).expire(conntrack::now_ns())
                })
                .await
                .unwrap_or(0);
                if removed > 0 {
                    log::debug!("connection table: {removed} expired entries removed");
                }
            }
        })
    };

    let mut term = tokio::signal::unix::signal(SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(SignalKind::interrupt())?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    };
    let metrics = match config.metrics {
        Some(addr) => {
            let sources = crate::metrics::Sources {
                published: published.clone(),
                counters: counters.clone(),
                conntrack: conntrack.clone(),
                recorder: recorder.clone(),
            };
            Some(crate::metrics::serve(addr, sources).await?)
        }
        None => None,
    };
    let app = App { recorder, daemon: daemon.clone(), worker, published, counters, conntrack, uplinks, cluster };
    limits::serve(bound.listener, server::router(app), &limits, shutdown).await;
    // Changes run to completion on their own tasks; taking the lock waits for the one in progress
    // (those queued behind it never start), and stops the collector between two batches. Idle
    // client connections are simply dropped with the process.
    let guard = daemon.lock().await;
    collector.abort();
    expirer.abort();
    if let Some(tasks) = cluster_sync {
        for task in tasks {
            task.abort();
        }
    }
    if let Some(dns) = dns {
        dns.abort();
    }
    if let Some(metrics) = metrics {
        metrics.abort();
    }
    socket::remove_if_ours(&config.socket, bound.inode);
    if let Some((task, path, inode)) = plugin {
        task.abort();
        socket::remove_if_ours(&path, inode);
    }
    drop(guard);
    log::info!("daemon stopped; the datapath stays attached and keeps forwarding");
    Ok(())
}

/// Registers this node in its cluster, reachable at `--underlay-address` or else its uplink's
/// address.
async fn join_cluster(config: &crate::cluster::ClusterConfig, uplinks: &[api::Uplink]) -> Result<Membership> {
    let underlay = match config.underlay {
        Some(address) => address,
        None => match uplinks.first() {
            Some(uplink) => uplink.address.parse().with_context(|| format!("the uplink {}'s address {:?}", uplink.interface, uplink.address))?,
            None => anyhow::bail!(
                "a cluster node needs an underlay address, where other nodes reach it: give --underlay-address, or an \
                 --uplink with an IPv4 address"
            ),
        },
    };
    Membership::start(config.clone(), underlay).await
}

/// Readies this node for overlay networks, then keeps it in line with the cluster: a watch of
/// etcd (on this runtime) hands each new view to the daemon (on the worker, under its lock).
async fn follow_cluster(
    cluster: Arc<Membership>,
    daemon: Arc<Mutex<Daemon>>,
    worker: &Handle,
    overlay_mtu: Option<u32>,
    encap_in_datapath: bool,
) -> Result<Vec<tokio::task::JoinHandle<()>>> {
    let store: Arc<dyn crate::store::shared::SharedStore> = cluster.clone();
    {
        let daemon = daemon.clone();
        worker.spawn(async move { daemon.lock().await.enable_overlay(store, overlay_mtu, encap_in_datapath).await }).await??;
    }
    let (views, mut view) = tokio::sync::watch::channel(None);
    let watch = tokio::spawn(cluster.watch(views));
    let sync = worker.spawn(async move {
        while view.changed().await.is_ok() {
            let latest = view.borrow_and_update().clone();
            if let Some(latest) = latest {
                daemon.lock().await.sync_cluster(latest).await;
            }
        }
    });
    Ok(vec![watch, sync])
}

/// Serves the Docker plugin's socket in `dir` (made if missing) until the returned task is
/// aborted; also returns the socket's path and inode, for its removal.
fn serve_docker_plugin(
    dir: &std::path::Path,
    daemon: Arc<Mutex<Daemon>>,
    worker: Handle,
    limits: Limits,
    recorder: crate::metrics::Recorder,
) -> Result<(tokio::task::JoinHandle<()>, std::path::PathBuf, u64)> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating the Docker plugin folder {}", dir.display()))?;
    let path = crate::docker::socket_path(dir);
    socket::check_free(&path)?;
    let bound = socket::bind(&path)?;
    log::info!("Docker network plugin {:?} on {}", crate::docker::PLUGIN_NAME, path.display());
    let router = crate::docker::router(daemon, worker, recorder);
    let task = tokio::spawn(async move { limits::serve(bound.listener, router, &limits, std::future::pending()).await });
    Ok((task, path, bound.inode))
}

pub async fn cleanup(config: Config) -> Result<()> {
    let locks = lock_dirs(&config)?;
    daemon::cleanup(&config).await?;
    drop(locks);
    socket::remove_if_stale(&config.socket);
    std::fs::remove_file(config.state_dir.join("lock")).ok(); // left by earlier versions
    std::fs::remove_dir(&config.state_dir).ok(); // only if nothing else lives there
    bpffs::remove_all(&config.bpffs)?;
    Ok(())
}
