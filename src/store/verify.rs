//! `verify` and `repair`: for each index entry, its ref and every replica.
//!
//! Verify checks, per block: the index entry has a live ref of ours under
//! a live anchor, and each node of the block's layout set returns a copy
//! that hashes to the block key and to the CID (one `GetBlock` per node).
//! Reading a corrupt copy also makes Garage quarantine it, which is what
//! lets repair write a good copy there afterwards (Garage keeps an existing
//! plain file otherwise).
//!
//! Repair, from a verify report: re-puts missing and corrupt replicas from a
//! good copy, writes a missing ref, and moves a ref under a dead anchor to
//! a live one (next generation). It is idempotent: a healthy block is left
//! alone.

use std::collections::HashMap;

use garage_table::EmptyKey;
use garage_util::data::{blake2sum, Hash, Uuid};
use multihash::Multihash;
use serde::Serialize;

use super::anchor::{self, AnchorId};
use super::index::Entry;
use super::packed::PackRow;
use super::PackStorage;
use super::{Error, Namespace};
use crate::cid as cidutil;
use crate::garage::error::deadline;

/// One replica's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplicaState {
    /// Present and intact.
    Ok,
    /// The node does not have it.
    Missing,
    /// The node's copy does not match (Garage quarantines it on read).
    Corrupt,
    /// The node did not answer.
    Unreachable,
}

/// One replica.
#[derive(Debug, Clone, Serialize)]
pub struct Replica {
    /// Node id (hex, 16 digits).
    pub node: String,
    /// State.
    pub state: ReplicaState,
    /// The node's error, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(skip)]
    id: Uuid,
}

impl Replica {
    /// The one replica reported for what is read as K2V rows (an inline
    /// entry, from a quorum; a pack's row, from the first node with a good
    /// copy): Garage's table sync keeps their copies, not us.
    fn index(state: ReplicaState, detail: Option<String>) -> Self {
        Self {
            node: "index".into(),
            state,
            detail,
            id: Uuid::from([0u8; 32]),
        }
    }
}

/// The state of a block's ref.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "generation")]
pub enum RefState {
    /// A live ref under a live anchor of this generation.
    Live(u16),
    /// No live ref of this namespace: Garage may collect the block.
    Missing,
    /// The live ref's anchor is dead (e.g. `garage block purge`): the next
    /// `garage repair block-refs` would drop it.
    DeadAnchor(u16),
    /// A small block kept inline in its index entry: no ref and no block
    /// file; its copies are the index's own (K2V) replicas.
    Inline,
    /// A small block in a pack stored as a K2V row: no ref and no block
    /// file; its copies are the row's replicas.
    Row,
}

impl RefState {
    /// Whether the block is held (a live ref, inline, or in a pack's row).
    pub fn holds(self) -> bool {
        matches!(self, RefState::Live(_) | RefState::Inline | RefState::Row)
    }
}

/// One pack's verification, shared by its blocks.
struct PackCheck {
    reference: RefState,
    replicas: Vec<Replica>,
    good: Option<bytes::Bytes>,
}

/// Verify's finding for one block.
#[derive(Debug, Clone, Serialize)]
pub struct BlockReport {
    /// The block, as a raw CIDv1 of its multihash.
    pub cid: String,
    /// Garage's block hash, hex.
    pub block: String,
    /// Size in bytes.
    pub size: u32,
    /// Its ref.
    pub reference: RefState,
    /// Its replicas, one per node of its layout set.
    pub replicas: Vec<Replica>,
    /// Whether the block is in a pack (`block` is then the pack's hash,
    /// and `reference` and `replicas` the pack's).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub packed: bool,
    #[serde(skip)]
    mh: Multihash<64>,
    #[serde(skip)]
    entry: Entry,
}

impl BlockReport {
    /// Replicas that are intact.
    pub fn good_replicas(&self) -> usize {
        self.replicas
            .iter()
            .filter(|r| r.state == ReplicaState::Ok)
            .count()
    }

    /// Whether nothing is wrong with the block.
    pub fn healthy(&self) -> bool {
        self.reference.holds() && self.good_replicas() == self.replicas.len()
    }
}

/// Totals of a verify run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifySummary {
    /// Namespace.
    pub namespace: String,
    /// Blocks checked.
    pub checked: u64,
    /// Blocks with nothing wrong.
    pub healthy: u64,
    /// Blocks with fewer intact replicas than their layout set.
    pub under_replicated: u64,
    /// Blocks with no intact replica at all.
    pub lost: u64,
    /// Replicas missing from their node.
    pub missing_replicas: u64,
    /// Replicas whose bytes do not match.
    pub corrupt_replicas: u64,
    /// Replicas on nodes that did not answer.
    pub unreachable_replicas: u64,
    /// Blocks whose ref is missing or under a dead anchor.
    pub ref_problems: u64,
    /// The blocks with a problem.
    pub problems: Vec<BlockReport>,
}

impl VerifySummary {
    /// Adds one block's report.
    pub fn add(&mut self, r: BlockReport) {
        self.checked += 1;
        if r.healthy() {
            self.healthy += 1;
            return;
        }
        let good = r.good_replicas();
        if good == 0 {
            self.lost += 1;
        } else if good < r.replicas.len() {
            self.under_replicated += 1;
        }
        for rep in &r.replicas {
            match rep.state {
                ReplicaState::Missing => self.missing_replicas += 1,
                ReplicaState::Corrupt => self.corrupt_replicas += 1,
                ReplicaState::Unreachable => self.unreachable_replicas += 1,
                ReplicaState::Ok => (),
            }
        }
        if !r.reference.holds() {
            self.ref_problems += 1;
        }
        self.problems.push(r);
    }

    /// Whether every checked block is healthy.
    pub fn clean(&self) -> bool {
        self.checked == self.healthy
    }
}

/// What repair did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RepairSummary {
    /// Replicas written again.
    pub replicas_written: u64,
    /// Refs written (missing ones, and moves off dead anchors).
    pub refs_written: u64,
    /// Blocks that could not be repaired, with why.
    pub failed: Vec<(String, String)>,
    /// Whether this was a dry run (nothing written).
    pub dry_run: bool,
    /// Packs repaired already (their blocks share one repair).
    #[serde(skip)]
    packs_done: std::collections::HashSet<Hash>,
}

impl RepairSummary {
    /// An empty summary; `dry_run` says whether the repair only counts.
    pub fn new(dry_run: bool) -> Self {
        Self {
            dry_run,
            ..Default::default()
        }
    }
}

fn classify(e: &crate::garage::Error) -> ReplicaState {
    let text = e.to_string();
    if text.contains("not found") {
        ReplicaState::Missing
    } else if text.contains("orrupt") {
        ReplicaState::Corrupt
    } else {
        ReplicaState::Unreachable
    }
}

impl Namespace {
    /// Verifies the given index entries (all of
    /// [`list_entries`](Self::list_entries), or a sample of them), calling
    /// `progress` after each block.
    pub async fn verify_entries(
        &self,
        entries: Vec<(Multihash<64>, Entry)>,
        mut progress: impl FnMut(&VerifySummary),
    ) -> Result<VerifySummary, Error> {
        let mut summary = VerifySummary {
            namespace: self.name().to_string(),
            ..Default::default()
        };
        let mut anchors = HashMap::new();
        let mut packs = HashMap::new();
        for (mh, entry) in entries {
            let report = if entry.packed.is_some() {
                self.verify_packed(mh, entry, &mut anchors, &mut packs)
                    .await?
            } else {
                self.verify_block(mh, entry, &mut anchors).await?
            };
            summary.add(report);
            progress(&summary);
        }
        Ok(summary)
    }

    /// Verifies a packed block: its pack's ref and copies (read once per
    /// pack and kept in `packs`), and its slot against its multihash.
    async fn verify_packed(
        &self,
        mh: Multihash<64>,
        entry: Entry,
        anchors_alive: &mut HashMap<Uuid, bool>,
        packs: &mut HashMap<Hash, PackCheck>,
    ) -> Result<BlockReport, Error> {
        let Some(at) = entry.packed else {
            return Err(Error::BadIndexEntry {
                key: cidutil::raw_cid(mh).to_string(),
                reason: "verified as packed, but not in a pack".into(),
            });
        };
        if !packs.contains_key(&entry.hash) {
            // One pack at a time: its bytes are needed only for its blocks,
            // which a listing gives together.
            packs.clear();
            let check = self
                .check_pack(&entry.hash, at.storage, anchors_alive)
                .await?;
            packs.insert(entry.hash, check);
        }
        let check = &packs[&entry.hash];
        let cid = cidutil::raw_cid(mh);
        let mut replicas = check.replicas.clone();
        let offset = at.offset as usize;
        let slot = check
            .good
            .as_ref()
            .and_then(|b| b.get(offset..offset + entry.size as usize));
        if let Some(slot) = slot {
            if cidutil::verify(&cid, slot).is_err() {
                // Every copy is the pack's bytes (they hash to its name):
                // the manifest names the wrong slot.
                for r in &mut replicas {
                    r.state = ReplicaState::Corrupt;
                    r.detail = Some("the pack's slot does not match the CID".into());
                }
            }
        }
        Ok(BlockReport {
            cid: cid.to_string(),
            block: hex::encode(entry.hash.as_slice()),
            size: entry.size,
            reference: check.reference,
            replicas,
            packed: true,
            mh,
            entry,
        })
    }

    /// A pack's ref and copies. A pack stored as a row has neither: its
    /// row is read from the first node with a good copy, and reported as
    /// one replica, the row's.
    async fn check_pack(
        &self,
        hash: &Hash,
        storage: PackStorage,
        anchors_alive: &mut HashMap<Uuid, bool>,
    ) -> Result<PackCheck, Error> {
        if storage == PackStorage::Rows {
            let (state, detail, good) = match self.pack_row(hash).await {
                Ok(PackRow::Good(b)) => (ReplicaState::Ok, None, Some(b)),
                Ok(row) => {
                    let state = match row {
                        PackRow::Wrong => ReplicaState::Corrupt,
                        _ => ReplicaState::Missing,
                    };
                    (state, row.bytes().err().map(str::to_string), None)
                }
                Err(e) => (ReplicaState::Unreachable, Some(e.to_string()), None),
            };
            return Ok(PackCheck {
                reference: RefState::Row,
                replicas: vec![Replica::index(state, detail)],
                good,
            });
        }
        let reference = self.ref_state(hash, anchors_alive).await?;
        let (replicas, good) = self.read_replicas(hash, |b| blake2sum(b) == *hash).await?;
        Ok(PackCheck {
            reference,
            replicas,
            good,
        })
    }

    /// Reads a block from every node of its layout set; each copy is
    /// checked by `valid`. Returns the replicas' states and a good copy.
    async fn read_replicas(
        &self,
        hash: &Hash,
        valid: impl Fn(&[u8]) -> bool,
    ) -> Result<(Vec<Replica>, Option<bytes::Bytes>), Error> {
        let conn = self.conn();
        let nodes: Vec<Uuid> = conn
            .system
            .cluster_layout()
            .current()?
            .nodes_of(hash)
            .collect();
        let mut replicas = Vec::new();
        let mut good = None;
        for id in nodes {
            let (state, detail) = match conn.rpc_get_block_from(id, *hash).await {
                Ok(b) if valid(&b) => {
                    good.get_or_insert(b);
                    (ReplicaState::Ok, None)
                }
                Ok(_) => (
                    ReplicaState::Corrupt,
                    Some("bytes do not match".to_string()),
                ),
                Err(e) => (classify(&e), Some(e.to_string())),
            };
            replicas.push(Replica {
                node: hex::encode(&id.as_slice()[..8]),
                state,
                detail,
                id,
            });
        }
        Ok((replicas, good))
    }

    /// Verifies one indexed block.
    pub async fn verify_block(
        &self,
        mh: Multihash<64>,
        entry: Entry,
        anchors_alive: &mut HashMap<Uuid, bool>,
    ) -> Result<BlockReport, Error> {
        let cid = cidutil::raw_cid(mh);
        if let Some(data) = &entry.inline {
            // Read from a quorum of the index already; all that is left to
            // check is that the bytes are the block's.
            let ok = cidutil::verify(&cid, data).is_ok();
            return Ok(BlockReport {
                cid: cid.to_string(),
                block: "inline".into(),
                size: entry.size,
                reference: RefState::Inline,
                replicas: vec![Replica::index(
                    if ok {
                        ReplicaState::Ok
                    } else {
                        ReplicaState::Corrupt
                    },
                    (!ok).then(|| "inline bytes do not match the CID".to_string()),
                )],
                packed: false,
                mh,
                entry,
            });
        }
        if entry.packed.is_some() {
            return self
                .verify_packed(mh, entry, anchors_alive, &mut HashMap::new())
                .await;
        }
        let reference = self.ref_state(&entry.hash, anchors_alive).await?;
        let hash = entry.hash;
        let (replicas, _) = self
            .read_replicas(&hash, |b| {
                blake2sum(b) == hash && cidutil::verify(&cid, b).is_ok()
            })
            .await?;
        Ok(BlockReport {
            cid: cid.to_string(),
            block: hex::encode(entry.hash.as_slice()),
            size: entry.size,
            reference,
            replicas,
            packed: false,
            mh,
            entry,
        })
    }

    async fn ref_state(
        &self,
        hash: &Hash,
        anchors_alive: &mut HashMap<Uuid, bool>,
    ) -> Result<RefState, Error> {
        let refs = self.refs_of(hash).await?;
        let mut dead = None;
        for (g, anchor, r) in anchor::generations(self.id(), hash, &refs) {
            if r.is_none_or(|r| r.deleted.get()) {
                continue;
            }
            if self
                .anchor_alive(anchor.version_uuid(), anchors_alive)
                .await?
            {
                return Ok(RefState::Live(g));
            }
            dead.get_or_insert(g);
        }
        Ok(dead.map(RefState::DeadAnchor).unwrap_or(RefState::Missing))
    }

    async fn anchor_alive(
        &self,
        uuid: Uuid,
        cache: &mut HashMap<Uuid, bool>,
    ) -> Result<bool, Error> {
        if let Some(alive) = cache.get(&uuid) {
            return Ok(*alive);
        }
        let conn = self.conn();
        conn.call_counters().add(crate::garage::Call::TableRead);
        let v = deadline(
            conn.config.timeouts.rpc(),
            "reading an anchor",
            conn.version.get(&uuid, &EmptyKey),
        )
        .await?;
        let alive = v.is_some_and(|v| !v.deleted.get());
        cache.insert(uuid, alive);
        Ok(alive)
    }

    /// Repairs what a report found. With `dry_run`, only counts.
    pub async fn repair_block(&self, r: &BlockReport, dry_run: bool, out: &mut RepairSummary) {
        if let Err(e) = self.repair_inner(r, dry_run, out).await {
            out.failed.push((r.cid.clone(), e.to_string()));
        }
    }

    async fn repair_inner(
        &self,
        r: &BlockReport,
        dry_run: bool,
        out: &mut RepairSummary,
    ) -> Result<(), Error> {
        if r.entry.inline.is_some() || r.reference == RefState::Row {
            // Nothing to rewrite: an inline block, or a pack stored as a
            // row, has no ref nor file, and its K2V copies are Garage's to
            // resync. Without an intact copy there is nothing to copy from.
            if r.good_replicas() == 0 {
                return Err(Error::Unreadable {
                    cid: cidutil::raw_cid(r.mh),
                    cause: format!(
                        "no intact copy in the index to repair from ({})",
                        r.replicas
                            .iter()
                            .filter_map(|x| x.detail.as_deref())
                            .collect::<Vec<_>>()
                            .join("; ")
                    ),
                });
            }
            return Ok(());
        }
        let hash = r.entry.hash;
        if r.packed && !out.packs_done.insert(hash) {
            return Ok(()); // its pack was repaired with an earlier block
        }
        // Refs first: a block without a live ref may be collected.
        if !matches!(r.reference, RefState::Live(_)) {
            if !dry_run {
                let cid = cidutil::raw_cid(r.mh);
                let place = self.choose_generation(&cid, &hash).await?;
                let generation = place.generation;
                let anchor = AnchorId::of(self.id(), generation, &hash).version_uuid();
                if place.new_ref {
                    self.write_ref(hash, anchor, false).await?;
                }
                // A packed block's generation is not recorded anywhere: its
                // ref is found by trying each.
                if generation != r.entry.generation && !r.packed {
                    let (_, context) = self.entry(&r.mh).await?;
                    let entry = Entry {
                        generation,
                        ..r.entry.clone()
                    };
                    self.rpc_index_insert(
                        &r.mh,
                        context,
                        garage_model::k2v::item_table::DvvsValue::Value(entry.encode()),
                    )
                    .await?;
                }
            }
            out.refs_written += 1;
        }
        let bad: Vec<&Replica> = r
            .replicas
            .iter()
            .filter(|x| matches!(x.state, ReplicaState::Missing | ReplicaState::Corrupt))
            .collect();
        if bad.is_empty() {
            return Ok(());
        }
        let Some(good) = r.replicas.iter().find(|x| x.state == ReplicaState::Ok) else {
            return Err(Error::Unreadable {
                cid: cidutil::raw_cid(r.mh),
                cause: "no intact replica left to copy from".into(),
            });
        };
        if dry_run {
            out.replicas_written += bad.len() as u64;
            return Ok(());
        }
        let data = self.conn().rpc_get_block_from(good.id, hash).await?;
        for b in bad {
            self.conn()
                .rpc_put_block_to(b.id, hash, data.clone())
                .await?;
            out.replicas_written += 1;
        }
        Ok(())
    }
}
