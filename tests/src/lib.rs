//! Sandboxes for bpfnet's end-to-end tests, demo and benchmark: private network namespaces (a
//! "host" where the daemon runs, "containers"), a daemon with private state, socket and bpffs,
//! and cleanup that runs on drop (also when a test fails) plus a sweep by name prefix.
pub mod bench;
pub mod checks;
pub mod cluster;
pub mod clusterbench;
pub mod demo;
pub mod enginebench;
pub mod frames;
pub mod engines;
pub mod kubeproxy;
pub mod lbscale;
pub mod netns;
pub mod sandbox;
pub mod svcbench;
pub mod traffic;

pub use sandbox::Sandbox;
