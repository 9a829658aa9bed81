//! Loading the eBPF datapath and attaching it to interfaces (here), and the typed writers of its
//! maps, one file per concern (`endpoints`, `uplinks`, `services`, `conntrack`, `counters`,
//! `overlay`).
//!
//! Maps are pinned under `<bpffs>/maps-v<layout>`, an uplink's TCX link under
//! `<bpffs>/uplinks/<interface>` (and its XDP link under `<bpffs>/xdp/<interface>`); an
//! endpoint's program is a filter its veth holds (see [`Datapath::attach_endpoint`]). So
//! forwarding and tracked connections go on while the daemon is stopped. A daemon that starts
//! again re-opens the pinned maps and swaps its freshly loaded program into the pinned links
//! (`bpf_link_update`) and the filters, atomically, which also upgrades the datapath code.
use std::{
    collections::HashSet,
    net::IpAddr,
    os::fd::{AsFd, AsRawFd, RawFd},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray},
    programs::{
        links::{FdLink, PinnedLink},
        tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcError, TcHandle},
        xdp::XdpLink,
        CgroupAttachMode, CgroupSockAddr, Program, ProgramError, SchedClassifier, TcAttachType, Xdp, XdpMode,
    },
    Ebpf, EbpfLoader,
};
use datapath_common::{
    global_names, map_names, program_names, BackendInfo, Counter, CtConfig, CtEntry, CtKey, EndpointInfo, IfaceInfo, IpKey, PortKey,
    PortTarget, ServiceInfo, UplinkInfo,
    conntrack::DEFAULT_CT_ENTRIES,
    services::{DEFAULT_MAGLEV_TABLE_SIZE, DEFAULT_MAX_BACKENDS, DEFAULT_MAX_SERVICES},
};

use crate::bpffs;

// The typed writers of the maps, one file per concern.
mod conntrack;
mod counters;
mod endpoints;
mod overlay;
mod services;
mod uplinks;

pub use uplinks::UplinkAddresses;

/// The eBPF object, built by `cargo xtask build-ebpf` and embedded at compile time.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../target/bpf/bpfel-unknown-none/release/bpfnet-datapath"
));

pub struct Datapath {
    ebpf: Ebpf,
    /// Programs a previous start loaded from this very object with the same options and maps,
    /// taken from their pins instead of verified again (see [`Datapath::load_pinned`]); the
    /// others are `ebpf`'s.
    reused: std::collections::HashMap<&'static str, Program>,
    /// Root of the pins; `None` for a private, unpinned instance (datapath tests).
    pins: Option<PathBuf>,
    /// `MAGLEV`, mapped into the daemon's memory: whole tables are written with a copy.
    maglev: MappedArray,
}

/// A memory-mapped `BPF_F_MMAPABLE` array of `u32`.
struct MappedArray {
    ptr: *mut u32,
    len: usize,
}

// SAFETY: the mapping is owned by this value and only written through `&mut self`.
unsafe impl Send for MappedArray {}
unsafe impl Sync for MappedArray {}

impl MappedArray {
    /// Maps `data`, an array of `per_element` u32s per element (with no padding between them).
    fn map(data: &MapData, per_element: usize) -> Result<Self> {
        let len = data.info()?.max_entries() as usize * per_element;
        let bytes = (len * 4).next_multiple_of(4096);
        // SAFETY: a shared, read-write mapping of the map's memory, as the kernel offers for
        // BPF_F_MMAPABLE arrays; unmapped in Drop.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                data.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        anyhow::ensure!(ptr != libc::MAP_FAILED, "mapping the MAGLEV table: {}", std::io::Error::last_os_error());
        Ok(Self { ptr: ptr.cast(), len })
    }

    fn slots(&mut self) -> &mut [u32] {
        // SAFETY: `len` u32s lie in the mapping, which lives as long as `self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for MappedArray {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, of that size.
        unsafe { libc::munmap(self.ptr.cast(), (self.len * 4).next_multiple_of(4096)) };
    }
}

/// An IPv4 field of `IfaceInfo` (network order): all zero for none (an endpoint of an IPv6-only
/// network, whose IPv4 packets the datapath drops).
pub fn datapath_ipv4(ip: Option<IpAddr>) -> [u8; 4] {
    match ip {
        Some(IpAddr::V4(v4)) => v4.octets(),
        _ => [0; 4],
    }
}

/// An IPv6 field of `IfaceInfo` (wire order): all zero for none.
pub fn datapath_ipv6(ip: Option<IpAddr>) -> [u32; 4] {
    match ip {
        Some(ip @ IpAddr::V6(_)) => IpKey::from(ip).addr,
        _ => [0; 4],
    }
}

/// What is fixed when the datapath is loaded.
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    /// Log every packet's outcome (see [`Datapath::forward_trace`]).
    pub trace: bool,
    /// Size of the connection table, in entries (two per connection). A pinned table keeps the
    /// size it was created with.
    pub ct_entries: u32,
    /// Connection lifetimes and the masquerade port range.
    pub ct_config: CtConfig,
    /// The cookie of the daemon's network namespace: the socket programs act only on sockets
    /// of that namespace (0: on none).
    pub netns_cookie: u64,
    /// Services the tables hold (`--max-services`), and each one's Maglev table size
    /// (`--maglev-table-size`, a prime): `MAGLEV` takes 4 bytes x both.
    pub max_services: u32,
    pub maglev_table_size: u32,
    /// Backends of all services together (`--max-backends`).
    pub max_backends: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            trace: false,
            ct_entries: DEFAULT_CT_ENTRIES,
            ct_config: CtConfig::DEFAULT,
            netns_cookie: 0,
            max_services: DEFAULT_MAX_SERVICES,
            maglev_table_size: DEFAULT_MAGLEV_TABLE_SIZE,
            max_backends: DEFAULT_MAX_BACKENDS,
        }
    }
}

impl LoadOptions {
    /// Slots of `MAGLEV`: every service's table.
    pub fn maglev_slots(&self) -> Result<u32> {
        self.max_services.checked_mul(self.maglev_table_size).filter(|n| *n < 1 << 30).with_context(|| {
            format!(
                "--max-services {} x --maglev-table-size {} is too many table slots (the limit is 2^30, 4 GiB)",
                self.max_services, self.maglev_table_size
            )
        })
    }
}

/// The datapath's programs, each with where its links are pinned.
const PROGRAMS: [&str; 5] = [
    program_names::FROM_CONTAINER,
    program_names::FROM_CONTAINER_V6,
    program_names::FROM_UPLINK,
    program_names::FROM_OVERLAY,
    program_names::FROM_UNDERLAY,
];

impl Datapath {
    /// Loads the datapath with its maps pinned under `root`, re-using maps already pinned there.
    /// With `trace`, the program logs every packet's outcome (see [`Datapath::forward_trace`]).
    pub fn load_pinned(root: &Path, options: &LoadOptions) -> Result<Self> {
        bpffs::ensure(root)?;
        for dir in [bpffs::maps_dir(root), bpffs::links_dir(root), bpffs::uplinks_dir(root), bpffs::xdp_dir(root), bpffs::sockets_dir(root), bpffs::overlay_dir(root), bpffs::programs_dir(root)] {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let mut loader = EbpfLoader::new();
        for name in map_names::ALL {
            loader.map_pin_path(name, bpffs::maps_dir(root).join(name));
        }
        let ebpf = Self::configure(&mut loader, options).load(OBJECT).context("loading the eBPF object")?;
        // The verifier takes most of a start (0.5-1.1 s here): the programs a previous start
        // loaded from this object, with these options and these very maps, are taken from their
        // pins. Not with `--trace`: its log buffer is each load's own.
        let reuse_dir = (!options.trace).then(|| reuse_key(root, options)).transpose()?.map(|key| bpffs::programs_dir(root).join(key));
        let reused = match &reuse_dir {
            Some(dir) => pinned_programs(dir),
            None => Default::default(),
        };
        let fresh = reused.is_empty();
        let mut datapath = Self::with_programs_loaded(ebpf, reused, Some(root.to_path_buf()))?;
        if let (true, Some(dir)) = (fresh, &reuse_dir) {
            // For the next start; a failure here costs it only the verification again.
            if let Err(e) = datapath.pin_programs(dir) {
                log::warn!("the programs could not be pinned for the next start (it verifies them again): {e:#}");
            }
        }
        if let Some(dir) = &reuse_dir {
            bpffs::remove_other_program_pins(root, dir);
        }
        bpffs::remove_other_layouts(root);
        Ok(datapath)
    }

    /// Whether the programs were taken from a previous start's pins.
    pub fn programs_reused(&self) -> bool {
        !self.reused.is_empty()
    }

    /// Pins the programs that can be reused under `dir`.
    fn pin_programs(&mut self, dir: &Path) -> Result<()> {
        // bpffs refuses names with a '.'.
        let tmp = dir.with_file_name(format!("{}-new", dir.file_name().and_then(|n| n.to_str()).unwrap_or("programs")));
        std::fs::remove_dir_all(&tmp).ok();
        std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        for name in REUSABLE {
            let prog = self.program_entry(name)?;
            let pin = tmp.join(name);
            let prog: &mut SchedClassifier = prog.try_into()?;
            prog.pin(&pin)?;
        }
        // Whole or not at all: the directory appears with every pin in it.
        std::fs::rename(&tmp, dir).with_context(|| format!("renaming {} to {}", tmp.display(), dir.display()))?;
        Ok(())
    }

    /// Loads a private instance whose maps nobody else sees: for running programs on test packets.
    pub fn load_unpinned(options: &LoadOptions) -> Result<Self> {
        let ebpf = Self::configure(&mut EbpfLoader::new(), options).load(OBJECT).context("loading the eBPF object")?;
        Self::with_programs_loaded(ebpf, Default::default(), None)
    }

    fn configure<'a, 'b>(loader: &'a mut EbpfLoader<'b>, options: &'b LoadOptions) -> &'a mut EbpfLoader<'b> {
        loader
            .override_global(global_names::TRACE, if options.trace { &1u8 } else { &0u8 }, true)
            .override_global(global_names::CT_CONFIG, &options.ct_config, true)
            .override_global(global_names::NETNS_COOKIE, &options.netns_cookie, true)
            .map_max_entries(map_names::CONNTRACK, options.ct_entries)
            .map_max_entries(map_names::CT_PENDING, datapath_common::conntrack::pending_entries(options.ct_entries))
            .map_max_entries(map_names::SERVICES, options.max_services + 1)
            .map_max_entries(map_names::MAGLEV, options.maglev_slots().unwrap_or(0).div_ceil(2))
            .map_max_entries(map_names::BACKENDS, options.max_backends)
            // Room for every service's addresses whatever the --max-services: a dual-stack
            // service has two VIPs and up to four port entries (a VIP port and a publication
            // per family), beside the endpoints' published ports.
            .map_max_entries(map_names::VIPS, datapath_common::services::MAX_VIPS.max(options.max_services.saturating_mul(2)))
            .map_max_entries(map_names::PORTS, datapath_common::ports::MAX_PUBLISHED_PORTS.saturating_add(options.max_services.saturating_mul(4)))
    }

    /// The reader of the packet trace, writing to `logger` whenever it is flushed.
    pub fn trace_reader<T: log::Log>(&mut self, logger: T) -> Result<aya_log::EbpfLogger<T>> {
        aya_log::EbpfLogger::init_with_logger(&mut self.ebpf, logger).context("opening the datapath's trace buffer")
    }

    /// Forwards the packet trace of a datapath loaded with `trace` into the `log` crate's logger
    /// (the daemon's log), from a task on the current tokio runtime.
    pub fn forward_trace(&mut self) -> Result<()> {
        let logger = self.trace_reader(log::logger())?;
        // SAFETY: the AsyncFd owns the logger, which owns the ring buffer's fd: the fd stays open
        // for as long as it is registered.
        let mut logger = unsafe { tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)? };
        tokio::spawn(async move {
            loop {
                let Ok(mut guard) = logger.readable_mut().await else { return };
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
        });
        Ok(())
    }

    fn with_programs_loaded(mut ebpf: Ebpf, reused: std::collections::HashMap<&'static str, Program>, pins: Option<PathBuf>) -> Result<Self> {
        // Each program is verified on a thread of its own: the verifier takes most of a start
        // (0.5-0.9 s on this project's 2-vCPU VM, `from_container` alone 0.45-0.75 s), and the
        // others (about 0.25 s together) verify beside it instead of after it.
        let expected: Vec<&str> = PROGRAMS.iter().chain(program_names::SOCKET_PROGRAMS.iter()).copied().chain([program_names::XDP_FROM_UPLINK]).collect();
        for name in &expected {
            ebpf.program(name).with_context(|| format!("the eBPF object has no {name} program"))?;
        }
        std::thread::scope(|scope| {
            let loads: Vec<_> = ebpf
                .programs_mut()
                .filter(|(name, _)| expected.contains(name) && !reused.contains_key(name))
                .map(|(name, prog)| {
                    scope.spawn(move || {
                        match prog {
                            Program::SchedClassifier(p) => p.load(),
                            Program::CgroupSockAddr(p) => p.load(),
                            Program::Xdp(p) => p.load(),
                            _ => return Err(anyhow::anyhow!("{name} is of a kind the datapath does not load")),
                        }
                        .with_context(|| format!("the kernel refused the {name} program"))
                    })
                })
                .collect();
            loads.into_iter().try_for_each(|load| load.join().map_err(|_| anyhow::anyhow!("loading a program panicked"))?)
        })?;
        // The tail calls: `from_uplink` hands decapsulated overlay packets to `from_underlay`,
        // `from_container` a container's IPv6 packets to `from_container_v6`.
        for (map, slot, name) in [
            (map_names::OVERLAY_PROGS, 0, program_names::FROM_UNDERLAY),
            (map_names::CONTAINER_PROGS, 0, program_names::FROM_CONTAINER_V6),
        ] {
            let fd = {
                let entry = match reused.get(name) {
                    Some(p) => p,
                    None => ebpf.program(name).with_context(|| format!("{name} missing"))?,
                };
                let prog: &SchedClassifier = entry.try_into()?;
                prog.fd()?.try_clone()?
            };
            let mut progs: aya::maps::ProgramArray<&mut MapData> =
                aya::maps::ProgramArray::try_from(ebpf.map_mut(map).with_context(|| format!("{map} map missing"))?)?;
            progs.set(slot, &fd, 0).with_context(|| format!("writing {map}"))?;
        }
        let maglev = MappedArray::map(map_data(&ebpf, map_names::MAGLEV)?, std::mem::size_of::<datapath_common::MaglevPair>() / 4)?;
        Ok(Self { ebpf, reused, pins, maglev })
    }

    /// Attaches the socket programs to the cgroup `root` (they act only on sockets of the
    /// namespace whose cookie the datapath was loaded with), pinned under `<bpffs>/sockets`.
    /// Links of an earlier run are replaced: the new one is attached before the old one goes, and
    /// the two never translate twice (the old one sees an address that is no longer published).
    pub fn attach_sockets(&mut self, cgroup_root: &Path) -> Result<()> {
        let dir = bpffs::sockets_dir(self.pins.as_ref().context("attach needs a pinned datapath")?);
        let cgroup = std::fs::File::open(cgroup_root).with_context(|| format!("opening the cgroup {}", cgroup_root.display()))?;
        // bpffs refuses names with a '.'.
        let generation = format!("{}-{}", std::process::id(), crate::conntrack::now_ns());
        for name in program_names::SOCKET_PROGRAMS {
            let prog: &mut CgroupSockAddr = self.ebpf.program_mut(name).with_context(|| format!("{name} missing"))?.try_into()?;
            let id = prog
                // A link (bpf_link_create) is always one of many on its cgroup; it takes no flags.
                .attach(&cgroup, CgroupAttachMode::Single)
                .with_context(|| format!("attaching {name} to the cgroup {}", cgroup_root.display()))?;
            let link: FdLink = prog.take_link(id)?.try_into()?;
            let pin = dir.join(format!("{name}-{generation}"));
            link.pin(&pin).with_context(|| format!("pinning {}", pin.display()))?;
            for old in pin_names(&dir) {
                if old.starts_with(&format!("{name}-")) && !old.ends_with(&generation) {
                    unpin(Some(dir.join(old)))?;
                }
            }
        }
        Ok(())
    }

    /// The program `name`: reused from a previous start's pin, or loaded by this one.
    fn program_entry(&mut self, name: &str) -> Result<&mut Program> {
        match self.reused.get_mut(name) {
            Some(p) => Ok(p),
            None => self.ebpf.program_mut(name).with_context(|| format!("{name} program missing")),
        }
    }

    fn program(&mut self, name: &str) -> Result<&mut SchedClassifier> {
        Ok(self.program_entry(name)?.try_into()?)
    }

    /// File descriptor of the from_container program (for BPF_PROG_TEST_RUN).
    pub fn program_fd(&mut self) -> Result<RawFd> {
        self.program_fd_of(program_names::FROM_CONTAINER)
    }

    /// File descriptor of program `name`, of any type (for BPF_PROG_TEST_RUN).
    pub fn program_fd_of(&mut self, name: &str) -> Result<RawFd> {
        Ok(self.program_entry(name)?.fd()?.as_fd().as_raw_fd())
    }

    /// Attaches from_container to an endpoint's host-side veth `ifname`: a direct-action
    /// cls_bpf filter at the ingress of its clsact qdisc, or, when the filter is there already,
    /// this instance's program swapped into it (atomically). Idempotent.
    ///
    /// Not a TCX link, as the uplinks have: creating a TCX link waits for an RCU grace period
    /// with the RTNL lock held (10-25 ms on a 2-vCPU VM, most of a connect's time, and every
    /// netlink request of the host waits behind it); a filter takes tens of microseconds. The
    /// filter lives as long as the interface, with no pin and no process holding it: deleting
    /// the interface removes it, and a daemon that stops leaves it working.
    pub fn attach_endpoint(&mut self, ifname: &str) -> Result<()> {
        match tc::qdisc_add_clsact(ifname) {
            Ok(()) => {}
            Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(e).with_context(|| format!("adding the clsact qdisc to {ifname}")),
        }
        let prog = self.program(program_names::FROM_CONTAINER)?;
        let options = NlOptions { priority: ENDPOINT_FILTER_PRIORITY, handle: ENDPOINT_FILTER_HANDLE, classid: None };
        let id = match prog.attach_with_options(ifname, TcAttachType::Ingress, TcAttachOptions::Netlink(options)) {
            Ok(id) => id,
            Err(ProgramError::TcError(TcError::NetlinkError(e))) if e.raw_os_error() == Some(libc::EEXIST) => {
                let ours = SchedClassifierLink::attached(ifname, TcAttachType::Ingress, ENDPOINT_FILTER_PRIORITY, ENDPOINT_FILTER_HANDLE, None)
                    .with_context(|| format!("finding the filter of {ifname}"))?;
                prog.attach_to_link(ours).with_context(|| format!("updating the program on {ifname}"))?
            }
            Err(e) => return Err(e).with_context(|| format!("attaching the datapath to {ifname}")),
        };
        // Dropping the handle would delete the filter: it belongs to the interface now.
        std::mem::forget(prog.take_link(id)?);
        Ok(())
    }

    /// Attaches from_uplink at TCX ingress of the uplink `ifname`: a pinned link, or, when that
    /// exists, this instance's program swapped into it.
    pub fn attach_uplink(&mut self, ifname: &str) -> Result<()> {
        let pin = self.pins.as_ref().map(|root| bpffs::uplinks_dir(root).join(uplink_pin_name(ifname)));
        self.attach_program(program_names::FROM_UPLINK, pin, ifname)
    }

    /// Attaches the XDP program to the uplink `ifname` in native (driver) mode and pins the link,
    /// or swaps this instance's program into the pinned link. Fails where the driver has no
    /// native XDP.
    pub fn attach_uplink_xdp(&mut self, ifname: &str) -> Result<()> {
        let pin = bpffs::xdp_dir(self.pins.as_ref().context("attach needs a pinned datapath")?).join(uplink_pin_name(ifname));
        let existing = PinnedLink::from_pin(&pin).ok();
        let name = program_names::XDP_FROM_UPLINK;
        let prog: &mut Xdp = self.program_entry(name)?.try_into()?;
        match existing {
            Some(pinned) => {
                let link = XdpLink::try_from(FdLink::from(pinned))
                    .with_context(|| format!("pinned link {} is not an XDP link", pin.display()))?;
                let id = prog.attach_to_link(link).with_context(|| format!("updating the XDP program on {ifname}"))?;
                drop(prog.take_link(id)?);
            }
            None => {
                let id = prog.attach(ifname, XdpMode::Driver).with_context(|| format!("attaching XDP (native) to {ifname}"))?;
                let link: FdLink = prog.take_link(id)?.try_into().with_context(|| format!("the XDP attachment of {ifname} is no link"))?;
                link.pin(&pin).with_context(|| format!("pinning the XDP link of {ifname}"))?;
            }
        }
        Ok(())
    }

    /// Forgets the pinned XDP link of uplink `ifname` (detaching it).
    pub fn detach_uplink_xdp(&mut self, ifname: &str) -> Result<()> {
        unpin(self.pins.as_ref().map(|root| bpffs::xdp_dir(root).join(uplink_pin_name(ifname))))
    }

    /// Uplinks that have a pinned XDP link.
    pub fn pinned_uplinks_xdp(&self) -> Vec<String> {
        self.pinned_interfaces(bpffs::xdp_dir)
    }

    fn attach_program(&mut self, program: &str, pin: Option<PathBuf>, ifname: &str) -> Result<()> {
        let pin = pin.context("attach needs a pinned datapath")?;
        let existing = PinnedLink::from_pin(&pin).ok();
        let prog = self.program(program)?;
        match existing {
            Some(pinned) => {
                let link = SchedClassifierLink::try_from(FdLink::from(pinned))
                    .with_context(|| format!("pinned link {} is not a TCX link", pin.display()))?;
                let id = prog.attach_to_link(link).with_context(|| format!("updating the program on {ifname}"))?;
                // The pin keeps the link; dropping our handle only closes a file descriptor.
                drop(prog.take_link(id)?);
            }
            None => {
                let id = prog
                    .attach(ifname, TcAttachType::Ingress)
                    .with_context(|| format!("attaching the datapath to {ifname}"))?;
                let link: FdLink = prog.take_link(id)?.try_into()?;
                link.pin(&pin).with_context(|| format!("pinning the link of {ifname}"))?;
            }
        }
        Ok(())
    }

    /// Removes the pinned TCX links endpoints had before their program became a filter (an
    /// older bpfnet's), once every endpoint has its filter: a TCX program runs before the
    /// filter, so until then it keeps serving; those of `keep` stay. Returns how many went.
    pub fn forget_endpoint_links(&mut self, keep: &HashSet<String>) -> Result<usize> {
        let Some(root) = self.pins.as_ref() else { return Ok(0) };
        let dir = bpffs::links_dir(root);
        let names: Vec<String> = pin_names(&dir).into_iter().filter(|n| !keep.contains(n)).collect();
        for name in &names {
            unpin(Some(dir.join(name)))?;
        }
        Ok(names.len())
    }

    /// Forgets the pinned link of uplink `ifname`.
    pub fn detach_uplink(&mut self, ifname: &str) -> Result<()> {
        unpin(self.pins.as_ref().map(|root| bpffs::uplinks_dir(root).join(uplink_pin_name(ifname))))
    }

    /// Uplinks that have a pinned link.
    pub fn pinned_uplinks(&self) -> Vec<String> {
        self.pinned_interfaces(bpffs::uplinks_dir)
    }

    /// The interfaces whose links are pinned in `dir` (uplinks' or their XDP links), by name.
    fn pinned_interfaces(&self, dir: fn(&Path) -> PathBuf) -> Vec<String> {
        let pins = self.pins.as_ref().map(|root| pin_names(&dir(root))).unwrap_or_default();
        pins.into_iter().map(|p| p.replace(':', ".")).collect()
    }
}

/// The programs a later start may take from their pins: the TC ones (the socket programs and
/// the XDP one, small, are always loaded).
const REUSABLE: [&str; 5] = PROGRAMS;

/// What a loaded program depends on: the object's bytes, the load options (baked into its
/// read-only data) and the identity of every pinned map it refers to (a map made anew, after a
/// cleanup or a layout change, has a new id). Programs pinned under another key are not used.
fn reuse_key(root: &Path, options: &LoadOptions) -> Result<String> {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    OBJECT.hash(&mut hasher);
    format!("{options:?}").hash(&mut hasher);
    datapath_common::LAYOUT_VERSION.hash(&mut hasher);
    for name in map_names::ALL {
        let pin = bpffs::maps_dir(root).join(name);
        let info = aya::maps::MapInfo::from_pin(&pin).with_context(|| format!("reading {}", pin.display()))?;
        info.id().hash(&mut hasher);
    }
    Ok(format!("{:016x}", hasher.finish()))
}

/// The reusable programs pinned in `dir`, all of them or none.
fn pinned_programs(dir: &Path) -> std::collections::HashMap<&'static str, Program> {
    let mut found = std::collections::HashMap::new();
    for name in REUSABLE {
        let pin = dir.join(name);
        match SchedClassifier::from_pin(&pin).map(Program::SchedClassifier) {
            Ok(p) => {
                found.insert(name, p);
            }
            Err(_) => return Default::default(),
        }
    }
    found
}

/// Where the endpoints' filter sits on their clsact qdisc (`tc filter show dev IFACE ingress`).
const ENDPOINT_FILTER_PRIORITY: u16 = 1;
const ENDPOINT_FILTER_HANDLE: TcHandle = TcHandle::new(0, 1);

/// The map `name` of `ebpf` (an array or a hash).
fn map_data<'a>(ebpf: &'a Ebpf, name: &str) -> Result<&'a MapData> {
    match ebpf.map(name).with_context(|| format!("{name} map missing"))? {
        aya::maps::Map::Array(data) | aya::maps::Map::HashMap(data) => Ok(data),
        _ => anyhow::bail!("{name} is neither an array nor a hash"),
    }
}

/// bpffs refuses names with a '.' (VLAN interfaces have one); interface names never hold a ':'.
fn uplink_pin_name(ifname: &str) -> String {
    ifname.replace('.', ":")
}

fn unpin(pin: Option<PathBuf>) -> Result<()> {
    if let Some(pin) = pin {
        if let Ok(pinned) = PinnedLink::from_pin(&pin) {
            pinned.unpin()?;
        }
    }
    Ok(())
}

fn pin_names(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

/// A second handle on the pinned counters, so that `stats` reads them without waiting for the
/// daemon's lock.
pub struct Counters(PerCpuArray<MapData, u64>);

impl Counters {
    /// Opens the counters the datapath pinned under `root` (load the datapath first).
    pub fn open(root: &Path) -> Result<Self> {
        let pin = bpffs::maps_dir(root).join(map_names::COUNTERS);
        let data = MapData::from_pin(&pin).with_context(|| format!("opening {}", pin.display()))?;
        Ok(Self(PerCpuArray::try_from(aya::maps::Map::PerCpuArray(data))?))
    }

    pub fn read(&self) -> Result<Vec<(Counter, u64)>> {
        sum_counters(&self.0)
    }
}

fn sum_counters<T: std::borrow::Borrow<MapData>>(map: &PerCpuArray<T, u64>) -> Result<Vec<(Counter, u64)>> {
    Counter::ALL.iter().map(|c| Ok((*c, map.get(&(*c as u32), 0)?.iter().sum()))).collect()
}

/// Deletes every key of `map` not in `keep`.
fn retain_keys<K, V>(map: &mut HashMap<&mut MapData, K, V>, keep: &HashSet<K>) -> Result<()>
where
    K: aya::Pod + Eq + std::hash::Hash,
    V: aya::Pod,
{
    let stale: Vec<K> = map.keys().collect::<Result<Vec<_>, _>>()?.into_iter().filter(|k| !keep.contains(k)).collect();
    for key in stale {
        remove_ignoring_missing(map.remove(&key))?;
    }
    Ok(())
}

fn found_or_none<T>(result: Result<T, aya::maps::MapError>) -> Result<Option<T>> {
    match result {
        Ok(v) => Ok(Some(v)),
        Err(aya::maps::MapError::KeyNotFound) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn remove_ignoring_missing(result: Result<(), aya::maps::MapError>) -> Result<()> {
    match result {
        Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(aya::maps::MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => Ok(other?),
    }
}
