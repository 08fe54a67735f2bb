//! TCP_NODELAY on every TCP socket of the `garage-ipfs` program.
//!
//! A module of the binary, not of the library: it defines the C library's
//! `socket` symbol, which changes every socket of the program that links
//! it, and a program embedding the store must not get that behind its
//! back. The library sets the option on its own cluster sockets only,
//! once a second (`garage/nodelay.rs`); the binary, which owns all its
//! sockets, goes further: every TCP socket it creates, `garage_net`'s
//! among them, has the option from the start (no second without it after
//! a node reconnects), and so do its HTTP and gRPC listeners' connections
//! (on Linux, accepted sockets inherit it from their listener). The real
//! work is the raw system call, as in the C library. See docs/DESIGN.md,
//! "TCP_NODELAY".
//!
//! The servers' side needs the same fix: the dev cluster and the benchmark
//! run their nodes with a preload shim of ours (`harness/nodelay.c`).

use libc::{c_int, c_void, socklen_t};

/// Creates a socket like the C library's `socket`, and sets `TCP_NODELAY`
/// on TCP ones.
///
/// # Safety
/// Same contract as `socket(2)`.
#[no_mangle]
pub unsafe extern "C" fn socket(domain: c_int, ty: c_int, protocol: c_int) -> c_int {
    let fd = libc::syscall(libc::SYS_socket, domain, ty, protocol) as c_int;
    let base = ty & !(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC);
    if fd >= 0 && (domain == libc::AF_INET || domain == libc::AF_INET6) && base == libc::SOCK_STREAM
    {
        let one: c_int = 1;
        // Best effort: on failure the socket is as it would have been.
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            &one as *const c_int as *const c_void,
            std::mem::size_of::<c_int>() as socklen_t,
        );
    }
    fd
}

/// Keeps [`socket`] referenced from `main`, so that no linker setting can
/// drop it as unused.
pub fn ensure_linked() {
    std::hint::black_box(socket as *const ());
}

#[cfg(test)]
mod tests {
    /// Both ends of a tokio connection have the option without anyone
    /// asking for it: connected and accepted sockets alike.
    #[tokio::test]
    async fn tcp_sockets_get_nodelay() {
        super::ensure_linked();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) =
            tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        assert!(client.unwrap().nodelay().unwrap(), "connected socket");
        assert!(accepted.unwrap().0.nodelay().unwrap(), "accepted socket");
        let std_stream = std::net::TcpStream::connect(addr).unwrap();
        assert!(std_stream.nodelay().unwrap(), "std socket");
    }
}
