//! What runs did, per build, in the project's `.kiln/state/`: the steps a failed or
//! interrupted run finished (for `kiln build --resume`) and the builder's artifact of
//! each build's last success (for `kiln build --post-only`). Every change is written
//! at once and atomically (temp file + rename), so a run that is killed outright still
//! leaves what it had finished, and a reader never sees half a file.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

const VERSION: u32 = 1;
/// State files are small; a bigger one is not ours.
const MAX_STATE: u64 = 16 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Still running, or killed without a chance to say so.
    #[default]
    Running,
    Ok,
    Failed,
    Interrupted,
    /// Stopped by the user keeping everything (`--on-error=abort`, `[a]bort`).
    Aborted,
}

/// How a step came to be done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum How {
    Ran,
    /// Restored from the step cache.
    Cached,
    /// Skipped because an earlier run had done it (`--resume` on a machine that keeps
    /// its state, like an `ssh_host`).
    Resumed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    pub index: usize,
    pub key: String,
    pub how: How,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BuildRecord {
    pub status: Status,
    /// The run that last worked on this build.
    pub run: String,
    /// Steps finished in order from the first (a step the user continued past after a
    /// failure ends the list: what follows was not built as declared).
    pub steps: Vec<StepRecord>,
    pub error: Option<String>,
}

impl BuildRecord {
    pub fn resumable(&self) -> bool {
        self.status != Status::Ok
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunRecord {
    pub v: u32,
    pub run: String,
    pub started: String,
    pub script: String,
    pub builds: BTreeMap<String, BuildRecord>,
}

/// A build's last success, for `--post-only`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Success {
    pub v: u32,
    pub run: String,
    pub finished: String,
    /// What the builder returned, before any post-processor.
    pub builder_artifact: serde_json::Value,
    /// What the last post-processor returned.
    pub artifact: serde_json::Value,
}

fn state_dir(project: &Path) -> PathBuf {
    project.join(".kiln").join("state")
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    let f = std::fs::File::open(path).ok()?;
    let mut text = String::new();
    f.take(MAX_STATE).read_to_string(&mut text).ok()?;
    serde_json::from_str(&text).ok()
}

fn write_atomic(path: &Path, value: &impl Serialize) -> std::io::Result<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    let bytes = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
    let tmp = path.with_extension(format!("tmp-{}", uuid::Uuid::new_v4().simple()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// A file name for a build (`web.qemu`): anything odd becomes `_`.
fn file_name(build: &str) -> String {
    build
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The last run's record in `project`, if there is one.
pub fn last_run(project: &Path) -> Option<RunRecord> {
    read_json::<RunRecord>(&state_dir(project).join("last-run.json")).filter(|r| r.v == VERSION)
}

/// The last success of `build` in `project`, if there is one.
pub fn last_success(project: &Path, build: &str) -> Option<Success> {
    read_json::<Success>(
        &state_dir(project)
            .join("builds")
            .join(format!("{}.json", file_name(build))),
    )
    .filter(|s| s.v == VERSION)
}

/// Writes this run's record as it goes. Builds this run does not touch keep what the
/// previous record said about them, so a second `--resume` still knows them.
pub struct Recorder {
    project: PathBuf,
    state: Mutex<RunRecord>,
}

impl Recorder {
    pub fn new(project: &Path, run: &str, script: &str, previous: Option<RunRecord>) -> Self {
        let mut builds = previous.map(|p| p.builds).unwrap_or_default();
        builds.retain(|_, b| b.status != Status::Running || !b.steps.is_empty());
        Recorder {
            project: project.to_path_buf(),
            state: Mutex::new(RunRecord {
                v: VERSION,
                run: run.to_string(),
                started: crate::caps::now_rfc3339_pub(),
                script: script.to_string(),
                builds,
            }),
        }
    }

    fn update(&self, f: impl FnOnce(&mut RunRecord)) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut s);
        let path = state_dir(&self.project).join("last-run.json");
        if let Err(e) = write_atomic(&path, &*s) {
            tracing::warn!(path = %path.display(), "cannot write the run record: {e}");
        }
    }

    pub fn build_started(&self, build: &str) {
        self.update(|s| {
            let run = s.run.clone();
            s.builds.insert(
                build.to_string(),
                BuildRecord {
                    run,
                    ..BuildRecord::default()
                },
            );
        });
    }

    pub fn step_done(&self, build: &str, index: usize, key: &str, how: How) {
        self.update(|s| {
            if let Some(b) = s.builds.get_mut(build) {
                b.steps.retain(|st| st.index < index);
                b.steps.push(StepRecord {
                    index,
                    key: key.to_string(),
                    how,
                });
            }
        });
    }

    /// A step the user continued past: it and what follows are not done as declared.
    pub fn step_not_done(&self, build: &str, index: usize) {
        self.update(|s| {
            if let Some(b) = s.builds.get_mut(build) {
                b.steps.retain(|st| st.index < index);
            }
        });
    }

    pub fn build_finished(&self, build: &str, status: Status, error: Option<&str>) {
        self.update(|s| {
            if let Some(b) = s.builds.get_mut(build) {
                b.status = status;
                b.error = error.map(str::to_string);
            }
        });
    }

    /// A build's last success, for `--post-only`.
    pub fn success(
        &self,
        build: &str,
        builder_artifact: &serde_json::Value,
        artifact: &serde_json::Value,
    ) {
        let run = self
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .run
            .clone();
        let rec = Success {
            v: VERSION,
            run,
            finished: crate::caps::now_rfc3339_pub(),
            builder_artifact: builder_artifact.clone(),
            artifact: artifact.clone(),
        };
        let path = state_dir(&self.project)
            .join("builds")
            .join(format!("{}.json", file_name(build)));
        if let Err(e) = write_atomic(&path, &rec) {
            tracing::warn!(path = %path.display(), "cannot record the build's artifact: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_survives_and_carries_builds_over() {
        let d = tempfile::tempdir().unwrap();
        let r = Recorder::new(d.path(), "run-1", "build.rhai", None);
        r.build_started("a.s");
        r.build_started("b.s");
        r.step_done("a.s", 1, "k1", How::Ran);
        r.step_done("a.s", 2, "k2", How::Ran);
        r.build_finished("a.s", Status::Interrupted, Some("interrupted by SIGINT"));
        r.build_finished("b.s", Status::Ok, None);
        r.success(
            "b.s",
            &serde_json::json!({"id": "x"}),
            &serde_json::json!({"id": "y"}),
        );
        drop(r);
        let last = last_run(d.path()).unwrap();
        assert_eq!(last.builds["a.s"].steps.len(), 2);
        assert!(last.builds["a.s"].resumable());
        assert!(!last.builds["b.s"].resumable());
        assert_eq!(
            last_success(d.path(), "b.s").unwrap().builder_artifact["id"],
            "x"
        );
        // A resume run re-does a.s only; b.s is still known as done.
        let r2 = Recorder::new(d.path(), "run-2", "build.rhai", Some(last));
        r2.build_started("a.s");
        r2.step_done("a.s", 1, "k1", How::Resumed);
        let again = last_run(d.path()).unwrap();
        assert_eq!(again.builds["b.s"].status, Status::Ok);
        assert_eq!(again.builds["a.s"].steps.len(), 1);
        assert_eq!(again.builds["a.s"].run, "run-2");
    }

    #[test]
    fn odd_build_names_make_plain_file_names() {
        assert_eq!(file_name("web.qemu"), "web.qemu");
        assert_eq!(file_name("../x/y"), ".._x_y");
    }
}
