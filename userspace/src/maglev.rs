//! Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable Software Network Load
//! Balancer", NSDI 2016, section 3.4), for spreading a service's new connections over its
//! backends: a lookup table of M slots (M prime), each naming a backend. The datapath hashes a
//! connection's tuple to a slot; the daemon builds the table here.
//!
//! Each backend has its own permutation of the slots, derived from its name alone; backends take
//! turns claiming their next free preferred slot until the table is full. So every backend gets
//! M/N slots (give or take one), the table depends only on the set of backends (not on the order
//! they were added in, nor on the process: names are hashed with SipHash-1-3 under fixed keys),
//! and adding or removing one of N backends moves about 1/N of the slots.
use anyhow::{bail, Result};
use siphasher::sip::SipHasher13;
use std::hash::Hasher;

/// Cilium's and the paper's choice: big enough to spread a few hundred backends evenly.
pub const DEFAULT_TABLE_SIZE: u32 = 16_381;
/// The largest table accepted (memory grows with it, per service).
pub const MAX_TABLE_SIZE: u32 = 131_071;

/// Slots per backend a table gets at least (the paper's M >= 100 N): the backends' shares then
/// differ by at most 1%, and a backend added or removed moves little more than its own share.
pub const SLOTS_PER_BACKEND: u64 = 100;
/// The sizes a service's table takes, by its backend count: primes near powers of two, so that
/// a service changes size only when its backend count about doubles.
const SIZES: [u32; 10] = [251, 509, 1021, 2039, 4093, 8191, 16_381, 32_749, 65_521, 131_071];

/// The size of the table of a service with `backends` backends (taking new connections) when
/// tables hold at most `max` slots (`--maglev-table-size`): the smallest of [`SIZES`] with
/// [`SLOTS_PER_BACKEND`] slots for each, and never more than `max`. A small table is quicker
/// to build and to write (10,000 services of one backend: 2.5 MB of tables, not 655 MB) and
/// stays in the cache of the CPU that looks it up. The size follows from the backend count
/// alone, so every node of a cluster builds the same table. A change that moves a service to
/// another size gives its new connections a new table (existing ones stay on their backend
/// through conntrack).
pub fn table_size_for(backends: usize, max: u32) -> u32 {
    let wanted = backends.max(1) as u64 * SLOTS_PER_BACKEND;
    SIZES.into_iter().find(|&m| m as u64 >= wanted).unwrap_or(MAX_TABLE_SIZE).min(max)
}

/// Fixed keys: the table must come out the same in every process, on every restart.
const OFFSET_KEYS: (u64, u64) = (0x6270_666e_6574_6d67, 0x6f66_6673_6574_0001);
const SKIP_KEYS: (u64, u64) = (0x6270_666e_6574_6d67, 0x736b_6970_0000_0002);

pub fn is_prime(n: u32) -> bool {
    n >= 2 && (2..).take_while(|d: &u32| d * d <= n).all(|d| n % d != 0)
}

/// A table size the datapath can use: a prime between 3 and [`MAX_TABLE_SIZE`].
pub fn check_table_size(m: u32) -> Result<()> {
    if !(3..=MAX_TABLE_SIZE).contains(&m) {
        bail!("invalid Maglev table size {m}: use a prime between 3 and {MAX_TABLE_SIZE} (default {DEFAULT_TABLE_SIZE})");
    }
    if !is_prime(m) {
        let below = (3..m).rev().find(|n| is_prime(*n)).unwrap_or(3);
        let above = (m..=MAX_TABLE_SIZE).find(|n| is_prime(*n)).unwrap_or(below);
        bail!("invalid Maglev table size {m}: it must be prime (the nearest are {below} and {above})");
    }
    Ok(())
}

fn hash(name: &str, (k0, k1): (u64, u64)) -> u64 {
    let mut h = SipHasher13::new_with_keys(k0, k1);
    h.write(name.as_bytes());
    h.finish()
}

/// The lookup table of `m` slots (a prime, see [`check_table_size`]) for `backends`, each slot
/// holding an index into `backends`. Backends are named by something that identifies them across
/// restarts (their address and port); names must be distinct. Empty for no backend.
pub fn table(backends: &[&str], m: u32) -> Result<Vec<u32>> {
    if backends.is_empty() {
        check_table_size(m)?;
        return Ok(Vec::new());
    }
    let mut out = vec![0; m as usize];
    fill_table(backends, &mut out)?;
    Ok(out)
}

/// [`table`] written into `out` (its length is the table size, a prime; at least one backend).
pub fn fill_table(backends: &[&str], out: &mut [u32]) -> Result<()> {
    let m = u32::try_from(out.len()).unwrap_or(0);
    check_table_size(m)?;
    if backends.is_empty() || backends.len() > m as usize {
        bail!("{} backends do not fit a Maglev table of {m} slots", backends.len());
    }
    let mut sorted: Vec<usize> = (0..backends.len()).collect();
    // Turns are taken in name order, so the table does not depend on the order given.
    sorted.sort_by_key(|&i| backends[i]);
    if sorted.windows(2).any(|w| backends[w[0]] == backends[w[1]]) {
        bail!("backend names must be distinct");
    }
    let m64 = m as u64;
    // Backend j's permutation is offset_j, offset_j + skip_j, offset_j + 2 skip_j, ... (mod m):
    // `position` walks it by additions, `skip` is its step.
    let position: Vec<u32> = sorted.iter().map(|&i| (hash(backends[i], OFFSET_KEYS) % m64) as u32).collect();
    let skip: Vec<u32> = sorted.iter().map(|&i| (hash(backends[i], SKIP_KEYS) % (m64 - 1) + 1) as u32).collect();
    // The table is filled with backend indexes as small as the backend count allows: with
    // fewer than 255 backends one byte a slot, 16 KiB for the default size, which stays in the
    // L1 cache while the probes jump around it.
    if sorted.len() < u8::MAX as usize {
        fill::<u8>(&sorted, position, &skip, out);
    } else if sorted.len() < u16::MAX as usize {
        fill::<u16>(&sorted, position, &skip, out);
    } else {
        fill::<u32>(&sorted, position, &skip, out);
    }
    Ok(())
}

/// A slot of the table being filled: a backend's turn index, or `EMPTY`.
trait Slot: Copy + PartialEq {
    const EMPTY: Self;
    fn of(turn: usize) -> Self;
    fn index(self) -> usize;
}

macro_rules! slot {
    ($t:ty) => {
        impl Slot for $t {
            const EMPTY: Self = <$t>::MAX;
            fn of(turn: usize) -> Self {
                turn as $t
            }
            fn index(self) -> usize {
                self as usize
            }
        }
    };
}
slot!(u8);
slot!(u16);
slot!(u32);

/// Backends take turns (in `sorted` order) claiming their next preferred slot nobody holds
/// yet; `position[t]` walks backend t's permutation by steps of `skip[t]`. Writes the table
/// into `out` as indexes into the caller's backend list.
fn fill<T: Slot>(sorted: &[usize], mut position: Vec<u32>, skip: &[u32], out: &mut [u32]) {
    let n = sorted.len();
    let m = out.len() as u32;
    let mut slots = vec![T::EMPTY; m as usize];
    let mut turn = 0;
    for _ in 0..m {
        // A permutation visits every slot (skip < m and m prime), so one is found while any
        // is free.
        let slot = loop {
            let candidate = position[turn] as usize;
            position[turn] += skip[turn];
            if position[turn] >= m {
                position[turn] -= m;
            }
            if slots[candidate] == T::EMPTY {
                break candidate;
            }
        };
        slots[slot] = T::of(turn);
        // No `% n`: a division per slot costs as much as the probes.
        turn += 1;
        if turn == n {
            turn = 0;
        }
    }
    for (o, t) in out.iter_mut().zip(slots) {
        *o = sorted[t.index()] as u32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.{}.{}:80", i / 250, i % 250 + 2)).collect()
    }

    fn refs(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }

    #[test]
    fn a_table_is_sized_by_its_backends_within_the_maximum() {
        assert!(SIZES.iter().all(|&m| check_table_size(m).is_ok()), "every size is a prime the datapath takes");
        assert_eq!(SIZES[SIZES.len() - 1], MAX_TABLE_SIZE);
        assert_eq!(table_size_for(0, DEFAULT_TABLE_SIZE), 251);
        assert_eq!(table_size_for(1, DEFAULT_TABLE_SIZE), 251);
        assert_eq!(table_size_for(2, DEFAULT_TABLE_SIZE), 251);
        assert_eq!(table_size_for(3, DEFAULT_TABLE_SIZE), 509);
        assert_eq!(table_size_for(10, DEFAULT_TABLE_SIZE), 1021);
        assert_eq!(table_size_for(11, DEFAULT_TABLE_SIZE), 2039);
        assert_eq!(table_size_for(163, DEFAULT_TABLE_SIZE), 16_381);
        assert_eq!(table_size_for(1000, DEFAULT_TABLE_SIZE), DEFAULT_TABLE_SIZE, "never above the maximum");
        assert_eq!(table_size_for(10, 4099), 1021);
        assert_eq!(table_size_for(100, 4099), 4099);
        assert_eq!(table_size_for(1, 101), 101, "a maximum below every size is the size");
        assert_eq!(table_size_for(5000, MAX_TABLE_SIZE), MAX_TABLE_SIZE);
        // At every size, the backends' shares differ by one slot at most (1% at 100 each).
        for n in [1, 2, 3, 10, 11, 40] {
            let m = table_size_for(n, DEFAULT_TABLE_SIZE);
            let v = names(n);
            let t = table(&refs(&v), m).unwrap();
            let mut counts = vec![0u32; n];
            t.iter().for_each(|&b| counts[b as usize] += 1);
            let (lo, hi) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
            assert!(hi - lo <= 1 && *lo as u64 >= SLOTS_PER_BACKEND.min(m as u64 / n as u64), "{n} backends in {m} slots: {counts:?}");
        }
    }

    #[test]
    fn sizes_must_be_prime_and_bounded() {
        assert!(check_table_size(DEFAULT_TABLE_SIZE).is_ok());
        assert!(check_table_size(251).is_ok());
        let err = check_table_size(16_380).unwrap_err().to_string();
        assert!(err.contains("must be prime") && err.contains("16369 and 16381"), "{err}");
        assert!(check_table_size(2).unwrap_err().to_string().contains("between 3 and"));
        assert!(check_table_size(MAX_TABLE_SIZE + 2).is_err());
        assert_eq!((2..30).filter(|n| is_prime(*n)).collect::<Vec<u32>>(), [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]);
    }

    #[test]
    fn every_backend_gets_its_share_of_slots() {
        for n in [1usize, 3, 10, 100, 1000] {
            let backends = names(n);
            let t = table(&refs(&backends), DEFAULT_TABLE_SIZE).unwrap();
            assert_eq!(t.len(), DEFAULT_TABLE_SIZE as usize);
            let mut counts = vec![0u32; n];
            for &b in &t {
                counts[b as usize] += 1;
            }
            let fair = DEFAULT_TABLE_SIZE as f64 / n as f64;
            for (i, &c) in counts.iter().enumerate() {
                // Turns are taken round-robin: shares differ by one slot at most.
                assert!((c as f64 - fair).abs() <= 1.0, "n={n}: backend {i} has {c} slots, fair is {fair:.1}");
            }
        }
    }

    /// The fraction of slots whose backend (by name) differs between two tables.
    fn moved(a: &[u32], a_names: &[&str], b: &[u32], b_names: &[&str]) -> f64 {
        let changed = a.iter().zip(b).filter(|(x, y)| a_names[**x as usize] != b_names[**y as usize]).count();
        changed as f64 / a.len() as f64
    }

    #[test]
    fn adding_or_removing_one_of_n_backends_moves_about_one_nth_of_the_slots() {
        // At the default size, and at the size a service of n backends gets (`table_size_for`),
        // while its backend count stays within that size's range.
        for (n, m) in [(3usize, DEFAULT_TABLE_SIZE), (10, DEFAULT_TABLE_SIZE), (50, DEFAULT_TABLE_SIZE), (5, 509), (10, 1021), (20, 2039), (40, 4093)] {
            assert!(m == DEFAULT_TABLE_SIZE || table_size_for(n, DEFAULT_TABLE_SIZE) == table_size_for(n - 1, DEFAULT_TABLE_SIZE));
            let all = names(n);
            let all = refs(&all);
            let full = table(&all, m).unwrap();
            for removed in [0, n / 2, n - 1] {
                let rest: Vec<&str> = all.iter().copied().filter(|b| *b != all[removed]).collect();
                let fewer = table(&rest, m).unwrap();
                let moved = moved(&full, &all, &fewer, &rest);
                let ideal = 1.0 / n as f64;
                // The removed backend's slots must move; the paper measures a little more on top.
                assert!(moved >= ideal * 0.98, "n={n}: only {moved:.3} moved, its share is {ideal:.3}");
                assert!(moved <= ideal * 1.5 + 0.01, "n={n} removing {removed}: {moved:.3} of the slots moved, ideal {ideal:.3}");
                // Slots of the backends that stay mostly stay where they were.
                let kept_moved = full
                    .iter()
                    .zip(&fewer)
                    .filter(|(x, y)| **x as usize != removed && all[**x as usize] != rest[**y as usize])
                    .count() as f64
                    / full.len() as f64;
                assert!(kept_moved <= ideal * 0.5 + 0.01, "n={n}: {kept_moved:.3} of the others' slots moved");
            }
        }
    }

    #[test]
    fn the_table_depends_on_the_set_of_backends_only() {
        let backends = names(7);
        let forward = refs(&backends);
        let mut backward = forward.clone();
        backward.reverse();
        let a = table(&forward, 251).unwrap();
        let b = table(&backward, 251).unwrap();
        let by_name = |t: &[u32], n: &[&str]| t.iter().map(|&i| n[i as usize].to_string()).collect::<Vec<_>>();
        assert_eq!(by_name(&a, &forward), by_name(&b, &backward), "same slots whatever the order given");
        assert_eq!(a, table(&forward, 251).unwrap(), "and the same every time");
        // Pinned: a change of hash function or keys would move every existing service's flows
        // across a restart or an upgrade; this catches it.
        let small = table(&["a:80", "b:80", "c:80"], 13).unwrap();
        assert_eq!(small, PINNED_SMALL, "the table of a:80, b:80, c:80 over 13 slots changed");
    }

    /// `table(&["a:80", "b:80", "c:80"], 13)`, as computed when this test was written.
    const PINNED_SMALL: [u32; 13] = [0, 1, 2, 0, 1, 0, 2, 0, 1, 2, 1, 2, 0];

    /// `cargo test --release -p bpfnet --lib -- --ignored --nocapture maglev_build_time`
    /// The paper's population, probe by probe: what `table` must give exactly.
    fn reference(backends: &[&str], m: u32) -> Vec<u32> {
        let mut sorted: Vec<usize> = (0..backends.len()).collect();
        sorted.sort_by_key(|&i| backends[i]);
        let m64 = m as u64;
        let offset: Vec<u64> = sorted.iter().map(|&i| hash(backends[i], OFFSET_KEYS) % m64).collect();
        let skip: Vec<u64> = sorted.iter().map(|&i| hash(backends[i], SKIP_KEYS) % (m64 - 1) + 1).collect();
        let mut next = vec![0u64; sorted.len()];
        let mut slots = vec![u32::MAX; m as usize];
        let mut filled = 0;
        while filled < m as usize {
            for (turn, &b) in sorted.iter().enumerate() {
                let slot = loop {
                    let c = ((offset[turn] + next[turn] * skip[turn]) % m64) as usize;
                    next[turn] += 1;
                    if slots[c] == u32::MAX {
                        break c;
                    }
                };
                slots[slot] = b as u32;
                filled += 1;
                if filled == m as usize {
                    break;
                }
            }
        }
        slots
    }

    #[test]
    fn the_table_is_exactly_the_papers() {
        for m in [13, 251, 16_381] {
            for n in [1, 2, 3, 10, 50, 100] {
                if n > m as usize {
                    continue;
                }
                let names = names(n);
                assert_eq!(table(&refs(&names), m).unwrap(), reference(&refs(&names), m), "m {m}, n {n}");
            }
        }
    }

    #[test]
    #[ignore = "a measurement, not a check"]
    fn maglev_build_time() {
        for n in [3usize, 10, 100] {
            let backends = names(n);
            let backends = refs(&backends);
            let start = std::time::Instant::now();
            let rounds = 200;
            for _ in 0..rounds {
                std::hint::black_box(table(&backends, DEFAULT_TABLE_SIZE).unwrap());
            }
            let fast = start.elapsed() / rounds;
            let start = std::time::Instant::now();
            for _ in 0..rounds / 4 {
                std::hint::black_box(reference(&backends, DEFAULT_TABLE_SIZE));
            }
            let probing = start.elapsed() / (rounds / 4);
            println!("{n:>4} backends, {DEFAULT_TABLE_SIZE} slots: {fast:?} per table ({probing:?} probing every slot)");
        }
    }

    #[test]
    fn no_backend_gives_an_empty_table_and_bad_input_is_refused() {
        assert!(table(&[], DEFAULT_TABLE_SIZE).unwrap().is_empty());
        assert!(table(&["a", "a"], 13).unwrap_err().to_string().contains("distinct"));
        let many = names(20);
        assert!(table(&refs(&many), 13).unwrap_err().to_string().contains("do not fit"));
        assert!(table(&["a"], 12).is_err());
    }
}
