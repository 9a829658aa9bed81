//! The connection table as the daemon sees it: listing connections, flushing them, expiring them
//! (the datapath only stamps deadlines; removal is the daemon's), and forgetting those of an
//! endpoint that leaves. Works on its own handle on the pinned map, so none of it waits for the
//! daemon's lock.
use std::{collections::HashSet, net::IpAddr, path::Path};

use anyhow::{Context, Result};
use aya::maps::{HashMap, Map, MapData};
use datapath_common::{
    conntrack::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
    ct_action, ct_state, map_names, CtEntry, CtKey, IpKey,
};

use crate::{api, bpffs};

pub struct Conntrack {
    map: HashMap<MapData, CtKey, CtEntry>,
    max_entries: u32,
}

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
    /// Opens the table the datapath pinned under `root` (load the datapath first).
    pub fn open(root: &Path) -> Result<Self> {
        let pin = bpffs::maps_dir(root).join(map_names::CONNTRACK);
        let data = MapData::from_pin(&pin).with_context(|| format!("opening {}", pin.display()))?;
        let max_entries = data.info()?.max_entries();
        Ok(Self { map: HashMap::try_from(Map::LruHashMap(data))?, max_entries })
    }

    pub fn max_entries(&self) -> u32 {
        self.max_entries
    }

    /// Every entry (a snapshot: the datapath goes on changing the table).
    fn entries(&self) -> Vec<(CtKey, CtEntry)> {
        self.map.iter().filter_map(|r| r.ok()).collect()
    }

    /// Entries in use and how full the table is.
    pub fn usage(&self) -> api::ConntrackUsage {
        let entries = self.map.keys().filter(|k| k.is_ok()).count() as u64;
        api::ConntrackUsage {
            entries,
            max_entries: self.max_entries as u64,
            pressure_percent: (entries as f64 * 100.0 / self.max_entries.max(1) as f64 * 10.0).round() / 10.0,
        }
    }

    /// One line per connection, from its original entry and its peer.
    pub fn connections(&self) -> Vec<api::Connection> {
        let now = now_ns();
        let entries = self.entries();
        let by_key: std::collections::HashMap<CtKey, CtEntry> = entries.iter().copied().collect();
        let mut out: Vec<api::Connection> = entries
            .iter()
            .filter(|(_, e)| e.state & ct_state::REPLY == 0)
            .map(|(key, e)| {
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
                }
            })
            .collect();
        out.sort_by(|a, b| (&a.protocol, &a.original.src, &a.original.dst).cmp(&(&b.protocol, &b.original.src, &b.original.dst)));
        out
    }

    fn remove_keys(&mut self, keys: impl IntoIterator<Item = CtKey>) -> usize {
        keys.into_iter().filter(|k| self.map.remove(k).is_ok()).count()
    }

    /// Removes every entry; returns how many connections that ended.
    pub fn flush(&mut self) -> usize {
        let entries = self.entries();
        let connections = entries.iter().filter(|(_, e)| e.state & ct_state::REPLY == 0).count();
        self.remove_keys(entries.into_iter().map(|(k, _)| k));
        connections
    }

    /// Removes the connections whose both directions are past their deadline (and entries whose
    /// peer is gone and that are past theirs). Returns how many entries went.
    pub fn expire(&mut self, now: u64) -> usize {
        let entries = self.entries();
        let by_key: std::collections::HashMap<CtKey, CtEntry> = entries.iter().copied().collect();
        let expired: Vec<CtKey> = entries
            .iter()
            .filter(|(_, e)| e.expires_ns < now && by_key.get(&e.peer).is_none_or(|p| p.expires_ns < now))
            .map(|(k, _)| *k)
            .collect();
        // The walk took a while: a packet may have revived a connection since. Look again
        // right before each removal.
        let still_expired = |map: &HashMap<MapData, CtKey, CtEntry>, key: &CtKey| match map.get(key, 0) {
            Ok(e) => e.expires_ns < now && map.get(&e.peer, 0).map_or(true, |p| p.expires_ns < now),
            Err(_) => false,
        };
        let doomed: Vec<CtKey> = expired.into_iter().filter(|k| still_expired(&self.map, k)).collect();
        self.remove_keys(doomed)
    }

    /// Removes the connections that deliver into one of the host-side veths `ifindexes`, or,
    /// unless another endpoint holds the address now (`addr` is `None`), whose tuple or
    /// translation names `addr` (an endpoint that leaves): both entries of each, in one walk.
    pub fn forget_endpoint(&mut self, ifindexes: &[u32], addr: Option<IpAddr>) -> usize {
        let key = addr.map(IpKey::from);
        let names = |a: &IpKey| key.as_ref() == Some(a);
        let mut doomed = HashSet::new();
        for (k, e) in self.entries() {
            if (e.ifindex != 0 && ifindexes.contains(&e.ifindex)) || names(&e.src) || names(&e.dst) || names(&k.saddr) || names(&k.daddr) {
                doomed.insert(k);
                doomed.insert(e.peer);
            }
        }
        self.remove_keys(doomed)
    }

    /// Removes the UDP flows a service sent to the backend `addr`:`port` (a datagram client
    /// would go on sending to a replica that is gone, while a TCP connection ends with its
    /// backend). Returns how many flows went.
    pub fn forget_udp_flows_to(&mut self, addr: IpAddr, port: u16) -> usize {
        let (addr, port) = (IpKey::from(addr), port.to_be());
        let mut doomed = HashSet::new();
        for (k, e) in self.entries() {
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
            .filter(|(_, e)| e.action & ct_action::SERVICE != 0 && e.action & ct_action::REWRITE_DST != 0 && open(e))
            .map(|(_, e)| (e.dst, e.dst_port))
            .collect()
    }
}
