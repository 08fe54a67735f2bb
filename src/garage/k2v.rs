//! A wire mirror of Garage's private K2V RPC (`garage_model/k2v/Rpc`).
//!
//! Index writes go to one of the item's storage nodes, which assigns the
//! causality timestamp and then does its own quorum write to the item
//! table before answering, exactly as Garage's K2V HTTP API does. Writing
//! the table directly would instead make every connector a DVVS writer,
//! growing each item's vector clock.
//!
//! Garage's enum is private, but messages are rmp-serde maps with named
//! fields and variants, so a mirror with the same names and field types is
//! the same wire format. This depends on Garage 2.5.0's exact definitions
//! (the crate pin is `=2.5.0`); the integration tests exercise it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use garage_model::index_counter::CounterEntry;
use garage_model::k2v::causality::CausalContext;
use garage_model::k2v::item_table::{DvvsValue, ItemFilter, K2VItem, K2VItemPartition, ENTRIES};
use garage_model::k2v::sub::PollRange;
use garage_net::message::{Message, PRIO_NORMAL};
use garage_rpc::system::System;
use garage_rpc::{Endpoint, RequestStrategy};
use garage_table::replication::{TableReplication, TableShardedReplication};
use garage_table::{DeletedFilter, EnumerationOrder, PartitionKey, Table};
use garage_util::data::Uuid;
use serde::{Deserialize, Serialize};

use super::batch::Batcher;
use super::error::{deadline, Error};
use super::tables::K2VItemSchema;
use super::{Call, CallCounters, Connector, BATCH_LIMITS};

/// What a quorum read returned, and whether it is known to be on a write
/// quorum of nodes ([`Connector::rpc_k2v_get`]).
#[derive(Debug)]
pub(crate) struct QuorumRead<T> {
    /// The merged answer.
    pub value: T,
    /// False when the read could not write back a disagreement: a value
    /// in it may be on a single node. An absent answer is always settled.
    pub settled: bool,
}

/// An item with no value to acknowledge (missing, or tombstones only).
fn value_is_absent(item: &Option<K2VItem>) -> bool {
    item.as_ref()
        .is_none_or(|i| i.values().iter().all(|v| matches!(v, DvvsValue::Deleted)))
}

/// The RPC path Garage's K2V handler listens on.
pub(crate) const K2V_RPC_PATH: &str = "garage_model/k2v/Rpc";

/// Mirror of the variants of Garage's `K2VRpc` we send or receive. Unknown
/// variants (`PollItem` and its response) are never asked for.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum K2VRpc {
    /// Acknowledgement.
    Ok,
    /// Insert one item.
    InsertItem(InsertedItem),
    /// Insert several items held by the same nodes.
    InsertManyItems(Vec<InsertedItem>),
    /// The items of a range as the receiving node holds them. With no
    /// `seen_str` the node answers at once from its own store, without
    /// subscribing to anything (`handle_poll_range`): a one-node read.
    PollRange {
        range: PollRange,
        seen_str: Option<String>,
        timeout_msec: u64,
    },
    /// The answering node and its items.
    PollRangeResponse(Uuid, Vec<K2VItem>),
}

/// Mirror of Garage's `InsertedItem`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct InsertedItem {
    /// Bucket and partition key.
    pub partition: K2VItemPartition,
    /// Sort key.
    pub sort_key: String,
    /// What the writer saw; `None` for a blind write.
    pub causal_context: Option<CausalContext>,
    /// The new value, or `Deleted`.
    pub value: DvvsValue,
}

impl Message for K2VRpc {
    type Response = Result<K2VRpc, garage_util::error::Error>;
}

/// The group-commit queue of index writes: each batch is split by the
/// set of nodes storing the items (with three nodes and three copies, one
/// set), and each part goes to one of those nodes as `InsertManyItems`.
/// Quorum 1 is right here: the receiving node assigns causality, then
/// makes its own quorum write of the whole part to the item table before
/// it answers.
pub(crate) fn index_batcher(
    system: Arc<System>,
    table: Arc<Table<K2VItemSchema, TableShardedReplication>>,
    endpoint: Arc<Endpoint<K2VRpc, ()>>,
    calls: Arc<CallCounters>,
    limit: Duration,
) -> Batcher<InsertedItem> {
    Batcher::spawn(BATCH_LIMITS, move |items: Vec<InsertedItem>| {
        let mut parts: HashMap<Vec<Uuid>, Vec<InsertedItem>> = HashMap::new();
        let mut failed = None;
        for item in items {
            match table.data.replication.storage_nodes(&item.partition.hash()) {
                Ok(mut who) => {
                    who.sort();
                    parts.entry(who).or_default().push(item);
                }
                Err(e) => failed = Some(Error::from(e)),
            }
        }
        let sends: Vec<_> = parts
            .into_iter()
            .map(|(who, part)| {
                calls.add(Call::K2vWrite);
                let (system, endpoint) = (system.clone(), endpoint.clone());
                let strategy = RequestStrategy::with_priority(PRIO_NORMAL)
                    .with_quorum(1)
                    .with_custom_timeout(limit);
                async move {
                    deadline(
                        limit,
                        "writing index entries",
                        system.rpc_helper().try_call_many(
                            &endpoint,
                            &who,
                            K2VRpc::InsertManyItems(part),
                            strategy,
                        ),
                    )
                    .await
                }
            })
            .collect();
        async move {
            if let Some(e) = failed {
                return Err(e);
            }
            futures::future::try_join_all(sends).await?;
            Ok(())
        }
    })
}

impl Connector {
    /// Inserts a K2V item (or a tombstone), sharing the request with
    /// concurrent inserts. Returns once it is on a write quorum.
    pub(crate) async fn rpc_k2v_insert(
        &self,
        partition: K2VItemPartition,
        sort_key: String,
        causal_context: Option<CausalContext>,
        value: DvvsValue,
    ) -> Result<(), Error> {
        let bytes = match &value {
            DvvsValue::Value(v) => v.len() + 100,
            DvvsValue::Deleted => 100,
        };
        let item = InsertedItem {
            partition,
            sort_key,
            causal_context,
            value,
        };
        self.k2v_batch.submit(item, bytes).await
    }

    /// Reads one K2V item from a read quorum, monotonically.
    ///
    /// Garage reads an item from two of its three nodes. A write that
    /// missed its quorum (two nodes down) can leave its value on one node
    /// only, and until anti-entropy spreads it, a reader whose pair
    /// includes that node sees the value and a reader whose pair does not,
    /// not: two connectors would disagree, for minutes, about a block.
    /// So when the nodes read disagree, the merged item is written back to
    /// all of the item's nodes before it is returned (Garage's read
    /// repair), and no later read from any pair sees less.
    ///
    /// The write-back needs every node; with one down it fails (having
    /// reached the others). The item is then read again without it, and
    /// the answer says it is not `settled`: such an item may be on fewer
    /// nodes than a write quorum, and a put must not acknowledge it as is.
    pub(crate) async fn rpc_k2v_get(
        &self,
        partition: &K2VItemPartition,
        sort_key: &str,
    ) -> Result<QuorumRead<Option<K2VItem>>, Error> {
        let sort_key = sort_key.to_string();
        let (value, repaired) = self
            .read_repairing(
                "reading a K2V item",
                self.k2v_item.get_monotonic(partition, &sort_key),
                || self.k2v_item.get(partition, &sort_key),
            )
            .await?;
        let settled = repaired || value_is_absent(&value);
        Ok(QuorumRead { value, settled })
    }

    /// Reads one K2V item that never changes once written (a pack's row)
    /// from one node, falling through to the next while a node does not
    /// hold a copy from which `pick` takes something (or fails): any good
    /// copy is as good as another, so no quorum is needed, and Garage's
    /// anti-entropy fills a node that missed the write. Returns the item
    /// and what `pick` took (so that a check it made is not made twice);
    /// if no node holds a good copy, the last copy found with `None` (for
    /// the caller to say what is wrong with it), or `None`.
    ///
    /// Garage's table read always asks a read quorum (two nodes); K2V's
    /// `PollRange` without a seen marker is its one-node read: the node
    /// returns the range from its own store at once.
    pub(crate) async fn rpc_k2v_get_unchanging<T>(
        &self,
        partition: &K2VItemPartition,
        sort_key: &str,
        pick: impl Fn(&K2VItem) -> Option<T>,
    ) -> Result<Option<(K2VItem, Option<T>)>, Error> {
        let helper = self.system.rpc_helper();
        let nodes = helper.block_read_nodes_of(&partition.hash(), helper)?;
        let limit = self.config.timeouts.rpc();
        let (mut failed, mut invalid) = (None, None);
        for node in nodes {
            self.calls.add(Call::TableRead);
            let msg = K2VRpc::PollRange {
                range: PollRange {
                    partition: partition.clone(),
                    prefix: Some(sort_key.to_string()),
                    start: Some(sort_key.to_string()),
                    end: None,
                },
                seen_str: None,
                timeout_msec: limit.as_millis() as u64,
            };
            let strategy = RequestStrategy::with_priority(PRIO_NORMAL).with_custom_timeout(limit);
            let answer = deadline(
                limit,
                "reading a K2V item from one node",
                helper.call(&self.k2v_ep, node, msg, strategy),
            )
            .await;
            match answer {
                Ok(K2VRpc::PollRangeResponse(_, items)) => {
                    if let Some(item) = items.into_iter().find(|i| i.sort_key == sort_key) {
                        if let Some(picked) = pick(&item) {
                            return Ok(Some((item, Some(picked))));
                        }
                        invalid = Some(item);
                    }
                }
                Ok(other) => {
                    failed = Some(Error::Internal(format!(
                        "unexpected answer to a one-node K2V read: {other:?}"
                    )))
                }
                Err(e) => {
                    tracing::debug!(cause = %e, "one-node K2V read failed; trying the next node");
                    failed = Some(e);
                }
            }
        }
        match (invalid, failed) {
            (Some(item), _) => Ok(Some((item, None))),
            // Every node answered, none with a copy.
            (None, None) => Ok(None),
            (None, Some(e)) => Err(e),
        }
    }

    /// A monotonic table read (Garage's read repair) under the RPC
    /// deadline, or, if it fails, the plain read. Returns the answer and
    /// whether the monotonic read gave it.
    async fn read_repairing<T, E, P>(
        &self,
        what: &'static str,
        monotonic: impl std::future::Future<Output = Result<T, E>>,
        plain: impl FnOnce() -> P,
    ) -> Result<(T, bool), Error>
    where
        E: Into<Error>,
        P: std::future::Future<Output = Result<T, E>>,
    {
        let limit = self.config.timeouts.rpc();
        self.calls.add(Call::TableRead);
        match deadline(limit, what, monotonic).await {
            Ok(value) => Ok((value, true)),
            Err(e) => {
                tracing::debug!(cause = %e, what, "monotonic read failed; reading without repair");
                self.calls.add(Call::TableRead);
                Ok((deadline(limit, what, plain()).await?, false))
            }
        }
    }

    /// Reads up to `limit` K2V items of a partition, from `start`
    /// (inclusive), in order, tombstones included: callers skip items
    /// whose values are all deleted.
    ///
    /// Tombstones are asked for on purpose. Storage nodes apply a range
    /// read's filter before the reader merges their answers, so if one node
    /// of the read quorum holds an item's tombstone and the other still holds
    /// the value the tombstone replaced (it missed the delete, and
    /// anti-entropy has not reached it yet), a read that excludes tombstones
    /// gets the stale value alone and shows a deleted item as live. With the
    /// tombstone in the answer, the merge lets the delete win.
    pub(crate) async fn rpc_k2v_range(
        &self,
        partition: &K2VItemPartition,
        start: Option<String>,
        limit: usize,
    ) -> Result<Vec<K2VItem>, Error> {
        let filter = ItemFilter {
            exclude_only_tombstones: false,
            conflicts_only: false,
        };
        let (items, _) = self
            .read_repairing(
                "listing K2V items",
                self.k2v_item.get_range_monotonic(
                    partition,
                    start.clone(),
                    Some(filter),
                    limit,
                    EnumerationOrder::Forward,
                ),
                || {
                    self.k2v_item.get_range(
                        partition,
                        start,
                        Some(filter),
                        limit,
                        EnumerationOrder::Forward,
                    )
                },
            )
            .await?;
        Ok(items)
    }

    /// The counters storage nodes keep for a bucket's K2V items, one
    /// entry per partition key.
    pub(crate) async fn rpc_k2v_counters(
        &self,
        bucket: Uuid,
    ) -> Result<Vec<CounterEntry<K2VItem>>, Error> {
        let nodes = self
            .system
            .cluster_layout()
            .all_nongateway_nodes()?
            .to_vec();
        let filter = (DeletedFilter::Any, nodes);
        self.calls.add(Call::TableRead);
        deadline(
            self.config.timeouts.rpc(),
            "reading K2V counters",
            self.k2v_counter.get_range(
                &bucket,
                None,
                Some(filter),
                100_000,
                EnumerationOrder::Forward,
            ),
        )
        .await
    }

    /// Live K2V items of a bucket per partition key, from the counters
    /// (no listing).
    pub(crate) async fn rpc_k2v_entry_counts(
        &self,
        bucket: Uuid,
    ) -> Result<Vec<(String, u64)>, Error> {
        let entries = self.rpc_k2v_counters(bucket).await?;
        let layout = self.system.cluster_layout();
        Ok(entries
            .iter()
            .map(|e| {
                let n = e
                    .filtered_values(&layout)
                    .get(ENTRIES)
                    .copied()
                    .unwrap_or(0)
                    .max(0) as u64;
                (e.sk.clone(), n)
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use garage_util::data::blake2sum;

    /// The wire form must name the variant and every field, as Garage's
    /// `rmp_to_vec_all_named` encoding does.
    #[test]
    fn encodes_with_names() {
        let msg = K2VRpc::InsertItem(InsertedItem {
            partition: K2VItemPartition {
                bucket_id: blake2sum(b"b"),
                partition_key: "00".into(),
            },
            sort_key: "CIQ".into(),
            causal_context: None,
            value: DvvsValue::Deleted,
        });
        let bytes = garage_net::util::rmp_to_vec_all_named(&msg).unwrap();
        for name in [
            "InsertItem",
            "partition",
            "sort_key",
            "causal_context",
            "value",
            "Deleted",
        ] {
            assert!(
                bytes.windows(name.len()).any(|w| w == name.as_bytes()),
                "{name} missing from the encoding"
            );
        }
    }
}
