//! Datapath tests: the real eBPF program, loaded with private (unpinned) maps, run once per
//! hand-made packet with BPF_PROG_TEST_RUN; verdicts, output bytes and counters are checked.
//! In a test run the packet's device is loopback (ifindex 1), so the sender's interface entry is
//! written under ifindex 1. Needs root (CAP_BPF).
use std::net::IpAddr;

use bpfnet::{
    datapath::{Datapath, LoadOptions},
    test_run::run_tc,
};
use datapath_common::{iface_flags, Counter, EndpointInfo, IfaceInfo, GATEWAY_MAC};

const PASS: u32 = 0; // TC_ACT_OK: to the host stack
const DROP: u32 = 2; // TC_ACT_SHOT
const REDIRECT: u32 = 7; // TC_ACT_REDIRECT
const TEST_IFINDEX: u32 = 1;

const SENDER_IP: [u8; 4] = [10, 0, 0, 2];
const SENDER_MAC: [u8; 6] = [0x02, 0x42, 10, 0, 0, 2];
const GATEWAY_IP: [u8; 4] = [10, 0, 0, 1];
const PEER_IP: [u8; 4] = [10, 0, 0, 3]; // same network
const PEER_MAC: [u8; 6] = [0x02, 0x42, 10, 0, 0, 3];
const PEER_HOST_IFINDEX: u32 = 42;
const OTHER_NET_IP: [u8; 4] = [10, 1, 0, 2]; // another network
const OTHER_NET_MAC: [u8; 6] = [0x02, 0x42, 10, 1, 0, 2];

/// A datapath with: the sender on network 1 (ifindex 1), a peer on network 1, one on network 2.
fn datapath(flags: u32) -> Datapath {
    datapath_traced(flags, false)
}

fn datapath_traced(flags: u32, trace: bool) -> Datapath {
    let options = LoadOptions { trace, ct_entries: 4096, ..Default::default() };
    let mut dp = Datapath::load_unpinned(&options).expect("loading the datapath (run as root)");
    dp.set_iface(
        TEST_IFINDEX,
        IfaceInfo { network_id: 1, ipv4: SENDER_IP, gateway_ipv4: GATEWAY_IP, flags, mac: SENDER_MAC, _pad: [0; 2], ..Default::default() },
    )
    .unwrap();
    dp.set_endpoint(
        IpAddr::from(PEER_IP),
        EndpointInfo { host_ifindex: PEER_HOST_IFINDEX, network_id: 1, mac: PEER_MAC, ..Default::default() },
    )
    .unwrap();
    dp.set_endpoint(
        IpAddr::from(OTHER_NET_IP),
        EndpointInfo { host_ifindex: 43, network_id: 2, mac: OTHER_NET_MAC, ..Default::default() },
    )
    .unwrap();
    dp
}

fn counter(dp: &mut Datapath, which: Counter) -> u64 {
    dp.counters().unwrap().into_iter().find(|(c, _)| *c == which).unwrap().1
}

fn arp_request(sender_mac: [u8; 6], sender_ip: [u8; 4], target_ip: [u8; 4]) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&[0xff; 6]); // broadcast
    p.extend_from_slice(&sender_mac);
    p.extend_from_slice(&[0x08, 0x06]);
    p.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]); // Ethernet, IPv4, request
    p.extend_from_slice(&sender_mac);
    p.extend_from_slice(&sender_ip);
    p.extend_from_slice(&[0; 6]);
    p.extend_from_slice(&target_ip);
    p
}

/// The exact reply a correct ARP responder sends for `request`, answering with `answer_mac`.
fn arp_reply(asker_mac: [u8; 6], asker_ip: [u8; 4], answer_mac: [u8; 6], answer_ip: [u8; 4]) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&asker_mac);
    p.extend_from_slice(&answer_mac);
    p.extend_from_slice(&[0x08, 0x06]);
    p.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 2]); // reply
    p.extend_from_slice(&answer_mac);
    p.extend_from_slice(&answer_ip);
    p.extend_from_slice(&asker_mac);
    p.extend_from_slice(&asker_ip);
    p
}

/// Ethernet + IPv4 + TCP SYN-ish segment + payload.
fn tcp_packet(dst_mac: [u8; 6], src_ip: [u8; 4], dst_ip: [u8; 4]) -> Vec<u8> {
    let payload = b"hello bpfnet";
    let mut p = Vec::new();
    p.extend_from_slice(&dst_mac);
    p.extend_from_slice(&SENDER_MAC);
    p.extend_from_slice(&[0x08, 0x00]);
    let total_len = (20 + 20 + payload.len()) as u16;
    p.extend_from_slice(&[0x45, 0, (total_len >> 8) as u8, total_len as u8, 0x12, 0x34, 0x40, 0, 64, 6, 0, 0]);
    p.extend_from_slice(&src_ip);
    p.extend_from_slice(&dst_ip);
    p.extend_from_slice(&[0x9c, 0x40, 0x1f, 0x90, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0]);
    p.extend_from_slice(payload);
    p
}

#[test]
fn arp_for_gateway_is_answered_with_gateway_mac() {
    let mut dp = datapath(0);
    let fd = dp.program_fd().unwrap();
    let out = run_tc(fd, &arp_request(SENDER_MAC, SENDER_IP, GATEWAY_IP)).unwrap();
    assert_eq!(out.verdict, REDIRECT, "reply is sent back out of the same interface");
    assert_eq!(out.packet, arp_reply(SENDER_MAC, SENDER_IP, GATEWAY_MAC, GATEWAY_IP));
    assert_eq!(counter(&mut dp, Counter::ArpReplied), 1);
}

#[test]
fn arp_for_same_network_container_is_answered_with_its_mac() {
    let mut dp = datapath(0);
    let fd = dp.program_fd().unwrap();
    let out = run_tc(fd, &arp_request(SENDER_MAC, SENDER_IP, PEER_IP)).unwrap();
    assert_eq!(out.verdict, REDIRECT);
    assert_eq!(out.packet, arp_reply(SENDER_MAC, SENDER_IP, PEER_MAC, PEER_IP));
}

#[test]
fn arp_for_other_network_or_unknown_address_is_dropped() {
    let mut dp = datapath(0);
    let fd = dp.program_fd().unwrap();
    for target in [OTHER_NET_IP, [10, 0, 0, 99]] {
        let out = run_tc(fd, &arp_request(SENDER_MAC, SENDER_IP, target)).unwrap();
        assert_eq!(out.verdict, DROP, "target {target:?}");
    }
    assert_eq!(counter(&mut dp, Counter::DropArpUnknownTarget), 2);
    assert_eq!(counter(&mut dp, Counter::ArpReplied), 0);
}

#[test]
fn arp_with_spoofed_sender_address_is_dropped() {
    let mut dp = datapath(0);
    let fd = dp.program_fd().unwrap();
    let out = run_tc(fd, &arp_request(SENDER_MAC, PEER_IP, GATEWAY_IP)).unwrap();
    assert_eq!(out.verdict, DROP);
    assert_eq!(counter(&mut dp, Counter::DropSpoofedSource), 1);
}

#[test]
fn same_network_traffic_is_redirected_with_rewritten_macs() {
    let mut dp = datapath(0);
    let fd = dp.program_fd().unwrap();
    // Sent to the gateway's MAC (as a routed packet would be): the datapath must fix the MACs.
    let input = tcp_packet(GATEWAY_MAC, SENDER_IP, PEER_IP);
    let out = run_tc(fd, &input).unwrap();
    assert_eq!(out.verdict, REDIRECT);
    assert_eq!(out.packet[0..6], PEER_MAC, "destination MAC is the receiver's");
    assert_eq!(out.packet[6..12], SENDER_MAC, "source MAC is the sender's");
    assert_eq!(out.packet[12..], input[12..], "nothing past the Ethernet addresses changes");
    assert_eq!(counter(&mut dp, Counter::Redirected), 1);
}

#[test]
fn traffic_to_another_network_is_dropped() {
    let mut dp = datapath(0);
    let fd = dp.program_fd().unwrap();
    let out = run_tc(fd, &tcp_packet(GATEWAY_MAC, SENDER_IP, OTHER_NET_IP)).unwrap();
    assert_eq!(out.verdict, DROP);
    assert_eq!(counter(&mut dp, Counter::DropIsolation), 1);
    assert_eq!(counter(&mut dp, Counter::Redirected), 0);
}

#[test]
fn icc_false_drops_container_traffic_but_not_gateway_traffic() {
    let mut dp = datapath(iface_flags::ICC_DISABLED);
    let fd = dp.program_fd().unwrap();
    let out = run_tc(fd, &tcp_packet(PEER_MAC, SENDER_IP, PEER_IP)).unwrap();
    assert_eq!(out.verdict, DROP);
    assert_eq!(counter(&mut dp, Counter::DropIcc), 1);
    let input = tcp_packet(GATEWAY_MAC, SENDER_IP, GATEWAY_IP);
    let out = run_tc(fd, &input).unwrap();
    assert_eq!(out.verdict, PASS, "the gateway stays reachable");
    assert_eq!(out.packet, input, "packets to the host are not modified");
}

#[test]
fn gateway_and_unknown_destinations_go_to_the_host_unless_internal() {
    let mut dp = datapath(0);
    let fd = dp.program_fd().unwrap();
    assert_eq!(run_tc(fd, &tcp_packet(GATEWAY_MAC, SENDER_IP, GATEWAY_IP)).unwrap().verdict, PASS);
    assert_eq!(run_tc(fd, &tcp_packet(GATEWAY_MAC, SENDER_IP, [192, 0, 2, 1])).unwrap().verdict, PASS);
    assert_eq!(counter(&mut dp, Counter::ToHost), 2);

    let mut dp = datapath(iface_flags::INTERNAL);
    let fd = dp.program_fd().unwrap();
    assert_eq!(run_tc(fd, &tcp_packet(GATEWAY_MAC, SENDER_IP, GATEWAY_IP)).unwrap().verdict, PASS);
    assert_eq!(run_tc(fd, &tcp_packet(GATEWAY_MAC, SENDER_IP, [192, 0, 2, 1])).unwrap().verdict, DROP);
    assert_eq!(counter(&mut dp, Counter::DropInternal), 1);
}

#[test]
fn spoofed_source_address_is_dropped() {
    let mut dp = datapath(0);
    let fd = dp.program_fd().unwrap();
    let out = run_tc(fd, &tcp_packet(PEER_MAC, [10, 0, 0, 77], PEER_IP)).unwrap();
    assert_eq!(out.verdict, DROP);
    assert_eq!(counter(&mut dp, Counter::DropSpoofedSource), 1);
}

#[test]
fn malformed_unsupported_and_unknown_interface_are_dropped() {
    let mut dp = datapath(0);
    let fd = dp.program_fd().unwrap();
    // ARP cut short. (A short IPv4 frame cannot be tried: the test run itself refuses it.)
    let truncated = &arp_request(SENDER_MAC, SENDER_IP, PEER_IP)[..20];
    assert_eq!(run_tc(fd, truncated).unwrap().verdict, DROP);
    assert_eq!(counter(&mut dp, Counter::DropMalformed), 1);
    // IPv6 is not forwarded yet.
    let mut v6 = tcp_packet(PEER_MAC, SENDER_IP, PEER_IP);
    v6[12..14].copy_from_slice(&[0x86, 0xdd]);
    assert_eq!(run_tc(fd, &v6).unwrap().verdict, DROP);
    assert_eq!(counter(&mut dp, Counter::DropUnsupportedProtocol), 1);
    // A packet from an interface the datapath does not know.
    dp.remove_iface(TEST_IFINDEX).unwrap();
    assert_eq!(run_tc(fd, &tcp_packet(PEER_MAC, SENDER_IP, PEER_IP)).unwrap().verdict, DROP);
    assert_eq!(counter(&mut dp, Counter::DropUnknownIface), 1);
}

/// Collects the trace records a datapath writes.
#[derive(Clone, Default)]
struct Collected(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl log::Log for Collected {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, record: &log::Record) {
        self.0.lock().unwrap().push(record.args().to_string());
    }
    fn flush(&self) {}
}

#[test]
fn the_trace_tells_each_packets_outcome_and_addresses_and_is_silent_when_off() {
    let records = Collected::default();
    let mut dp = datapath_traced(0, true);
    let mut reader = dp.trace_reader(records.clone()).unwrap();
    let fd = dp.program_fd().unwrap();
    assert_eq!(run_tc(fd, &tcp_packet(GATEWAY_MAC, SENDER_IP, OTHER_NET_IP)).unwrap().verdict, DROP);
    assert_eq!(run_tc(fd, &tcp_packet(GATEWAY_MAC, SENDER_IP, PEER_IP)).unwrap().verdict, REDIRECT);
    assert_eq!(run_tc(fd, &arp_request(SENDER_MAC, SENDER_IP, GATEWAY_IP)).unwrap().verdict, REDIRECT);
    reader.flush();
    assert_eq!(
        *records.0.lock().unwrap(),
        [
            "datapath: drop_isolation on ifindex 1: 10.0.0.2 -> 10.1.0.2 protocol 6",
            "datapath: redirected on ifindex 1: 10.0.0.2 -> 10.0.0.3 protocol 6",
            // Logged after the request became the reply: from the gateway, for the asker.
            "datapath: arp_replied on ifindex 1: arp from 10.0.0.1 for 10.0.0.2",
        ]
    );

    let quiet = Collected::default();
    let mut dp = datapath(0);
    let mut reader = dp.trace_reader(quiet.clone()).unwrap();
    let fd = dp.program_fd().unwrap();
    assert_eq!(run_tc(fd, &tcp_packet(GATEWAY_MAC, SENDER_IP, OTHER_NET_IP)).unwrap().verdict, DROP);
    reader.flush();
    assert!(quiet.0.lock().unwrap().is_empty(), "no trace when off: {:?}", quiet.0.lock().unwrap());
}
