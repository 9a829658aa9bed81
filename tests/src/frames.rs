//! An attacker's tools for the hostile-neighbour tests: raw Ethernet frames built by hand
//! (IPv4, UDP, TCP, ICMP, fragments, with checksums computed here) and sent on an interface of
//! a namespace with an AF_PACKET socket (as a LAN peer or a container with CAP_NET_RAW would),
//! a capture that counts what arrives on an interface, and a UDP listener that records what it
//! receives.
use std::{
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{netns, sandbox::run_ok};

pub const UDP: u8 = 17;
pub const TCP: u8 = 6;
pub const ICMP: u8 = 1;

fn checksum(chunks: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in chunks {
        for pair in chunk.chunks(2) {
            sum += u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]) as u32;
        }
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 packet: header fields an attacker chooses.
#[derive(Clone, Copy, Debug)]
pub struct Ip {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    /// Flags and fragment offset (host order): 0x2000 more fragments, low 13 bits the offset.
    pub frag: u16,
}

impl Ip {
    pub fn new(src: Ipv4Addr, dst: Ipv4Addr, proto: u8) -> Self {
        Self { src, dst, proto, frag: 0 }
    }

    /// The packet with `l4` as its payload (checksummed by the caller's builder).
    pub fn packet(&self, l4: &[u8]) -> Vec<u8> {
        let mut h = vec![0x45, 0];
        h.extend_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
        h.extend_from_slice(&0x5151u16.to_be_bytes());
        h.extend_from_slice(&self.frag.to_be_bytes());
        h.extend_from_slice(&[64, self.proto, 0, 0]);
        h.extend_from_slice(&self.src.octets());
        h.extend_from_slice(&self.dst.octets());
        let c = checksum(&[&h]);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        h.extend_from_slice(l4);
        h
    }

    fn pseudo(&self, len: usize) -> Vec<u8> {
        [&self.src.octets()[..], &self.dst.octets()[..], &[0, self.proto], &(len as u16).to_be_bytes()].concat()
    }

    pub fn udp(&self, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let mut s = Vec::new();
        s.extend_from_slice(&sport.to_be_bytes());
        s.extend_from_slice(&dport.to_be_bytes());
        s.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        s.extend_from_slice(&[0, 0]);
        s.extend_from_slice(payload);
        let c = checksum(&[&self.pseudo(s.len()), &s]);
        s[6..8].copy_from_slice(&c.to_be_bytes());
        self.packet(&s)
    }

    pub fn tcp_syn(&self, sport: u16, dport: u16) -> Vec<u8> {
        let mut s = Vec::new();
        s.extend_from_slice(&sport.to_be_bytes());
        s.extend_from_slice(&dport.to_be_bytes());
        s.extend_from_slice(&[0, 0, 0x10, 0x01, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
        let c = checksum(&[&self.pseudo(s.len()), &s]);
        s[16..18].copy_from_slice(&c.to_be_bytes());
        self.packet(&s)
    }

    /// ICMP of `kind`/`code` with `body` after the 4-byte header.
    pub fn icmp(&self, kind: u8, code: u8, body: &[u8]) -> Vec<u8> {
        let mut s = vec![kind, code, 0, 0];
        s.extend_from_slice(body);
        let c = checksum(&[&s]);
        s[2..4].copy_from_slice(&c.to_be_bytes());
        self.packet(&s)
    }
}

/// An Ethernet frame carrying the IPv4 `packet`.
pub fn ethernet(dst: [u8; 6], src: [u8; 6], packet: &[u8]) -> Vec<u8> {
    [&dst[..], &src[..], &[0x08, 0x00], packet].concat()
}

/// The MAC of `dev` in namespace `ns`.
pub fn mac_of(ns: &str, dev: &str) -> Result<[u8; 6]> {
    let text = run_ok("ip", &["-n", ns, "-o", "link", "show", dev])?;
    let word = text.split_whitespace().skip_while(|w| *w != "link/ether").nth(1).with_context(|| format!("no MAC in {text:?}"))?;
    let bytes: Vec<u8> = word.split(':').map(|b| u8::from_str_radix(b, 16)).collect::<Result<_, _>>()?;
    bytes.try_into().map_err(|_| anyhow::anyhow!("bad MAC {word}"))
}

fn ifindex(dev: &str) -> Result<i32> {
    let name = std::ffi::CString::new(dev)?;
    // SAFETY: a valid C string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        bail!("no interface {dev}: {}", std::io::Error::last_os_error());
    }
    Ok(index as i32)
}

/// An AF_PACKET socket bound to `dev` (of the calling thread's namespace).
fn packet_socket(dev: &str) -> Result<(i32, libc::sockaddr_ll)> {
    let all = (libc::ETH_P_ALL as u16).to_be() as i32;
    // SAFETY: plain socket call.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, all) };
    if fd < 0 {
        bail!("AF_PACKET socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: all-zero is a valid sockaddr_ll.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = all as u16;
    addr.sll_ifindex = ifindex(dev)?;
    // SAFETY: `addr` is a valid sockaddr_ll of the given size.
    let rc = unsafe { libc::bind(fd, &addr as *const _ as *const libc::sockaddr, std::mem::size_of::<libc::sockaddr_ll>() as u32) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        // SAFETY: our own descriptor.
        unsafe { libc::close(fd) };
        bail!("binding to {dev}: {e}");
    }
    Ok((fd, addr))
}

/// Sends each of `frames` on `dev` in namespace `ns`, as they are.
pub fn send_frames(ns: &str, dev: &str, frames: Vec<Vec<u8>>) -> Result<()> {
    let dev = dev.to_string();
    netns::within(ns, move || {
        let (fd, addr) = packet_socket(&dev)?;
        for frame in &frames {
            let mut tries = 0;
            let sent = loop {
                // SAFETY: a valid buffer and address.
                let sent = unsafe {
                    libc::sendto(fd, frame.as_ptr().cast(), frame.len(), 0, &addr as *const _ as *const libc::sockaddr, std::mem::size_of::<libc::sockaddr_ll>() as u32)
                };
                // A burst can outrun the device's queue: wait for room, as a flood tool would.
                if sent < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOBUFS) && tries < 1000 {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(1));
                    continue;
                }
                break sent;
            };
            if sent < 0 {
                let e = std::io::Error::last_os_error();
                // SAFETY: our own descriptor.
                unsafe { libc::close(fd) };
                bail!("sending a frame on {dev}: {e}");
            }
        }
        // SAFETY: our own descriptor.
        unsafe { libc::close(fd) };
        Ok(())
    })
}

/// Frames arriving on an interface, kept while the capture runs (from its start).
pub struct Capture {
    frames: Arc<Mutex<Vec<Vec<u8>>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Capture {
    /// Starts capturing on `dev` in `ns`.
    pub fn start(ns: &str, dev: &str) -> Result<Self> {
        let dev = dev.to_string();
        let fd = netns::within(ns, move || {
            let (fd, _) = packet_socket(&dev)?;
            let timeout = libc::timeval { tv_sec: 0, tv_usec: 100_000 };
            // SAFETY: a valid option value of the given size.
            unsafe {
                libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &timeout as *const _ as *const libc::c_void, std::mem::size_of::<libc::timeval>() as u32)
            };
            Ok(fd)
        })?;
        let frames = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (kept, stopped) = (frames.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                // SAFETY: a valid buffer of the given size.
                let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
                if n > 0 {
                    kept.lock().unwrap().push(buf[..n as usize].to_vec());
                }
            }
            // SAFETY: our own descriptor.
            unsafe { libc::close(fd) };
        });
        Ok(Self { frames, stop })
    }

    /// IPv4 frames seen so far whose source address is `src`.
    pub fn from_source(&self, src: Ipv4Addr) -> usize {
        self.frames.lock().unwrap().iter().filter(|f| f.len() >= 34 && f[12..14] == [8, 0] && f[26..30] == src.octets()).count()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A UDP socket in a namespace that records the payloads it receives.
pub struct UdpRecorder {
    got: Arc<Mutex<Vec<(SocketAddr, Vec<u8>)>>>,
}

impl UdpRecorder {
    pub fn start(ns: &str, addr: SocketAddr) -> Result<Self> {
        let socket = netns::within(ns, move || Ok(UdpSocket::bind(addr)?))?;
        // The thread ends once nothing came for a while.
        socket.set_read_timeout(Some(Duration::from_secs(30)))?;
        let got = Arc::new(Mutex::new(Vec::new()));
        let kept = got.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while let Ok((n, from)) = socket.recv_from(&mut buf) {
                kept.lock().unwrap().push((from, buf[..n].to_vec()));
            }
        });
        Ok(Self { got })
    }

    /// How many datagrams containing `marker` arrived.
    pub fn count(&self, marker: &[u8]) -> usize {
        self.got.lock().unwrap().iter().filter(|(_, p)| p.windows(marker.len()).any(|w| w == marker)).count()
    }

    /// Waits up to `limit` for a datagram containing `marker`.
    pub fn wait_for(&self, marker: &[u8], limit: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < limit {
            if self.count(marker) > 0 {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}
