//! The messages of Docker's remote network driver protocol (libnetwork's `remote` driver), as
//! dockerd sends them: JSON bodies of HTTP POSTs named `/NetworkDriver.<Call>`, fields in
//! PascalCase, optional fields absent or null.
use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use crate::ports::{PortRequest, Protocol, DYNAMIC_PORTS};

/// Driver options of `docker network create -o key=value` arrive under this key of `Options`.
pub const GENERIC_OPTIONS: &str = "com.docker.network.generic";
/// `docker network create -o bpfnet.overlay=NAME`: the Docker network stands for the cluster's
/// overlay network NAME on this node.
pub const OVERLAY_OPTION: &str = "bpfnet.overlay";
/// `docker network create --internal`.
pub const INTERNAL_OPTION: &str = "com.docker.network.internal";
/// `docker run -p`: the publications, in CreateEndpoint, Join and ProgramExternalConnectivity.
pub const PORT_MAP_OPTION: &str = "com.docker.network.portmap";

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct IpamData {
    /// The IPAM driver's address space: bpfnet's (`--ipam-driver bpfnet`) or Docker's own.
    #[serde(default)]
    pub address_space: String,
    #[serde(default)]
    pub pool: String,
    #[serde(default)]
    pub gateway: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct CreateNetwork {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "Options", default)]
    pub options: Option<BTreeMap<String, Value>>,
    #[serde(rename = "IPv4Data", default)]
    pub ipv4_data: Option<Vec<IpamData>>,
    #[serde(rename = "IPv6Data", default)]
    pub ipv6_data: Option<Vec<IpamData>>,
}

#[derive(Debug, Deserialize)]
pub struct NetworkCall {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct Interface {
    #[serde(default)]
    pub address: String,
    #[serde(rename = "AddressIPv6", default)]
    pub address_ipv6: String,
    #[serde(default)]
    pub mac_address: String,
}

#[derive(Debug, Deserialize)]
pub struct CreateEndpoint {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    #[serde(rename = "Interface", default)]
    pub interface: Option<Interface>,
}

/// DeleteEndpoint, Leave, EndpointOperInfo, RevokeExternalConnectivity.
#[derive(Debug, Deserialize)]
pub struct EndpointCall {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
}

#[derive(Debug, Deserialize)]
pub struct Join {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    #[serde(rename = "SandboxKey")]
    pub sandbox_key: String,
}

#[derive(Debug, Deserialize)]
pub struct ProgramExternalConnectivity {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    #[serde(rename = "Options", default)]
    pub options: Option<BTreeMap<String, Value>>,
}

/// IPAM: a pool for a new network (`--subnet` in `Pool`, else empty).
#[derive(Debug, Deserialize)]
pub struct RequestPool {
    #[serde(rename = "Pool", default)]
    pub pool: String,
    #[serde(rename = "SubPool", default)]
    pub sub_pool: String,
    #[serde(rename = "V6", default)]
    pub v6: bool,
}

/// IPAM: an address of a pool: the gateway's (its `RequestAddressType` option says so) or a
/// container's; `Address` empty for any.
#[derive(Debug, Deserialize)]
pub struct RequestAddress {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
    #[serde(rename = "Address", default)]
    pub address: String,
    #[serde(rename = "Options", default)]
    pub options: Option<BTreeMap<String, Value>>,
}

/// `RequestAddressType` of the gateway's address.
pub const GATEWAY_ADDRESS: &str = "com.docker.network.gateway";

#[derive(Debug, Deserialize)]
pub struct ReleaseAddress {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
    #[serde(rename = "Address")]
    pub address: String,
}

#[derive(Debug, Deserialize)]
pub struct ReleasePool {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
}

/// One entry of Docker's port map: `-p [HostIP:]HostPort[-HostPortEnd]:Port/Proto`.
#[derive(Debug, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct PortBinding {
    pub proto: u8,
    #[serde(rename = "IP", default)]
    pub ip: String,
    pub port: u16,
    #[serde(rename = "HostIP", default)]
    pub host_ip: String,
    #[serde(default)]
    pub host_port: u16,
    #[serde(default)]
    pub host_port_end: u16,
}

impl PortBinding {
    /// What bpfnet publishes for it: a host port of 0 (`-p 80`) is any free dynamic port, a
    /// range (`-p 8000-8010:80`) any free port of it.
    pub fn request(&self) -> Result<PortRequest, String> {
        let protocol = match self.proto {
            6 => Protocol::Tcp,
            17 => Protocol::Udp,
            other => return Err(format!("cannot publish port {} of protocol {other}: bpfnet publishes TCP and UDP", self.port)),
        };
        // "": every address, both families, as Docker's bridge publishes `-p 8080:80`; 0.0.0.0
        // and ::, every address of that family (Docker's `-p 0.0.0.0:8080:80` is IPv4 only).
        let host_ip = match self.host_ip.as_str() {
            "" => None,
            text => Some(text.parse::<std::net::IpAddr>().map_err(|_| format!("invalid host address {text:?}"))?),
        };
        let host_ports = match (self.host_port, self.host_port_end) {
            (0, _) => DYNAMIC_PORTS,
            (first, last) if last > first => (first, last),
            (first, _) => (first, first),
        };
        Ok(PortRequest { host_ip, host_ports, container_port: self.port, protocol })
    }
}

/// The port map in a call's options (empty without `-p`).
pub fn port_map(options: Option<&BTreeMap<String, Value>>) -> Result<Vec<PortBinding>, String> {
    match options.and_then(|o| o.get(PORT_MAP_OPTION)) {
        None | Some(Value::Null) => Ok(vec![]),
        Some(value) => serde_json::from_value(value.clone()).map_err(|e| format!("unreadable {PORT_MAP_OPTION}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_map_as_docker_sends_it() {
        // Captured from `docker run -p 8080:80 -p 127.0.0.1:5353:53/udp -p 9000 -p 7000-7005:70`.
        let options: BTreeMap<String, Value> = serde_json::from_str(
            r#"{"com.docker.network.portmap":[
                {"Proto":6,"IP":"","Port":80,"HostIP":"","HostPort":8080,"HostPortEnd":8080},
                {"Proto":17,"IP":"","Port":53,"HostIP":"127.0.0.1","HostPort":5353,"HostPortEnd":5353},
                {"Proto":6,"IP":"","Port":9000,"HostIP":"","HostPort":0,"HostPortEnd":0},
                {"Proto":6,"IP":"","Port":70,"HostIP":"0.0.0.0","HostPort":7000,"HostPortEnd":7005}],
              "com.docker.network.endpoint.exposedports":[{"Proto":6,"Port":80}]}"#,
        )
        .unwrap();
        let requests: Vec<PortRequest> = port_map(Some(&options)).unwrap().iter().map(|b| b.request().unwrap()).collect();
        assert_eq!(requests[0], PortRequest { host_ip: None, host_ports: (8080, 8080), container_port: 80, protocol: Protocol::Tcp });
        assert_eq!(requests[1].host_ip, Some("127.0.0.1".parse().unwrap()));
        assert_eq!((requests[1].host_ports, requests[1].protocol), ((5353, 5353), Protocol::Udp));
        assert_eq!(requests[2].host_ports, DYNAMIC_PORTS);
        assert_eq!((requests[3].host_ip, requests[3].host_ports), (Some("0.0.0.0".parse().unwrap()), (7000, 7005)));
        assert!(port_map(None).unwrap().is_empty());
        let v6 = PortBinding { proto: 6, ip: String::new(), port: 80, host_ip: "::".into(), host_port: 8080, host_port_end: 8080 };
        assert_eq!(v6.request().unwrap().host_ip, Some("::".parse().unwrap()));
        let v6 = PortBinding { host_ip: "2001:db8::1".into(), ..v6 };
        assert_eq!(v6.request().unwrap().host_ip, Some("2001:db8::1".parse().unwrap()));
        let sctp = PortBinding { proto: 132, ip: String::new(), port: 1, host_ip: String::new(), host_port: 1, host_port_end: 1 };
        assert!(sctp.request().unwrap_err().contains("TCP and UDP"));
    }
}
