//! The embedded DNS resolver: one per network, on its gateway address, port 53, UDP and TCP.
//! It answers for the network it serves only, and only to that network's endpoints (a name of
//! another network does not resolve, a LAN host posing as an unused address learns nothing): the names and aliases of the network's attached
//! endpoints and the names of its services (A, and AAAA on a dual-stack network, where it
//! listens on the IPv6 gateway too), PTR for their addresses (also under ip6.arpa); other names with a dot are forwarded to the upstream resolvers (`--dns-upstream`,
//! default: the daemon's /etc/resolv.conf), single-label names that are not local get NXDOMAIN.
//!
//! An `--internal` network's resolver forwards nothing (REFUSED): its containers reach no
//! outside, through the resolver neither (Docker's fix of CVE-2024-29018). TCP connections and
//! forwarded queries are capped in total and per client ([`limits`]).
//!
//! Answers are read from the daemon's last committed state ([`Published`]): no lock, no copy.
//! Messages are parsed and built with hickory-proto.
pub mod limits;

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use hickory_proto::{
    op::{Message, MessageType, Metadata, OpCode, ResponseCode},
    rr::{
        rdata::{A, AAAA, PTR},
        Name, RData, Record, RecordType,
    },
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, UdpSocket},
    task::JoinHandle,
};

use self::limits::{Admission, MAX_FORWARDS, MAX_FORWARDS_PER_CLIENT, MAX_TCP_CONNECTIONS, MAX_TCP_CONNECTIONS_PER_CLIENT};
use crate::{
    snapshot::Published,
    state::{Network, State},
};

/// What every resolver shares: the upstreams and the caps.
#[derive(Clone)]
struct Shared {
    published: Published,
    upstreams: Arc<Vec<SocketAddr>>,
    tcp: Arc<Admission>,
    forwards: Arc<Admission>,
}

/// The resolver's port.
pub const PORT: u16 = 53;
/// How long clients may cache bpfnet's answers: containers come and go.
const TTL: u32 = 10;
/// How long an upstream resolver has to answer a forwarded query.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the set of served networks is compared with the state.
const FOLLOW_EVERY: Duration = Duration::from_millis(200);
/// How soon a network whose resolver could not bind its sockets is tried again.
const RETRY_BIND: Duration = Duration::from_secs(5);
/// How long a TCP client may stay idle between queries.
const TCP_IDLE: Duration = Duration::from_secs(10);

/// `--dns-upstream` and whether to serve at all.
#[derive(Debug, Clone, Default)]
pub struct DnsConfig {
    pub enabled: bool,
    pub upstreams: Vec<SocketAddr>,
}

/// The nameservers of a resolv.conf, at port 53 (loopback ones are left out: they are the
/// daemon's namespace's own, and a resolver in a container's namespace cannot reach them).
pub fn upstreams_from_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.trim().parse::<IpAddr>().ok())
        .filter(|ip| !ip.is_loopback())
        .map(|ip| SocketAddr::new(ip, PORT))
        .collect()
}

/// Serves every network of the published state, following networks as they come and go.
pub fn spawn(published: Published, config: DnsConfig) -> JoinHandle<()> {
    let shared = Shared {
        published: published.clone(),
        upstreams: Arc::new(config.upstreams),
        tcp: Admission::new(MAX_TCP_CONNECTIONS, MAX_TCP_CONNECTIONS_PER_CLIENT),
        forwards: Admission::new(MAX_FORWARDS, MAX_FORWARDS_PER_CLIENT),
    };
    tokio::spawn(async move {
        let mut served: HashMap<String, (IpAddr, Vec<JoinHandle<()>>)> = HashMap::new();
        // Networks whose sockets could not be bound, with when to try again.
        let mut failed: HashMap<String, (IpAddr, tokio::time::Instant)> = HashMap::new();
        // Networks whose failure was logged (once: a port held for good would log every try).
        let mut reported: std::collections::HashSet<String> = std::collections::HashSet::new();
        let mut tick = tokio::time::interval(FOLLOW_EVERY);
        loop {
            tick.tick().await;
            let state = published.get();
            // Networks gone (or with another gateway): stop their servers.
            served.retain(|id, (gateway, tasks)| {
                let keep = state.network_by_id(id).is_some_and(|n| n.gateway() == *gateway);
                if !keep {
                    tasks.iter().for_each(JoinHandle::abort);
                }
                keep
            });
            let now = tokio::time::Instant::now();
            // A failed bind is tried again a while later (an address not ready yet), and at once
            // when the gateway changes.
            failed.retain(|id, (gateway, retry)| now < *retry && state.network_by_id(id).is_some_and(|n| n.gateway() == *gateway));
            for net in &state.networks {
                if served.contains_key(&net.id) || failed.contains_key(&net.id) {
                    continue;
                }
                match serve(net, shared.clone()).await {
                    Ok(tasks) => {
                        reported.remove(&net.id);
                        let on: Vec<String> = net.gateways().map(|g| SocketAddr::new(g, PORT).to_string()).collect();
                        log::info!("DNS for network {} on {} (UDP and TCP)", net.name, on.join(" and "));
                        served.insert(net.id.clone(), (net.gateway(), tasks));
                    }
                    Err(e) => {
                        if reported.insert(net.id.clone()) {
                            log::warn!("no DNS for network {} on {}:{PORT} yet: {e} (tried again every {RETRY_BIND:?})", net.name, net.gateway());
                        }
                        failed.insert(net.id.clone(), (net.gateway(), now + RETRY_BIND));
                    }
                }
            }
        }
    })
}

/// Binds the network's UDP and TCP sockets on each of its gateways and starts serving them.
async fn serve(net: &Network, shared: Shared) -> std::io::Result<Vec<JoinHandle<()>>> {
    let mut tasks = Vec::new();
    for gateway in net.gateways() {
        match serve_on(SocketAddr::new(gateway, PORT), net, shared.clone()).await {
            Ok(more) => tasks.extend(more),
            Err(e) => {
                tasks.iter().for_each(JoinHandle::abort);
                return Err(e);
            }
        }
    }
    Ok(tasks)
}

/// Binds UDP and TCP sockets on `addr` and starts serving them for `net`.
async fn serve_on(addr: SocketAddr, net: &Network, shared: Shared) -> std::io::Result<Vec<JoinHandle<()>>> {
    let udp = Arc::new(UdpSocket::bind(addr).await?);
    let tcp = TcpListener::bind(addr).await?;
    let id: Arc<str> = net.id.clone().into();
    let (shared_udp, id_udp) = (shared.clone(), id.clone());
    let udp_task = tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let Ok((n, client)) = udp.recv_from(&mut buf).await else { continue };
            let query = buf[..n].to_vec();
            let (udp, shared, id) = (udp.clone(), shared_udp.clone(), id_udp.clone());
            tokio::spawn(async move {
                if let Some(reply) = handle(&query, client.ip(), &id, &shared).await {
                    let _ = udp.send_to(&reply, client).await;
                }
            });
        }
    });
    let tcp_task = tokio::spawn(async move {
        loop {
            let (mut stream, client) = match tcp.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors: wait rather than spin.
                    log::debug!("DNS: accepting a TCP connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            // Over its share (or everyone's): closed at once.
            let Some(ticket) = shared.tcp.admit(client.ip()) else { continue };
            let (shared, id) = (shared.clone(), id.clone());
            tokio::spawn(async move {
                let _ticket = ticket;
                // Length-prefixed messages, until the client closes or idles.
                loop {
                    let mut len = [0u8; 2];
                    let Ok(Ok(_)) = tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut len)).await else { return };
                    let mut query = vec![0u8; u16::from_be_bytes(len) as usize];
                    let Ok(Ok(_)) = tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut query)).await else { return };
                    let Some(reply) = handle(&query, client.ip(), &id, &shared).await else { return };
                    let mut framed = (reply.len() as u16).to_be_bytes().to_vec();
                    framed.extend_from_slice(&reply);
                    if stream.write_all(&framed).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok(vec![udp_task, tcp_task])
}

/// The reply to one query (`None`: nothing to send, e.g. an unreadable message).
async fn handle(query: &[u8], client: IpAddr, network_id: &str, shared: &Shared) -> Option<Vec<u8>> {
    let request = Message::from_vec(query).ok()?;
    if request.metadata.message_type != MessageType::Query {
        return None;
    }
    let answer = {
        let state = shared.published.get();
        let net = state.network_by_id(network_id)?;
        answer(&state, net, client, &request)
    };
    if let Some(reply) = answer {
        return reply.to_vec().ok();
    }
    // A client with too many queries upstream already (or all of them together) is told so at
    // once, with a reply no larger than its query.
    let forwarded = match shared.forwards.admit(client) {
        Some(_ticket) => forward(query, request.metadata.id, &shared.upstreams).await,
        None => None,
    };
    match forwarded {
        Some(reply) => Some(reply),
        None => Message::error_msg(request.metadata.id, request.metadata.op_code, ResponseCode::ServFail).to_vec().ok(),
    }
}

/// The local answer to `request` from `client` for network `net`; `None`: forward it.
pub fn answer(state: &State, net: &Network, client: IpAddr, request: &Message) -> Option<Message> {
    let mut reply = Message::new(request.metadata.id, MessageType::Response, request.metadata.op_code);
    reply.metadata = Metadata::response_from_request(&request.metadata);
    reply.metadata.recursion_available = true;
    reply.queries = request.queries.clone();
    if request.metadata.op_code != OpCode::Query || request.queries.len() != 1 {
        reply.metadata.response_code = ResponseCode::NotImp;
        return Some(reply);
    }
    // Only the network's own endpoints: a container of another network, or a host of the LAN
    // posing as an unused address of the subnet, learns nothing here.
    if !state.endpoints_of(&net.id).any(|e| e.addresses().any(|a| a == client)) {
        reply.metadata.response_code = ResponseCode::Refused;
        return Some(reply);
    }
    let query = &request.queries[0];
    let qname = query.name().clone();
    let text = qname.to_lowercase().to_ascii();
    let text = text.trim_end_matches('.');

    if let Ok(prefix) = qname.parse_arpa_name() {
        let ip = prefix.addr();
        if !in_network(net, ip) {
            return forward_or_refuse(net, reply);
        }
        reply.metadata.authoritative = true;
        match name_of(state, net, ip) {
            Some(name) if query.query_type() == RecordType::PTR => {
                let target = Name::from_ascii(format!("{name}.")).ok()?;
                reply.answers.push(Record::from_rdata(qname, TTL, RData::PTR(PTR(target))));
            }
            Some(_) => {}
            None => reply.metadata.response_code = ResponseCode::NXDomain,
        }
        return Some(reply);
    }

    let addresses = addresses_of(state, net, text);
    if addresses.is_empty() {
        if text.contains('.') {
            return forward_or_refuse(net, reply);
        }
        // A single label that names nothing here: no resolver elsewhere knows it either.
        reply.metadata.authoritative = true;
        reply.metadata.response_code = ResponseCode::NXDomain;
        return Some(reply);
    }
    reply.metadata.authoritative = true;
    let (want_a, want_aaaa) = match query.query_type() {
        RecordType::A => (true, false),
        RecordType::AAAA => (false, true),
        RecordType::ANY => (true, true),
        _ => (false, false),
    };
    for ip in addresses {
        match ip {
            IpAddr::V4(v4) if want_a => reply.answers.push(Record::from_rdata(qname.clone(), TTL, RData::A(A(v4)))),
            IpAddr::V6(v6) if want_aaaa => reply.answers.push(Record::from_rdata(qname.clone(), TTL, RData::AAAA(AAAA(v6)))),
            _ => {}
        }
    }
    // Other types of a known name (AAAA of an IPv4-only one): no records (NOERROR), so clients
    // do not look on.
    Some(reply)
}

/// Whether `ip` is in one of `net`'s subnets.
fn in_network(net: &Network, ip: IpAddr) -> bool {
    net.subnets().any(|subnet| subnet.contains(ip))
}

/// A name the network does not know: forwarded upstream (`None`), except from an internal
/// network, whose resolver refuses it.
fn forward_or_refuse(net: &Network, mut reply: Message) -> Option<Message> {
    if !net.internal {
        return None;
    }
    reply.metadata.response_code = ResponseCode::Refused;
    Some(reply)
}

/// Addresses `name` (lowercase, no final dot) stands for on `net`: attached endpoints (of every
/// node, on an overlay network) by name or alias, services by name.
fn addresses_of(state: &State, net: &Network, name: &str) -> Vec<IpAddr> {
    let named = |container: &str, aliases: &[String]| {
        container.eq_ignore_ascii_case(name) || aliases.iter().any(|a| a.eq_ignore_ascii_case(name))
    };
    let mut found: Vec<IpAddr> =
        state.endpoints_of(&net.id).filter(|e| named(&e.container_name, &e.aliases)).flat_map(|e| e.addresses()).collect();
    found.extend(
        state
            .remote_endpoints
            .iter()
            .filter(|e| e.network_id == net.id && named(&e.container_name, &e.aliases))
            .flat_map(|e| e.addresses()),
    );
    found.extend(state.services.values().filter(|s| s.network_id == net.id && s.name.eq_ignore_ascii_case(name)).flat_map(|s| s.vips()));
    found.sort();
    found.dedup();
    found
}

/// The name of the endpoint or service at `ip` on `net`.
fn name_of(state: &State, net: &Network, ip: IpAddr) -> Option<String> {
    if let Some(ep) = state.endpoints_of(&net.id).find(|e| e.addresses().any(|a| a == ip)) {
        return Some(ep.container_name.clone());
    }
    if let Some(ep) = state.remote_endpoints.iter().find(|e| e.network_id == net.id && e.addresses().any(|a| a == ip)) {
        return Some(ep.container_name.clone());
    }
    state.services.values().find(|s| s.network_id == net.id && s.vips().any(|v| v == ip)).map(|s| s.name.clone())
}

/// Relays `query` to the upstream resolvers in turn; the first answer with the query's id.
async fn forward(query: &[u8], id: u16, upstreams: &[SocketAddr]) -> Option<Vec<u8>> {
    for upstream in upstreams {
        let bind: SocketAddr = if upstream.is_ipv4() { "0.0.0.0:0".parse().ok()? } else { "[::]:0".parse().ok()? };
        let Ok(socket) = UdpSocket::bind(bind).await else { continue };
        if socket.send_to(query, upstream).await.is_err() {
            continue;
        }
        let mut buf = vec![0u8; 4096];
        let deadline = tokio::time::Instant::now() + UPSTREAM_TIMEOUT;
        while let Ok(Ok((n, from))) = tokio::time::timeout_at(deadline, socket.recv_from(&mut buf)).await {
            if from == *upstream && n >= 2 && u16::from_be_bytes([buf[0], buf[1]]) == id {
                return Some(buf[..n].to_vec());
            }
        }
        log::debug!("DNS upstream {upstream} did not answer");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;

    fn query(name: &str, kind: RecordType) -> Message {
        let mut m = Message::new(7, MessageType::Query, OpCode::Query);
        m.queries.push(Query::query(Name::from_ascii(name).unwrap(), kind));
        m
    }

    /// An endpoint `name` of network "n" at `ip` (and `ip6`).
    fn member(name: &str, ip: &str, ip6: Option<&str>) -> crate::state::Endpoint {
        let allocation = crate::state::Allocation {
            id: "e".into(),
            network_id: "n".into(),
            container_id: "c".into(),
            container_name: name.into(),
            address4: Some(ip.parse().unwrap()),
            address6: ip6.map(|a| a.parse().unwrap()),
            mac: [0; 6],
            aliases: vec![],
            ports: vec![],
            kept_when_detached: false,
            frontend: Default::default(),
        };
        crate::state::Endpoint {
            allocation,
            netns_path: "/run/netns/x".into(),
            netns_dev: 0,
            netns_inode: 0,
            interface: "eth0".into(),
            host_interface: "bn-e".into(),
            host_ifindex: 0,
            default_route: true,
            gro: true,
        }
    }

    /// Network "web", 10.1.0.0/24, IPv4 only.
    fn web() -> crate::state::Network {
        crate::state::Network {
            id: "n".into(),
            name: "web".into(),
            ipv4: Some(crate::state::Subnet { subnet: "10.1.0.0/24".parse().unwrap(), gateway: "10.1.0.1".parse().unwrap() }),
            internal: false,
            icc: true,
            masquerade: true,
            options: Default::default(),
            datapath_id: 1,
            driver: Default::default(),
            ip_range: None,
            ipv6: None,
            created: String::new(),
        }
    }

    #[test]
    fn resolv_conf_upstreams() {
        let text = "# comment\nnameserver 192.0.2.53\nnameserver 127.0.0.53\nsearch x\nnameserver  2001:db8::1\n";
        let ups = upstreams_from_resolv_conf(text);
        assert_eq!(ups, vec!["192.0.2.53:53".parse().unwrap(), "[2001:db8::1]:53".parse().unwrap()]);
    }

    #[test]
    fn a_dual_stack_network_answers_aaaa_and_ip6_arpa_to_its_ipv6_clients() {
        let mut net = web();
        net.ipv6 = Some(crate::state::Subnet { subnet: "fd00:1::/64".parse().unwrap(), gateway: "fd00:1::1".parse().unwrap() });
        let state = State { networks: vec![net.clone()], endpoints: vec![member("api", "10.1.0.2", Some("fd00:1::2"))], ..Default::default() };
        let client: IpAddr = "fd00:1::2".parse().unwrap();
        let answers = |name: &str, kind| answer(&state, &net, client, &query(name, kind)).unwrap().answers;
        let aaaa = answers("api.", RecordType::AAAA);
        assert_eq!(aaaa.len(), 1);
        assert_eq!(aaaa[0].data, RData::AAAA(AAAA("fd00:1::2".parse().unwrap())));
        let a = answers("api.", RecordType::A);
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].data, RData::A(A("10.1.0.2".parse().unwrap())));
        assert_eq!(answers("api.", RecordType::ANY).len(), 2);
        let ptr = answers("2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.1.0.0.0.0.0.d.f.ip6.arpa.", RecordType::PTR);
        assert_eq!(ptr[0].data, RData::PTR(PTR(Name::from_ascii("api.").unwrap())));
        // Another network's IPv6 client, or an unused address of the subnet, learns nothing.
        for stranger in ["fd00:2::9", "fd00:1::9"] {
            let r = answer(&state, &net, stranger.parse().unwrap(), &query("api.", RecordType::AAAA)).unwrap();
            assert_eq!(r.metadata.response_code, ResponseCode::Refused, "{stranger}");
        }
    }

    #[test]
    fn queries_of_other_kinds_are_not_implemented() {
        let net = web();
        let state = State { networks: vec![net.clone()], endpoints: vec![member("c5", "10.1.0.5", None)], ..Default::default() };
        let mut q = query("x.", RecordType::A);
        q.metadata.op_code = OpCode::Status;
        let r = answer(&state, &net, "10.1.0.5".parse().unwrap(), &q).unwrap();
        assert_eq!(r.metadata.response_code, ResponseCode::NotImp);
        // From outside the subnet: refused.
        let r = answer(&state, &net, "10.2.0.5".parse().unwrap(), &query("x.", RecordType::A)).unwrap();
        assert_eq!(r.metadata.response_code, ResponseCode::Refused);
        // Unknown single label: NXDOMAIN here; a dotted name goes upstream.
        let r = answer(&state, &net, "10.1.0.5".parse().unwrap(), &query("nobody.", RecordType::A)).unwrap();
        assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
        assert!(answer(&state, &net, "10.1.0.5".parse().unwrap(), &query("example.org.", RecordType::A)).is_none());
        // Reverse lookups outside the subnet go upstream; inside, unknown is NXDOMAIN.
        assert!(answer(&state, &net, "10.1.0.5".parse().unwrap(), &query("4.3.2.1.in-addr.arpa.", RecordType::PTR)).is_none());
        let r = answer(&state, &net, "10.1.0.5".parse().unwrap(), &query("9.0.1.10.in-addr.arpa.", RecordType::PTR)).unwrap();
        assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);

        // An internal network's resolver forwards nothing: what would go upstream is refused.
        let internal = crate::state::Network { internal: true, ..net };
        for q in [query("data.exfil.example.", RecordType::TXT), query("4.3.2.1.in-addr.arpa.", RecordType::PTR)] {
            let r = answer(&state, &internal, "10.1.0.5".parse().unwrap(), &q).expect("answered here, not forwarded");
            assert_eq!(r.metadata.response_code, ResponseCode::Refused);
            assert!(r.answers.is_empty());
        }
    }
}
