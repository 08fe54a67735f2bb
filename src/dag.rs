//! DAGs and CARs: streaming a DAG out of a store as a CARv1, and importing
//! a CARv1 into a store. The links of each block come from [`crate::ipld`].

use std::collections::HashSet;

use bytes::{BufMut, Bytes, BytesMut};
use cid::Cid;
use futures::stream::BoxStream;
use tokio::io::AsyncRead;

use crate::cid as cidutil;
use crate::ipld::{links, LinkError};
use crate::store::{BlockStore, Error as StoreError};
use crate::unixfs::{ByteRange, HamtStep, Kind, Node};
use ipld_core::ipld::Ipld;

/// Errors of DAG walks and CAR imports.
#[derive(Debug, thiserror::Error)]
pub enum DagError {
    /// A block's links could not be decoded.
    #[error(transparent)]
    Decode(#[from] LinkError),
    /// A block the DAG needs is not stored.
    #[error("block {0} of the DAG is not stored")]
    Missing(Cid),
    /// A path that leads nowhere (a name not in a directory, a field not
    /// in a document, an entry of a file).
    #[error("no such path {0}")]
    NoSuchPath(String),
    /// A path goes through a block whose codec we cannot read names in
    /// (neither dag-pb, dag-cbor, dag-json nor raw).
    #[error("cannot follow a path through {0}")]
    Unsupported(String),
    /// The CAR is not a valid CARv1 (truncated, corrupt, oversized section).
    #[error("invalid CAR: {0}")]
    Car(String),
    /// The CAR's blocks do not make up its roots' DAGs.
    #[error(
        "incomplete CAR: block {missing} (linked from {parent}) is neither in the CAR nor stored"
    )]
    Incomplete {
        /// The block nobody provided.
        missing: String,
        /// A block that links to it.
        parent: String,
    },
    /// The store refused a block or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How much of a DAG a CAR carries (the gateway's `dag-scope`), beyond
/// the blocks that verify the path to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The block at the end of the path only.
    Block,
    /// What reading that entity needs: a UnixFS file's blocks (or those of
    /// a byte range), a directory's own block, a HAMT directory's shard
    /// nodes; for anything else, the block.
    Entity,
    /// The whole DAG below it.
    All,
}

/// What a CAR response carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CarOptions {
    pub scope: Scope,
    /// For [`Scope::Entity`] of a UnixFS file: only the blocks covering it.
    pub range: Option<ByteRange>,
    /// Send a block every time the walk meets it (`dups=y`), not once.
    pub dups: bool,
}

impl CarOptions {
    /// A whole DAG or its root block, each block once.
    pub fn scope(scope: Scope) -> Self {
        Self {
            scope,
            range: None,
            dups: false,
        }
    }
}

/// A CARv1 header naming `root`.
pub fn car_header(root: &Cid) -> Bytes {
    let header = iroh_car::CarHeader::new_v1(vec![*root])
        .encode()
        .expect("a CAR header with one CID encodes");
    let mut buf = BytesMut::with_capacity(header.len() + 10);
    put_varint(&mut buf, header.len() as u64);
    buf.put_slice(&header);
    buf.freeze()
}

/// One CARv1 section: length, CID, data.
pub fn car_section(cid: &Cid, data: &[u8]) -> Bytes {
    let c = cid.to_bytes();
    let mut buf = BytesMut::with_capacity(c.len() + data.len() + 10);
    put_varint(&mut buf, (c.len() + data.len()) as u64);
    buf.put_slice(&c);
    buf.put_slice(data);
    buf.freeze()
}

fn put_varint(buf: &mut BytesMut, n: u64) {
    let mut tmp = unsigned_varint::encode::u64_buffer();
    buf.put_slice(unsigned_varint::encode::u64(n, &mut tmp));
}

/// The blocks read to resolve a path, in the order read: the root first,
/// the path's end (the *terminal*) last. When the path leads nowhere
/// ([`resolve_or_absent`]), `absent` says where and why, and the blocks
/// are those read before that: they prove the absence to a client that
/// checks them.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub blocks: Vec<(Cid, Bytes)>,
    pub absent: Option<String>,
}

impl Resolved {
    /// The block at the end of the path.
    pub fn terminal(&self) -> &(Cid, Bytes) {
        self.blocks.last().expect("a resolved path has its root")
    }
}

async fn load<S: BlockStore>(store: &S, cid: &Cid) -> Result<Bytes, DagError> {
    store.get(cid).await?.ok_or(DagError::Missing(*cid))
}

/// Resolves `path` (segments, already percent-decoded and free of `.` and
/// `..`) from `root`: through UnixFS directories (plain, and HAMT-sharded:
/// each shard read is a block of the path), plain dag-pb links by name, and
/// dag-cbor and dag-json maps and lists (several segments within one block; a link
/// leads to the next block). `None` if the root is not stored; a path that
/// does not exist is [`DagError::NoSuchPath`].
pub async fn resolve<S: BlockStore>(
    store: &S,
    root: Cid,
    path: &[String],
) -> Result<Option<Resolved>, DagError> {
    match resolve_or_absent(store, root, path).await? {
        Some(Resolved {
            absent: Some(why), ..
        }) => Err(DagError::NoSuchPath(why)),
        found => Ok(found),
    }
}

/// [`resolve`], except that a path that does not exist is `Ok` with
/// [`Resolved::absent`] set and the blocks read until then.
pub async fn resolve_or_absent<S: BlockStore>(
    store: &S,
    root: Cid,
    path: &[String],
) -> Result<Option<Resolved>, DagError> {
    let Some(data) = store.get(&root).await? else {
        return Ok(None);
    };
    let mut blocks = vec![(root, data)];
    let mut i = 0;
    macro_rules! missing {
        ($i:expr, $why:expr) => {
            return Ok(Some(Resolved {
                absent: Some(format!("/{}: {}", path[..=$i].join("/"), $why)),
                blocks,
            }))
        };
    }
    while i < path.len() {
        let (cid, data) = blocks.last().expect("the root").clone();
        let segment = path[i].as_str();
        let bad = |reason: String| LinkError { cid, reason };
        let next = match cid.codec() {
            cidutil::codec::DAG_PB => {
                let mut node = Node::decode(&data).map_err(bad)?;
                let next = match node.kind() {
                    Some(Kind::HamtShard) => {
                        let mut level = 0;
                        loop {
                            let step = node
                                .hamt_step(segment, level)
                                .map_err(|e| LinkError { cid, reason: e })?;
                            match step {
                                HamtStep::Absent => missing!(i, "no such entry"),
                                HamtStep::Found(c) => break c,
                                HamtStep::Shard(c) => {
                                    let d = load(store, &c).await?;
                                    node = Node::decode(&d)
                                        .map_err(|reason| LinkError { cid: c, reason })?;
                                    if node.kind() != Some(Kind::HamtShard) {
                                        let reason = "a HAMT link names a node that is not a shard";
                                        return Err(LinkError {
                                            cid: c,
                                            reason: reason.into(),
                                        }
                                        .into());
                                    }
                                    blocks.push((c, d));
                                    level += 1;
                                }
                            }
                        }
                    }
                    Some(Kind::File) => missing!(i, "a file has no entries"),
                    Some(Kind::Other) => missing!(i, "not a directory"),
                    Some(Kind::Directory) | None => match node.named(segment) {
                        Some(l) => l.cid,
                        None => missing!(i, "no such entry"),
                    },
                };
                i += 1;
                next
            }
            cidutil::codec::DAG_CBOR | cidutil::codec::DAG_JSON => {
                let doc = crate::ipld::document(&cid, &data)?.expect("a document codec");
                let mut at = &doc;
                loop {
                    if i == path.len() {
                        // The path ends inside this block: it is the terminal.
                        return Ok(Some(Resolved {
                            blocks,
                            absent: None,
                        }));
                    }
                    let seg = path[i].as_str();
                    let field = match at {
                        Ipld::Map(m) => m.get(seg),
                        Ipld::List(l) => seg.parse::<usize>().ok().and_then(|k| l.get(k)),
                        _ => None,
                    };
                    let Some(field) = field else {
                        missing!(i, "no such field")
                    };
                    at = field;
                    i += 1;
                    if let Ipld::Link(c) = at {
                        break *c;
                    }
                }
            }
            // Raw bytes have no names: the path provably ends here.
            cidutil::codec::RAW => missing!(i, "raw data has no named links"),
            // A codec we cannot decode may well have the name: no proof.
            other => {
                return Err(DagError::Unsupported(format!(
                    "block {cid} (codec 0x{other:x})"
                )))
            }
        };
        let d = load(store, &next).await?;
        blocks.push((next, d));
    }
    Ok(Some(Resolved {
        blocks,
        absent: None,
    }))
}

/// Streams the DAG under `root` as a CARv1: depth-first, each block once,
/// identity blocks walked but never emitted. Returns `None` if the root is
/// not stored, so callers can answer 404 before committing to a 200. A
/// block missing deeper down ends the stream with an error (the CAR is then
/// truncated, which clients detect).
pub async fn car_stream<S: BlockStore + Clone>(
    store: S,
    root: Cid,
    scope: Scope,
) -> Result<Option<BoxStream<'static, Result<Bytes, DagError>>>, DagError> {
    let Some(resolved) = resolve(&store, root, &[]).await? else {
        return Ok(None);
    };
    Ok(Some(car_stream_resolved(
        store,
        resolved,
        CarOptions::scope(scope),
    )))
}

/// Streams a resolved path as a CARv1 naming its terminal as root: the
/// path's blocks in the order read, then the terminal's DAG as `opts`
/// say, depth first, links in order. With `dups` off, a block met again
/// is skipped with its subtree. Identity blocks are never written.
pub fn car_stream_resolved<S: BlockStore + Clone>(
    store: S,
    resolved: Resolved,
    opts: CarOptions,
) -> BoxStream<'static, Result<Bytes, DagError>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, DagError>>(16);
    tokio::spawn(async move {
        use futures::FutureExt;
        // A panic (a bug, or stored data nobody foresaw) must cut the
        // stream, not end it as if the CAR were whole.
        let walked = std::panic::AssertUnwindSafe(walk(&store, resolved, opts, &tx))
            .catch_unwind()
            .await
            .unwrap_or_else(|_| Err(DagError::Car("the walk failed (a bug)".into())));
        if let Err(e) = walked {
            let _ = tx.send(Err(e)).await;
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// What the walk still has to visit: a block (its bytes if read already),
/// and for a byte range, the offset of its first byte in the file.
type Pending = (Cid, Option<Bytes>, u64);

async fn walk<S: BlockStore>(
    store: &S,
    resolved: Resolved,
    opts: CarOptions,
    tx: &tokio::sync::mpsc::Sender<Result<Bytes, DagError>>,
) -> Result<(), DagError> {
    if resolved.absent.is_some() {
        // As kubo and rainbow answer (and rainbow's car mode expects, to
        // tell a missing index.html from an error): the empty identity CID
        // as root, then the blocks that show the path is not there.
        let empty =
            cidutil::compute(cidutil::codec::RAW, cidutil::IDENTITY, &[]).expect("identity");
        if tx.send(Ok(car_header(&empty))).await.is_err() {
            return Ok(());
        }
        for (cid, data) in &resolved.blocks {
            if !cidutil::is_identity(cid) && tx.send(Ok(car_section(cid, data))).await.is_err() {
                return Ok(());
            }
        }
        return Ok(());
    }
    let (terminal, terminal_data) = resolved.terminal().clone();
    if tx.send(Ok(car_header(&terminal))).await.is_err() {
        return Ok(());
    }
    let mut seen = HashSet::new();
    // Returns whether to go on below the block (it was not sent before,
    // or duplicates are asked for); `false` too once the client is gone.
    let mut emit = async |cid: &Cid, data: &[u8]| -> bool {
        let first = seen.insert(cid.to_bytes());
        if !first && !opts.dups {
            return false;
        }
        cidutil::is_identity(cid) || tx.send(Ok(car_section(cid, data))).await.is_ok()
    };
    let n = resolved.blocks.len();
    for (cid, data) in &resolved.blocks[..n - 1] {
        if !emit(cid, data).await && tx.is_closed() {
            return Ok(());
        }
    }
    if !emit(&terminal, &terminal_data).await || opts.scope == Scope::Block {
        return Ok(());
    }
    // What to visit below the terminal, and how each block's children are
    // chosen.
    let range = match (opts.scope, terminal.codec()) {
        (Scope::Entity, cidutil::codec::DAG_PB) => {
            let node = Node::decode(&terminal_data).map_err(|reason| LinkError {
                cid: terminal,
                reason,
            })?;
            match node.kind() {
                Some(Kind::File) => match opts.range.filter(|r| !r.is_all()) {
                    Some(r) => match r.within(node.file_size()) {
                        Some(span) => Some(span),
                        None => return Ok(()),
                    },
                    None => None,
                },
                Some(Kind::HamtShard) => {
                    let mut stack: Vec<Cid> = node.hamt_shards().map_err(|reason| LinkError {
                        cid: terminal,
                        reason,
                    })?;
                    stack.reverse();
                    while let Some(c) = stack.pop() {
                        let d = load(store, &c).await?;
                        if !emit(&c, &d).await {
                            if tx.is_closed() {
                                return Ok(());
                            }
                            continue;
                        }
                        let shard =
                            Node::decode(&d).map_err(|reason| LinkError { cid: c, reason })?;
                        let mut below = shard
                            .hamt_shards()
                            .map_err(|reason| LinkError { cid: c, reason })?;
                        below.reverse();
                        stack.extend(below);
                    }
                    return Ok(());
                }
                _ => return Ok(()),
            }
        }
        (Scope::Entity, _) => return Ok(()),
        _ => None,
    };
    let children = |cid: &Cid, data: &Bytes, start: u64| -> Result<Vec<(Cid, u64)>, DagError> {
        match range {
            Some((from, to)) if cid.codec() == cidutil::codec::DAG_PB => {
                let node = Node::decode(data).map_err(|reason| LinkError { cid: *cid, reason })?;
                Ok(node
                    .file_children_in(start, from, to)
                    .map_err(|reason| LinkError { cid: *cid, reason })?)
            }
            Some(_) => Ok(Vec::new()),
            None => Ok(links(cid, data)?.into_iter().map(|c| (c, 0)).collect()),
        }
    };
    let mut stack: Vec<Pending> = children(&terminal, &terminal_data, 0)?
        .into_iter()
        .rev()
        .map(|(c, at)| (c, None, at))
        .collect();
    while let Some((cid, data, start)) = stack.pop() {
        let data = match data {
            Some(d) => d,
            None => load(store, &cid).await?,
        };
        // A block met again is skipped with its subtree, except under a
        // byte range: there the same node at another offset covers other
        // bytes, so its children are still walked (each sent once).
        if !emit(&cid, &data).await {
            if tx.is_closed() {
                return Ok(());
            }
            if range.is_none() {
                continue;
            }
        }
        stack.extend(
            children(&cid, &data, start)?
                .into_iter()
                .rev()
                .map(|(c, at)| (c, None, at)),
        );
    }
    Ok(())
}

/// What an import stored.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ImportSummary {
    /// The CAR's roots.
    pub roots: Vec<String>,
    /// Blocks read from the CAR (identity blocks included, duplicates not).
    pub blocks: u64,
    /// Bytes of block data read.
    pub bytes: u64,
}

/// Blocks per `put_many` batch of an import.
const IMPORT_BATCH: usize = 64;
/// Bytes per batch, at most (bounds memory in flight).
const IMPORT_BATCH_BYTES: usize = 16 * 1024 * 1024;

/// Imports a CARv1: every block is verified against its CID and stored.
/// Fails on a malformed or truncated CAR, on a block that does not match
/// its CID, and on a CAR that does not carry its roots' whole DAGs (unless
/// the missing blocks are already stored). Blocks stored before a failure
/// stay stored (they may have been stored before), but the import is not
/// reported as done. `progress` is called after each batch.
pub async fn import_car<S: BlockStore>(
    store: &S,
    reader: impl AsyncRead + Unpin + Send,
    mut progress: impl FnMut(&ImportSummary) + Send,
) -> Result<ImportSummary, DagError> {
    let mut car = iroh_car::CarReader::new(reader)
        .await
        .map_err(|e| DagError::Car(e.to_string()))?;
    let mut summary = ImportSummary {
        roots: car.header().roots().iter().map(|c| c.to_string()).collect(),
        ..Default::default()
    };
    let mut have = HashSet::new();
    let mut wanted: Vec<(Cid, Cid)> = car.header().roots().iter().map(|r| (*r, *r)).collect();
    let mut batch = Vec::new();
    let mut batch_bytes = 0;
    loop {
        let next = car
            .next_block()
            .await
            .map_err(|e| DagError::Car(e.to_string()))?;
        let done = next.is_none();
        if let Some((cid, data)) = next {
            if have.insert(cid.hash().to_bytes()) {
                cidutil::verify(&cid, &data).map_err(StoreError::from)?;
                wanted.extend(links(&cid, &data)?.into_iter().map(|l| (l, cid)));
                summary.blocks += 1;
                summary.bytes += data.len() as u64;
                batch_bytes += data.len();
                batch.push((cid, Bytes::from(data)));
            }
        }
        if !batch.is_empty()
            && (done || batch.len() >= IMPORT_BATCH || batch_bytes >= IMPORT_BATCH_BYTES)
        {
            store.put_many(std::mem::take(&mut batch)).await?;
            batch_bytes = 0;
            progress(&summary);
        }
        if done {
            break;
        }
    }
    // Every block the roots' DAGs link to is in the CAR or already stored.
    let mut checked = HashSet::new();
    for (missing, parent) in wanted {
        let key = missing.hash().to_bytes();
        if cidutil::is_identity(&missing) || have.contains(&key) || !checked.insert(key) {
            continue;
        }
        if !store.has(&missing).await? {
            return Err(DagError::Incomplete {
                missing: missing.to_string(),
                parent: parent.to_string(),
            });
        }
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cid::codec;
    use crate::store::MemBlockStore;
    use futures::TryStreamExt;
    use ipld_core::ipld::Ipld;
    use std::sync::Arc;

    fn cbor_node(links: &[Cid], payload: &str) -> (Cid, Bytes) {
        let mut map = std::collections::BTreeMap::new();
        map.insert("payload".to_string(), Ipld::String(payload.into()));
        map.insert(
            "links".to_string(),
            Ipld::List(links.iter().map(|c| Ipld::Link(*c)).collect()),
        );
        let data = serde_ipld_dagcbor::to_vec(&Ipld::Map(map)).unwrap();
        (
            cidutil::compute(codec::DAG_CBOR, 0x12, &data).unwrap(),
            Bytes::from(data),
        )
    }

    async fn sample(store: &Arc<MemBlockStore>) -> (Cid, Vec<(Cid, Bytes)>) {
        let leaf1 = Bytes::from_static(b"leaf one");
        let leaf2 = Bytes::from_static(b"leaf two");
        let c1 = cidutil::compute(codec::RAW, 0x12, &leaf1).unwrap();
        let c2 = cidutil::compute(codec::RAW, 0x12, &leaf2).unwrap();
        let (mid, mid_data) = cbor_node(&[c1, c2], "mid");
        let (root, root_data) = cbor_node(&[mid, c1], "root");
        let blocks = vec![(root, root_data), (mid, mid_data), (c1, leaf1), (c2, leaf2)];
        for (c, d) in &blocks {
            store.put(c, d.clone()).await.unwrap();
        }
        (root, blocks)
    }

    /// The CAR of `root`, as its parts (header, then one per block).
    async fn car_parts(store: &Arc<MemBlockStore>, root: Cid, scope: Scope) -> Vec<Bytes> {
        car_stream(store.clone(), root, scope)
            .await
            .unwrap()
            .unwrap()
            .try_collect()
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn export_then_import_round_trips() {
        let src = Arc::new(MemBlockStore::new());
        let (root, blocks) = sample(&src).await;
        let parts = car_parts(&src, root, Scope::All).await;
        // Each block once, depth first in link order (c1 is linked twice).
        let order: Vec<Cid> = parts[1..]
            .iter()
            .map(|p| {
                let (_, rest) = unsigned_varint::decode::u64(p).unwrap();
                Cid::read_bytes(rest).unwrap()
            })
            .collect();
        let expected: Vec<Cid> = [0, 1, 2, 3].iter().map(|i| blocks[*i].0).collect();
        assert_eq!(order, expected, "root, mid, leaf one, leaf two");
        let car: Vec<u8> = parts.concat();
        let dst = MemBlockStore::new();
        let summary = import_car(&dst, &car[..], |_| ()).await.unwrap();
        assert_eq!(summary.blocks, 4);
        assert_eq!(summary.roots, vec![root.to_string()]);
        for (c, d) in &blocks {
            assert_eq!(dst.get(c).await.unwrap().as_ref(), Some(d));
        }
        // dag-scope=block carries the root only.
        assert_eq!(car_parts(&src, root, Scope::Block).await.len(), 2);
    }

    /// dag-json documents: their links are walked and paths go through
    /// their maps, lists and links, as for dag-cbor.
    #[tokio::test]
    async fn dag_json_links_and_paths() {
        let store = Arc::new(MemBlockStore::new());
        let (_, blocks) = sample(&store).await;
        let (c1, c2) = (blocks[2].0, blocks[3].0);
        let text =
            format!(r#"{{"files":{{"a":{{"/":"{c1}"}}}},"list":[{{"/":"{c2}"}}],"name":"doc"}}"#);
        let doc = cidutil::compute(codec::DAG_JSON, 0x12, text.as_bytes()).unwrap();
        store.put(&doc, Bytes::from(text)).await.unwrap();
        let seg = |p: &[&str]| p.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let cids = |r: Resolved| r.blocks.iter().map(|(c, _)| *c).collect::<Vec<_>>();
        let r = resolve(&*store, doc, &seg(&["files", "a"]))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(cids(r), [doc, c1]);
        let r = resolve(&*store, doc, &seg(&["list", "0"]))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(cids(r), [doc, c2]);
        let r = resolve(&*store, doc, &seg(&["name"]))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(cids(r), [doc]);
        for nowhere in [&["files", "b"][..], &["list", "1"], &["name", "x"]] {
            let err = resolve(&*store, doc, &seg(nowhere)).await.unwrap_err();
            assert!(matches!(err, DagError::NoSuchPath(_)), "{nowhere:?}: {err}");
        }
        let parts = car_parts(&store, doc, Scope::All).await;
        assert_eq!(parts.len(), 4, "header, the document, two leaves");
        let bad = cidutil::compute(codec::DAG_JSON, 0x12, b"{not json").unwrap();
        assert!(crate::ipld::links(&bad, b"{not json").is_err());
    }

    #[tokio::test]
    async fn truncated_corrupt_and_incomplete_cars_are_refused() {
        let src = Arc::new(MemBlockStore::new());
        let (root, _) = sample(&src).await;
        let car: Vec<u8> = car_parts(&src, root, Scope::All).await.concat();
        // Cut inside the last block.
        let err = import_car(&MemBlockStore::new(), &car[..car.len() - 3], |_| ())
            .await
            .unwrap_err();
        assert!(matches!(err, DagError::Car(_)), "{err}");
        // Flip a byte of block data: the block no longer matches its CID.
        let mut bad = car.clone();
        let n = bad.len();
        bad[n - 1] ^= 0xff;
        let err = import_car(&MemBlockStore::new(), &bad[..], |_| ())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("does not match CID"), "{err}");
        // Header and root only: the rest of the DAG is missing.
        let root_only: Vec<u8> = car_parts(&src, root, Scope::Block).await.concat();
        let err = import_car(&MemBlockStore::new(), &root_only[..], |_| ())
            .await
            .unwrap_err();
        assert!(matches!(err, DagError::Incomplete { .. }), "{err}");
        // Not a CAR at all.
        let err = import_car(&MemBlockStore::new(), &b"hello"[..], |_| ())
            .await
            .unwrap_err();
        assert!(matches!(err, DagError::Car(_)), "{err}");
    }

    #[tokio::test]
    async fn missing_root_is_none_and_identity_is_not_emitted() {
        let store = Arc::new(MemBlockStore::new());
        let absent = cidutil::compute(codec::RAW, 0x12, b"absent").unwrap();
        assert!(car_stream(store.clone(), absent, Scope::All)
            .await
            .unwrap()
            .is_none());
        let probe = cidutil::parse("bafkqaaa").unwrap();
        let parts: Vec<Bytes> = car_stream(store, probe, Scope::All)
            .await
            .unwrap()
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        assert_eq!(parts.len(), 1, "header only");
    }
}
