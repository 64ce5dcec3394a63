//! An interactive shell over an existing session: a PTY channel, the user's keys in,
//! the shell's output out, window size changes passed on. Used by the pause menu's
//! `[s]hell` (`--on-error=ask`, `--debug`, `breakpoint()`), so the user lands on the
//! very machine the build is working on, over the build's own connection.

use russh::ChannelMsg;

use super::Session;
use super::error::{SshError, from_russh};
use crate::host::machine::{TermInput, Terminal};

/// Runs a login shell on a PTY until it exits (or the user's input closes); returns
/// its exit status when the server sends one.
pub async fn interactive_shell(
    session: &Session,
    term: &Terminal,
) -> Result<Option<u32>, SshError> {
    let target = session.target().to_string();
    let ch = session.open_session_channel().await?;
    ch.request_pty(true, &term.term, term.cols, term.rows, 0, 0, &[])
        .await
        .map_err(|e| from_russh(&target, "requesting a terminal", e))?;
    ch.request_shell(true)
        .await
        .map_err(|e| from_russh(&target, "starting a shell", e))?;
    let (mut read, write) = ch.split();
    let mut input = term.input.lock().await;
    let mut status = None;
    let mut input_open = true;
    loop {
        tokio::select! {
            msg = read.wait() => match msg {
                Some(ChannelMsg::Data { data }) => (term.output)(&data),
                Some(ChannelMsg::ExtendedData { data, .. }) => (term.output)(&data),
                Some(ChannelMsg::ExitStatus { exit_status }) => status = Some(exit_status),
                Some(ChannelMsg::Eof) | Some(ChannelMsg::Close) | None => break,
                Some(_) => {}
            },
            key = input.recv(), if input_open => match key {
                Some(TermInput::Data(bytes)) => {
                    if let Err(e) = write.data_bytes(bytes).await {
                        return Err(from_russh(&target, "sending keys", e));
                    }
                }
                Some(TermInput::Resize { cols, rows }) => {
                    let _ = write.window_change(cols, rows, 0, 0).await;
                }
                None => {
                    input_open = false;
                    let _ = write.eof().await;
                }
            },
        }
    }
    let _ = write.close().await;
    Ok(status)
}
