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

use garage_model::k2v::causality::CausalContext;
use garage_model::k2v::item_table::{DvvsValue, K2VItemPartition};
use garage_net::message::Message;
use serde::{Deserialize, Serialize};

/// The RPC path Garage's K2V handler listens on.
pub const K2V_RPC_PATH: &str = "garage_model/k2v/Rpc";

/// Mirror of the variants of Garage's `K2VRpc` we send or receive. Unknown
/// variants (poll responses) are never asked for.
#[derive(Debug, Serialize, Deserialize)]
pub enum K2VRpc {
    /// Acknowledgement.
    Ok,
    /// Insert one item.
    InsertItem(InsertedItem),
    /// Insert several items held by the same nodes.
    InsertManyItems(Vec<InsertedItem>),
}

/// Mirror of Garage's `InsertedItem`.
#[derive(Debug, Serialize, Deserialize)]
pub struct InsertedItem {
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
