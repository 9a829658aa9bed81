//! The connection tables of a private instance, entry by entry (for tests through
//! BPF_PROG_TEST_RUN; the daemon works on the pinned tables with `crate::conntrack::Conntrack`).
use super::*;

impl Datapath {
    /// One of the connection tables: `CONNTRACK` (established) or `CT_PENDING` (new).
    fn ct_table(&mut self, name: &str) -> Result<HashMap<&mut MapData, CtKey, CtEntry>> {
        Ok(HashMap::try_from(self.ebpf.map_mut(name).with_context(|| format!("{name} map missing"))?)?)
    }

    /// One entry of the connection tables, and whether it is in the established one (for tests of
    /// a private instance; the daemon uses `crate::conntrack::Conntrack` on the pinned tables).
    pub fn conntrack_lookup(&mut self, key: &CtKey) -> Result<Option<(CtEntry, bool)>> {
        if let Some(entry) = found_or_none(self.ct_table(map_names::CONNTRACK)?.get(key, 0))? {
            return Ok(Some((entry, true)));
        }
        Ok(found_or_none(self.ct_table(map_names::CT_PENDING)?.get(key, 0))?.map(|e| (e, false)))
    }

    /// As [`Self::conntrack_lookup`], whichever table holds it.
    pub fn conntrack_entry(&mut self, key: &CtKey) -> Result<Option<CtEntry>> {
        Ok(self.conntrack_lookup(key)?.map(|(e, _)| e))
    }

    /// Writes an entry into the new-connection table.
    pub fn set_conntrack_entry(&mut self, key: CtKey, entry: CtEntry) -> Result<()> {
        self.ct_table(map_names::CT_PENDING)?.insert(key, entry, 0).context("writing CT_PENDING")?;
        Ok(())
    }

    /// Removes an entry from both tables.
    pub fn remove_conntrack_entry(&mut self, key: &CtKey) -> Result<()> {
        remove_ignoring_missing(self.ct_table(map_names::CONNTRACK)?.remove(key))?;
        remove_ignoring_missing(self.ct_table(map_names::CT_PENDING)?.remove(key))
    }

    /// Entries the connections delivered to host-side veth `ifindex` hold in the established
    /// table, as the datapath counts them.
    pub fn conntrack_share(&mut self, ifindex: u32) -> Result<u32> {
        let map: HashMap<&mut MapData, u32, u32> = HashMap::try_from(self.ebpf.map_mut(map_names::CT_QUOTA).context("CT_QUOTA map missing")?)?;
        Ok(found_or_none(map.get(&ifindex, 0))?.unwrap_or(0))
    }
}
