//! The clients of a nemesis run and the blocks they write.
//!
//! Every client draws from one shared pool of blocks (a block's bytes
//! follow from the seed and its number, so a re-put is the same CID), and
//! from a shared ring of blocks just touched, so that puts, deletes and
//! reads of one block meet across clients and daemons: a put through A and
//! a delete through B, a re-put of a block just deleted. Clients speak
//! gRPC (the kubo plugin's surface) or HTTP (kubo RPC, gateway) to a
//! daemon, or are a CLI connector in this process (no filter, no map:
//! what `garage-ipfs block …` does). Each records every operation in the
//! history and judges nothing: the checker does.

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cid::Cid;
use futures::StreamExt;
use ipld_core::ipld::Ipld;
use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};
use serde_json::json;

use super::history::{History, Op, Outcome};
use crate::api::grpc::pb;
use crate::cid::{self as cidutil, codec};
use crate::store::{BlockStore, Namespace};

/// A client's deadline per request: longer than the daemon's own
/// (a request the daemon gives up on is answered, not cut).
pub(super) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The history's name of a block: its multihash as a raw CIDv1, the form
/// listings give (the store keys blocks by multihash).
pub(super) fn key(cid: &Cid) -> String {
    cidutil::raw_cid(*cid.hash()).to_string()
}

/// The shared pool and what the clients share about it.
pub(super) struct Pool {
    pub(super) blocks: Vec<(Cid, Bytes)>,
    recent: Mutex<VecDeque<usize>>,
    deleted: Mutex<VecDeque<usize>>,
    /// Roots gc keeps (kept DAGs whose import was acknowledged), and
    /// every block they reach.
    pub(super) kept: Mutex<(Vec<Cid>, BTreeSet<String>)>,
    /// Every DAG block ever sent, for the final read-back.
    pub(super) dag_keys: Mutex<BTreeSet<String>>,
    /// gc runs under way, and gc starts and ends so far: a DAG imported
    /// while a gc ran may be collected by it (gc keeps only what its roots
    /// reach), so it is never a kept root (a later gc would refuse a root
    /// that is gone).
    pub(super) gcs_running: std::sync::atomic::AtomicU64,
    pub(super) gc_events: std::sync::atomic::AtomicU64,
}

const RECENT: usize = 64;

impl Pool {
    /// `n` blocks from `seed`: 85 % of 64 B–3 KiB (packed), 15 % of
    /// 4–64 KiB (blocks of their own).
    pub(super) fn new(seed: u64, n: usize) -> Self {
        let blocks = (0..n)
            .map(|i| {
                let mut rng = SmallRng::seed_from_u64(seed ^ (i as u64).wrapping_mul(0x9e37_79b9));
                let len = if rng.random_range(0..100) < 85 {
                    rng.random_range(64..=3072)
                } else {
                    rng.random_range(4096..=65536)
                };
                let mut data = vec![0u8; len];
                rng.fill_bytes(&mut data);
                data[..8].copy_from_slice(&(i as u64).to_le_bytes());
                let cid = cidutil::compute(codec::RAW, 0x12, &data).expect("sha2-256");
                (cid, Bytes::from(data))
            })
            .collect();
        Self {
            blocks,
            recent: Mutex::new(VecDeque::new()),
            deleted: Mutex::new(VecDeque::new()),
            kept: Mutex::new((Vec::new(), BTreeSet::new())),
            dag_keys: Mutex::new(BTreeSet::new()),
            gcs_running: Default::default(),
            gc_events: Default::default(),
        }
    }

    fn touch(&self, i: usize) {
        let mut r = self.recent.lock().unwrap();
        r.push_back(i);
        if r.len() > RECENT {
            r.pop_front();
        }
    }

    fn deleted(&self, i: usize) {
        let mut r = self.deleted.lock().unwrap();
        r.push_back(i);
        if r.len() > RECENT {
            r.pop_front();
        }
    }

    /// A block number: often one just touched (by anyone), sometimes one
    /// just deleted (a re-put), else any.
    fn pick(&self, rng: &mut SmallRng, reput: bool) -> usize {
        let roll = rng.random_range(0..100);
        if reput && roll < 30 {
            let d = self.deleted.lock().unwrap();
            if !d.is_empty() {
                return d[rng.random_range(0..d.len())];
            }
        }
        if roll < 60 {
            let r = self.recent.lock().unwrap();
            if !r.is_empty() {
                return r[rng.random_range(0..r.len())];
            }
        }
        rng.random_range(0..self.blocks.len())
    }

    /// A gc starts: counted as running (under the lock imports add kept
    /// roots with), and its roots (the kept DAGs' whose import was
    /// acknowledged with no gc running) and the keys they protect.
    /// Everything else, the pool included, is gc's to remove: the checker
    /// counts a gc as a possible removal of every key it was not told to
    /// keep.
    pub(super) fn start_gc(&self) -> (Vec<Cid>, Vec<String>) {
        let kept = self.kept.lock().unwrap();
        self.gcs_running.fetch_add(1, Ordering::SeqCst);
        self.gc_events.fetch_add(1, Ordering::SeqCst);
        (kept.0.clone(), kept.1.iter().cloned().collect())
    }

    /// A gc ended, whatever its outcome.
    pub(super) fn end_gc(&self) {
        let _kept = self.kept.lock().unwrap();
        self.gcs_running.fetch_sub(1, Ordering::SeqCst);
        self.gc_events.fetch_add(1, Ordering::SeqCst);
    }
}

/// How a client reaches the store.
pub(super) enum Surface {
    /// A daemon's gRPC.
    Grpc {
        client: pb::blockstore_client::BlockstoreClient<tonic::transport::Channel>,
    },
    /// A daemon's kubo RPC and gateway.
    Http {
        http: reqwest::Client,
        rpc: String,
        gateway: String,
    },
    /// A connector in this process without filter or map (the CLI's).
    Local(Namespace),
}

/// One client.
pub(super) struct Client {
    pub(super) name: String,
    pub(super) via: String,
    pub(super) surface: Surface,
    pub(super) rng: SmallRng,
    pub(super) token: String,
    pub(super) namespace: String,
}

fn grpc_outcome(s: &tonic::Status) -> Outcome {
    use tonic::Code;
    match s.code() {
        Code::InvalidArgument | Code::Unauthenticated | Code::PermissionDenied => Outcome::Fail,
        // The connection was never made: nothing was sent.
        Code::Unavailable if format!("{s:?}").contains("Connection refused") => Outcome::Fail,
        _ => Outcome::Info,
    }
}

/// A call of the in-process connector, bounded as a client's request is.
async fn local<T>(
    call: impl std::future::Future<Output = Result<T, crate::store::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(REQUEST_TIMEOUT, call).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err("timed out".into()),
    }
}

/// A gRPC status, as the history records it.
fn status_text(s: &tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

fn http_outcome(e: &reqwest::Error) -> Outcome {
    if e.is_connect() {
        Outcome::Fail
    } else {
        Outcome::Info
    }
}

impl Client {
    fn req<T>(&self, msg: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        req.set_timeout(REQUEST_TIMEOUT);
        req.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", self.token)
                .parse()
                .expect("ASCII token"),
        );
        req
    }

    /// Runs until `deadline`.
    pub(super) async fn run(mut self, h: Arc<History>, pool: Arc<Pool>, deadline: Instant) {
        while Instant::now() < deadline {
            let roll = self.rng.random_range(0..100);
            match roll {
                0..=24 => self.put(&h, &pool).await,
                25..=44 => {
                    let i = pool.pick(&mut self.rng, false);
                    self.delete(&h, &pool, i).await
                }
                45..=64 => {
                    let i = pool.pick(&mut self.rng, false);
                    self.get(&h, &pool.blocks[i].0, false).await;
                }
                65..=93 => {
                    let i = pool.pick(&mut self.rng, false);
                    self.has(&h, &pool.blocks[i].0, false).await;
                }
                94 => {
                    self.list(&h, false).await;
                }
                _ if matches!(self.surface, Surface::Grpc { .. }) => self.put(&h, &pool).await,
                _ => self.import(&h, &pool).await,
            }
            if roll % 8 == 0 {
                tokio::time::sleep(Duration::from_millis(self.rng.random_range(0..20))).await;
            }
        }
    }

    /// A put of one block, or of a batch of 4–12 (a pack when small).
    async fn put(&mut self, h: &History, pool: &Pool) {
        let n = if self.rng.random_bool(0.5) {
            self.rng.random_range(4..=12)
        } else {
            1
        };
        let mut picked = BTreeSet::new();
        for _ in 0..n {
            picked.insert(pool.pick(&mut self.rng, true));
        }
        let blocks: Vec<(Cid, Bytes)> = picked.iter().map(|&i| pool.blocks[i].clone()).collect();
        for &i in &picked {
            pool.touch(i);
        }
        let ops: Vec<(Cid, Op)> = blocks
            .iter()
            .map(|(c, _)| {
                let op = h.invoke(&self.name, &self.via, "put", false, json!({"key": key(c)}));
                (*c, op)
            })
            .collect();
        let result: Result<Vec<String>, (Outcome, String)> = match &self.surface {
            Surface::Grpc { client } => {
                let ns = self.namespace.clone();
                let reqs: Vec<pb::PutRequest> = blocks
                    .iter()
                    .map(|(c, d)| pb::PutRequest {
                        namespace: ns.clone(),
                        cid: c.to_string(),
                        data: d.to_vec(),
                    })
                    .collect();
                let mut req = tonic::Request::new(futures::stream::iter(reqs));
                req.set_timeout(REQUEST_TIMEOUT);
                req.metadata_mut().insert(
                    "authorization",
                    format!("Bearer {}", self.token)
                        .parse()
                        .expect("ASCII token"),
                );
                match client.clone().put_many(req).await {
                    Ok(r) => Ok(r.into_inner().failed.into_iter().map(|f| f.cid).collect()),
                    Err(s) => Err((grpc_outcome(&s), status_text(&s))),
                }
            }
            Surface::Http { http, rpc, .. } => {
                let mut failed = Vec::new();
                let mut err = None;
                for (c, d) in &blocks {
                    let form = reqwest::multipart::Form::new()
                        .part("file", reqwest::multipart::Part::bytes(d.to_vec()));
                    let codec = if c.codec() == codec::RAW {
                        "raw"
                    } else {
                        "dag-cbor"
                    };
                    let r = http
                        .post(format!("{rpc}/block/put?cid-codec={codec}&mhtype=sha2-256"))
                        .bearer_auth(&self.token)
                        .multipart(form)
                        .send()
                        .await;
                    match r {
                        Ok(r) if r.status().is_success() => {}
                        Ok(r) => {
                            failed.push(c.to_string());
                            err = Some((Outcome::Info, format!("HTTP {}", r.status())));
                        }
                        Err(e) => {
                            failed.push(c.to_string());
                            err = Some((http_outcome(&e), e.to_string()));
                        }
                    }
                }
                match err {
                    Some((o, e)) if failed.len() == blocks.len() => Err((o, e)),
                    _ => Ok(failed),
                }
            }
            Surface::Local(ns) => {
                let r = tokio::time::timeout(REQUEST_TIMEOUT, ns.put_many(blocks.clone())).await;
                match r {
                    Ok(Ok(())) => Ok(Vec::new()),
                    Ok(Err(crate::store::Error::Partial { failed, .. })) => {
                        Ok(failed.into_iter().map(|(c, _)| c.to_string()).collect())
                    }
                    Ok(Err(e)) => Err((Outcome::Info, e.to_string())),
                    Err(_) => Err((Outcome::Info, "timed out".into())),
                }
            }
        };
        for (c, op) in ops {
            match &result {
                Ok(failed) if failed.contains(&c.to_string()) => {
                    h.error(op, Outcome::Info, "named failed in the batch")
                }
                Ok(_) => h.complete(op, Outcome::Ok, json!({})),
                Err((o, e)) => h.error(op, *o, e),
            }
        }
    }

    async fn delete(&mut self, h: &History, pool: &Pool, i: usize) {
        let cid = pool.blocks[i].0;
        pool.touch(i);
        let op = h.invoke(
            &self.name,
            &self.via,
            "delete",
            false,
            json!({"key": key(&cid)}),
        );
        let r: Result<bool, (Outcome, String)> = match &self.surface {
            Surface::Grpc { client } => {
                let req = self.req(pb::DeleteRequest {
                    namespace: self.namespace.clone(),
                    cid: cid.to_string(),
                });
                client
                    .clone()
                    .delete(req)
                    .await
                    .map(|r| r.into_inner().deleted)
                    .map_err(|s| (grpc_outcome(&s), status_text(&s)))
            }
            Surface::Http { http, rpc, .. } => {
                let r = http
                    .post(format!("{rpc}/block/rm?arg={cid}"))
                    .bearer_auth(&self.token)
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status().is_success() => match r.text().await {
                        // kubo's answer: `{"Hash":…}` when removed,
                        // `{"Hash":…,"Error":"… could not find …"}` when
                        // absent, another error otherwise.
                        Ok(t) if !t.contains("\"Error\"") => Ok(true),
                        Ok(t) if t.contains("could not find") => Ok(false),
                        Ok(t) => Err((Outcome::Info, t)),
                        Err(e) => Err((Outcome::Info, e.to_string())),
                    },
                    Ok(r) => Err((Outcome::Info, format!("HTTP {}", r.status()))),
                    Err(e) => Err((http_outcome(&e), e.to_string())),
                }
            }
            Surface::Local(ns) => local(ns.delete(&cid)).await.map_err(|e| (Outcome::Info, e)),
        };
        match r {
            Ok(deleted) => {
                if deleted {
                    pool.deleted(i);
                }
                h.complete(op, Outcome::Ok, json!({ "deleted": deleted }))
            }
            Err((o, e)) => h.error(op, o, e),
        }
    }

    /// A get; the bytes are checked against the CID here. Returns whether
    /// it was answered.
    pub(super) async fn get(&mut self, h: &History, cid: &Cid, final_read: bool) -> bool {
        let op = h.invoke(
            &self.name,
            &self.via,
            "get",
            final_read,
            json!({"key": key(cid)}),
        );
        let r: Result<Option<Bytes>, (Outcome, String)> = match &self.surface {
            Surface::Grpc { client } => {
                let req = self.req(pb::GetRequest {
                    namespace: self.namespace.clone(),
                    cid: cid.to_string(),
                });
                match client.clone().get(req).await {
                    Ok(r) => {
                        let r = r.into_inner();
                        Ok(r.found.then(|| Bytes::from(r.data)))
                    }
                    Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
                    Err(s) => Err((grpc_outcome(&s), status_text(&s))),
                }
            }
            Surface::Http { http, gateway, .. } => {
                let r = http
                    .get(format!("{gateway}/ipfs/{cid}?format=raw"))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == reqwest::StatusCode::NOT_FOUND => Ok(None),
                    Ok(r) if r.status().is_success() => r
                        .bytes()
                        .await
                        .map(Some)
                        .map_err(|e| (Outcome::Info, e.to_string())),
                    Ok(r) => Err((Outcome::Info, format!("HTTP {}", r.status()))),
                    Err(e) => Err((http_outcome(&e), e.to_string())),
                }
            }
            Surface::Local(ns) => local(ns.get(cid)).await.map_err(|e| (Outcome::Info, e)),
        };
        match r {
            Ok(found) => {
                let bytes_ok = found
                    .as_ref()
                    .is_some_and(|d| cidutil::verify(cid, d).is_ok());
                h.complete(
                    op,
                    Outcome::Ok,
                    json!({"found": found.is_some(), "bytes_ok": bytes_ok}),
                );
                true
            }
            // A read has no effect: any failure is a non-answer.
            Err((_, e)) => {
                h.error(op, Outcome::Fail, e);
                false
            }
        }
    }

    /// A has.
    pub(super) async fn has(&mut self, h: &History, cid: &Cid, final_read: bool) {
        let op = h.invoke(
            &self.name,
            &self.via,
            "has",
            final_read,
            json!({"key": key(cid)}),
        );
        let r: Result<bool, String> = match &self.surface {
            Surface::Grpc { client } => {
                let req = self.req(pb::HasRequest {
                    namespace: self.namespace.clone(),
                    cid: cid.to_string(),
                });
                client
                    .clone()
                    .has(req)
                    .await
                    .map(|r| r.into_inner().has)
                    .map_err(|s| status_text(&s))
            }
            Surface::Http { http, rpc, .. } => {
                match http
                    .post(format!("{rpc}/block/stat?arg={cid}"))
                    .send()
                    .await
                {
                    Ok(r) if r.status().is_success() => Ok(true),
                    // kubo's "block was not found locally (offline)".
                    Ok(r) if r.status() == reqwest::StatusCode::NOT_FOUND => Ok(false),
                    Ok(r) => Err(format!("HTTP {}", r.status())),
                    Err(e) => Err(e.to_string()),
                }
            }
            Surface::Local(ns) => local(ns.has(cid)).await,
        };
        match r {
            Ok(has) => h.complete(op, Outcome::Ok, json!({ "has": has })),
            Err(e) => h.error(op, Outcome::Fail, e),
        }
    }

    /// A listing of the namespace.
    pub(super) async fn list(&mut self, h: &History, final_read: bool) {
        let op = h.invoke(&self.name, &self.via, "list", final_read, json!({}));
        let r: Result<Vec<String>, String> = match &self.surface {
            Surface::Grpc { client } => {
                let mut req = tonic::Request::new(pb::ListRequest {
                    namespace: self.namespace.clone(),
                });
                req.set_timeout(Duration::from_secs(120));
                match client.clone().list(req).await {
                    Ok(stream) => {
                        let mut s = stream.into_inner();
                        let mut keys = Vec::new();
                        let mut err = None;
                        while let Some(item) = s.next().await {
                            match item.map_err(|s| s.to_string()).and_then(|r| {
                                multihash::Multihash::<64>::from_bytes(&r.multihash)
                                    .map_err(|e| e.to_string())
                            }) {
                                Ok(mh) => keys.push(cidutil::raw_cid(mh).to_string()),
                                Err(e) => {
                                    err = Some(e);
                                    break;
                                }
                            }
                        }
                        match err {
                            None => Ok(keys),
                            Some(e) => Err(e),
                        }
                    }
                    Err(s) => Err(status_text(&s)),
                }
            }
            // The kubo RPC has no listing of ours: listings go through
            // gRPC and the CLI connector.
            Surface::Http { .. } => return h.error(op, Outcome::Fail, "no listing over HTTP"),
            Surface::Local(ns) => {
                let collected =
                    tokio::time::timeout(Duration::from_secs(120), ns.list().collect::<Vec<_>>())
                        .await;
                match collected {
                    Ok(items) => items
                        .into_iter()
                        .map(|r| r.map(|mh| cidutil::raw_cid(mh).to_string()))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| e.to_string()),
                    Err(_) => Err("timed out".into()),
                }
            }
        };
        match r {
            Ok(keys) => h.complete(op, Outcome::Ok, json!({ "keys": keys })),
            Err(e) => h.error(op, Outcome::Fail, e),
        }
    }

    /// A CAR import of two DAGs: one gc keeps (its root goes in the keep
    /// file before the import is sent), one it may collect; their blocks
    /// interleaved, so that they share packs.
    async fn import(&mut self, h: &History, pool: &Pool) {
        let (kept_root, kept) = dag(&mut self.rng, 3, 200..=1500);
        let (eph_root, eph) = dag(&mut self.rng, 5, 1500..=3000);
        let kept_keys: Vec<String> = kept.iter().map(|(c, _)| key(c)).collect();
        let mut blocks = Vec::new();
        let (mut a, mut b) = (kept.into_iter(), eph.into_iter());
        loop {
            match (a.next(), b.next()) {
                (None, None) => break,
                (x, y) => blocks.extend(x.into_iter().chain(y)),
            }
        }
        let keys: Vec<String> = blocks.iter().map(|(c, _)| key(c)).collect();
        pool.dag_keys.lock().unwrap().extend(keys.iter().cloned());
        let gc_quiet = || pool.gcs_running.load(Ordering::SeqCst) == 0;
        let gc_events = pool.gc_events.load(Ordering::SeqCst);
        let gc_free_before = gc_quiet();
        let op = h.invoke(
            &self.name,
            &self.via,
            "import",
            false,
            json!({"keys": keys, "roots": [key(&kept_root), key(&eph_root)]}),
        );
        let header = iroh_car::CarHeader::new_v1(vec![kept_root, eph_root])
            .encode()
            .expect("a CAR header encodes");
        let mut car = Vec::new();
        let mut tmp = unsigned_varint::encode::u64_buffer();
        car.extend_from_slice(unsigned_varint::encode::u64(header.len() as u64, &mut tmp));
        car.extend_from_slice(&header);
        for (c, d) in &blocks {
            car.extend_from_slice(&crate::dag::car_section(c, d));
        }
        let r: Result<(), (Outcome, String)> = match &self.surface {
            Surface::Http { http, rpc, .. } => {
                let form = reqwest::multipart::Form::new()
                    .part("file", reqwest::multipart::Part::bytes(car));
                match http
                    .post(format!("{rpc}/dag/import?pin-roots=false"))
                    .bearer_auth(&self.token)
                    .multipart(form)
                    .send()
                    .await
                {
                    Ok(r) if r.status().is_success() => match r.text().await {
                        Ok(t) if t.contains("\"Root\"") && !t.contains("\"Type\":\"error\"") => {
                            Ok(())
                        }
                        Ok(t) => Err((Outcome::Info, t)),
                        Err(e) => Err((Outcome::Info, e.to_string())),
                    },
                    Ok(r) => Err((Outcome::Info, format!("HTTP {}", r.status()))),
                    Err(e) => Err((http_outcome(&e), e.to_string())),
                }
            }
            Surface::Local(ns) => {
                let r = tokio::time::timeout(
                    REQUEST_TIMEOUT,
                    crate::dag::import_car(ns, std::io::Cursor::new(car), |_| ()),
                )
                .await;
                match r {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err((Outcome::Info, e.to_string())),
                    Err(_) => Err((Outcome::Info, "timed out".into())),
                }
            }
            Surface::Grpc { .. } => Err((Outcome::Fail, "no import over gRPC".into())),
        };
        match r {
            Ok(()) => {
                // Only now a root gc keeps (gc refuses a roots file naming
                // a block the namespace does not hold), and only if no gc
                // ran meanwhile.
                let mut k = pool.kept.lock().unwrap();
                if gc_free_before
                    && gc_quiet()
                    && pool.gc_events.load(Ordering::SeqCst) == gc_events
                {
                    k.0.push(kept_root);
                    k.1.extend(kept_keys);
                }
                h.complete(op, Outcome::Ok, json!({}))
            }
            Err((o, e)) => h.error(op, o, e),
        }
    }
}

/// A two-level DAG: a dag-cbor root linking `leaves` raw leaves of
/// `sizes` bytes. Returns the root and every block, root first.
fn dag(
    rng: &mut SmallRng,
    leaves: usize,
    sizes: std::ops::RangeInclusive<usize>,
) -> (Cid, Vec<(Cid, Bytes)>) {
    let mut blocks = Vec::new();
    let mut links = Vec::new();
    for _ in 0..leaves {
        let mut data = vec![0u8; rng.random_range(sizes.clone())];
        rng.fill_bytes(&mut data);
        let cid = cidutil::compute(codec::RAW, 0x12, &data).expect("sha2-256");
        links.push(Ipld::Link(cid));
        blocks.push((cid, Bytes::from(data)));
    }
    let root = Ipld::Map(
        [
            ("leaves".to_string(), Ipld::List(links)),
            ("n".to_string(), Ipld::Integer(rng.random::<u32>().into())),
        ]
        .into_iter()
        .collect(),
    );
    let data = serde_ipld_dagcbor::to_vec(&root).expect("dag-cbor encodes");
    let cid = cidutil::compute(codec::DAG_CBOR, 0x12, &data).expect("sha2-256");
    blocks.insert(0, (cid, Bytes::from(data)));
    (cid, blocks)
}
