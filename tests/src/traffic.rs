//! Real traffic between namespaces.
//!
//! - For tests: servers and clients whose sockets are created inside a namespace (see `netns`).
//! - For the benchmark: `serve` and `client`, run as processes (`bpfnet-lab net ...`) pinned to a
//!   core. The first byte of a benchmark connection picks the server's behaviour: `C` one
//!   transaction in the accept loop (connect/request/response/close), `E` echo (request/response
//!   on one connection), `S` sink (for streaming; the server answers the byte count at EOF).
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::netns;

/// Starts a TCP echo server bound to `addr` inside `ns`; it runs until the process ends.
pub fn tcp_echo_server(ns: &str, addr: SocketAddr) -> Result<()> {
    let listener = netns::within(ns, move || Ok(TcpListener::bind(addr)?))?;
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || echo(conn));
        }
    });
    Ok(())
}

fn echo(mut conn: TcpStream) {
    let mut buf = [0u8; 65536];
    while let Ok(n) = conn.read(&mut buf) {
        if n == 0 || conn.write_all(&buf[..n]).is_err() {
            break;
        }
    }
}

/// Starts a UDP echo server bound to `addr` inside `ns`.
pub fn udp_echo_server(ns: &str, addr: SocketAddr) -> Result<()> {
    let socket = netns::within(ns, move || Ok(UdpSocket::bind(addr)?))?;
    std::thread::spawn(move || {
        let mut buf = [0u8; 65536];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            let _ = socket.send_to(&buf[..n], from);
        }
    });
    Ok(())
}

/// Starts a TCP server in `ns` that answers every connection with the client's address as it
/// sees it (`ip:port`) and closes it.
pub fn tcp_whoami_server(ns: &str, addr: SocketAddr) -> Result<()> {
    let listener = netns::within(ns, move || Ok(TcpListener::bind(addr)?))?;
    std::thread::spawn(move || {
        for (mut conn, peer) in listener.incoming().flatten().filter_map(|c| c.peer_addr().ok().map(|p| (c, p))) {
            let _ = conn.write_all(peer.to_string().as_bytes());
        }
    });
    Ok(())
}

/// Starts a UDP server in `ns` that answers every datagram with its sender's address.
pub fn udp_whoami_server(ns: &str, addr: SocketAddr) -> Result<()> {
    let socket = netns::within(ns, move || Ok(UdpSocket::bind(addr)?))?;
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((_, from)) = socket.recv_from(&mut buf) {
            let _ = socket.send_to(from.to_string().as_bytes(), from);
        }
    });
    Ok(())
}

/// Asks a TCP whoami server from `ns` which address it sees.
pub fn tcp_whoami(ns: &str, to: SocketAddr, timeout: Duration) -> Result<SocketAddr> {
    let mut stream = tcp_connect(ns, to, timeout)?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    text.parse().with_context(|| format!("whoami answered {text:?}"))
}

/// Asks a UDP whoami server from `ns`, sending from local port `from_port` (0: any).
pub fn udp_whoami(ns: &str, from_port: u16, to: SocketAddr, timeout: Duration) -> Result<SocketAddr> {
    let from = SocketAddr::new(any_of(&to).ip(), from_port);
    let socket = netns::within(ns, move || Ok(UdpSocket::bind(from)?))?;
    socket.set_read_timeout(Some(timeout))?;
    socket.send_to(b"who am i", to)?;
    let mut buf = [0u8; 256];
    let (n, from) = socket.recv_from(&mut buf).with_context(|| format!("no UDP answer from {to}"))?;
    if from != to {
        bail!("UDP answer from {from}, expected {to}");
    }
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    text.parse().with_context(|| format!("whoami answered {text:?}"))
}

/// Connects from inside `ns` (the socket stays in `ns`).
pub fn tcp_connect(ns: &str, to: SocketAddr, timeout: Duration) -> Result<TcpStream> {
    let stream = netns::within(ns, move || {
        TcpStream::connect_timeout(&to, timeout).with_context(|| format!("connecting to {to}"))
    })?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    Ok(stream)
}

/// Sends `payload` on `stream` and reads back as many bytes.
pub fn tcp_round_trip(stream: &mut TcpStream, payload: &[u8]) -> Result<Vec<u8>> {
    stream.write_all(payload)?;
    let mut back = vec![0u8; payload.len()];
    stream.read_exact(&mut back).context("reading the echo")?;
    Ok(back)
}

/// Connects from `ns` to an echo server, sends `payload`, returns what came back.
pub fn tcp_exchange(ns: &str, to: SocketAddr, payload: &[u8], timeout: Duration) -> Result<Vec<u8>> {
    let mut stream = tcp_connect(ns, to, timeout)?;
    tcp_round_trip(&mut stream, payload)
}

/// The wildcard address and port of `to`'s family, for a socket that talks to it.
fn any_of(to: &SocketAddr) -> SocketAddr {
    let ip: std::net::IpAddr = if to.is_ipv4() { std::net::Ipv4Addr::UNSPECIFIED.into() } else { std::net::Ipv6Addr::UNSPECIFIED.into() };
    SocketAddr::new(ip, 0)
}

/// Sends one datagram from `ns` to a UDP echo server and returns the reply.
pub fn udp_exchange(ns: &str, to: SocketAddr, payload: &[u8], timeout: Duration) -> Result<Vec<u8>> {
    let socket = netns::within(ns, move || Ok(UdpSocket::bind(any_of(&to))?))?;
    socket.set_read_timeout(Some(timeout))?;
    socket.send_to(payload, to)?;
    let mut buf = [0u8; 65536];
    let (n, from) = socket.recv_from(&mut buf).with_context(|| format!("no UDP reply from {to}"))?;
    if from != to {
        bail!("UDP reply from {from}, expected {to}");
    }
    Ok(buf[..n].to_vec())
}

/// Sends a datagram to `to` from a connected UDP socket in `ns` and waits for the answer: `true`
/// when the kernel reports "connection refused" (an ICMP port unreachable came back), `false`
/// on an answer or none within `timeout`.
pub fn udp_refused(ns: &str, to: SocketAddr, timeout: Duration) -> Result<bool> {
    let socket = netns::within(ns, move || {
        let socket = UdpSocket::bind(any_of(&to))?;
        socket.connect(to)?;
        Ok(socket)
    })?;
    socket.set_read_timeout(Some(timeout))?;
    socket.send(b"anyone?")?;
    let mut buf = [0u8; 2048];
    match socket.recv(&mut buf) {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(true),
        _ => Ok(false),
    }
}

/// Starts a TCP server in `ns` for a service replica: every line a client sends is answered
/// with `NAME CLIENT_ADDRESS\n`, on connections kept open as long as the client likes.
pub fn tcp_name_server(ns: &str, addr: SocketAddr, name: &str) -> Result<()> {
    let listener = netns::within(ns, move || Ok(TcpListener::bind(addr)?))?;
    let name = name.to_string();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let name = name.clone();
            std::thread::spawn(move || {
                let Ok(peer) = conn.peer_addr() else { return };
                let mut reader = std::io::BufReader::new(&conn);
                let mut line = String::new();
                while std::io::BufRead::read_line(&mut reader, &mut line).is_ok_and(|n| n > 0) {
                    if (&conn).write_all(format!("{name} {}\n", peer.ip()).as_bytes()).is_err() {
                        break;
                    }
                    line.clear();
                }
            });
        }
    });
    Ok(())
}

/// Starts a UDP server in `ns` answering every datagram with `NAME CLIENT_ADDRESS`.
pub fn udp_name_server(ns: &str, addr: SocketAddr, name: &str) -> Result<()> {
    let socket = netns::within(ns, move || Ok(UdpSocket::bind(addr)?))?;
    let name = name.to_string();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((_, from)) = socket.recv_from(&mut buf) {
            let _ = socket.send_to(format!("{name} {}", from.ip()).as_bytes(), from);
        }
    });
    Ok(())
}

/// A connection to a name server: asks which replica answers, as often as wanted.
pub struct NameClient {
    stream: TcpStream,
    reader: std::io::BufReader<TcpStream>,
}

impl NameClient {
    pub fn connect(ns: &str, to: SocketAddr, timeout: Duration) -> Result<Self> {
        Self::over(tcp_connect(ns, to, timeout)?)
    }

    fn over(stream: TcpStream) -> Result<Self> {
        let reader = std::io::BufReader::new(stream.try_clone()?);
        Ok(Self { stream, reader })
    }

    /// (replica name, client address it saw).
    pub fn ask(&mut self) -> Result<(String, String)> {
        self.stream.write_all(b"?\n")?;
        let mut line = String::new();
        std::io::BufRead::read_line(&mut self.reader, &mut line).context("reading the replica's name")?;
        let (name, client) = line.trim().split_once(' ').with_context(|| format!("name server answered {line:?}"))?;
        Ok((name.to_string(), client.to_string()))
    }
}

/// `count` new TCP connections from `ns` to a name server at `to`, one question each (one
/// thread in the namespace makes them all): how many each replica answered.
pub fn spread(ns: &str, to: SocketAddr, count: usize, timeout: Duration) -> Result<std::collections::BTreeMap<String, usize>> {
    netns::within(ns, move || {
        let mut seen = std::collections::BTreeMap::new();
        for i in 0..count {
            let stream = TcpStream::connect_timeout(&to, timeout).with_context(|| format!("connection {i} to {to}"))?;
            stream.set_read_timeout(Some(timeout))?;
            let (name, _) = NameClient::over(stream)?.ask()?;
            *seen.entry(name).or_insert(0) += 1;
        }
        Ok(seen)
    })
}

/// A payload whose bytes depend on `seed`, so a mix-up between flows is noticed.
pub fn payload(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

// ---- benchmark tools ----

/// Benchmark server, until the process is killed. The first byte of a connection says what it
/// wants: `C` one transaction served right in the accept loop, as netserver serves TCP_CRR (a
/// thread per connection would cost more than the datapath being measured); `E` echo and `S` sink
/// on a thread of their own.
/// `ipv6`: on every IPv6 address (`[::]`) instead of every IPv4 one.
pub fn serve(port: u16, ipv6: bool) -> Result<()> {
    let any: std::net::IpAddr = if ipv6 { std::net::Ipv6Addr::UNSPECIFIED.into() } else { std::net::Ipv4Addr::UNSPECIFIED.into() };
    let listener = TcpListener::bind((any, port))?;
    // UDP_RR: every datagram is sent back to its sender, from the same port.
    let udp = UdpSocket::bind((any, port))?;
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = udp.recv_from(&mut buf) {
            let _ = udp.send_to(&buf[..n], from);
        }
    });
    println!("listening");
    std::io::stdout().flush()?;
    for conn in listener.incoming() {
        let mut conn = conn?;
        conn.set_nodelay(true)?;
        let mut mode = [0u8; 1];
        if conn.read_exact(&mut mode).is_err() {
            continue;
        }
        match mode[0] {
            b'C' => {
                let mut byte = [0u8; 1];
                if conn.read_exact(&mut byte).is_ok() {
                    let _ = conn.write_all(&byte);
                }
            }
            b'E' => {
                std::thread::spawn(move || echo(conn));
            }
            b'S' => {
                std::thread::spawn(move || sink(conn));
            }
            _ => {}
        }
    }
    Ok(())
}

fn sink(mut conn: TcpStream) {
    let mut buf = vec![0u8; 1 << 20];
    let mut total: u64 = 0;
    while let Ok(n) = conn.read(&mut buf) {
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    let _ = conn.write_all(&total.to_be_bytes());
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Transactions per second: 1-byte request and response on one connection (netperf TCP_RR).
    Rr,
    /// New connections per second: connect, 1-byte request and response, close (TCP_CRR).
    Crr,
    /// Throughput of one TCP stream, in bits per second (TCP_STREAM).
    Stream,
    /// Small-packet UDP: 64-byte request and response datagrams per second (netperf UDP_RR).
    Udp,
}

/// Payload of a UDP_RR datagram (small packets: what separates datapaths).
const UDP_RR_BYTES: usize = 64;

/// Runs one benchmark measurement for `duration` and returns the rate per second.
pub fn client(to: SocketAddr, mode: Mode, duration: Duration) -> Result<f64> {
    let start = Instant::now();
    match mode {
        Mode::Rr => {
            let mut conn = TcpStream::connect(to)?;
            conn.set_nodelay(true)?;
            conn.write_all(b"E")?;
            let mut byte = [0u8; 1];
            let mut count = 0u64;
            while start.elapsed() < duration {
                conn.write_all(b"x")?;
                conn.read_exact(&mut byte)?;
                count += 1;
            }
            Ok(count as f64 / start.elapsed().as_secs_f64())
        }
        Mode::Crr => {
            let mut byte = [0u8; 1];
            let mut count = 0u64;
            while start.elapsed() < duration {
                let mut conn = TcpStream::connect(to)?;
                conn.set_nodelay(true)?;
                conn.write_all(b"Cx")?;
                conn.read_exact(&mut byte)?;
                count += 1;
            }
            Ok(count as f64 / start.elapsed().as_secs_f64())
        }
        Mode::Udp => {
            let socket = UdpSocket::bind(any_of(&to))?;
            socket.connect(to)?;
            // A datagram lost in the middle of a measurement is sent again after this long.
            socket.set_read_timeout(Some(Duration::from_millis(200)))?;
            let request = [0x5au8; UDP_RR_BYTES];
            let mut reply = [0u8; 2048];
            let mut count = 0u64;
            while start.elapsed() < duration {
                socket.send(&request)?;
                match socket.recv(&mut reply) {
                    Ok(n) if n == UDP_RR_BYTES => count += 1,
                    Ok(_) => bail!("UDP reply of the wrong size"),
                    Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            if count == 0 {
                bail!("no UDP reply from {to}");
            }
            Ok(count as f64 / start.elapsed().as_secs_f64())
        }
        Mode::Stream => {
            let mut conn = TcpStream::connect(to)?;
            conn.write_all(b"S")?;
            let buf = vec![0x5au8; 128 * 1024];
            let mut sent = 0u64;
            while start.elapsed() < duration {
                conn.write_all(&buf)?;
                sent += buf.len() as u64;
            }
            conn.shutdown(std::net::Shutdown::Write)?;
            let mut total = [0u8; 8];
            conn.read_exact(&mut total)?;
            let received = u64::from_be_bytes(total);
            if received != sent {
                bail!("server received {received} bytes of {sent}");
            }
            Ok(received as f64 * 8.0 / start.elapsed().as_secs_f64())
        }
    }
}
