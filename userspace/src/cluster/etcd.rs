//! The etcd client as bpfnet uses it.
//!
//! - Every request has a time limit: the client has none by default, and without quorum etcd
//!   itself answers only after 7 s.
//! - `require_leader`: a member that has lost its leader refuses at once ("no leader") instead of
//!   serving stale reads or holding writes; an open watch is ended the same way, so the daemon
//!   learns that the cluster is gone.
//! - The client spreads requests over the members and does not avoid a dead one: a request that
//!   meets a dead member is tried again (the next try goes to another member).
use std::{future::Future, time::Duration};

use etcd_client::{Client, ConnectOptions};

/// Time limit of one request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Tries of a request that met an unreachable member: with one member of three down, about a
/// third of the tries meet it (the client does not avoid it), so a few are needed for a request
/// to fail only when etcd as a whole is gone; and no more than [`RETRY_WINDOW`] in all.
const TRIES: usize = 8;
const RETRY_WINDOW: Duration = Duration::from_secs(10);

/// A client of the members at `urls` (connections are made lazily, per request).
pub async fn connect(urls: &[String]) -> anyhow::Result<Client> {
    let options = ConnectOptions::new()
        .with_connect_timeout(CONNECT_TIMEOUT)
        .with_timeout(REQUEST_TIMEOUT)
        .with_require_leader(true)
        .with_keep_alive(Duration::from_secs(5), Duration::from_secs(2));
    Ok(Client::connect(urls, Some(options)).await?)
}

/// Whether `e` says a member (or the whole cluster) could not be reached, rather than that the
/// request was refused: worth another try, and what `stats` calls "unreachable".
pub fn is_unreachable(e: &etcd_client::Error) -> bool {
    use etcd_client::Error as E;
    match e {
        E::GRpcStatus(status) => matches!(
            status.code(),
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled | tonic::Code::Unknown
        ),
        E::TransportError(_) | E::IoError(_) | E::LeaseKeepAliveError(_) | E::WatchError(_) => true,
        _ => false,
    }
}

/// Runs `request` with a fresh handle of `client`, again (up to [`TRIES`] times, within
/// [`RETRY_WINDOW`]) while it meets unreachable members.
pub async fn retrying<T, F, Fut>(client: &Client, mut request: F) -> Result<T, etcd_client::Error>
where
    F: FnMut(Client) -> Fut,
    Fut: Future<Output = Result<T, etcd_client::Error>>,
{
    let started = std::time::Instant::now();
    let mut tries = 0;
    loop {
        tries += 1;
        match request(client.clone()).await {
            Err(e) if tries < TRIES && started.elapsed() < RETRY_WINDOW && is_unreachable(&e) => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            result => return result,
        }
    }
}

/// One transaction, [`retrying`].
pub async fn txn(client: &Client, txn: etcd_client::Txn) -> Result<etcd_client::TxnResponse, etcd_client::Error> {
    retrying(client, |mut c| {
        let txn = txn.clone();
        async move { c.txn(txn).await }
    })
    .await
}

/// A record as stored (JSON).
pub fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("records serialize")
}

/// The records of a `get` answer (those that do not parse are skipped, with a warning).
pub fn records<T: serde::de::DeserializeOwned>(kvs: &[etcd_client::KeyValue]) -> Vec<T> {
    kvs.iter()
        .filter_map(|kv| match serde_json::from_slice(kv.value()) {
            Ok(r) => Some(r),
            Err(e) => {
                log::warn!("etcd: skipping {}: {e}", String::from_utf8_lossy(kv.key()));
                None
            }
        })
        .collect()
}

/// The answers of a transaction's reads, in order.
pub fn gets(response: &etcd_client::TxnResponse) -> Vec<etcd_client::GetResponse> {
    response
        .op_responses()
        .into_iter()
        .filter_map(|r| match r {
            etcd_client::TxnOpResponse::Get(g) => Some(g),
            _ => None,
        })
        .collect()
}

/// `e` as users read it: the gRPC message without its transport details.
pub fn describe(e: &etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(status) if !status.message().is_empty() => status.message().to_string(),
        e => e.to_string(),
    }
}
