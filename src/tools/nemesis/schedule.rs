//! The schedule of a run, drawn from its seed before anything starts: the
//! faults (nemeses) one after another, and the admin jobs beside them.
//! The same seed gives the same schedule, and each client's choices come
//! from a generator seeded from it too. What the seed cannot fix is the
//! timing of the processes themselves (as in Jepsen, not a deterministic
//! simulation): a replay runs the same faults at the same moments against
//! the same operation mix, and finds a race again when it is not a rare
//! one.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

/// Which daemon (0: A, 1: B).
pub(super) type DaemonIx = usize;

/// A fault, applied at its time and undone after `ms`.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "what", rename_all = "kebab-case")]
pub(super) enum Fault {
    /// `kill -9` of a daemon, restarted `ms` later (same state directory:
    /// its snapshot is restored).
    KillDaemon { daemon: DaemonIx, ms: u64 },
    /// SIGSTOP of a daemon, SIGCONT `ms` later.
    PauseDaemon { daemon: DaemonIx, ms: u64 },
    /// A daemon's clock moved by `offset_s` (kept until the next change).
    ClockDaemon { daemon: DaemonIx, offset_s: i64 },
    /// `kill -9` of a Garage node (0-based), restarted `ms` later.
    KillNode { node: usize, ms: u64 },
    /// SIGSTOP of a Garage node (its counters and syncs lag), SIGCONT
    /// `ms` later.
    PauseNode { node: usize, ms: u64 },
    /// A node cut off from everything.
    IsolateNode { node: usize, ms: u64 },
    /// A daemon cut off from two of the three nodes (a minority).
    DaemonMinority {
        daemon: DaemonIx,
        keep: usize,
        ms: u64,
    },
    /// Two nodes cut from each other; everyone else sees both.
    SplitNodes { a: usize, b: usize, ms: u64 },
    /// The host (the CLI connector and the admin jobs) cut off from one
    /// node.
    HostFromNode { node: usize, ms: u64 },
}

/// An admin job, started at its time, in a process of its own.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "job", rename_all = "kebab-case")]
pub(super) enum Job {
    /// `garage-ipfs compact`, `twin`: two at once, both with
    /// `--break-lease`; `kill_after_ms`: `kill -9` then; `pause_ms`:
    /// SIGSTOP for that long once it has run a second.
    Compact {
        clock_s: i64,
        twin_clock_s: Option<i64>,
        break_lease: bool,
        kill_after_ms: Option<u64>,
        pause_ms: Option<u64>,
    },
    /// `garage-ipfs gc` with the kept roots.
    Gc { clock_s: i64 },
    /// `garage-ipfs verify`.
    Verify,
    /// `garage-ipfs repair`.
    Repair,
}

/// Something to do at `at_ms` after the load starts.
#[derive(Debug, Clone, Serialize)]
pub(super) struct At<T> {
    pub(super) at_ms: u64,
    #[serde(flatten)]
    pub(super) what: T,
}

/// The knobs of the schedule.
#[derive(Debug, Clone)]
pub(super) struct Knobs {
    /// How long the load runs.
    pub(super) duration_ms: u64,
    /// Mean time between faults (the next is drawn after the previous
    /// one is undone).
    pub(super) fault_every_ms: u64,
    /// Mean time between admin jobs.
    pub(super) job_every_ms: u64,
    /// Whether partitions are drawn (nodes in network namespaces).
    pub(super) partitions: bool,
    /// Whether clock offsets are drawn (libfaketime).
    pub(super) clocks: bool,
    /// Longest pause of a daemon.
    pub(super) max_daemon_pause_ms: u64,
    /// Longest pause of a compactor (longer than its 2-min lease).
    pub(super) max_job_pause_ms: u64,
}

/// The whole schedule.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Schedule {
    pub(super) seed: u64,
    pub(super) faults: Vec<At<Fault>>,
    pub(super) jobs: Vec<At<Job>>,
}

/// Clock offsets a process may get: none, seconds, minutes, hours, either
/// way (the grace floor is an hour, the lease two minutes).
fn clock(rng: &mut SmallRng) -> i64 {
    let magnitude = match rng.random_range(0..6) {
        0 | 1 => 0,
        2 => rng.random_range(1..60),
        3 => rng.random_range(60..600),
        4 => rng.random_range(3_600..3 * 3_600),
        _ => rng.random_range(600..3_600),
    };
    if rng.random_bool(0.3) {
        -magnitude
    } else {
        magnitude
    }
}

fn exp_ms(rng: &mut SmallRng, mean: u64) -> u64 {
    let u: f64 = rng.random_range(1e-6..1.0);
    ((-u.ln()) * mean as f64) as u64
}

impl Schedule {
    /// Draws the schedule of `seed`.
    pub(super) fn new(seed: u64, k: &Knobs) -> Self {
        let mut rng = SmallRng::seed_from_u64(seed ^ 0x6e65_6d65_7369_7321);
        let mut faults = Vec::new();
        // A first quiet stretch lets the daemons' filters and maps build.
        let mut t = 3_000 + exp_ms(&mut rng, k.fault_every_ms);
        while t < k.duration_ms {
            let fault = Self::fault(&mut rng, k);
            let held = match &fault {
                Fault::KillDaemon { ms, .. }
                | Fault::PauseDaemon { ms, .. }
                | Fault::KillNode { ms, .. }
                | Fault::PauseNode { ms, .. }
                | Fault::IsolateNode { ms, .. }
                | Fault::DaemonMinority { ms, .. }
                | Fault::SplitNodes { ms, .. }
                | Fault::HostFromNode { ms, .. } => *ms,
                Fault::ClockDaemon { .. } => 0,
            };
            faults.push(At {
                at_ms: t,
                what: fault,
            });
            t += held + exp_ms(&mut rng, k.fault_every_ms);
        }
        let mut jobs = Vec::new();
        let mut t = 5_000 + exp_ms(&mut rng, k.job_every_ms);
        while t < k.duration_ms {
            let job = match rng.random_range(0..10) {
                0..=4 => {
                    let twin = rng.random_bool(0.4);
                    let c = if k.clocks { clock(&mut rng) } else { 0 };
                    let c2 = if k.clocks { clock(&mut rng) } else { 0 };
                    Job::Compact {
                        clock_s: c,
                        twin_clock_s: twin.then_some(c2),
                        break_lease: twin || rng.random_bool(0.3),
                        kill_after_ms: rng.random_bool(0.2).then(|| rng.random_range(200..4_000)),
                        pause_ms: rng
                            .random_bool(0.1)
                            .then(|| rng.random_range(5_000..=k.max_job_pause_ms.max(5_000))),
                    }
                }
                5..=7 => Job::Gc {
                    clock_s: if k.clocks { clock(&mut rng) } else { 0 },
                },
                8 => Job::Verify,
                _ => Job::Repair,
            };
            jobs.push(At {
                at_ms: t,
                what: job,
            });
            t += exp_ms(&mut rng, k.job_every_ms).max(500);
        }
        Self { seed, faults, jobs }
    }

    fn fault(rng: &mut SmallRng, k: &Knobs) -> Fault {
        let daemon = rng.random_range(0..2);
        let node = rng.random_range(0..3);
        let short = rng.random_range(1_000..8_000);
        loop {
            return match rng.random_range(0..10) {
                0 | 1 => Fault::KillDaemon { daemon, ms: short },
                2 => Fault::PauseDaemon {
                    daemon,
                    ms: rng.random_range(500..=k.max_daemon_pause_ms.max(500)),
                },
                3 if k.clocks => Fault::ClockDaemon {
                    daemon,
                    offset_s: clock(rng),
                },
                4 => Fault::KillNode { node, ms: short },
                5 => Fault::PauseNode { node, ms: short },
                6 if k.partitions => Fault::IsolateNode { node, ms: short },
                7 if k.partitions => Fault::DaemonMinority {
                    daemon,
                    keep: node,
                    ms: short,
                },
                8 if k.partitions => {
                    let b = (node + rng.random_range(1..3)) % 3;
                    Fault::SplitNodes {
                        a: node,
                        b,
                        ms: short,
                    }
                }
                9 if k.partitions => Fault::HostFromNode { node, ms: short },
                _ => continue,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn knobs() -> Knobs {
        Knobs {
            duration_ms: 600_000,
            fault_every_ms: 5_000,
            job_every_ms: 8_000,
            partitions: true,
            clocks: true,
            max_daemon_pause_ms: 20_000,
            max_job_pause_ms: 150_000,
        }
    }

    #[test]
    fn a_seed_gives_one_schedule() {
        let a = serde_json::to_string(&Schedule::new(7, &knobs())).unwrap();
        let b = serde_json::to_string(&Schedule::new(7, &knobs())).unwrap();
        let c = serde_json::to_string(&Schedule::new(8, &knobs())).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn faults_do_not_overlap_and_stay_in_the_run() {
        let k = knobs();
        let s = Schedule::new(3, &k);
        assert!(s.faults.len() > 20, "{} faults", s.faults.len());
        assert!(s.jobs.len() > 20, "{} jobs", s.jobs.len());
        for w in s.faults.windows(2) {
            assert!(w[0].at_ms < w[1].at_ms);
        }
        assert!(s.faults.iter().all(|f| f.at_ms < k.duration_ms));
        let k = Knobs {
            partitions: false,
            clocks: false,
            ..k
        };
        let s = Schedule::new(3, &k);
        assert!(s.faults.iter().all(|f| matches!(
            f.what,
            Fault::KillDaemon { .. }
                | Fault::PauseDaemon { .. }
                | Fault::KillNode { .. }
                | Fault::PauseNode { .. }
        )));
    }
}
