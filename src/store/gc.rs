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
        let mut unseen = Vec::new();
        for root in roots {
            if !self.has(root).await? {
                unseen.push(*root);
            }
        }
        // Not refused on the map's word alone: a root packed by another
        // connector a moment ago is found once every manifest partition is
        // listed again.
        if !unseen.is_empty() {
            self.relist_packs().await?;
            for root in unseen {
                if !self.has(&root).await? {
                    return Err(Error::GcRootMissing(root));
                }
            }
        }
        // Listed first: only blocks stored before the walk are candidates,
        // so a DAG put during the run is never collected from under it.
        let all: Vec<_> = self.list().try_collect().await?;
        let mut reachable: HashSet<Vec<u8>> = HashSet::new();
        let mut stack: Vec<Cid> = roots.to_vec();
        let mut missing: Vec<Cid> = Vec::new();
        // The blocks last walked again after a relisting.
        let mut retried: Option<Vec<Cid>> = None;
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
            // An absence costs the block's descendants, so it is not taken
            // from the map alone: another connector may have packed the
            // block a moment ago. Every manifest partition is listed again
            // and the missing blocks are walked once more, until a round
            // finds none of them.
            missing.sort_by_key(|c| c.hash().to_bytes());
            if missing.is_empty() || retried.as_ref() == Some(&missing) {
                break;
            }
            self.relist_packs().await?;
            for cid in &missing {
                reachable.remove(&cid.hash().to_bytes());
            }
            stack.extend(missing.iter().copied());
            retried = Some(std::mem::take(&mut missing));
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
                // Whether it was still there does not matter here (another
                // gc may have removed it first): no confirmation of an
                // absence, which would cost a counter read per block.
                crate::garage::Op::Delete
                    .scope(super::garage::retry_transient(|| {
                        self.delete_entry(&cid, false)
                    }))
                    .await?;
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
    /// pack row no manifest names), its delete markers, then its registry
    /// record. Blocks other namespaces also hold stay. Returns how many
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
        ns.purge_markers().await?;
        self.unregister(name).await?;
        Ok(removed)
    }
}
