//! `garage-ipfs block put | get | stat | rm | ls`.

use crate::tools::util::outln;
use std::io::{Read, Write};
use std::path::PathBuf;

use bytes::Bytes;
use clap::Subcommand;
use futures::TryStreamExt;

use crate::cid as cidutil;
use crate::store::{BlockStore, PackStorage};
use crate::tools::util::{print_json, print_table, JsonArg, NsArg, Target};

/// Block commands.
#[derive(Debug, Subcommand)]
pub(super) enum BlockCmd {
    /// Store a block from a file or stdin; prints its CID.
    #[command(after_help = "Examples:\n  garage-ipfs block put photo.jpg\n  \
        echo hello | garage-ipfs block put --cid-codec dag-cbor --mhtype blake3")]
    Put {
        /// File to read (`-` or nothing: stdin).
        file: Option<PathBuf>,
        /// CID codec: raw, dag-pb, dag-cbor, dag-json or a number.
        #[arg(long, default_value = "raw")]
        cid_codec: String,
        /// Multihash: sha2-256, sha2-512, blake2b-256, blake3, …
        #[arg(long, default_value = "sha2-256")]
        mhtype: String,
        #[command(flatten)]
        ns: NsArg,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Write a block's bytes to stdout or a file.
    Get {
        /// The block's CID.
        cid: String,
        /// Write here instead of stdout.
        #[arg(long, short)]
        output: Option<PathBuf>,
        #[command(flatten)]
        ns: NsArg,
    },
    /// A block's size.
    Stat {
        /// The block's CID.
        cid: String,
        #[command(flatten)]
        ns: NsArg,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Remove blocks from the namespace.
    Rm {
        /// CIDs.
        #[arg(required = true)]
        cids: Vec<String>,
        #[command(flatten)]
        ns: NsArg,
        #[command(flatten)]
        json: JsonArg,
    },
    /// List the namespace's blocks (streams, one CID per line).
    Ls {
        #[command(flatten)]
        ns: NsArg,
        /// One JSON object per line, with sizes.
        #[arg(long)]
        json: bool,
    },
}

fn parse(cid: &str) -> anyhow::Result<cid::Cid> {
    let cid = cidutil::parse(cid)?;
    cidutil::check_supported(&cid)?;
    Ok(cid)
}

pub(super) async fn run(target: &Target, cmd: BlockCmd) -> anyhow::Result<()> {
    match cmd {
        BlockCmd::Put {
            file,
            cid_codec,
            mhtype,
            ns,
            json,
        } => {
            let codec = cidutil::codec_code(&cid_codec)
                .ok_or_else(|| anyhow::anyhow!("unknown --cid-codec {cid_codec:?}"))?;
            let mh = cidutil::hash_code(&mhtype)
                .ok_or_else(|| anyhow::anyhow!("unknown --mhtype {mhtype:?}"))?;
            let data = match file.as_deref() {
                None => read_stdin()?,
                Some(p) if p.as_os_str() == "-" => read_stdin()?,
                Some(p) => std::fs::read(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?,
            };
            if data.len() > cidutil::MAX_BLOCK_SIZE {
                anyhow::bail!(
                    "{} bytes is over the {}-byte block limit; for files, pack a CAR (ipfs-car) and use `garage-ipfs car import`",
                    data.len(),
                    cidutil::MAX_BLOCK_SIZE
                );
            }
            let cid = cidutil::compute(codec, mh, &data)?;
            let (_, namespace) = target.namespace(&ns).await?;
            let size = data.len();
            namespace.put(&cid, Bytes::from(data)).await?;
            if json.json {
                print_json(&serde_json::json!({"cid": cid.to_string(), "size": size}))?;
            } else {
                outln!("{cid}");
            }
        }
        BlockCmd::Get { cid, output, ns } => {
            let cid = parse(&cid)?;
            let (_, namespace) = target.namespace(&ns).await?;
            let data = namespace.get(&cid).await?.ok_or_else(|| {
                anyhow::anyhow!("block {cid} is not stored in namespace {}", ns.namespace)
            })?;
            match output {
                Some(p) => std::fs::write(&p, &data)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?,
                None => std::io::stdout().write_all(&data)?,
            }
        }
        BlockCmd::Stat { cid, ns, json } => {
            let cid = parse(&cid)?;
            let (_, namespace) = target.namespace(&ns).await?;
            let entry = namespace.stored_entry(cid.hash()).await?;
            let entry = entry.ok_or_else(|| {
                anyhow::anyhow!("block {cid} is not stored in namespace {}", ns.namespace)
            })?;
            if entry.inline.is_some() {
                if json.json {
                    print_json(&serde_json::json!({
                        "cid": cid.to_string(), "size": entry.size, "inline": true,
                    }))?;
                } else {
                    print_table(&[
                        vec!["CID:".into(), cid.to_string()],
                        vec!["Size:".into(), entry.size.to_string()],
                        vec![
                            "Stored:".into(),
                            "inline in its index entry (no Garage block)".into(),
                        ],
                    ]);
                }
                return Ok(());
            }
            let block = hex::encode(entry.hash.as_slice());
            // A pack stored as a row has no file on the nodes.
            let in_row = entry.packed.is_some_and(|p| p.storage == PackStorage::Rows);
            let path = (!in_row).then(|| format!("{}/{}/{block}", &block[..2], &block[2..4]));
            if json.json {
                let mut v = serde_json::json!({
                    "cid": cid.to_string(), "size": entry.size, "block": block,
                    "inline": false,
                });
                if let Some(path) = &path {
                    v["path_on_node"] = format!("data/{path}").into();
                }
                match entry.packed {
                    Some(p) => {
                        v["pack_offset"] = p.offset.into();
                        v["pack_storage"] = serde_json::to_value(p.storage)?;
                    }
                    None => v["generation"] = entry.generation.into(),
                }
                print_json(&v)?;
            } else {
                let block_row = match entry.packed {
                    Some(p) => vec!["In pack:".into(), format!("{block} at byte {}", p.offset)],
                    None => vec!["Garage block:".into(), block.clone()],
                };
                let where_row = match &path {
                    Some(path) => vec!["File on each node:".into(), format!("<data_dir>/{path}")],
                    None => vec![
                        "Stored:".into(),
                        "in a K2V row beside its pack's manifest (no Garage block)".into(),
                    ],
                };
                print_table(&[
                    vec!["CID:".into(), cid.to_string()],
                    vec!["Size:".into(), entry.size.to_string()],
                    block_row,
                    where_row,
                ]);
            }
        }
        BlockCmd::Rm { cids, ns, json } => {
            let cids = cids
                .iter()
                .map(|c| parse(c))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let (_, namespace) = target.namespace(&ns).await?;
            let mut results = Vec::new();
            let mut missing = 0;
            for cid in cids {
                let removed = namespace.delete(&cid).await?;
                missing += usize::from(!removed);
                results.push(serde_json::json!({"cid": cid.to_string(), "removed": removed}));
                if !json.json {
                    outln!("{cid}  {}", if removed { "removed" } else { "not stored" });
                }
            }
            if json.json {
                print_json(&results)?;
            }
            if missing > 0 {
                anyhow::bail!(
                    "{missing} block(s) were not stored in namespace {}",
                    ns.namespace
                );
            }
        }
        BlockCmd::Ls { ns, json } => {
            let (_, namespace) = target.namespace(&ns).await?;
            let mut entries = namespace.list_entries();
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            while let Some((mh, e)) = entries.try_next().await? {
                let cid = cidutil::raw_cid(mh);
                if json {
                    writeln!(
                        out,
                        "{}",
                        serde_json::json!({"cid": cid.to_string(), "size": e.size})
                    )?;
                } else {
                    writeln!(out, "{cid}")?;
                }
            }
            out.flush()?;
        }
    }
    Ok(())
}

fn read_stdin() -> anyhow::Result<Vec<u8>> {
    let mut buf = Vec::new();
    std::io::stdin()
        .take(cidutil::MAX_BLOCK_SIZE as u64 + 1)
        .read_to_end(&mut buf)?;
    Ok(buf)
}
