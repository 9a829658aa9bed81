//! Overlay networks (clusters): the writer of `OVERLAY_VNIS` (VNI -> datapath network), of the
//! `ENDPOINTS` entries of endpoints on other nodes, of `MESH_BACKENDS` (the backends here of the
//! cluster's services), of `OVERLAY_PEERS` (the other live nodes), and the attachment of `from_overlay` to the
//! node's VXLAN device (pinned under `<bpffs>/overlay/<interface>`).
use super::*;

impl Datapath {
    fn overlay_vnis(&mut self) -> Result<HashMap<&mut MapData, u32, u32>> {
        Ok(HashMap::try_from(self.ebpf.map_mut(map_names::OVERLAY_VNIS).context("OVERLAY_VNIS map missing")?)?)
    }

    /// Makes `OVERLAY_VNIS` hold exactly `vnis` (VNI, datapath network id).
    pub fn set_overlay_vnis(&mut self, vnis: &[(u32, u32)]) -> Result<()> {
        let mut map = self.overlay_vnis()?;
        for (vni, network) in vnis {
            map.insert(vni, network, 0).context("writing OVERLAY_VNIS")?;
        }
        let keep: HashSet<u32> = vnis.iter().map(|(vni, _)| *vni).collect();
        retain_keys(&mut map, &keep)
    }

    /// Makes the `ENDPOINTS` entries of endpoints on other nodes exactly `remote` (local ones are
    /// left alone); writes only what changed.
    pub fn set_remote_endpoints(&mut self, remote: &std::collections::HashMap<IpKey, EndpointInfo>) -> Result<()> {
        let mut map = self.endpoints()?;
        let current: std::collections::HashMap<IpKey, EndpointInfo> = map.iter().collect::<Result<_, _>>()?;
        for (key, info) in &current {
            if info.is_remote() && !remote.contains_key(key) {
                remove_ignoring_missing(map.remove(key))?;
            }
        }
        for (key, info) in remote {
            match current.get(key) {
                // An address of this node: etcd and the node disagree for a moment (a move); the
                // local endpoint wins.
                Some(here) if !here.is_remote() => {}
                Some(same) if same == info => {}
                _ => map.insert(key, info, 0).context("writing ENDPOINTS")?,
            }
        }
        Ok(())
    }

    /// Makes `MESH_BACKENDS` hold exactly `backends` (address, port, protocol of a backend here
    /// of a cluster service -> the service's datapath id).
    pub fn set_mesh_backends(&mut self, backends: &std::collections::HashMap<PortKey, u32>) -> Result<()> {
        let mut map: HashMap<&mut MapData, PortKey, u32> =
            HashMap::try_from(self.ebpf.map_mut(map_names::MESH_BACKENDS).context("MESH_BACKENDS map missing")?)?;
        for (key, service) in backends {
            map.insert(key, service, 0).context("writing MESH_BACKENDS")?;
        }
        let keep: HashSet<PortKey> = backends.keys().copied().collect();
        retain_keys(&mut map, &keep)
    }

    /// Makes `OVERLAY_PEERS` hold exactly `peers`: the underlay addresses of the cluster's other
    /// live nodes, the only senders the routing mesh takes a client's connection from.
    pub fn set_overlay_peers(&mut self, peers: &HashSet<std::net::Ipv4Addr>) -> Result<()> {
        let mut map: HashMap<&mut MapData, [u8; 4], u8> =
            HashMap::try_from(self.ebpf.map_mut(map_names::OVERLAY_PEERS).context("OVERLAY_PEERS map missing")?)?;
        for peer in peers {
            map.insert(peer.octets(), 1, 0).context("writing OVERLAY_PEERS")?;
        }
        let keep: HashSet<[u8; 4]> = peers.iter().map(|p| p.octets()).collect();
        retain_keys(&mut map, &keep)
    }

    /// Makes the datapath wrap and unwrap VXLAN itself with `underlay` as this node's address
    /// (`None`: the node's VXLAN device does it).
    pub fn set_overlay_node(&mut self, underlay: Option<std::net::Ipv4Addr>) -> Result<()> {
        let mut map: aya::maps::Array<&mut MapData, u32> =
            aya::maps::Array::try_from(self.ebpf.map_mut(map_names::OVERLAY_NODE).context("OVERLAY_NODE map missing")?)?;
        let word = underlay.map_or(0, |a| u32::from_ne_bytes(a.octets()));
        map.set(0, word, 0).context("writing OVERLAY_NODE")
    }

    /// Attaches `from_overlay` at TCX ingress of the VXLAN device `ifname`.
    pub fn attach_overlay(&mut self, ifname: &str) -> Result<()> {
        let pin = self.pins.as_ref().map(|root| bpffs::overlay_dir(root).join(ifname));
        self.attach_program(program_names::FROM_OVERLAY, pin, ifname)
    }
}
