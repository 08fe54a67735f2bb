//! `garage-ipfs car import | export`.

use crate::tools::util::outln;
use std::io::Write;
use std::path::PathBuf;

use clap::Subcommand;
use futures::TryStreamExt;

use crate::cid as cidutil;
use crate::dag::{self, Scope};
use crate::tools::util::{human_bytes, print_json, progress, JsonArg, NsArg, Target};

/// CAR commands.
#[derive(Debug, Subcommand)]
pub(super) enum CarCmd {
    /// Import a CARv1: every block verified and stored; refused if
    /// truncated, corrupt or missing part of its roots' DAGs.
    #[command(
        after_help = "Example:\n  npx ipfs-car pack photos/ --output photos.car && garage-ipfs car import photos.car"
    )]
    Import {
        /// The CAR file (`-`: stdin).
        file: PathBuf,
        #[command(flatten)]
        ns: NsArg,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Export the DAG under a CID as a CARv1 (depth-first, no duplicates).
    #[command(after_help = "Example:\n  garage-ipfs car export bafy... > dag.car")]
    Export {
        /// Root CID.
        cid: String,
        /// Write here instead of stdout.
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Only the root block.
        #[arg(long)]
        root_only: bool,
        #[command(flatten)]
        ns: NsArg,
        #[command(flatten)]
        json: JsonArg,
    },
}

pub(super) async fn run(target: &Target, cmd: CarCmd) -> anyhow::Result<()> {
    match cmd {
        CarCmd::Import { file, ns, json } => {
            let (_, namespace) = target.namespace(&ns).await?;
            let (reader, total): (Box<dyn tokio::io::AsyncRead + Unpin + Send>, Option<u64>) =
                if file.as_os_str() == "-" {
                    (Box::new(tokio::io::stdin()), None)
                } else {
                    let f = tokio::fs::File::open(&file)
                        .await
                        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
                    let len = f.metadata().await?.len();
                    (Box::new(f), Some(len))
                };
            let bar = progress(total, json.json, "importing");
            if total.is_some() {
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{prefix} [{bar:30}] {bytes}/{total_bytes} {msg} ({bytes_per_sec}, eta {eta})",
                    )
                    .expect("valid template")
                    .progress_chars("=> "),
                );
            }
            let reader = bar.wrap_async_read(tokio::io::BufReader::new(reader));
            let started = std::time::Instant::now();
            let summary = dag::import_car(&namespace, reader, |s| {
                bar.set_message(format!("{} blocks", s.blocks));
            })
            .await;
            bar.finish_and_clear();
            let summary = summary?;
            let secs = started.elapsed().as_secs_f64();
            if json.json {
                print_json(&serde_json::json!({
                    "roots": summary.roots, "blocks": summary.blocks, "bytes": summary.bytes,
                    "seconds": secs, "namespace": ns.namespace,
                }))?;
            } else {
                outln!(
                    "imported {} block(s), {} in {secs:.1}s into namespace {}",
                    summary.blocks,
                    human_bytes(summary.bytes),
                    ns.namespace
                );
                for r in &summary.roots {
                    outln!("root {r}");
                }
            }
        }
        CarCmd::Export {
            cid,
            output,
            root_only,
            ns,
            json,
        } => {
            let cid = cidutil::parse(&cid)?;
            let (_, namespace) = target.namespace(&ns).await?;
            let scope = if root_only { Scope::Block } else { Scope::All };
            let mut stream = dag::car_stream(namespace, cid, scope)
                .await?
                .ok_or_else(|| {
                    anyhow::anyhow!("block {cid} is not stored in namespace {}", ns.namespace)
                })?;
            let mut out: Box<dyn Write> = match &output {
                Some(p) => Box::new(std::io::BufWriter::new(
                    std::fs::File::create(p)
                        .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?,
                )),
                None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
            };
            let bar = progress(None, json.json, "exporting");
            let (mut blocks, mut bytes) = (0u64, 0u64);
            while let Some(chunk) = stream.try_next().await? {
                out.write_all(&chunk)?;
                bytes += chunk.len() as u64;
                blocks += 1;
                bar.set_position(blocks.saturating_sub(1));
            }
            out.flush()?;
            bar.finish_and_clear();
            if json.json {
                let summary = serde_json::json!({"root": cid.to_string(), "blocks": blocks.saturating_sub(1), "bytes": bytes});
                // With --json and no --output the CAR is on stdout: the
                // summary goes to stderr.
                if output.is_some() {
                    print_json(&summary)?;
                } else {
                    eprintln!("{}", serde_json::to_string(&summary)?);
                }
            } else {
                eprintln!(
                    "exported {} block(s), {}",
                    blocks.saturating_sub(1),
                    human_bytes(bytes)
                );
            }
        }
    }
    Ok(())
}
