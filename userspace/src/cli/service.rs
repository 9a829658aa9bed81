//! `bpfnet service ...`: services (a VIP and port over replicas, optionally published).
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;

use super::{inspect_each, absolute_netns, print_json, print_table, remove_each, segment};
use crate::{api, client::Client};

#[derive(Subcommand)]
pub enum ServiceCommand {
    /// Create a service. Example, three replicas behind port 8080 of the host:
    ///   bpfnet service create web --network frontend --port 80 --publish 8080 \
    ///     --backend web1 --backend web2 --backend web3
    Create {
        name: String,
        /// The network whose containers reach the service by its VIP; backends are on it.
        #[arg(long)]
        network: String,
        /// PORT[/tcp|/udp]: the port the service answers on its VIP.
        #[arg(long)]
        port: String,
        /// The IPv4 VIP, on a network with IPv4 (default: the network's next free address, as
        /// Swarm allocates one).
        #[arg(long)]
        vip: Option<String>,
        /// The IPv6 VIP. A service on a network with IPv6 has one (default: the next free
        /// address of the network's IPv6 subnet); IPv6 clients reach the replicas' IPv6
        /// addresses, and --publish covers both families as -p does.
        #[arg(long)]
        vip6: Option<String>,
        /// [HOST_IP:]HOST_PORT: also reachable from outside (and the host) on this port.
        #[arg(long)]
        publish: Option<String>,
        /// client-ip[:SECONDS]: a client's new connections go to the backend its last one
        /// went to, while it keeps coming back within SECONDS (default 10800).
        #[arg(long)]
        affinity: Option<String>,
        /// NETNS[:PORT] of a replica (repeatable): a namespace connected to the network; PORT
        /// defaults to the service port. A service with no backend refuses connections.
        /// On an overlay network (a cluster service, published on every node: the routing
        /// mesh) a replica may also be NAME[:PORT] or ADDRESS[:PORT] of an endpoint of the
        /// network on any node.
        #[arg(long = "backend", value_name = "NETNS[:PORT]")]
        backends: Vec<String>,
        /// Print the service as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Create many services in one change from a JSON file (`{"services": [{"name": ...,
    /// "network": ..., "port": "80", "backends": ["ns1"]}]}`): all or none, one save.
    Apply {
        /// The file; `-` reads standard input.
        file: PathBuf,
    },
    /// Add a replica: new connections start reaching it (about 1/N of them move to it;
    /// existing connections stay where they are).
    AddBackend {
        name: String,
        #[arg(value_name = "NETNS[:PORT]")]
        backend: String,
    },
    /// Remove a replica: no new connections reach it, its UDP flows are forgotten; with
    /// --drain its connections (TCP and UDP) finish first and it goes when they have ended.
    RmBackend {
        name: String,
        #[arg(value_name = "NETNS[:PORT]")]
        backend: String,
        #[arg(long)]
        drain: bool,
    },
    /// List services.
    #[command(alias = "list")]
    Ls {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show services as JSON shaped like `docker service inspect` (VIP, ports, backends with
    /// their state).
    Inspect {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove services: no new connection reaches their backends; open TCP connections go on
    /// until they close, UDP flows are forgotten at once.
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

/// `NETNS[:PORT]` with a relative namespace path made absolute.
fn absolute_backend(arg: String) -> Result<String> {
    match arg.rsplit_once(':') {
        Some((ns, port)) if port.chars().all(|c| c.is_ascii_digit()) => Ok(format!("{}:{port}", absolute_netns(ns.to_string())?)),
        _ => absolute_netns(arg),
    }
}

fn print_service(s: &api::ServiceInspect) {
    let vip = &s.endpoint.virtual_ips[0];
    let port = &s.endpoint.ports[0];
    println!("service {} (id {})", s.spec.name, &s.id[..12]);
    println!("  vip       {} on network {}, port {}/{}", vip.addr, vip.network, port.target_port, port.protocol);
    for vip6 in &s.endpoint.virtual_ips[1..] {
        println!("  vip       {}", vip6.addr);
    }
    if let (Some(p), Some(ip)) = (port.published_port, &port.published_ip) {
        println!("  published {ip}:{p}");
    }
    println!("  affinity  {}", s.spec.affinity);
    let rows: Vec<Vec<String>> = s
        .backends
        .iter()
        .map(|b| {
            let address = super::joined(&[&b.address, b.address6.as_deref().unwrap_or_default()], " ");
            vec![b.name.clone(), address, b.node.clone().unwrap_or_else(|| "(this node)".into()), b.state.clone()]
        })
        .collect();
    print_table(&["BACKEND", "ADDRESS", "NODE", "STATE"], &rows);
}

pub async fn run(client: &Client<'_>, cmd: ServiceCommand) -> Result<()> {
    match cmd {
        ServiceCommand::Create { name, network, port, vip, vip6, publish, affinity, backends, json } => {
            let backends = backends.into_iter().map(absolute_backend).collect::<Result<Vec<_>>>()?;
            let req = api::CreateService { name, network, port, vip, vip6, publish, affinity, backends };
            let s: api::ServiceInspect = client.post("/services", &req).await?;
            if json {
                return print_json(&s);
            }
            print_service(&s);
        }
        ServiceCommand::Apply { file } => {
            let text = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())?
            } else {
                std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?
            };
            let mut req: api::CreateServices = serde_json::from_str(&text).with_context(|| format!("{} is not a services file", file.display()))?;
            for s in &mut req.services {
                s.backends = std::mem::take(&mut s.backends).into_iter().map(absolute_backend).collect::<Result<Vec<_>>>()?;
            }
            let done: api::ServicesCreated = client.post("/services/batch", &req).await?;
            println!("{} services created in {:.1} ms ({:.1} ms writing the datapath)", done.created, done.elapsed_ms, done.datapath_ms);
        }
        ServiceCommand::AddBackend { name, backend } => {
            let req = api::AddBackend { backend: absolute_backend(backend)? };
            let s: api::ServiceInspect = client.post(&format!("/services/{}/backends", segment(&name)), &req).await?;
            print_service(&s);
        }
        ServiceCommand::RmBackend { name, backend, drain } => {
            let req = api::RemoveBackend { netns: absolute_backend(backend)?, drain };
            let s: api::ServiceInspect = client.post(&format!("/services/{}/backends/remove", segment(&name)), &req).await?;
            print_service(&s);
        }
        ServiceCommand::Ls { json } => {
            let services: Vec<api::ServiceSummary> = client.get("/services").await?;
            if json {
                return print_json(&services);
            }
            let rows: Vec<Vec<String>> = services
                .iter()
                .map(|s| {
                    let backends = if s.draining > 0 { format!("{} (+{} draining)", s.backends, s.draining) } else { s.backends.to_string() };
                    vec![
                        s.name.clone(),
                        s.network.clone(),
                        super::joined(&[&s.vip, s.vip6.as_deref().unwrap_or_default()], " "),
                        s.published.clone().unwrap_or_else(|| "-".into()),
                        backends,
                        s.affinity.clone().unwrap_or_else(|| "-".into()),
                        s.scope.clone(),
                    ]
                })
                .collect();
            print_table(&["NAME", "NETWORK", "VIP", "PUBLISHED", "BACKENDS", "AFFINITY", "SCOPE"], &rows);
        }
        ServiceCommand::Inspect { names } => inspect_each::<api::ServiceInspect>(client, "services", &names).await?,
        ServiceCommand::Rm { names } => remove_each(client, "services", &names).await?,
    }
    Ok(())
}
