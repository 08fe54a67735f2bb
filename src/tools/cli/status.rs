//! `garage-ipfs status`: the cluster as the connector sees it.

use crate::tools::util::outln;
use futures::TryStreamExt;
use serde::Serialize;

use crate::tools::util::{print_json, print_table, JsonArg, Target};

#[derive(Serialize)]
struct NodeView {
    id: String,
    zone: Option<String>,
    capacity: Option<u64>,
    up: bool,
    last_seen_secs_ago: Option<u64>,
    address: Option<String>,
}

#[derive(Serialize)]
struct NamespaceView {
    name: String,
    blocks: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes: Option<u64>,
}

#[derive(Serialize)]
struct StatusView {
    health: String,
    layout_version: u64,
    replication_factor: usize,
    write_quorum: usize,
    consistency_mode: String,
    storage_nodes: usize,
    storage_nodes_up: usize,
    partitions_with_quorum: String,
    nodes: Vec<NodeView>,
    connector: ConnectorView,
    namespaces: Vec<NamespaceView>,
}

#[derive(Serialize)]
struct ConnectorView {
    node_id: String,
    role: &'static str,
    state_dir: String,
    version: &'static str,
}

pub(super) async fn run(target: &Target, with_bytes: bool, json: JsonArg) -> anyhow::Result<()> {
    let store = target.store().await?;
    let conn = store.connector();
    let health = conn.system.health();
    let (nodes, version, rf) = {
        let layout = conn.system.cluster_layout();
        let current = layout.current()?;
        let known = conn.system.get_known_nodes();
        let nodes = current
            .all_nodes()
            .iter()
            .map(|id| {
                let k = known.iter().find(|k| k.id == *id);
                NodeView {
                    id: hex::encode(&id.as_slice()[..8]),
                    zone: current.get_node_zone(id).map(str::to_string),
                    capacity: current.get_node_capacity(id),
                    up: k.is_some_and(|k| k.is_up),
                    last_seen_secs_ago: k.and_then(|k| k.last_seen_secs_ago),
                    address: k.and_then(|k| k.addr).map(|a| a.to_string()),
                }
            })
            .collect::<Vec<_>>();
        (nodes, current.version, current.replication_factor)
    };
    let mut namespaces = Vec::new();
    for ns in store.list_namespaces().await? {
        let blocks = store.count_blocks(&ns.name).await?;
        let bytes = if with_bytes {
            let entries = store.namespace(&ns.name)?.list_entries();
            Some(
                entries
                    .try_fold(0u64, |n, (_, e)| async move { Ok(n + e.size as u64) })
                    .await?,
            )
        } else {
            None
        };
        namespaces.push(NamespaceView {
            name: ns.name,
            blocks,
            bytes,
        });
    }
    let view = StatusView {
        health: format!("{:?}", health.status).to_lowercase(),
        layout_version: version,
        replication_factor: rf,
        write_quorum: conn.write_quorum()?,
        consistency_mode: conn.config().consistency_mode.clone(),
        storage_nodes: health.storage_nodes,
        storage_nodes_up: health.storage_nodes_ok,
        partitions_with_quorum: format!("{}/{}", health.partitions_quorum, health.partitions),
        nodes,
        connector: ConnectorView {
            node_id: hex::encode(&conn.system.id.as_slice()[..8]),
            role: "admin client",
            state_dir: conn.config().state_dir.display().to_string(),
            version: env!("CARGO_PKG_VERSION"),
        },
        namespaces,
    };
    if json.json {
        return print_json(&view);
    }
    outln!(
        "Cluster: {}  layout v{}  replication factor {}  write quorum {}  ({})",
        view.health.to_uppercase(),
        view.layout_version,
        view.replication_factor,
        view.write_quorum,
        view.consistency_mode
    );
    outln!(
        "Storage nodes up: {}/{}   partitions with quorum: {}\n",
        view.storage_nodes_up,
        view.storage_nodes,
        view.partitions_with_quorum
    );
    let mut rows = vec![
        ["NODE", "ZONE", "CAPACITY", "STATE", "LAST SEEN", "ADDRESS"]
            .map(String::from)
            .to_vec(),
    ];
    for n in &view.nodes {
        rows.push(vec![
            n.id.clone(),
            n.zone.clone().unwrap_or_else(|| "-".into()),
            n.capacity
                .map(crate::tools::util::human_bytes)
                .unwrap_or_else(|| "-".into()),
            if n.up { "up" } else { "DOWN" }.into(),
            n.last_seen_secs_ago
                .map(|s| format!("{s}s ago"))
                .unwrap_or_else(|| if n.up { "now".into() } else { "never".into() }),
            n.address.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    print_table(&rows);
    outln!(
        "\nConnector: node {} ({}), garage-ipfs {}, state dir {}\n",
        view.connector.node_id,
        view.connector.role,
        view.connector.version,
        view.connector.state_dir
    );
    let mut rows = vec![["NAMESPACE", "BLOCKS", "BYTES"].map(String::from).to_vec()];
    rows.extend(view.namespaces.iter().map(|n| {
        let bytes = n
            .bytes
            .map(crate::tools::util::human_bytes)
            .unwrap_or_else(|| "(--bytes)".into());
        vec![n.name.clone(), n.blocks.to_string(), bytes]
    }));
    if view.namespaces.is_empty() {
        outln!("No namespaces yet (garage-ipfs namespace create NAME).");
    } else {
        print_table(&rows);
    }
    Ok(())
}
