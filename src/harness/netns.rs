//! A private network for partition tests: each node in a Linux network
//! namespace of its own, joined to this process's namespace by a veth pair
//! on one bridge, on a /24 of 10.0.0.0/8 that nothing else here uses.
//!
//! A partition between two nodes is a pair of `blackhole` routes, one in
//! each namespace: packets are dropped silently, as on a cut link, so open
//! TCP connections stall until their peer's ping timeout rather than being
//! reset. Between a node and the host only the node's side gets a route:
//! TCP needs both directions, so that cuts it as well, and this process's
//! own namespace keeps no state but the bridge. Healing deletes the routes;
//! the connections resume or are re-established by Garage. The machine's
//! firewall, qdiscs and loopback are never touched. Everything made here
//! goes on [`NetLab::teardown`] or drop; what a killed process left behind
//! (names carry its PID) is removed by the next [`NetLab::create`].
//!
//! Needs root (or `CAP_NET_ADMIN` and `CAP_SYS_ADMIN`) and iproute2's `ip`.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use super::HarnessError;

/// One end of a link in the lab.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Peer {
    /// This process's namespace, where the connector under test runs.
    Host,
    /// Node `n` (1-based, as in `node3`), in its own namespace.
    Node(usize),
}

/// The bridge, the namespaces and the cuts of one cluster.
#[derive(Debug)]
pub struct NetLab {
    tag: String,
    subnet: [u8; 3],
    nodes: Mutex<BTreeSet<usize>>,
    cuts: Mutex<BTreeSet<(Peer, Peer)>>,
}

impl NetLab {
    /// Creates the bridge and picks a free subnet.
    pub fn create() -> Result<Self, HarnessError> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        remove_stale();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        // Interface names have at most 15 bytes: "gip" + 6 hex + n + "br".
        let tag = format!("{PREFIX}{:06x}{n}", std::process::id() & 0xff_ffff);
        let subnet = free_subnet(std::process::id() ^ n.rotate_left(16))?;
        let lab = Self {
            tag,
            subnet,
            nodes: Mutex::new(BTreeSet::new()),
            cuts: Mutex::new(BTreeSet::new()),
        };
        let br = lab.bridge();
        ip(&["link", "add", &br, "type", "bridge"]).map_err(|e| {
            HarnessError::Other(format!(
                "partition tests run each node in a network namespace, which needs root \
                 and iproute2's `ip`: {e}"
            ))
        })?;
        ip(&["addr", "add", &format!("{}/24", lab.host_ip()), "dev", &br])?;
        ip(&["link", "set", &br, "up"])?;
        Ok(lab)
    }

    /// Gives node `index` a namespace and an address on the bridge.
    pub fn add_node(&self, index: usize) -> Result<IpAddr, HarnessError> {
        assert!((1..=99).contains(&index), "node numbers run from 1 to 99");
        let ns = self.netns(index);
        let (host_end, node_end) = (
            format!("{}h{index}", self.tag),
            format!("{}v{index}", self.tag),
        );
        ip(&["netns", "add", &ns])?;
        self.nodes.lock().unwrap().insert(index);
        ip(&[
            "link", "add", &host_end, "type", "veth", "peer", "name", &node_end, "netns", &ns,
        ])?;
        ip(&["link", "set", &host_end, "master", &self.bridge(), "up"])?;
        let addr = format!("{}/24", self.node_ip(index));
        ip(&["-n", &ns, "addr", "add", &addr, "dev", &node_end])?;
        ip(&["-n", &ns, "link", "set", &node_end, "up"])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        Ok(self.node_ip(index))
    }

    /// The host side's address on the bridge (where a connector binds).
    pub fn host_ip(&self) -> IpAddr {
        self.addr(254)
    }

    /// Node `index`'s address.
    pub fn node_ip(&self, index: usize) -> IpAddr {
        self.addr(index as u8)
    }

    /// `program`, to be run inside node `index`'s namespace. `ip netns
    /// exec` execs it in place, so the child's PID is the program's.
    pub fn command(&self, index: usize, program: &Path) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns(index)]).arg(program);
        cmd
    }

    /// Cuts the link between `a` and `b`, both ways.
    pub fn cut(&self, a: Peer, b: Peer) -> Result<(), HarnessError> {
        let pair = (a.min(b), a.max(b));
        if pair.0 == pair.1 || !self.cuts.lock().unwrap().insert(pair) {
            return Ok(());
        }
        self.route("add", a, b)?;
        self.route("add", b, a)
    }

    /// Restores the link between `a` and `b`.
    pub fn heal(&self, a: Peer, b: Peer) -> Result<(), HarnessError> {
        if !self.cuts.lock().unwrap().remove(&(a.min(b), a.max(b))) {
            return Ok(());
        }
        self.route("del", a, b)?;
        self.route("del", b, a)
    }

    /// Cuts node `index` off from every other peer.
    pub fn isolate(&self, index: usize) -> Result<(), HarnessError> {
        for other in self.peers() {
            self.cut(Peer::Node(index), other)?;
        }
        Ok(())
    }

    /// Restores every link.
    pub fn heal_all(&self) -> Result<(), HarnessError> {
        let cuts: Vec<_> = self.cuts.lock().unwrap().iter().copied().collect();
        for (a, b) in cuts {
            self.heal(a, b)?;
        }
        Ok(())
    }

    /// The host and every node.
    pub fn peers(&self) -> Vec<Peer> {
        let nodes = self.nodes.lock().unwrap();
        std::iter::once(Peer::Host)
            .chain(nodes.iter().map(|&n| Peer::Node(n)))
            .collect()
    }

    /// Removes the namespaces and the bridge (node processes still in a
    /// namespace keep it alive, unreachable, until they exit). Idempotent.
    pub fn teardown(&self) {
        self.cuts.lock().unwrap().clear();
        for n in std::mem::take(&mut *self.nodes.lock().unwrap()) {
            let _ = ip(&["netns", "del", &self.netns(n)]);
        }
        let _ = ip(&["link", "del", &self.bridge()]);
    }

    /// Drops `from`'s packets to `to` (nothing for the host: see the module
    /// doc).
    fn route(&self, op: &str, from: Peer, to: Peer) -> Result<(), HarnessError> {
        let Peer::Node(n) = from else {
            return Ok(());
        };
        let dest = format!("{}/32", self.peer_ip(to));
        ip(&["-n", &self.netns(n), "route", op, "blackhole", &dest])
    }

    fn peer_ip(&self, peer: Peer) -> IpAddr {
        match peer {
            Peer::Host => self.host_ip(),
            Peer::Node(n) => self.node_ip(n),
        }
    }

    fn addr(&self, last: u8) -> IpAddr {
        let [a, b, c] = self.subnet;
        IpAddr::V4(Ipv4Addr::new(a, b, c, last))
    }

    fn bridge(&self) -> String {
        format!("{}br", self.tag)
    }

    fn netns(&self, index: usize) -> String {
        format!("{}n{index}", self.tag)
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// What every name made here starts with.
const PREFIX: &str = "gip";

/// Namespaces and bridges of labs whose process is gone.
fn remove_stale() {
    let owner_gone = |name: &str| {
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.get(..6))
            .and_then(|hex| u32::from_str_radix(hex, 16).ok())
        else {
            return false;
        };
        !Path::new(&format!("/proc/{pid}")).exists()
    };
    for line in ip_output(&["netns", "list"]).unwrap_or_default().lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        if owner_gone(name) {
            let _ = ip(&["netns", "del", name]);
        }
    }
    let bridges = ip_output(&["-o", "link", "show", "type", "bridge"]).unwrap_or_default();
    for line in bridges.lines() {
        // "7: gip00abcd0br: <BROADCAST,...": the name is the second field.
        let name = line.split(':').nth(1).unwrap_or("").trim();
        if name.ends_with("br") && owner_gone(name) {
            let _ = ip(&["link", "del", name]);
        }
    }
}

/// A 10.x.y.0/24 that no address or route of this namespace overlaps.
fn free_subnet(seed: u32) -> Result<[u8; 3], HarnessError> {
    let taken = format!(
        "{}\n{}",
        ip_output(&["-4", "-o", "addr", "show"])?,
        ip_output(&["-4", "route", "show", "table", "all"])?
    );
    for k in 0..64u32 {
        let s = seed.wrapping_add(k.wrapping_mul(2_654_435_761));
        let subnet = [10, 128 + (s % 96) as u8, (s >> 8) as u8];
        let prefix = format!("10.{}.{}.", subnet[1], subnet[2]);
        // A wider route (10.0.0.0/8) would overlap ours as well.
        if !taken.contains(&prefix) && !taken.contains("10.0.0.0/8") {
            return Ok(subnet);
        }
    }
    Err(HarnessError::Other(
        "no free 10.x.y.0/24 subnet for the test network".into(),
    ))
}

fn ip(args: &[&str]) -> Result<(), HarnessError> {
    ip_output(args).map(drop)
}

fn ip_output(args: &[&str]) -> Result<String, HarnessError> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| HarnessError::Other(format!("cannot run `ip` (iproute2): {e}")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(HarnessError::Command {
            command: format!("ip {}", args.join(" ")),
            status: out.status.to_string(),
            output: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}
