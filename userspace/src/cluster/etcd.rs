//! The etcd client as bpfnet uses it.
//!
//! - Every request has a time limit: the client has none by default, and without quorum etcd
//!   itself answers only after 7 s.
//! - `require_leader`: a member that has lost its leader refuses at once ("no leader") instead of
//!   serving stale reads or holding writes; an open watch is ended the same way, so the daemon
//!   learns that the cluster is gone.
//! - The client spreads requests over the members and does not avoid a dead one: a request that
//!   meets a dead member is tried again (the next try goes to another member). A member that
//!   answers "no leader" means an election is under way (the leader died): such a request waits
//!   for it, up to [`ELECTION_WINDOW`].
use std::{future::Future, time::Duration};

use etcd_client::{Client, ConnectOptions};

/// Time limit of one request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Tries of a request that met no member at all: with one member of three down, about a third
/// of the tries meet it (the client does not avoid it), so a few are needed for a request to fail
/// only when etcd as a whole is gone; and that failure must come fast (a daemon's request waits
/// for it).
const TRIES: usize = 8;
/// How long a request waits while members answer but have no leader: an election after the
/// leader's death takes etcd's election timeout (1 s by default) and a vote or two.
const ELECTION_WINDOW: Duration = Duration::from_secs(8);
/// Pause between tries; while a member says it has no leader, it doubles up to the longest.
const FIRST_PAUSE: Duration = Duration::from_millis(20);
const LONGEST_PAUSE: Duration = Duration::from_millis(400);

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

/// Whether `e` came from a member that is alive but cannot serve for now ("etcdserver: no
/// leader", "leader changed", "request timed out"): the cluster is electing a leader.
fn is_electing(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(status) if status.message().starts_with("etcdserver:"))
}

/// Runs `request` with a fresh handle of `client`, again while it meets unreachable members: up
/// to [`TRIES`] times while no member answers, and for up to [`ELECTION_WINDOW`] once one has
/// answered that it has no leader (tries that fail fast must not use up the wait for an
/// election).
pub async fn retrying<C: Clone, T, F, Fut>(client: &C, mut request: F) -> Result<T, etcd_client::Error>
where
    F: FnMut(C) -> Fut,
    Fut: Future<Output = Result<T, etcd_client::Error>>,
{
    let started = std::time::Instant::now();
    let mut tries = 0;
    let mut electing = false;
    let mut pause = FIRST_PAUSE;
    loop {
        tries += 1;
        match request(client.clone()).await {
            Err(e) if is_unreachable(&e) => {
                electing |= is_electing(&e);
                let again = if electing { started.elapsed() + pause < ELECTION_WINDOW } else { tries < TRIES };
                if !again {
                    return Err(e);
                }
                tokio::time::sleep(pause).await;
                if electing {
                    pause = (pause * 2).min(LONGEST_PAUSE);
                }
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

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    fn unavailable(message: &str) -> etcd_client::Error {
        etcd_client::Error::GRpcStatus(tonic::Status::unavailable(message))
    }

    /// `request` answered by `answers` in turn (the last one repeated): the result and the tries.
    fn run(answers: Vec<Result<u8, &'static str>>) -> (Result<u8, etcd_client::Error>, usize, Duration) {
        let tries = std::sync::atomic::AtomicUsize::new(0);
        let started = Instant::now();
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let result = rt.block_on(retrying(&(), |()| {
            let i = tries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let answer = answers[i.min(answers.len() - 1)];
            async move { answer.map_err(unavailable) }
        }));
        (result, tries.into_inner(), started.elapsed())
    }

    #[test]
    fn a_dead_member_is_tried_past_and_a_dead_cluster_fails_fast() {
        let (result, tries, _) = run(vec![Err("tcp connect error"), Err("tcp connect error"), Ok(7)]);
        assert_eq!((result.unwrap(), tries), (7, 3));
        let (result, tries, took) = run(vec![Err("tcp connect error")]);
        assert_eq!(describe(&result.unwrap_err()), "tcp connect error");
        assert_eq!(tries, TRIES);
        assert!(took < Duration::from_millis(500), "{took:?}");
    }

    #[test]
    fn an_election_is_waited_for_longer_than_the_fast_tries() {
        // Twenty "no leader" answers (an election of about 5 s): more than TRIES, still a success.
        let mut answers = vec![Err("tcp connect error")];
        answers.extend(std::iter::repeat_n(Err("etcdserver: no leader"), 20));
        answers.push(Ok(1));
        let (result, tries, _) = run(answers);
        assert_eq!((result.unwrap(), tries), (1, 22));
        // An election that never ends: given up after the window.
        let (result, _, took) = run(vec![Err("etcdserver: no leader")]);
        assert_eq!(describe(&result.unwrap_err()), "etcdserver: no leader");
        assert!(took >= ELECTION_WINDOW - LONGEST_PAUSE && took < ELECTION_WINDOW + Duration::from_secs(1), "{took:?}");
    }

    #[test]
    fn refusals_are_not_tried_again() {
        let refused = || etcd_client::Error::GRpcStatus(tonic::Status::failed_precondition("etcdserver: requested lease not found"));
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let mut tries = 0;
        let result: Result<(), _> = rt.block_on(retrying(&(), |()| {
            tries += 1;
            async { Err(refused()) }
        }));
        assert!(result.is_err());
        assert_eq!(tries, 1);
    }
}
