//! The CID index: multihash → Garage block, in the cluster's K2V item table.
//!
//! - bucket id: synthetic, `blake2sum("garage-ipfs/namespace/v1/" + name)`;
//!   no S3 or K2V HTTP key can reach it;
//! - partition key: the first byte of the digest in hex, 256 shards, so the
//!   index spreads over the ring and lists shard by shard;
//! - sort key: the multihash in kubo's datastore-key form;
//! - value: [`Entry`], a small versioned binary record: where the block
//!   lives in Garage's block manager, or, for blocks of at most
//!   [`INLINE_MAX`] bytes, the block itself (format 2).
//!
//! A deleted entry is a K2V tombstone written with the causal context of
//! the value it replaces.

use bytes::Bytes;
use garage_model::k2v::item_table::{DvvsValue, K2VItem, K2VItemPartition};
use garage_util::data::{blake2sum, Hash, Uuid};
use multihash::Multihash;

/// Format version of [`Entry`] encodings: a block in the block manager.
const FORMAT_V1: u8 = 1;
const ENCODED_LEN_V1: usize = 1 + 1 + 32 + 4 + 2 + 8;
/// Format version of inline entries: the block's bytes in the entry.
const FORMAT_INLINE: u8 = 2;
const INLINE_HEADER: usize = 1 + 1 + 8;

/// Blocks of at most this many bytes live inline in their index entry
/// (Garage's own inline threshold for S3 objects). Such a block costs one
/// replicated K2V write instead of a ref, three block files and an index
/// write, and reads back in one quorum read.
pub const INLINE_MAX: usize = 3072;

/// Number of index partitions per namespace.
pub(crate) const INDEX_SHARDS: usize = 256;

/// The bucket id of a namespace's index.
pub(crate) fn namespace_id(name: &str) -> Uuid {
    blake2sum(format!("garage-ipfs/namespace/v1/{name}").as_bytes())
}

/// The index partition key of a multihash: its digest's first byte, hex.
pub(crate) fn shard_key(mh: &Multihash<64>) -> String {
    shard_name(mh.digest().first().copied().unwrap_or(0) as usize)
}

/// The partition key of shard `i`.
pub(crate) fn shard_name(i: usize) -> String {
    format!("{i:02x}")
}

/// The K2V partition holding a multihash's entry.
pub(crate) fn partition(ns: Uuid, mh: &Multihash<64>) -> K2VItemPartition {
    K2VItemPartition {
        bucket_id: ns,
        partition_key: shard_key(mh),
    }
}

/// One index entry: where a block lives and what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Garage block hash (`blake2sum` of the bytes). For an inline entry,
    /// computed from the inline bytes: no Garage block has it.
    pub hash: Hash,
    /// Size in bytes.
    pub size: u32,
    /// Anchor generation holding the block's live ref.
    pub generation: u16,
    /// CID codec of the first put (the index itself is keyed by multihash).
    pub codec: u64,
    /// The block itself, for blocks of at most [`INLINE_MAX`] bytes.
    pub inline: Option<Bytes>,
    /// For a block in a pack (never encoded: its pack's manifest lists
    /// it): where it is in the pack, whose hash is then `hash`.
    pub packed: Option<InPack>,
}

/// Where a packed block is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InPack {
    /// Its offset in the pack's bytes.
    pub offset: u32,
    /// Where the pack's bytes are.
    pub storage: super::PackStorage,
}

/// Why an index value could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Empty value.
    #[error("empty value")]
    Empty,
    /// Written by a newer format.
    #[error("unknown format version {0}")]
    Version(u8),
    /// Wrong length for the format.
    #[error("{0} bytes, expected {ENCODED_LEN_V1}")]
    Length(usize),
    /// Flags this version does not know.
    #[error("unknown flags 0x{0:02x}")]
    Flags(u8),
    /// An inline entry longer than inline entries may be.
    #[error("inline block of {0} bytes, more than {INLINE_MAX}")]
    InlineTooLarge(usize),
}

impl Entry {
    /// The entry of a block stored inline.
    pub fn inline(codec: u64, data: Bytes) -> Self {
        Self {
            hash: blake2sum(&data),
            size: data.len() as u32,
            generation: 0,
            codec,
            inline: Some(data),
            packed: None,
        }
    }

    /// Binary form: `[1][flags=0][hash:32][size:u32 LE][generation:u16 LE][codec:u64 LE]`,
    /// or for an inline block `[2][flags=0][codec:u64 LE][bytes]`. A
    /// packed block has no index entry of its own.
    pub fn encode(&self) -> Vec<u8> {
        debug_assert!(self.packed.is_none(), "a packed block has no index entry");
        if let Some(data) = &self.inline {
            let mut v = Vec::with_capacity(INLINE_HEADER + data.len());
            v.push(FORMAT_INLINE);
            v.push(0);
            v.extend_from_slice(&self.codec.to_le_bytes());
            v.extend_from_slice(data);
            return v;
        }
        let mut v = Vec::with_capacity(ENCODED_LEN_V1);
        v.push(FORMAT_V1);
        v.push(0);
        v.extend_from_slice(self.hash.as_slice());
        v.extend_from_slice(&self.size.to_le_bytes());
        v.extend_from_slice(&self.generation.to_le_bytes());
        v.extend_from_slice(&self.codec.to_le_bytes());
        v
    }

    /// Inverse of [`Entry::encode`]; refuses anything else.
    pub fn decode(v: &[u8]) -> Result<Self, DecodeError> {
        match v.first() {
            None => return Err(DecodeError::Empty),
            Some(&FORMAT_V1) => (),
            Some(&FORMAT_INLINE) => return Self::decode_inline(v),
            Some(&other) => return Err(DecodeError::Version(other)),
        }
        if v.len() != ENCODED_LEN_V1 {
            return Err(DecodeError::Length(v.len()));
        }
        if v[1] != 0 {
            return Err(DecodeError::Flags(v[1]));
        }
        let hash: [u8; 32] = v[2..34].try_into().expect("length checked");
        Ok(Self {
            hash: hash.into(),
            size: u32::from_le_bytes(v[34..38].try_into().expect("length checked")),
            generation: u16::from_le_bytes(v[38..40].try_into().expect("length checked")),
            codec: u64::from_le_bytes(v[40..48].try_into().expect("length checked")),
            inline: None,
            packed: None,
        })
    }

    fn decode_inline(v: &[u8]) -> Result<Self, DecodeError> {
        if v.len() < INLINE_HEADER {
            return Err(DecodeError::Length(v.len()));
        }
        if v[1] != 0 {
            return Err(DecodeError::Flags(v[1]));
        }
        let data = &v[INLINE_HEADER..];
        if data.len() > INLINE_MAX {
            return Err(DecodeError::InlineTooLarge(data.len()));
        }
        let codec = u64::from_le_bytes(v[2..10].try_into().expect("length checked"));
        Ok(Self::inline(codec, Bytes::copy_from_slice(data)))
    }
}

/// The live entry of an item, if any. Concurrent puts of one block leave
/// sibling values with the same content; a tombstone sibling next to a
/// value means a put raced a delete, and the put wins (never lose data).
pub(crate) fn live_entry(item: &K2VItem) -> Result<Option<Entry>, DecodeError> {
    let mut first_err = None;
    for v in item.values() {
        if let DvvsValue::Value(bytes) = v {
            match Entry::decode(bytes) {
                Ok(e) => return Ok(Some(e)),
                Err(e) => first_err = first_err.or(Some(e)),
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_round_trips_and_refuses_garbage() {
        let e = Entry {
            hash: blake2sum(b"x"),
            size: 2 * 1024 * 1024,
            generation: 3,
            codec: 0x70,
            inline: None,
            packed: None,
        };
        let bytes = e.encode();
        assert_eq!(Entry::decode(&bytes), Ok(e));
        assert_eq!(Entry::decode(&[]), Err(DecodeError::Empty));
        assert_eq!(Entry::decode(&[9]), Err(DecodeError::Version(9)));
        assert_eq!(Entry::decode(&bytes[..20]), Err(DecodeError::Length(20)));
        let mut flagged = bytes.clone();
        flagged[1] = 4;
        assert_eq!(Entry::decode(&flagged), Err(DecodeError::Flags(4)));
    }

    #[test]
    fn inline_entries_round_trip_within_the_limit() {
        for len in [0, 1, 1024, INLINE_MAX] {
            let data = Bytes::from(vec![7u8; len]);
            let e = Entry::inline(0x55, data.clone());
            assert_eq!(e.size as usize, len);
            assert_eq!(e.hash, blake2sum(&data));
            let back = Entry::decode(&e.encode()).unwrap();
            assert_eq!(back, e);
            assert_eq!(back.inline.as_deref(), Some(&data[..]));
        }
        let mut big = Entry::inline(0x55, Bytes::from(vec![0u8; INLINE_MAX])).encode();
        big.push(0);
        assert_eq!(
            Entry::decode(&big),
            Err(DecodeError::InlineTooLarge(INLINE_MAX + 1))
        );
        assert_eq!(Entry::decode(&[2, 0, 1]), Err(DecodeError::Length(3)));
    }

    #[test]
    fn shards_cover_the_digest_first_byte() {
        let mh = Multihash::<64>::wrap(0x12, &[0xab; 32]).unwrap();
        assert_eq!(shard_key(&mh), "ab");
        assert_eq!(shard_name(0), "00");
        assert_ne!(namespace_id("a"), namespace_id("b"));
    }
}
