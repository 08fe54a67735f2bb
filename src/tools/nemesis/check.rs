//! The nemesis history checker: reads the history a nemesis run wrote (JSON
//! lines) and reports what no correct store could have answered.
//!
//! It is written apart from the store (only `std`, `serde`, `serde_json`):
//! it knows the history's format and a model of what a block store owes its
//! clients, nothing of how this one works, so a bug shared by the store and
//! its checker is unlikely.
//!
//! # Why not linearizability
//!
//! Checking a history for linearizability is exponential in the worst case
//! and too strict for this store: a block written through one daemon may
//! reach another's view only after caches and presence filters catch up.
//! What the store promises is a bounded staleness per block, and that is
//! what is checked, key by key, in time proportional to the history.
//!
//! # The model
//!
//! Each key (a CID) is a register that is present or absent. Operations
//! that may change it are *writes* (a put of the key, an import whose CAR
//! holds it) and *removals* (a delete of the key, a gc that was not told the
//! key is reachable). An operation spans its invocation to its completion;
//! one whose outcome is unknown (`info`: a timeout, a transport or server
//! error, or no completion at all because the run was cut) may take effect
//! any time up to its completion plus `info_extra_ms` (E), and one that
//! `fail`ed had no effect at all.
//!
//! Two parameters make the promise: the settle time S (how long after its
//! acknowledgement an effect must be visible everywhere) and E. A read over
//! `[a, b]` (invocation to completion) must see the key:
//!
//! - *present* if a write was acknowledged at least S before `a` and no
//!   removal that was possible (not `fail`ed) could have taken effect after
//!   that write started and before the read ended;
//! - *absent* if a removal was acknowledged at least S before `a` and every
//!   possible write that started before the read ended had surely ended
//!   before that removal started.
//!
//! Anything else (concurrent or uncertain operations, or an acknowledgement
//! younger than S) allows either answer: the checker flags only answers that
//! are certainly wrong. Answers that would be wrong with S = 0 but are
//! excused by the settle time are counted (`absent_within_settle`,
//! `present_within_settle`): they measure how stale the store is, without
//! being faults.
//!
//! Reads are gets, has, listings (present for the keys they name, absent
//! for the others) and deletes that answered "not there". A get that returns
//! bytes that do not hash to the CID is always an anomaly. After the run,
//! the runner heals every fault, waits S and reads every key back (`final`
//! operations): there, a wrong absence is a lost write and a wrong presence
//! a resurrection, and a key written but never read back is reported too.
//!
//! The check is per key: writes and removals are sorted once, with running
//! maxima, so that each observation costs two binary searches.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use serde::Serialize;
use serde_json::{Map, Value};

/// What the checker found in a history.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// The run's seed, from the meta line.
    pub seed: u64,
    /// The settle time S, in milliseconds.
    pub settle_ms: f64,
    /// Operations invoked.
    pub operations: u64,
    /// Outcomes per operation kind (`put`, `get`, …). An operation without
    /// a completion counts as `info`.
    pub by_f: BTreeMap<String, OpCounts>,
    /// Acknowledged puts, plus the keys of acknowledged imports.
    pub acknowledged_writes: u64,
    /// Acknowledged deletes that removed a block, plus acknowledged gcs
    /// (each once).
    pub acknowledged_removals: u64,
    /// Nemesis events, by `what`.
    pub nemeses: BTreeMap<String, u64>,
    /// Absences observed where a write acknowledged less than S before
    /// required presence (excused by the settle time).
    pub absent_within_settle: u64,
    /// Presences observed where a removal acknowledged less than S before
    /// required absence (excused by the settle time).
    pub present_within_settle: u64,
    /// `listing-missed` anomalies whose listing overlapped a compaction.
    pub listings_during_compaction: u64,
    /// Keys with at least one final get or has answered.
    pub final_checked: u64,
    /// Everything no correct store could have answered.
    pub anomalies: Vec<Anomaly>,
}

impl Report {
    /// True when no anomaly was found.
    pub fn clean(&self) -> bool {
        self.anomalies.is_empty()
    }
}

/// How the operations of one kind ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OpCounts {
    /// Answered.
    pub ok: u64,
    /// Refused, without effect.
    pub fail: u64,
    /// Unknown outcome (including operations never completed).
    pub info: u64,
}

/// One wrong answer (or a missing final read).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Anomaly {
    /// `false-absent`, `stale-present`, `corrupt-read`, `listing-missed`,
    /// `gc-removed-reachable`, `lost-write`, `resurrection` or
    /// `final-unchecked`.
    pub kind: String,
    /// The key (CID) concerned.
    pub key: String,
    /// The operation that observed it (for `final-unchecked`: the key's
    /// last acknowledged write).
    pub op: u64,
    /// That operation's client.
    pub proc: String,
    /// That operation's surface.
    pub via: String,
    /// That operation's invocation time, in milliseconds.
    pub t_ms: f64,
    /// What was observed and why it was wrong.
    pub detail: String,
}

/// Why a history could not be checked.
#[derive(Debug)]
pub enum CheckError {
    /// Reading failed: on a line, or opening the file (`line` is `None`).
    Io {
        /// The line being read, if any.
        line: Option<usize>,
        /// The error.
        error: std::io::Error,
    },
    /// A line is not what the format allows.
    Malformed {
        /// The line, from 1.
        line: usize,
        /// What is wrong with it.
        message: String,
    },
    /// The history has no line at all.
    Empty,
}

impl fmt::Display for CheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io {
                line: Some(line),
                error,
            } => write!(f, "line {line}: cannot read: {error}"),
            Self::Io { line: None, error } => write!(f, "cannot open the history: {error}"),
            Self::Malformed { line, message } => write!(f, "line {line}: {message}"),
            Self::Empty => write!(f, "empty history: no meta line"),
        }
    }
}

impl std::error::Error for CheckError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// Checks the history in the file at `path`.
///
/// # Errors
///
/// The file cannot be opened or read, or a line is malformed.
pub fn check_file(path: &Path) -> Result<Report, CheckError> {
    let file = File::open(path).map_err(|error| CheckError::Io { line: None, error })?;
    check(BufReader::new(file))
}

/// Checks a history read line by line.
///
/// # Errors
///
/// A line cannot be read or is malformed (not JSON, an unknown kind or
/// operation, a field missing or of the wrong type, a completion without
/// its invocation…), or the history is empty.
pub fn check(history: impl BufRead) -> Result<Report, CheckError> {
    let history = parse(history)?;
    Ok(Checker::new(&history).run())
}

// ---------------------------------------------------------------------------
// The parsed history
// ---------------------------------------------------------------------------

/// The operation kinds (`f`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpKind {
    Put,
    Delete,
    Get,
    Has,
    List,
    Import,
    Gc,
    Compact,
    Verify,
    Repair,
}

impl OpKind {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "put" => Self::Put,
            "delete" => Self::Delete,
            "get" => Self::Get,
            "has" => Self::Has,
            "list" => Self::List,
            "import" => Self::Import,
            "gc" => Self::Gc,
            "compact" => Self::Compact,
            "verify" => Self::Verify,
            "repair" => Self::Repair,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Self::Put => "put",
            Self::Delete => "delete",
            Self::Get => "get",
            Self::Has => "has",
            Self::List => "list",
            Self::Import => "import",
            Self::Gc => "gc",
            Self::Compact => "compact",
            Self::Verify => "verify",
            Self::Repair => "repair",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    Fail,
    Info,
}

/// What an invocation is about (keys are interned indices).
#[derive(Debug, Clone)]
enum Subject {
    None,
    Key(u32),
    /// An import's blocks, sorted, without repeats.
    Keys(Vec<u32>),
    /// A gc's reachable keys, sorted, without repeats.
    Protected(Vec<u32>),
}

/// What an `ok` completion answered (only the fields the model uses).
#[derive(Debug, Clone)]
enum Answer {
    None,
    Deleted(bool),
    Got {
        found: bool,
        bytes_ok: bool,
    },
    Has(bool),
    /// A listing's keys, sorted, without repeats.
    Listed(Vec<u32>),
}

#[derive(Debug, Clone)]
struct Completion {
    t: f64,
    outcome: Outcome,
    answer: Answer,
}

/// An operation, invocation and completion together.
#[derive(Debug, Clone)]
struct Op {
    id: u64,
    kind: OpKind,
    proc: u32,
    via: u32,
    is_final: bool,
    inv: f64,
    subject: Subject,
    completion: Completion,
}

impl Op {
    /// Until when it may take effect: its completion, or E later for an
    /// unknown outcome.
    fn end(&self, info_extra: f64) -> f64 {
        match self.completion.outcome {
            Outcome::Info => self.completion.t + info_extra,
            Outcome::Ok | Outcome::Fail => self.completion.t,
        }
    }

    fn ok(&self) -> bool {
        self.completion.outcome == Outcome::Ok
    }

    fn possible(&self) -> bool {
        self.completion.outcome != Outcome::Fail
    }
}

/// Strings seen many times (keys, clients, surfaces), stored once.
#[derive(Debug, Default)]
struct Interner {
    names: Vec<String>,
    index: HashMap<String, u32>,
}

impl Interner {
    /// The index of `name`, read on `line`.
    fn intern(&mut self, name: &str, line: usize) -> Result<u32, CheckError> {
        if let Some(&i) = self.index.get(name) {
            return Ok(i);
        }
        let i = u32::try_from(self.names.len())
            .map_err(|_| malformed(line, "more than 2^32 distinct names"))?;
        self.names.push(name.to_owned());
        self.index.insert(name.to_owned(), i);
        Ok(i)
    }

    fn name(&self, i: u32) -> &str {
        &self.names[i as usize]
    }

    fn len(&self) -> usize {
        self.names.len()
    }
}

/// A whole history, ready to check.
#[derive(Debug)]
struct History {
    seed: u64,
    settle: f64,
    info_extra: f64,
    ops: Vec<Op>,
    keys: Interner,
    labels: Interner,
    nemeses: BTreeMap<String, u64>,
}

// ---------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------

fn malformed(line: usize, message: impl Into<String>) -> CheckError {
    CheckError::Malformed {
        line,
        message: message.into(),
    }
}

/// One line's JSON object, with typed accessors whose errors name the line.
struct Fields<'a> {
    map: &'a Map<String, Value>,
    line: usize,
}

impl<'a> Fields<'a> {
    fn value(&self, name: &str) -> Result<&'a Value, CheckError> {
        self.map
            .get(name)
            .ok_or_else(|| malformed(self.line, format!("field `{name}` missing")))
    }

    fn wrong(&self, name: &str, what: &str) -> CheckError {
        malformed(self.line, format!("field `{name}` is not {what}"))
    }

    fn str(&self, name: &str) -> Result<&'a str, CheckError> {
        self.value(name)?
            .as_str()
            .ok_or_else(|| self.wrong(name, "a string"))
    }

    fn f64(&self, name: &str) -> Result<f64, CheckError> {
        self.value(name)?
            .as_f64()
            .ok_or_else(|| self.wrong(name, "a number"))
    }

    fn u64(&self, name: &str) -> Result<u64, CheckError> {
        self.value(name)?
            .as_u64()
            .ok_or_else(|| self.wrong(name, "an unsigned integer"))
    }

    fn bool(&self, name: &str) -> Result<bool, CheckError> {
        self.value(name)?
            .as_bool()
            .ok_or_else(|| self.wrong(name, "a boolean"))
    }

    fn opt_bool(&self, name: &str) -> Result<Option<bool>, CheckError> {
        match self.map.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.wrong(name, "a boolean")),
        }
    }

    fn str_list(&self, name: &str) -> Result<Vec<&'a str>, CheckError> {
        let items = self
            .value(name)?
            .as_array()
            .ok_or_else(|| self.wrong(name, "a list of strings"))?;
        items
            .iter()
            .map(|v| {
                v.as_str()
                    .ok_or_else(|| self.wrong(name, "a list of strings"))
            })
            .collect()
    }

    fn opt_str_list(&self, name: &str) -> Result<Vec<&'a str>, CheckError> {
        match self.map.get(name) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(_) => self.str_list(name),
        }
    }
}

/// An operation whose completion may not have been read yet.
struct PendingOp {
    id: u64,
    kind: OpKind,
    proc: u32,
    via: u32,
    is_final: bool,
    inv: f64,
    subject: Subject,
    completion: Option<Completion>,
}

/// The history being read, after its meta line.
struct Builder {
    seed: u64,
    settle: f64,
    info_extra: f64,
    ops: Vec<PendingOp>,
    by_id: HashMap<u64, usize>,
    keys: Interner,
    labels: Interner,
    nemeses: BTreeMap<String, u64>,
    last_t: f64,
}

fn parse(reader: impl BufRead) -> Result<History, CheckError> {
    let mut builder: Option<Builder> = None;
    let mut end_line: Option<usize> = None;
    for (i, text) in reader.lines().enumerate() {
        let line = i + 1;
        let text = text.map_err(|error| CheckError::Io {
            line: Some(line),
            error,
        })?;
        if text.trim().is_empty() {
            continue;
        }
        if let Some(end) = end_line {
            return Err(malformed(
                line,
                format!("a line after the end line ({end})"),
            ));
        }
        let value: Value =
            serde_json::from_str(&text).map_err(|e| malformed(line, format!("not JSON: {e}")))?;
        let map = value
            .as_object()
            .ok_or_else(|| malformed(line, "not a JSON object"))?;
        let fields = Fields { map, line };
        let kind = fields.str("kind")?;
        match builder.as_mut() {
            None if kind == "meta" => builder = Some(Builder::from_meta(&fields)?),
            None => {
                return Err(malformed(
                    line,
                    format!("the first line must be the meta line, not `{kind}`"),
                ))
            }
            Some(b) => match kind {
                "invoke" => b.invoke(&fields)?,
                "ok" => b.complete(&fields, Outcome::Ok)?,
                "fail" => b.complete(&fields, Outcome::Fail)?,
                "info" => b.complete(&fields, Outcome::Info)?,
                "nemesis" => b.nemesis(&fields)?,
                "end" => {
                    b.saw_time(fields.f64("t")?);
                    end_line = Some(line);
                }
                "meta" => return Err(malformed(line, "a second meta line")),
                other => return Err(malformed(line, format!("unknown kind `{other}`"))),
            },
        }
    }
    builder.map(Builder::finish).ok_or(CheckError::Empty)
}

impl Builder {
    fn from_meta(fields: &Fields<'_>) -> Result<Self, CheckError> {
        let settle = fields.f64("settle_ms")?;
        let info_extra = fields.f64("info_extra_ms")?;
        if settle < 0.0 || info_extra < 0.0 {
            return Err(malformed(
                fields.line,
                "settle_ms and info_extra_ms must not be negative",
            ));
        }
        Ok(Self {
            seed: fields.u64("seed")?,
            settle,
            info_extra,
            ops: Vec::new(),
            by_id: HashMap::new(),
            keys: Interner::default(),
            labels: Interner::default(),
            nemeses: BTreeMap::new(),
            last_t: 0.0,
        })
    }

    fn saw_time(&mut self, t: f64) {
        self.last_t = self.last_t.max(t);
    }

    /// The indices of `names`, read on `line`, sorted, without repeats.
    fn intern_keys(&mut self, names: &[&str], line: usize) -> Result<Vec<u32>, CheckError> {
        let mut keys = names
            .iter()
            .map(|k| self.keys.intern(k, line))
            .collect::<Result<Vec<u32>, CheckError>>()?;
        keys.sort_unstable();
        keys.dedup();
        Ok(keys)
    }

    fn invoke(&mut self, fields: &Fields<'_>) -> Result<(), CheckError> {
        let id = fields.u64("id")?;
        let t = fields.f64("t")?;
        let f = fields.str("f")?;
        let kind = OpKind::parse(f)
            .ok_or_else(|| malformed(fields.line, format!("unknown operation `{f}`")))?;
        if self.by_id.contains_key(&id) {
            return Err(malformed(
                fields.line,
                format!("operation {id} invoked twice"),
            ));
        }
        let subject = self.subject(kind, fields)?;
        let proc = self.labels.intern(fields.str("proc")?, fields.line)?;
        let via = self.labels.intern(fields.str("via")?, fields.line)?;
        let is_final = fields.opt_bool("final")?.unwrap_or(false);
        self.saw_time(t);
        self.by_id.insert(id, self.ops.len());
        self.ops.push(PendingOp {
            id,
            kind,
            proc,
            via,
            is_final,
            inv: t,
            subject,
            completion: None,
        });
        Ok(())
    }

    fn subject(&mut self, kind: OpKind, fields: &Fields<'_>) -> Result<Subject, CheckError> {
        Ok(match kind {
            OpKind::Put | OpKind::Delete | OpKind::Get | OpKind::Has => {
                Subject::Key(self.keys.intern(fields.str("key")?, fields.line)?)
            }
            OpKind::Import => {
                // Roots are blocks of the CAR too; they only join the
                // universe of keys here.
                let roots = fields.opt_str_list("roots")?;
                self.intern_keys(&roots, fields.line)?;
                Subject::Keys(self.intern_keys(&fields.str_list("keys")?, fields.line)?)
            }
            OpKind::Gc => {
                Subject::Protected(self.intern_keys(&fields.str_list("protected")?, fields.line)?)
            }
            OpKind::List | OpKind::Compact | OpKind::Verify | OpKind::Repair => Subject::None,
        })
    }

    fn complete(&mut self, fields: &Fields<'_>, outcome: Outcome) -> Result<(), CheckError> {
        let id = fields.u64("id")?;
        let t = fields.f64("t")?;
        let &index = self.by_id.get(&id).ok_or_else(|| {
            malformed(
                fields.line,
                format!("completion of operation {id}, never invoked"),
            )
        })?;
        let (kind, inv, done) = {
            let op = &self.ops[index];
            (op.kind, op.inv, op.completion.is_some())
        };
        if done {
            return Err(malformed(
                fields.line,
                format!("operation {id} completed twice"),
            ));
        }
        if t < inv {
            return Err(malformed(
                fields.line,
                format!("operation {id} completed at {t} before its invocation at {inv}"),
            ));
        }
        let answer = match outcome {
            Outcome::Ok => self.answer(kind, fields)?,
            Outcome::Fail | Outcome::Info => Answer::None,
        };
        self.saw_time(t);
        self.ops[index].completion = Some(Completion { t, outcome, answer });
        Ok(())
    }

    fn answer(&mut self, kind: OpKind, fields: &Fields<'_>) -> Result<Answer, CheckError> {
        Ok(match kind {
            OpKind::Delete => Answer::Deleted(fields.bool("deleted")?),
            OpKind::Get => {
                let found = fields.bool("found")?;
                // Without bytes there is nothing to be wrong.
                let bytes_ok = if found {
                    fields.bool("bytes_ok")?
                } else {
                    true
                };
                Answer::Got { found, bytes_ok }
            }
            OpKind::Has => Answer::Has(fields.bool("has")?),
            OpKind::List => {
                Answer::Listed(self.intern_keys(&fields.str_list("keys")?, fields.line)?)
            }
            OpKind::Put
            | OpKind::Import
            | OpKind::Gc
            | OpKind::Compact
            | OpKind::Verify
            | OpKind::Repair => Answer::None,
        })
    }

    fn nemesis(&mut self, fields: &Fields<'_>) -> Result<(), CheckError> {
        self.saw_time(fields.f64("t")?);
        *self
            .nemeses
            .entry(fields.str("what")?.to_owned())
            .or_default() += 1;
        Ok(())
    }

    /// An operation never completed (the run was cut) is unknown, ending at
    /// the last time of the history.
    fn finish(self) -> History {
        let last_t = self.last_t;
        let ops = self
            .ops
            .into_iter()
            .map(|p| Op {
                id: p.id,
                kind: p.kind,
                proc: p.proc,
                via: p.via,
                is_final: p.is_final,
                inv: p.inv,
                subject: p.subject,
                completion: p.completion.unwrap_or(Completion {
                    t: last_t.max(p.inv),
                    outcome: Outcome::Info,
                    answer: Answer::None,
                }),
            })
            .collect();
        History {
            seed: self.seed,
            settle: self.settle,
            info_extra: self.info_extra,
            ops,
            keys: self.keys,
            labels: self.labels,
            nemeses: self.nemeses,
        }
    }
}

// ---------------------------------------------------------------------------
// The model of one key
// ---------------------------------------------------------------------------

/// A possible write or removal of one key.
#[derive(Debug, Clone, Copy)]
struct Effect {
    /// Index of the operation in `History::ops`.
    op: usize,
    inv: f64,
    /// Until when it may take effect.
    end: f64,
    /// When it was acknowledged, if it was.
    acked_at: Option<f64>,
}

/// A time and the operation it belongs to.
#[derive(Debug, Clone, Copy)]
struct Witness {
    time: f64,
    op: usize,
}

/// Acknowledged effects sorted by acknowledgement, each entry holding the
/// latest-starting effect acknowledged so far.
#[derive(Debug, Clone, Copy)]
struct AckedPrefix {
    acked_at: f64,
    latest_start: Witness,
}

/// Possible effects sorted by start, each entry holding the two
/// latest-ending effects started so far (two, so that one operation can be
/// left out: a delete that observes is not its own excuse).
#[derive(Debug, Clone, Copy)]
struct StartedPrefix {
    inv: f64,
    latest_end: Witness,
    runner_up: Option<Witness>,
}

/// The writes or the removals of one key, indexed for the two questions
/// the model asks.
#[derive(Debug, Default)]
struct EffectIndex {
    acked: Vec<AckedPrefix>,
    started: Vec<StartedPrefix>,
}

impl EffectIndex {
    fn new(mut effects: Vec<Effect>) -> Self {
        Self {
            acked: Self::acked_prefixes(&mut effects),
            started: Self::started_prefixes(&mut effects),
        }
    }

    fn acked_prefixes(effects: &mut [Effect]) -> Vec<AckedPrefix> {
        let mut acked: Vec<(f64, Effect)> = effects
            .iter()
            .filter_map(|e| e.acked_at.map(|at| (at, *e)))
            .collect();
        acked.sort_by(|x, y| x.0.total_cmp(&y.0));
        let mut prefixes: Vec<AckedPrefix> = Vec::with_capacity(acked.len());
        for (acked_at, e) in acked {
            let here = Witness {
                time: e.inv,
                op: e.op,
            };
            let latest_start = match prefixes.last() {
                Some(p) if p.latest_start.time >= e.inv => p.latest_start,
                _ => here,
            };
            prefixes.push(AckedPrefix {
                acked_at,
                latest_start,
            });
        }
        prefixes
    }

    fn started_prefixes(effects: &mut [Effect]) -> Vec<StartedPrefix> {
        effects.sort_by(|x, y| x.inv.total_cmp(&y.inv));
        let mut prefixes: Vec<StartedPrefix> = Vec::with_capacity(effects.len());
        for e in effects.iter() {
            let here = Witness {
                time: e.end,
                op: e.op,
            };
            let next = match prefixes.last() {
                None => StartedPrefix {
                    inv: e.inv,
                    latest_end: here,
                    runner_up: None,
                },
                Some(p) if here.time > p.latest_end.time => StartedPrefix {
                    inv: e.inv,
                    latest_end: here,
                    runner_up: Some(p.latest_end),
                },
                Some(p) => StartedPrefix {
                    inv: e.inv,
                    latest_end: p.latest_end,
                    runner_up: match p.runner_up {
                        Some(r) if r.time >= here.time => Some(r),
                        _ => Some(here),
                    },
                },
            };
            prefixes.push(next);
        }
        prefixes
    }

    /// Of the effects acknowledged at or before `limit`, the one that
    /// started last (its start time).
    fn latest_start_acked_by(&self, limit: f64) -> Option<Witness> {
        let n = self.acked.partition_point(|p| p.acked_at <= limit);
        n.checked_sub(1).map(|i| self.acked[i].latest_start)
    }

    /// Of the effects started strictly before `before`, other than
    /// `except`, the one that may end last (its end time).
    fn latest_end_started_before(&self, before: f64, except: Option<usize>) -> Option<Witness> {
        let n = self.started.partition_point(|p| p.inv < before);
        let prefix = self.started.get(n.checked_sub(1)?)?;
        if Some(prefix.latest_end.op) == except {
            prefix.runner_up
        } else {
            Some(prefix.latest_end)
        }
    }
}

/// Everything the model knows of one key.
#[derive(Debug, Default)]
struct KeyModel {
    writes: EffectIndex,
    removals: EffectIndex,
    /// The earliest start of a possible gc that was told the key is
    /// reachable.
    protected_since: Option<f64>,
    /// The last acknowledged write (by acknowledgement time), if any.
    last_acked_write: Option<usize>,
}

impl KeyModel {
    /// The acknowledged write that requires the key present over `[a, b]`,
    /// if one does: acknowledged `settle` before `a`, and no possible
    /// removal (other than `except`) started before `b` may end after the
    /// write started.
    fn required_present(
        &self,
        a: f64,
        b: f64,
        settle: f64,
        except: Option<usize>,
    ) -> Option<usize> {
        let write = self.writes.latest_start_acked_by(a - settle)?;
        match self.removals.latest_end_started_before(b, except) {
            Some(removal) if removal.time > write.time => None,
            _ => Some(write.op),
        }
    }

    /// The acknowledged removal that requires the key absent over `[a, b]`,
    /// if one does: acknowledged `settle` before `a`, and every possible
    /// write started before `b` ended before the removal started.
    fn required_absent(&self, a: f64, b: f64, settle: f64) -> Option<usize> {
        let removal = self.removals.latest_start_acked_by(a - settle)?;
        match self.writes.latest_end_started_before(b, None) {
            Some(write) if write.time >= removal.time => None,
            _ => Some(removal.op),
        }
    }
}

/// Collects every key's writes and removals, then indexes them.
fn build_models(history: &History) -> Vec<KeyModel> {
    let universe = history.keys.len();
    let mut writes: Vec<Vec<Effect>> = vec![Vec::new(); universe];
    let mut removals: Vec<Vec<Effect>> = vec![Vec::new(); universe];
    let mut protected_since: Vec<Option<f64>> = vec![None; universe];
    let mut last_acked_write: Vec<Option<(f64, usize)>> = vec![None; universe];
    let mut marks = Marks::new(universe);
    for (index, op) in history.ops.iter().enumerate() {
        if !op.possible() {
            continue;
        }
        let effect = |acked: bool| Effect {
            op: index,
            inv: op.inv,
            end: op.end(history.info_extra),
            acked_at: acked.then_some(op.completion.t),
        };
        let mut write = |key: u32| {
            writes[key as usize].push(effect(op.ok()));
            if op.ok() {
                let last = &mut last_acked_write[key as usize];
                if last.is_none_or(|(t, _)| op.completion.t >= t) {
                    *last = Some((op.completion.t, index));
                }
            }
        };
        match (&op.subject, op.kind) {
            (Subject::Key(key), OpKind::Put) => write(*key),
            (Subject::Keys(keys), OpKind::Import) => keys.iter().for_each(|&k| write(k)),
            (Subject::Key(key), OpKind::Delete) => {
                let deleted = matches!(op.completion.answer, Answer::Deleted(true));
                removals[*key as usize].push(effect(op.ok() && deleted));
            }
            (Subject::Protected(protected), OpKind::Gc) => {
                marks.set(protected);
                for key in 0..universe {
                    if marks.has(key) {
                        let since = &mut protected_since[key];
                        *since = Some(since.map_or(op.inv, |s| s.min(op.inv)));
                    } else {
                        removals[key].push(effect(op.ok()));
                    }
                }
            }
            _ => {}
        }
    }
    writes
        .into_iter()
        .zip(removals)
        .zip(protected_since.into_iter().zip(last_acked_write))
        .map(|((w, r), (since, last))| KeyModel {
            writes: EffectIndex::new(w),
            removals: EffectIndex::new(r),
            protected_since: since,
            last_acked_write: last.map(|(_, op)| op),
        })
        .collect()
}

/// A reusable set of key indices (a generation stamp per key), so that
/// marking a listing or a gc's protected set costs its own size only.
struct Marks {
    stamps: Vec<u32>,
    generation: u32,
}

impl Marks {
    fn new(universe: usize) -> Self {
        Self {
            stamps: vec![0; universe],
            generation: 0,
        }
    }

    fn set(&mut self, keys: &[u32]) {
        self.generation += 1;
        for &k in keys {
            self.stamps[k as usize] = self.generation;
        }
    }

    fn has(&self, key: usize) -> bool {
        self.stamps[key] == self.generation
    }
}

// ---------------------------------------------------------------------------
// Checking observations
// ---------------------------------------------------------------------------

/// How a read saw a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Get,
    Has,
    /// A delete that answered "not there".
    DeleteAbsent,
    List,
}

/// One key seen present or absent by one operation over `[a, b]`.
#[derive(Debug, Clone, Copy)]
struct Observation {
    op: usize,
    key: u32,
    a: f64,
    b: f64,
    present: bool,
    source: Source,
}

impl Observation {
    /// An operation that is itself a removal is not its own excuse.
    fn except(&self) -> Option<usize> {
        (self.source == Source::DeleteAbsent).then_some(self.op)
    }

    fn describe(&self) -> String {
        let what = match (self.source, self.present) {
            (Source::Get, true) => "found the block",
            (Source::Get, false) => "found nothing",
            (Source::Has, true) => "answered true",
            (Source::Has, false) => "answered false",
            (Source::DeleteAbsent, _) => "answered that the block was not there",
            (Source::List, true) => "named the key",
            (Source::List, false) => "left the key out",
        };
        format!("{what} over [{:.1}, {:.1}] ms", self.a, self.b)
    }
}

struct Checker<'h> {
    history: &'h History,
    models: Vec<KeyModel>,
    /// Possible compactions: (start, end, operation index), by start.
    compactions: Vec<(f64, f64, usize)>,
    final_observed: Vec<bool>,
    report: Report,
}

impl<'h> Checker<'h> {
    fn new(history: &'h History) -> Self {
        let mut compactions: Vec<(f64, f64, usize)> = history
            .ops
            .iter()
            .enumerate()
            .filter(|(_, op)| op.kind == OpKind::Compact && op.possible())
            .map(|(i, op)| (op.inv, op.end(history.info_extra), i))
            .collect();
        compactions.sort_by(|x, y| x.0.total_cmp(&y.0));
        Self {
            history,
            models: build_models(history),
            compactions,
            final_observed: vec![false; history.keys.len()],
            report: Report {
                seed: history.seed,
                settle_ms: history.settle,
                nemeses: history.nemeses.clone(),
                ..Report::default()
            },
        }
    }

    fn run(mut self) -> Report {
        let mut listed = Marks::new(self.history.keys.len());
        for index in 0..self.history.ops.len() {
            self.count(index);
            self.observe(index, &mut listed);
        }
        self.report_unchecked();
        self.report.final_checked = self.final_observed.iter().filter(|&&seen| seen).count() as u64;
        self.report
    }

    fn count(&mut self, index: usize) {
        let op = &self.history.ops[index];
        self.report.operations += 1;
        let counts = self
            .report
            .by_f
            .entry(op.kind.name().to_owned())
            .or_default();
        match op.completion.outcome {
            Outcome::Ok => counts.ok += 1,
            Outcome::Fail => counts.fail += 1,
            Outcome::Info => counts.info += 1,
        }
        if !op.ok() {
            return;
        }
        match (&op.subject, &op.completion.answer) {
            (Subject::Key(_), _) if op.kind == OpKind::Put => self.report.acknowledged_writes += 1,
            (Subject::Keys(keys), _) => self.report.acknowledged_writes += keys.len() as u64,
            (_, Answer::Deleted(true)) | (Subject::Protected(_), _) => {
                self.report.acknowledged_removals += 1;
            }
            _ => {}
        }
    }

    /// Checks what an answered read saw.
    fn observe(&mut self, index: usize, listed: &mut Marks) {
        let op = &self.history.ops[index];
        if !op.ok() {
            return;
        }
        let observation = |key: u32, present: bool, source: Source| Observation {
            op: index,
            key,
            a: op.inv,
            b: op.completion.t,
            present,
            source,
        };
        match (&op.subject, &op.completion.answer) {
            (&Subject::Key(key), &Answer::Got { found, bytes_ok }) => {
                let seen = observation(key, found, Source::Get);
                if found && !bytes_ok {
                    self.corrupt(&seen);
                }
                self.judge(&seen);
                self.final_read(op.is_final, key);
            }
            (&Subject::Key(key), &Answer::Has(has)) => {
                self.judge(&observation(key, has, Source::Has));
                self.final_read(op.is_final, key);
            }
            (&Subject::Key(key), &Answer::Deleted(false)) => {
                self.judge(&observation(key, false, Source::DeleteAbsent));
            }
            (_, Answer::Listed(keys)) => {
                listed.set(keys);
                for key in 0..self.history.keys.len() {
                    let key = key as u32;
                    self.judge(&observation(key, listed.has(key as usize), Source::List));
                }
            }
            _ => {}
        }
    }

    fn final_read(&mut self, is_final: bool, key: u32) {
        if is_final {
            self.final_observed[key as usize] = true;
        }
    }

    fn judge(&mut self, seen: &Observation) {
        if seen.present {
            self.judge_presence(seen);
        } else {
            self.judge_absence(seen);
        }
    }

    fn judge_absence(&mut self, seen: &Observation) {
        let model = &self.models[seen.key as usize];
        let settle = self.history.settle;
        if let Some(write) = model.required_present(seen.a, seen.b, settle, seen.except()) {
            self.missing(seen, write);
        } else if model
            .required_present(seen.a, seen.b, 0.0, seen.except())
            .is_some()
        {
            self.report.absent_within_settle += 1;
        }
    }

    fn judge_presence(&mut self, seen: &Observation) {
        let model = &self.models[seen.key as usize];
        let settle = self.history.settle;
        if let Some(removal) = model.required_absent(seen.a, seen.b, settle) {
            let kind = if self.through_fresh_connector(seen.op) {
                "resurrection"
            } else {
                "stale-present"
            };
            let detail = format!(
                "{}, but the key must be absent: {}",
                seen.describe(),
                self.removal_reason(removal)
            );
            self.anomaly(kind, seen.key, seen.op, detail);
        } else if model.required_absent(seen.a, seen.b, 0.0).is_some() {
            self.report.present_within_settle += 1;
        }
    }

    /// An absence where the model requires presence.
    fn missing(&mut self, seen: &Observation, write: usize) {
        let is_final = self.through_fresh_connector(seen.op);
        let reason = format!(
            "{}, but the key must be present: {}",
            seen.describe(),
            self.write_reason(write)
        );
        if let Some(gc_since) = self.protecting_gc(seen) {
            let detail =
                format!("{reason}; a gc told it was reachable started at {gc_since:.1} ms");
            self.anomaly("gc-removed-reachable", seen.key, seen.op, detail);
        } else if is_final {
            self.anomaly("lost-write", seen.key, seen.op, reason);
        } else if seen.source == Source::List {
            self.listing_missed(seen, reason);
        } else {
            self.anomaly("false-absent", seen.key, seen.op, reason);
        }
    }

    /// Whether an operation is a final read through the fresh connector
    /// (`via` "fresh"): what the cluster holds, after the run. A daemon's
    /// final answer that contradicts the model is its view lagging (a
    /// false absent or a stale present past the settle time), not the
    /// data itself; the data is what a fresh connector reads.
    fn through_fresh_connector(&self, op: usize) -> bool {
        let op = &self.history.ops[op];
        op.is_final && self.history.labels.name(op.via) == "fresh"
    }

    /// The start of a possible gc that protected the key and started before
    /// the observation ended, when that absence is one the gc is suspected
    /// of: a final one (the block is gone for good). An absence during the
    /// run may be a lookup that has not caught up yet, which the block
    /// outlives: that is a false absent, whatever gc ran.
    fn protecting_gc(&self, seen: &Observation) -> Option<f64> {
        if !self.through_fresh_connector(seen.op) {
            return None;
        }
        self.models[seen.key as usize]
            .protected_since
            .filter(|&since| since < seen.b)
    }

    fn listing_missed(&mut self, seen: &Observation, reason: String) {
        let label = match self.compaction_overlapping(seen.a, seen.b) {
            Some(compact) => {
                self.report.listings_during_compaction += 1;
                format!(
                    "during compaction (compact {})",
                    self.history.ops[compact].id
                )
            }
            None => "not during a compaction".to_owned(),
        };
        self.anomaly(
            "listing-missed",
            seen.key,
            seen.op,
            format!("{reason}; {label}"),
        );
    }

    fn compaction_overlapping(&self, a: f64, b: f64) -> Option<usize> {
        self.compactions
            .iter()
            .take_while(|&&(start, _, _)| start <= b)
            .find(|&&(_, end, _)| end >= a)
            .map(|&(_, _, op)| op)
    }

    /// A get returned bytes that do not hash to the CID.
    fn corrupt(&mut self, seen: &Observation) {
        let detail = format!(
            "get returned bytes that do not hash to the CID over [{:.1}, {:.1}] ms",
            seen.a, seen.b
        );
        self.anomaly("corrupt-read", seen.key, seen.op, detail);
        let model = &self.models[seen.key as usize];
        if self.history.ops[seen.op].is_final {
            if let Some(write) = model.required_present(seen.a, seen.b, self.history.settle, None) {
                let detail = format!(
                    "final get returned corrupt bytes, but the key must be present: {}",
                    self.write_reason(write)
                );
                self.anomaly("lost-write", seen.key, seen.op, detail);
            }
        }
    }

    /// Every key written with an acknowledgement must be read back at the
    /// end.
    fn report_unchecked(&mut self) {
        for key in 0..self.history.keys.len() {
            let Some(write) = self.models[key].last_acked_write else {
                continue;
            };
            if self.final_observed[key] {
                continue;
            }
            let detail = format!(
                "no final get or has answered for a key written: {}",
                self.write_reason(write)
            );
            self.anomaly("final-unchecked", key as u32, write, detail);
        }
    }

    fn write_reason(&self, write: usize) -> String {
        let op = &self.history.ops[write];
        format!(
            "{} {} invoked at {:.1} ms was acknowledged at {:.1} ms, and no removal was possible since",
            op.kind.name(),
            op.id,
            op.inv,
            op.completion.t
        )
    }

    fn removal_reason(&self, removal: usize) -> String {
        let op = &self.history.ops[removal];
        let how = if op.kind == OpKind::Gc {
            " (not protected)"
        } else {
            ""
        };
        format!(
            "{} {}{how} invoked at {:.1} ms was acknowledged at {:.1} ms, and no write was possible since",
            op.kind.name(),
            op.id,
            op.inv,
            op.completion.t
        )
    }

    fn anomaly(&mut self, kind: &str, key: u32, op: usize, detail: String) {
        let history = self.history;
        let op = &history.ops[op];
        self.report.anomalies.push(Anomaly {
            kind: kind.to_owned(),
            key: history.keys.name(key).to_owned(),
            op: op.id,
            proc: history.labels.name(op.proc).to_owned(),
            via: history.labels.name(op.via).to_owned(),
            t_ms: op.inv,
            detail,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The settle time and the extra time of unknown outcomes of the tests.
    const S: f64 = 1000.0;
    const E: f64 = 10_000.0;
    /// After every operation of a test: the final read-back.
    const FINAL: f64 = 100_000.0;

    /// A synthetic history, built line by line.
    struct Script {
        lines: Vec<Value>,
        next: u64,
    }

    impl Script {
        fn new() -> Self {
            let meta = json!({"kind": "meta", "seed": 42, "settle_ms": S,
                              "info_extra_ms": E, "namespace": "nemesis"});
            Self {
                lines: vec![meta],
                next: 1,
            }
        }

        fn invoke(&mut self, f: &str, t: f64, is_final: bool, mut fields: Value) -> u64 {
            let id = self.next;
            self.next += 1;
            // Final reads come from the fresh connector unless the test
            // names another surface.
            let via = fields
                .get("via")
                .cloned()
                .unwrap_or_else(|| json!(if is_final { "fresh" } else { "A-grpc" }));
            let extra = json!({"kind": "invoke", "id": id, "t": t, "proc": "c1",
                               "via": via, "f": f, "final": is_final});
            merge(&mut fields, extra);
            self.lines.push(fields);
            id
        }

        fn complete(&mut self, id: u64, kind: &str, t: f64, mut fields: Value) {
            merge(&mut fields, json!({"kind": kind, "id": id, "t": t}));
            self.lines.push(fields);
        }

        /// An operation over `[t0, t1]` that ended `kind` with `answer`.
        fn op(
            &mut self,
            f: &str,
            span: (f64, f64),
            is_final: bool,
            args: Value,
            kind: &str,
            answer: Value,
        ) -> u64 {
            let id = self.invoke(f, span.0, is_final, args);
            self.complete(id, kind, span.1, answer);
            id
        }

        fn put(&mut self, key: &str, span: (f64, f64), kind: &str) -> u64 {
            self.op("put", span, false, json!({"key": key}), kind, json!({}))
        }

        fn delete(&mut self, key: &str, span: (f64, f64), kind: &str) -> u64 {
            self.op(
                "delete",
                span,
                false,
                json!({"key": key}),
                kind,
                json!({"deleted": true}),
            )
        }

        fn get(&mut self, key: &str, t: f64, found: bool) -> u64 {
            let answer = json!({"found": found, "bytes_ok": true});
            self.op(
                "get",
                (t, t + 1.0),
                t >= FINAL,
                json!({"key": key}),
                "ok",
                answer,
            )
        }

        fn has(&mut self, key: &str, t: f64, has: bool) -> u64 {
            let answer = json!({"has": has});
            self.op(
                "has",
                (t, t + 1.0),
                t >= FINAL,
                json!({"key": key}),
                "ok",
                answer,
            )
        }

        fn list(&mut self, span: (f64, f64), keys: &[&str]) -> u64 {
            let answer = json!({"keys": keys});
            self.op("list", span, span.0 >= FINAL, json!({}), "ok", answer)
        }

        fn raw(&mut self, line: Value) {
            self.lines.push(line);
        }

        fn text(&self) -> String {
            let mut text = String::new();
            for line in &self.lines {
                text.push_str(&line.to_string());
                text.push('\n');
            }
            text
        }

        fn check(&self) -> Report {
            match check(self.text().as_bytes()) {
                Ok(report) => report,
                Err(e) => panic!("the history does not parse: {e}\n{}", self.text()),
            }
        }
    }

    fn merge(into: &mut Value, from: Value) {
        if let (Value::Object(into), Value::Object(from)) = (into, from) {
            into.extend(from);
        }
    }

    fn kinds(report: &Report) -> Vec<&str> {
        report.anomalies.iter().map(|a| a.kind.as_str()).collect()
    }

    fn error_line(text: &str) -> usize {
        match check(text.as_bytes()) {
            Err(CheckError::Malformed { line, .. }) => line,
            other => panic!("expected a malformed line, got {other:?}"),
        }
    }

    #[test]
    fn a_clean_history_is_clean() {
        let mut s = Script::new();
        s.put("k", (0.0, 1.0), "ok");
        s.get("k", 2000.0, true);
        s.delete("k", (3000.0, 3001.0), "ok");
        s.has("k", 5000.0, false);
        s.get("k", FINAL, false);
        s.raw(json!({"kind": "end", "t": FINAL + 10.0}));
        let report = s.check();
        assert!(report.clean(), "{:#?}", report.anomalies);
        assert_eq!(report.seed, 42);
        assert_eq!(report.operations, 5);
        assert_eq!(report.acknowledged_writes, 1);
        assert_eq!(report.acknowledged_removals, 1);
        assert_eq!(report.final_checked, 1);
        assert_eq!(
            report.by_f["get"],
            OpCounts {
                ok: 2,
                fail: 0,
                info: 0
            }
        );
        assert_eq!(
            report.absent_within_settle + report.present_within_settle,
            0
        );
    }

    #[test]
    fn an_absence_after_the_settle_time_is_false_absent() {
        let mut s = Script::new();
        let put = s.put("k", (0.0, 1.0), "ok");
        let get = s.get("k", 2000.0, false);
        s.get("k", FINAL, true);
        let report = s.check();
        assert_eq!(kinds(&report), ["false-absent"]);
        let anomaly = &report.anomalies[0];
        assert_eq!((anomaly.op, anomaly.key.as_str()), (get, "k"));
        assert_eq!(
            (anomaly.proc.as_str(), anomaly.via.as_str()),
            ("c1", "A-grpc")
        );
        assert!(
            anomaly.detail.contains(&format!("put {put}")),
            "{}",
            anomaly.detail
        );
    }

    #[test]
    fn an_absence_within_the_settle_time_is_counted_not_reported() {
        let mut s = Script::new();
        s.put("k", (0.0, 1.0), "ok");
        s.get("k", 500.0, false);
        s.has("k", 900.0, false);
        s.get("k", FINAL, true);
        let report = s.check();
        assert!(report.clean(), "{:#?}", report.anomalies);
        assert_eq!(report.absent_within_settle, 2);
    }

    #[test]
    fn a_concurrent_delete_excuses_an_absence() {
        let mut s = Script::new();
        s.put("k", (0.0, 1.0), "ok");
        s.delete("k", (1500.0, 2500.0), "ok");
        s.get("k", 2000.0, false);
        s.get("k", FINAL, false);
        assert!(s.check().clean());
    }

    #[test]
    fn a_failed_delete_excuses_nothing() {
        let mut s = Script::new();
        s.put("k", (0.0, 1.0), "ok");
        s.delete("k", (1500.0, 2500.0), "fail");
        s.get("k", 3000.0, false);
        s.get("k", FINAL, true);
        assert_eq!(kinds(&s.check()), ["false-absent"]);
    }

    #[test]
    fn an_unknown_delete_excuses_an_absence_until_e_after_its_completion() {
        let mut s = Script::new();
        // Both deletes may take effect until 10 + E = 10010.
        s.delete("early", (0.0, 10.0), "info");
        s.put("early", (5000.0, 5001.0), "ok");
        s.get("early", 8000.0, false);
        s.delete("late", (0.0, 10.0), "info");
        s.put("late", (10_020.0, 10_021.0), "ok");
        let late = s.get("late", 12_000.0, false);
        s.get("early", FINAL, true);
        s.get("late", FINAL, true);
        let report = s.check();
        assert_eq!(kinds(&report), ["false-absent"]);
        assert_eq!(
            (report.anomalies[0].op, report.anomalies[0].key.as_str()),
            (late, "late")
        );
    }

    #[test]
    fn a_delete_answering_not_there_is_not_its_own_excuse() {
        let mut s = Script::new();
        s.put("k", (0.0, 1.0), "ok");
        let delete = s.op(
            "delete",
            (3000.0, 3001.0),
            false,
            json!({"key": "k"}),
            "ok",
            json!({"deleted": false}),
        );
        // The delete may have removed it: the final absence is excused.
        s.get("k", FINAL, false);
        let report = s.check();
        assert_eq!(kinds(&report), ["false-absent"]);
        assert_eq!(report.anomalies[0].op, delete);
        assert_eq!(report.acknowledged_removals, 0);
    }

    #[test]
    fn a_delete_answering_not_there_is_excused_by_another_delete() {
        let mut s = Script::new();
        s.put("k", (0.0, 1.0), "ok");
        s.delete("k", (2900.0, 3100.0), "info");
        let answer = json!({"deleted": false});
        s.op(
            "delete",
            (3000.0, 3001.0),
            false,
            json!({"key": "k"}),
            "ok",
            answer,
        );
        s.get("k", FINAL, false);
        let report = s.check();
        assert!(report.clean(), "{:#?}", report.anomalies);
    }

    #[test]
    fn a_write_after_a_removal_requires_presence_again() {
        let mut s = Script::new();
        s.put("k", (0.0, 1.0), "ok");
        s.delete("k", (100.0, 101.0), "ok");
        s.get("k", 1500.0, false);
        let again = s.put("k", (2000.0, 2001.0), "ok");
        s.get("k", 2500.0, false);
        s.get("k", 3500.0, false);
        s.get("k", FINAL, true);
        let report = s.check();
        assert_eq!(kinds(&report), ["false-absent"]);
        assert!(report.anomalies[0].detail.contains(&format!("put {again}")));
        assert_eq!(report.absent_within_settle, 1);
    }

    #[test]
    fn a_presence_after_an_acknowledged_delete_is_stale() {
        let mut s = Script::new();
        s.put("k", (0.0, 1.0), "ok");
        let delete = s.delete("k", (100.0, 101.0), "ok");
        s.get("k", 500.0, true);
        let get = s.get("k", 2000.0, true);
        s.get("k", FINAL, false);
        let report = s.check();
        assert_eq!(kinds(&report), ["stale-present"]);
        assert_eq!(report.anomalies[0].op, get);
        assert!(report.anomalies[0]
            .detail
            .contains(&format!("delete {delete}")));
        assert_eq!(report.present_within_settle, 1);
    }

    #[test]
    fn a_concurrent_put_excuses_a_presence() {
        let mut s = Script::new();
        s.put("k", (0.0, 1.0), "ok");
        s.delete("k", (100.0, 101.0), "ok");
        s.put("k", (1900.0, 2100.0), "ok");
        s.get("k", 2000.0, true);
        s.get("k", FINAL, true);
        assert!(s.check().clean());
    }

    #[test]
    fn an_unknown_put_excuses_a_presence_until_e_after_its_completion() {
        let mut s = Script::new();
        // After the delete: may take effect at any time later.
        s.put("after", (0.0, 1.0), "ok");
        s.delete("after", (100.0, 101.0), "ok");
        s.put("after", (1500.0, 1600.0), "info");
        s.get("after", 3000.0, true);
        // Before the delete: may take effect until 10 + E = 10010.
        s.put("within", (0.0, 10.0), "info");
        s.delete("within", (5000.0, 5001.0), "ok");
        s.get("within", 8000.0, true);
        s.put("beyond", (0.0, 10.0), "info");
        s.delete("beyond", (20_000.0, 20_001.0), "ok");
        let stale = s.get("beyond", 25_000.0, true);
        s.get("after", FINAL, true);
        s.get("within", FINAL, false);
        s.get("beyond", FINAL, false);
        let report = s.check();
        assert_eq!(kinds(&report), ["stale-present"]);
        assert_eq!(
            (report.anomalies[0].op, report.anomalies[0].key.as_str()),
            (stale, "beyond")
        );
    }

    #[test]
    fn a_final_get_finding_nothing_is_a_lost_write() {
        let mut s = Script::new();
        s.put("k", (0.0, 1.0), "ok");
        let get = s.get("k", FINAL, false);
        let report = s.check();
        assert_eq!(kinds(&report), ["lost-write"]);
        assert_eq!(report.anomalies[0].op, get);
        assert_eq!(report.final_checked, 1);
    }

    #[test]
    fn a_final_listing_leaving_a_key_out_is_a_lost_write() {
        let mut s = Script::new();
        s.put("k", (0.0, 1.0), "ok");
        s.put("other", (0.0, 1.0), "ok");
        s.get("k", FINAL, true);
        s.get("other", FINAL, true);
        let list = s.list((FINAL + 10.0, FINAL + 20.0), &["other"]);
        let report = s.check();
        assert_eq!(kinds(&report), ["lost-write"]);
        assert_eq!(
            (report.anomalies[0].op, report.anomalies[0].key.as_str()),
            (list, "k")
        );
    }

    #[test]
    fn corrupt_bytes_are_reported_and_lose_the_write_at_the_end() {
        let mut s = Script::new();
        s.put("k", (0.0, 1.0), "ok");
        let corrupt = json!({"found": true, "bytes_ok": false});
        let during = s.op(
            "get",
            (2000.0, 2001.0),
            false,
            json!({"key": "k"}),
            "ok",
            corrupt.clone(),
        );
        let last = s.op(
            "get",
            (FINAL, FINAL + 1.0),
            true,
            json!({"key": "k"}),
            "ok",
            corrupt,
        );
        let report = s.check();
        assert_eq!(
            kinds(&report),
            ["corrupt-read", "corrupt-read", "lost-write"]
        );
        let ops: Vec<u64> = report.anomalies.iter().map(|a| a.op).collect();
        assert_eq!(ops, [during, last, last]);
    }

    #[test]
    fn a_final_presence_after_an_acknowledged_delete_is_a_resurrection() {
        let mut s = Script::new();
        s.put("k", (0.0, 1.0), "ok");
        s.delete("k", (100.0, 101.0), "ok");
        s.get("k", FINAL, true);
        let report = s.check();
        assert_eq!(kinds(&report), ["resurrection"]);
    }

    #[test]
    fn a_daemon_lagging_after_the_run_is_not_a_lost_write() {
        let mut s = Script::new();
        s.put("k", (0.0, 1.0), "ok");
        s.put("gone", (0.0, 1.0), "ok");
        s.delete("gone", (10.0, 11.0), "ok");
        s.get("k", FINAL, true);
        s.get("gone", FINAL, false);
        // The daemons' own final answers, wrong both ways: their views lag.
        let lag = s.op(
            "has",
            (FINAL, FINAL + 1.0),
            true,
            json!({"key": "k", "via": "B-grpc"}),
            "ok",
            json!({"has": false}),
        );
        let stale = s.op(
            "has",
            (FINAL, FINAL + 1.0),
            true,
            json!({"key": "gone", "via": "B-grpc"}),
            "ok",
            json!({"has": true}),
        );
        let report = s.check();
        assert_eq!(kinds(&report), ["false-absent", "stale-present"]);
        let ops: Vec<u64> = report.anomalies.iter().map(|a| a.op).collect();
        assert_eq!(ops, [lag, stale]);
    }

    #[test]
    fn gc_removes_what_it_was_not_told_to_keep_and_nothing_else() {
        let mut s = Script::new();
        s.put("loose", (0.0, 1.0), "ok");
        s.put("kept", (0.0, 1.0), "ok");
        s.op(
            "gc",
            (2000.0, 2100.0),
            false,
            json!({"protected": ["kept"]}),
            "ok",
            json!({"removed": 1}),
        );
        s.has("loose", 5000.0, false);
        let during = s.get("kept", 5000.0, false);
        s.get("loose", FINAL, false);
        let last = s.get("kept", FINAL, false);
        let report = s.check();
        assert_eq!(kinds(&report), ["false-absent", "gc-removed-reachable"]);
        let ops: Vec<u64> = report.anomalies.iter().map(|a| a.op).collect();
        assert_eq!(ops, [during, last]);
        assert_eq!(report.acknowledged_removals, 1);
    }

    #[test]
    fn a_key_seen_after_gc_removed_it_is_stale() {
        let mut s = Script::new();
        s.put("loose", (0.0, 1.0), "ok");
        s.op(
            "gc",
            (2000.0, 2100.0),
            false,
            json!({"protected": []}),
            "ok",
            json!({}),
        );
        s.get("loose", 5000.0, true);
        s.get("loose", FINAL, false);
        assert_eq!(kinds(&s.check()), ["stale-present"]);
    }

    #[test]
    fn a_listing_missing_a_key_is_labelled_by_compaction() {
        let mut s = Script::new();
        s.put("k", (0.0, 1.0), "ok");
        s.list((2000.0, 2100.0), &["k"]);
        s.op(
            "compact",
            (4000.0, 6000.0),
            false,
            json!({}),
            "ok",
            json!({"moved": 3}),
        );
        let during = s.list((5000.0, 5100.0), &[]);
        let after = s.list((7000.0, 7100.0), &[]);
        s.get("k", FINAL, true);
        let report = s.check();
        assert_eq!(kinds(&report), ["listing-missed", "listing-missed"]);
        assert_eq!(report.anomalies[0].op, during);
        assert!(report.anomalies[0].detail.contains("during compaction"));
        assert_eq!(report.anomalies[1].op, after);
        assert!(report.anomalies[1]
            .detail
            .contains("not during a compaction"));
        assert_eq!(report.listings_during_compaction, 1);
    }

    #[test]
    fn an_import_acknowledges_each_of_its_keys() {
        let mut s = Script::new();
        s.op(
            "import",
            (0.0, 1.0),
            false,
            json!({"keys": ["a", "b"], "roots": ["a"]}),
            "ok",
            json!({}),
        );
        let get = s.get("b", 2000.0, false);
        s.get("a", FINAL, true);
        s.get("b", FINAL, true);
        let report = s.check();
        assert_eq!(report.acknowledged_writes, 2);
        assert_eq!(kinds(&report), ["false-absent"]);
        assert_eq!(
            (report.anomalies[0].op, report.anomalies[0].key.as_str()),
            (get, "b")
        );
    }

    #[test]
    fn a_written_key_never_read_back_is_final_unchecked() {
        let mut s = Script::new();
        s.put("a", (0.0, 1.0), "ok");
        let last = s.put("a", (10.0, 11.0), "ok");
        s.put("b", (0.0, 1.0), "ok");
        s.put("never-acked", (0.0, 1.0), "info");
        s.get("b", FINAL, true);
        // A listing is not a read-back.
        s.list((FINAL, FINAL + 1.0), &["a", "b"]);
        let report = s.check();
        assert_eq!(kinds(&report), ["final-unchecked"]);
        assert_eq!(
            (report.anomalies[0].op, report.anomalies[0].key.as_str()),
            (last, "a")
        );
        assert_eq!(report.final_checked, 1);
    }

    #[test]
    fn a_missing_completion_is_an_unknown_outcome() {
        let mut s = Script::new();
        s.put("k", (0.0, 1.0), "ok");
        s.invoke("delete", 1000.0, false, json!({"key": "k"}));
        s.raw(json!({"kind": "nemesis", "t": 2000.0, "what": "kill-daemon", "target": "A"}));
        s.get("k", 5000.0, false);
        s.get("k", FINAL, false);
        let report = s.check();
        assert!(report.clean(), "{:#?}", report.anomalies);
        assert_eq!(
            report.by_f["delete"],
            OpCounts {
                ok: 0,
                fail: 0,
                info: 1
            }
        );
        assert_eq!(report.nemeses["kill-daemon"], 1);
    }

    #[test]
    fn unknown_fields_and_admin_answers_are_ignored() {
        let mut s = Script::new();
        s.op(
            "verify",
            (0.0, 5.0),
            false,
            json!({"scope": "all"}),
            "ok",
            json!({"found": 3, "keys": 7, "damaged": []}),
        );
        s.op(
            "repair",
            (0.0, 5.0),
            false,
            json!({}),
            "info",
            json!({"error": "timeout"}),
        );
        s.op(
            "put",
            (10.0, 11.0),
            false,
            json!({"key": "k", "size": 12}),
            "ok",
            json!({"elapsed_ms": 1.0}),
        );
        s.get("k", FINAL, true);
        let report = s.check();
        assert!(report.clean(), "{:#?}", report.anomalies);
        assert_eq!(report.by_f["repair"].info, 1);
    }

    #[test]
    fn malformed_lines_are_errors_naming_the_line() {
        let meta = r#"{"kind":"meta","seed":1,"settle_ms":1000.0,"info_extra_ms":5.0}"#;
        let put = r#"{"kind":"invoke","id":1,"t":0.0,"proc":"c1","via":"cli","f":"put","key":"k","final":false}"#;
        assert_eq!(error_line(&format!("{meta}\n{put}\nnot json\n")), 3);
        assert_eq!(
            error_line(&format!("{meta}\n{{\"kind\":\"weird\",\"t\":1}}\n")),
            2
        );
        assert_eq!(
            error_line(&format!("{meta}\n\n{{\"kind\":\"ok\",\"id\":9,\"t\":1}}\n")),
            3
        );
        assert_eq!(error_line(&format!("{meta}\n{put}\n{put}\n")), 3);
        assert_eq!(
            error_line(&format!("{meta}\n{}\n", put.replace(r#","key":"k""#, ""))),
            2
        );
        let get = put.replace("\"put\"", "\"get\"");
        let no_found = r#"{"kind":"ok","id":1,"t":2.0,"bytes_ok":true}"#;
        assert_eq!(error_line(&format!("{meta}\n{get}\n{no_found}\n")), 3);
        assert_eq!(error_line(&format!("{put}\n")), 1);
        assert_eq!(
            error_line(&format!("{meta}\n{{\"kind\":\"end\",\"t\":1}}\n{put}\n")),
            3
        );
        let error = check(format!("{meta}\n[1]\n").as_bytes()).unwrap_err();
        assert!(error.to_string().starts_with("line 2:"), "{error}");
        assert!(matches!(check("".as_bytes()), Err(CheckError::Empty)));
    }

    #[test]
    fn check_file_reads_a_file() {
        let mut s = Script::new();
        s.put("k", (0.0, 1.0), "ok");
        s.get("k", FINAL, true);
        let path = std::env::temp_dir().join(format!("nemesis-check-{}.jsonl", std::process::id()));
        std::fs::write(&path, s.text()).expect("write the history");
        let report = check_file(&path);
        std::fs::remove_file(&path).expect("remove the history");
        assert!(report.expect("the history parses").clean());
        let missing = check_file(Path::new("/nonexistent/history.jsonl"));
        assert!(matches!(missing, Err(CheckError::Io { line: None, .. })));
    }
}
