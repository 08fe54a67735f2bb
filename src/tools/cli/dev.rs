//! `garage-ipfs dev`: the dev cluster, a smoke test of the store, then the
//! daemon on its default ports until Ctrl-C.

use crate::tools::util::outln;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use futures::TryStreamExt;

use super::DirArg;
use crate::cid::{self as cidutil, codec};
use crate::store::{BlockStore, GarageStore};
use crate::tools::daemon::{shutdown_signal, Daemon};

/// Arguments of `garage-ipfs dev`.
#[derive(Debug, clap::Args)]
pub(super) struct DevArgs {
    #[command(flatten)]
    dir: DirArg,
    #[command(flatten)]
    nodelay: super::cluster::NodelayArg,
    /// Stop after the smoke test instead of serving.
    #[arg(long)]
    no_serve: bool,
    /// Also run a kubo node whose blocks live on the dev cluster (repo
    /// `<dir>/kubo`, made on first use, namespace `kubo-<peer id>`), on
    /// kubo's default ports (swarm 4001, API 5001, gateway 8080).
    #[arg(long)]
    kubo: bool,
    /// kubo profiles for the repo when it is made, e.g. `test` (loopback
    /// only, random ports, no bootstrap peers).
    #[arg(long = "kubo-profile", value_delimiter = ',', requires = "kubo")]
    kubo_profiles: Vec<String>,
}

pub(super) async fn run(args: DevArgs) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let cluster = super::cluster::up(&args.dir, &args.nodelay).await?;
    outln!(
        "dev cluster: 3 garage nodes healthy in {:.1?} (dir {})",
        t0.elapsed(),
        cluster.dir.display()
    );
    for n in &cluster.nodes {
        outln!(
            "  node{}  rpc {}  s3 {}  id {}",
            n.index,
            n.rpc,
            n.s3,
            &n.id[..16]
        );
    }

    let config = crate::config::read_config(&cluster.connector_config_path())?;
    let t = Instant::now();
    let daemon = Daemon::start(config.clone()).await?;
    let conn = daemon.store.connector();
    outln!(
        "connector: joined as a roleless peer in {:.1?} (layout version {}, write quorum {})",
        t.elapsed(),
        conn.layout_version(),
        conn.write_quorum()?
    );
    smoke_test(&daemon.store).await?;
    if args.no_serve {
        conn.shutdown();
        return Ok(());
    }
    let [gw, rpc, grpc] = daemon.listeners.addrs()?;
    outln!(
        "\ndaemon serving namespace {:?} (anonymous writes allowed on loopback):\n  \
         trustless gateway  http://{gw}/ipfs/<cid>?format=raw\n  \
         kubo RPC           http://{rpc}/api/v0/\n  \
         gRPC               {grpc} (garage_ipfs.v1.Blockstore)\n\
         Try:\n  \
         echo hello | curl -s -F file=@- -X POST 'http://{rpc}/api/v0/block/put'\n  \
         curl -s 'http://{gw}/ipfs/bafkreifywdnjb3ggunqf7j56nbrhf5mkxsckblxkxyi6nxpziafmegi5g4?format=raw'\n\
         Ctrl-C stops the daemon; the cluster keeps running (garage-ipfs cluster down).",
        daemon.options.namespace
    );
    // The kubo node starts once the daemon serves (kubo writes a block at
    // init and at start), and stops before it.
    let node = Arc::new(Mutex::new(None));
    if args.kubo {
        let (store, slot, dir) = (daemon.store.clone(), node.clone(), cluster.dir.clone());
        tokio::spawn(async move {
            match super::kubo::dev_node(&store, &config, &dir, &args.kubo_profiles).await {
                Ok(n) => {
                    outln!(
                        "\nkubo node {} on the dev cluster (repo {}):\n  \
                         API      {}\n  gateway  {}\n\
                         Try:\n  echo hello | IPFS_PATH={} {} add\n",
                        n.peer_id().unwrap_or_default(),
                        n.repo.display(),
                        n.api_url().unwrap_or_default(),
                        n.gateway_url().unwrap_or_default(),
                        n.repo.display(),
                        n.bin.display(),
                    );
                    *slot.lock().unwrap() = Some(n);
                }
                Err(e) => eprintln!("the kubo node did not start: {e:#}"),
            }
        });
    }
    let shutdown = async move {
        shutdown_signal().await;
        let n = node.lock().unwrap().take();
        if let Some(n) = n {
            let _ = tokio::task::spawn_blocking(move || n.stop()).await;
            outln!("kubo node stopped");
        }
    };
    daemon.serve(shutdown).await?;
    outln!("daemon stopped; the dev cluster is still running (garage-ipfs cluster down)");
    Ok(())
}

async fn smoke_test(store: &std::sync::Arc<GarageStore>) -> anyhow::Result<()> {
    let ns = store.namespace("dev-smoke")?;
    let blocks = [
        (
            codec::RAW,
            0x12,
            Bytes::from_static(b"hello from garage-ipfs"),
        ),
        (
            codec::DAG_CBOR,
            0x1e,
            Bytes::from(vec![0xa1, 0x61, 0x61, 0x01]),
        ),
        (codec::RAW, 0x12, Bytes::from(vec![7u8; 256 * 1024])),
    ];
    outln!("smoke test in namespace {:?}:", ns.name());
    for (codec, mh, data) in &blocks {
        let cid = cidutil::compute(*codec, *mh, data)?;
        let t = Instant::now();
        ns.put(&cid, data.clone()).await?;
        let put = t.elapsed();
        let t = Instant::now();
        let back = ns
            .get(&cid)
            .await?
            .ok_or_else(|| anyhow::anyhow!("{cid} missing right after its put"))?;
        anyhow::ensure!(back == *data, "{cid} read back different bytes");
        outln!(
            "  put {cid} ({} bytes) in {put:.1?}, read back and verified in {:.1?}",
            data.len(),
            t.elapsed()
        );
    }
    let listed: Vec<_> = ns.list().try_collect().await?;
    outln!("  list: {} block(s) in the namespace", listed.len());
    for (codec, mh, data) in &blocks {
        let cid = cidutil::compute(*codec, *mh, data)?;
        anyhow::ensure!(
            listed.contains(cid.hash()),
            "{cid} is missing from the listing"
        );
    }
    outln!("smoke test passed");
    Ok(())
}
