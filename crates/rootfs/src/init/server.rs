//! Pid 1's request loop: one reader (this thread) that routes frames, one thread per
//! request that does the work, one lock that keeps each outgoing frame whole.
//!
//! Data for an upload goes through a small bounded channel to the thread writing it: when
//! the disk is slower than the socket, the reader blocks and the socket applies
//! backpressure to kiln; memory stays bounded.

use std::collections::HashMap;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};

use super::reaper::Reaper;
use super::{files, run, sys};
use crate::protocol::{self, FailKind, Kind, MAX_FRAME_TO_INIT, Reply, Request};

/// Chunks of upload data buffered per request between the reader and the writer thread.
const INPUT_DEPTH: usize = 4;

/// What `Cancel` does for a request.
pub(super) enum Cancel {
    /// Kill this process group (an exec).
    Group(i32),
    /// Tell a read loop to stop.
    Flag(Arc<AtomicBool>),
}

pub(super) struct Shared {
    out: Mutex<UnixStream>,
    cancels: Mutex<HashMap<u64, Cancel>>,
    pub reaper: Reaper,
}

impl Shared {
    pub(super) fn send(&self, id: u64, reply: &Reply) -> std::io::Result<()> {
        let json = serde_json::to_vec(reply).map_err(std::io::Error::other)?;
        self.frame(Kind::Msg, id, &json)
    }

    pub(super) fn frame(&self, kind: Kind, id: u64, payload: &[u8]) -> std::io::Result<()> {
        let mut out = self
            .out
            .lock()
            .map_err(|_| std::io::Error::other("socket lock poisoned"))?;
        protocol::write_frame(&mut *out, kind, id, payload)
    }

    pub(super) fn fail(
        &self,
        id: u64,
        kind: FailKind,
        errno: Option<i32>,
        detail: impl Into<String>,
    ) {
        let _ = self.send(
            id,
            &Reply::Failed {
                kind,
                errno,
                detail: detail.into(),
            },
        );
    }

    pub(super) fn fail_io(&self, id: u64, what: &str, e: &std::io::Error) {
        self.fail(
            id,
            FailKind::from_io(e),
            e.raw_os_error(),
            format!("{what}: {}", super::io_text(e)),
        );
    }

    pub(super) fn on_cancel(&self, id: u64, c: Cancel) {
        if let Ok(mut m) = self.cancels.lock() {
            m.insert(id, c);
        }
    }

    pub(super) fn forget_cancel(&self, id: u64) {
        if let Ok(mut m) = self.cancels.lock() {
            m.remove(&id);
        }
    }

    fn cancel(&self, id: u64) {
        let Ok(m) = self.cancels.lock() else { return };
        match m.get(&id) {
            Some(Cancel::Group(pgid)) => {
                // The whole group: the shell and whatever it started in the foreground.
                let _ = sys::kill(-*pgid, libc::SIGKILL);
                let _ = sys::kill(*pgid, libc::SIGKILL);
            }
            Some(Cancel::Flag(f)) => f.store(true, Ordering::Relaxed),
            None => {}
        }
    }
}

pub(super) fn serve(sock: UnixStream) -> ! {
    let out = match sock.try_clone() {
        Ok(s) => s,
        Err(_) => std::process::exit(1),
    };
    let shared = Arc::new(Shared {
        out: Mutex::new(out),
        cancels: Mutex::default(),
        reaper: Reaper::default(),
    });
    let reaper = shared.clone();
    if std::thread::Builder::new()
        .name("reaper".into())
        .spawn(move || reaper.reaper.run())
        .is_err()
    {
        std::process::exit(1);
    }
    let mut sock = sock;
    let mut inputs: HashMap<u64, SyncSender<Vec<u8>>> = HashMap::new();
    loop {
        let frame = match protocol::read_frame(&mut sock, MAX_FRAME_TO_INIT) {
            Ok(f) => f,
            // kiln closed the socket (stop, drop or death): the container ends with us.
            Err(protocol::FrameError::Closed) => std::process::exit(0),
            Err(e) => {
                eprintln!("kiln-rootfs init: {e}");
                std::process::exit(1);
            }
        };
        let id = frame.id;
        match frame.kind {
            Kind::Msg => match serde_json::from_slice::<Request>(&frame.payload) {
                Ok(Request::Cancel) => {
                    // An upload that is cancelled ends without its end marker: aborted.
                    inputs.remove(&id);
                    shared.cancel(id);
                }
                Ok(req) => dispatch(&shared, id, req, &mut inputs),
                Err(e) => shared.fail(id, FailKind::Invalid, None, format!("bad request: {e}")),
            },
            // An empty chunk is the end marker (see files::Input), so none is forwarded.
            Kind::Data if frame.payload.is_empty() => {}
            Kind::Data => {
                if let Some(tx) = inputs.get(&id) {
                    // The worker gave up (and reported why): drop the rest.
                    if tx.send(frame.payload).is_err() {
                        inputs.remove(&id);
                    }
                }
            }
            Kind::End => {
                if let Some(tx) = inputs.remove(&id) {
                    let _ = tx.send(Vec::new());
                }
            }
            Kind::Stderr => {}
        }
    }
}

fn worker(shared: &Arc<Shared>, id: u64, f: impl FnOnce(&Shared) + Send + 'static) {
    let sh = shared.clone();
    if let Err(e) = std::thread::Builder::new().spawn(move || f(&sh)) {
        shared.fail_io(id, "starting a worker thread", &e);
    }
}

fn with_input(
    shared: &Arc<Shared>,
    id: u64,
    inputs: &mut HashMap<u64, SyncSender<Vec<u8>>>,
    f: impl FnOnce(&Shared, Receiver<Vec<u8>>) + Send + 'static,
) {
    let (tx, rx) = sync_channel(INPUT_DEPTH);
    inputs.insert(id, tx);
    worker(shared, id, move |sh| f(sh, rx));
}

fn dispatch(
    shared: &Arc<Shared>,
    id: u64,
    req: Request,
    inputs: &mut HashMap<u64, SyncSender<Vec<u8>>>,
) {
    match req {
        Request::Exec {
            command,
            env,
            cwd,
            user,
        } => worker(shared, id, move |sh| {
            run::exec(sh, id, &command, env, cwd, user)
        }),
        Request::Cancel => shared.cancel(id),
        Request::WriteFile { path, mode } => with_input(shared, id, inputs, move |sh, rx| {
            files::write_file(sh, id, &path, mode, rx)
        }),
        Request::UploadTree { dir } => with_input(shared, id, inputs, move |sh, rx| {
            files::upload_tree(sh, id, &dir, rx)
        }),
        Request::ReadFile { path, max } => {
            let stop = Arc::new(AtomicBool::new(false));
            shared.on_cancel(id, Cancel::Flag(stop.clone()));
            worker(shared, id, move |sh| {
                files::read_file(sh, id, &path, max, &stop);
                sh.forget_cancel(id);
            })
        }
        Request::Stat { path } => files::stat(shared, id, &path),
        Request::Facts => files::facts(shared, id),
    }
}
