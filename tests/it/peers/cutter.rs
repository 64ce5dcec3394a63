//! A TCP proxy on 127.0.0.1 in front of a real peer, for injecting network faults: it
//! forwards bytes both ways and can drop every live connection at once (a cut), drop
//! one once its client has sent a given number of bytes (a cut mid-upload), and stop
//! accepting new connections (a machine that stays unreachable). Runs on its own
//! threads, so it serves tests that drive a `kiln` process as well as async ones; it
//! stops when dropped.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
struct State {
    /// Live connections (client side, upstream side), to cut them.
    live: Mutex<Vec<(TcpStream, TcpStream)>>,
    /// Cut the connection whose client has sent more than this many bytes (once), and
    /// whether to refuse new connections after that cut.
    cut_after: Mutex<Option<(u64, bool)>>,
    refuse: AtomicBool,
    stop: AtomicBool,
    accepted: AtomicU32,
    cuts: AtomicU32,
}

pub struct Cutter {
    pub port: u16,
    state: Arc<State>,
}

impl Cutter {
    /// Listens on a free port on 127.0.0.1 and forwards to `127.0.0.1:upstream`.
    pub fn start(upstream: u16) -> Cutter {
        let listener = TcpListener::bind("127.0.0.1:0")
            .unwrap_or_else(|e| panic!("cutter proxy: cannot listen on 127.0.0.1: {e}"));
        let port = listener.local_addr().expect("local addr").port();
        listener
            .set_nonblocking(true)
            .expect("cutter proxy: nonblocking listener");
        let state = Arc::new(State::default());
        let st = state.clone();
        std::thread::spawn(move || accept_loop(&listener, upstream, &st));
        Cutter { port, state }
    }

    /// Drops every live connection now (both directions, as a failing link would).
    pub fn cut_now(&self) {
        let live = std::mem::take(&mut *self.state.live.lock().expect("lock"));
        for (c, u) in &live {
            let _ = c.shutdown(Shutdown::Both);
            let _ = u.shutdown(Shutdown::Both);
        }
        self.state
            .cuts
            .fetch_add(u32::try_from(live.len()).unwrap_or(0), Ordering::SeqCst);
    }

    /// Cuts the first connection whose client has sent more than `bytes` (counted from
    /// the connection's start); with `then_refuse`, new connections are refused after it.
    pub fn cut_after(&self, bytes: u64, then_refuse: bool) {
        *self.state.cut_after.lock().expect("lock") = Some((bytes, then_refuse));
    }

    /// New connections are refused (accepted and closed at once) from now on.
    pub fn refuse(&self, yes: bool) {
        self.state.refuse.store(yes, Ordering::SeqCst);
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u32 {
        self.state.accepted.load(Ordering::SeqCst)
    }

    /// Connections cut so far.
    pub fn cuts(&self) -> u32 {
        self.state.cuts.load(Ordering::SeqCst)
    }
}

impl Drop for Cutter {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        self.cut_now();
    }
}

fn accept_loop(listener: &TcpListener, upstream: u16, state: &Arc<State>) {
    while !state.stop.load(Ordering::SeqCst) {
        let client = match listener.accept() {
            Ok((c, _)) => c,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            Err(_) => continue,
        };
        state.accepted.fetch_add(1, Ordering::SeqCst);
        if state.refuse.load(Ordering::SeqCst) {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        }
        let _ = client.set_nonblocking(false);
        let Ok(up) = TcpStream::connect(("127.0.0.1", upstream)) else {
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = up.set_nodelay(true);
        let (Ok(c2), Ok(u2), Ok(c3), Ok(u3)) = (
            client.try_clone(),
            up.try_clone(),
            client.try_clone(),
            up.try_clone(),
        ) else {
            continue;
        };
        state.live.lock().expect("lock").push((c3, u3));
        let sent = Arc::new(AtomicU64::new(0));
        let st = state.clone();
        std::thread::spawn(move || pump(client, up, Some((sent, st))));
        std::thread::spawn(move || pump(u2, c2, None));
    }
}

/// Copies `from` to `to` until either side ends; the client-to-server direction counts
/// its bytes and cuts the connection when an armed threshold is passed.
fn pump(mut from: TcpStream, mut to: TcpStream, count: Option<(Arc<AtomicU64>, Arc<State>)>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some((sent, state)) = &count {
            let total = sent.fetch_add(n as u64, Ordering::SeqCst) + n as u64;
            let mut armed = state.cut_after.lock().expect("lock");
            if let Some((limit, then_refuse)) = *armed
                && total > limit
            {
                *armed = None;
                drop(armed);
                if then_refuse {
                    state.refuse.store(true, Ordering::SeqCst);
                }
                state.cuts.fetch_add(1, Ordering::SeqCst);
                break;
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
