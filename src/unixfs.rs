//! What the gateway needs of UnixFS to serve paths and byte ranges as CARs
//! (IPIP-402): a dag-pb node's UnixFS `Data` message, the lookup of a name
//! in a directory (plain or HAMT-sharded), and the children of a file that
//! cover a byte range. No I/O: the caller loads the blocks, so that every
//! block a lookup reads is one it sends (a client verifies the path with
//! exactly those).

use bytes::Bytes;
use cid::Cid;
use ipld_dagpb::{PbLink, PbNode};

/// The UnixFS `Data` message (proto2; fields this module does not use are
/// skipped on decode).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Data {
    #[prost(int32, optional, tag = "1")]
    pub r#type: Option<i32>,
    #[prost(bytes = "vec", optional, tag = "2")]
    pub data: Option<Vec<u8>>,
    #[prost(uint64, optional, tag = "3")]
    pub filesize: Option<u64>,
    #[prost(uint64, repeated, packed = "false", tag = "4")]
    pub blocksizes: Vec<u64>,
    #[prost(uint64, optional, tag = "5")]
    pub hash_type: Option<u64>,
    #[prost(uint64, optional, tag = "6")]
    pub fanout: Option<u64>,
}

/// UnixFS node types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A file (`File`, or the legacy `Raw`).
    File,
    Directory,
    /// A HAMT-sharded directory node (its root or a sub-shard).
    HamtShard,
    /// Symlinks, metadata, anything else.
    Other,
}

/// The multicodec of murmur3-x64-64, the only HAMT hash in use.
const MURMUR3_X64_64: u64 = 0x22;

/// A dag-pb node with its UnixFS data, if it has valid UnixFS data.
pub struct Node {
    pub pb: PbNode,
    pub unixfs: Option<Data>,
}

impl Node {
    /// Decodes a dag-pb block.
    pub fn decode(block: &Bytes) -> Result<Self, String> {
        let pb = PbNode::from_bytes(block.clone()).map_err(|e| format!("dag-pb: {e}"))?;
        let unixfs = pb
            .data
            .as_ref()
            .and_then(|d| <Data as prost::Message>::decode(d.as_ref()).ok())
            .filter(|d| d.r#type.is_some());
        Ok(Self { pb, unixfs })
    }

    /// What kind of UnixFS node it is (`None`: plain dag-pb).
    pub fn kind(&self) -> Option<Kind> {
        Some(match self.unixfs.as_ref()?.r#type? {
            0 | 2 => Kind::File,
            1 => Kind::Directory,
            5 => Kind::HamtShard,
            _ => Kind::Other,
        })
    }

    /// The link named `name` (plain directories and plain dag-pb: the
    /// first link of that name).
    pub fn named(&self, name: &str) -> Option<&PbLink> {
        self.pb
            .links
            .iter()
            .find(|l| l.name.as_deref() == Some(name))
    }

    /// The HAMT parameters of a shard node: the width of a bucket index in
    /// the name's hash, and the length of the hex prefix of its links'
    /// names.
    fn hamt(&self) -> Result<(u32, usize), String> {
        let d = self.unixfs.as_ref().ok_or("not UnixFS")?;
        if d.hash_type != Some(MURMUR3_X64_64) {
            return Err(format!("HAMT hash {:?} is not murmur3-x64-64", d.hash_type));
        }
        let fanout = d.fanout.unwrap_or(0);
        if !fanout.is_power_of_two() || !(2..=1024).contains(&fanout) {
            return Err(format!(
                "HAMT fanout {fanout} is not a power of two up to 1024"
            ));
        }
        Ok((fanout.trailing_zeros(), format!("{:X}", fanout - 1).len()))
    }

    /// One step of a lookup of `name` in a HAMT shard at depth `level`.
    pub fn hamt_step(&self, name: &str, level: u32) -> Result<HamtStep, String> {
        let (width, pad) = self.hamt()?;
        if width * (level + 1) > 64 {
            return Err("HAMT deeper than its hash".into());
        }
        let hash = hamt_hash(name.as_bytes());
        let index = (hash >> (64 - width * (level + 1))) & ((1 << width) - 1);
        let prefix = format!("{index:0pad$X}");
        let Some(link) = self
            .pb
            .links
            .iter()
            .find(|l| l.name.as_deref().is_some_and(|n| n.starts_with(&prefix)))
        else {
            return Ok(HamtStep::Absent);
        };
        let link_name = link.name.as_deref().unwrap_or_default();
        Ok(if link_name.len() == pad {
            HamtStep::Shard(link.cid)
        } else if &link_name[pad..] == name {
            HamtStep::Found(link.cid)
        } else {
            HamtStep::Absent
        })
    }

    /// The sub-shards of a HAMT shard node (links whose name is only the
    /// bucket prefix), in order.
    pub fn hamt_shards(&self) -> Result<Vec<Cid>, String> {
        let (_, pad) = self.hamt()?;
        Ok(self
            .pb
            .links
            .iter()
            .filter(|l| l.name.as_deref().is_some_and(|n| n.len() == pad))
            .map(|l| l.cid)
            .collect())
    }

    /// A file node's size, from this node alone.
    pub fn file_size(&self) -> u64 {
        let Some(d) = &self.unixfs else { return 0 };
        d.filesize.unwrap_or_else(|| {
            d.blocksizes
                .iter()
                .fold(d.data.as_ref().map_or(0, |b| b.len() as u64), |a, b| {
                    a.saturating_add(*b)
                })
        })
    }

    /// The children of a file node whose bytes meet `[from, to]`
    /// (absolute, inclusive), with the offset of each child's first byte;
    /// `start` is this node's.
    pub fn file_children_in(
        &self,
        start: u64,
        from: u64,
        to: u64,
    ) -> Result<Vec<(Cid, u64)>, String> {
        let Some(d) = &self.unixfs else {
            return Ok(Vec::new());
        };
        if d.blocksizes.len() != self.pb.links.len() {
            return Err(format!(
                "a file node with {} links and {} block sizes",
                self.pb.links.len(),
                d.blocksizes.len()
            ));
        }
        // Sizes come from stored data: saturate rather than wrap.
        let mut at = start.saturating_add(d.data.as_ref().map_or(0, |b| b.len() as u64));
        let mut out = Vec::new();
        for (link, &size) in self.pb.links.iter().zip(&d.blocksizes) {
            if at > to {
                break;
            }
            if size > 0 && at.saturating_add(size) > from {
                out.push((link.cid, at));
            }
            at = at.saturating_add(size);
        }
        Ok(out)
    }
}

/// Where one step of a HAMT lookup leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HamtStep {
    /// The name is not in the directory.
    Absent,
    /// Continue in this sub-shard, one level deeper.
    Shard(Cid),
    /// The entry's target.
    Found(Cid),
}

/// The hash a HAMT places names by: murmur3 x64-128 with seed 0, its first
/// 64-bit half (Go's `murmur3.New64`), read from the most significant bit.
pub fn hamt_hash(name: &[u8]) -> u64 {
    murmur3::murmur3_x64_128(&mut std::io::Cursor::new(name), 0).expect("reading memory") as u64
}

/// An `entity-bytes=from:to` range, as the request gave it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub from: i64,
    /// `None` for `*` (the end).
    pub to: Option<i64>,
}

impl ByteRange {
    /// Parses `from:to` (`to` may be `*`; negative values count from the
    /// end; both ends inclusive).
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = || format!("entity-bytes={s}: expected FROM:TO or FROM:* (integers)");
        let (from, to) = s.split_once(':').ok_or_else(bad)?;
        let from: i64 = from.parse().map_err(|_| bad())?;
        let to = match to {
            "*" => None,
            t => Some(t.parse::<i64>().map_err(|_| bad())?),
        };
        if let Some(to) = to {
            if (from >= 0 && to >= 0 || from < 0 && to < 0) && from > to {
                return Err(format!("entity-bytes={s}: the range ends before it starts"));
            }
        }
        Ok(Self { from, to })
    }

    /// Whether it is the whole entity.
    pub fn is_all(&self) -> bool {
        self.from == 0 && self.to.is_none()
    }

    /// The absolute inclusive range within `size` bytes, if any byte of it
    /// is there.
    pub fn within(&self, size: u64) -> Option<(u64, u64)> {
        let size = i64::try_from(size).ok()?;
        if size == 0 {
            return None;
        }
        let from = if self.from >= 0 {
            self.from
        } else {
            (size + self.from).max(0)
        };
        let to = match self.to {
            None => size - 1,
            Some(t) if t >= 0 => t.min(size - 1),
            Some(t) => size + t,
        };
        (from < size && to >= from).then_some((from as u64, to as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hamt_hash_matches_go_murmur3_64() {
        // Values the spec's example and the conformance fixtures agree on.
        for (name, h) in [
            ("470.txt", 0x006E_88DF_5847_E67C_u64),
            ("742.txt", 0x00FF_87D1_29AE_5428),
            ("1.txt", 0x07C1_8282_5CB4_47E1),
            ("685.txt", 0xFDE3_2207_976B_DD5A),
        ] {
            assert_eq!(hamt_hash(name.as_bytes()), h, "{name}");
        }
    }

    #[test]
    fn byte_ranges_parse_and_normalise_like_http_ranges() {
        let r = |s| ByteRange::parse(s).unwrap();
        assert!(r("0:*").is_all());
        assert_eq!(r("0:0").within(1026), Some((0, 0)));
        assert_eq!(r("512:1023").within(1026), Some((512, 1023)));
        assert_eq!(r("512:-256").within(1026), Some((512, 770)));
        assert_eq!(r("-5:*").within(1026), Some((1021, 1025)));
        assert_eq!(r("-9999:*").within(1026), Some((0, 1025)));
        assert_eq!(r("-9999:-3").within(1026), Some((0, 1023)));
        assert_eq!(r("0:99999").within(1026), Some((0, 1025)));
        assert_eq!(r("2000:*").within(1026), None);
        assert_eq!(r("0:*").within(0), None);
        for bad in ["", "1", "a:2", "1:b", "5:2", "-2:-5", "1:2:3"] {
            assert!(ByteRange::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn file_children_cover_the_range() {
        // 2 bytes of its own, then four children of 256 bytes.
        let links = (0..4u8)
            .map(|i| PbLink {
                cid: Cid::new_v1(0x55, multihash::Multihash::wrap(0x00, &[i]).unwrap()),
                name: None,
                size: Some(256),
            })
            .collect();
        let data = Data {
            r#type: Some(2),
            data: Some(vec![1, 2]),
            filesize: Some(1026),
            blocksizes: vec![256; 4],
            ..Default::default()
        };
        let node = Node {
            pb: PbNode {
                links,
                data: Some(prost::Message::encode_to_vec(&data).into()),
            },
            unixfs: Some(data),
        };
        assert_eq!(node.file_size(), 1026);
        let firsts = |from, to| -> Vec<u64> {
            node.file_children_in(0, from, to)
                .unwrap()
                .into_iter()
                .map(|(_, at)| at)
                .collect()
        };
        assert_eq!(firsts(0, 1), Vec::<u64>::new());
        assert_eq!(firsts(0, 2), vec![2]);
        assert_eq!(firsts(512, 1023), vec![258, 514, 770]);
        assert_eq!(firsts(1000, 1025), vec![770]);
    }
}
