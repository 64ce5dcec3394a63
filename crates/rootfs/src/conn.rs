//! kiln's end of the socket: one writer task, one reader task, and a table of open
//! requests that routes incoming frames to the future waiting for them.
//!
//! Outgoing frames go through one unbounded queue, so they keep their order (a request's
//! message always precedes its data) and a dropped request can queue its `Cancel` without
//! awaiting. Data frames hold permits of a byte semaphore until written, which bounds
//! what is queued. Incoming frames go to a small bounded channel per request: a consumer
//! that stops polling stalls the reader (and, through the socket, the container) instead
//! of growing memory.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use crate::error::Error;
use crate::protocol::{
    self, FrameError, Kind, MAX_FRAME_FROM_INIT, MAX_FRAME_TO_INIT, MAX_MSG_FROM_INIT, Reply,
    Request,
};

/// Bytes of data frames queued for the writer at most.
const QUEUED_BYTES: usize = 4 * 1024 * 1024;
/// Incoming frames buffered per request.
const DEPTH: usize = 8;

/// A frame from the container for one request.
#[derive(Debug)]
pub(crate) enum Incoming {
    Msg(Reply),
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
}

struct Outgoing {
    kind: Kind,
    id: u64,
    payload: Vec<u8>,
    _permit: Option<OwnedSemaphorePermit>,
}

#[derive(Default)]
struct Table {
    open: HashMap<u64, mpsc::Sender<Incoming>>,
    /// Set once the connection is gone; requests then fail with this.
    dead: Option<String>,
}

/// Tells why the container is gone, with whatever the init printed.
pub(crate) type Diagnose = Arc<dyn Fn(&str) -> String + Send + Sync>;

pub(crate) struct Conn {
    table: Arc<Mutex<Table>>,
    out: mpsc::UnboundedSender<Outgoing>,
    budget: Arc<Semaphore>,
    next_id: AtomicU64,
    /// Set by `Container::stop`: requests cut short by it fail with `Stopped`, not `ContainerDied`.
    stopping: AtomicBool,
    diagnose: Diagnose,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Conn {
    /// Starts the reader and writer tasks. `first` receives frames for id 0 (the
    /// container itself).
    pub(crate) fn start(
        rd: OwnedReadHalf,
        wr: OwnedWriteHalf,
        diagnose: Diagnose,
    ) -> (Arc<Conn>, mpsc::Receiver<Incoming>) {
        let table = Arc::new(Mutex::new(Table::default()));
        let (first_tx, first_rx) = mpsc::channel(DEPTH);
        if let Ok(mut t) = table.lock() {
            t.open.insert(protocol::CONTAINER_ID, first_tx);
        }
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let writer = tokio::spawn(write_loop(wr, out_rx, table.clone()));
        let reader = tokio::spawn(read_loop(rd, table.clone()));
        let conn = Arc::new(Conn {
            table,
            out: out_tx,
            budget: Arc::new(Semaphore::new(QUEUED_BYTES)),
            next_id: AtomicU64::new(1),
            stopping: AtomicBool::new(false),
            diagnose,
            tasks: Mutex::new(vec![writer, reader]),
        });
        (conn, first_rx)
    }

    pub(crate) fn set_stopping(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    pub(crate) fn died(&self) -> Error {
        if self.stopping.load(Ordering::Relaxed) {
            return Error::Stopped;
        }
        let reason = self
            .table
            .lock()
            .ok()
            .and_then(|t| t.dead.clone())
            .unwrap_or_else(|| "the connection to its init closed".into());
        Error::ContainerDied {
            detail: (self.diagnose)(&reason),
        }
    }

    pub(crate) fn is_dead(&self) -> bool {
        self.table.lock().map(|t| t.dead.is_some()).unwrap_or(true)
    }

    /// Sends a message for the container itself (the configuration).
    pub(crate) fn send_container_msg(&self, json: Vec<u8>) -> Result<(), Error> {
        self.push(Kind::Msg, protocol::CONTAINER_ID, json, None)
    }

    fn push(
        &self,
        kind: Kind,
        id: u64,
        payload: Vec<u8>,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Result<(), Error> {
        self.out
            .send(Outgoing {
                kind,
                id,
                payload,
                _permit: permit,
            })
            .map_err(|_| self.died())
    }

    /// Opens a request: registers it, then sends its message.
    pub(crate) fn open(self: &Arc<Self>, req: &Request) -> Result<Channel, Error> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(DEPTH);
        {
            let mut t = self
                .table
                .lock()
                .map_err(|_| Error::Protocol("request table poisoned".into()))?;
            if t.dead.is_some() {
                drop(t);
                return Err(self.died());
            }
            t.open.insert(id, tx);
        }
        let json = serde_json::to_vec(req)
            .map_err(|e| Error::Protocol(format!("encoding a request: {e}")))?;
        // The init would take a larger frame for a broken connection.
        if json.len() > MAX_FRAME_TO_INIT - 64 {
            if let Ok(mut t) = self.table.lock() {
                t.open.remove(&id);
            }
            return Err(Error::Config(format!(
                "the request is {} bytes; commands and environments are limited to {}                  (upload a long script as a file and run that)",
                json.len(),
                MAX_FRAME_TO_INIT - 64
            )));
        }
        let ch = Channel {
            conn: self.clone(),
            id,
            rx,
            finished: false,
        };
        self.push(Kind::Msg, id, json, None)?;
        Ok(ch)
    }

    /// Stops the tasks (the socket closes with them).
    pub(crate) fn shutdown(&self) {
        if let Ok(mut t) = self.tasks.lock() {
            for h in t.drain(..) {
                h.abort();
            }
        }
        mark_dead(&self.table, "the container was stopped".into());
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn mark_dead(table: &Mutex<Table>, reason: String) {
    if let Ok(mut t) = table.lock() {
        if t.dead.is_none() {
            t.dead = Some(reason);
        }
        // Dropping the senders wakes every waiting request with "closed".
        t.open.clear();
    }
}

async fn write_loop(
    mut wr: OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    table: Arc<Mutex<Table>>,
) {
    while let Some(f) = rx.recv().await {
        if let Err(e) = protocol::write_frame_async(&mut wr, f.kind, f.id, &f.payload).await {
            mark_dead(&table, format!("writing to its init failed: {e}"));
            return;
        }
    }
}

async fn read_loop(mut rd: OwnedReadHalf, table: Arc<Mutex<Table>>) {
    loop {
        let frame = match protocol::read_frame_async(&mut rd, MAX_FRAME_FROM_INIT).await {
            Ok(f) => f,
            Err(FrameError::Closed) => {
                mark_dead(&table, "its init closed the connection".into());
                return;
            }
            Err(e) => {
                mark_dead(&table, format!("reading from its init failed: {e}"));
                return;
            }
        };
        let incoming = match frame.kind {
            Kind::Msg => {
                if frame.payload.len() > MAX_MSG_FROM_INIT {
                    mark_dead(
                        &table,
                        format!(
                            "protocol violation: a {}-byte message from the init (limit {MAX_MSG_FROM_INIT})",
                            frame.payload.len()
                        ),
                    );
                    return;
                }
                match serde_json::from_slice::<Reply>(&frame.payload) {
                    Ok(r) => Incoming::Msg(r),
                    Err(e) => {
                        mark_dead(
                            &table,
                            format!("protocol violation: unreadable message from the init: {e}"),
                        );
                        return;
                    }
                }
            }
            Kind::Data => Incoming::Stdout(frame.payload),
            Kind::Stderr => Incoming::Stderr(frame.payload),
            Kind::End => continue,
        };
        let tx = table
            .lock()
            .ok()
            .and_then(|t| t.open.get(&frame.id).cloned());
        // A frame for a request nobody waits for any more (cancelled, dropped) is dropped.
        if let Some(tx) = tx {
            let _ = tx.send(incoming).await;
        }
    }
}

/// One open request.
pub(crate) struct Channel {
    conn: Arc<Conn>,
    id: u64,
    rx: mpsc::Receiver<Incoming>,
    /// The container reported the request complete: no cancel needed on drop.
    finished: bool,
}

impl Channel {
    /// The next frame; `ContainerDied` when the container went away.
    pub(crate) async fn recv(&mut self) -> Result<Incoming, Error> {
        match self.rx.recv().await {
            Some(i) => Ok(i),
            None => Err(self.conn.died()),
        }
    }

    /// A frame if one is already there (used while uploading, to notice an early failure).
    pub(crate) fn try_recv(&mut self) -> Option<Incoming> {
        self.rx.try_recv().ok()
    }

    pub(crate) async fn send_data(&self, data: Vec<u8>) -> Result<(), Error> {
        let n = u32::try_from(data.len().clamp(1, QUEUED_BYTES)).unwrap_or(u32::MAX);
        let permit = self
            .conn
            .budget
            .clone()
            .acquire_many_owned(n)
            .await
            .map_err(|_| self.conn.died())?;
        self.conn.push(Kind::Data, self.id, data, Some(permit))
    }

    pub(crate) fn send_end(&self) -> Result<(), Error> {
        self.conn.push(Kind::End, self.id, Vec::new(), None)
    }

    pub(crate) fn cancel(&self) {
        if let Ok(json) = serde_json::to_vec(&Request::Cancel) {
            let _ = self.conn.push(Kind::Msg, self.id, json, None);
        }
    }

    pub(crate) fn finish(&mut self) {
        self.finished = true;
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        if let Ok(mut t) = self.conn.table.lock() {
            t.open.remove(&self.id);
        }
        if !self.finished {
            // A dropped exec (timeout, Ctrl-C) must not leave its processes running.
            self.cancel();
        }
    }
}
