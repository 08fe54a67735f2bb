//! The three systems under test, behind one interface:
//!
//! - `connector`: this crate's store (a namespace of a [`GarageStore`]
//!   with presence filters), through the [`BlockStore`] trait;
//! - `s3`: go-ds-s3's access pattern through Garage's S3 API, with the
//!   `object_store` crate (PutObject, GetObject, HeadObject,
//!   ListObjectsV2), keys as kubo's datastore names them;
//! - `colocated`: the same store with node 1's data directory configured
//!   (`colocated_data_dirs`), as a daemon beside a storage node runs: gets
//!   read node 1's block file and check it. Puts and gets only;
//! - `floor`: only what any design storing blocks in Garage must do: a
//!   bare `PutBlock` to the layout's nodes (write quorum) and a bare
//!   `GetBlock` from one node, keyed by Garage's block hash, which it keeps
//!   in memory: no ref, no index, no check against the CID. Puts and gets
//!   only (it has no way to answer a lookup or a listing);
//! - `local`: one file per block on the local disk, flatfs-like: the floor
//!   of writing a block at all.

use std::path::{Path as FsPath, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use bytes::Bytes;
use cid::Cid;
use futures::{StreamExt, TryStreamExt};
use garage_util::data::{blake2sum, Hash};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::client::{
    ClientOptions, HttpClient, HttpConnector, HttpError, HttpRequest, HttpResponse, HttpService,
    ReqwestConnector,
};
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, ObjectStore, PutOptions, PutPayload};
use serde::Serialize;

use crate::cid as cidutil;
use crate::store::{BlockStore, GarageStore, Namespace};
use crate::Connector;

/// Which system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SystemKind {
    /// This crate's store, straight on Garage's block manager.
    Connector,
    /// This crate's store reading node 1's block files.
    Colocated,
    /// Bare block transfers: the floor of any design on Garage.
    Floor,
    /// Garage's S3 API, as go-ds-s3 uses it.
    S3,
    /// One file per block on the local disk.
    Local,
}

impl SystemKind {
    /// Every system, in report order.
    pub const ALL: [SystemKind; 5] = [
        SystemKind::Connector,
        SystemKind::Colocated,
        SystemKind::Floor,
        SystemKind::S3,
        SystemKind::Local,
    ];

    /// The name used in reports and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            SystemKind::Connector => "connector",
            SystemKind::Colocated => "colocated",
            SystemKind::Floor => "floor",
            SystemKind::S3 => "s3",
            SystemKind::Local => "local",
        }
    }

    /// Whether the system runs a workload: the floor has no index, so it
    /// runs only the puts and gets; co-located reads change only gets (its
    /// puts store what they read).
    pub fn runs(self, w: super::Workload) -> bool {
        !matches!(self, SystemKind::Floor | SystemKind::Colocated) || w.moves_data()
    }
}

/// Entries of a listing per latency sample.
pub(super) const LIST_SAMPLE_ENTRIES: u64 = 1000;

/// A system under test.
pub(super) enum System {
    /// This crate's store.
    Connector {
        /// The store (owns the presence filters).
        store: Arc<GarageStore>,
        /// The namespace used.
        ns: Namespace,
        /// Its connector reads a co-located node's block files (the
        /// `colocated` system).
        colocated: bool,
    },
    /// Bare block transfers.
    Floor(FloorSystem),
    /// Garage's S3 API.
    S3(S3System),
    /// Files on the local disk.
    Local(LocalSystem),
}

impl System {
    /// Which system this is.
    /// Empties the connector's block cache and switches it on or off
    /// (no-op for the others).
    pub(super) fn reset_cache(&self, enabled: bool) {
        if let System::Connector { store, .. } = self {
            store.reset_cache(enabled);
        }
    }

    pub(super) fn kind(&self) -> SystemKind {
        match self {
            System::Connector {
                colocated: false, ..
            } => SystemKind::Connector,
            System::Connector {
                colocated: true, ..
            } => SystemKind::Colocated,
            System::Floor(_) => SystemKind::Floor,
            System::S3(_) => SystemKind::S3,
            System::Local(_) => SystemKind::Local,
        }
    }

    /// Stores a block.
    pub(super) async fn put(&self, cid: Cid, data: Bytes) -> anyhow::Result<()> {
        match self {
            System::Connector { ns, .. } => Ok(ns.put(&cid, data).await?),
            System::Floor(floor) => floor.put(&cid, data).await,
            System::S3(s3) => s3.put(&cid, data).await,
            System::Local(local) => local.put(&cid, data).await,
        }
    }

    /// Stores several blocks: the store's own `put_many` for the
    /// connector, as many puts at once as its default for the others.
    pub(super) async fn put_many(&self, blocks: Vec<(Cid, Bytes)>) -> anyhow::Result<()> {
        match self {
            System::Connector { ns, .. } => Ok(ns.put_many(blocks).await?),
            _ => {
                futures::stream::iter(blocks)
                    .map(|(cid, data)| self.put(cid, data))
                    .buffer_unordered(crate::store::PUT_MANY_CONCURRENCY)
                    .try_collect::<()>()
                    .await
            }
        }
    }

    /// A block's bytes, or `None` if absent.
    pub(super) async fn get(&self, cid: &Cid) -> anyhow::Result<Option<Bytes>> {
        match self {
            System::Connector { ns, .. } => Ok(ns.get(cid).await?),
            System::Floor(floor) => floor.get(cid).await,
            System::S3(s3) => s3.get(cid).await,
            System::Local(local) => local.get(cid).await,
        }
    }

    /// Whether a block is stored.
    pub(super) async fn has(&self, cid: &Cid) -> anyhow::Result<bool> {
        match self {
            System::Connector { ns, .. } => Ok(ns.has(cid).await?),
            _ => Ok(self.get_size(cid).await?.is_some()),
        }
    }

    /// A block's size, or `None` if absent.
    pub(super) async fn get_size(&self, cid: &Cid) -> anyhow::Result<Option<u64>> {
        match self {
            System::Connector { ns, .. } => Ok(ns.get_size(cid).await?),
            System::Floor(_) => anyhow::bail!("the floor has no index: no lookups"),
            System::S3(s3) => s3.head(cid).await,
            System::Local(local) => local.size(cid).await,
        }
    }

    /// Lists every block: the number of entries, and the milliseconds
    /// each [`LIST_SAMPLE_ENTRIES`] took (the whole listing when shorter).
    pub(super) async fn list(&self) -> anyhow::Result<(u64, Vec<f64>)> {
        let stream = match self {
            System::Connector { ns, .. } => ns
                .list()
                .map_ok(|_| ())
                .map_err(anyhow::Error::from)
                .boxed(),
            System::Floor(_) => anyhow::bail!("the floor has no index: no listings"),
            System::S3(s3) => s3.list().map_ok(|_| ()).boxed(),
            System::Local(local) => local.list().map_ok(|_| ()).boxed(),
        };
        time_listing(stream).await
    }

    /// Requests the client sent so far: RPCs for the connector, HTTP
    /// requests for S3; `None` when not counted.
    pub(super) fn client_requests(&self) -> Option<u64> {
        match self {
            System::Connector { store, .. } => connector_rpc_calls(store.connector()),
            System::Floor(floor) => connector_rpc_calls(&floor.conn),
            System::S3(s3) => Some(s3.requests.load(Ordering::Relaxed)),
            System::Local(_) => None,
        }
    }
}

/// RPCs the connector has issued so far, of every kind.
pub fn connector_rpc_calls(conn: &Connector) -> Option<u64> {
    Some(conn.cluster_calls())
}

async fn time_listing(
    mut stream: futures::stream::BoxStream<'static, anyhow::Result<()>>,
) -> anyhow::Result<(u64, Vec<f64>)> {
    let mut count = 0u64;
    let mut samples = Vec::new();
    let mut mark = Instant::now();
    let start = mark;
    while let Some(entry) = stream.next().await {
        entry?;
        count += 1;
        if count % LIST_SAMPLE_ENTRIES == 0 {
            samples.push(mark.elapsed().as_secs_f64() * 1e3);
            mark = Instant::now();
        }
    }
    if samples.is_empty() {
        samples.push(start.elapsed().as_secs_f64() * 1e3);
    }
    Ok((count, samples))
}

/// Bare block transfers through a connector: Garage's block hash
/// (BLAKE2) of the bytes, `PutBlock` to the layout's nodes until the write
/// quorum holds it, `GetBlock` from the first node that answers. The map
/// from CID to block hash lives in memory, free: what an index costs is
/// exactly what the floor leaves out.
pub(super) struct FloorSystem {
    conn: Arc<Connector>,
    hashes: std::sync::Mutex<std::collections::HashMap<cid::multihash::Multihash<64>, Hash>>,
}

impl FloorSystem {
    /// Transfers through `conn`.
    pub(super) fn new(conn: Arc<Connector>) -> Self {
        Self {
            conn,
            hashes: Default::default(),
        }
    }

    async fn put(&self, cid: &Cid, data: Bytes) -> anyhow::Result<()> {
        let hash = blake2sum(&data);
        self.conn
            .rpc_put_block(hash, data)
            .await
            .with_context(|| format!("PutBlock {cid}"))?;
        self.hashes.lock().unwrap().insert(*cid.hash(), hash);
        Ok(())
    }

    async fn get(&self, cid: &Cid) -> anyhow::Result<Option<Bytes>> {
        let Some(hash) = self.hashes.lock().unwrap().get(cid.hash()).copied() else {
            return Ok(None);
        };
        let data = self
            .conn
            .rpc_get_block(hash, |_| true)
            .await
            .with_context(|| format!("GetBlock {cid}"))?;
        Ok(Some(data))
    }
}

/// Garage's S3 API through `object_store`, every request counted.
pub(super) struct S3System {
    store: AmazonS3,
    requests: Arc<AtomicU64>,
}

/// Prefix of the block keys: kubo's `/blocks` mount.
const S3_PREFIX: &str = "blocks";

impl S3System {
    /// A client of `bucket` on `endpoint` (`http://host:port`), path-style,
    /// region `garage`.
    pub(super) fn new(
        endpoint: &str,
        bucket: &str,
        key_id: &str,
        secret: &str,
    ) -> anyhow::Result<Self> {
        let requests = Arc::new(AtomicU64::new(0));
        let store = AmazonS3Builder::new()
            .with_endpoint(endpoint)
            .with_allow_http(true)
            .with_region("garage")
            .with_bucket_name(bucket)
            .with_access_key_id(key_id)
            .with_secret_access_key(secret)
            .with_virtual_hosted_style_request(false)
            .with_http_connector(CountingConnector {
                requests: requests.clone(),
            })
            .build()
            .context("S3 client")?;
        Ok(Self { store, requests })
    }

    /// The object key of a block: `blocks/<datastore key>`, as go-ds-s3
    /// stores kubo's `/blocks/<key>`.
    fn key(cid: &Cid) -> ObjectPath {
        ObjectPath::from(format!("{S3_PREFIX}/{}", cidutil::dskey(cid.hash())))
    }

    async fn put(&self, cid: &Cid, data: Bytes) -> anyhow::Result<()> {
        self.store
            .put_opts(
                &Self::key(cid),
                PutPayload::from(data),
                PutOptions::default(),
            )
            .await
            .with_context(|| format!("PutObject {cid}"))?;
        Ok(())
    }

    async fn get(&self, cid: &Cid) -> anyhow::Result<Option<Bytes>> {
        let fetched = match self
            .store
            .get_opts(&Self::key(cid), GetOptions::default())
            .await
        {
            Ok(fetched) => fetched,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("GetObject {cid}")),
        };
        Ok(Some(
            fetched
                .bytes()
                .await
                .with_context(|| format!("GetObject {cid}"))?,
        ))
    }

    async fn head(&self, cid: &Cid) -> anyhow::Result<Option<u64>> {
        let options = GetOptions::new().with_head(true);
        match self.store.get_opts(&Self::key(cid), options).await {
            Ok(found) => Ok(Some(found.meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("HeadObject {cid}")),
        }
    }

    fn list(&self) -> futures::stream::BoxStream<'static, anyhow::Result<ObjectPath>> {
        self.list_under(Some(S3_PREFIX))
    }

    /// Every object key under `prefix` (the whole bucket for `None`).
    pub(super) fn list_under(
        &self,
        prefix: Option<&str>,
    ) -> futures::stream::BoxStream<'static, anyhow::Result<ObjectPath>> {
        self.store
            .list(prefix.map(ObjectPath::from).as_ref())
            .map(|r| r.map(|meta| meta.location).context("ListObjectsV2"))
            .boxed()
    }
}

/// Makes `object_store`'s usual reqwest client, wrapped to count requests
/// (retries included).
#[derive(Debug)]
struct CountingConnector {
    requests: Arc<AtomicU64>,
}

impl HttpConnector for CountingConnector {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        let inner = ReqwestConnector::default().connect(options)?;
        Ok(HttpClient::new(CountingService {
            inner,
            requests: self.requests.clone(),
        }))
    }
}

#[derive(Debug)]
struct CountingService {
    inner: HttpClient,
    requests: Arc<AtomicU64>,
}

#[async_trait::async_trait]
impl HttpService for CountingService {
    async fn call(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.inner.execute(req).await
    }
}

/// One file per block, flatfs-like: `<root>/<shard>/<key>.data`, where
/// the key is kubo's datastore key and the shard its next-to-last two
/// characters (flatfs's `next-to-last/2`). Written to a temporary file and
/// renamed, without fsync; one copy.
pub(super) struct LocalSystem {
    root: PathBuf,
}

impl LocalSystem {
    /// Files under `root`.
    pub(super) fn new(root: PathBuf) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&root).with_context(|| format!("{}", root.display()))?;
        Ok(Self { root })
    }

    fn path(&self, cid: &Cid) -> PathBuf {
        let key = cidutil::dskey(cid.hash());
        let shard = &key[key.len() - 3..key.len() - 1];
        self.root.join(shard).join(format!("{key}.data"))
    }

    async fn put(&self, cid: &Cid, data: Bytes) -> anyhow::Result<()> {
        let path = self.path(cid);
        blocking(move || {
            let dir = path.parent().expect("a shard directory");
            let tmp = dir.join(format!(".put-{:016x}.tmp", rand::random::<u64>()));
            match std::fs::write(&tmp, &data) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    std::fs::create_dir_all(dir)?;
                    std::fs::write(&tmp, &data)?;
                }
                other => other?,
            }
            std::fs::rename(&tmp, &path)
        })
        .await
        .with_context(|| format!("writing {}", self.path(cid).display()))
    }

    async fn get(&self, cid: &Cid) -> anyhow::Result<Option<Bytes>> {
        let path = self.path(cid);
        blocking(move || match std::fs::read(&path) {
            Ok(data) => Ok(Some(Bytes::from(data))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        })
        .await
        .with_context(|| format!("reading {}", self.path(cid).display()))
    }

    async fn size(&self, cid: &Cid) -> anyhow::Result<Option<u64>> {
        let path = self.path(cid);
        blocking(move || match std::fs::metadata(&path) {
            Ok(meta) => Ok(Some(meta.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        })
        .await
        .with_context(|| format!("stat {}", self.path(cid).display()))
    }

    /// Walks the shards, one directory at a time.
    fn list(&self) -> futures::stream::BoxStream<'static, anyhow::Result<PathBuf>> {
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = walk(&root, &tx) {
                let _ = tx.blocking_send(Err(e));
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx).boxed()
    }
}

fn walk(
    root: &FsPath,
    tx: &tokio::sync::mpsc::Sender<anyhow::Result<PathBuf>>,
) -> anyhow::Result<()> {
    let context = |p: &FsPath| format!("listing {}", p.display());
    for shard in std::fs::read_dir(root).with_context(|| context(root))? {
        let shard = shard.with_context(|| context(root))?;
        if !shard.file_type()?.is_dir() {
            continue;
        }
        let dir = shard.path();
        for file in std::fs::read_dir(&dir).with_context(|| context(&dir))? {
            let path = file.with_context(|| context(&dir))?.path();
            if path.extension().is_some_and(|e| e == "data") && tx.blocking_send(Ok(path)).is_err()
            {
                return Ok(());
            }
        }
    }
    Ok(())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(std::io::Error::other)?
}
