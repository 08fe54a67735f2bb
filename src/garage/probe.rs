//! A short-lived, CLI-style connection that asks a storage node for the
//! cluster layout, without joining.
//!
//! The connector must learn the cluster's replication factor *before* its
//! `System` peer says hello: a peer advertising a higher factor than the
//! cluster's makes every storage node exit, a lower one makes the peer exit.
//! Like the `garage` CLI, the probe uses a throwaway key and never sends the
//! netapp Hello, so storage nodes never add it to their peer lists. It also
//! serves the periodic layout pulls: a roleless peer that was away for a few
//! minutes is marked Abandoned by the nodes and gets no more layout pushes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use garage_net::{NetApp, NetworkKey, NodeID};
use garage_rpc::layout::LayoutHistory;
use garage_rpc::system::GARAGE_VERSION_TAG;
use garage_rpc::system::{SystemRpc, SYSTEM_RPC_PATH};
use garage_rpc::{Endpoint, PRIO_HIGH};

use super::error::Error;

/// A bootstrap peer: node id and the addresses its name resolved to.
#[derive(Clone, Debug)]
pub(crate) struct Peer {
    /// The node's public key.
    pub id: NodeID,
    /// Where to reach it.
    pub addrs: Vec<SocketAddr>,
    /// The peer as configured, for messages.
    pub text: String,
}

/// Parses `<node id>@<host>:<port>` entries.
pub(crate) fn parse_peers(peers: &[String]) -> Result<Vec<Peer>, Error> {
    peers
        .iter()
        .map(|p| {
            let (id, addrs) = garage_net::util::parse_and_resolve_peer_addr(p)
                .ok_or_else(|| Error::BadPeer(p.clone()))?;
            Ok(Peer {
                id,
                addrs,
                text: p.clone(),
            })
        })
        .collect()
}

/// The layout side-channel.
pub(crate) struct Probe {
    netapp: Arc<NetApp>,
    endpoint: Arc<Endpoint<SystemRpc, ()>>,
    peers: Vec<Peer>,
}

impl Probe {
    /// A probe with a fresh throwaway key.
    pub(crate) fn new(network_key: NetworkKey, peers: Vec<Peer>) -> Self {
        let (_pk, sk) = sodiumoxide::crypto::sign::ed25519::gen_keypair();
        let netapp = NetApp::new(GARAGE_VERSION_TAG, network_key, sk, None);
        let endpoint = netapp.endpoint::<SystemRpc, ()>(SYSTEM_RPC_PATH.into());
        Self {
            netapp,
            endpoint,
            peers,
        }
    }

    /// Asks the peers in turn for the layout; the first answer wins.
    pub(crate) async fn rpc_pull_layout(&self, limit: Duration) -> Result<LayoutHistory, Error> {
        let mut errors = Vec::new();
        for peer in &self.peers {
            for addr in &peer.addrs {
                match self.pull_from(peer.id, *addr, limit).await {
                    Ok(layout) => return Ok(layout),
                    Err(e) => {
                        tracing::debug!(peer = %peer.text, cause = %e, "layout pull failed");
                        errors.push(format!("{addr}: {e}"));
                    }
                }
            }
        }
        Err(Error::Unreachable(errors.join("; ")))
    }

    async fn pull_from(
        &self,
        id: NodeID,
        addr: SocketAddr,
        limit: Duration,
    ) -> Result<LayoutHistory, String> {
        match tokio::time::timeout(limit, self.netapp.clone().try_connect(addr, id)).await {
            Ok(Ok(())) => (),
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err(format!("no handshake within {limit:?}")),
        }
        let answer = tokio::time::timeout(
            limit,
            self.endpoint
                .call(&id, SystemRpc::PullClusterLayout, PRIO_HIGH),
        )
        .await;
        match answer {
            Ok(Ok(Ok(SystemRpc::AdvertiseClusterLayout(layout)))) => Ok(layout),
            Ok(Ok(Ok(other))) => Err(format!("unexpected answer {other:?}")),
            Ok(Ok(Err(e))) => Err(e.to_string()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {limit:?}")),
        }
    }
}

impl Probe {
    /// `<id>@<addr>` of every storage node of the layout that a node knows
    /// an address for, plus the bootstrap peers.
    pub(crate) async fn rpc_storage_peers(
        &self,
        layout: &LayoutHistory,
        limit: Duration,
    ) -> Result<Vec<String>, Error> {
        let mut out: Vec<String> = self.peers.iter().map(|p| p.text.clone()).collect();
        let storage = layout.current().all_nodes().to_vec();
        for peer in &self.peers {
            let answer = tokio::time::timeout(
                limit,
                self.endpoint
                    .call(&peer.id, SystemRpc::GetKnownNodes, PRIO_HIGH),
            )
            .await;
            if let Ok(Ok(Ok(SystemRpc::ReturnKnownNodes(nodes)))) = answer {
                for n in nodes {
                    if let (true, Some(addr)) = (storage.contains(&n.id), n.addr) {
                        let text = format!("{}@{addr}", hex::encode(n.id.as_slice()));
                        if !out.iter().any(|o| o.starts_with(&text[..64])) {
                            out.push(text);
                        }
                    }
                }
                break;
            }
        }
        Ok(out)
    }
}

/// Checks the pulled layout against the configured replication factor.
pub(crate) fn check_layout(layout: &LayoutHistory, configured: usize) -> Result<(), Error> {
    let current = layout.current();
    if current.version == 0 {
        return Err(Error::NoLayout);
    }
    if current.replication_factor != configured {
        return Err(Error::ReplicationFactor {
            configured,
            cluster: current.replication_factor,
        });
    }
    Ok(())
}
