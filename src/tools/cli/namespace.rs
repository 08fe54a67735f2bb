//! `garage-ipfs namespace create | list | info | delete`.

use crate::tools::util::outln;
use clap::Subcommand;
use futures::TryStreamExt;
use serde::Serialize;

use crate::store::{index, BlockStore};
use crate::tools::util::{human_bytes, print_json, print_table, progress, JsonArg, Target};

/// Namespace commands.
#[derive(Debug, Subcommand)]
pub(super) enum NamespaceCmd {
    /// Create a namespace (idempotent).
    #[command(after_help = "Example:\n  garage-ipfs namespace create photos")]
    Create {
        /// Name: 1 to 64 of A-Z a-z 0-9 . _ -
        name: String,
        #[command(flatten)]
        json: JsonArg,
    },
    /// List namespaces with their block counts.
    List {
        #[command(flatten)]
        json: JsonArg,
    },
    /// Blocks and bytes of a namespace (lists its index).
    Info {
        /// Namespace name.
        name: String,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Delete a namespace: its refs and index entries. Blocks that other
    /// namespaces hold stay.
    #[command(after_help = "Example:\n  garage-ipfs namespace delete scratch --yes")]
    Delete {
        /// Namespace name.
        name: String,
        /// Do it (without this, only say what would go).
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        json: JsonArg,
    },
}

#[derive(Serialize)]
struct Info {
    name: String,
    id: String,
    created_ms: u64,
    blocks: u64,
    bytes: u64,
}

pub(super) async fn run(target: &Target, cmd: NamespaceCmd) -> anyhow::Result<()> {
    let store = target.store().await?;
    match cmd {
        NamespaceCmd::Create { name, json } => {
            store.create_namespace(&name).await?;
            let record = store.namespace_record(&name).await?.expect("just created");
            if json.json {
                print_json(&record)?;
            } else {
                outln!("namespace {name} ready");
            }
        }
        NamespaceCmd::List { json } => {
            let mut rows = Vec::new();
            for r in store.list_namespaces().await? {
                let blocks = store.count_blocks(&r.name).await?;
                rows.push(serde_json::json!({"name": r.name, "created_ms": r.created_ms, "blocks": blocks}));
            }
            if json.json {
                print_json(&rows)?;
            } else {
                let mut t = vec![vec!["NAMESPACE".to_string(), "BLOCKS".to_string()]];
                t.extend(rows.iter().map(|r| {
                    vec![
                        r["name"].as_str().unwrap_or_default().to_string(),
                        r["blocks"].to_string(),
                    ]
                }));
                print_table(&t);
            }
        }
        NamespaceCmd::Info { name, json } => {
            let ns = store.open_namespace(&name).await?;
            let record = store
                .namespace_record(&name)
                .await?
                .expect("open checked it");
            let bar = progress(None, json.json, "listing");
            let (mut blocks, mut bytes) = (0u64, 0u64);
            let mut entries = ns.list_entries();
            while let Some((_, e)) = entries.try_next().await? {
                blocks += 1;
                bytes += e.size as u64;
                bar.inc(1);
            }
            bar.finish_and_clear();
            let info = Info {
                id: hex::encode(index::namespace_id(&name).as_slice()),
                name,
                created_ms: record.created_ms,
                blocks,
                bytes,
            };
            if json.json {
                print_json(&info)?;
            } else {
                print_table(&[
                    vec!["Namespace:".into(), info.name.clone()],
                    vec!["Index bucket:".into(), info.id.clone()],
                    vec!["Blocks:".into(), info.blocks.to_string()],
                    vec![
                        "Bytes:".into(),
                        format!("{} ({})", info.bytes, human_bytes(info.bytes)),
                    ],
                ]);
            }
        }
        NamespaceCmd::Delete { name, yes, json } => {
            let ns = store.open_namespace(&name).await?;
            if !yes {
                let n = ns
                    .list()
                    .try_fold(0u64, |n, _| async move { Ok(n + 1) })
                    .await?;
                anyhow::bail!(
                    "namespace {name} holds {n} block(s); run again with --yes to delete it \
                     (blocks other namespaces hold stay)"
                );
            }
            let bar = progress(None, json.json, "deleting");
            let removed = store
                .delete_namespace(&name, |n| bar.set_position(n))
                .await?;
            bar.finish_and_clear();
            if json.json {
                print_json(
                    &serde_json::json!({"name": name, "deleted": true, "blocks_removed": removed}),
                )?;
            } else {
                outln!("namespace {name} deleted ({removed} block(s) removed from it)");
            }
        }
    }
    Ok(())
}
