//! The eBPF object is embedded into the binary; it is built by `cargo xtask build-ebpf` first.
fn main() {
    let object = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/bpf/bpfel-unknown-none/release/bpfnet-datapath");
    println!("cargo:rerun-if-changed={object}");
    if !std::path::Path::new(object).exists() {
        panic!("the eBPF object {object} is missing: build with `cargo xtask build` (it builds the eBPF crate first)");
    }
}
