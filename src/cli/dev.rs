//! `garage-ipfs dev`: the dev cluster plus a smoke test of the store.

use std::time::Instant;

use bytes::Bytes;
use futures::TryStreamExt;

use super::DirArg;
use crate::cid::{self as cidutil, codec};
use crate::store::{BlockStore, GarageStore};
use crate::Connector;

/// Arguments of `garage-ipfs dev`.
#[derive(Debug, clap::Args)]
pub struct DevArgs {
    #[command(flatten)]
    dir: DirArg,
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let cluster = super::cluster::up(&args.dir).await?;
    println!(
        "dev cluster: 3 garage nodes healthy in {:.1?} (dir {})",
        t0.elapsed(),
        cluster.dir.display()
    );
    for n in &cluster.nodes {
        println!(
            "  node{}  rpc {}  s3 {}  id {}",
            n.index,
            n.rpc,
            n.s3,
            &n.id[..16]
        );
    }

    let config = crate::config::read_config(&cluster.connector_config_path())?;
    let t = Instant::now();
    let conn = Connector::connect(config).await?;
    println!(
        "connector: joined as a roleless peer in {:.1?} (layout version {}, write quorum {})",
        t.elapsed(),
        conn.layout_version(),
        conn.write_quorum()?
    );

    let store = GarageStore::new(conn.clone());
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
    println!("smoke test in namespace {:?}:", ns.name());
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
        println!(
            "  put {cid} ({} bytes) in {put:.1?}, read back and verified in {:.1?}",
            data.len(),
            t.elapsed()
        );
    }
    let listed: Vec<_> = ns.list().try_collect().await?;
    println!("  list: {} block(s) in the namespace", listed.len());
    for (codec, mh, data) in &blocks {
        let cid = cidutil::compute(*codec, *mh, data)?;
        anyhow::ensure!(
            listed.contains(cid.hash()),
            "{cid} is missing from the listing"
        );
    }
    println!("smoke test passed. Stop the cluster with: garage-ipfs cluster down");
    conn.shutdown();
    Ok(())
}
