//! The namespace registry: which namespaces exist, as K2V items in a
//! bucket of their own. A namespace is registered by `namespace create` or
//! by its first put, so every namespace holding blocks is listed.

use std::sync::Arc;

use garage_model::k2v::item_table::{DvvsValue, K2VItemPartition};
use garage_util::data::{blake2sum, Uuid};
use garage_util::time::now_msec;
use serde::{Deserialize, Serialize};

use super::{check_namespace, index, Error, GarageStore, Namespace};

const PARTITION: &str = "namespaces";
const LIST_PAGE: usize = 1000;

fn registry() -> K2VItemPartition {
    K2VItemPartition {
        bucket_id: blake2sum(b"garage-ipfs/registry/v1"),
        partition_key: PARTITION.into(),
    }
}

/// What the registry keeps of a namespace.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NamespaceRecord {
    /// Its name.
    pub name: String,
    /// When it was registered (ms since the epoch).
    pub created_ms: u64,
    /// The highest index format written to it: 2 for per-block and inline
    /// entries, 3 once a pack was stored as a Garage block, 4 once one was
    /// stored as a row, 5 once compacted (retired manifests, pending
    /// sources). A version that does not know a format
    /// refuses the namespace rather than answer "absent" for blocks it
    /// cannot see.
    #[serde(default = "format_before_packs")]
    pub format: u8,
}

fn format_before_packs() -> u8 {
    2
}

/// The highest index format this version reads.
pub(super) const KNOWN_FORMAT: u8 = super::pack::FORMAT_COMPACTED;

impl NamespaceRecord {
    fn check_format(&self) -> Result<(), Error> {
        if self.format > KNOWN_FORMAT {
            return Err(Error::NewerFormat {
                name: self.name.clone(),
                format: self.format,
                known: KNOWN_FORMAT,
            });
        }
        Ok(())
    }
}

impl NamespaceRecord {
    /// The namespace's index bucket id.
    pub fn id(&self) -> Uuid {
        index::namespace_id(&self.name)
    }
}

/// The record among an item's values; of concurrent ones, the one with
/// the highest format (a version must see the newest format written).
fn decode(name: &str, values: Vec<&DvvsValue>) -> Option<NamespaceRecord> {
    values
        .into_iter()
        .filter_map(|v| match v {
            DvvsValue::Value(b) => serde_json::from_slice::<NamespaceRecord>(b)
                .ok()
                .filter(|r| r.name == name),
            DvvsValue::Deleted => None,
        })
        .max_by_key(|r| r.format)
}

impl GarageStore {
    /// The registry record of a namespace, if it exists.
    pub async fn namespace_record(&self, name: &str) -> Result<Option<NamespaceRecord>, Error> {
        check_namespace(name)?;
        let item = self.connector().rpc_k2v_get(&registry(), name).await?.value;
        Ok(item.and_then(|i| decode(name, i.values())))
    }

    /// Registers a namespace (idempotent) and returns it.
    pub async fn create_namespace(self: &Arc<Self>, name: &str) -> Result<Namespace, Error> {
        let ns = self.namespace(name)?;
        self.register(name).await?;
        Ok(ns)
    }

    /// A namespace that must exist: [`Error::UnknownNamespace`] otherwise.
    pub async fn open_namespace(self: &Arc<Self>, name: &str) -> Result<Namespace, Error> {
        match self.namespace_record(name).await? {
            Some(r) => {
                r.check_format()?;
                self.namespace(name)
            }
            None => Err(Error::UnknownNamespace(name.to_string())),
        }
    }

    pub(super) async fn register(&self, name: &str) -> Result<(), Error> {
        if self.registered.lock().unwrap().contains(name) {
            return Ok(());
        }
        // The format this store writes: that of its packs' manifests.
        let writes = self
            .packing
            .map_or_else(format_before_packs, |storage| storage.format());
        // Read, then insert only if absent: safe to retry after a dropped
        // connection (the first requests after a node restarts).
        super::garage::retry_transient(|| self.register_once(name, writes)).await
    }

    /// Records that `format` is about to be written to a namespace (which
    /// must exist), so that versions that do not know it refuse it.
    pub(super) async fn register_format(&self, name: &str, format: u8) -> Result<(), Error> {
        super::garage::retry_transient(|| self.register_once(name, format)).await
    }

    async fn register_once(&self, name: &str, writes: u8) -> Result<(), Error> {
        let read = self.connector().rpc_k2v_get(&registry(), name).await?;
        let existing = read.value.as_ref().and_then(|i| decode(name, i.values()));
        if let Some(r) = &existing {
            r.check_format()?;
        }
        // A record seen but perhaps on one node only (a registration that
        // missed its quorum) is written again before the name is trusted;
        // so is one that does not yet say our format.
        if existing.as_ref().is_none_or(|r| r.format < writes) || !read.settled {
            let mut record = existing.unwrap_or_else(|| NamespaceRecord {
                name: name.to_string(),
                created_ms: now_msec(),
                format: writes,
            });
            record.format = record.format.max(writes);
            let value = DvvsValue::Value(serde_json::to_vec(&record).expect("serializable"));
            let context = read.value.map(|i| i.causal_context());
            self.connector()
                .rpc_k2v_insert(registry(), name.to_string(), context, value)
                .await?;
        }
        self.registered.lock().unwrap().insert(name.to_string());
        Ok(())
    }

    /// Removes a namespace from the registry (its blocks must be gone).
    pub(super) async fn unregister(&self, name: &str) -> Result<(), Error> {
        self.registered.lock().unwrap().remove(name);
        let item = self.connector().rpc_k2v_get(&registry(), name).await?.value;
        if let Some(item) = item {
            self.connector()
                .rpc_k2v_insert(
                    registry(),
                    name.to_string(),
                    Some(item.causal_context()),
                    DvvsValue::Deleted,
                )
                .await?;
        }
        Ok(())
    }

    /// Every registered namespace, by name.
    pub async fn list_namespaces(&self) -> Result<Vec<NamespaceRecord>, Error> {
        let mut out = Vec::new();
        let mut start: Option<String> = None;
        loop {
            let page = self
                .connector()
                .rpc_k2v_range(&registry(), start.clone(), LIST_PAGE)
                .await?;
            let full = page.len() == LIST_PAGE;
            for item in page {
                if start.as_deref() == Some(item.sort_key.as_str()) {
                    continue;
                }
                if let Some(r) = decode(&item.sort_key, item.values()) {
                    out.push(r);
                }
                start = Some(item.sort_key);
            }
            if !full {
                return Ok(out);
            }
        }
    }

    /// Blocks in a namespace: index entries from the counters storage
    /// nodes keep (no listing; may lag a write by a moment), plus the live
    /// slots of its packs (a listing of the manifests, which hold no block
    /// bytes).
    pub async fn count_blocks(self: &Arc<Self>, name: &str) -> Result<u64, Error> {
        let counts = self
            .connector()
            .rpc_k2v_entry_counts(index::namespace_id(name))
            .await?;
        let ns = self.namespace_unfiltered(name)?;
        let mut blocks = 0;
        for (key, n) in counts {
            if super::gone::parse_partition(&key).is_some() {
                continue; // delete markers
            }
            if let Some(p) = super::pack::parse_partition(&key) {
                if n > 0 {
                    blocks += ns.count_packed(p).await?;
                }
            } else {
                blocks += n;
            }
        }
        Ok(blocks)
    }
}
