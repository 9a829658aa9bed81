//! Uplinks: the interfaces traffic to the outside leaves by. The daemon turns on forwarding in
//! its namespace (the FIB lookups of the datapath need it), attaches the uplink program to each
//! uplink and tells the datapath the address masquerade gives traffic leaving by it. With `--xdp`
//! auto (the default) an uplink whose driver runs XDP natively, other than a veth, also runs the
//! XDP program, which takes the published path before the kernel allocates an skb.
use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::{bail, Context, Result};

use crate::{api, datapath::{Datapath, UplinkAddresses}, plumbing::{self, Netlink}};

/// An uplink found (then attached), with the addresses masquerade gives traffic leaving by it:
/// an IPv4 one always, a global IPv6 one where it has one (for NAT66).
#[derive(Debug, Clone)]
pub(super) struct Found {
    name: String,
    pub(super) index: u32,
    addr: Ipv4Addr,
    addr6: Option<Ipv6Addr>,
    veth: bool,
    /// The XDP program runs on it.
    xdp: bool,
    /// Why it takes the path it takes (`stats`).
    why: String,
}

/// `bpfnet daemon --xdp`: whether the uplinks run the XDP program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpSetting {
    /// TC only.
    Off,
    /// Native XDP on every uplink, or the daemon does not start (`--xdp native`).
    Native,
    /// Native XDP where the uplink's driver has it and runs it before the skb exists; TC alone on
    /// a veth and where the driver has no XDP (the default).
    Auto,
}

/// Finds the uplinks: `names`, or the interfaces of the default route. Touches nothing, so a
/// wrong `--uplink` stops the start before anything changes.
pub(super) async fn find(netlink: &Netlink, names: &[String]) -> Result<Vec<Found>> {
    let mut chosen: Vec<(String, u32)> = Vec::new();
    if names.is_empty() {
        let links = netlink.links().await?;
        for index in netlink.default_route_interfaces().await? {
            if let Some(link) = links.iter().find(|l| l.index == index) {
                chosen.push((link.name.clone(), index));
            }
        }
    } else {
        for name in names {
            let index = netlink
                .link_index(name)
                .await?
                .with_context(|| format!("--uplink {name}: there is no interface {name} in the daemon's namespace"))?;
            chosen.push((name.clone(), index));
        }
    }
    let mut found = Vec::new();
    for (name, index) in chosen {
        let Some(addr) = netlink.interface_ipv4(index).await?.first().copied() else {
            if names.is_empty() {
                log::warn!("uplink {name} has no IPv4 address: masquerade cannot use it");
                continue;
            }
            bail!("--uplink {name}: the interface has no IPv4 address for masquerade to use");
        };
        let addr6 = netlink.interface_ipv6(index).await?.first().copied();
        let veth = netlink.is_veth(index).await?;
        found.push(Found { name, index, addr, addr6, veth, xdp: false, why: String::new() });
    }
    Ok(found)
}

/// Attaches the datapath to the uplinks `found` (TC, and XDP as `xdp` says) and forgets those of
/// an earlier run that are no longer wanted.
pub(super) fn attach(datapath: &mut Datapath, found: &mut [Found], xdp: XdpSetting) -> Result<Vec<api::Uplink>> {
    for f in found.iter_mut() {
        // TC first: XDP passes on to it whatever it does not handle.
        datapath.attach_uplink(&f.name)?;
        (f.xdp, f.why) = match xdp {
            XdpSetting::Off => {
                datapath.detach_uplink_xdp(&f.name)?;
                (false, "--xdp off".into())
            }
            XdpSetting::Native => {
                datapath.attach_uplink_xdp(&f.name).with_context(|| format!("--xdp native on uplink {}", f.name))?;
                (true, "--xdp native".into())
            }
            XdpSetting::Auto if f.veth => {
                // A veth runs XDP in a NAPI poll of its own: every frame is queued there and loses
                // its GSO, which costs more than XDP saves (measured).
                datapath.detach_uplink_xdp(&f.name)?;
                (false, "a veth, where XDP only adds a NAPI hop (--xdp native forces it)".into())
            }
            XdpSetting::Auto => match datapath.attach_uplink_xdp(&f.name) {
                Ok(()) => (true, "the driver runs XDP natively".into()),
                Err(e) => {
                    log::warn!("uplink {}: no native XDP ({e:#}); its traffic takes the TC path", f.name);
                    datapath.detach_uplink_xdp(&f.name)?;
                    (false, "the driver has no native XDP".into())
                }
            },
        };
    }
    let uplinks = views(found);
    datapath.set_uplinks(&datapath_uplinks(found))?;
    for pinned in datapath.pinned_uplinks() {
        if !found.iter().any(|f| f.name == pinned) {
            datapath.detach_uplink(&pinned)?;
        }
    }
    for pinned in datapath.pinned_uplinks_xdp() {
        if !found.iter().any(|f| f.name == pinned && f.xdp) {
            datapath.detach_uplink_xdp(&pinned)?;
        }
    }
    if uplinks.is_empty() {
        log::warn!("no uplink (no default route here and no --uplink): containers cannot reach the outside");
    } else {
        // The datapath routes through the FIB, which answers only where forwarding is on (for
        // IPv6, per interface: on each dual-stack endpoint's host side, see the veth driver;
        // the host's own `all.forwarding`, which would stop its uplinks taking router
        // advertisements, stays as it is).
        plumbing::write_sysctl("net/ipv4/ip_forward", "1")?;
        for u in &uplinks {
            let path = if u.xdp { "XDP and TC" } else { "TC" };
            let v6 = u.ipv6_address.as_deref().map(|a| format!(", {a}")).unwrap_or_default();
            log::info!(
                "uplink {} ({}{v6}): masqueraded traffic leaves by it; traffic arriving takes the {path} path ({})",
                u.interface,
                u.address,
                u.why
            );
        }
    }
    Ok(uplinks)
}

/// `lo`'s IPv6 forwarding setting.
const LO_FORWARDING: &str = "net/ipv6/conf/lo/forwarding";

/// Lets `lo` forward IPv6: the routing mesh's IPv6 answers leave as the host's own (the
/// datapath's route lookup enters by `lo`), and the kernel answers an IPv6 route lookup only
/// where the interface entered by forwards; on `lo` it changes nothing else (no router
/// advertisements, no neighbours). The uplinks keep theirs (forwarding there would stop them
/// taking router advertisements). It is also the sentinel of the endpoints' host sides, which
/// forward IPv6 one by one: a rewrite of `net.ipv6.conf.all.forwarding` (`sysctl -p`, another
/// network manager) sets every interface's, and when it turns `lo`'s off it turned theirs off
/// too. Returns whether `lo` had stopped forwarding (it forwards again); `None` without IPv6
/// here.
pub(super) fn lo_forwards_ipv6() -> Option<bool> {
    let now = std::fs::read_to_string(format!("/proc/sys/{LO_FORWARDING}")).ok()?;
    if now.trim() == "1" {
        return Some(false);
    }
    if let Err(e) = plumbing::write_sysctl(LO_FORWARDING, "1") {
        log::warn!("the routing mesh cannot answer IPv6 clients: {e:#}");
    }
    Some(true)
}

/// What the datapath's `UPLINKS` holds for `found`.
fn datapath_uplinks(found: &[Found]) -> Vec<UplinkAddresses> {
    found.iter().map(|f| UplinkAddresses { ifindex: f.index, ipv4: f.addr, ipv6: f.addr6, veth: f.veth }).collect()
}

/// The uplinks as `stats` shows them.
pub(super) fn views(found: &[Found]) -> Vec<api::Uplink> {
    found
        .iter()
        .map(|f| api::Uplink {
            interface: f.name.clone(),
            address: f.addr.to_string(),
            ipv6_address: f.addr6.map(|a| a.to_string()),
            xdp: f.xdp,
            why: f.why.clone(),
        })
        .collect()
}

/// Follows address changes of the uplinks (DHCP, an address replaced by hand): masquerade uses an
/// uplink's current address. Returns whether anything changed.
pub(super) async fn refresh(netlink: &Netlink, datapath: &mut Datapath, found: &mut [Found]) -> Result<bool> {
    let mut changed = false;
    for f in found.iter_mut() {
        let current = netlink.interface_ipv4(f.index).await?;
        // Keep the address while it is still there (an added secondary does not replace it).
        if current.contains(&f.addr) {
            continue;
        }
        match current.first() {
            Some(addr) => {
                log::info!("uplink {} now has address {addr} (was {}): masquerade uses it", f.name, f.addr);
                f.addr = *addr;
                changed = true;
            }
            None => log::warn!("uplink {} has no IPv4 address left; masquerade keeps {} until it has one", f.name, f.addr),
        }
    }
    for f in found.iter_mut() {
        // IPv4's change (above) must reach the datapath even if this lookup fails.
        let current = match netlink.interface_ipv6(f.index).await {
            Ok(current) => current,
            Err(e) => {
                log::warn!("uplink {}: its IPv6 addresses could not be read ({e:#}); masquerade keeps what it has", f.name);
                continue;
            }
        };
        // As for IPv4; an IPv6 address gone is no longer used (there may be none).
        if f.addr6.is_some_and(|a| current.contains(&a)) || (f.addr6.is_none() && current.is_empty()) {
            continue;
        }
        let now = current.first().copied();
        match now {
            Some(addr) => log::info!("uplink {} now has IPv6 address {addr}: IPv6 masquerade uses it", f.name),
            None => log::warn!("uplink {} has no global IPv6 address left: IPv6 from containers is no longer masqueraded", f.name),
        }
        f.addr6 = now;
        changed = true;
    }
    if changed {
        datapath.set_uplinks(&datapath_uplinks(found))?;
    }
    Ok(changed)
}
