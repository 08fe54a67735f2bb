//! The workloads: what each one stores or asks, as ops the driver runs,
//! and the data they use (random blocks, absent CIDs, uniform and Zipf
//! picks).

use super::*;

/// A workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum)]
pub enum Workload {
    /// Puts of new 256 KiB blocks.
    #[value(name = "put_256k")]
    Put256k,
    /// Puts of new 1 KiB blocks.
    #[value(name = "put_1k")]
    Put1k,
    /// Gets of stored 256 KiB blocks, uniformly.
    #[value(name = "get_256k")]
    Get256k,
    /// Gets of stored 1 KiB blocks, uniformly.
    #[value(name = "get_1k")]
    Get1k,
    /// Gets of stored 1 KiB blocks, Zipf-distributed (s = 1.1).
    #[value(name = "get_hot")]
    GetHot,
    /// Lookups (has / get_size) of blocks never stored.
    #[value(name = "has_absent")]
    HasAbsent,
    /// Lookups (has / get_size) of stored blocks.
    #[value(name = "has_present")]
    HasPresent,
    /// Full listings.
    #[value(name = "list")]
    List,
}

impl Workload {
    /// Every workload, in run order.
    pub const ALL: [Workload; 8] = [
        Workload::Put256k,
        Workload::Put1k,
        Workload::Get256k,
        Workload::Get1k,
        Workload::GetHot,
        Workload::HasAbsent,
        Workload::HasPresent,
        Workload::List,
    ];

    /// The name in reports and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Put256k => "put_256k",
            Workload::Put1k => "put_1k",
            Workload::Get256k => "get_256k",
            Workload::Get1k => "get_1k",
            Workload::GetHot => "get_hot",
            Workload::HasAbsent => "has_absent",
            Workload::HasPresent => "has_present",
            Workload::List => "list",
        }
    }

    /// Timed ops at concurrency 16 and 1, before scaling (listings for
    /// `list`, which are not scaled).
    pub fn default_ops(self) -> (usize, usize) {
        match self {
            Workload::Put256k => (1_000, 200),
            Workload::Put1k => (10_000, 1_000),
            Workload::Get256k => (2_000, 400),
            Workload::Get1k => (10_000, 1_000),
            Workload::GetHot => (20_000, 2_000),
            Workload::HasAbsent => (100_000, 10_000),
            Workload::HasPresent => (20_000, 2_000),
            Workload::List => (16, 2),
        }
    }

    /// Whether the workload moves block bytes (MiB/s makes sense).
    pub(super) fn moves_data(self) -> bool {
        matches!(
            self,
            Workload::Put256k
                | Workload::Put1k
                | Workload::Get256k
                | Workload::Get1k
                | Workload::GetHot
        )
    }
}

/// `n` blocks of random bytes and their CIDv1 (raw, sha2-256).
pub(super) async fn random_blocks(n: usize, size: usize) -> anyhow::Result<Vec<(Cid, Bytes)>> {
    tokio::task::spawn_blocking(move || {
        let mut rng = rand::rng();
        (0..n)
            .map(|_| {
                let mut data = vec![0u8; size];
                rng.fill_bytes(&mut data);
                let cid = cidutil::compute(codec::RAW, SHA2_256, &data)?;
                Ok((cid, Bytes::from(data)))
            })
            .collect()
    })
    .await?
}

/// `n` CIDs (raw, sha2-256) of random digests: blocks nobody stored.
pub(super) fn absent_cids(n: usize) -> Vec<Cid> {
    let mut rng = rand::rng();
    (0..n)
        .map(|_| {
            let digest: [u8; 32] = rng.random();
            let mh = Multihash::<64>::wrap(SHA2_256, &digest).expect("32-byte digest");
            Cid::new_v1(codec::RAW, mh)
        })
        .collect()
}

/// Indices into a set of `len`, uniformly, the same for every system.
///
/// Successive permutations of the set: no block is read twice before every
/// block was read once, so a cache only helps once a phase outgrows the
/// set (the cold-read workloads measure the cluster, `get_hot` the cache).
pub(super) fn uniform_picks(seed: u64, n: usize, len: usize) -> Vec<usize> {
    use rand::seq::SliceRandom;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut picks = Vec::with_capacity(n);
    while picks.len() < n && len > 0 {
        let mut round: Vec<usize> = (0..len).collect();
        round.shuffle(&mut rng);
        picks.extend(round.into_iter().take(n - picks.len()));
    }
    picks
}

/// Ranks into a set of `len`, Zipf-distributed: rank 0 is the hottest.
pub(super) fn zipf_picks(seed: u64, n: usize, len: usize, s: f64) -> anyhow::Result<Vec<usize>> {
    let zipf = rand_distr::Zipf::new(len as f64, s).context("Zipf distribution")?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    Ok((0..n)
        .map(|_| (rng.sample(zipf) as usize).clamp(1, len) - 1)
        .collect())
}

pub(super) fn put_op(sys: Arc<System>, blocks: Arc<Vec<(Cid, Bytes)>>, offset: usize) -> OpFn {
    Arc::new(move |i| {
        let sys = sys.clone();
        let (cid, data) = blocks[offset + i].clone();
        async move {
            let len = data.len();
            sys.put(cid, data).await?;
            Ok(Done::op(len))
        }
        .boxed()
    })
}

pub(super) fn get_op(
    sys: Arc<System>,
    cids: Arc<Vec<Cid>>,
    picks: Arc<Vec<usize>>,
    offset: usize,
    size: usize,
) -> OpFn {
    Arc::new(move |i| {
        let sys = sys.clone();
        let cid = cids[picks[offset + i]];
        async move {
            let data = sys
                .get(&cid)
                .await?
                .with_context(|| format!("{}: stored block {cid} is missing", sys.kind().name()))?;
            anyhow::ensure!(
                data.len() == size,
                "{}: block {cid} read back {} bytes, not {size}",
                sys.kind().name(),
                data.len()
            );
            Ok(Done::op(size))
        }
        .boxed()
    })
}

/// Even ops ask `has`, odd ops `get_size` (bitswap asks both), and check
/// the answer.
pub(super) fn lookup_op(
    sys: Arc<System>,
    cids: Arc<Vec<Cid>>,
    picks: Option<Arc<Vec<usize>>>,
    offset: usize,
    expect_size: Option<u64>,
) -> OpFn {
    Arc::new(move |i| {
        let sys = sys.clone();
        let cid = match &picks {
            Some(picks) => cids[picks[offset + i]],
            None => cids[offset + i],
        };
        async move {
            let got = if i % 2 == 0 {
                let present = sys.has(&cid).await?;
                (present != expect_size.is_some()).then(|| format!("has = {present}"))
            } else {
                let size = sys.get_size(&cid).await?;
                (size != expect_size).then(|| format!("get_size = {size:?}"))
            };
            if let Some(got) = got {
                anyhow::bail!(
                    "{}: {cid}: {got}, expected size {expect_size:?}",
                    sys.kind().name()
                );
            }
            Ok(Done::op(0))
        }
        .boxed()
    })
}

pub(super) fn list_op(sys: Arc<System>, at_least: u64) -> OpFn {
    Arc::new(move |_| {
        let sys = sys.clone();
        async move {
            let (count, samples) = sys.list().await?;
            anyhow::ensure!(
                count >= at_least,
                "{}: listed {count} blocks, stored at least {at_least}",
                sys.kind().name()
            );
            Ok(Done {
                bytes: 0,
                units: count,
                samples: Some(samples),
            })
        }
        .boxed()
    })
}
