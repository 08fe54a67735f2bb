//! Client-side schemas of the four Garage tables the connector writes.
//!
//! They carry the real entry types and table names, so storage nodes run
//! their real hooks (refcounting, K2V counters), while the client-side
//! `updated` hook stays the default no-op: this process stores nothing.
//! We never construct Garage's own schemas here, since `BlockRefTable`
//! needs a `BlockManager`, which would start serving blocks.

use garage_model::index_counter::CounterEntry;
use garage_model::k2v::item_table::{ItemFilter, K2VItem, K2VItemPartition};
use garage_model::s3::block_ref_table::BlockRef;
use garage_model::s3::object_table::{Object, ObjectFilter};
use garage_model::s3::version_table::Version;
use garage_table::{DeletedFilter, EmptyKey, Entry, TableSchema};
use garage_util::data::{Hash, Uuid};

/// `block_ref`: (block hash, version uuid) → deleted flag. Feeds refcounts.
pub(crate) struct BlockRefSchema;

impl TableSchema for BlockRefSchema {
    const TABLE_NAME: &'static str = "block_ref";
    type P = Hash;
    type S = Uuid;
    type E = BlockRef;
    type Filter = DeletedFilter;

    fn matches_filter(entry: &Self::E, filter: &Self::Filter) -> bool {
        filter.apply(entry.deleted.get())
    }
}

/// `object`: holds the anchors (inline objects in a bucket no key can see).
pub(crate) struct ObjectSchema;

impl TableSchema for ObjectSchema {
    const TABLE_NAME: &'static str = "object";
    type P = Uuid;
    type S = String;
    type E = Object;
    type Filter = ObjectFilter;

    fn matches_filter(entry: &Self::E, filter: &Self::Filter) -> bool {
        match filter {
            ObjectFilter::IsData => entry.versions().iter().any(|v| v.is_data()),
            ObjectFilter::IsUploading { .. } => false,
        }
    }
}

/// `version`: one live entry per anchor keeps its refs valid for
/// `garage repair block-refs`.
pub(crate) struct VersionSchema;

impl TableSchema for VersionSchema {
    const TABLE_NAME: &'static str = "version";
    type P = Uuid;
    type S = EmptyKey;
    type E = Version;
    type Filter = DeletedFilter;

    fn matches_filter(entry: &Self::E, filter: &Self::Filter) -> bool {
        filter.apply(entry.deleted.get())
    }
}

/// `k2v_item`: the CID index. Read through this table; written through the
/// K2V RPC so that storage nodes assign causality (see `k2v.rs`).
pub(crate) struct K2VItemSchema;

impl TableSchema for K2VItemSchema {
    const TABLE_NAME: &'static str = "k2v_item";
    type P = K2VItemPartition;
    type S = String;
    type E = K2VItem;
    type Filter = ItemFilter;

    fn matches_filter(entry: &Self::E, filter: &Self::Filter) -> bool {
        let not_a_conflict = filter.conflicts_only && entry.values().len() < 2;
        let tombstone_excluded = filter.exclude_only_tombstones && entry.is_tombstone();
        !(not_a_conflict || tombstone_excluded)
    }
}

/// `k2v_index_counter_v2`: per (bucket, partition key) counts that storage
/// nodes keep for K2V items; the index's block counts per namespace.
pub(crate) struct K2VCounterSchema;

impl TableSchema for K2VCounterSchema {
    const TABLE_NAME: &'static str = "k2v_index_counter_v2";
    type P = Uuid;
    type S = String;
    type E = CounterEntry<K2VItem>;
    type Filter = (DeletedFilter, Vec<Uuid>);

    fn matches_filter(entry: &Self::E, filter: &Self::Filter) -> bool {
        filter.0.apply(entry.is_tombstone())
    }
}
