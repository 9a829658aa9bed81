//! The writers of the load balancer's maps: `SERVICES`, `BACKENDS`, the mmapped `MAGLEV` tables
//! and `VIPS`, batched where thousands change at once.
use super::*;

impl Datapath {
    /// How many services and backends the loaded tables hold, and the Maglev slots (a pinned
    /// table keeps the size it was created with). Services also by what `VIPS` and `PORTS` hold
    /// (two VIPs and four port entries each at most): pinned by an earlier version, they may be
    /// smaller than the services table asks.
    pub fn service_capacity(&self) -> Result<(u32, u32, u32)> {
        let by_vips = self.max_entries(map_names::VIPS)? / 2;
        let by_ports = self.max_entries(map_names::PORTS)? / 4;
        let services = self.max_entries(map_names::SERVICES)?.saturating_sub(1).min(by_vips).min(by_ports);
        Ok((services, self.max_entries(map_names::BACKENDS)?, self.maglev.len as u32))
    }

    fn max_entries(&self, name: &str) -> Result<u32> {
        Ok(map_data(&self.ebpf, name)?.info()?.max_entries())
    }

    fn array<V: aya::Pod>(&mut self, name: &str) -> Result<Array<&mut MapData, V>> {
        Ok(Array::try_from(self.ebpf.map_mut(name).with_context(|| format!("{name} map missing"))?)?)
    }

    pub fn set_service(&mut self, id: u32, info: ServiceInfo) -> Result<()> {
        self.array(map_names::SERVICES)?.set(id, info, 0).context("writing SERVICES")
    }

    pub fn set_backend(&mut self, id: u32, info: BackendInfo) -> Result<()> {
        self.array(map_names::BACKENDS)?.set(id, info, 0).context("writing BACKENDS")
    }

    fn map_fd(&self, name: &str) -> Result<std::os::fd::BorrowedFd<'_>> {
        Ok(map_data(&self.ebpf, name)?.fd().as_fd())
    }

    /// Many services at once, each map in one batched write: backends, then headers, then the
    /// published and VIP ports, then the VIPs (the Maglev tables are the caller's, written
    /// before the headers through [`Self::write_maglev`]).
    pub fn set_services_batch(
        &mut self,
        backends: &[(u32, BackendInfo)],
        services: &[(u32, ServiceInfo)],
        ports: &[(PortKey, PortTarget)],
        vips: &[(IpKey, u32)],
    ) -> Result<()> {
        fn split<K: Copy, V: Copy>(pairs: &[(K, V)]) -> (Vec<K>, Vec<V>) {
            pairs.iter().copied().unzip()
        }
        let (k, v) = split(backends);
        crate::bpfsys::update_batch(self.map_fd(map_names::BACKENDS)?, &k, &v).context("writing BACKENDS")?;
        let (k, v) = split(services);
        crate::bpfsys::update_batch(self.map_fd(map_names::SERVICES)?, &k, &v).context("writing SERVICES")?;
        let (k, v) = split(ports);
        crate::bpfsys::update_batch(self.map_fd(map_names::PORTS)?, &k, &v).context("writing PORTS")?;
        let (k, v) = split(vips);
        crate::bpfsys::update_batch(self.map_fd(map_names::VIPS)?, &k, &v).context("writing VIPS")
    }

    /// Every Maglev slot, as the datapath reads them (see [`Self::write_maglev`]).
    pub fn maglev_slots(&mut self) -> &mut [u32] {
        self.maglev.slots()
    }

    /// Writes a service's Maglev table (backend ids) from slot `base`.
    pub fn write_maglev(&mut self, base: u32, table: &[u32]) -> Result<()> {
        let slots = self.maglev.slots();
        let range = base as usize..base as usize + table.len();
        anyhow::ensure!(range.end <= slots.len(), "Maglev table {range:?} beyond the {} slots", slots.len());
        slots[range].copy_from_slice(table);
        Ok(())
    }

    fn vips(&mut self) -> Result<HashMap<&mut MapData, IpKey, u32>> {
        Ok(HashMap::try_from(self.ebpf.map_mut(map_names::VIPS).context("VIPS map missing")?)?)
    }

    pub fn set_vip(&mut self, vip: IpAddr, network: u32) -> Result<()> {
        self.vips()?.insert(IpKey::from(vip), network, 0).context("writing VIPS")
    }

    pub fn remove_vip(&mut self, vip: IpAddr) -> Result<()> {
        remove_ignoring_missing(self.vips()?.remove(&IpKey::from(vip)))
    }

    /// Makes `VIPS` hold exactly `vips`, and clears every `SERVICES` and `BACKENDS` slot not in
    /// `services` and `backends` (left by a crash or a removed service): one batched write of
    /// empty slots per array, rather than a read and maybe a write per slot.
    pub fn retain_services(&mut self, vips: &HashSet<IpKey>, services: &HashSet<u32>, backends: &HashSet<u32>) -> Result<()> {
        retain_keys(&mut self.vips()?, vips)?;
        let unused = |len: u32, keep: &HashSet<u32>| (0..len).filter(|id| !keep.contains(id)).collect::<Vec<u32>>();
        let ids = unused(self.max_entries(map_names::SERVICES)?, services);
        crate::bpfsys::update_batch(self.map_fd(map_names::SERVICES)?, &ids, &vec![ServiceInfo::default(); ids.len()])
            .context("clearing SERVICES")?;
        let ids = unused(self.max_entries(map_names::BACKENDS)?, backends);
        crate::bpfsys::update_batch(self.map_fd(map_names::BACKENDS)?, &ids, &vec![BackendInfo::default(); ids.len()])
            .context("clearing BACKENDS")
    }
}
