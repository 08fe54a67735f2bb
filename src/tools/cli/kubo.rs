//! `garage-ipfs kubo init | build`: kubo nodes whose blocks live in Garage.

use crate::tools::util::outln;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Subcommand;
use serde::Serialize;

use crate::config::{ApiConfig, Config};
use crate::harness::kubo::{self, Flavour, GarageSpec, KuboConfig, TokenSource};
use crate::store::GarageStore;
use crate::tools::util::{print_json, JsonArg, Target};

/// kubo commands.
#[derive(Debug, Subcommand)]
pub(super) enum KuboCmd {
    /// Make a kubo repo whose blocks (`/blocks`) live in a garage-ipfs
    /// namespace, one of its own by default (`kubo-<peer id>`). Pins, MFS
    /// and keys stay in the repo, on kubo's local default. The daemon
    /// (`garage-ipfs serve` or `dev`) must be running: `ipfs init
    /// --empty-repo` adds no help files but still writes and pins the
    /// empty directory (the MFS root), through the daemon.
    #[command(after_help = "Examples:\n  \
        garage-ipfs kubo init --repo ~/.ipfs-garage\n  \
        IPFS_PATH=~/.ipfs-garage target/kubo/ipfs daemon\n  \
        garage-ipfs kubo init --repo /srv/ipfs --token-file /etc/garage-ipfs/write_token --profile server")]
    Init(InitArgs),
    /// Benchmark kubo on garage-ipfs against kubo on go-ds-s3 (the same
    /// cluster's S3 API, with and without kubo's Bloom filter) and kubo on
    /// flatfs, on a fresh three-node cluster: add, restart, cat cold and
    /// warm, a bitswap fetch, an absent-CID flood, refs local, repo gc.
    #[command(after_help = "Examples:\n  \
        garage-ipfs kubo bench --json kubo-bench.json\n  \
        garage-ipfs kubo bench --size-mib 16 --absent 1000 --systems garage,s3")]
    Bench(BenchArgs),
    /// Build kubo with the garage-ipfs datastore plugin (`go build` of
    /// kubo-plugin/; needs Go and the source tree) and print its path.
    #[command(after_help = "Example:\n  garage-ipfs kubo build --out /usr/local/bin/ipfs")]
    Build {
        /// Where to write the binary (default: target/kubo/ipfs in the source tree).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// Arguments of `kubo bench`.
#[derive(Debug, clap::Args)]
pub(super) struct BenchArgs {
    /// Size of the file added, MiB.
    #[arg(long, default_value_t = 256)]
    size_mib: usize,
    /// Absent CIDs node B asks for.
    #[arg(long, default_value_t = 10_000)]
    absent: usize,
    /// kubo's Datastore.BloomFilterSize for the s3-bloom system, bytes.
    #[arg(long, default_value_t = 1 << 20)]
    bloom_bytes: u64,
    /// Systems to compare.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "garage,s3,s3-bloom,flatfs"
    )]
    systems: Vec<crate::tools::bench::kubo::Kind>,
    /// Give our daemon node 1's data directory (`colocated_data_dirs`), as
    /// a daemon beside a storage node runs: cats read block files from
    /// disk, checked against their CIDs, where go-ds-s3's GETs are answered
    /// by node 1's gateway from its own copy.
    #[arg(long)]
    colocated: bool,
    #[command(flatten)]
    cluster: crate::tools::util::OwnCluster,
    /// Also write the results as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

/// Arguments of `kubo init`.
#[derive(Debug, clap::Args)]
pub(super) struct InitArgs {
    /// The repo directory to create (kubo's IPFS_PATH).
    #[arg(long)]
    repo: PathBuf,
    /// Namespace for the node's blocks (default: kubo-<peer id>, one per
    /// node, so that one node's `ipfs repo gc` never touches another's
    /// blocks). Registered if new.
    #[arg(long, short)]
    namespace: Option<String>,
    /// The daemon's gRPC address (default: `[api] grpc_addr` of --config).
    #[arg(long)]
    endpoint: Option<String>,
    /// File holding the daemon's write token, read by kubo at start
    /// (default: `[api] write_token_file` of --config, if set).
    #[arg(long, conflicts_with = "token_env")]
    token_file: Option<PathBuf>,
    /// Environment variable holding the write token in kubo's
    /// environment (e.g. GARAGE_IPFS_WRITE_TOKEN).
    #[arg(long)]
    token_env: Option<String>,
    /// Deadline of one datastore call (Go duration).
    #[arg(long, default_value = "30s")]
    timeout: String,
    /// kubo profiles for the new config (`ipfs init --profile`), e.g.
    /// `server`, or `test` for a node that stays off the public network.
    #[arg(long = "profile", value_delimiter = ',')]
    profiles: Vec<String>,
    /// The kubo binary (default: GARAGE_IPFS_KUBO_BIN, else built from
    /// kubo-plugin/ with go).
    #[arg(long)]
    ipfs: Option<PathBuf>,
    #[command(flatten)]
    json: JsonArg,
}

#[derive(Serialize)]
struct InitReport {
    repo: PathBuf,
    peer_id: String,
    namespace: String,
    endpoint: String,
    ipfs: PathBuf,
}

pub(super) async fn run(target: &Target, cmd: KuboCmd) -> anyhow::Result<()> {
    match cmd {
        KuboCmd::Build { out } => {
            let out = out.unwrap_or_else(|| kubo::build_dir().join("ipfs"));
            let out2 = out.clone();
            tokio::task::spawn_blocking(move || kubo::build(Flavour::Garage, &out2)).await??;
            outln!("{}", out.display());
            Ok(())
        }
        KuboCmd::Init(args) => init(target, args).await,
        KuboCmd::Bench(args) => bench(args).await,
    }
}

async fn bench(args: BenchArgs) -> anyhow::Result<()> {
    use crate::tools::bench::kubo;
    let mut systems: Vec<kubo::Kind> = args.systems.clone();
    systems.sort();
    systems.dedup();
    let report =
        crate::tools::util::in_work_dir(args.cluster.dir.clone(), "kubo-bench", |dir| async move {
            let opts = kubo::Options {
                dir,
                size_mib: args.size_mib,
                absent: args.absent,
                bloom_bytes: args.bloom_bytes,
                nodelay: !args.cluster.no_nodelay,
                db_engine: args.cluster.db_engine,
                systems,
                colocated: args.colocated,
            };
            kubo::run(&opts).await
        })
        .await?;
    outln!("{}", kubo::tables(&report));
    outln!(
        "go-ds-s3's wall time over ours: {}",
        report
            .speedup_vs_s3
            .iter()
            .map(|(w, r)| format!("{w} {r:.2}x"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")?;
        eprintln!("kubo bench: results written to {}", path.display());
    }
    Ok(())
}

async fn init(target: &Target, args: InitArgs) -> anyhow::Result<()> {
    let config = target.config()?;
    let spec_base = spec_from(&config.api, &args)?;
    let store = target.store().await?;
    let report = init_repo(&store, &args.repo, spec_base, &args.profiles, args.ipfs).await?;
    if args.json.json {
        print_json(&report)?;
    } else {
        outln!(
            "kubo repo {} (peer {}): blocks in namespace {:?} through the daemon at {}\n\
             Start it with:\n  IPFS_PATH={} {} daemon",
            report.repo.display(),
            report.peer_id,
            report.namespace,
            report.endpoint,
            report.repo.display(),
            report.ipfs.display()
        );
    }
    Ok(())
}

/// The datastore spec `kubo init` writes, before the namespace is known:
/// the daemon's address and token source from the flags, else from the
/// daemon's own config.
fn spec_from(api: &ApiConfig, args: &InitArgs) -> anyhow::Result<GarageSpec> {
    let endpoint = match &args.endpoint {
        Some(e) => e.clone(),
        None => reachable(api.grpc_addr).to_string(),
    };
    let token = match (&args.token_file, &args.token_env, &api.write_token_file) {
        (Some(f), _, _) | (None, None, Some(f)) => TokenSource::File(std::path::absolute(f)?),
        (None, Some(v), _) => TokenSource::Env(v.clone()),
        (None, None, None) => TokenSource::None,
    };
    Ok(GarageSpec {
        namespace: String::new(),
        endpoint,
        token,
        timeout: Some(args.timeout.clone()),
    })
}

/// An address to reach a listener by: its own, or loopback for a wildcard.
fn reachable(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    }
}

/// Makes a kubo repo on garage-ipfs: a config from kubo, the namespace
/// (registered), the repo. Shared with `dev --kubo`.
async fn init_repo(
    store: &Arc<GarageStore>,
    repo: &Path,
    mut spec: GarageSpec,
    profiles: &[String],
    ipfs: Option<PathBuf>,
) -> anyhow::Result<InitReport> {
    if repo.join("config").exists() {
        anyhow::bail!("{} already holds a kubo repo", repo.display());
    }
    let bin = match ipfs {
        Some(b) => b,
        None => tokio::task::spawn_blocking(|| kubo::kubo_binary(Flavour::Garage)).await??,
    };
    let (b, r, p) = (bin.clone(), repo.to_path_buf(), profiles.to_vec());
    let mut config =
        tokio::task::spawn_blocking(move || KuboConfig::generate(&b, &r, &p)).await??;
    if spec.namespace.is_empty() {
        spec.namespace = config.default_namespace();
    }
    store.create_namespace(&spec.namespace).await?;
    config.use_garage(&spec)?;
    let (b, r, c) = (bin.clone(), repo.to_path_buf(), config.clone());
    tokio::task::spawn_blocking(move || c.init_repo(&b, &r)).await??;
    Ok(InitReport {
        repo: std::path::absolute(repo)?,
        peer_id: config.peer_id,
        namespace: spec.namespace,
        endpoint: spec.endpoint,
        ipfs: bin,
    })
}

/// `dev --kubo`: a kubo node on the dev daemon, its repo in the cluster
/// directory (made on first use), started and left to run until the
/// returned node is dropped.
pub(super) async fn dev_node(
    store: &Arc<GarageStore>,
    config: &Config,
    dir: &Path,
    profiles: &[String],
) -> anyhow::Result<kubo::KuboNode> {
    let repo = dir.join("kubo");
    let bin = tokio::task::spawn_blocking(|| kubo::kubo_binary(Flavour::Garage)).await??;
    if !repo.join("config").exists() {
        let spec = GarageSpec {
            namespace: String::new(),
            endpoint: reachable(config.api.grpc_addr).to_string(),
            token: TokenSource::None,
            timeout: None,
        };
        let report = init_repo(store, &repo, spec, profiles, Some(bin.clone())).await?;
        outln!(
            "kubo repo {} made: blocks in namespace {:?}",
            repo.display(),
            report.namespace
        );
    }
    let node = kubo::KuboNode::new(bin, repo);
    tokio::task::spawn_blocking(move || {
        node.start(std::time::Duration::from_secs(120))
            .map(|()| node)
    })
    .await?
    .map_err(Into::into)
}
