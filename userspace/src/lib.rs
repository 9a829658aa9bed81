//! bpfnet: container networks forwarded by eBPF instead of a Linux bridge and iptables.
//!
//! Layers (see README.md): the CLI talks HTTP/JSON over a unix socket to the daemon's `server`;
//! the `daemon` validates requests against the desired `state` (with `ipam`), applies them through
//! `plumbing` (rtnetlink: veths, addresses, routes) and `datapath` (eBPF programs and maps), rolls
//! back on failure, persists, and reconciles at start-up. Front-ends besides the CLI drive the
//! same endpoint lifecycle: `docker` (Docker's network plugin protocol) and `cni` (the CNI plugin,
//! the same binary run by a container runtime). `dns` serves names per network. Readers (the API's
//! reads, `dns`, `metrics`) see the last committed state through `snapshot`; front-ends hand
//! changes to the daemon through `worker`: neither imports another front-end or climbs back
//! into the daemon. `runtime` is the process around them all: locks, start, tickers, the
//! cluster's watch, shutdown.
pub mod api;
pub mod bpffs;
pub mod bpfsys;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod cni;
pub mod config_file;
pub mod conntrack;
pub mod daemon;
pub mod datapath;
pub mod dns;
pub mod docker;
pub mod ids;
pub mod ipam;
pub mod limits;
pub mod maglev;
pub mod metrics;
pub mod netns;
pub mod plumbing;
pub mod ports;
pub mod runtime;
pub mod server;
pub mod snapshot;
pub mod state;
pub mod store;
pub mod test_run;
pub mod worker;
