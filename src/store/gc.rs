//! Garbage collection by reachability, and namespace deletion.

use std::collections::HashSet;
use std::sync::Arc;

use cid::Cid;
use futures::TryStreamExt;
use serde::Serialize;

use super::{BlockStore, Error, GarageStore, Namespace};
use crate::cid as cidutil;
use crate::ipld;

/// What a GC run found and did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GcSummary {
    /// Blocks reachable from the roots (identity blocks excluded).
    pub reachable: u64,
    /// Blocks in the namespace before the run.
    pub stored: u64,
    /// Blocks removed (or, with `dry_run`, that would be), as raw CIDs.
    pub removed: Vec<String>,
    /// Links from the roots to blocks the namespace does not hold.
    pub missing: Vec<String>,
    /// Whether nothing was removed on purpose.
    pub dry_run: bool,
    /// Packs removed because none of their blocks was left.
    pub packs_removed: u64,
}

impl Namespace {
    /// Removes every block not reachable from `roots` (walking dag-pb,
    /// dag-cbor and dag-json links). Every root must be stored: a typo in the
    /// roots file must not empty the namespace.
    pub async fn gc(&self, roots: &[Cid], dry_run: bool) -> Result<GcSummary, Error> {
        let mut summary = GcSummary {
            dry_run,
            ..Default::default()
        };
        for root in roots {
            // Not refused on the map's word alone: a root packed by
            // another connector a moment ago is found once every manifest
            // partition is listed again.
            if !self.has(root).await? {
                self.relist_packs().await?;
                if !self.has(root).await? {
                    return Err(Error::GcRootMissing(*root));
                }
            }
        }
        // Listed first: only blocks stored before the walk are candidates,
        // so a DAG put during the run is never collected from under it.
        let all: Vec<_> = self.list().try_collect().await?;
        let mut reachable: HashSet<Vec<u8>> = HashSet::new();
        let mut stack: Vec<Cid> = roots.to_vec();
        let mut missing: Vec<Cid> = Vec::new();
        loop {
            while let Some(cid) = stack.pop() {
                if !reachable.insert(cid.hash().to_bytes()) {
                    continue;
                }
                match self.get(&cid).await? {
                    Some(data) => match ipld::links(&cid, &data) {
                        Ok(links) => stack.extend(links),
                        Err(e) => {
                            tracing::warn!(cid = %cid, cause = %e, "cannot decode links; keeping the block, not its children")
                        }
                    },
                    None => missing.push(cid),
                }
            }
            if missing.is_empty() {
                break;
            }
            // An absence costs the block's descendants, so it is not taken
            // from the map alone: another connector may have packed the
            // block a moment ago. Every manifest partition is listed
            // again, and the blocks found since are walked.
            self.relist_packs().await?;
            let before = missing.len();
            for cid in std::mem::take(&mut missing) {
                if self.get(&cid).await?.is_some() {
                    reachable.remove(&cid.hash().to_bytes());
                    stack.push(cid);
                } else {
                    missing.push(cid);
                }
            }
            if missing.len() == before {
                break;
            }
        }
        summary.missing = missing.iter().map(Cid::to_string).collect();
        summary.stored = all.len() as u64;
        summary.reachable = all
            .iter()
            .filter(|mh| reachable.contains(&mh.to_bytes()))
            .count() as u64;
        for mh in all {
            if reachable.contains(&mh.to_bytes()) {
                continue;
            }
            let cid = cidutil::raw_cid(mh);
            if !dry_run {
                self.delete(&cid).await?;
            }
            summary.removed.push(cid.to_string());
        }
        if !dry_run {
            summary.packs_removed = self.reclaim_packs(|_| ()).await?;
        }
        Ok(summary)
    }
}

impl GarageStore {
    /// Deletes a namespace: its refs and index entries, its packs (and any
    /// pack row no manifest names), then its registry record. Blocks other namespaces also hold stay. Returns how many
    /// blocks it removed.
    pub async fn delete_namespace(
        self: &Arc<Self>,
        name: &str,
        mut progress: impl FnMut(u64),
    ) -> Result<u64, Error> {
        let ns = self.open_namespace(name).await?;
        let mut removed = 0;
        let all: Vec<_> = ns.list().try_collect().await?;
        for mh in all {
            if ns.delete(&cidutil::raw_cid(mh)).await? {
                removed += 1;
                progress(removed);
            }
        }
        ns.reclaim_packs(|_| ()).await?;
        ns.purge_pack_partitions().await?;
        self.unregister(name).await?;
        Ok(removed)
    }
}
