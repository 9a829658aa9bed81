//! A node's membership: its record in etcd, a lease that keeps it alive, and what `node ls` and
//! `node rm` read and change.
//!
//! A node registers `nodes/NODE` (permanent: `node ls` shows a dead node as `down` until `node rm`)
//! and `alive/NODE` under its lease; its overlay endpoints will hang from the same lease, so they
//! leave every other node when the lease expires. A restarted daemon finds its `alive/NODE` and
//! resumes the lease it holds: other nodes never see it leave. Stopping the daemon never revokes
//! the lease, for the same reason. A name held by a live node on another underlay address is
//! refused: two hosts must not share a name.
use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant},
};

use etcd_client::{Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};

use super::{
    etcd::{self, gets},
    keys,
    keys::NodeRecord,
    ClusterConfig,
};
use crate::{
    api,
    store::shared::{EndpointRecord, SharedError as Error, SharedResult},
};

/// How long a start waits for etcd before going on without it.
const START_WAIT: Duration = Duration::from_secs(5);

pub struct Membership {
    pub(super) config: ClusterConfig,
    pub(super) underlay: IpAddr,
    pub(super) client: Client,
    pub(super) shared: Arc<Shared>,
    keeper: tokio::task::JoinHandle<()>,
}

/// What the keeper task and the API share.
pub(super) struct Shared {
    health: RwLock<Health>,
    /// The last list read from etcd, shown (marked stale) while etcd cannot be read.
    last_list: Mutex<Option<(Instant, Vec<api::Node>)>>,
}

struct Health {
    reachable: bool,
    since: Instant,
    error: Option<String>,
    /// The lease this node's records hang from, while it lives.
    lease: Option<i64>,
}

impl Shared {
    pub(super) fn reached(&self) {
        let mut h = self.health.write().unwrap_or_else(|e| e.into_inner());
        if !h.reachable {
            log::info!("etcd answers again");
            h.since = Instant::now();
        }
        h.reachable = true;
        if h.lease.is_some() {
            h.error = None;
        }
    }

    pub(super) fn unreachable(&self, e: &etcd_client::Error) {
        let mut h = self.health.write().unwrap_or_else(|e| e.into_inner());
        if h.reachable {
            log::warn!("etcd is out of reach: {}; forwarding goes on with what is known, cluster changes wait", etcd::describe(e));
            h.since = Instant::now();
        }
        h.reachable = false;
        h.error = Some(etcd::describe(e));
    }

    /// `e` as the API answers it: unreachable etcd is 503 (and is noted), the rest internal.
    pub(super) fn failed(&self, e: etcd_client::Error) -> Error {
        if etcd::is_unreachable(&e) {
            self.unreachable(&e);
            Error::Unavailable(format!("the cluster's etcd is out of reach: {}", etcd::describe(&e)))
        } else {
            Error::Failed(anyhow::anyhow!("etcd: {}", etcd::describe(&e)))
        }
    }
}

/// Why a registration did not happen.
enum Refused {
    /// Another live node holds the name.
    NameTaken(String),
    Etcd(etcd_client::Error),
}

impl From<etcd_client::Error> for Refused {
    fn from(e: etcd_client::Error) -> Self {
        Self::Etcd(e)
    }
}

/// Whether `e` is etcd saying the lease is gone (expired or revoked).
fn lease_gone(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::LeaseKeepAliveError(m) if m.contains("not found"))
        || matches!(e, etcd_client::Error::GRpcStatus(s) if s.message().contains("requested lease not found"))
}

impl Membership {
    /// Joins the cluster as `config.node`, reachable at `underlay`. Refuses a name another live
    /// node holds. When etcd cannot be reached the daemon starts anyway (its local networks do
    /// not need etcd) and registers as soon as etcd answers.
    pub async fn start(config: ClusterConfig, underlay: IpAddr) -> anyhow::Result<Self> {
        crate::ipam::validate_name("node", &config.node)?;
        let client = etcd::connect(&config.etcd).await?;
        let shared = Arc::new(Shared {
            health: RwLock::new(Health { reachable: true, since: Instant::now(), error: None, lease: None }),
            last_list: Mutex::new(None),
        });
        let ttl = config.lease_ttl;
        // Bounded: a start must not wait on unreachable members' timeouts one after another.
        let first = tokio::time::timeout(START_WAIT, register(&client, &config.node, underlay, ttl))
            .await
            .unwrap_or_else(|_| Err(Refused::Etcd(etcd_client::Error::LeaseKeepAliveError("no answer".into()))));
        match first {
            Ok(lease) => {
                log::info!(
                    "node {:?} ({underlay}) registered in the cluster at {} (lease {lease:x}, {} s)",
                    config.node,
                    config.etcd.join(","),
                    ttl.as_secs()
                );
                shared.health.write().unwrap_or_else(|e| e.into_inner()).lease = Some(lease);
            }
            Err(Refused::NameTaken(why)) => anyhow::bail!("{why}"),
            Err(Refused::Etcd(e)) if etcd::is_unreachable(&e) => {
                shared.unreachable(&e);
                log::warn!("node {:?} registers when etcd ({}) answers", config.node, config.etcd.join(","));
            }
            Err(Refused::Etcd(e)) => anyhow::bail!("registering node {:?} in etcd: {}", config.node, etcd::describe(&e)),
        }
        let keeper = tokio::spawn(keep(client.clone(), config.node.clone(), underlay, ttl, shared.clone()));
        Ok(Self { config, underlay, client, shared, keeper })
    }

    /// One transaction; its outcome tells the node's health (etcd reachable or not).
    pub(super) async fn txn(&self, txn: Txn) -> SharedResult<etcd_client::TxnResponse> {
        let response = etcd::txn(&self.client, txn).await.map_err(|e| self.shared.failed(e))?;
        self.shared.reached();
        Ok(response)
    }

    /// The lease this node's records hang from, while it lives.
    pub(super) fn lease_id(&self) -> Option<i64> {
        self.shared.health.read().unwrap_or_else(|e| e.into_inner()).lease
    }

    /// How this node stands (`stats`).
    pub fn status(&self) -> api::ClusterStatus {
        let h = self.shared.health.read().unwrap_or_else(|e| e.into_inner());
        api::ClusterStatus {
            node: self.config.node.clone(),
            underlay: self.underlay.to_string(),
            etcd: self.config.etcd.clone(),
            reachable: h.reachable,
            since_s: h.since.elapsed().as_secs(),
            error: h.error.clone(),
            registered: h.lease.is_some(),
        }
    }

    /// `node ls`: every node etcd knows, read in one transaction; while etcd cannot be read, the
    /// last list read, marked stale.
    pub async fn list(&self) -> SharedResult<api::Nodes> {
        let prefix = || Some(GetOptions::new().with_prefix());
        let read = etcd::txn(
            &self.client,
            Txn::new().and_then([
                TxnOp::get(keys::nodes(), prefix()),
                TxnOp::get(keys::alive_nodes(), Some(GetOptions::new().with_prefix().with_keys_only())),
                TxnOp::get(keys::endpoints(), prefix()),
            ]),
        )
        .await;
        let response = match read {
            Ok(response) => response,
            Err(e) => {
                let error = self.shared.failed(e);
                let last = self.shared.last_list.lock().unwrap_or_else(|e| e.into_inner()).clone();
                return match last {
                    Some((when, nodes)) if matches!(error, Error::Unavailable(_)) => {
                        Ok(api::Nodes { cluster: self.status(), stale_s: Some(when.elapsed().as_secs()), nodes })
                    }
                    _ => Err(error),
                };
            }
        };
        self.shared.reached();
        let [records, alive, endpoints] = &gets(&response)[..] else {
            return Err(Error::Failed(anyhow::anyhow!("etcd answered 3 reads with another count")));
        };
        let alive: Vec<&str> = alive.kvs().iter().filter_map(|kv| keys::name_under(kv.key(), &keys::alive_nodes())).collect();
        let mut per_node: HashMap<String, u64> = HashMap::new();
        for e in etcd::records::<EndpointRecord>(endpoints.kvs()) {
            *per_node.entry(e.node).or_default() += 1;
        }
        let nodes: Vec<api::Node> = etcd::records::<NodeRecord>(records.kvs())
            .into_iter()
            .map(|record| api::Node {
                state: if alive.contains(&record.name.as_str()) { "up" } else { "down" }.into(),
                endpoints: per_node.get(&record.name).copied().unwrap_or(0),
                last_seen: record.last_seen,
                this_node: record.name == self.config.node,
                underlay: record.underlay.to_string(),
                version: record.version,
                name: record.name,
            })
            .collect();
        *self.shared.last_list.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), nodes.clone()));
        Ok(api::Nodes { cluster: self.status(), stale_s: None, nodes })
    }

    /// `node rm NAME`: forgets a node that is down (its lease has expired; what hung from it went
    /// with it). A node that is up is refused: its daemon would only register again.
    pub async fn remove(&self, name: &str) -> SharedResult<()> {
        if name == self.config.node {
            return Err(Error::Conflict(format!("node {name:?} is this daemon's own node: run `node rm` on another node")));
        }
        let txn = Txn::new()
            .when([
                Compare::create_revision(keys::alive(name), CompareOp::Equal, 0),
                Compare::create_revision(keys::node(name), CompareOp::Greater, 0),
            ])
            // Its addresses hung from its lease: they went with it.
            .and_then([TxnOp::delete(keys::node(name), None)])
            .or_else([TxnOp::get(keys::alive(name), None), TxnOp::get(keys::node(name), None)]);
        let response = self.txn(txn).await?;
        if response.succeeded() {
            log::info!("node {name:?} removed from the cluster");
            return Ok(());
        }
        let found: Vec<bool> = gets(&response).iter().map(|g| !g.kvs().is_empty()).collect();
        match found[..] {
            [true, _] => Err(Error::Conflict(format!(
                "node {name:?} is up (its lease is alive): stop its daemon first; once its lease expires \
                 (--cluster-lease-ttl after its last renewal) `node rm` removes it"
            ))),
            _ => Err(Error::NotFound(format!("no node {name:?} in the cluster"))),
        }
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        // The lease is left to live: a restart within its TTL keeps this node's records.
        self.keeper.abort();
    }
}

/// Registers `node` at `underlay`: resumes the lease of its live record when that record is ours
/// (same underlay address: a restart), else takes a new lease; then writes both records in one
/// transaction that fails if anyone changed `alive/NODE` meanwhile.
async fn register(client: &Client, node: &str, underlay: IpAddr, ttl: Duration) -> Result<i64, Refused> {
    let alive_key = keys::alive(node);
    let found = etcd::retrying(client, |mut c| {
        let key = alive_key.clone();
        async move { c.get(key, None).await }
    })
    .await?;
    let existing = found.kvs().first();
    let mut lease = None;
    if let Some(kv) = existing {
        match serde_json::from_slice::<NodeRecord>(kv.value()) {
            Ok(r) if r.underlay != underlay => {
                return Err(Refused::NameTaken(format!(
                    "node name {node:?} is held by a live node at {} (last seen {} s ago): give this node another \
                     --node, or stop that one and wait for its lease to expire",
                    r.underlay,
                    keys::unix_now().saturating_sub(r.last_seen)
                )));
            }
            _ => match client.clone().lease_keep_alive(kv.lease()).await {
                Ok(_) => lease = Some(kv.lease()),
                Err(e) if lease_gone(&e) => {}
                Err(e) => return Err(e.into()),
            },
        }
    }
    let lease = match lease {
        Some(lease) => {
            log::info!("node {node:?} resumes its lease {lease:x}: other nodes did not see it leave");
            lease
        }
        None => {
            let secs = ttl.as_secs().max(1) as i64;
            etcd::retrying(client, |mut c| async move { c.lease_grant(secs, None).await }).await?.id()
        }
    };
    let value = etcd::encode(&NodeRecord::now(node, underlay));
    let unchanged = match existing {
        Some(kv) => Compare::mod_revision(alive_key.clone(), CompareOp::Equal, kv.mod_revision()),
        None => Compare::create_revision(alive_key.clone(), CompareOp::Equal, 0),
    };
    let txn = Txn::new().when([unchanged]).and_then([
        TxnOp::put(keys::node(node), value.clone(), None),
        TxnOp::put(alive_key, value, Some(PutOptions::new().with_lease(lease))),
    ]);
    let done = etcd::txn(client, txn).await?;
    if !done.succeeded() {
        return Err(Refused::NameTaken(format!("another daemon registered node {node:?} at the same moment")));
    }
    Ok(lease)
}

/// Keeps the node's lease alive (renewed three times per TTL, at most every 10 s) and its record's
/// `last_seen` current; registers again when the lease was lost (etcd out of reach for longer
/// than the TTL) or was never taken (etcd out of reach at start).
async fn keep(client: Client, node: String, underlay: IpAddr, ttl: Duration, shared: Arc<Shared>) {
    let period = (ttl / 3).clamp(Duration::from_millis(500), Duration::from_secs(10));
    loop {
        tokio::time::sleep(period).await;
        let lease = shared.health.read().unwrap_or_else(|e| e.into_inner()).lease;
        let Some(lease) = lease else {
            match register(&client, &node, underlay, ttl).await {
                Ok(lease) => {
                    log::info!("node {node:?} ({underlay}) registered in the cluster (lease {lease:x})");
                    shared.health.write().unwrap_or_else(|e| e.into_inner()).lease = Some(lease);
                    shared.reached();
                }
                Err(Refused::NameTaken(why)) => {
                    log::error!("{why}");
                    shared.reached();
                    shared.health.write().unwrap_or_else(|e| e.into_inner()).error = Some(why);
                }
                Err(Refused::Etcd(e)) => shared.unreachable(&e),
            }
            continue;
        };
        let renewed = tokio::time::timeout(etcd::REQUEST_TIMEOUT, client.clone().lease_keep_alive(lease)).await;
        match renewed {
            Ok(Ok(_)) => {
                shared.reached();
                let value = etcd::encode(&NodeRecord::now(&node, underlay));
                // The permanent record only: `alive/NODE` stays as written, so watchers of it see
                // a node come and go, not every renewal.
                if let Err(e) = client.clone().put(keys::node(&node), value, None).await {
                    shared.unreachable(&e);
                }
            }
            Ok(Err(e)) if lease_gone(&e) => {
                log::warn!("node {node:?}'s lease has expired (etcd out of reach longer than the TTL, or `node rm`): registering again");
                shared.health.write().unwrap_or_else(|e| e.into_inner()).lease = None;
            }
            Ok(Err(e)) => shared.unreachable(&e),
            Err(_) => shared.unreachable(&etcd_client::Error::LeaseKeepAliveError("no answer to the lease's renewal".into())),
        }
    }
}
