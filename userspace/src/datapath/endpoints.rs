//! The writers of `ENDPOINTS` (where to deliver an address), `IFACES` (who sends on a host-side
//! veth) and `PORTS` (published ports), and their reconciliation.
use super::*;

impl Datapath {
    pub(super) fn endpoints(&mut self) -> Result<HashMap<&mut MapData, IpKey, EndpointInfo>> {
        Ok(HashMap::try_from(self.ebpf.map_mut(map_names::ENDPOINTS).context("ENDPOINTS map missing")?)?)
    }

    fn ifaces(&mut self) -> Result<HashMap<&mut MapData, u32, IfaceInfo>> {
        Ok(HashMap::try_from(self.ebpf.map_mut(map_names::IFACES).context("IFACES map missing")?)?)
    }

    pub fn set_endpoint(&mut self, ip: IpAddr, info: EndpointInfo) -> Result<()> {
        self.endpoints()?.insert(IpKey::from(ip), info, 0).context("writing ENDPOINTS")?;
        Ok(())
    }

    pub fn endpoint(&mut self, ip: IpAddr) -> Result<Option<EndpointInfo>> {
        found_or_none(self.endpoints()?.get(&IpKey::from(ip), 0))
    }

    pub fn iface(&mut self, ifindex: u32) -> Result<Option<IfaceInfo>> {
        found_or_none(self.ifaces()?.get(&ifindex, 0))
    }

    pub fn remove_endpoint(&mut self, ip: IpAddr) -> Result<()> {
        remove_ignoring_missing(self.endpoints()?.remove(&IpKey::from(ip)))
    }

    pub fn set_iface(&mut self, ifindex: u32, info: IfaceInfo) -> Result<()> {
        self.ifaces()?.insert(ifindex, info, 0).context("writing IFACES")?;
        Ok(())
    }

    pub fn remove_iface(&mut self, ifindex: u32) -> Result<()> {
        remove_ignoring_missing(self.ifaces()?.remove(&ifindex))
    }

    fn ports(&mut self) -> Result<HashMap<&mut MapData, PortKey, PortTarget>> {
        Ok(HashMap::try_from(self.ebpf.map_mut(map_names::PORTS).context("PORTS map missing")?)?)
    }

    pub fn set_port(&mut self, key: PortKey, target: PortTarget) -> Result<()> {
        self.ports()?.insert(key, target, 0).context("writing PORTS")?;
        Ok(())
    }

    /// Removes the published port `key` if it still leads to `target`.
    pub fn remove_port_if(&mut self, key: PortKey, target: PortTarget) -> Result<()> {
        let mut ports = self.ports()?;
        match ports.get(&key, 0) {
            Ok(current) if current == target => remove_ignoring_missing(ports.remove(&key)),
            Ok(_) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes map entries that are not in the desired sets (left by a crash or a gone endpoint).
    /// Endpoints on other nodes are the cluster's to keep (`set_remote_endpoints`): kept here, so
    /// that a restart does not interrupt flows between nodes before etcd is read again.
    pub fn retain(&mut self, endpoints: &HashSet<IpKey>, ifaces: &HashSet<u32>, ports: &HashSet<PortKey>) -> Result<()> {
        let remote: HashSet<IpKey> = self.endpoints()?.iter().filter_map(|e| e.ok()).filter(|(_, i)| i.is_remote()).map(|(k, _)| k).collect();
        let keep: HashSet<IpKey> = endpoints.union(&remote).copied().collect();
        retain_keys(&mut self.endpoints()?, &keep)?;
        retain_keys(&mut self.ifaces()?, ifaces)?;
        retain_keys(&mut self.ports()?, ports)
    }
}
