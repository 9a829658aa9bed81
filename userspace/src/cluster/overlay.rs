//! Overlay networks in etcd: their definitions, the claims of their addresses, and the watch that
//! brings every change to every node ([`Membership::watch`]).
//!
//! Every change is one transaction, so that two nodes acting at the same moment never both win:
//! a network is created only if `networks-epoch` is as read (any creation or removal changes it:
//! names, subnets and VNIs are checked against a list no other change slipped into); an address is
//! claimed only if its key does not exist and its network does (create-if-absent, as Calico claims
//! address blocks); a network is removed only if no key exists under its endpoints' prefix.
use std::{collections::BTreeMap, net::IpAddr, sync::Arc, time::Duration};

use etcd_client::{Compare, CompareOp, EventType, GetOptions, PutOptions, Txn, TxnOp, WatchOptions};
use futures::future::BoxFuture;

use super::{
    etcd::{encode, gets, records},
    keys, Membership,
};
use crate::store::shared::{BackendRecord, ClusterView, EndpointRecord, NetworkRecord, ServiceRecord, SharedError, SharedResult, SharedStore};

/// The first VNI handed out (Docker's overlay driver starts at 4096 too); each network takes the
/// next above the highest in use.
const FIRST_VNI: u32 = 4097;
/// VXLAN ids are 24 bits.
const MAX_VNI: u32 = (1 << 24) - 1;
/// How soon a broken watch is opened again, at first and at most.
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(2);
/// Tries of a network creation that met another change of the network list.
const CREATE_TRIES: usize = 5;

impl Membership {
    /// The lease this node's claims hang from.
    fn lease(&self) -> SharedResult<i64> {
        self.lease_id()
            .ok_or_else(|| SharedError::Unavailable("this node is not registered in the cluster yet (etcd out of reach?)".into()))
    }

    async fn create_network_record(&self, mut record: NetworkRecord) -> SharedResult<(u32, i64)> {
        for _ in 0..CREATE_TRIES {
            let read = self
                .txn(Txn::new().and_then([
                    TxnOp::get(keys::networks(), Some(GetOptions::new().with_prefix())),
                    TxnOp::get(keys::networks_epoch(), None),
                ]))
                .await?;
            let [list, epoch] = &gets(&read)[..] else {
                return Err(SharedError::Failed(anyhow::anyhow!("etcd answered a read of two with another count")));
            };
            let existing: Vec<NetworkRecord> = records(list.kvs());
            if existing.iter().any(|n| n.name == record.name) {
                return Err(SharedError::Conflict(format!("network with name {:?} already exists in the cluster", record.name)));
            }
            if let Some(other) = existing.iter().find(|n| crate::ipam::overlaps(&n.subnet, &record.subnet)) {
                return Err(SharedError::Conflict(format!(
                    "subnet {} overlaps overlay network {:?} ({}) of the cluster",
                    record.subnet, other.name, other.subnet
                )));
            }
            let v6_overlap = |n: &NetworkRecord| matches!((n.ipv6, record.ipv6), (Some(a), Some(b)) if crate::ipam::overlaps(&a.subnet, &b.subnet));
            if let Some(other) = existing.iter().find(|n| v6_overlap(n)) {
                return Err(SharedError::Conflict(format!("its IPv6 subnet overlaps overlay network {:?} of the cluster", other.name)));
            }
            record.vni = existing.iter().map(|n| n.vni + 1).max().unwrap_or(FIRST_VNI).max(FIRST_VNI);
            if record.vni > MAX_VNI {
                return Err(SharedError::Conflict("no VXLAN id is left (24 bits)".into()));
            }
            let unchanged = match epoch.kvs().first() {
                Some(kv) => Compare::mod_revision(keys::networks_epoch(), CompareOp::Equal, kv.mod_revision()),
                None => Compare::create_revision(keys::networks_epoch(), CompareOp::Equal, 0),
            };
            let done = self
                .txn(Txn::new().when([unchanged]).and_then([
                    TxnOp::put(keys::network(&record.name), encode(&record), None),
                    TxnOp::put(keys::networks_epoch(), "", None),
                ]))
                .await?;
            if done.succeeded() {
                log::info!("overlay network {} defined in the cluster: subnet {}, VNI {}", record.name, record.subnet, record.vni);
                return Ok((record.vni, done.header().map(|h| h.revision()).unwrap_or(0)));
            }
        }
        Err(SharedError::Conflict("the cluster's networks kept changing while this one was created: try again".into()))
    }

    async fn remove_network_record(&self, name: String, id: String) -> SharedResult<i64> {
        let no_endpoints = Compare::create_revision(keys::network_endpoints(&id), CompareOp::Equal, 0).with_prefix();
        let done = self
            .txn(
                Txn::new()
                    .when([no_endpoints, Compare::create_revision(keys::network(&name), CompareOp::Greater, 0)])
                    .and_then([TxnOp::delete(keys::network(&name), None), TxnOp::put(keys::networks_epoch(), "", None)])
                    .or_else([
                        TxnOp::get(keys::network_endpoints(&id), Some(GetOptions::new().with_prefix())),
                        TxnOp::get(keys::network(&name), None),
                    ]),
            )
            .await?;
        if done.succeeded() {
            log::info!("overlay network {name} removed from the cluster");
            return Ok(done.header().map(|h| h.revision()).unwrap_or(0));
        }
        let found = gets(&done);
        let holders: Vec<EndpointRecord> = found.first().map(|g| records(g.kvs())).unwrap_or_default();
        if !holders.is_empty() {
            let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
            let services: Vec<&str> = holders.iter().filter(|e| e.service).map(|e| e.container_name.as_str()).collect();
            if !services.is_empty() {
                return Err(SharedError::Conflict(format!(
                    "network {name:?} has cluster services: {}; remove them first",
                    services.join(", ")
                )));
            }
            for e in &holders {
                *per_node.entry(e.node.as_str()).or_default() += 1;
            }
            let list: Vec<String> = per_node.iter().map(|(node, n)| format!("{node} ({n})")).collect();
            return Err(SharedError::Conflict(format!(
                "network {name:?} has endpoints on other nodes: {}; disconnect them first",
                list.join(", ")
            )));
        }
        // Not in etcd any more: nothing to remove there.
        Ok(0)
    }

    async fn claim_record(&self, record: EndpointRecord) -> SharedResult<()> {
        let lease = self.lease()?;
        let key = keys::endpoint(&record.network_id, record.address);
        let done = self
            .txn(
                Txn::new()
                    .when([
                        Compare::create_revision(keys::network(&record.network), CompareOp::Greater, 0),
                        Compare::create_revision(key.clone(), CompareOp::Equal, 0),
                    ])
                    .and_then([TxnOp::put(key.clone(), encode(&record), Some(PutOptions::new().with_lease(lease)))])
                    .or_else([TxnOp::get(key.clone(), None), TxnOp::get(keys::network(&record.network), None)]),
            )
            .await?;
        if done.succeeded() {
            return Ok(());
        }
        let found = gets(&done);
        let holder: Option<EndpointRecord> = found.first().and_then(|g| records(g.kvs()).into_iter().next());
        match holder {
            // This endpoint's own claim (made before a restart), or the address this node reserved
            // for it: renewed under the current lease, as the endpoint's.
            Some(h) if (h.id == record.id || h.is_reservation()) && h.node == record.node => {
                let put = TxnOp::put(key, encode(&record), Some(PutOptions::new().with_lease(lease)));
                self.txn(Txn::new().and_then([put])).await?;
                Ok(())
            }
            Some(h) if h.service => {
                Err(SharedError::Conflict(format!("address {} is the VIP of cluster service {}", record.address, h.container_name)))
            }
            Some(h) => Err(SharedError::Conflict(format!(
                "address {} is in use on node {} ({})",
                record.address, h.node, h.container_name
            ))),
            None => Err(SharedError::NotFound(format!("overlay network {:?} is gone from the cluster", record.network))),
        }
    }

    async fn release_record(&self, network_id: String, address: IpAddr, endpoint_id: String) -> SharedResult<()> {
        let key = keys::endpoint(&network_id, address);
        let found = self.txn(Txn::new().and_then([TxnOp::get(key.clone(), None)])).await?;
        let Some(kv) = gets(&found).first().and_then(|g| g.kvs().first().cloned()) else { return Ok(()) };
        let ours = serde_json::from_slice::<EndpointRecord>(kv.value()).is_ok_and(|r| r.id == endpoint_id && r.node == self.config.node);
        if ours {
            // Only the claim as read: one made meanwhile by another node stays.
            let same = Compare::mod_revision(key.clone(), CompareOp::Equal, kv.mod_revision());
            self.txn(Txn::new().when([same]).and_then([TxnOp::delete(key, None)])).await?;
        }
        Ok(())
    }

    /// Everything under the overlay prefixes, and the revision it was read at.
    async fn read_all(&self) -> SharedResult<(BTreeMap<String, Vec<u8>>, i64)> {
        let read = self
            .txn(Txn::new().and_then([
                TxnOp::get(keys::networks(), Some(GetOptions::new().with_prefix())),
                TxnOp::get(keys::endpoints(), Some(GetOptions::new().with_prefix())),
                TxnOp::get(keys::services(), Some(GetOptions::new().with_prefix())),
                TxnOp::get(keys::alive_nodes(), Some(GetOptions::new().with_prefix())),
            ]))
            .await?;
        let revision = read.header().map(|h| h.revision()).unwrap_or(0);
        let mut all = BTreeMap::new();
        for g in gets(&read) {
            for kv in g.kvs() {
                all.insert(String::from_utf8_lossy(kv.key()).into_owned(), kv.value().to_vec());
            }
        }
        Ok((all, revision))
    }

    /// Keeps `view` equal to what etcd holds of overlay networks, endpoints, services and live
    /// nodes: reads it all, then follows the changes from the next revision; after a broken
    /// watch, resumes from the last revision seen, and reads it all again when that revision has
    /// been compacted away. While etcd is out of reach `view` keeps the last state (forwarding
    /// goes on with it).
    pub async fn watch(self: Arc<Self>, view: tokio::sync::watch::Sender<Option<ClusterView>>) {
        let mut known: Option<(BTreeMap<String, Vec<u8>>, i64)> = None;
        // After a failure: soon (a dead member's stream is resumed on another at once), then
        // less often while etcd stays out of reach.
        let mut backoff = RETRY_FIRST;
        loop {
            let (mut all, mut revision) = match known.take() {
                Some(k) => k,
                None => match self.read_all().await {
                    Ok(read) => {
                        view.send_replace(Some(view_of(&read.0, read.1)));
                        read
                    }
                    Err(_) => {
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(RETRY_MAX);
                        continue;
                    }
                },
            };
            let options = WatchOptions::new().with_prefix().with_start_revision(revision + 1);
            let mut stream = match self.client.clone().watch(keys::ROOT, Some(options)).await {
                Ok(stream) => stream,
                Err(e) => {
                    self.shared.unreachable(&e);
                    known = Some((all, revision));
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(RETRY_MAX);
                    continue;
                }
            };
            loop {
                match stream.message().await {
                    Ok(Some(response)) => {
                        if response.canceled() {
                            if response.compact_revision() > 0 {
                                log::warn!(
                                    "etcd compacted past revision {revision} while this node was away: reading everything again"
                                );
                            }
                            break;
                        }
                        self.shared.reached();
                        backoff = RETRY_FIRST;
                        let mut changed = false;
                        for event in response.events() {
                            let Some(kv) = event.kv() else { continue };
                            let key = String::from_utf8_lossy(kv.key()).into_owned();
                            if !viewed(&key) {
                                continue;
                            }
                            changed = true;
                            match event.event_type() {
                                EventType::Put => all.insert(key, kv.value().to_vec()),
                                EventType::Delete => all.remove(&key),
                            };
                        }
                        if let Some(header) = response.header() {
                            revision = revision.max(header.revision());
                        }
                        if changed {
                            view.send_replace(Some(view_of(&all, revision)));
                        }
                    }
                    Ok(None) | Err(_) => {
                        // The member went away or lost its leader: resume where this left off.
                        log::info!("etcd: the cluster watch ended; it resumes after revision {revision}");
                        self.shared.unreachable(&etcd_client::Error::WatchError("the watch ended".into()));
                        known = Some((all, revision));
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(RETRY_MAX);
                        break;
                    }
                }
            }
        }
    }
}

/// Whether a key is part of what [`ClusterView`] shows.
fn viewed(key: &str) -> bool {
    [keys::networks(), keys::endpoints(), keys::services(), keys::alive_nodes()].iter().any(|prefix| key.starts_with(prefix))
}

fn view_of(all: &BTreeMap<String, Vec<u8>>, revision: i64) -> ClusterView {
    let mut view = ClusterView { revision, ..Default::default() };
    for (key, value) in all {
        if key.starts_with(&keys::networks()) {
            if let Ok(n) = serde_json::from_slice(value) {
                view.networks.push(n);
            }
        } else if key.starts_with(&keys::endpoints()) {
            // A service's VIP is no endpoint: it comes with its service.
            if let Ok(e) = serde_json::from_slice::<EndpointRecord>(value) {
                if !e.service {
                    view.endpoints.push(e);
                }
            }
        } else if key.starts_with(&keys::services()) {
            if let Ok(s) = serde_json::from_slice(value) {
                view.services.push(s);
            }
        } else if key.starts_with(&keys::alive_nodes()) {
            if let Ok(n) = serde_json::from_slice::<keys::NodeRecord>(value) {
                view.nodes.insert(n.name, n.underlay);
            }
        }
    }
    view
}

impl SharedStore for Membership {
    fn node(&self) -> &str {
        &self.config.node
    }
    fn underlay(&self) -> IpAddr {
        self.underlay
    }
    fn reachable(&self) -> bool {
        self.status().reachable
    }
    fn create_network(&self, network: NetworkRecord) -> BoxFuture<'_, SharedResult<(u32, i64)>> {
        Box::pin(self.create_network_record(network))
    }
    fn remove_network(&self, name: String, id: String) -> BoxFuture<'_, SharedResult<i64>> {
        Box::pin(self.remove_network_record(name, id))
    }
    fn claim(&self, endpoint: EndpointRecord) -> BoxFuture<'_, SharedResult<()>> {
        Box::pin(self.claim_record(endpoint))
    }
    fn release(&self, network_id: String, address: IpAddr, endpoint_id: String) -> BoxFuture<'_, SharedResult<()>> {
        Box::pin(self.release_record(network_id, address, endpoint_id))
    }
    fn create_service(&self, service: ServiceRecord) -> BoxFuture<'_, SharedResult<i64>> {
        Box::pin(self.create_service_record(service))
    }
    fn remove_service(&self, name: String) -> BoxFuture<'_, SharedResult<i64>> {
        Box::pin(self.remove_service_record(name))
    }
    fn change_backends(
        &self,
        name: String,
        add: Vec<BackendRecord>,
        remove: Vec<BackendRecord>,
    ) -> BoxFuture<'_, SharedResult<(ServiceRecord, i64)>> {
        Box::pin(self.change_backends_record(name, add, remove))
    }
}
