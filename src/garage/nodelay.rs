//! TCP_NODELAY on the connector's sockets to storage nodes, without
//! touching any other socket of the process.
//!
//! Garage 2.5's network layer (`garage_net`) opens its sockets itself,
//! never sets `TCP_NODELAY`, and exposes neither the streams nor a hook
//! (its one `on_connected` handler belongs to `garage_rpc`'s `System`). A
//! small RPC message then waits for the peer's delayed ACK: ~40 ms stalls
//! (docs/DESIGN.md, "TCP_NODELAY"). So the connector finds its own
//! sockets: every TCP socket of the process whose peer is a known storage
//! node's RPC address, or whose local port is the connector's RPC port
//! (its listener and the connections nodes open to it), gets the option,
//! right after joining and then once a second (a reconnected node's new
//! socket waits at most that long). Sockets of the program embedding the
//! store, its HTTP clients and servers, are left as they are.

use std::collections::HashSet;
use std::net::SocketAddr;

/// Sets `TCP_NODELAY` on every socket of this process that is connected
/// to one of `peers` or bound to `local_port`; returns how many it set
/// (sockets that had it already are not counted).
pub(crate) fn set_on_cluster_sockets(
    peers: &HashSet<SocketAddr>,
    local_port: Option<u16>,
) -> usize {
    #[cfg(target_os = "linux")]
    {
        linux::set_on_cluster_sockets(peers, local_port)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (peers, local_port);
        0
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use super::*;
    use std::os::fd::{BorrowedFd, RawFd};

    pub(super) fn set_on_cluster_sockets(
        peers: &HashSet<SocketAddr>,
        local_port: Option<u16>,
    ) -> usize {
        let Ok(fds) = std::fs::read_dir("/proc/self/fd") else {
            return 0;
        };
        let mut set = 0;
        for entry in fds.flatten() {
            let Some(fd) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<RawFd>().ok())
            else {
                continue;
            };
            let is_socket = std::fs::read_link(entry.path())
                .is_ok_and(|t| t.as_os_str().as_encoded_bytes().starts_with(b"socket:"));
            if !is_socket {
                continue;
            }
            // SAFETY: the descriptor is only borrowed for the calls below.
            // Should it be closed and reused meanwhile, the calls fail or
            // act on the new socket, and the only change they make is a
            // TCP option on a socket that passes the same test.
            let fd = unsafe { BorrowedFd::borrow_raw(fd) };
            let sock = socket2::SockRef::from(&fd);
            if !matches!(sock.r#type(), Ok(t) if t == socket2::Type::STREAM) {
                continue;
            }
            let peer = sock.peer_addr().ok().and_then(|a| a.as_socket());
            let local = sock.local_addr().ok().and_then(|a| a.as_socket());
            let ours = peer.is_some_and(|p| peers.contains(&p))
                || (local_port.is_some() && local.map(|l| l.port()) == local_port);
            if ours && matches!(sock.tcp_nodelay(), Ok(false)) && sock.set_tcp_nodelay(true).is_ok()
            {
                set += 1;
            }
        }
        set
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// Sockets to a "node" get the option; a socket of the same process
    /// to another address keeps its own setting.
    #[tokio::test]
    async fn only_sockets_to_cluster_peers_get_nodelay() {
        let node = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let other = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let to_node = tokio::net::TcpStream::connect(node.local_addr().unwrap())
            .await
            .unwrap();
        let to_other = tokio::net::TcpStream::connect(other.local_addr().unwrap())
            .await
            .unwrap();
        to_node.set_nodelay(false).unwrap();
        to_other.set_nodelay(false).unwrap();
        let peers = HashSet::from([node.local_addr().unwrap()]);
        assert_eq!(set_on_cluster_sockets(&peers, None), 1);
        assert!(to_node.nodelay().unwrap());
        assert!(
            !to_other.nodelay().unwrap(),
            "a socket not ours was changed"
        );
        assert_eq!(set_on_cluster_sockets(&peers, None), 0, "set twice");
        // Bound to the connector's port: its listener (and what it accepts).
        let port = other.local_addr().unwrap().port();
        assert!(set_on_cluster_sockets(&HashSet::new(), Some(port)) >= 1);
    }
}
