//! The presence filter's and the pack map's snapshot in the connector's
//! state directory, so that a restarted daemon answers from memory at once
//! instead of after listing the whole namespace (see `filter.rs`).
//!
//! One file per namespace, `filters/<namespace id, hex>.bin`:
//! `GIPFSQF2`, the BLAKE2 checksum of the rest, then the rest
//! (MessagePack): the namespace id; per saved index shard, its quotient
//! filter and the index counters the filter is known to cover; per saved
//! manifest partition, its packs as the map holds them and the counters
//! they are known to cover. A file that
//! does not check out (torn by a crash, another namespace's, another
//! version) is ignored, and the filter is built from a listing as before.
//! Written to a temporary file and renamed, never in place.

use std::path::{Path, PathBuf};

use garage_util::data::blake2sum;
use serde::{Deserialize, Serialize};

const MAGIC: &[u8; 8] = b"GIPFSQF2";

/// One shard as saved.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct SavedShard {
    /// Its number.
    pub shard: u16,
    /// The counters' signature when the filter covered the shard exactly
    /// (`None`: the shard had no counter).
    #[serde(with = "serde_bytes_opt")]
    pub seen: Option<Vec<u8>>,
    /// The live entries those counters said.
    pub seen_entries: Option<i64>,
    /// The bytes of values they said (absent from older snapshots: such
    /// a shard is listed again).
    #[serde(default)]
    pub seen_bytes: Option<i64>,
    /// Its filter.
    pub filter: qfilter::Filter,
}

/// One manifest partition of the pack map as saved.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct SavedPartition {
    /// Its number.
    pub partition: u16,
    /// The counters' signature its packs are known to cover (`None`: the
    /// partition had no counter).
    #[serde(with = "serde_bytes_opt")]
    pub seen: Option<Vec<u8>>,
    /// The entries and bytes those counters said.
    pub seen_entries: i64,
    pub seen_bytes: i64,
    /// Its packs.
    pub packs: Vec<super::pack::SavedPack>,
}

/// What a snapshot holds.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct Snapshot {
    pub shards: Vec<SavedShard>,
    pub partitions: Vec<SavedPartition>,
}

#[derive(Serialize, Deserialize)]
struct Contents {
    namespace: [u8; 32],
    saved: Snapshot,
}

/// Where a namespace's snapshot lives under a state directory.
pub(super) fn path(state_dir: &Path, namespace: &[u8; 32]) -> PathBuf {
    state_dir
        .join("filters")
        .join(format!("{}.bin", hex::encode(namespace)))
}

/// The file's bytes for these shards and partitions.
pub(super) fn encode(namespace: [u8; 32], saved: Snapshot) -> Vec<u8> {
    // Plain structs, byte strings and integers: MessagePack takes them all.
    let body = rmp_serde::to_vec(&Contents { namespace, saved }).expect("encodable");
    let mut out = Vec::with_capacity(body.len() + 40);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(blake2sum(&body).as_slice());
    out.extend_from_slice(&body);
    out
}

/// What `namespace`'s snapshot saved, or why the bytes are not a snapshot
/// of it.
pub(super) fn decode(bytes: &[u8], namespace: &[u8; 32]) -> Result<Snapshot, String> {
    let rest = bytes
        .strip_prefix(MAGIC.as_slice())
        .ok_or("not a filter snapshot of this version")?;
    if rest.len() < 32 {
        return Err("truncated".into());
    }
    let (sum, body) = rest.split_at(32);
    if blake2sum(body).as_slice() != sum {
        return Err("checksum mismatch (torn or altered)".into());
    }
    let contents: Contents = rmp_serde::from_slice(body).map_err(|e| e.to_string())?;
    if &contents.namespace != namespace {
        return Err("another namespace's".into());
    }
    Ok(contents.saved)
}

/// Writes `bytes` to `path` through a temporary file and a rename.
pub(super) fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().expect("a file in a directory");
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.{:016x}.tmp",
        path.file_name().unwrap_or_default().to_string_lossy(),
        rand::random::<u64>()
    ));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// Reads a namespace's snapshot: `None` if there is none or it does not
/// check out (logged).
pub(super) fn read(path: &Path, namespace: &[u8; 32]) -> Option<Snapshot> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(path = %path.display(), cause = %e, "cannot read the filter snapshot; listing instead");
            return None;
        }
    };
    decode(&bytes, namespace)
        .inspect_err(|why| {
            tracing::warn!(path = %path.display(), %why, "ignoring the filter snapshot; listing instead")
        })
        .ok()
}

/// `Option<Vec<u8>>` as MessagePack binary, not an array of integers.
mod serde_bytes_opt {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        v.as_deref().map(serde_bytes::Bytes::new).serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Vec<u8>>, D::Error> {
        Ok(Option::<serde_bytes::ByteBuf>::deserialize(d)?.map(|b| b.into_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Snapshot {
        let mut filter = qfilter::Filter::new(100, 0.01).unwrap();
        filter.insert_duplicated(b"block").unwrap();
        Snapshot {
            shards: vec![SavedShard {
                shard: 7,
                seen: Some(vec![1, 2, 3]),
                seen_entries: Some(1),
                seen_bytes: Some(40),
                filter,
            }],
            partitions: vec![SavedPartition {
                partition: 9,
                seen: None,
                seen_entries: 0,
                seen_bytes: 0,
                packs: Vec::new(),
            }],
        }
    }

    #[test]
    fn round_trips_and_refuses_what_does_not_check_out() {
        let ns = [9u8; 32];
        let bytes = encode(ns, sample());
        let back = decode(&bytes, &ns).unwrap();
        assert_eq!(back.partitions.len(), 1);
        assert_eq!(back.partitions[0].partition, 9);
        let back = back.shards;
        assert_eq!(back.len(), 1);
        assert_eq!((back[0].shard, back[0].seen_entries), (7, Some(1)));
        assert_eq!(back[0].seen.as_deref(), Some(&[1u8, 2, 3][..]));
        assert!(back[0].filter.contains(b"block"));
        assert!(!back[0].filter.contains(b"other"));

        assert!(decode(&bytes, &[8u8; 32])
            .unwrap_err()
            .contains("another namespace"));
        assert!(decode(&bytes[..bytes.len() - 1], &ns)
            .unwrap_err()
            .contains("checksum"));
        let mut flipped = bytes.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(decode(&flipped, &ns).unwrap_err().contains("checksum"));
        assert!(decode(b"GIPFSQF0rest", &ns).is_err());
        // A snapshot of the version before the pack map is not read.
        let mut older = bytes.clone();
        older[..8].copy_from_slice(b"GIPFSQF1");
        assert!(decode(&older, &ns).is_err());
        assert!(decode(&bytes[..20], &ns).unwrap_err().contains("truncated"));

        let dir = std::env::temp_dir().join(format!("gipfs-snap-{}", rand::random::<u64>()));
        let p = path(&dir, &ns);
        write(&p, &bytes).unwrap();
        assert_eq!(read(&p, &ns).map(|s| s.shards.len()), Some(1));
        std::fs::write(&p, b"garbage").unwrap();
        assert!(read(&p, &ns).is_none());
        assert!(read(&dir.join("none.bin"), &ns).is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
