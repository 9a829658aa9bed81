//! Service load balancing: which backend a new connection to a service goes to (Maglev over the
//! 5-tuple, or the client's last backend with affinity). Existing connections never come here:
//! conntrack keeps them on their backend whatever the tables say now.
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap},
};
use datapath_common::{
    services::{flow_hash, AFFINITY_ENTRIES, DEFAULT_MAGLEV_TABLE_SIZE, DEFAULT_MAX_BACKENDS, DEFAULT_MAX_SERVICES, MAX_VIPS},
    AffinityKey, AffinityValue, BackendInfo, CtKey, IpKey, MaglevPair, PortTarget, ServiceInfo,
};

/// Service id -> its table and options. The daemon sizes it (`--max-services`, plus id 0).
#[map(name = "SERVICES")]
pub static SERVICES: Array<ServiceInfo> = Array::with_max_entries(DEFAULT_MAX_SERVICES + 1, 0);

/// Backend id -> address and port. The daemon sizes it (`--max-backends`).
#[map(name = "BACKENDS")]
pub static BACKENDS: Array<BackendInfo> = Array::with_max_entries(DEFAULT_MAX_BACKENDS, 0);

/// Every service's Maglev table, back to back; memory-mapped by the daemon, which sizes it
/// (services x table size). Slots come in pairs: an array's elements are 8-byte aligned, so
/// single `u32`s would take 8 bytes each (and the mapping would not be one flat `u32` array).
#[map(name = "MAGLEV")]
pub static MAGLEV: Array<MaglevPair> =
    Array::with_max_entries(DEFAULT_MAX_SERVICES * DEFAULT_MAGLEV_TABLE_SIZE / 2, aya_ebpf::bindings::BPF_F_MMAPABLE);

/// (service, client) -> the backend its last new connection went to, with client-IP affinity.
#[map(name = "AFFINITY")]
pub static AFFINITY: LruHashMap<AffinityKey, AffinityValue> = LruHashMap::with_max_entries(AFFINITY_ENTRIES, 0);

/// Service VIP -> its network's `datapath_id` (the ARP responder answers for it there).
#[map(name = "VIPS")]
pub static VIPS: HashMap<IpKey, u32> = HashMap::with_max_entries(MAX_VIPS, 0);

/// Where a new connection to a published port or a service goes.
pub enum Choice {
    /// This container address and port.
    Backend(PortTarget),
    /// A service without backends: the connection is refused.
    Refuse,
}

/// The backend of a new connection whose first packet has tuple `key`, to `target` (a
/// container's published port, or a service): its address of the connection's family (an IPv6
/// connection goes to the backend's IPv6 address). `None`: the tables are being rewritten under
/// this packet (a slot names a backend that is gone), or the backend has no address of that
/// family; the caller treats it as unpublished.
#[inline(always)]
pub fn choose(target: &PortTarget, key: &CtKey, now: u64) -> Option<Choice> {
    let id = target.service;
    if id == 0 {
        return Some(Choice::Backend(*target));
    }
    let service = *SERVICES.get(id)?;
    if service.backends == 0 || service.table_size == 0 {
        return Some(Choice::Refuse);
    }
    let ipv6 = !key.daddr.is_ipv4();
    let saddr = key.saddr.hash_word();
    let affinity = AffinityKey { service: id, _pad: 0, client: key.saddr };
    if service.affinity_ns != 0 {
        if let Some(last) = AFFINITY.get_ptr_mut(&affinity) {
            // SAFETY: a map value; a concurrent update only blurs `last_ns`.
            let last = unsafe { &mut *last };
            if now.wrapping_sub(last.last_ns) <= service.affinity_ns {
                if let Some(backend) = backend_of(id, last.backend, ipv6) {
                    last.last_ns = now;
                    return Some(Choice::Backend(backend));
                }
            }
        }
    }
    // With affinity the client alone chooses, so it lands on the same backend again once its
    // record is gone, as long as the backends do not change.
    let hash = if service.affinity_ns != 0 {
        flow_hash(saddr, 0, 0, 0, 0)
    } else {
        flow_hash(saddr, key.daddr.hash_word(), key.sport, key.dport, key.proto)
    };
    let slot = service.table_base.wrapping_add(hash % service.table_size);
    let backend_id = MAGLEV.get(slot / 2)?[(slot % 2) as usize];
    let backend = backend_of(id, backend_id, ipv6)?;
    if service.affinity_ns != 0 {
        let _ = AFFINITY.insert(&affinity, &AffinityValue { backend: backend_id, _pad: 0, last_ns: now }, 0);
    }
    Some(Choice::Backend(backend))
}

/// Backend `id` as a target for a connection of that family (`ipv6`), if it (still) serves
/// `service` and has an address of the family.
#[inline(always)]
fn backend_of(service: u32, id: u32, ipv6: bool) -> Option<PortTarget> {
    let b = BACKENDS.get(id)?;
    let addr = b.address(ipv6);
    (b.service == service && addr != IpKey::default()).then_some(PortTarget { addr, port: b.port, flags: 0, service: 0, network: 0 })
}
/// The network a VIP belongs to, if `addr` is one.
#[inline(always)]
pub fn vip_network(addr: &IpKey) -> Option<u32> {
    // SAFETY: read-only lookup of a plain-old-data value, copied out.
    unsafe { VIPS.get(addr) }.copied()
}
