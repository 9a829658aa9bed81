//! Services of the cluster (routing mesh) in etcd: `services/NAME` holds the service, and its VIP
//! is claimed beside the endpoints' addresses (`endpoints/NETWORK_ID/VIP`, no lease), so that no
//! endpoint on any node and no other service can take it. Both are written in one transaction.
use std::time::Duration;

use etcd_client::{Compare, CompareOp, Txn, TxnOp};

use super::{
    etcd::{encode, gets, records},
    keys, Membership,
};
use crate::store::shared::{BackendRecord, EndpointRecord, ServiceRecord, SharedError, SharedResult};

/// Tries of a backend change that met another node's change of the same service.
const CHANGE_TRIES: usize = 8;

/// The claim of a service's VIP.
fn vip_claim(service: &ServiceRecord) -> EndpointRecord {
    EndpointRecord {
        id: service.id.clone(),
        network_id: service.network_id.clone(),
        network: service.network.clone(),
        address: service.vip,
        mac: crate::ipam::mac_for(service.vip),
        node: String::new(),
        underlay: std::net::Ipv4Addr::UNSPECIFIED.into(),
        container_name: service.name.clone(),
        aliases: vec![],
        service: true,
    }
}

fn revision_of(done: &etcd_client::TxnResponse) -> i64 {
    done.header().map(|h| h.revision()).unwrap_or(0)
}

impl Membership {
    pub(super) async fn create_service_record(&self, service: ServiceRecord) -> SharedResult<i64> {
        let vip_key = keys::endpoint(&service.network_id, service.vip);
        let done = self
            .txn(
                Txn::new()
                    .when([
                        Compare::create_revision(keys::network(&service.network), CompareOp::Greater, 0),
                        Compare::create_revision(keys::service(&service.name), CompareOp::Equal, 0),
                        Compare::create_revision(vip_key.clone(), CompareOp::Equal, 0),
                    ])
                    .and_then([
                        TxnOp::put(keys::service(&service.name), encode(&service), None),
                        TxnOp::put(vip_key.clone(), encode(&vip_claim(&service)), None),
                    ])
                    .or_else([
                        TxnOp::get(keys::network(&service.network), None),
                        TxnOp::get(keys::service(&service.name), None),
                        TxnOp::get(vip_key, None),
                    ]),
            )
            .await?;
        if done.succeeded() {
            log::info!("cluster service {} defined: {}:{}/{}", service.name, service.vip, service.port, service.protocol);
            return Ok(revision_of(&done));
        }
        let found = gets(&done);
        let exists = |i: usize| found.get(i).is_some_and(|g| !g.kvs().is_empty());
        if !exists(0) {
            return Err(SharedError::NotFound(format!("overlay network {:?} is gone from the cluster", service.network)));
        }
        if exists(1) {
            return Err(SharedError::Conflict(format!("a service named {:?} exists already in the cluster", service.name)));
        }
        let holder: Option<EndpointRecord> = found.get(2).and_then(|g| records(g.kvs()).into_iter().next());
        Err(SharedError::Conflict(match holder {
            Some(h) if h.service => format!("address {} is the VIP of cluster service {}", service.vip, h.container_name),
            Some(h) => format!("address {} is in use on node {} ({})", service.vip, h.node, h.container_name),
            None => format!("address {} is taken", service.vip),
        }))
    }

    pub(super) async fn remove_service_record(&self, name: String) -> SharedResult<i64> {
        let found = self.txn(Txn::new().and_then([TxnOp::get(keys::service(&name), None)])).await?;
        let Some(kv) = gets(&found).first().and_then(|g| g.kvs().first().cloned()) else {
            return Err(SharedError::NotFound(format!("service {name:?} not found in the cluster")));
        };
        let service: ServiceRecord =
            serde_json::from_slice(kv.value()).map_err(|e| SharedError::Failed(anyhow::anyhow!("service {name:?} in etcd: {e}")))?;
        let done = self
            .txn(
                Txn::new()
                    .when([Compare::mod_revision(keys::service(&name), CompareOp::Equal, kv.mod_revision())])
                    .and_then([
                        TxnOp::delete(keys::service(&name), None),
                        TxnOp::delete(keys::endpoint(&service.network_id, service.vip), None),
                    ]),
            )
            .await?;
        if !done.succeeded() {
            return Err(SharedError::Conflict(format!("service {name:?} changed meanwhile on another node: try again")));
        }
        log::info!("cluster service {name} removed");
        Ok(revision_of(&done))
    }

    pub(super) async fn change_backends_record(
        &self,
        name: String,
        add: Vec<BackendRecord>,
        remove: Vec<BackendRecord>,
    ) -> SharedResult<(ServiceRecord, i64)> {
        for attempt in 0..CHANGE_TRIES {
            let found = self.txn(Txn::new().and_then([TxnOp::get(keys::service(&name), None)])).await?;
            let Some(kv) = gets(&found).first().and_then(|g| g.kvs().first().cloned()) else {
                return Err(SharedError::NotFound(format!("service {name:?} not found in the cluster")));
            };
            let mut service: ServiceRecord = serde_json::from_slice(kv.value())
                .map_err(|e| SharedError::Failed(anyhow::anyhow!("service {name:?} in etcd: {e}")))?;
            if let Some(b) = add.iter().find(|b| service.backends.contains(b)) {
                return Err(SharedError::Conflict(format!("{}:{} is already a backend of service {name:?}", b.address, b.port)));
            }
            if let Some(b) = remove.iter().find(|b| !service.backends.contains(b)) {
                return Err(SharedError::NotFound(format!("{}:{} is not a backend of service {name:?}", b.address, b.port)));
            }
            service.backends.retain(|b| !remove.contains(b));
            service.backends.extend(add.iter().copied());
            let done = self
                .txn(
                    Txn::new()
                        .when([Compare::mod_revision(keys::service(&name), CompareOp::Equal, kv.mod_revision())])
                        .and_then([TxnOp::put(keys::service(&name), encode(&service), None)]),
                )
                .await?;
            if done.succeeded() {
                return Ok((service, revision_of(&done)));
            }
            // Another node changed it between the read and the write: read it again.
            tokio::time::sleep(Duration::from_millis(5 << attempt.min(5))).await;
        }
        Err(SharedError::Conflict(format!("service {name:?} kept changing on other nodes: try again")))
    }
}
