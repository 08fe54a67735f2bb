//! CIDs and multihashes: parsing with clear errors, verifying data against
//! its CID, and the key forms used in the index.
//!
//! Every put and every get goes through [`verify`]: a block is only ever
//! stored or returned when its bytes hash to the multihash its CID names.

use cid::Cid;
use multihash::Multihash;
use multihash_codetable::{Code, MultihashDigest};

/// Largest block accepted, in bytes: kubo's `SoftBlockLimit` (2 MiB), which
/// is also what IPFS clients cap a block at.
pub const MAX_BLOCK_SIZE: usize = 2 * 1024 * 1024;

/// Multicodec of the identity "hash": the digest *is* the data.
pub const IDENTITY: u64 = 0x00;

/// Multicodec codes of the CID codecs this crate names in its CLI and APIs.
pub mod codec {
    /// Raw bytes.
    pub const RAW: u64 = 0x55;
    /// MerkleDAG protobuf (UnixFS).
    pub const DAG_PB: u64 = 0x70;
    /// DAG-CBOR.
    pub const DAG_CBOR: u64 = 0x71;
    /// DAG-JSON.
    pub const DAG_JSON: u64 = 0x0129;
}

/// Why a CID or a block was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidError {
    /// The text is not a CID.
    #[error("malformed CID {input:?}: {reason}")]
    Malformed {
        /// What was given, cut to 100 characters.
        input: String,
        /// What the parser said.
        reason: String,
    },
    /// The multihash uses a function this crate does not verify.
    #[error(
        "unsupported hash function 0x{code:x} in CID {cid}: supported are sha2-256, sha2-512, \
         sha3-224/256/384/512, blake2b-256/512, blake2s-256, blake3 and identity"
    )]
    UnsupportedHash {
        /// The CID, in its string form.
        cid: String,
        /// The multihash function code.
        code: u64,
    },
    /// The data does not hash to the CID's digest.
    #[error("data does not match CID {cid}: its {function} digest differs")]
    Mismatch {
        /// The CID, in its string form.
        cid: String,
        /// Name of the hash function used.
        function: &'static str,
    },
    /// The block is over [`MAX_BLOCK_SIZE`].
    #[error("block of {size} bytes is over the {limit}-byte limit")]
    TooLarge {
        /// Size given.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A name or key that should hold a multihash does not.
    #[error("malformed multihash key {0:?}")]
    BadKey(String),
}

/// Parses a CID from its string form (CIDv0 `Qm…` or any multibase CIDv1).
pub fn parse(input: &str) -> Result<Cid, CidError> {
    let trimmed = input.trim();
    Cid::try_from(trimmed).map_err(|e| CidError::Malformed {
        input: input.chars().take(100).collect(),
        reason: if trimmed.is_empty() {
            "empty string".to_string()
        } else {
            e.to_string()
        },
    })
}

/// Human name of a multihash function, for messages.
pub fn hash_name(code: u64) -> &'static str {
    match code {
        0x00 => "identity",
        0x12 => "sha2-256",
        0x13 => "sha2-512",
        0x17 => "sha3-224",
        0x16 => "sha3-256",
        0x15 => "sha3-384",
        0x14 => "sha3-512",
        0xb220 => "blake2b-256",
        0xb240 => "blake2b-512",
        0xb260 => "blake2s-256",
        0x1e => "blake3",
        _ => "unknown",
    }
}

/// Parses a multihash function given by name (`sha2-256`) or number.
pub fn hash_code(name: &str) -> Option<u64> {
    let code = match name {
        "identity" => 0x00,
        "sha2-256" => 0x12,
        "sha2-512" => 0x13,
        "sha3-224" => 0x17,
        "sha3-256" => 0x16,
        "sha3-384" => 0x15,
        "sha3-512" => 0x14,
        "blake2b-256" => 0xb220,
        "blake2b-512" => 0xb240,
        "blake2s-256" => 0xb260,
        "blake3" => 0x1e,
        other => return parse_number(other),
    };
    Some(code)
}

/// Parses a CID codec given by name (`dag-pb`) or number.
pub fn codec_code(name: &str) -> Option<u64> {
    match name {
        "raw" => Some(codec::RAW),
        "dag-pb" => Some(codec::DAG_PB),
        "dag-cbor" => Some(codec::DAG_CBOR),
        "dag-json" => Some(codec::DAG_JSON),
        other => parse_number(other),
    }
}

fn parse_number(s: &str) -> Option<u64> {
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

fn hasher(code: u64) -> Option<Code> {
    // Only the functions we name above; the code table knows more, but a
    // function we have not tested is one we do not claim to verify.
    match code {
        0x12 | 0x13 | 0x14 | 0x15 | 0x16 | 0x17 | 0xb220 | 0xb240 | 0xb260 | 0x1e => {
            Code::try_from(code).ok()
        }
        _ => None,
    }
}

/// Whether this CID carries its data inline (identity multihash).
pub fn is_identity(cid: &Cid) -> bool {
    cid.hash().code() == IDENTITY
}

/// Checks that the CID's hash function is one we can verify.
pub fn check_supported(cid: &Cid) -> Result<(), CidError> {
    let code = cid.hash().code();
    if code == IDENTITY || hasher(code).is_some() {
        Ok(())
    } else {
        Err(CidError::UnsupportedHash {
            cid: cid.to_string(),
            code,
        })
    }
}

/// Verifies that `data` is the block `cid` names, and that it is not over
/// the size limit.
pub fn verify(cid: &Cid, data: &[u8]) -> Result<(), CidError> {
    if data.len() > MAX_BLOCK_SIZE {
        return Err(CidError::TooLarge {
            size: data.len(),
            limit: MAX_BLOCK_SIZE,
        });
    }
    let mh = cid.hash();
    let matches = if mh.code() == IDENTITY {
        mh.digest() == data
    } else {
        let code = hasher(mh.code()).ok_or_else(|| CidError::UnsupportedHash {
            cid: cid.to_string(),
            code: mh.code(),
        })?;
        let computed = code.digest(data);
        // A CID may carry a truncated digest (kubo's `mhlen`).
        mh.size() <= computed.size() && &computed.digest()[..mh.size() as usize] == mh.digest()
    };
    if matches {
        Ok(())
    } else {
        Err(CidError::Mismatch {
            cid: cid.to_string(),
            function: hash_name(mh.code()),
        })
    }
}

/// Computes the CIDv1 of `data` with the given codec and hash function.
pub fn compute(codec: u64, hash: u64, data: &[u8]) -> Result<Cid, CidError> {
    let mh = if hash == IDENTITY {
        Multihash::wrap(IDENTITY, data).map_err(|e| CidError::Malformed {
            input: format!("identity block of {} bytes", data.len()),
            reason: e.to_string(),
        })?
    } else {
        let code = hasher(hash).ok_or_else(|| CidError::UnsupportedHash {
            cid: format!("(codec 0x{codec:x})"),
            code: hash,
        })?;
        code.digest(data)
    };
    Ok(Cid::new_v1(codec, mh))
}

/// The multihash in kubo's datastore key form: unpadded uppercase RFC 4648
/// base32 of the multihash bytes (without kubo's leading `/`). One multihash
/// is one key whatever codec a CID puts around it.
pub fn dskey(mh: &Multihash<64>) -> String {
    data_encoding::BASE32_NOPAD.encode(&mh.to_bytes())
}

/// Inverse of [`dskey`].
pub fn from_dskey(key: &str) -> Result<Multihash<64>, CidError> {
    let bytes = data_encoding::BASE32_NOPAD
        .decode(key.as_bytes())
        .map_err(|_| CidError::BadKey(key.chars().take(100).collect()))?;
    Multihash::from_bytes(&bytes).map_err(|_| CidError::BadKey(key.chars().take(100).collect()))
}

/// The CIDv1 with the raw codec for a multihash: what a listing returns,
/// as kubo's `AllKeysChan` does, since the index keeps multihashes only.
pub fn raw_cid(mh: Multihash<64>) -> Cid {
    Cid::new_v1(codec::RAW, mh)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifies_each_supported_function() {
        let data = b"hello garage";
        for name in [
            "sha2-256",
            "sha2-512",
            "sha3-256",
            "blake2b-256",
            "blake2s-256",
            "blake3",
        ] {
            let cid = compute(codec::RAW, hash_code(name).unwrap(), data).unwrap();
            verify(&cid, data).unwrap_or_else(|e| panic!("{name}: {e}"));
            let err = verify(&cid, b"hello garagE").unwrap_err();
            assert!(matches!(err, CidError::Mismatch { .. }), "{name}: {err}");
        }
    }

    #[test]
    fn identity_is_its_own_data() {
        let cid = compute(codec::RAW, IDENTITY, b"abc").unwrap();
        assert!(is_identity(&cid));
        verify(&cid, b"abc").unwrap();
        assert!(verify(&cid, b"abd").is_err());
        // bafkqaaa: the empty identity CID used as the gateway probe.
        let probe = parse("bafkqaaa").unwrap();
        verify(&probe, b"").unwrap();
    }

    #[test]
    fn unsupported_and_malformed_are_clear() {
        // md5 (0xd5) is a valid multihash code we do not verify.
        let mh = Multihash::<64>::wrap(0xd5, &[0u8; 16]).unwrap();
        let cid = Cid::new_v1(codec::RAW, mh);
        let err = verify(&cid, b"x").unwrap_err().to_string();
        assert!(err.contains("unsupported hash function 0xd5"), "{err}");
        let err = parse("bafy-not-a-cid").unwrap_err().to_string();
        assert!(err.starts_with("malformed CID \"bafy-not-a-cid\""), "{err}");
        assert!(parse("").unwrap_err().to_string().contains("empty string"));
    }

    #[test]
    fn size_limit_is_kubos() {
        let big = vec![0u8; MAX_BLOCK_SIZE + 1];
        let cid = compute(codec::RAW, 0x12, &big).unwrap();
        assert!(matches!(
            verify(&cid, &big),
            Err(CidError::TooLarge { size, .. }) if size == MAX_BLOCK_SIZE + 1
        ));
        let ok = vec![0u8; MAX_BLOCK_SIZE];
        verify(&compute(codec::RAW, 0x12, &ok).unwrap(), &ok).unwrap();
    }

    #[test]
    fn dskey_matches_kubo_and_round_trips() {
        let cid = compute(codec::DAG_PB, 0x12, b"x").unwrap();
        let key = dskey(cid.hash());
        // kubo's key for this block (boxo's dshelp: unpadded base32 of the
        // multihash, upper case), as `ipfs refs local` lists it.
        assert_eq!(
            key,
            "CIQC24IWIK3SNMCEAFRHZKP3VQZPLSCTB6YZAPGE3MBCLBYXSINERAI"
        );
        assert_eq!(&from_dskey(&key).unwrap(), cid.hash());
        assert!(from_dskey("not base32!").is_err());
    }
}
