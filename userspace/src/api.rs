//! Requests and responses of the daemon's HTTP/JSON API, shared by the server and the CLI.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Default unix socket of the API.
pub const DEFAULT_SOCKET: &str = "/run/bpfnet/bpfnet.sock";

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct CreateNetwork {
    pub name: String,
    pub subnet: Option<String>,
    pub gateway: Option<String>,
    #[serde(default)]
    pub internal: bool,
    /// `-o key=value` options, e.g. `icc=false`.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// `bpfnet` (this host's, the default) or `overlay` (across the cluster's nodes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// `--ip-range`: a prefix of the subnet that addresses are handed out from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_range: Option<String>,
    /// An IPv6 subnet besides the IPv4 one (dual stack).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet6: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway6: Option<String>,
    /// `--ipv6`: dual stack; without `subnet6`, a /64 of the daemon's IPv6 pool.
    #[serde(default)]
    pub ipv6: bool,
    /// `--ipv4=false`: no IPv4 side (an IPv6-only network); absent means IPv4 too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<bool>,
}

/// What an endpoint asks for on its network (`connect` and `endpoint create`).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct EndpointSpec {
    /// The address to use instead of the next free one.
    pub ip: Option<String>,
    /// The IPv6 address to use instead of the next free one (dual-stack networks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6: Option<String>,
    #[serde(default)]
    pub aliases: Vec<String>,
    /// `-p` values: `[HOST_IP:]HOST_PORT[-END]:CONTAINER_PORT[-END][/tcp|/udp]`.
    #[serde(default)]
    pub publish: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Connect {
    /// A name under /run/netns, a path to a namespace file, or a PID.
    pub netns: String,
    #[serde(flatten)]
    pub spec: EndpointSpec,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Disconnect {
    pub netns: String,
}

/// `endpoint create`: reserve an address (and published ports) on a network for a container
/// that is attached later; the first step of the endpoint lifecycle front-ends drive.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Allocate {
    pub network: String,
    /// The container's name as its front-end knows it (letters, digits, '_', '.', '-').
    pub name: String,
    #[serde(flatten)]
    pub spec: EndpointSpec,
    /// The front-end's id for the endpoint (64 hex digits; default: a new random one).
    #[serde(default)]
    pub id: Option<String>,
    /// The front-end that makes it: `api` (default), `docker` or `cni`.
    #[serde(default)]
    pub frontend: Option<String>,
}

/// `endpoint attach`: put an allocated endpoint into a namespace.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Attach {
    /// A name under /run/netns, a path to a namespace file, or a PID.
    pub netns: String,
    /// Interface name in the namespace (default: the first free ethN).
    pub interface: Option<String>,
}

/// One endpoint, attached or only allocated (`endpoint ls`, `endpoint inspect`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EndpointView {
    pub endpoint_id: String,
    pub network: String,
    /// The container's name (for `network connect`: the namespace as given).
    pub name: String,
    pub ipv4_address: String,
    /// `ADDRESS/PREFIX` on a dual-stack network, else empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ipv6_address: String,
    pub mac_address: String,
    pub aliases: Vec<String>,
    /// Published ports, as `HOST_IP:PORT->PORT/PROTO` (in the datapath while attached).
    pub ports: Vec<String>,
    /// Where it is attached; `None`: allocated only.
    pub attachment: Option<AttachmentView>,
    /// The front-end that made it: `api` (bpfnet's CLI), `docker` or `cni`.
    #[serde(default)]
    pub frontend: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AttachmentView {
    pub netns: String,
    pub interface: String,
    pub host_interface: String,
}

/// One line of `network ls`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetworkSummary {
    pub id: String,
    pub name: String,
    pub driver: String,
    /// The IPv4 subnet and gateway (empty on an IPv6-only network).
    pub subnet: String,
    pub gateway: String,
    /// The IPv6 subnet and gateway of a network with IPv6.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet6: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway6: Option<String>,
    pub internal: bool,
    pub icc: bool,
    #[serde(default)]
    pub masquerade: bool,
    pub endpoints: usize,
}

/// `network inspect`, shaped like `docker network inspect`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkInspect {
    pub name: String,
    pub id: String,
    pub created: String,
    pub scope: String,
    pub driver: String,
    #[serde(rename = "EnableIPv6")]
    pub enable_ipv6: bool,
    #[serde(rename = "IPAM")]
    pub ipam: Ipam,
    pub internal: bool,
    pub attachable: bool,
    pub containers: BTreeMap<String, ContainerEndpoint>,
    pub options: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Ipam {
    pub driver: String,
    pub options: BTreeMap<String, String>,
    pub config: Vec<IpamConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct IpamConfig {
    pub subnet: String,
    pub gateway: String,
    #[serde(rename = "IPRange", default, skip_serializing_if = "Option::is_none")]
    pub ip_range: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerEndpoint {
    pub name: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    pub mac_address: String,
    #[serde(rename = "IPv4Address")]
    pub ipv4_address: String,
    #[serde(rename = "IPv6Address")]
    pub ipv6_address: String,
    /// bpfnet extras: where the endpoint lives.
    pub interface: String,
    pub host_interface: String,
    pub netns: String,
    pub aliases: Vec<String>,
    /// Published ports, as `HOST_IP:PORT->PORT/PROTO`.
    #[serde(default)]
    pub ports: Vec<String>,
}

/// One line of `port ls`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PortMapping {
    /// `HOST_IP:PORT` (`0.0.0.0`: every address of the host).
    pub host: String,
    pub protocol: String,
    /// `CONTAINER_IP:PORT`.
    pub container: String,
    pub network: String,
    /// The container's name: for `network connect`, the namespace as given.
    pub netns: String,
    pub endpoint_id: String,
    /// False while its endpoint is allocated but not attached: the port is reserved, and
    /// nothing answers it yet.
    #[serde(default = "yes")]
    pub attached: bool,
}

fn yes() -> bool {
    true
}

/// The answer to `network connect`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EndpointCreated {
    pub endpoint_id: String,
    pub network: String,
    pub interface: String,
    pub host_interface: String,
    pub ipv4_address: String,
    /// `ADDRESS/PREFIX` on a dual-stack network, else empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ipv6_address: String,
    pub mac_address: String,
    /// Published ports, as `HOST_IP:PORT->PORT/PROTO`.
    #[serde(default)]
    pub ports: Vec<String>,
    /// The network's DNS resolver, for the container's resolv.conf (`None`: none served).
    #[serde(default)]
    pub resolver: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CounterValue {
    pub name: String,
    pub drop: bool,
    pub packets: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stats {
    pub counters: Vec<CounterValue>,
    pub networks: usize,
    pub endpoints: usize,
    #[serde(default)]
    pub services: usize,
    #[serde(default)]
    pub backends: usize,
    pub conntrack: ConntrackUsage,
    pub uplinks: Vec<Uplink>,
    /// The cluster this daemon is a node of (`--cluster`); absent on a single host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterStatus>,
    /// Overlay networks on this node, and the endpoints of other nodes on them.
    #[serde(default)]
    pub overlay_networks: usize,
    #[serde(default)]
    pub remote_endpoints: usize,
}

/// How full the connection table is (two entries per connection).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConntrackUsage {
    /// The established table (`--ct-max`): never evicted from.
    pub entries: u64,
    pub max_entries: u64,
    pub pressure_percent: f64,
    /// The table of new connections (a quarter of `--ct-max`): a flood of new connections
    /// evicts the least recently used of them.
    #[serde(default)]
    pub pending_entries: u64,
    #[serde(default)]
    pub pending_max_entries: u64,
    #[serde(default)]
    pub pending_pressure_percent: f64,
}

/// An interface traffic to the outside leaves by, and the address masquerade gives it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Uplink {
    pub interface: String,
    pub address: String,
    /// The global IPv6 address IPv6 masquerade gives traffic leaving by it, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_address: Option<String>,
    /// The XDP program runs on it (`bpfnet daemon --xdp`).
    #[serde(default)]
    pub xdp: bool,
    /// Why it takes that path (`--xdp auto` decides by the driver).
    #[serde(default)]
    pub why: String,
}

/// One direction of a connection: `address:port` (ICMP: the address, and the echo identifier).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Tuple {
    pub src: String,
    pub dst: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<u16>,
}

/// One line of `conntrack ls`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Connection {
    pub protocol: String,
    /// As the initiator sent it.
    pub original: Tuple,
    /// As the answers arrive (after translation of the original, reversed).
    pub reply: Tuple,
    /// `masquerade` (a container's connection out) or `published` (to a published port).
    pub nat: String,
    /// SYN_SENT, ESTABLISHED, CLOSING (TCP); UNREPLIED, REPLIED (UDP, ICMP).
    pub state: String,
    pub expires_in_s: u64,
    pub original_packets: u64,
    pub original_bytes: u64,
    pub reply_packets: u64,
    pub reply_bytes: u64,
    /// In the established table (a TCP handshake completed, or an answer seen), which floods
    /// cannot evict from; `false` while it is new (or beyond its container's share).
    #[serde(default)]
    pub assured: bool,
}

/// The answer to `conntrack flush`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Flushed {
    pub connections: usize,
}

/// Body of every error response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// `service create`: a virtual address and port on a network, spread over backends.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct CreateService {
    pub name: String,
    pub network: String,
    /// `PORT[/tcp|/udp]`: where the service answers on its VIP.
    pub port: String,
    /// The VIP (default: the network's next free address).
    pub vip: Option<String>,
    /// The IPv6 VIP, on a network with IPv6 (default: the next free address of its IPv6
    /// subnet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip6: Option<String>,
    /// `[HOST_IP:]HOST_PORT`: also published on the host.
    pub publish: Option<String>,
    /// `client-ip[:SECONDS]`: a client's new connections go to its last backend.
    pub affinity: Option<String>,
    /// `NETNS[:PORT]` each: namespaces connected to the network (port: the service's).
    #[serde(default)]
    pub backends: Vec<String>,
}

/// `POST /services/batch`: many services created as one change (all or none).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct CreateServices {
    pub services: Vec<CreateService>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AddBackend {
    /// `NETNS[:PORT]`.
    pub backend: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemoveBackend {
    pub netns: String,
    /// Stop new connections only; the backend goes once its connections have ended.
    #[serde(default)]
    pub drain: bool,
}

/// One line of `service ls`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceSummary {
    pub id: String,
    pub name: String,
    pub network: String,
    /// `VIP:PORT/PROTO` of the IPv4 VIP (empty on an IPv6-only network).
    pub vip: String,
    /// `[VIP6]:PORT/PROTO`, on a network with IPv6.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip6: Option<String>,
    /// `HOST_IP:PORT->PORT/PROTO`, if published.
    pub published: Option<String>,
    pub backends: usize,
    pub draining: usize,
    pub affinity: Option<String>,
    /// `local` (this node's), or `cluster` (on every node: the routing mesh), as Docker's SCOPE.
    #[serde(default)]
    pub scope: String,
}

/// `service inspect`, shaped like `docker service inspect` (with the backends bpfnet spreads over).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceInspect {
    #[serde(rename = "ID")]
    pub id: String,
    pub created_at: String,
    pub spec: ServiceSpec,
    pub endpoint: ServiceEndpoint,
    pub backends: Vec<BackendView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceSpec {
    pub name: String,
    pub endpoint_spec: ServiceEndpointSpec,
    /// `client-ip:SECONDS`, or `none`.
    pub affinity: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceEndpointSpec {
    /// Always `vip`.
    pub mode: String,
    pub ports: Vec<ServicePort>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServicePort {
    pub protocol: String,
    pub target_port: u16,
    pub published_port: Option<u16>,
    /// `ingress` when published on the host, `vip` otherwise.
    pub publish_mode: String,
    /// The host address it is published on (`0.0.0.0`: every address).
    #[serde(rename = "PublishedIP", skip_serializing_if = "Option::is_none")]
    pub published_ip: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceEndpoint {
    pub ports: Vec<ServicePort>,
    #[serde(rename = "VirtualIPs")]
    pub virtual_ips: Vec<VirtualIp>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct VirtualIp {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    pub network: String,
    /// `VIP/PREFIX`.
    pub addr: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct BackendView {
    pub name: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    /// `ADDRESS:PORT` of its IPv4 address (empty on an IPv6-only network).
    pub address: String,
    /// `[ADDRESS6]:PORT`, where the service has an IPv6 VIP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address6: Option<String>,
    /// `active` (takes new connections) or `draining`.
    pub state: String,
    /// The node it lives on, for a cluster service's backend on another node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// What a batch of service creations took.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServicesCreated {
    pub created: usize,
    /// Time spent in the daemon: validating, building Maglev tables, writing the maps, saving.
    pub elapsed_ms: f64,
    pub datapath_ms: f64,
}

/// How this node stands in its cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// This node's name (`--node`).
    pub node: String,
    /// Its address on the underlay, where other nodes reach it.
    pub underlay: String,
    /// The etcd members the daemon talks to (`--cluster`).
    pub etcd: Vec<String>,
    /// Whether etcd answered the daemon's last request.
    pub reachable: bool,
    /// Seconds since `reachable` last changed.
    pub since_s: u64,
    /// Why etcd is unreachable, or why this node is not registered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// This node holds a live lease in etcd (other nodes see it up).
    pub registered: bool,
}

/// `node ls`: the cluster's nodes as etcd holds them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Nodes {
    pub cluster: ClusterStatus,
    /// When etcd cannot be read, what was read last (`cluster.reachable` is false), and how old
    /// it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale_s: Option<u64>,
    pub nodes: Vec<Node>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Node {
    pub name: String,
    /// Where the node's tunnels end.
    pub underlay: String,
    /// `up` while the node's lease lives, `down` once it expired.
    pub state: String,
    /// Overlay endpoints the node has in the cluster.
    pub endpoints: u64,
    /// When the node last renewed its lease (seconds since the Unix epoch).
    pub last_seen: u64,
    /// The daemon answering is this node.
    pub this_node: bool,
    /// bpfnet's version on the node.
    pub version: String,
}
