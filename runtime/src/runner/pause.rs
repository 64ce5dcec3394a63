//! Pausing a build for the user: `--on-error=ask` after a failed step, `--debug`
//! before every step, and `breakpoint()` steps. The build's clock stops while the menu
//! waits; the machine keeps running. One menu is on the terminal at a time (parallel
//! builds take turns); Ctrl-C or SIGTERM while it waits means "clean up and fail".
//! Without a terminal nothing pauses: the caller says so and goes on as
//! `--on-error=cleanup` would.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::caps::machine::MachineCap;
use crate::context::BuildRt;
use crate::host::machine::Terminal;
use crate::script::Program;
use crate::ui::terminal;

/// Re-reads the build script (for `[r]etry`: the user edited it).
pub type Reload = Arc<dyn Fn() -> Result<Program, String> + Send + Sync>;

/// A [`Reload`] in the run's options.
#[derive(Clone)]
pub struct Reloader(pub Reload);

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reloader")
    }
}

/// What the user may do at a pause, per moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// Re-read the step from the script and run it (again).
    Retry,
    Shell,
    /// After a failure: go on as if the step had succeeded. Before a step
    /// (`--debug`, a breakpoint): run on without pausing again.
    Continue,
    /// Stop, keeping everything.
    Abort,
    /// Clean up and fail.
    CleanUp,
    /// Run this step, then pause before the next (`--debug`, breakpoints).
    Next,
}

/// Why the build is paused.
#[derive(Debug, Clone, Copy)]
pub enum Moment<'a> {
    Failed { step: &'a str, error: &'a str },
    Before { step: &'a str },
    Breakpoint { step: &'a str, note: &'a str },
}

impl Moment<'_> {
    fn choices(&self) -> &'static [Choice] {
        match self {
            Moment::Failed { .. } => &[
                Choice::Retry,
                Choice::Shell,
                Choice::Continue,
                Choice::Abort,
                Choice::CleanUp,
            ],
            Moment::Before { .. } => &[
                Choice::Next,
                Choice::Retry,
                Choice::Shell,
                Choice::Continue,
                Choice::Abort,
                Choice::CleanUp,
            ],
            Moment::Breakpoint { .. } => &[
                Choice::Next,
                Choice::Shell,
                Choice::Continue,
                Choice::Abort,
                Choice::CleanUp,
            ],
        }
    }
}

fn key(c: Choice) -> char {
    match c {
        Choice::Retry => 'r',
        Choice::Shell => 's',
        Choice::Continue => 'c',
        Choice::Abort => 'a',
        Choice::CleanUp => 'k',
        Choice::Next => 'n',
    }
}

fn help(c: Choice, m: &Moment, login: Option<&str>) -> String {
    let what = match (c, m) {
        (Choice::Retry, Moment::Failed { .. }) => {
            "retry: re-read the step from the script (edit it first) and run it again".into()
        }
        (Choice::Retry, _) => "re-read this step from the script (after editing it)".into(),
        (Choice::Shell, _) => match login {
            Some(cmd) => format!("shell on the machine (or from another terminal: {cmd})"),
            None => "shell on the machine".into(),
        },
        (Choice::Continue, Moment::Failed { .. }) => {
            "continue with the next step as if this one had succeeded".into()
        }
        (Choice::Continue, _) => "continue the build without pausing again".into(),
        (Choice::Abort, _) => {
            "abort: stop here and keep everything (machine, disks) for debugging".into()
        }
        (Choice::CleanUp, _) => "clean up and fail".into(),
        (Choice::Next, _) => "next: run this step, then pause again".into(),
    };
    format!("[{}] {what}", key(c))
}

/// Parses an answer: its first letter, if that is one of `choices`.
pub fn parse(answer: &str, choices: &[Choice]) -> Option<Choice> {
    let first = answer.trim().chars().next()?.to_ascii_lowercase();
    choices.iter().copied().find(|c| key(*c) == first)
}

/// The terminal's menu, shared by the builds of a run.
#[derive(Default)]
pub struct Pauser {
    one_at_a_time: Mutex<()>,
}

impl Pauser {
    /// Shows the menu and waits for an answer (on the build's blocking thread). The
    /// wait does not count as build time.
    pub fn ask(&self, rt: &BuildRt, moment: Moment, login: Option<&str>) -> Choice {
        let _turn = self.one_at_a_time.lock().unwrap_or_else(|p| p.into_inner());
        let started = Instant::now();
        let label = &rt.label;
        match moment {
            Moment::Failed { step, error } => {
                // Step errors name their step already.
                if error.starts_with(step) {
                    rt.ui.error(label, error);
                } else {
                    rt.ui.error(label, &format!("{step} failed: {error}"));
                }
                rt.ui.say(
                    label,
                    "Paused (--on-error=ask): the machine keeps running and the build's clock is stopped.",
                );
            }
            Moment::Before { step } => {
                rt.ui.say(label, &format!("Paused before {step} (--debug)"));
            }
            Moment::Breakpoint { step, note } => {
                let note = if note.is_empty() {
                    String::new()
                } else {
                    format!(": {note}")
                };
                rt.ui.say(label, &format!("Breakpoint at {step}{note}"));
            }
        }
        let choices = moment.choices();
        for c in choices {
            rt.ui.message(label, &help(*c, &moment, login));
        }
        let keys = choices
            .iter()
            .map(|c| key(*c).to_string())
            .collect::<Vec<_>>()
            .join("/");
        let stop = || rt.cancel.is_cancelled();
        let choice = loop {
            terminal::prompt(&format!("{label}: choose [{keys}]: "));
            let Some(answer) = terminal::read_line(&stop) else {
                // Interrupted, or the terminal went away.
                terminal::prompt("\n");
                break Choice::CleanUp;
            };
            match parse(&answer, choices) {
                Some(c) => break c,
                None if answer.is_empty() => {}
                None => rt
                    .ui
                    .message(label, &format!("{answer:?} is not one of [{keys}]")),
            }
        };
        rt.add_paused(started.elapsed());
        choice
    }
}

/// Opens an interactive shell on the build's machine in this terminal, until the user
/// exits it. The clock is stopped meanwhile.
pub fn shell(rt: &Arc<BuildRt>, cap: &MachineCap) -> Result<(), String> {
    let started = Instant::now();
    rt.ui.say(
        &rt.label,
        &format!(
            "Opening a shell on {}; exit it to come back to the menu",
            cap.target()
        ),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let result = {
        let _raw = terminal::RawMode::enter();
        let (rx, reader) = terminal::forward_input(stop.clone());
        let (cols, rows) = terminal::size();
        let term = Terminal {
            term: std::env::var("TERM").unwrap_or_else(|_| "xterm".into()),
            cols,
            rows,
            input: tokio::sync::Mutex::new(rx),
            output: Box::new(terminal::write_output),
        };
        let r = rt.block_on(cap.interactive_shell(&term));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = reader.join();
        r
    };
    terminal::prompt("\r\n");
    rt.add_paused(started.elapsed());
    match result {
        Err(reason) => Err(reason),
        Ok(Err(e)) => Err(format!("the shell failed: {e}")),
        Ok(Ok(code)) => {
            let how = code.map(|c| format!(" (exit {c})")).unwrap_or_default();
            rt.ui.say(&rt.label, &format!("Shell closed{how}"));
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_the_first_letter_of_an_offered_choice() {
        let failed = Moment::Failed {
            step: "step 2/3",
            error: "boom",
        };
        let c = failed.choices();
        assert_eq!(parse("r", c), Some(Choice::Retry));
        assert_eq!(parse("  Shell\n", c), Some(Choice::Shell));
        assert_eq!(parse("k", c), Some(Choice::CleanUp));
        // [n]ext only exists before a step.
        assert_eq!(parse("n", c), None);
        assert_eq!(parse("", c), None);
        let before = Moment::Before { step: "step 1/3" };
        assert_eq!(parse("n", before.choices()), Some(Choice::Next));
    }

    #[test]
    fn the_menu_names_the_ssh_command() {
        let m = Moment::Failed {
            step: "s",
            error: "e",
        };
        let line = help(Choice::Shell, &m, Some("ssh -p 2222 root@127.0.0.1"));
        assert!(line.starts_with("[s] "));
        assert!(line.contains("ssh -p 2222 root@127.0.0.1"));
    }
}
