//! The user's terminal, for the pause menu and the shell it opens: whether there is
//! one, reading an answer without blocking a cancelled build forever, and lending the
//! terminal in raw mode to a remote shell (restored however the shell ends).

use std::io::{IsTerminal, Write};
use std::os::fd::RawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::host::machine::TermInput;

const STDIN: RawFd = 0;
/// How often a blocked read looks at whether it should give up.
const POLL: Duration = Duration::from_millis(100);
/// A menu answer longer than this is not an answer.
const MAX_ANSWER: usize = 256;

/// Whether kiln can ask the user: stdin and stdout are both terminals.
pub fn is_interactive() -> bool {
    std::io::stdin().is_terminal() && std::io::stdout().is_terminal()
}

/// The terminal's size (columns, rows); 80x24 when it cannot be read.
pub fn size() -> (u32, u32) {
    // SAFETY: TIOCGWINSZ fills a winsize struct we own; a failure leaves it zeroed.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::ioctl(1, libc::TIOCGWINSZ, &mut ws) } == 0;
    if ok && ws.ws_col > 0 && ws.ws_row > 0 {
        (u32::from(ws.ws_col), u32::from(ws.ws_row))
    } else {
        (80, 24)
    }
}

#[derive(PartialEq, Eq)]
enum Poll {
    Ready,
    Timeout,
    Error,
}

/// Waits up to `POLL` for input on stdin.
fn poll_once() -> Poll {
    let mut fds = libc::pollfd {
        fd: STDIN,
        events: libc::POLLIN,
        revents: 0,
    };
    let timeout = i32::try_from(POLL.as_millis()).unwrap_or(100);
    // SAFETY: one pollfd we own, for the duration of the call.
    let n = unsafe { libc::poll(&mut fds, 1, timeout) };
    if n > 0 {
        Poll::Ready
    } else if n == 0 || std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
        Poll::Timeout
    } else {
        Poll::Error
    }
}

/// Waits until stdin has input; false if `stop` says to give up first.
fn readable(stop: &dyn Fn() -> bool) -> bool {
    loop {
        if stop() {
            return false;
        }
        match poll_once() {
            Poll::Ready => return true,
            Poll::Timeout => {}
            Poll::Error => return false,
        }
    }
}

fn read_some(buf: &mut [u8]) -> usize {
    // SAFETY: reads into a buffer we own, at most its length.
    let n = unsafe { libc::read(STDIN, buf.as_mut_ptr().cast(), buf.len()) };
    usize::try_from(n).unwrap_or(0)
}

/// Reads one line from the terminal (cooked mode), or `None` if `stop` says to give
/// up first or input ends.
pub fn read_line(stop: &dyn Fn() -> bool) -> Option<String> {
    let mut line = Vec::new();
    let mut buf = [0u8; 64];
    loop {
        if !readable(stop) {
            return None;
        }
        let n = read_some(&mut buf);
        if n == 0 {
            return None;
        }
        for &b in &buf[..n] {
            if b == b'\n' || b == b'\r' {
                return Some(String::from_utf8_lossy(&line).trim().to_string());
            }
            if line.len() < MAX_ANSWER {
                line.push(b);
            }
        }
    }
}

/// Prints without a newline and flushes (a prompt).
pub fn prompt(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

/// The terminal in raw mode until dropped (keys go to the remote shell as typed,
/// Ctrl-C included).
pub struct RawMode {
    saved: Option<libc::termios>,
}

impl RawMode {
    pub fn enter() -> RawMode {
        // SAFETY: tcgetattr/tcsetattr on stdin with a termios struct we own.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(STDIN, &mut t) != 0 {
                return RawMode { saved: None };
            }
            let saved = t;
            libc::cfmakeraw(&mut t);
            if libc::tcsetattr(STDIN, libc::TCSANOW, &t) != 0 {
                return RawMode { saved: None };
            }
            RawMode { saved: Some(saved) }
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(t) = &self.saved {
            // SAFETY: restores the attributes read in `enter`.
            unsafe {
                libc::tcsetattr(STDIN, libc::TCSANOW, t);
            }
        }
    }
}

/// Forwards the terminal's keys (and size changes) until `stop` is set; the channel
/// closes when the thread ends. The thread polls, so it never keeps reading stdin
/// after the shell is gone (the next menu answer would be lost to it).
pub fn forward_input(
    stop: Arc<AtomicBool>,
) -> (
    tokio::sync::mpsc::Receiver<TermInput>,
    std::thread::JoinHandle<()>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let handle = std::thread::spawn(move || {
        let mut last = size();
        let mut buf = [0u8; 4096];
        let should_stop = || stop.load(Ordering::Relaxed);
        loop {
            let now = size();
            if now != last {
                last = now;
                if tx
                    .blocking_send(TermInput::Resize {
                        cols: now.0,
                        rows: now.1,
                    })
                    .is_err()
                {
                    return;
                }
            }
            if should_stop() {
                return;
            }
            match poll_once() {
                Poll::Ready => {}
                Poll::Timeout => continue,
                Poll::Error => return,
            }
            let n = read_some(&mut buf);
            if n == 0
                || tx
                    .blocking_send(TermInput::Data(buf[..n].to_vec()))
                    .is_err()
            {
                return;
            }
        }
    });
    (rx, handle)
}

/// Writes a remote shell's output to the terminal as it comes.
pub fn write_output(bytes: &[u8]) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(bytes);
    let _ = out.flush();
}
