//! Zeroing without the byte loop: `*x = T::default()` (or `zeroed()`) on a map value or scratch
//! slot compiles to a call into `memset`, which in eBPF is a BPF-to-BPF subprogram storing one
//! byte per iteration (a connection's two entries cost hundreds of instructions that way).
//! Word stores the compiler cannot fuse back into a `memset` cost one instruction per word.

/// Sets every byte of `value` to zero with one store per 8 bytes (per 4 for 4-aligned types).
///
/// # Safety
/// All-zero bytes must be a valid `T` (plain data: integers, arrays of them, structs of them).
#[inline(always)]
pub unsafe fn zero<T>(value: &mut T) {
    let p = value as *mut T;
    if core::mem::align_of::<T>() >= 8 && core::mem::size_of::<T>() % 8 == 0 {
        let words = p as *mut u64;
        for i in 0..core::mem::size_of::<T>() / 8 {
            // SAFETY: inside `value`, aligned; volatile so that the stores stay stores.
            unsafe { words.add(i).write_volatile(0) };
        }
    } else {
        const { assert!(core::mem::align_of::<T>() >= 4 && core::mem::size_of::<T>() % 4 == 0) };
        let words = p as *mut u32;
        for i in 0..core::mem::size_of::<T>() / 4 {
            // SAFETY: as above.
            unsafe { words.add(i).write_volatile(0) };
        }
    }
}
