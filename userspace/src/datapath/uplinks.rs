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

    /// Makes `UPLINKS` hold exactly `uplinks`.
    pub fn set_uplinks(&mut self, uplinks: &[UplinkAddresses]) -> Result<()> {
        let mut map = self.uplinks()?;
        for u in uplinks {
            let flags = if u.veth { datapath_common::uplink_flags::VETH } else { 0 };
            let addr6 = u.ipv6.map_or(IpKey::default(), |a| IpKey::from(IpAddr::V6(a)));
            let info = UplinkInfo { addr: IpKey::from(IpAddr::V4(u.ipv4)), addr6, flags };
            map.insert(u.ifindex, info, 0).context("writing UPLINKS")?;
        }
        let keep: HashSet<u32> = uplinks.iter().map(|u| u.ifindex).collect();
        retain_keys(&mut map, &keep)
    }
}

/// An uplink as `UPLINKS` holds it: the addresses masquerade gives traffic leaving by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UplinkAddresses {
    pub ifindex: u32,
    pub ipv4: std::net::Ipv4Addr,
    /// None: IPv6 from containers is not masqueraded out of it.
    pub ipv6: Option<std::net::Ipv6Addr>,
    pub veth: bool,
}
