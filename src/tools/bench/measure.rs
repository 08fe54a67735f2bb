//! What a phase costs: latency percentiles, the nodes' own Prometheus
//! counters, and process CPU time from `/proc`.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Prometheus counter of the RPCs a Garage node sends (to any node,
/// itself included), labelled by endpoint and destination.
pub(super) const RPC_COUNTER: &str = "rpc_request_counter";

/// Prometheus counter of the S3 API requests a Garage node served.
pub(super) const S3_COUNTER: &str = "api_s3_request_counter";

/// The `p`-th percentile (0–100) of sorted samples, by nearest rank; 0 for
/// no samples.
pub(super) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let n = sorted.len();
    let rank = ((p / 100.0) * n as f64).ceil() as usize;
    sorted[rank.clamp(1, n) - 1]
}

/// The sum of every sample of metric `name` in a Prometheus text
/// exposition (all label sets).
pub(super) fn sum_metric(text: &str, name: &str) -> f64 {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let value = match rest.strip_prefix('{') {
                Some(labels) => &labels[labels_end(labels)? + 1..],
                // Another metric whose name merely starts with `name`.
                None if !rest.starts_with([' ', '\t']) => return None,
                None => rest,
            };
            value.split_whitespace().next()?.parse::<f64>().ok()
        })
        .filter(|v| v.is_finite())
        .sum()
}

/// Index of the `}` closing a label set (the text after the `{`); label
/// values are quoted and may hold escaped quotes and braces.
fn labels_end(labels: &str) -> Option<usize> {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in labels.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '}' if !quoted => return Some(i),
            _ => (),
        }
    }
    None
}

/// `GET http://<addr>/metrics`: a node's Prometheus exposition. Plain
/// HTTP/1.0, so the body ends with the connection.
pub(super) async fn scrape(addr: SocketAddr) -> anyhow::Result<String> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let request =
            format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\nAccept: text/plain\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    let answer = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .with_context(|| format!("GET http://{addr}/metrics timed out"))?
        .with_context(|| format!("GET http://{addr}/metrics"))?;
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("GET http://{addr}/metrics: malformed answer"))?;
    let status = head.lines().next().unwrap_or_default();
    anyhow::ensure!(
        status.split_whitespace().nth(1) == Some("200"),
        "GET http://{addr}/metrics answered {status:?}"
    );
    Ok(body.to_string())
}

/// Clock ticks per second of `/proc/*/stat` times.
pub(super) fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// User plus system CPU time, in clock ticks, from the text of a
/// `/proc/<pid>/stat` file (fields 14 and 15; the command name, field 2,
/// may hold spaces and parentheses, so fields count from its last `)`).
pub(super) fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// CPU ticks used so far by another process, from `/proc/<pid>/stat`.
pub(super) fn process_cpu_ticks(pid: u32) -> Option<u64> {
    stat_cpu_ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// User plus system CPU time used so far by this process, in seconds:
/// `getrusage`, finer than `/proc/self/stat`'s clock ticks.
pub(super) fn self_cpu_seconds() -> Option<f64> {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given and nothing else.
    let usage = unsafe {
        if libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) != 0 {
            return None;
        }
        usage.assume_init()
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Some(secs(usage.ru_utime) + secs(usage.ru_stime))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert_eq!(percentile(&[1.0, 2.0, 3.0], 50.0), 2.0);
        assert_eq!(percentile(&[1.0, 2.0], 99.0), 2.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }

    #[test]
    fn prometheus_counters_are_summed_over_label_sets() {
        let text = r#"# HELP rpc_request_counter Number of RPC requests emitted
# TYPE rpc_request_counter counter
rpc_request_counter{from="7c32",rpc_endpoint="garage_rpc/system.rs/SystemRpc",to="7c32"} 3
rpc_request_counter{from="7c32",rpc_endpoint="garage_table/table.rs/Rpc:key",to="a1b2"} 6
rpc_request_counter_total 1000
rpc_request_counters{x="1"} 1000
rpc_duration_sum{rpc_endpoint="x"} 0.5
api_s3_request_counter{api_endpoint="GetObject"} 2
api_s3_request_counter{api_endpoint="Put}Object\"{"} 1e3
api_s3_request_counter 4
"#;
        assert_eq!(sum_metric(text, RPC_COUNTER), 9.0);
        assert_eq!(sum_metric(text, S3_COUNTER), 1006.0);
        assert_eq!(sum_metric(text, "absent_metric"), 0.0);
    }

    #[test]
    fn proc_stat_cpu_fields() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt
        // majflt cmajflt utime stime ...
        let stat = "1234 (garage (x) y) S 1 1234 1234 0 -1 4194560 500 0 0 0 250 75 0 0 20 0 9";
        assert_eq!(stat_cpu_ticks(stat), Some(325));
        assert_eq!(stat_cpu_ticks("garbage"), None);
        assert!(process_cpu_ticks(std::process::id()).is_some());
        let before = self_cpu_seconds().unwrap();
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
        assert!(self_cpu_seconds().unwrap() > before, "{x}");
    }
}
