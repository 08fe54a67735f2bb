//! `garage-ipfs verify | repair | gc | compact`.

use crate::tools::util::outln;
use std::path::PathBuf;

use futures::TryStreamExt;
use rand::seq::IndexedRandom;

use crate::cid as cidutil;
use crate::store::verify::{BlockReport, RepairSummary, VerifySummary};
use crate::store::{CompactOptions, Namespace};
use crate::tools::util::{human_bytes, print_json, print_table, progress, JsonArg, NsArg, Target};

/// Arguments of `verify` and `repair`.
#[derive(Debug, clap::Args)]
pub(super) struct VerifyArgs {
    #[command(flatten)]
    ns: NsArg,
    /// Check every block (the default).
    #[arg(long, conflicts_with = "sample")]
    all: bool,
    /// Check K blocks picked at random.
    #[arg(long, value_name = "K")]
    sample: Option<usize>,
    #[command(flatten)]
    json: JsonArg,
}

/// Arguments of `repair`.
#[derive(Debug, clap::Args)]
pub(super) struct RepairArgs {
    #[command(flatten)]
    verify: VerifyArgs,
    /// Say what would be repaired; change nothing.
    #[arg(long)]
    dry_run: bool,
}

/// Arguments of `gc`.
#[derive(Debug, clap::Args)]
pub(super) struct GcArgs {
    #[command(flatten)]
    ns: NsArg,
    /// File of root CIDs to keep, one per line (`#` comments allowed).
    #[arg(long, value_name = "ROOTS_FILE")]
    keep: PathBuf,
    /// List what would be removed; remove nothing.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    json: JsonArg,
}

/// Arguments of `compact`.
#[derive(Debug, clap::Args)]
pub(super) struct CompactArgs {
    #[command(flatten)]
    ns: NsArg,
    /// Keep retired packs, and pack rows no manifest names, until they are
    /// this old (e.g. 24h, 30m), and at least an hour whatever this says:
    /// every connector's map must have forgotten a retired pack by then (a
    /// daemon's does within a minute), and a row may be a pack whose
    /// manifest is being written.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "24h")]
    grace: std::time::Duration,
    /// Count what would be done; write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Take the namespace's compaction lease even if another run holds it:
    /// only when that run is known dead (killed), since two runs at once
    /// can bring deleted blocks back. A dead run's lease also expires by
    /// itself two minutes after it last renewed it.
    #[arg(long)]
    break_lease: bool,
    #[command(flatten)]
    json: JsonArg,
}

async fn verify_ns(
    ns: &Namespace,
    args: &VerifyArgs,
) -> anyhow::Result<(VerifySummary, Vec<BlockReport>)> {
    let mut entries: Vec<_> = ns.list_entries().try_collect().await?;
    if let Some(k) = args.sample {
        entries = entries
            .choose_multiple(&mut rand::rng(), k)
            .cloned()
            .collect();
    }
    let bar = progress(Some(entries.len() as u64), args.json.json, "verifying");
    let summary = ns
        .verify_entries(entries, |s| {
            bar.inc(1);
            bar.set_message(format!("{} problem(s)", s.problems.len()));
        })
        .await?;
    bar.finish_and_clear();
    let problems = summary.problems.clone();
    Ok((summary, problems))
}

fn print_problems(problems: &[BlockReport]) {
    let mut rows = vec![["BLOCK", "SIZE", "REF", "REPLICAS"]
        .map(String::from)
        .to_vec()];
    for p in problems {
        let replicas = p
            .replicas
            .iter()
            .map(|r| format!("{}:{}", r.node, format!("{:?}", r.state).to_lowercase()))
            .collect::<Vec<_>>()
            .join(" ");
        let reference = match p.reference {
            crate::store::verify::RefState::Live(g) => format!("live (g{g})"),
            crate::store::verify::RefState::Missing => "MISSING".into(),
            crate::store::verify::RefState::DeadAnchor(g) => format!("DEAD ANCHOR (g{g})"),
            crate::store::verify::RefState::Inline => "inline".into(),
            crate::store::verify::RefState::Row => "pack row".into(),
        };
        rows.push(vec![p.cid.clone(), p.size.to_string(), reference, replicas]);
    }
    print_table(&rows);
}

fn print_summary(s: &VerifySummary) {
    outln!(
        "namespace {}: {} block(s) checked, {} healthy, {} under-replicated, {} lost; \
         replicas: {} missing, {} corrupt, {} unreachable; {} ref problem(s)",
        s.namespace,
        s.checked,
        s.healthy,
        s.under_replicated,
        s.lost,
        s.missing_replicas,
        s.corrupt_replicas,
        s.unreachable_replicas,
        s.ref_problems
    );
}

pub(super) async fn verify(target: &Target, args: VerifyArgs) -> anyhow::Result<()> {
    let (_, ns) = target.namespace(&args.ns).await?;
    let (summary, problems) = verify_ns(&ns, &args).await?;
    if args.json.json {
        print_json(&summary)?;
    } else {
        if !problems.is_empty() {
            print_problems(&problems);
            outln!();
        }
        print_summary(&summary);
    }
    if summary.clean() {
        Ok(())
    } else {
        anyhow::bail!(
            "verify found {} block(s) with problems (garage-ipfs repair fixes what a good copy allows)",
            summary.checked - summary.healthy
        )
    }
}

pub(super) async fn repair(target: &Target, args: RepairArgs) -> anyhow::Result<()> {
    let (_, ns) = target.namespace(&args.verify.ns).await?;
    let (summary, problems) = verify_ns(&ns, &args.verify).await?;
    let mut out = RepairSummary::new(args.dry_run);
    let bar = progress(
        Some(problems.len() as u64),
        args.verify.json.json,
        "repairing",
    );
    for p in &problems {
        ns.repair_block(p, args.dry_run, &mut out).await;
        bar.inc(1);
    }
    bar.finish_and_clear();
    if args.verify.json.json {
        print_json(&serde_json::json!({"verify": summary, "repair": out}))?;
    } else {
        print_summary(&summary);
        outln!(
            "{}: {} replica(s) {}written, {} ref(s) {}written, {} block(s) not repairable",
            if args.dry_run { "dry run" } else { "repair" },
            out.replicas_written,
            if args.dry_run { "would be " } else { "" },
            out.refs_written,
            if args.dry_run { "would be " } else { "" },
            out.failed.len()
        );
        for (cid, why) in &out.failed {
            outln!("  {cid}: {why}");
        }
    }
    if out.failed.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("{} block(s) could not be repaired", out.failed.len())
    }
}

pub(super) async fn gc(target: &Target, args: GcArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.keep)
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.keep.display()))?;
    let roots = text
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(|l| cidutil::parse(l).map_err(anyhow::Error::from))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if roots.is_empty() {
        anyhow::bail!(
            "{} names no root: refusing to collect the whole namespace (use `namespace delete` for that)",
            args.keep.display()
        );
    }
    let (_, ns) = target.namespace(&args.ns).await?;
    let summary = ns.gc(&roots, args.dry_run).await?;
    if args.json.json {
        print_json(&summary)?;
    } else {
        for c in &summary.removed {
            outln!(
                "{} {c}",
                if args.dry_run {
                    "would remove"
                } else {
                    "removed"
                }
            );
        }
        outln!(
            "{}: {} block(s) stored, {} reachable from {} root(s), {} {}",
            args.ns.namespace,
            summary.stored,
            summary.reachable,
            roots.len(),
            summary.removed.len(),
            if args.dry_run {
                "would be removed (dry run)"
            } else {
                "removed"
            }
        );
        if !summary.missing.is_empty() {
            outln!(
                "warning: {} linked block(s) are not stored (the DAG is incomplete)",
                summary.missing.len()
            );
        }
    }
    Ok(())
}

pub(super) async fn compact(target: &Target, args: CompactArgs) -> anyhow::Result<()> {
    let (_, ns) = target.namespace(&args.ns).await?;
    let opts = CompactOptions {
        grace: args.grace,
        dry_run: args.dry_run,
        break_lease: args.break_lease,
        ..Default::default()
    };
    let kept_for = args.grace.max(crate::store::MIN_AGE);
    let bar = progress(None, args.json.json, "compacting");
    let mut written = 0;
    let summary = ns
        .compact_packs(&opts, |s| {
            bar.set_position(s.packs + s.retired_kept);
            bar.set_message(format!("{} pack(s) rewritten", s.compacted));
            if s.written > written && !args.json.json {
                written = s.written;
                // One line per new pack, so that a long run shows it moves.
                bar.suspend(|| {
                    outln!(
                        "{} new pack {written}: {} pack(s) compacted so far, {} block(s) moved",
                        if args.dry_run { "would write" } else { "wrote" },
                        s.compacted,
                        s.blocks_moved,
                    )
                });
            }
        })
        .await?;
    bar.finish_and_clear();
    if args.json.json {
        return print_json(&summary);
    }
    for s in &summary.skipped {
        outln!("skipped {s}");
    }
    let verb = if args.dry_run { "would be " } else { "" };
    outln!(
        "{}: {} pack(s) holding {} block(s); {} unfinished compaction(s) {verb}finished; \
         {} compacted ({} block(s) moved, {} of deleted blocks {verb}freed after {}); {} new pack(s) in all; \
         removed {verb}{} pack(s) with no live block, {} retired pack(s), {} pack row(s) no manifest names; {} retired pack(s) kept for now",
        args.ns.namespace,
        summary.packs,
        summary.blocks,
        summary.finished,
        summary.compacted,
        summary.blocks_moved,
        human_bytes(summary.bytes_freed),
        humantime::format_duration(kept_for),
        summary.written,
        summary.spent_removed,
        summary.retired_removed,
        summary.orphans_removed,
        summary.retired_kept,
    );
    if !summary.skipped.is_empty() {
        anyhow::bail!(
            "{} pack(s) were not compacted: run `garage-ipfs verify`",
            summary.skipped.len()
        );
    }
    Ok(())
}
