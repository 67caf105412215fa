//! Proxy workers: thread-per-core serving, as nginx does with its worker processes.
//!
//! The proxy listener's accept loop hands each connection, round-robin, to one of
//! `server.workers` OS threads, each running its own single-threaded tokio runtime. A
//! connection lives on its worker from then on: its requests never cross threads, so a cache
//! hit costs no cross-thread wake-up and no work-stealing bookkeeping. Measured with
//! `bench/vs_nginx.sh` on 2 cores, this served ~13–15% more hits per second than one
//! work-stealing runtime for all connections.
//!
//! Work a request starts (an upstream fill, a background revalidation) runs on the worker that
//! started it; other workers' requests may join it (see [`crate::coalesce`]), which is the only
//! cross-thread traffic. The cost: one connection's requests are limited to one core, so a
//! single HTTP/2 connection multiplexing many slow requests does not spread over cores.

use std::net::SocketAddr;
use std::sync::Arc;

use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};
use tracing::warn;

use super::{Accepted, ConnectionLimits, Service, connection_builder, spawn_connection};
use crate::pipeline::Gateway;

/// A connection handed to a worker (as a std socket: a tokio one is tied to the runtime that
/// registered it), with its slot under `server.max_connections`.
type Handover = (std::net::TcpStream, SocketAddr, OwnedSemaphorePermit);

/// The running workers, as seen by the accept loop.
pub(super) struct Workers {
    workers: Vec<Worker>,
    next: usize,
}

/// One worker thread, as the accept loop sees it.
struct Worker {
    sender: mpsc::UnboundedSender<Handover>,
    /// Resolves when the worker has drained its connections and stopped.
    stopped: oneshot::Receiver<()>,
    connections: metrics::Counter,
}

impl Workers {
    /// Starts `count` workers serving the proxy. Each runtime is built here, so a failure is
    /// reported before the gateway says it is listening.
    pub(super) fn start(
        count: usize,
        gateway: &Arc<Gateway>,
        limits: ConnectionLimits,
    ) -> Result<Workers, String> {
        let app = Service::Proxy(Arc::clone(gateway));
        let mut workers = Vec::with_capacity(count);
        for index in 0..count {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("server.workers: cannot start worker {index}: {e}"))?;
            gateway.metrics().watch_runtime(runtime.handle().clone());
            let (sender, receiver) = mpsc::unbounded_channel();
            let (stopped_tx, stopped) = oneshot::channel();
            let app = app.clone();
            std::thread::Builder::new()
                .name(format!("ghgate-worker-{index}"))
                .spawn(move || {
                    crate::upstream::bind_thread_to_worker(index);
                    runtime.block_on(run(receiver, app, limits));
                    // Tasks still alive (a background revalidation) are dropped with the runtime.
                    drop(runtime);
                    let _ = stopped_tx.send(());
                })
                .map_err(|e| format!("server.workers: cannot start worker {index}: {e}"))?;
            let connections = gateway.metrics().worker_connections(index);
            workers.push(Worker { sender, stopped, connections });
        }
        gateway.metrics().proxy_workers.set(count as f64);
        Ok(Workers { workers, next: 0 })
    }

    /// Gives an accepted connection to the next worker in turn.
    pub(super) fn hand_over(&mut self, accepted: Accepted) {
        let Accepted { stream, peer, _slot: slot } = accepted;
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(e) => {
                warn!(error = %e, %peer, "could not hand a connection to a worker");
                return;
            }
        };
        let worker = &self.workers[self.next % self.workers.len()];
        self.next = self.next.wrapping_add(1);
        worker.connections.increment(1);
        if worker.sender.send((stream, peer, slot)).is_err() {
            warn!(%peer, "a proxy worker has stopped; connection dropped");
        }
    }

    /// Stops handing out connections and waits until every worker has let its in-flight
    /// requests finish (each bounded by `server.shutdown_grace`).
    pub(super) async fn drain(self) {
        let mut stopped = Vec::with_capacity(self.workers.len());
        for worker in self.workers {
            drop(worker.sender);
            stopped.push(worker.stopped);
        }
        for done in stopped {
            let _ = done.await;
        }
    }
}

/// One worker's life: serve what it is handed until the accept loop stops, then drain.
async fn run(mut receiver: mpsc::UnboundedReceiver<Handover>, app: Service, limits: ConnectionLimits) {
    let builder = connection_builder(limits);
    let graceful = GracefulShutdown::new();
    while let Some((stream, peer, slot)) = receiver.recv().await {
        match TcpStream::from_std(stream) {
            Ok(stream) => {
                let accepted = Accepted { stream, peer, _slot: slot };
                spawn_connection(&builder, &graceful, accepted, app.clone(), limits.header_read_timeout)
            }
            Err(e) => warn!(error = %e, %peer, "a worker could not take a connection"),
        }
    }
    super::drain(graceful, limits, "proxy").await;
}
