//! Group commit: concurrent small writes share one request.
//!
//! Each put of the store writes a `block_ref` row and a K2V index item.
//! Sent one by one, every such write is a round trip to the nodes and a
//! database transaction on each of them; under load most of a put's cost
//! is that per-request overhead. A [`Batcher`] queues writes and sends
//! whatever is waiting as one request (`insert_many`, `InsertManyItems`),
//! with at most `in_flight` requests at a time. While those are out, new
//! writes pile up and leave together with the next request, so batches
//! grow with load and a lone write is never held back by a timer.
//!
//! A write is acknowledged only when the request holding it succeeded on
//! its quorum; if the request fails, every write in it gets the error. A
//! request that panics fails its writes with a permanent error (not one
//! the store retries: the same writes would panic again).

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Semaphore};

use super::error::Error;
use super::Op;

/// How much a batcher queues and sends.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BatchLimits {
    /// Writes per request, at most.
    pub max_items: usize,
    /// Bytes per request, at most (by the writes' own estimates).
    pub max_bytes: usize,
    /// Requests in flight at once.
    pub in_flight: usize,
    /// Writes waiting, at most; submitters wait beyond (back-pressure).
    pub queue: usize,
}

struct Pending<T, R> {
    item: T,
    op: Op,
    bytes: usize,
    done: oneshot::Sender<Result<R, Error>>,
}

/// A group-commit queue for writes of type `T`; each write learns the
/// outcome `R` of the request that held it.
pub(crate) struct Batcher<T, R = ()> {
    tx: mpsc::Sender<Pending<T, R>>,
}

impl<T: Send + 'static, R: Clone + Send + 'static> Batcher<T, R> {
    /// Starts the batching task; `write` sends one batch. The task ends
    /// when the batcher is dropped.
    pub(crate) fn spawn<F, Fut>(limits: BatchLimits, write: F) -> Self
    where
        F: Fn(Vec<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, Error>> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(limits.queue.max(1));
        tokio::spawn(run(rx, limits, Arc::new(write)));
        Self { tx }
    }

    /// Queues one write of about `bytes` bytes and waits until the request
    /// holding it is acknowledged.
    pub(crate) async fn submit(&self, item: T, bytes: usize) -> Result<R, Error> {
        let (done, rx) = oneshot::channel();
        let stopped = || Error::Internal("the write batcher stopped".into());
        self.tx
            .send(Pending {
                item,
                op: Op::current(),
                bytes,
                done,
            })
            .await
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }
}

async fn run<T, R, F, Fut>(
    mut rx: mpsc::Receiver<Pending<T, R>>,
    limits: BatchLimits,
    write: Arc<F>,
) where
    T: Send + 'static,
    R: Clone + Send + 'static,
    F: Fn(Vec<T>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<R, Error>> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(limits.in_flight.max(1)));
    loop {
        // Take a slot first: while every slot is busy, writes accumulate.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else {
            return;
        };
        let mut bytes = first.bytes;
        let mut batch = vec![first];
        while batch.len() < limits.max_items && bytes < limits.max_bytes {
            match rx.try_recv() {
                Ok(p) => {
                    bytes += p.bytes;
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        let write = write.clone();
        // The request counts under the operation of its first write.
        let op = batch[0].op;
        tokio::spawn(async move {
            let (items, waiters): (Vec<T>, Vec<_>) =
                batch.into_iter().map(|p| (p.item, p.done)).unzip();
            let request = std::panic::AssertUnwindSafe(async {
                op.scope(op.sync_scope(|| write(items))).await
            });
            let result = match futures::FutureExt::catch_unwind(request).await {
                Ok(result) => result,
                Err(panic) => {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    tracing::error!(panic = %what, "a write batch panicked");
                    Err(Error::Internal(format!("a write batch panicked: {what}")))
                }
            };
            for w in waiters {
                let _ = w.send(result.as_ref().map(R::clone).map_err(Error::duplicate));
            }
            drop(slot);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::Duration;

    fn limits(max_items: usize, in_flight: usize) -> BatchLimits {
        BatchLimits {
            max_items,
            max_bytes: usize::MAX,
            in_flight,
            queue: 1024,
        }
    }

    #[tokio::test]
    async fn concurrent_writes_share_requests() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let seen = sizes.clone();
        let b = Arc::new(Batcher::spawn(limits(64, 1), move |items: Vec<u32>| {
            seen.lock().unwrap().push(items.len());
            async {
                tokio::time::sleep(Duration::from_millis(20)).await;
                Ok(())
            }
        }));
        let tasks: Vec<_> = (0..100)
            .map(|i| {
                let b = b.clone();
                tokio::spawn(async move { b.submit(i, 1).await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let sizes = sizes.lock().unwrap();
        assert_eq!(sizes.iter().sum::<usize>(), 100);
        assert!(sizes.len() < 10, "100 writes took {} requests", sizes.len());
        assert!(sizes.iter().all(|n| *n <= 64));
    }

    #[tokio::test]
    async fn a_failed_request_fails_each_of_its_writes() {
        let b = Arc::new(Batcher::spawn(limits(8, 2), |items: Vec<u32>| async move {
            if items.contains(&13) {
                Err(Error::Quorum("2 of 3 needed".into()))
            } else {
                Ok(())
            }
        }));
        assert!(b.submit(1, 1).await.is_ok());
        match b.submit(13, 1).await {
            Err(Error::Quorum(m)) => assert!(m.contains("2 of 3")),
            other => panic!("expected the quorum error, got {other:?}"),
        }
    }

    /// Several writes waiting on one request that fails each get the
    /// error, as the same (retryable) variant; writes of other requests
    /// are acknowledged.
    #[tokio::test]
    async fn a_failed_request_fails_every_waiter_in_it() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let seen = sizes.clone();
        let b = Arc::new(Batcher::spawn(limits(8, 1), move |items: Vec<u32>| {
            seen.lock().unwrap().push(items.clone());
            async move {
                // The first request holds the only slot while the others
                // queue up behind it.
                tokio::time::sleep(Duration::from_millis(100)).await;
                if items.contains(&13) {
                    Err(Error::Quorum("2 of 3 needed".into()))
                } else {
                    Ok(())
                }
            }
        }));
        let first = tokio::spawn({
            let b = b.clone();
            async move { b.submit(0, 1).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let waiters: Vec<_> = (10..18)
            .map(|i| {
                let b = b.clone();
                tokio::spawn(async move { (i, b.submit(i, 1).await) })
            })
            .collect();
        assert!(first.await.unwrap().is_ok());
        for w in waiters {
            match w.await.unwrap() {
                (i, Err(e @ Error::Quorum(_))) => assert!(e.is_retryable(), "{i}"),
                (i, other) => panic!("write {i}: expected the quorum error, got {other:?}"),
            }
        }
        let mut requests = sizes.lock().unwrap().clone();
        requests[1].sort();
        assert_eq!(requests, vec![vec![0], (10..18).collect::<Vec<_>>()]);
    }

    /// A request that panics fails its writes with a permanent error, and
    /// the batcher goes on serving the next ones.
    #[tokio::test]
    async fn a_panicking_request_fails_its_writes_for_good() {
        let b = Batcher::spawn(limits(8, 1), |items: Vec<u32>| async move {
            assert!(!items.contains(&13), "thirteen");
            Ok(())
        });
        match b.submit(13, 1).await {
            Err(e @ Error::Internal(_)) => {
                assert!(!e.is_transient(), "{e}");
                assert!(e.to_string().contains("panicked: thirteen"), "{e}");
            }
            other => panic!("expected a permanent error, got {other:?}"),
        }
        assert!(b.submit(1, 1).await.is_ok());
    }
}
