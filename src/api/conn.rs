//! Connection admission, shared by the HTTP and gRPC listeners: at most
//! `max_connections` open at once per listener (beyond it, clients wait in
//! the kernel's accept queue, where they cost us nothing), and a
//! connection whose first bytes do not arrive within the header deadline
//! is closed before any protocol code sees it. For HTTP/1 the first byte
//! is enough (hyper's header deadline takes over from it); for gRPC it is
//! the whole 24-byte HTTP/2 preface, since hyper's HTTP/2 handshake has no
//! deadline, and after it the keep-alive pings catch a stalled client.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

/// An admitted connection; its slot under the bound is freed on drop.
pub(super) struct Admitted {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
}

/// The HTTP/2 client preface's length.
pub(super) const HTTP2_PREFACE: usize = 24;

/// Accepts on `listener` in a task of its own until the receiver is
/// dropped, and hands over connections whose first `first_bytes` bytes
/// arrived within `deadline`, at most `max_connections` alive at once.
pub(super) fn admit(
    listener: TcpListener,
    max_connections: usize,
    first_bytes: usize,
    deadline: Duration,
) -> mpsc::Receiver<Admitted> {
    let (tx, rx) = mpsc::channel(16);
    let permits = Arc::new(Semaphore::new(max_connections.max(1)));
    tokio::spawn(async move {
        loop {
            let permit = tokio::select! {
                p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
                () = tx.closed() => return,
            };
            let stream = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors, a connection reset before
                        // accept...: wait a little, keep serving.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = tx.closed() => return,
            };
            let _ = stream.set_nodelay(true);
            let tx = tx.clone();
            tokio::spawn(async move {
                // A client too slow is dropped here, with its permit.
                if let Ok(true) =
                    tokio::time::timeout(deadline, arrived(&stream, first_bytes)).await
                {
                    let _ = tx
                        .send(Admitted {
                            stream,
                            _permit: permit,
                        })
                        .await;
                }
            });
        }
    });
    rx
}

/// Waits until `n` bytes are readable (not consumed); false if the peer
/// closed first. `peek` does not wait for more than it has, so a partial
/// arrival is polled again a little later.
async fn arrived(stream: &TcpStream, n: usize) -> bool {
    let mut buf = [0u8; HTTP2_PREFACE];
    let n = n.clamp(1, buf.len());
    loop {
        match stream.peek(&mut buf[..n]).await {
            Ok(0) | Err(_) => return false,
            Ok(got) if got >= n => return true,
            Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

impl AsyncRead for Admitted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Admitted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for Admitted {
    type ConnectInfo = <TcpStream as tonic::transport::server::Connected>::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}
