//! BPF syscalls aya does not offer: batched map updates (`BPF_MAP_UPDATE_BATCH`, Linux 5.6),
//! which write thousands of entries in one call where one `BPF_MAP_UPDATE_ELEM` per entry
//! would cost a syscall each (installing 10,000 services writes some 150,000 entries).
use std::os::fd::{AsRawFd, BorrowedFd};

use anyhow::{ensure, Result};

const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// `union bpf_attr`'s `batch` member (include/uapi/linux/bpf.h).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Writes `keys[i] -> values[i]` into the map `fd` (any kind that supports batches: arrays and
/// hashes), in chunks the kernel takes in one call each.
pub fn update_batch<K: aya::Pod, V: aya::Pod>(fd: BorrowedFd<'_>, keys: &[K], values: &[V]) -> Result<()> {
    ensure!(keys.len() == values.len(), "{} keys for {} values", keys.len(), values.len());
    const CHUNK: usize = 65_536;
    for (keys, values) in keys.chunks(CHUNK).zip(values.chunks(CHUNK)) {
        let mut attr = BatchAttr {
            keys: keys.as_ptr() as u64,
            values: values.as_ptr() as u64,
            count: keys.len() as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..Default::default()
        };
        // SAFETY: the attribute points at `count` keys and values of the map's sizes (the caller's
        // types are the map's layouts), which outlive the call; the kernel reads them only.
        let r = unsafe {
            libc::syscall(libc::SYS_bpf, BPF_MAP_UPDATE_BATCH, &mut attr as *mut BatchAttr, std::mem::size_of::<BatchAttr>())
        };
        if r != 0 {
            let err = std::io::Error::last_os_error();
            anyhow::bail!("BPF_MAP_UPDATE_BATCH of {} entries: {err} ({} written)", keys.len(), attr.count);
        }
    }
    Ok(())
}
