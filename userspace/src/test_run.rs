//! `BPF_PROG_TEST_RUN`: run a loaded program once on a hand-made packet and get its verdict and the
//! packet as the program left it. aya 0.14 has no wrapper for it, so this is the raw syscall.
use std::os::fd::RawFd;

use anyhow::{bail, Result};

const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// The `test` member of `union bpf_attr` (include/uapi/linux/bpf.h).
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// What a program did with a packet.
#[derive(Debug)]
pub struct TestRunResult {
    /// The program's return value (a TC verdict: 0 pass, 2 drop, 7 redirect; XDP: 1 drop,
    /// 2 pass, 4 redirect).
    pub verdict: u32,
    /// The packet after the program ran.
    pub packet: Vec<u8>,
}

/// Runs the TC or XDP program `prog_fd` on `packet` `repeat` times and returns the kernel's mean
/// time per run in ns (the program alone: no device, no redirect is carried out).
pub fn time_tc(prog_fd: RawFd, packet: &[u8], repeat: u32) -> Result<u32> {
    Ok(test_run(prog_fd, packet, repeat)?.1)
}

/// Runs the TC program `prog_fd` on `packet`. In a test run the skb's device is the loopback
/// device of the caller's namespace (ifindex 1), and redirects are reported, not performed.
pub fn run_tc(prog_fd: RawFd, packet: &[u8]) -> Result<TestRunResult> {
    Ok(test_run(prog_fd, packet, 1)?.0)
}

/// Runs the XDP program `prog_fd` on `packet` (a frame as it arrives: Ethernet first). Redirects
/// are reported (verdict 4), not performed.
pub fn run_xdp(prog_fd: RawFd, packet: &[u8]) -> Result<TestRunResult> {
    Ok(test_run(prog_fd, packet, 1)?.0)
}

/// BPF_PROG_TEST_RUN: the verdict and packet of the last run, and the mean time per run.
fn test_run(prog_fd: RawFd, packet: &[u8], repeat: u32) -> Result<(TestRunResult, u32)> {
    let mut out = vec![0u8; packet.len() + 256];
    let mut attr = TestRunAttr {
        prog_fd: prog_fd as u32,
        data_size_in: packet.len() as u32,
        data_size_out: out.len() as u32,
        data_in: packet.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat,
        ..Default::default()
    };
    // SAFETY: attr points at valid buffers that outlive the call; the size is the struct's.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut TestRunAttr,
            std::mem::size_of::<TestRunAttr>() as u32,
        )
    };
    if rc != 0 {
        bail!("BPF_PROG_TEST_RUN failed: {}", std::io::Error::last_os_error());
    }
    out.truncate(attr.data_size_out as usize);
    Ok((TestRunResult { verdict: attr.retval, packet: out }, attr.duration))
}
