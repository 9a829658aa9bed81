//! `bpfnet node ...`: the nodes of the cluster this daemon belongs to (`bpfnet daemon --cluster`).
use anyhow::Result;
use clap::Subcommand;

use super::{print_json, print_table, segment};
use crate::{api, client::Client};

#[derive(Subcommand)]
pub enum NodeCommand {
    /// List the cluster's nodes as etcd holds them: name, underlay address, state (up while the
    /// node's lease lives, down once it has expired), overlay endpoints, last renewal. `*` marks
    /// the node answering. When etcd is out of reach, the last list read is shown, marked stale.
    #[command(alias = "list")]
    Ls {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Forget nodes that are gone for good, with what they left in etcd. A node that is up is
    /// refused: stop its daemon, wait for its lease to expire (--cluster-lease-ttl), then remove it.
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

/// "3 s ago", "2 min ago", from a Unix time.
fn ago(unix: u64) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    match now.saturating_sub(unix) {
        s if s < 120 => format!("{s} s ago"),
        s if s < 7200 => format!("{} min ago", s / 60),
        s => format!("{} h ago", s / 3600),
    }
}

/// What `node ls` and `stats` say when etcd does not answer.
pub fn unreachable_line(c: &api::ClusterStatus) -> String {
    format!(
        "cluster unreachable for {} s (etcd {}): {}",
        c.since_s,
        c.etcd.join(","),
        c.error.as_deref().unwrap_or("no answer")
    )
}

pub async fn run(client: &Client<'_>, command: NodeCommand) -> Result<()> {
    match command {
        NodeCommand::Ls { json } => {
            let nodes: api::Nodes = client.get("/nodes").await?;
            if json {
                return print_json(&nodes);
            }
            if let Some(stale) = nodes.stale_s {
                println!("{}; the list below was read {stale} s ago", unreachable_line(&nodes.cluster));
            }
            let rows: Vec<Vec<String>> = nodes
                .nodes
                .iter()
                .map(|n| {
                    vec![
                        if n.this_node { format!("{} *", n.name) } else { n.name.clone() },
                        n.underlay.clone(),
                        n.state.clone(),
                        n.endpoints.to_string(),
                        ago(n.last_seen),
                    ]
                })
                .collect();
            print_table(&["NAME", "UNDERLAY", "STATE", "ENDPOINTS", "LAST SEEN"], &rows);
        }
        NodeCommand::Rm { names } => {
            for name in names {
                let _: serde_json::Value = client.delete(&format!("/nodes/{}", segment(&name))).await?;
                println!("{name}");
            }
        }
    }
    Ok(())
}
