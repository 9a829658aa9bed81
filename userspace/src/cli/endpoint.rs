//! `bpfnet endpoint ...`: the endpoint lifecycle step by step (allocate, attach, detach, release).
use anyhow::Result;
use clap::{Args, Subcommand};

use super::{inspect_each, absolute_netns, print_json, print_table, remove_each, segment};
use crate::{api, client::Client};

/// What an endpoint asks for on its network (`network connect`, `endpoint create`).
#[derive(Args)]
pub struct EndpointSpecArgs {
    /// Address to use instead of the next free one.
    #[arg(long)]
    ip: Option<String>,
    /// IPv6 address to use instead of the next free one (a dual-stack network's).
    #[arg(long)]
    ip6: Option<String>,
    /// Another name for the container on this network (repeatable).
    #[arg(long = "alias")]
    aliases: Vec<String>,
    /// Publish a container port on the host (repeatable), as docker run -p:
    /// [HOST_IP:]HOST_PORT[-END]:CONTAINER_PORT[-END][/tcp|/udp]. Without HOST_IP the port is
    /// published on every address of the daemon's namespace, IPv4 and IPv6 (IPv6 where the
    /// container has an IPv6 address); 0.0.0.0 means every IPv4 address, [::] every IPv6 one,
    /// an IPv6 address goes in brackets ([2001:db8::1]:8080:80); tcp is the default. Clients
    /// outside reach the container through the uplink, other containers through any host
    /// address; the container sees the client's real address.
    #[arg(short = 'p', long = "publish", value_name = "SPEC")]
    publish: Vec<String>,
}

impl From<EndpointSpecArgs> for api::EndpointSpec {
    fn from(a: EndpointSpecArgs) -> Self {
        Self { ip: a.ip, ip6: a.ip6, aliases: a.aliases, publish: a.publish }
    }
}

#[derive(Subcommand)]
pub enum EndpointCommand {
    /// Reserve an address (and published ports) on a network for a container, without attaching
    /// anything yet. Prints the new endpoint's id.
    Create {
        /// Network to allocate on.
        network: String,
        /// The container's name: letters, digits, '_', '.', '-'.
        name: String,
        // The address and published ports are reserved from now on; ports answer once attached.
        #[command(flatten)]
        spec: EndpointSpecArgs,
        /// Print the endpoint as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Attach an allocated endpoint to a network namespace: a veth pair whose inside end gets the
    /// endpoint's name (--interface, default the first free ethN), address and MAC, and, for the
    /// namespace's first network, a default route via the gateway.
    Attach {
        /// Endpoint id (or a unique prefix of it).
        endpoint: String,
        /// A name under /run/netns, a path to a namespace file, or a PID.
        netns: String,
        /// Interface name inside the namespace.
        #[arg(long)]
        interface: Option<String>,
        /// Print the attached endpoint as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove an endpoint's interface from its namespace; its address and ports stay reserved.
    Detach {
        /// Endpoint id (or a unique prefix of it).
        endpoint: String,
    },
    /// Free endpoints (each is detached first if it is attached).
    #[command(alias = "remove")]
    Rm {
        /// Endpoint ids (or unique prefixes).
        #[arg(required = true)]
        endpoints: Vec<String>,
    },
    /// List endpoints, attached and allocated.
    #[command(alias = "list")]
    Ls {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show endpoints as JSON.
    Inspect {
        /// Endpoint ids (or unique prefixes).
        #[arg(required = true)]
        endpoints: Vec<String>,
    },
}

pub async fn run(client: &Client<'_>, cmd: EndpointCommand) -> Result<()> {
    match cmd {
        EndpointCommand::Create { network, name, spec, json } => {
            let req = api::Allocate { network, name, spec: spec.into(), id: None, frontend: None };
            let ep: api::EndpointView = client.post("/endpoints", &req).await?;
            if json {
                return print_json(&ep);
            }
            println!("{}", ep.endpoint_id);
        }
        EndpointCommand::Attach { endpoint, netns, interface, json } => {
            let req = api::Attach { netns: absolute_netns(netns.clone())?, interface };
            let ep: api::EndpointCreated = client.post(&format!("/endpoints/{}/attach", segment(&endpoint)), &req).await?;
            if json {
                return print_json(&ep);
            }
            super::print_joined(&netns, &ep);
        }
        EndpointCommand::Detach { endpoint } => {
            let _: api::EndpointView = client.post(&format!("/endpoints/{}/detach", segment(&endpoint)), &()).await?;
        }
        EndpointCommand::Rm { endpoints } => remove_each(client, "endpoints", &endpoints).await?,
        EndpointCommand::Ls { json } => {
            let eps: Vec<api::EndpointView> = client.get("/endpoints").await?;
            if json {
                return print_json(&eps);
            }
            let rows: Vec<Vec<String>> = eps
                .iter()
                .map(|e| {
                    let (netns, interface) = match &e.attachment {
                        Some(a) => (a.netns.clone(), a.interface.clone()),
                        None => ("-".into(), "-".into()),
                    };
                    vec![
                        e.endpoint_id[..12].to_string(),
                        e.name.clone(),
                        e.network.clone(),
                        super::joined(&[&e.ipv4_address, &e.ipv6_address], ", "),
                        if e.attachment.is_some() { "attached" } else { "allocated" }.into(),
                        netns,
                        interface,
                        e.frontend.clone(),
                    ]
                })
                .collect();
            print_table(&["ENDPOINT ID", "NAME", "NETWORK", "ADDRESS", "STATE", "NAMESPACE", "INTERFACE", "FRONTEND"], &rows);
        }
        EndpointCommand::Inspect { endpoints } => inspect_each::<api::EndpointView>(client, "endpoints", &endpoints).await?,
    }
    Ok(())
}
