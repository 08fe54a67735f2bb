//! What the tools share: the config, the connection, the own-cluster
//! options, tables, progress bars and JSON output.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;

use crate::garage::Role;
use crate::store::{GarageStore, Namespace};
use crate::Connector;

/// Where the connector config is, unless `--config` says otherwise.
pub const DEFAULT_CONFIG: &str = ".garage-ipfs/dev/connector.toml";

/// `--config` and `--namespace` of the admin commands.
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// Connector config (default: the dev cluster's).
    #[arg(long, short, global = true, env = "GARAGE_IPFS_CONFIG", default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
}

/// `--dir` and `--no-nodelay` of the commands that start a cluster of
/// their own (bench, kubo bench, soak).
#[derive(Debug, Clone, clap::Args)]
pub struct OwnCluster {
    /// Cluster directory (and kubo repos), kept afterwards (default: a
    /// fresh temporary directory, removed at the end). Its nodes must not
    /// be running.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Run the garage nodes stock, without our TCP_NODELAY preload shim.
    #[arg(long)]
    pub no_nodelay: bool,
    /// The nodes' metadata engine, lmdb (Garage's default) or sqlite
    /// (default: what a reused --dir holds, else lmdb).
    #[arg(long, value_name = "ENGINE")]
    pub db_engine: Option<crate::harness::DbEngine>,
}

/// `--namespace`.
#[derive(Debug, Clone, clap::Args)]
pub struct NsArg {
    /// Namespace.
    #[arg(long, short, env = "GARAGE_IPFS_NAMESPACE", default_value = "default")]
    pub namespace: String,
}

/// `--json`.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct JsonArg {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

impl Target {
    /// Joins the cluster as a client (its own key in `state_dir/cli`).
    pub async fn store(&self) -> anyhow::Result<Arc<GarageStore>> {
        let conn = Connector::connect_as(self.config()?, Role::Client).await?;
        Ok(GarageStore::new(conn))
    }

    /// Reads the connector config.
    pub fn config(&self) -> anyhow::Result<crate::config::Config> {
        crate::config::read_config(&self.config).map_err(|e| {
            if !self.config.exists() && self.config.as_os_str() == DEFAULT_CONFIG {
                anyhow::anyhow!(
                    "{e}\n(no --config given and no dev cluster here: run `garage-ipfs dev` \
                     or `garage-ipfs cluster up`, or pass --config FILE)"
                )
            } else {
                e.into()
            }
        })
    }

    /// Joins and opens an existing namespace.
    pub async fn namespace(&self, ns: &NsArg) -> anyhow::Result<(Arc<GarageStore>, Namespace)> {
        let store = self.store().await?;
        let namespace = store.open_namespace(&ns.namespace).await?;
        Ok((store, namespace))
    }
}

/// Runs a command that works in a cluster directory of its own (bench,
/// soak): in `dir` if given (kept afterwards), else in a fresh temporary
/// directory named after `what`, removed at the end. Ctrl-C ends the work
/// (its nodes, attached to this process, stop with it) and still removes
/// the temporary directory.
pub async fn in_work_dir<T, F, Fut>(dir: Option<PathBuf>, what: &str, work: F) -> anyhow::Result<T>
where
    F: FnOnce(PathBuf) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let temporary = dir.is_none();
    let dir = dir.unwrap_or_else(|| {
        std::env::temp_dir().join(format!(
            "garage-ipfs-{what}-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ))
    });
    let result = tokio::select! {
        r = work(dir.clone()) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    if temporary {
        match std::fs::remove_dir_all(&dir) {
            // Work that failed before making it leaves nothing to remove.
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                eprintln!("{what}: could not remove {}: {e}", dir.display());
            }
            _ => {}
        }
    }
    result
}

/// Writes to stdout, as `print!` does, except that a closed stdout
/// (`garage-ipfs block list | head`) ends the process quietly with status
/// 141, as a shell reports a pipeline member that SIGPIPE stopped.
///
/// SIGPIPE itself stays ignored, as Rust programs start: with its default
/// action, any write to a socket that the peer had reset (hyper and h2
/// write with `writev`, which cannot ask for `MSG_NOSIGNAL`) would kill the
/// process, the daemon included, without a word in its log.
pub fn write_stdout(args: std::fmt::Arguments) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_fmt(args).and_then(|()| stdout.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(141);
        }
        panic!("cannot write to stdout: {e}");
    }
}

/// Whether stdout is a pipe whose reader has gone.
pub fn stdout_closed() -> bool {
    let mut fd = libc::pollfd {
        fd: libc::STDOUT_FILENO,
        events: 0,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no timeout.
    let ready = unsafe { libc::poll(&mut fd, 1, 0) };
    ready == 1 && fd.revents & libc::POLLERR != 0
}

/// `println!` through [`write_stdout`].
macro_rules! outln {
    () => { $crate::tools::util::write_stdout(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::tools::util::write_stdout(format_args!("{}\n", format_args!($($arg)*))) };
}
pub(crate) use outln;

/// Prints a value as pretty JSON on stdout.
pub fn print_json(v: &impl Serialize) -> anyhow::Result<()> {
    outln!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// Writes a report as pretty JSON to `path` (`-`: stdout), for `--json
/// FILE` of the commands that run long (soak, nemesis).
pub fn write_json_report(path: &std::path::Path, v: &impl Serialize) -> anyhow::Result<()> {
    if path.as_os_str() == "-" {
        return print_json(v);
    }
    let text = serde_json::to_string_pretty(v)?;
    std::fs::write(path, text + "\n")
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))
}

/// How [`format_table`] aligns the cells after the first column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    /// Text: left-aligned.
    Left,
    /// Figures: right-aligned.
    Right,
}

/// Rows as a table with aligned columns (the first column always left),
/// one line per row.
pub fn format_table(rows: &[Vec<String>], align: Align) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, cell)| match (i, align) {
                (0, _) | (_, Align::Left) => format!("{cell:<w$}", w = widths[i]),
                (_, Align::Right) => format!("{cell:>w$}", w = widths[i]),
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// Prints rows as a table with aligned columns; the first row is the header.
pub fn print_table(rows: &[Vec<String>]) {
    write_stdout(format_args!("{}", format_table(rows, Align::Left)));
}

/// A progress bar on stderr when it is a terminal and output is not JSON;
/// hidden otherwise (piped, scripted).
pub fn progress(total: Option<u64>, json: bool, what: &str) -> indicatif::ProgressBar {
    if json || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = match total {
        Some(n) => indicatif::ProgressBar::new(n),
        None => indicatif::ProgressBar::new_spinner(),
    };
    let template = if total.is_some() {
        "{prefix} [{bar:30}] {pos}/{len} {msg} ({per_sec}, eta {eta})"
    } else {
        "{prefix} {spinner} {pos} {msg} ({per_sec})"
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(template)
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(what.to_string());
    bar
}

/// Human byte counts.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
