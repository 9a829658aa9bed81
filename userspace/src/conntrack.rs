//! The connection tables as the daemon sees them: listing connections, flushing them, expiring
//! them (the datapath only stamps deadlines; removal is the daemon's, and the established table
//! is never evicted from), recounting each endpoint's share of the established table, and
//! forgetting the connections of an endpoint that leaves. Works on its own handles on the pinned
//! maps, so none of it waits for the daemon's lock. A connection's two entries are in one table:
//! `CONNTRACK` once established, `CT_PENDING` before (see `datapath_common::conntrack`).
use std::{
    collections::{HashMap as StdHashMap, HashSet},
    net::IpAddr,
    path::Path,
};

use anyhow::{Context, Result};
use aya::maps::{HashMap, Map, MapData};
use datapath_common::{
    conntrack::{share_owner, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
    ct_action, ct_state, map_names, CtEntry, CtKey, IpKey,
};

use crate::{api, bpffs};

pub struct Conntrack {
    /// `CONNTRACK`, then `CT_PENDING`.
    tables: [HashMap<MapData, CtKey, CtEntry>; 2],
    quota: HashMap<MapData, u32, u32>,
    max_entries: u32,
    pending_max_entries: u32,
}

/// An entry, and whether it is in the established table.
type Listed = (CtKey, CtEntry, bool);

/// Now on the datapath's clock (`bpf_ktime_get_coarse_ns`), in ns.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec to write.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}


fn protocol_name(proto: u8) -> String {
    match proto {
        IPPROTO_TCP => "tcp".into(),
        IPPROTO_UDP => "udp".into(),
        IPPROTO_ICMP => "icmp".into(),
        other => other.to_string(),
    }
}

fn endpoint(addr: &IpKey, port: u16, proto: u8) -> String {
    if proto == IPPROTO_ICMP {
        IpAddr::from(*addr).to_string()
    } else {
        match IpAddr::from(*addr) {
            IpAddr::V4(v4) => format!("{v4}:{}", u16::from_be(port)),
            IpAddr::V6(v6) => format!("[{v6}]:{}", u16::from_be(port)),
        }
    }
}

fn tuple(key: &CtKey) -> api::Tuple {
    let mut t = api::Tuple { src: endpoint(&key.saddr, key.sport, key.proto), dst: endpoint(&key.daddr, key.dport, key.proto), id: None };
    if key.proto == IPPROTO_ICMP {
        t.id = Some(u16::from_be(key.sport | key.dport));
    }
    t
}

fn state_name(proto: u8, state: u8) -> &'static str {
    match proto {
        IPPROTO_TCP if state & ct_state::CLOSING != 0 => "CLOSING",
        IPPROTO_TCP if state & ct_state::SEEN_REPLY != 0 => "ESTABLISHED",
        IPPROTO_TCP => "SYN_SENT",
        _ if state & ct_state::SEEN_REPLY != 0 => "REPLIED",
        _ => "UNREPLIED",
    }
}

impl Conntrack {
    /// Opens the tables the datapath pinned under `root` (load the datapath first).
    pub fn open(root: &Path) -> Result<Self> {
        let open = |name: &str| -> Result<MapData> {
            let pin = bpffs::maps_dir(root).join(name);
            MapData::from_pin(&pin).with_context(|| format!("opening {}", pin.display()))
        };
        let established = open(map_names::CONNTRACK)?;
        let pending = open(map_names::CT_PENDING)?;
        let max_entries = established.info()?.max_entries();
        let pending_max_entries = pending.info()?.max_entries();
        Ok(Self {
            tables: [HashMap::try_from(Map::HashMap(established))?, HashMap::try_from(Map::LruHashMap(pending))?],
            quota: HashMap::try_from(Map::HashMap(open(map_names::CT_QUOTA)?))?,
            max_entries,
            pending_max_entries,
        })
    }

    pub fn max_entries(&self) -> u32 {
        self.max_entries
    }

    /// Every entry of both tables (a snapshot: the datapath goes on changing them).
    fn entries(&self) -> Vec<Listed> {
        let [established, pending] = &self.tables;
        let listed = |map: &HashMap<MapData, CtKey, CtEntry>, assured: bool| -> Vec<Listed> {
            map.iter().filter_map(|r| r.ok()).map(|(k, e)| (k, e, assured)).collect()
        };
        let mut out = listed(established, true);
        out.extend(listed(pending, false));
        out
    }

    /// Entries in use and how full the tables are.
    pub fn usage(&self) -> api::ConntrackUsage {
        let count = |map: &HashMap<MapData, CtKey, CtEntry>| map.keys().filter(|k| k.is_ok()).count() as u64;
        let entries = count(&self.tables[0]);
        let pending_entries = count(&self.tables[1]);
        let percent = |n: u64, max: u32| (n as f64 * 100.0 / max.max(1) as f64 * 10.0).round() / 10.0;
        api::ConntrackUsage {
            entries,
            max_entries: self.max_entries as u64,
            pressure_percent: percent(entries, self.max_entries),
            pending_entries,
            pending_max_entries: self.pending_max_entries as u64,
            pending_pressure_percent: percent(pending_entries, self.pending_max_entries),
        }
    }

    /// One line per connection, from its original entry and its peer.
    pub fn connections(&self) -> Vec<api::Connection> {
        let now = now_ns();
        let entries = self.entries();
        let by_key: StdHashMap<CtKey, CtEntry> = entries.iter().map(|(k, e, _)| (*k, *e)).collect();
        let mut out: Vec<api::Connection> = entries
            .iter()
            .filter(|(_, e, _)| e.state & ct_state::REPLY == 0)
            .map(|(key, e, assured)| {
                let reply = by_key.get(&e.peer);
                let expires = reply.map_or(e.expires_ns, |r| r.expires_ns.max(e.expires_ns));
                api::Connection {
                    protocol: protocol_name(key.proto),
                    original: tuple(key),
                    reply: tuple(&e.peer),
                    nat: if e.action & ct_action::SERVICE != 0 {
                        "service"
                    } else if e.action & ct_action::PUBLISHED != 0 {
                        "published"
                    } else {
                        "masquerade"
                    }
                    .into(),
                    state: state_name(key.proto, e.state).into(),
                    expires_in_s: expires.saturating_sub(now) / 1_000_000_000,
                    original_packets: e.packets,
                    original_bytes: e.bytes,
                    reply_packets: reply.map_or(0, |r| r.packets),
                    reply_bytes: reply.map_or(0, |r| r.bytes),
                    assured: *assured,
                }
            })
            .collect();
        out.sort_by(|a, b| (&a.protocol, &a.original.src, &a.original.dst).cmp(&(&b.protocol, &b.original.src, &b.original.dst)));
        out
    }

    /// Removes the keys from both tables; returns how many entries went.
    fn remove_keys(&mut self, keys: impl IntoIterator<Item = CtKey>) -> usize {
        let mut removed = 0;
        for key in keys {
            for table in &mut self.tables {
                removed += table.remove(&key).is_ok() as usize;
            }
        }
        removed
    }

    /// Removes every entry; returns how many connections that ended.
    pub fn flush(&mut self) -> usize {
        let entries = self.entries();
        let connections = entries.iter().filter(|(_, e, _)| e.state & ct_state::REPLY == 0).count();
        self.remove_keys(entries.into_iter().map(|(k, _, _)| k));
        self.write_shares(&StdHashMap::new());
        connections
    }

    /// Removes the connections whose both directions are past their deadline (and entries whose
    /// peer is gone and that are past theirs), then recounts each endpoint's share of the
    /// established table. Returns how many entries went.
    pub fn expire(&mut self, now: u64) -> usize {
        let mut removed = 0;
        let mut established_left = StdHashMap::new();
        for (index, table) in self.tables.iter_mut().enumerate() {
            let mut by_key: StdHashMap<CtKey, CtEntry> = table.iter().filter_map(|r| r.ok()).collect();
            let expired: Vec<CtKey> = by_key
                .iter()
                .filter(|(_, e)| e.expires_ns < now && by_key.get(&e.peer).is_none_or(|p| p.expires_ns < now))
                .map(|(k, _)| *k)
                .collect();
            // The walk took a while: a packet may have revived a connection since. Look again
            // right before each removal.
            for key in expired {
                let still_expired = match table.get(&key, 0) {
                    Ok(e) => e.expires_ns < now && table.get(&e.peer, 0).map_or(true, |p| p.expires_ns < now),
                    Err(_) => false,
                };
                if still_expired && table.remove(&key).is_ok() {
                    by_key.remove(&key);
                    removed += 1;
                }
            }
            if index == 0 {
                established_left = by_key;
            }
        }
        self.write_shares(&established_left);
        removed
    }

    /// Writes each endpoint's share of the established table as `established` (its entries, as
    /// just walked) says: the datapath counts up as connections move in; only this walk sees
    /// them leave.
    fn write_shares(&mut self, established: &StdHashMap<CtKey, CtEntry>) {
        let mut shares: StdHashMap<u32, u32> = StdHashMap::new();
        for e in established.values().filter(|e| e.state & ct_state::REPLY == 0) {
            let owner = share_owner(e.ifindex, established.get(&e.peer).map_or(0, |r| r.ifindex));
            if owner != 0 {
                *shares.entry(owner).or_default() += 2;
            }
        }
        let stale: Vec<u32> = self.quota.keys().filter_map(|k| k.ok()).filter(|k| !shares.contains_key(k)).collect();
        for owner in stale {
            let _ = self.quota.remove(&owner);
        }
        for (owner, held) in shares {
            let _ = self.quota.insert(owner, held, 0);
        }
    }

    /// Removes the connections that deliver into one of the host-side veths `ifindexes`, or
    /// whose tuple or translation names one of `addresses` (those of an endpoint that leaves
    /// which no other endpoint holds now): both entries of each, in one walk.
    pub fn forget_endpoint(&mut self, ifindexes: &[u32], addresses: &[IpAddr]) -> usize {
        let keys: Vec<IpKey> = addresses.iter().copied().map(IpKey::from).collect();
        let names = |a: &IpKey| keys.contains(a);
        let mut doomed = HashSet::new();
        for (k, e, _) in self.entries() {
            if (e.ifindex != 0 && ifindexes.contains(&e.ifindex)) || names(&e.src) || names(&e.dst) || names(&k.saddr) || names(&k.daddr) {
                doomed.insert(k);
                doomed.insert(e.peer);
            }
        }
        let removed = self.remove_keys(doomed);
        for ifindex in ifindexes {
            let _ = self.quota.remove(ifindex);
        }
        removed
    }

    /// Removes the UDP flows a service sent to the backend `addr`:`port` (a datagram client
    /// would go on sending to a replica that is gone, while a TCP connection ends with its
    /// backend). Returns how many flows went.
    pub fn forget_udp_flows_to(&mut self, addr: IpAddr, port: u16) -> usize {
        let (addr, port) = (IpKey::from(addr), port.to_be());
        let mut doomed = HashSet::new();
        for (k, e, _) in self.entries() {
            let to_backend = e.action & ct_action::SERVICE != 0 && e.action & ct_action::REWRITE_DST != 0 && e.dst == addr && e.dst_port == port;
            if to_backend && k.proto == IPPROTO_UDP {
                doomed.insert(k);
                doomed.insert(e.peer);
            }
        }
        self.remove_keys(doomed) / 2
    }

    /// The (address, port in network order) of every backend some tracked service connection
    /// still goes to (one that is closing, after a reset or both FINs, does not count).
    pub fn service_backends_in_use(&self) -> HashSet<(IpKey, u16)> {
        let open = |e: &CtEntry| e.state & (ct_state::REPLY | ct_state::CLOSING) == 0;
        self.entries()
            .into_iter()
            .filter(|(_, e, _)| e.action & ct_action::SERVICE != 0 && e.action & ct_action::REWRITE_DST != 0 && open(e))
            .map(|(_, e, _)| (e.dst, e.dst_port))
            .collect()
    }
}
