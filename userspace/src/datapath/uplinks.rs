//! The writers of `UPLINKS` (where traffic leaves the host, and the address masquerade gives it)
//! and `HOST_ADDRS` (the daemon's namespace's addresses, where ports published on every address
//! answer).
use super::*;

impl Datapath {
    fn host_addrs(&mut self) -> Result<HashMap<&mut MapData, IpKey, u8>> {
        Ok(HashMap::try_from(self.ebpf.map_mut(map_names::HOST_ADDRS).context("HOST_ADDRS map missing")?)?)
    }

    /// Makes `HOST_ADDRS` hold exactly `addrs`: where a port published on every address answers.
    pub fn set_host_addrs(&mut self, addrs: &[IpAddr]) -> Result<()> {
        let mut map = self.host_addrs()?;
        for addr in addrs {
            map.insert(IpKey::from(*addr), 1, 0).context("writing HOST_ADDRS")?;
        }
        let keep: HashSet<IpKey> = addrs.iter().map(|a| IpKey::from(*a)).collect();
        retain_keys(&mut map, &keep)
    }

    fn uplinks(&mut self) -> Result<HashMap<&mut MapData, u32, UplinkInfo>> {
        Ok(HashMap::try_from(self.ebpf.map_mut(map_names::UPLINKS).context("UPLINKS map missing")?)?)
    }

    /// Makes `UPLINKS` hold exactly `uplinks` (ifindex, masquerade address, is a veth).
    pub fn set_uplinks(&mut self, uplinks: &[(u32, IpAddr, bool)]) -> Result<()> {
        let mut map = self.uplinks()?;
        for (index, addr, veth) in uplinks {
            let flags = if *veth { datapath_common::uplink_flags::VETH } else { 0 };
            map.insert(index, UplinkInfo { addr: IpKey::from(*addr), flags }, 0).context("writing UPLINKS")?;
        }
        let keep: HashSet<u32> = uplinks.iter().map(|(i, _, _)| *i).collect();
        retain_keys(&mut map, &keep)
    }
}
