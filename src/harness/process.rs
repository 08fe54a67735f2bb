//! Starting and stopping node processes.
//!
//! Two lifetimes:
//! - *detached* (`garage-ipfs cluster up`): each node gets its own session
//!   and a PID file, and outlives the command; `cluster down` stops exactly
//!   those PIDs, after checking that each still runs our node's config;
//! - *attached* (tests): each node dies with the process that started it,
//!   even when a test panics or the runner is killed, by `PR_SET_PDEATHSIG`.
//!   Linux sends that signal when the *thread* that forked exits, so all
//!   attached nodes are forked by one thread that lives as long as the
//!   process.

use std::io;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

fn spawner() -> &'static Mutex<mpsc::Sender<SpawnRequest>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("garage-ipfs-node-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
                // The sender lives in a static, so this loop never ends
                // before the process does.
                loop {
                    std::thread::park();
                }
            })
            .expect("cannot start the spawner thread");
        Mutex::new(tx)
    })
}

/// Spawns a process that is killed when this process ends.
pub fn spawn_attached(mut cmd: Command) -> io::Result<Child> {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    let (tx, rx) = mpsc::channel();
    spawner()
        .lock()
        .unwrap()
        .send((cmd, tx))
        .map_err(|_| io::Error::other("spawner thread is gone"))?;
    rx.recv()
        .map_err(|_| io::Error::other("spawner thread is gone"))?
}

/// Spawns a process in its own session, so that it outlives this one.
pub fn spawn_detached(mut cmd: Command) -> io::Result<Child> {
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// Whether `pid` is alive and its command line mentions `marker` (so a
/// recycled PID is never mistaken for one of our nodes).
pub fn is_our_process(pid: u32, marker: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let marker = marker.as_os_str().as_encoded_bytes();
    let is_zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(true);
    !is_zombie && cmdline.windows(marker.len()).any(|w| w == marker)
}

/// Sends `signal` to `pid`.
pub fn signal(pid: u32, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: plain syscall.
    if unsafe { libc::kill(pid as libc::pid_t, signal) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Stops a detached process: SIGTERM, then SIGKILL after `grace`.
/// Returns false if it was not running.
pub fn stop_pid(pid: u32, marker: &Path, grace: Duration) -> bool {
    if !is_our_process(pid, marker) {
        return false;
    }
    let _ = signal(pid, libc::SIGTERM);
    let start = Instant::now();
    while is_our_process(pid, marker) {
        if start.elapsed() > grace {
            let _ = signal(pid, libc::SIGKILL);
            std::thread::sleep(Duration::from_millis(200));
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    true
}
