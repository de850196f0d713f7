//! `FaultyLink`: a TCP proxy that behaves like a bad mobile network.
//!
//! Every connection through it is given one fault, drawn from a seeded random generator so a
//! failing run can be replayed: none, a delay on every chunk, a cut after some bytes of the
//! request or of the response (both sides closed, as when a phone loses its radio), a stall
//! (nothing forwarded for a while, then either resumed or cut), or a reset (RST to both ends).
//! Byte counts run over the whole connection, so with keep-alive the fault lands on whichever
//! request is in flight at that point.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What happens to one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Each chunk, either way, waits this long (and the connection is cut after a while).
    Delay(Duration),
    /// Both sides closed after this many bytes from the client.
    CutRequest(usize),
    /// Both sides closed after this many bytes from the server.
    CutResponse(usize),
    /// After this many bytes from the server, nothing moves for a while; then the connection
    /// either resumes (`true`) or is cut.
    Stall(usize, Duration, bool),
    /// After this many bytes from the server, both sides get a TCP reset.
    Reset(usize),
}

/// Counts of the faults dealt, by kind.
#[derive(Debug, Default)]
pub struct FaultCounts {
    pub connections: AtomicUsize,
    pub delayed: AtomicUsize,
    pub cut_requests: AtomicUsize,
    pub cut_responses: AtomicUsize,
    pub stalled: AtomicUsize,
    pub resets: AtomicUsize,
}

/// A running proxy in front of `upstream`; stops on drop.
///
/// Faulty connections get the fault kinds in turn (with random parameters), so that every
/// kind is dealt once enough connections have been made.
pub struct FaultyLink {
    pub addr: SocketAddr,
    pub counts: Arc<FaultCounts>,
    task: JoinHandle<()>,
}

impl FaultyLink {
    /// Proxies to `upstream`, dealing faults to about `share` (0..=1) of the connections.
    pub async fn start(upstream: SocketAddr, share: f64, seed: u64) -> FaultyLink {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let counts = Arc::new(FaultCounts::default());
        let rng = Arc::new(Mutex::new((StdRng::seed_from_u64(seed), 0usize)));
        let task = {
            let counts = counts.clone();
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    let fault = {
                        let (rng, turn) = &mut *rng.lock().unwrap();
                        draw(rng, turn, share)
                    };
                    counts.connections.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(relay(client, upstream, fault, counts.clone()));
                }
            })
        };
        FaultyLink { addr, counts, task }
    }

    pub fn count(&self, counter: impl Fn(&FaultCounts) -> &AtomicUsize) -> usize {
        counter(&self.counts).load(Ordering::Relaxed)
    }
}

impl Drop for FaultyLink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn draw(rng: &mut StdRng, turn: &mut usize, share: f64) -> Fault {
    if !rng.gen_bool(share) {
        // Even a good connection does not last: the phone changes cells after a while.
        return Fault::CutResponse(rng.gen_range(500..2500));
    }
    *turn += 1;
    // Requests and responses on this protocol are a few hundred bytes each, so these offsets
    // land inside the first few exchanges of a connection, often in the middle of one.
    let at = rng.gen_range(0..900);
    match *turn % 6 {
        0 => Fault::Delay(Duration::from_millis(rng.gen_range(5..60))),
        1 => Fault::CutRequest(rng.gen_range(0..400)),
        2 | 3 => Fault::CutResponse(at),
        4 => Fault::Stall(
            at,
            Duration::from_millis(rng.gen_range(100..1500)),
            rng.gen_bool(0.5),
        ),
        _ => Fault::Reset(at),
    }
}

/// How a relayed connection ends.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ending {
    Running,
    /// Orderly: FIN both ways.
    Closed,
    /// SO_LINGER 0 on both sockets: they are dropped without a FIN, so the peers see RST.
    Reset,
}

/// Bytes one direction forwards before the fault, and what the fault is.
type Budget = (usize, Then);

/// What one direction of the relay does when its byte budget runs out.
#[derive(Clone, Copy)]
enum Then {
    Close,
    Stall(Duration, bool),
    Reset,
}

async fn relay(client: TcpStream, upstream: SocketAddr, fault: Fault, counts: Arc<FaultCounts>) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let (mut up, mut down): (Option<Budget>, Option<Budget>) = (None, None);
    let mut delay = Duration::ZERO;
    match fault {
        Fault::Delay(d) => {
            delay = d;
            counts.delayed.fetch_add(1, Ordering::Relaxed);
            // A slow link breaks too, eventually.
            down = Some((4000, Then::Close));
        }
        Fault::CutRequest(n) => up = Some((n, Then::Close)),
        Fault::CutResponse(n) => down = Some((n, Then::Close)),
        Fault::Stall(n, d, resume) => down = Some((n, Then::Stall(d, resume))),
        Fault::Reset(n) => down = Some((n, Then::Reset)),
    }
    // Either direction ending (a cut, or EOF from one end) ends both: a half-closed relay
    // would hide exactly the half-open connections this proxy exists to produce.
    let (done, _) = watch::channel(Ending::Running);
    let done = Arc::new(done);
    let to_server = pump(
        client_read,
        server_write,
        up,
        delay,
        done.clone(),
        counts.clone(),
        true,
    );
    let to_client = pump(
        server_read,
        client_write,
        down,
        delay,
        done.clone(),
        counts,
        false,
    );
    tokio::join!(to_server, to_client);
}

async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    budget: Option<Budget>,
    delay: Duration,
    done: Arc<watch::Sender<Ending>>,
    counts: Arc<FaultCounts>,
    upstream: bool,
) {
    let mut stop = done.subscribe();
    let mut buffer = vec![0u8; 4096];
    let mut left = budget.map(|(n, _)| n);
    let mut fault_dealt = false;
    let mut ending = Ending::Closed;
    loop {
        let n = tokio::select! {
            read = from.read(&mut buffer) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
            _ = stop.wait_for(|d| *d != Ending::Running) => break,
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let mut chunk = &buffer[..n];
        if let (Some(remaining), Some((_, then))) = (left, budget)
            && !fault_dealt
            && chunk.len() >= remaining
        {
            // Forward up to the budget, then deal the fault.
            if to.write_all(&chunk[..remaining]).await.is_err() {
                break;
            }
            chunk = &chunk[remaining..];
            fault_dealt = true;
            left = None;
            match then {
                Then::Close => {
                    let counter = if upstream {
                        &counts.cut_requests
                    } else {
                        &counts.cut_responses
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Then::Reset => {
                    counts.resets.fetch_add(1, Ordering::Relaxed);
                    // A zero linger makes close() send RST at once (it never blocks).
                    let _ = socket2::SockRef::from(to.as_ref()).set_linger(Some(Duration::ZERO));
                    let _ = socket2::SockRef::from(from.as_ref()).set_linger(Some(Duration::ZERO));
                    ending = Ending::Reset;
                    break;
                }
                Then::Stall(pause, resume) => {
                    counts.stalled.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(pause).await;
                    if !resume {
                        break;
                    }
                }
            }
        } else if let Some(remaining) = left.as_mut() {
            *remaining -= chunk.len();
        }
        if !chunk.is_empty() && to.write_all(chunk).await.is_err() {
            break;
        }
    }
    // The first direction to end decides how the connection ends.
    done.send_if_modified(|state| {
        let first = *state == Ending::Running;
        if first {
            *state = ending;
        }
        first
    });
    if *done.borrow() != Ending::Reset {
        let _ = to.shutdown().await;
    }
}
