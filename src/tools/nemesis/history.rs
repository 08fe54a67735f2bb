//! The history a nemesis run writes: JSON lines, each operation's
//! invocation and its completion, the nemesis events between them (the
//! format is the checker's, `check.rs`, which reads it apart from this).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use serde_json::{json, Map, Value};

/// How an operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    /// Answered.
    Ok,
    /// Refused before anything could be written (connection refused,
    /// invalid request): it had no effect.
    Fail,
    /// Unknown: it may have taken effect (timeout, transport or server
    /// error, a killed process).
    Info,
}

impl Outcome {
    fn name(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Fail => "fail",
            Self::Info => "info",
        }
    }
}

/// The history file, shared by every client, job and nemesis of a run.
pub(super) struct History {
    start: Instant,
    next: AtomicU64,
    out: Mutex<BufWriter<File>>,
    ops: AtomicU64,
}

/// An invoked operation, to be completed once.
#[must_use = "an invoked operation is completed"]
pub(super) struct Op {
    id: u64,
}

impl History {
    /// Creates the file and writes its first line.
    pub(super) fn create(path: &Path, meta: Value) -> std::io::Result<Self> {
        let h = Self {
            start: Instant::now(),
            next: AtomicU64::new(1),
            out: Mutex::new(BufWriter::new(File::create(path)?)),
            ops: AtomicU64::new(0),
        };
        let mut meta = into_map(meta);
        meta.insert("kind".into(), "meta".into());
        h.line(Value::Object(meta));
        Ok(h)
    }

    /// Milliseconds since the run started.
    pub(super) fn now_ms(&self) -> f64 {
        self.start.elapsed().as_secs_f64() * 1e3
    }

    /// Operations invoked so far.
    pub(super) fn operations(&self) -> u64 {
        self.ops.load(Ordering::Relaxed)
    }

    /// Records an invocation: `f` by `proc` through `via`, with `fields`
    /// (`key`, `keys`, …).
    pub(super) fn invoke(
        &self,
        proc: &str,
        via: &str,
        f: &str,
        final_read: bool,
        fields: Value,
    ) -> Op {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.ops.fetch_add(1, Ordering::Relaxed);
        let mut m = into_map(fields);
        m.insert("kind".into(), "invoke".into());
        m.insert("id".into(), id.into());
        m.insert("t".into(), self.now_ms().into());
        m.insert("proc".into(), proc.into());
        m.insert("via".into(), via.into());
        m.insert("f".into(), f.into());
        m.insert("final".into(), final_read.into());
        self.line(Value::Object(m));
        Op { id }
    }

    /// Records how `op` ended, with the answer's `fields`.
    pub(super) fn complete(&self, op: Op, outcome: Outcome, fields: Value) {
        let mut m = into_map(fields);
        m.insert("kind".into(), outcome.name().into());
        m.insert("id".into(), op.id.into());
        m.insert("t".into(), self.now_ms().into());
        self.line(Value::Object(m));
    }

    /// Records a failed or unknown completion with its error text.
    pub(super) fn error(&self, op: Op, outcome: Outcome, error: impl std::fmt::Display) {
        self.complete(op, outcome, json!({ "error": error.to_string() }));
    }

    /// Records a nemesis event.
    pub(super) fn nemesis(&self, what: &str, target: &str, detail: impl std::fmt::Display) {
        self.line(json!({
            "kind": "nemesis",
            "t": self.now_ms(),
            "what": what,
            "target": target,
            "detail": detail.to_string(),
        }));
    }

    /// Writes the last line and flushes.
    pub(super) fn finish(&self) -> std::io::Result<()> {
        self.line(json!({"kind": "end", "t": self.now_ms()}));
        self.out.lock().unwrap().flush()
    }

    fn line(&self, v: Value) {
        let mut out = self.out.lock().unwrap();
        // A full disk must not pass for a clean run: the checker then
        // fails on the truncated file.
        if let Err(e) = serde_json::to_writer(&mut *out, &v)
            .and_then(|()| out.write_all(b"\n").map_err(serde_json::Error::io))
        {
            tracing::error!("cannot write the history: {e}");
        }
    }
}

fn into_map(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        Value::Null => Map::new(),
        other => {
            let mut m = Map::new();
            m.insert("value".into(), other);
            m
        }
    }
}
