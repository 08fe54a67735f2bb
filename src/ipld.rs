//! The links of a block: what dag-pb, dag-cbor and dag-json blocks point
//! at. A leaf
//! module (it needs only CIDs), so that the store's GC and the DAG walks
//! above the store can both use it.

use cid::Cid;
use ipld_core::ipld::Ipld;

use crate::cid::codec;

/// A block whose links cannot be decoded.
#[derive(Debug, thiserror::Error)]
#[error("cannot decode the links of {cid}: {reason}")]
pub struct LinkError {
    /// The block.
    pub cid: Cid,
    /// Why.
    pub reason: String,
}

/// The CIDs a block links to, in order. Raw blocks and codecs we do not
/// walk have none.
pub fn links(cid: &Cid, data: &[u8]) -> Result<Vec<Cid>, LinkError> {
    let mut out = Vec::new();
    if cid.codec() == codec::DAG_PB {
        ipld_dagpb::links(data, &mut out).map_err(|e| LinkError {
            cid: *cid,
            reason: e.to_string(),
        })?;
    } else if let Some(ipld) = document(cid, data)? {
        collect_links(&ipld, &mut out);
    }
    Ok(out)
}

/// A dag-cbor or dag-json block's data model (`None` for other codecs).
pub fn document(cid: &Cid, data: &[u8]) -> Result<Option<Ipld>, LinkError> {
    let decode = |reason: String| LinkError { cid: *cid, reason };
    match cid.codec() {
        codec::DAG_CBOR => serde_ipld_dagcbor::from_slice(data)
            .map(Some)
            .map_err(|e| decode(e.to_string())),
        codec::DAG_JSON => serde_ipld_dagjson::from_slice(data)
            .map(Some)
            .map_err(|e| decode(e.to_string())),
        _ => Ok(None),
    }
}

fn collect_links(ipld: &Ipld, out: &mut Vec<Cid>) {
    match ipld {
        Ipld::Link(c) => out.push(*c),
        Ipld::List(items) => items.iter().for_each(|i| collect_links(i, out)),
        Ipld::Map(map) => map.values().for_each(|v| collect_links(v, out)),
        _ => (),
    }
}
