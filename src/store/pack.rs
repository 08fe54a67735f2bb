//! Packs: many small blocks in one row, listed by one manifest.
//!
//! An inline index entry made a small put one K2V item, but an item is
//! still rows on every node (its row, two Merkle transactions, a counter
//! row), whatever the batch. A pack holds a group-commit batch of small
//! blocks end to end, listed by one *manifest*: a K2V item in the
//! namespace's bucket, partition `pk:<first byte of the pack's hash>`, sort
//! key the pack's hash in hex. The bytes are, by [`PackStorage`], a K2V item
//! beside the manifest (sort key `-` and the hash: before every manifest,
//! so a listing of manifests never reads them), or one Garage block under
//! one anchored ref. docs/DESIGN.md ("Packing small blocks") says why each
//! rule below is as it is; this module holds the formats and the in-memory
//! map, no I/O.
//!
//! Manifest value (index format 4 for a pack in a row, 3 for one in a
//! Garage block), little endian:
//! `[format][flags][slots u16]`, then per slot `[codec u64][offset u32][len u32]
//! [multihash length u8][multihash]`, then the deleted set as `[count
//! u16]` and that many slot numbers (`u16`, ascending), then, with flag
//! [`RETIRED`], the 32-byte hash of the pack that replaced this one and
//! the time of the retirement in milliseconds (`u64`), then, with flag
//! [`PENDING`] (a compaction's new pack whose sources may not all be
//! retired yet), `[sources u16]` and per source `[hash: 32][count u16]`
//! and the source's slots copied, in the order of the new pack's slots
//! (`u16` each). Both flags are index format 5 in the registry. The
//! deleted set is a list, not a bitmap, so that each delete changes the
//! value's length: Garage's K2V counters count bytes, not contents, and a
//! delete that left the length alone would not move them (other
//! connectors would see it only at their rolling refresh).

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};
use garage_model::k2v::item_table::{DvvsValue, K2VItem, K2VItemPartition};
use garage_util::data::{blake2sum, Hash, Uuid};
use multihash::Multihash;

/// Index format version of the manifests of packs stored as Garage blocks.
pub(crate) const FORMAT_MANIFEST: u8 = 3;

/// Index format version of the manifests of packs stored as rows.
pub(crate) const FORMAT_ROW_MANIFEST: u8 = 4;

/// Where a pack's bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PackStorage {
    /// A K2V item beside the manifest (index format 4): a pack write is two
    /// rows and no block file, a read one row.
    #[default]
    Rows,
    /// A Garage block under an anchored ref (index format 3): three block
    /// files and a ref per pack, and the bytes stay out of the nodes'
    /// metadata databases.
    Blocks,
}

impl PackStorage {
    /// The index format of the manifests of such packs.
    pub(crate) fn format(self) -> u8 {
        match self {
            PackStorage::Rows => FORMAT_ROW_MANIFEST,
            PackStorage::Blocks => FORMAT_MANIFEST,
        }
    }
}

/// Flag: the pack was compacted into another; its live blocks are there.
pub(crate) const RETIRED: u8 = 1;

/// Flag: a compaction's new pack, listing the packs it copied (its
/// sources), written before they are retired; cleared once each is.
pub(crate) const PENDING: u8 = 2;

/// Index format of a namespace once compacted: retired manifests and
/// pending sources (flags a version that knows format 4 refuses).
pub(crate) const FORMAT_COMPACTED: u8 = 5;

/// Bytes of block data in a pack, at most (a read of one packed block moves
/// at most this much).
pub(crate) const PACK_MAX_BYTES: usize = 64 * 1024;

/// Blocks in a pack, at most.
pub(crate) const PACK_MAX_SLOTS: usize = 512;

/// How long after its retirement a pack the map knew stays in it while
/// the map has not learned its successor: far longer than a poll and
/// Garage's counter lag, far shorter than the rows are kept.
const RETIRED_ALIAS_MS: u64 = 10 * 60 * 1000;

/// Prefix of the manifest partitions' keys (index shards are two hex
/// digits, so the two never meet).
pub(crate) const PARTITION_PREFIX: &str = "pk:";

/// One block in a pack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Slot {
    /// The block's multihash.
    pub(crate) mh: Multihash<64>,
    /// CID codec of the put.
    pub(crate) codec: u64,
    /// Where its bytes start in the pack.
    pub(crate) offset: u32,
    /// Its size.
    pub(crate) len: u32,
}

/// A pack's manifest: its slots, which are deleted, and whether it was
/// replaced.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Manifest {
    /// Where the pack's bytes are.
    pub(crate) storage: PackStorage,
    pub(crate) slots: Vec<Slot>,
    /// Bitmap of deleted slots (bit `i % 8` of byte `i / 8`).
    pub(crate) deleted: Vec<u8>,
    /// The pack holding this one's live blocks, once compacted.
    pub(crate) retired: Option<Retired>,
    /// For a compaction's new pack until every source is retired: the
    /// packs it copied, each with the slots copied from it (the new pack's
    /// slots are these, source after source, in order).
    pub(crate) sources: Vec<Source>,
}

/// A pack a compaction copied, and which of its slots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Source {
    pub(crate) hash: Hash,
    pub(crate) slots: Vec<u16>,
}

impl Manifest {
    /// Per source, the pairs (its slot, our slot), from [`Self::sources`].
    pub(crate) fn source_slots(&self) -> Vec<(Hash, Vec<(usize, usize)>)> {
        let mut next = 0;
        self.sources
            .iter()
            .map(|s| {
                let pairs = s
                    .slots
                    .iter()
                    .map(|&i| {
                        next += 1;
                        (i as usize, next - 1)
                    })
                    .collect();
                (s.hash, pairs)
            })
            .collect()
    }
}

/// A compacted pack's successor, and when it was retired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Retired {
    /// The pack holding the live blocks.
    pub(crate) by: Hash,
    /// When (Unix time in milliseconds): the pack and its manifest are
    /// removed a grace period later, once no connector's map points at it.
    pub(crate) at: u64,
}

/// Why a manifest could not be decoded or merged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ManifestError {
    #[error("not a manifest (format {0})")]
    Version(u8),
    #[error("truncated manifest")]
    Truncated,
    #[error("unknown manifest flags 0x{0:02x}")]
    Flags(u8),
    #[error("{0} trailing bytes after the manifest")]
    Trailing(usize),
    #[error("bad multihash in slot {0}")]
    Multihash(usize),
    #[error("slot {0} lies outside a pack of at most {PACK_MAX_BYTES} bytes")]
    Bounds(usize),
    #[error("deleted slot {0} out of range or out of order")]
    DeletedSlot(usize),
    #[error("two values of one manifest list different slots")]
    Conflict,
    #[error("the sources do not account for the slots")]
    Sources,
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ManifestError> {
        if self.0.len() < n {
            return Err(ManifestError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, ManifestError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, ManifestError> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }
    fn u32(&mut self) -> Result<u32, ManifestError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, ManifestError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
}

impl Manifest {
    /// Whether slot `i` is deleted.
    pub(crate) fn is_deleted(&self, i: usize) -> bool {
        self.deleted
            .get(i / 8)
            .is_some_and(|b| b & (1 << (i % 8)) != 0)
    }

    /// Marks slot `i` deleted.
    pub(crate) fn delete(&mut self, i: usize) {
        self.deleted.resize(self.slots.len().div_ceil(8), 0);
        self.deleted[i / 8] |= 1 << (i % 8);
    }

    /// The slots not deleted, with their index. A retired pack has none:
    /// its live blocks are in the pack that replaced it.
    pub(crate) fn live(&self) -> impl Iterator<Item = (usize, &Slot)> {
        let retired = self.retired.is_some();
        self.slots
            .iter()
            .enumerate()
            .filter(move |(i, _)| !retired && !self.is_deleted(*i))
    }

    /// Binary form (module docs).
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(4 + self.slots.len() * 52 + 40);
        v.push(self.storage.format());
        let mut flags = 0;
        if self.retired.is_some() {
            flags |= RETIRED;
        }
        if !self.sources.is_empty() {
            flags |= PENDING;
        }
        v.push(flags);
        v.extend_from_slice(&(self.slots.len() as u16).to_le_bytes());
        for s in &self.slots {
            v.extend_from_slice(&s.codec.to_le_bytes());
            v.extend_from_slice(&s.offset.to_le_bytes());
            v.extend_from_slice(&s.len.to_le_bytes());
            let mh = s.mh.to_bytes();
            v.push(mh.len() as u8);
            v.extend_from_slice(&mh);
        }
        let deleted: Vec<u16> = (0..self.slots.len())
            .filter(|i| self.is_deleted(*i))
            .map(|i| i as u16)
            .collect();
        v.extend_from_slice(&(deleted.len() as u16).to_le_bytes());
        for i in deleted {
            v.extend_from_slice(&i.to_le_bytes());
        }
        if let Some(r) = &self.retired {
            v.extend_from_slice(r.by.as_slice());
            v.extend_from_slice(&r.at.to_le_bytes());
        }
        if !self.sources.is_empty() {
            v.extend_from_slice(&(self.sources.len() as u16).to_le_bytes());
            for src in &self.sources {
                v.extend_from_slice(src.hash.as_slice());
                v.extend_from_slice(&(src.slots.len() as u16).to_le_bytes());
                for i in &src.slots {
                    v.extend_from_slice(&i.to_le_bytes());
                }
            }
        }
        v
    }

    /// Inverse of [`Manifest::encode`]; refuses anything else.
    pub(crate) fn decode(v: &[u8]) -> Result<Self, ManifestError> {
        let mut r = Reader(v);
        let storage = match r.u8() {
            Ok(FORMAT_MANIFEST) => PackStorage::Blocks,
            Ok(FORMAT_ROW_MANIFEST) => PackStorage::Rows,
            Ok(other) => return Err(ManifestError::Version(other)),
            Err(e) => return Err(e),
        };
        let flags = r.u8()?;
        if flags & !(RETIRED | PENDING) != 0 {
            return Err(ManifestError::Flags(flags));
        }
        let n = r.u16()? as usize;
        let mut slots = Vec::with_capacity(n);
        for i in 0..n {
            let codec = r.u64()?;
            let offset = r.u32()?;
            let len = r.u32()?;
            if offset as usize + len as usize > PACK_MAX_BYTES {
                return Err(ManifestError::Bounds(i));
            }
            let mh_len = r.u8()? as usize;
            let mh =
                Multihash::from_bytes(r.take(mh_len)?).map_err(|_| ManifestError::Multihash(i))?;
            slots.push(Slot {
                mh,
                codec,
                offset,
                len,
            });
        }
        let mut deleted = vec![0u8; n.div_ceil(8)];
        let count = r.u16()? as usize;
        let mut last = None;
        for _ in 0..count {
            let i = r.u16()? as usize;
            if i >= n || last.is_some_and(|l| l >= i) {
                return Err(ManifestError::DeletedSlot(i));
            }
            deleted[i / 8] |= 1 << (i % 8);
            last = Some(i);
        }
        let retired = if flags & RETIRED != 0 {
            let h: [u8; 32] = r.take(32)?.try_into().expect("32 bytes");
            Some(Retired {
                by: h.into(),
                at: r.u64()?,
            })
        } else {
            None
        };
        let mut sources = Vec::new();
        if flags & PENDING != 0 {
            let mut copied = 0;
            for _ in 0..r.u16()? {
                let h: [u8; 32] = r.take(32)?.try_into().expect("32 bytes");
                let count = r.u16()? as usize;
                let slots = (0..count).map(|_| r.u16()).collect::<Result<Vec<_>, _>>()?;
                copied += count;
                sources.push(Source {
                    hash: h.into(),
                    slots,
                });
            }
            if sources.is_empty() || copied != n {
                return Err(ManifestError::Sources);
            }
        }
        if !r.0.is_empty() {
            return Err(ManifestError::Trailing(r.0.len()));
        }
        Ok(Self {
            storage,
            slots,
            deleted,
            retired,
            sources,
        })
    }

    /// The manifest of an item: its values merged (concurrent deletes of
    /// different slots leave siblings; their deleted sets are united, and a
    /// retirement seen in any sibling holds). `None` for a tombstone.
    pub(crate) fn of_item(item: &K2VItem) -> Result<Option<Self>, ManifestError> {
        let mut merged: Option<Self> = None;
        for v in item.values() {
            let DvvsValue::Value(bytes) = v else { continue };
            let m = Self::decode(bytes)?;
            merged = Some(match merged {
                None => m,
                Some(acc) => acc.merge(m)?,
            });
        }
        Ok(merged)
    }

    /// Two values of one manifest, united.
    pub(crate) fn merge(mut self, other: Self) -> Result<Self, ManifestError> {
        if self.slots != other.slots || self.storage != other.storage {
            return Err(ManifestError::Conflict);
        }
        self.deleted.resize(self.slots.len().div_ceil(8), 0);
        for (a, b) in self.deleted.iter_mut().zip(&other.deleted) {
            *a |= b;
        }
        // Compactions of a namespace take a lease, so one successor is
        // ever written; should two be (a lease lapsed), every reader keeps
        // the same one, and the compactor whose successor lost deletes its
        // copies.
        self.retired = match (self.retired, other.retired) {
            (Some(a), Some(b)) => Some(if b.by < a.by { b } else { a }),
            (a, b) => a.or(b),
        };
        // Sources are cleared once, when every one is retired: a value
        // without them is the later one.
        if other.sources.is_empty() {
            self.sources.clear();
        }
        Ok(self)
    }
}

/// Blocks gathered into a pack.
#[derive(Default)]
pub(crate) struct PackBuilder {
    data: BytesMut,
    slots: Vec<Slot>,
    /// For a compaction's pack: what it copies (see [`Manifest::sources`]).
    pub(crate) sources: Vec<Source>,
}

impl PackBuilder {
    /// An empty pack whose bytes start with a 32-byte nonce, so that no two
    /// packs ever share a hash: a pack's row key or ref is then known new,
    /// and a put needs no read before writing it (an old pack with the same
    /// bytes could have a deleted ref, which no write can revive). The
    /// nonce is the time in milliseconds (u64, little endian) and 24 random
    /// bytes: the time lets a later `gc` tell a row that no manifest names
    /// because its writer crashed from one whose manifest is on its way.
    pub(crate) fn unique() -> Self {
        Self::unique_at(garage_util::time::now_msec())
    }

    /// [`Self::unique`], its nonce saying it was written at `msec`.
    pub(crate) fn unique_at(msec: u64) -> Self {
        let mut data = BytesMut::with_capacity(PACK_MAX_BYTES);
        const _: () = assert!(NONCE_LEN == 8 + 24);
        data.extend_from_slice(&msec.to_le_bytes());
        data.extend_from_slice(&garage_util::data::gen_uuid().as_slice()[..24]);
        Self {
            data,
            slots: Vec::new(),
            sources: Vec::new(),
        }
    }

    /// Whether a block of `len` bytes still fits.
    pub(crate) fn fits(&self, len: usize) -> bool {
        self.slots.len() < PACK_MAX_SLOTS && self.data.len() + len <= PACK_MAX_BYTES
    }

    /// Adds a block (the caller checked [`Self::fits`]); its slot number.
    pub(crate) fn push(&mut self, mh: Multihash<64>, codec: u64, bytes: &[u8]) -> usize {
        debug_assert!(self.fits(bytes.len()));
        self.slots.push(Slot {
            mh,
            codec,
            offset: self.data.len() as u32,
            len: bytes.len() as u32,
        });
        self.data.extend_from_slice(bytes);
        self.slots.len() - 1
    }

    /// The pack's bytes, its hash (its Garage block hash if it is stored
    /// as one), and its manifest.
    pub(crate) fn finish(self, storage: PackStorage) -> (Bytes, Hash, Manifest) {
        let data = self.data.freeze();
        let hash = blake2sum(&data);
        let manifest = Manifest {
            storage,
            deleted: vec![0; self.slots.len().div_ceil(8)],
            slots: self.slots,
            retired: None,
            sources: self.sources,
        };
        (data, hash, manifest)
    }
}

/// The manifest partition of a pack: `pk:` and its hash's first byte.
pub(crate) fn partition(ns: Uuid, pack: &Hash) -> K2VItemPartition {
    partition_key_of(ns, pack.as_slice()[0] as usize)
}

/// Manifest partition `i` of a namespace.
pub(crate) fn partition_key_of(ns: Uuid, i: usize) -> K2VItemPartition {
    K2VItemPartition {
        bucket_id: ns,
        partition_key: partition_name(i),
    }
}

/// The key of manifest partition `i`.
pub(crate) fn partition_name(i: usize) -> String {
    format!("{PARTITION_PREFIX}{i:02x}")
}

/// The manifest partition a partition key names, if it is one.
pub(crate) fn parse_partition(key: &str) -> Option<usize> {
    let hex = key.strip_prefix(PARTITION_PREFIX)?;
    (hex.len() == 2)
        .then(|| usize::from_str_radix(hex, 16).ok())
        .flatten()
}

/// A manifest's sort key: the pack's hash in hex.
pub(crate) fn sort_key(pack: &Hash) -> String {
    hex::encode(pack.as_slice())
}

/// Where manifest sort keys start: every key below it holds pack bytes.
pub(crate) const MANIFESTS_FROM: &str = "0";

/// The sort key of a pack's bytes stored as a row: `-` and the pack's hash
/// in hex, so that it sorts before every manifest (whose keys are hex).
pub(crate) fn row_key(pack: &Hash) -> String {
    format!("-{}", hex::encode(pack.as_slice()))
}

/// The pack hash a row's sort key names.
pub(crate) fn parse_row_key(key: &str) -> Option<Hash> {
    parse_sort_key(key.strip_prefix('-')?)
}

/// Bytes of the nonce that starts every pack.
pub(crate) const NONCE_LEN: usize = 32;

/// When a pack was written, from its nonce (Unix time in milliseconds, on
/// the writer's clock: for people, never for a decision; compaction ages a
/// row by its item's cluster time).
#[cfg(test)]
pub(crate) fn written_at(pack: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(pack.get(..8)?.try_into().ok()?))
}

/// The pack hash a manifest sort key names.
pub(crate) fn parse_sort_key(key: &str) -> Option<Hash> {
    let bytes: [u8; 32] = hex::decode(key).ok()?.try_into().ok()?;
    Some(bytes.into())
}

/// Where a packed block is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Located {
    /// The pack's hash.
    pub(crate) pack: Hash,
    /// Where the pack's bytes are.
    pub(crate) storage: PackStorage,
    pub(crate) offset: u32,
    pub(crate) len: u32,
    /// The pack is a compaction's new pack whose sources are not all
    /// retired: its slots are live only where their source says so.
    pub(crate) pending: bool,
}

/// The map's key of a multihash: its first 8 digest bytes, mixed with its
/// function code. Two stored blocks sharing it are told apart by checking
/// the bytes against the CID on every get; a `has` answered from the key
/// alone is wrong only for an absent multihash sharing it with a stored one
/// (2⁻⁶⁴ per stored block for a cryptographic hash).
pub(crate) fn map_key(mh: &Multihash<64>) -> u64 {
    let mut first = [0u8; 8];
    let d = mh.digest();
    let n = d.len().min(8);
    first[..n].copy_from_slice(&d[..n]);
    u64::from_le_bytes(first) ^ mh.code().wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Loc {
    pack: u32,
    slot: u16,
}

/// A pack the map knows.
struct PackInfo {
    hash: Hash,
    storage: PackStorage,
    partition: u8,
    /// Per slot: offset, length, map key.
    slots: Box<[(u32, u32, u64)]>,
    deleted: Vec<u8>,
    /// See [`Located::pending`].
    pending: bool,
    /// A retired pack kept until its successor is known (`insert_at`):
    /// never saved in a snapshot, where it would come back as a live pack.
    alias: bool,
}

impl PackInfo {
    fn is_deleted(&self, i: usize) -> bool {
        self.deleted
            .get(i / 8)
            .is_some_and(|b| b & (1 << (i % 8)) != 0)
    }
}

/// Per namespace: where each packed block is, in memory. Built from the
/// manifests and kept current with them (module docs of `filter.rs` say
/// how a filtered store follows the cluster's changes).
#[derive(Default)]
pub(crate) struct PackMap {
    /// Packs by number; `None` for a number free for reuse.
    packs: Vec<Option<PackInfo>>,
    free: Vec<u32>,
    by_hash: HashMap<Hash, u32>,
    /// One location per key; the rare second copy of a block (two packs
    /// holding it, or two blocks sharing a key) goes to `more`.
    index: HashMap<u64, Loc>,
    more: HashMap<u64, Vec<Loc>>,
}

/// A pack as the map's snapshot keeps it: what the map holds of it (no
/// multihashes, only their map keys).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct SavedPack {
    #[serde(with = "serde_bytes")]
    hash: Vec<u8>,
    storage: PackStorage,
    /// Per slot: offset (u32), length (u32), map key (u64), little endian.
    #[serde(with = "serde_bytes")]
    slots: Vec<u8>,
    #[serde(with = "serde_bytes")]
    deleted: Vec<u8>,
    /// Absent from snapshots written before compaction had sources.
    #[serde(default)]
    pending: bool,
}

impl SavedPack {
    fn of(info: &PackInfo) -> Self {
        let mut slots = Vec::with_capacity(info.slots.len() * 16);
        for (offset, len, key) in info.slots.iter() {
            slots.extend_from_slice(&offset.to_le_bytes());
            slots.extend_from_slice(&len.to_le_bytes());
            slots.extend_from_slice(&key.to_le_bytes());
        }
        Self {
            hash: info.hash.as_slice().to_vec(),
            storage: info.storage,
            slots,
            deleted: info.deleted.clone(),
            pending: info.pending,
        }
    }

    /// The pack back, if the record is well formed.
    fn info(&self) -> Option<PackInfo> {
        let hash: [u8; 32] = self.hash.as_slice().try_into().ok()?;
        if self.slots.len() % 16 != 0 || self.slots.len() / 16 > PACK_MAX_SLOTS {
            return None;
        }
        let word = |c: &[u8], at: usize, n: usize| {
            let mut b = [0u8; 8];
            b[..n].copy_from_slice(&c[at..at + n]);
            u64::from_le_bytes(b)
        };
        Some(PackInfo {
            hash: hash.into(),
            storage: self.storage,
            partition: hash[0],
            slots: self
                .slots
                .chunks_exact(16)
                .map(|c| (word(c, 0, 4) as u32, word(c, 4, 4) as u32, word(c, 8, 8)))
                .collect(),
            deleted: self.deleted.clone(),
            pending: self.pending,
            alias: false,
        })
    }
}

impl PackMap {
    /// Adds (or replaces) a pack from its manifest. A retired manifest
    /// adds nothing and removes the pack if it was known, unless the map
    /// does not know its successor yet and the retirement is recent (the
    /// two are in different partitions, listed at different times): then
    /// the pack is kept, with the manifest's deleted set, so that its
    /// blocks are never in neither (its row is kept far longer).
    pub(crate) fn insert(&mut self, hash: Hash, manifest: &Manifest) {
        self.insert_at(hash, manifest, garage_util::time::now_msec());
    }

    fn insert_at(&mut self, hash: Hash, manifest: &Manifest, now: u64) {
        let known = self.by_hash.contains_key(&hash);
        self.remove(&hash);
        if let Some(r) = manifest.retired {
            let successor_unknown = !self.by_hash.contains_key(&r.by);
            let recent = now.saturating_sub(r.at) < RETIRED_ALIAS_MS;
            if !(known && successor_unknown && recent) {
                return;
            }
        }
        self.insert_info(PackInfo {
            hash,
            storage: manifest.storage,
            partition: hash.as_slice()[0],
            slots: manifest
                .slots
                .iter()
                .map(|s| (s.offset, s.len, map_key(&s.mh)))
                .collect(),
            deleted: manifest.deleted.clone(),
            pending: !manifest.sources.is_empty(),
            alias: manifest.retired.is_some(),
        });
    }

    /// Every pack, as the snapshot keeps it, by manifest partition; `None`
    /// for a partition holding a retired pack kept until its successor is
    /// known: restored, it would answer for blocks deleted since in the
    /// successor, so such a partition is listed again at restart instead.
    pub(crate) fn saved(&self) -> Vec<Option<Vec<SavedPack>>> {
        let mut out = vec![Some(Vec::new()); 256];
        for info in self.packs.iter().flatten() {
            let slot = &mut out[info.partition as usize];
            if info.alias {
                *slot = None;
            } else if let Some(packs) = slot {
                packs.push(SavedPack::of(info));
            }
        }
        out
    }

    /// Adds packs of partition `partition` from a snapshot; nothing if one
    /// of them is not well formed or not of that partition.
    pub(crate) fn insert_saved(&mut self, partition: usize, saved: &[SavedPack]) -> bool {
        let Some(infos) = saved
            .iter()
            .map(|s| s.info().filter(|i| i.partition as usize == partition))
            .collect::<Option<Vec<_>>>()
        else {
            return false;
        };
        for info in infos {
            self.remove(&info.hash);
            self.insert_info(info);
        }
        true
    }

    fn insert_info(&mut self, info: PackInfo) {
        let hash = info.hash;
        let n = match self.free.pop() {
            Some(n) => n,
            None => {
                self.packs.push(None);
                (self.packs.len() - 1) as u32
            }
        };
        for (i, s) in info.slots.iter().enumerate() {
            if info.is_deleted(i) {
                continue;
            }
            let loc = Loc {
                pack: n,
                slot: i as u16,
            };
            if let Some(prev) = self.index.insert(s.2, loc) {
                self.more.entry(s.2).or_default().push(prev);
            }
        }
        self.by_hash.insert(hash, n);
        self.packs[n as usize] = Some(info);
    }

    /// Forgets a pack.
    pub(crate) fn remove(&mut self, hash: &Hash) {
        let Some(n) = self.by_hash.remove(hash) else {
            return;
        };
        let info = self.packs[n as usize].take().expect("known pack");
        for (i, s) in info.slots.iter().enumerate() {
            self.unlink(
                s.2,
                Loc {
                    pack: n,
                    slot: i as u16,
                },
            );
        }
        self.free.push(n);
    }

    fn unlink(&mut self, key: u64, loc: Loc) {
        if let Some(more) = self.more.get_mut(&key) {
            if let Some(p) = more.iter().position(|l| *l == loc) {
                more.swap_remove(p);
            } else if self.index.get(&key) == Some(&loc) {
                let next = more.pop().expect("non-empty");
                self.index.insert(key, next);
            }
            if more.is_empty() {
                self.more.remove(&key);
            }
        } else if self.index.get(&key) == Some(&loc) {
            self.index.remove(&key);
        }
    }

    /// Marks a block deleted in every pack the map has it in.
    #[cfg(test)]
    pub(crate) fn delete(&mut self, mh: &Multihash<64>) -> Vec<(Hash, usize)> {
        self.delete_in(mh, None)
    }

    /// Marks a block deleted in the packs `only` names (all: `None`).
    pub(crate) fn delete_in(
        &mut self,
        mh: &Multihash<64>,
        only: Option<&[Hash]>,
    ) -> Vec<(Hash, usize)> {
        let key = map_key(mh);
        let mut locs = self.locs(key);
        if let Some(only) = only {
            locs.retain(|l| {
                self.packs[l.pack as usize]
                    .as_ref()
                    .is_some_and(|info| only.contains(&info.hash))
            });
        }
        for loc in &locs {
            if let Some(info) = self.packs[loc.pack as usize].as_mut() {
                let i = loc.slot as usize;
                info.deleted.resize(info.slots.len().div_ceil(8), 0);
                info.deleted[i / 8] |= 1 << (i % 8);
            }
            self.unlink(key, *loc);
        }
        locs.iter()
            .filter_map(|l| {
                let info = self.packs[l.pack as usize].as_ref()?;
                Some((info.hash, l.slot as usize))
            })
            .collect()
    }

    fn locs(&self, key: u64) -> Vec<Loc> {
        let mut v: Vec<Loc> = self.index.get(&key).copied().into_iter().collect();
        if let Some(more) = self.more.get(&key) {
            v.extend(more);
        }
        v
    }

    /// Every live location of a multihash's key.
    pub(crate) fn lookup(&self, mh: &Multihash<64>) -> Vec<Located> {
        self.locs(map_key(mh))
            .into_iter()
            .filter_map(|l| {
                let info = self.packs[l.pack as usize].as_ref()?;
                let (offset, len, _) = info.slots[l.slot as usize];
                Some(Located {
                    pack: info.hash,
                    storage: info.storage,
                    offset,
                    len,
                    pending: info.pending,
                })
            })
            .collect()
    }

    /// The packs of a manifest partition.
    pub(crate) fn packs_in(&self, partition: usize) -> Vec<Hash> {
        self.packs
            .iter()
            .flatten()
            .filter(|p| p.partition as usize == partition)
            .map(|p| p.hash)
            .collect()
    }

    /// Live packed blocks the map knows.
    pub(crate) fn len(&self) -> usize {
        self.index.len() + self.more.values().map(Vec::len).sum::<usize>()
    }

    /// Bytes the map uses, about: hash tables at their capacity (key,
    /// value and hashbrown's control byte per bucket) and each pack's slots.
    pub(crate) fn memory_bytes(&self) -> usize {
        let table = |cap: usize, entry: usize| cap * (entry + 1);
        table(self.index.capacity(), 16)
            + table(self.by_hash.capacity(), 36)
            + self
                .packs
                .iter()
                .flatten()
                .map(|p| 64 + p.slots.len() * 16 + p.deleted.len())
                .sum::<usize>()
            + self.packs.capacity() * std::mem::size_of::<Option<PackInfo>>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mh(i: u32) -> Multihash<64> {
        let mut d = [0u8; 32];
        d[..4].copy_from_slice(&i.to_be_bytes());
        d[31] = 1;
        Multihash::wrap(0x12, &d).unwrap()
    }

    fn pack(range: std::ops::Range<u32>) -> (Bytes, Hash, Manifest) {
        pack_in(range, PackStorage::Rows)
    }

    fn pack_in(range: std::ops::Range<u32>, storage: PackStorage) -> (Bytes, Hash, Manifest) {
        let mut b = PackBuilder::default();
        for i in range {
            b.push(mh(i), 0x55, &i.to_le_bytes().repeat(10));
        }
        b.finish(storage)
    }

    #[test]
    fn manifests_round_trip_and_refuse_garbage() {
        let (data, _, mut m) = pack(0..20);
        assert_eq!(data.len(), 20 * 40);
        m.delete(3);
        m.delete(17);
        let bytes = m.encode();
        let back = Manifest::decode(&bytes).unwrap();
        assert_eq!(back, m);
        assert!(back.is_deleted(3) && back.is_deleted(17) && !back.is_deleted(4));
        assert_eq!(back.live().count(), 18);
        assert_eq!(Manifest::decode(&[1]), Err(ManifestError::Version(1)));
        assert_eq!(
            Manifest::decode(&bytes[..bytes.len() - 1]),
            Err(ManifestError::Truncated)
        );
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(Manifest::decode(&long), Err(ManifestError::Trailing(1)));
        let mut flagged = bytes.clone();
        flagged[1] = 0x80;
        assert_eq!(Manifest::decode(&flagged), Err(ManifestError::Flags(0x80)));
        // A slot reaching past the largest pack is refused.
        let mut far = m.clone();
        far.slots[0].offset = PACK_MAX_BYTES as u32;
        assert_eq!(
            Manifest::decode(&far.encode()),
            Err(ManifestError::Bounds(0))
        );
        let mut retired = m.clone();
        retired.retired = Some(Retired {
            by: blake2sum(b"next"),
            at: 1_700_000_000_123,
        });
        let back = Manifest::decode(&retired.encode()).unwrap();
        assert_eq!(back.retired, retired.retired);
        assert_eq!(back.live().count(), 0, "a retired pack has no live slot");
        // The format byte says where the bytes are.
        assert_eq!(bytes[0], FORMAT_ROW_MANIFEST);
        let (_, _, in_block) = pack_in(0..3, PackStorage::Blocks);
        let encoded = in_block.encode();
        assert_eq!(encoded[0], FORMAT_MANIFEST);
        assert_eq!(Manifest::decode(&encoded).unwrap(), in_block);
        assert_eq!(
            Manifest::decode(&encoded).unwrap().storage,
            PackStorage::Blocks
        );
    }

    #[test]
    fn concurrent_deletes_merge_into_the_union() {
        let (_, _, m) = pack(0..10);
        let (mut a, mut b) = (m.clone(), m.clone());
        a.delete(1);
        b.delete(8);
        let merged = a.merge(b).unwrap();
        assert!(merged.is_deleted(1) && merged.is_deleted(8));
        assert_eq!(merged.live().count(), 8);
        let (_, _, other) = pack(0..11);
        assert_eq!(m.clone().merge(other), Err(ManifestError::Conflict));
        let mut elsewhere = m.clone();
        elsewhere.storage = PackStorage::Blocks;
        assert_eq!(m.merge(elsewhere), Err(ManifestError::Conflict));
    }

    #[test]
    fn pending_sources_round_trip_map_slots_and_clear_on_merge() {
        let (_, _, mut m) = pack(0..5);
        m.sources = vec![
            Source {
                hash: blake2sum(b"p1"),
                slots: vec![0, 3, 7],
            },
            Source {
                hash: blake2sum(b"p2"),
                slots: vec![2, 4],
            },
        ];
        let bytes = m.encode();
        assert_eq!(bytes[1], PENDING);
        assert_eq!(Manifest::decode(&bytes).unwrap(), m);
        assert_eq!(
            m.source_slots(),
            vec![
                (blake2sum(b"p1"), vec![(0, 0), (3, 1), (7, 2)]),
                (blake2sum(b"p2"), vec![(2, 3), (4, 4)]),
            ]
        );
        // Sources that do not account for every slot are refused.
        let mut short = m.clone();
        short.sources[1].slots.pop();
        assert_eq!(
            Manifest::decode(&short.encode()),
            Err(ManifestError::Sources)
        );
        // A value with the sources cleared (the compaction finished) wins,
        // and deletes from both are kept.
        let mut done = m.clone();
        done.sources.clear();
        done.delete(1);
        let mut racing = m.clone();
        racing.delete(4);
        let merged = racing.merge(done).unwrap();
        assert!(merged.sources.is_empty());
        assert!(merged.is_deleted(1) && merged.is_deleted(4));
    }

    #[test]
    fn unique_packs_differ_and_carry_their_time() {
        let before = garage_util::time::now_msec();
        let (a, ha, _) = PackBuilder::unique().finish(PackStorage::Rows);
        let (_, hb, _) = PackBuilder::unique().finish(PackStorage::Rows);
        assert_ne!(ha, hb);
        let t = written_at(&a).unwrap();
        assert!((before..before + 60_000).contains(&t), "{t} vs {before}");
    }

    #[test]
    fn packs_stop_at_their_limits() {
        let mut b = PackBuilder::default();
        let block = vec![0u8; 3072];
        let mut n = 0;
        while b.fits(block.len()) {
            b.push(mh(n), 0x55, &block);
            n += 1;
        }
        assert_eq!(n as usize, PACK_MAX_BYTES / 3072);
        let mut b = PackBuilder::default();
        for i in 0..PACK_MAX_SLOTS as u32 {
            assert!(b.fits(1));
            b.push(mh(i), 0x55, &[1]);
        }
        assert!(!b.fits(1), "more than {PACK_MAX_SLOTS} slots");
    }

    #[test]
    fn the_map_finds_live_blocks_and_forgets_deleted_and_removed_ones() {
        let mut map = PackMap::default();
        let (data, h1, m1) = pack(0..100);
        map.insert(h1, &m1);
        let (_, h2, m2) = pack_in(50..150, PackStorage::Blocks);
        map.insert(h2, &m2);
        assert_eq!(map.len(), 200);
        // Block 10 is in pack 1 only, where its bytes are.
        let l = map.lookup(&mh(10));
        assert_eq!(l.len(), 1);
        let got = &data[l[0].offset as usize..(l[0].offset + l[0].len) as usize];
        assert_eq!(got, &10u32.to_le_bytes().repeat(10)[..]);
        // Block 60 is in both packs.
        assert_eq!(map.lookup(&mh(60)).len(), 2);
        assert!(map.lookup(&mh(1000)).is_empty());
        // A delete made in one pack marks that copy only (a copy in
        // another pack may be a later put).
        let marked = map.delete_in(&mh(70), Some(&[h1]));
        assert_eq!(marked, vec![(h1, 70)]);
        let left = map.lookup(&mh(70));
        assert_eq!((left.len(), left[0].pack), (1, h2));
        // A delete marks every copy.
        let marked = map.delete(&mh(60));
        assert_eq!(marked.len(), 2);
        assert!(map.lookup(&mh(60)).is_empty());
        // Removing pack 1 keeps pack 2's blocks.
        map.remove(&h1);
        assert!(map.lookup(&mh(10)).is_empty());
        assert_eq!(map.lookup(&mh(70)).len(), 1);
        assert_eq!(map.lookup(&mh(70))[0].storage, PackStorage::Blocks);
        assert_eq!(map.len(), 99);
        // Inserting a known pack again replaces it (a refreshed manifest).
        let mut m2b = m2.clone();
        m2b.delete(20); // block 70
        map.insert(h2, &m2b);
        assert!(map.lookup(&mh(70)).is_empty());
        assert_eq!(map.packs_in(h2.as_slice()[0] as usize), vec![h2]);
        // A retired manifest removes its pack.
        m2b.retired = Some(Retired { by: h1, at: 1 });
        map.insert(h2, &m2b);
        assert_eq!(map.len(), 0);

        // Retired a moment ago into a pack the map does not know yet (its
        // partition not relisted): the pack stays, with the deletes the
        // retired manifest carries, until the successor is known.
        let now = 1_800_000_000_000;
        let (_, h3, m3) = pack(200..210);
        let (_, h4, m4) = pack(200..211);
        map.insert(h3, &m3);
        let mut r3 = m3.clone();
        r3.delete(0);
        r3.retired = Some(Retired {
            by: h4,
            at: now - 1000,
        });
        map.insert_at(h3, &r3, now);
        assert_eq!(map.len(), 9, "kept while its successor is unknown");
        assert!(map.lookup(&mh(200)).is_empty());
        // Never saved in a snapshot: restored, it would be a live pack,
        // answering for blocks deleted since in its successor.
        let saved = map.saved();
        assert!(saved[h3.as_slice()[0] as usize].is_none());
        assert_eq!(saved.iter().filter(|s| s.is_none()).count(), 1);
        // Not one the map did not know, nor once the retirement is old.
        let (_, h5, _) = pack(300..301);
        let mut r5 = r3.clone();
        r5.slots.truncate(1);
        map.insert_at(h5, &r5, now);
        assert_eq!(map.len(), 9);
        map.insert_at(h3, &r3, now + RETIRED_ALIAS_MS);
        assert_eq!(map.len(), 0);
        // Known successor: the retired pack goes at once.
        map.insert(h3, &m3);
        map.insert(h4, &m4);
        map.insert_at(h3, &r3, now);
        assert_eq!(map.len(), 11);
        assert_eq!(map.lookup(&mh(201)).len(), 1);
    }

    #[test]
    fn the_map_comes_back_from_its_snapshot_records() {
        let mut map = PackMap::default();
        let mut hashes = Vec::new();
        for p in 0..50u32 {
            let (_, h, mut m) = pack(p * 10..(p + 1) * 10);
            m.delete(3);
            map.insert(h, &m);
            hashes.push(h);
        }
        let saved: Vec<Vec<SavedPack>> = map
            .saved()
            .into_iter()
            .map(|s| s.expect("no retired pack kept"))
            .collect();
        assert_eq!(saved.iter().map(Vec::len).sum::<usize>(), 50);
        let mut back = PackMap::default();
        for (p, packs) in saved.iter().enumerate() {
            assert!(back.insert_saved(p, packs));
        }
        assert_eq!(back.len(), map.len());
        for i in 0..500 {
            assert_eq!(back.lookup(&mh(i)), map.lookup(&mh(i)), "block {i}");
        }
        assert!(back.lookup(&mh(13)).is_empty(), "deleted stays deleted");
        // Records of another partition, or malformed, are refused whole.
        let (p, packs) = saved
            .iter()
            .enumerate()
            .find(|(_, v)| !v.is_empty())
            .unwrap();
        assert!(!PackMap::default().insert_saved((p + 1) % 256, packs));
        let mut bad = packs.clone();
        bad[0].slots.pop();
        let mut empty = PackMap::default();
        assert!(!empty.insert_saved(p, &bad));
        assert_eq!(empty.len(), 0);
    }

    #[test]
    fn the_map_stays_within_its_stated_memory() {
        let mut map = PackMap::default();
        for p in 0..2000u32 {
            let (_, h, m) = pack(p * 64..(p + 1) * 64);
            map.insert(h, &m);
        }
        let per_block = map.memory_bytes() as f64 / map.len() as f64;
        // Stated in DESIGN.md: 16 bytes of slot, 17 of table entry at a
        // load between 7/16 and 7/8, a share of the pack's own.
        assert!(per_block <= 60.0, "{per_block} bytes per packed block");
    }

    #[test]
    fn partitions_and_sort_keys_parse_back() {
        let h = blake2sum(b"pack");
        let p = partition(Uuid::from([1; 32]), &h);
        assert_eq!(
            parse_partition(&p.partition_key),
            Some(h.as_slice()[0] as usize)
        );
        assert_eq!(parse_partition("ab"), None);
        assert_eq!(parse_partition("pk:zz"), None);
        assert_eq!(parse_sort_key(&sort_key(&h)), Some(h));
        assert_eq!(parse_sort_key("00"), None);
        // A pack's row sorts before every manifest, and is not one.
        let row = row_key(&h);
        assert!(row.as_str() < MANIFESTS_FROM && MANIFESTS_FROM <= "00");
        assert!(row.as_str() < sort_key(&blake2sum(b"")).as_str());
        assert_eq!(parse_sort_key(&row), None);
        assert_eq!(parse_row_key(&row), Some(h));
        assert_eq!(parse_row_key(&sort_key(&h)), None);
    }
}
