//! A TCP proxy on 127.0.0.1 that a test can cut off from its clients and reconnect, to play a
//! network outage of a server without stopping the server (which keeps its state).
//!
//! The proxy runs on a thread and a Tokio runtime of its own, so it keeps forwarding while the
//! test's own runtime is busy or blocked.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};

/// Longest wait for the forwarded connections to close after a cut (a guard against hangs).
const CUT_DEADLINE: Duration = Duration::from_secs(10);

/// A proxy from a port of its own to `upstream`, closed when dropped.
///
/// While reachable it forwards every connection. [`TcpProxy::set_reachable`]`(false)` resets
/// the connections it forwards and, until it is reachable again, accepts each new connection
/// and resets it at once: a client's request fails with a reset connection, as through a
/// broken network path (its connect succeeds, or fails with the reset when that comes early
/// enough), never with "connection refused".
pub struct TcpProxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    reachable: watch::Sender<bool>,
    /// Connections being forwarded.
    live: Arc<AtomicUsize>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl TcpProxy {
    /// Starts a reachable proxy to `upstream` on a free port of 127.0.0.1.
    pub fn start(upstream: SocketAddr) -> TcpProxy {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("proxy port");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let addr = listener.local_addr().expect("proxy address");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("the proxy's runtime");
        let (reachable, watcher) = watch::channel(true);
        let live = Arc::new(AtomicUsize::new(0));
        let (shutdown, stop) = oneshot::channel();
        let counter = live.clone();
        let thread = std::thread::Builder::new()
            .name(format!("proxy-{}", addr.port()))
            .spawn(move || runtime.block_on(serve(listener, upstream, watcher, counter, stop)))
            .expect("the proxy's thread");
        TcpProxy {
            addr,
            upstream,
            reachable,
            live,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address it forwards to.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// Cuts (`false`) or restores (`true`) the path to the upstream server. A cut returns once
    /// every forwarded connection is closed: no request sent after it reaches the server.
    pub fn set_reachable(&self, reachable: bool) {
        self.reachable.send_replace(reachable);
        if reachable {
            return;
        }
        let started = Instant::now();
        while self.live.load(Ordering::SeqCst) > 0 {
            assert!(
                started.elapsed() < CUT_DEADLINE,
                "the proxy on {} still forwards {} connections {CUT_DEADLINE:?} after the cut",
                self.addr,
                self.live.load(Ordering::SeqCst)
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Whether it forwards connections now.
    pub fn is_reachable(&self) -> bool {
        *self.reachable.borrow()
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            // The runtime, its connections with it, ends with the thread.
            let _ = thread.join();
        }
    }
}

/// Counts a forwarded connection until it is dropped.
struct Live(Arc<AtomicUsize>);

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Accepts connections until `stop`: forwards them while reachable, resets them otherwise.
async fn serve(
    listener: std::net::TcpListener,
    upstream: SocketAddr,
    reachable: watch::Receiver<bool>,
    live: Arc<AtomicUsize>,
    mut stop: oneshot::Receiver<()>,
) {
    let listener = match TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("proxy to {upstream}: cannot listen: {e}");
            return;
        }
    };
    loop {
        let accepted = tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => accepted,
        };
        let inbound = match accepted {
            Ok((inbound, _)) => inbound,
            Err(e) => {
                // Out of descriptors or the like: wait a little rather than spin.
                eprintln!("proxy to {upstream}: accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if !*reachable.borrow() {
            let _ = inbound.set_zero_linger();
            continue;
        }
        live.fetch_add(1, Ordering::SeqCst);
        let counted = Live(live.clone());
        tokio::spawn(forward(inbound, upstream, reachable.clone(), counted));
    }
}

/// Relays one connection until either side closes it or the path is cut.
async fn forward(
    mut inbound: TcpStream,
    upstream: SocketAddr,
    mut reachable: watch::Receiver<bool>,
    counted: Live,
) {
    let cut = {
        let relay = async {
            let mut outbound = TcpStream::connect(upstream).await?;
            tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await
        };
        tokio::select! {
            // The cut first: once it is seen, not one more byte goes either way.
            biased;
            _ = reachable.wait_for(|reachable| !reachable) => true,
            _ = relay => false,
        }
    };
    if cut {
        let _ = inbound.set_zero_linger();
    }
    drop(inbound);
    drop(counted);
}
