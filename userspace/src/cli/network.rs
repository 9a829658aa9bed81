//! `bpfnet network ...`: networks, and connecting namespaces to them.
use anyhow::Result;
use clap::Subcommand;

use super::{inspect_each, absolute_netns, endpoint::EndpointSpecArgs, parse_options, print_json, print_table, remove_each, segment};
use crate::{api, client::Client};

#[derive(Subcommand)]
pub enum NetworkCommand {
    /// Create a network. Without an IPv4 --subnet a free /16 is taken from 172.17-31.0.0 (then
    /// 192.168.0.0/20 blocks), as Docker does; the gateway defaults to the first address.
    /// Dual stack: give an IPv6 --subnet too, or --ipv6 for a free /64 of fd62:7066::/48.
    /// IPv6-only: --ipv4=false with --ipv6 or an IPv6 --subnet.
    Create {
        /// Network name: letters, digits, '_', '.', '-'.
        name: String,
        /// Subnet in CIDR form: IPv4 (10.10.0.0/24), IPv6 (fd00:10::/64), or one of each
        /// (the option twice) for a dual-stack network.
        #[arg(long, value_name = "CIDR")]
        subnet: Vec<String>,
        /// Gateway address (owned by the host) inside the subnet of its family; once per
        /// subnet.
        #[arg(long, value_name = "IP")]
        gateway: Vec<String>,
        /// IPv6 too (dual stack): with no IPv6 --subnet, the first free /64 of fd62:7066::/48.
        #[arg(long)]
        ipv6: bool,
        /// --ipv4=false: no IPv4 at all, an IPv6-only network (needs --ipv6 or an IPv6
        /// --subnet; not for overlay networks).
        #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true", require_equals = true)]
        ipv4: bool,
        /// Hand out addresses from this prefix of the subnet only (e.g. 10.10.0.128/25); --ip
        /// may still ask for any address of the subnet.
        #[arg(long, value_name = "PREFIX")]
        ip_range: Option<String>,
        /// No traffic leaves the network except to its gateway.
        #[arg(long)]
        internal: bool,
        /// `bpfnet` (the default: this host's network) or `overlay`: one network across the
        /// nodes of the cluster (the daemon runs with --cluster), defined once in etcd and listed
        /// on every node; its containers on different nodes reach each other through VXLAN.
        #[arg(short = 'd', long, value_name = "DRIVER")]
        driver: Option<String>,
        /// Driver options as KEY=VALUE; supported: icc=false (containers of the network cannot
        /// talk to each other, only to the gateway), masquerade=false (containers' traffic to the
        /// outside keeps their own address instead of leaving with the uplink's).
        #[arg(short = 'o', long = "opt", value_name = "KEY=VALUE")]
        options: Vec<String>,
    },
    /// List networks.
    #[command(alias = "list")]
    Ls {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show networks in detail, as JSON shaped like `docker network inspect`.
    Inspect {
        /// Networks to show.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove networks (refused while containers are connected).
    #[command(alias = "remove")]
    Rm {
        /// Networks to remove.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Connect a network namespace to a network: it gets a new interface (eth0, eth1, ... in join
    /// order), an address, and, for its first network, a default route via the gateway.
    Connect {
        /// Network to join.
        network: String,
        /// A name under /run/netns, a path to a namespace file, or a PID.
        netns: String,
        #[command(flatten)]
        spec: EndpointSpecArgs,
        /// Print the new endpoint as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Disconnect a network namespace from a network, removing its interface.
    Disconnect {
        /// Network to leave.
        network: String,
        /// The namespace as given to connect, or any other name of it (name, path or PID).
        netns: String,
    },
}

/// `values` of `option` split by address family: at most one IPv4 (first) and one IPv6 (second),
/// told apart by a ':'.
fn by_family(option: &str, values: Vec<String>) -> Result<[Option<String>; 2]> {
    let mut found: [Option<String>; 2] = [None, None];
    for value in values {
        let slot = &mut found[usize::from(value.contains(':'))];
        if let Some(first) = slot.replace(value.clone()) {
            anyhow::bail!("{option} {first} and {option} {value}: give at most one IPv4 and one IPv6 {}", &option[2..]);
        }
    }
    Ok(found)
}

pub async fn run(client: &Client<'_>, cmd: NetworkCommand) -> Result<()> {
    match cmd {
        NetworkCommand::Create { name, subnet, gateway, ipv6, ipv4, ip_range, internal, options, driver } => {
            let [subnet, subnet6] = by_family("--subnet", subnet)?;
            let [gateway, gateway6] = by_family("--gateway", gateway)?;
            let options = parse_options(&options)?;
            let req = api::CreateNetwork { name, subnet, gateway, internal, options, driver, ip_range, subnet6, gateway6, ipv6, ipv4: (!ipv4).then_some(false) };
            let net: api::NetworkInspect = client.post("/networks", &req).await?;
            println!("{}", net.id);
        }
        NetworkCommand::Ls { json } => {
            let nets: Vec<api::NetworkSummary> = client.get("/networks").await?;
            if json {
                return print_json(&nets);
            }
            let rows: Vec<Vec<String>> = nets
                .iter()
                .map(|n| {
                    vec![
                        n.id[..12].to_string(),
                        n.name.clone(),
                        n.driver.clone(),
                        super::joined(&[&n.subnet, n.subnet6.as_deref().unwrap_or_default()], ", "),
                        super::joined(&[&n.gateway, n.gateway6.as_deref().unwrap_or_default()], ", "),
                        if n.internal { "yes" } else { "no" }.into(),
                        if n.icc { "yes" } else { "no" }.into(),
                        n.endpoints.to_string(),
                    ]
                })
                .collect();
            print_table(&["NETWORK ID", "NAME", "DRIVER", "SUBNET", "GATEWAY", "INTERNAL", "ICC", "ENDPOINTS"], &rows);
        }
        NetworkCommand::Inspect { names } => inspect_each::<api::NetworkInspect>(client, "networks", &names).await?,
        NetworkCommand::Rm { names } => remove_each(&client, "networks", &names).await?,
        NetworkCommand::Connect { network, netns, spec, json } => {
            let req = api::Connect { netns: absolute_netns(netns.clone())?, spec: spec.into() };
            let ep: api::EndpointCreated =
                client.post(&format!("/networks/{}/connect", segment(&network)), &req).await?;
            if json {
                return print_json(&ep);
            }
            super::print_joined(&netns, &ep);
            for port in &ep.ports {
                println!("published {port}");
            }
            if let Some(resolver) = &ep.resolver {
                println!("resolver {resolver} (names of {}: put `nameserver {resolver}` in the container's resolv.conf)", ep.network);
            }
        }
        NetworkCommand::Disconnect { network, netns } => {
            let req = api::Disconnect { netns: absolute_netns(netns)? };
            let _: serde_json::Value =
                client.post(&format!("/networks/{}/disconnect", segment(&network)), &req).await?;
        }
    }
    Ok(())
}
