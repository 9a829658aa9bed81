//! The packet counters (`COUNTERS`, per CPU), summed.
use super::*;

impl Datapath {
    /// Every counter summed over CPUs.
    pub fn counters(&mut self) -> Result<Vec<(Counter, u64)>> {
        let map: PerCpuArray<&mut MapData, u64> =
            PerCpuArray::try_from(self.ebpf.map_mut(map_names::COUNTERS).context("COUNTERS map missing")?)?;
        sum_counters(&map)
    }
}
