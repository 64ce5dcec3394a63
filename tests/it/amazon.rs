//! The amazon_ebs builder, the resource ledger and `kiln cleanup` (issue 9), end to end:
//! the `kiln` binary against a moto_server and a loopback OpenSSH sshd that the tests
//! start. The sshd accepts the key pairs moto hands out through an AuthorizedKeysCommand
//! that asks moto for their public keys (as cloud-init would install them), and every
//! build sets `ssh_host: "127.0.0.1"` so SSH reaches it instead of moto's fake addresses.
//!
//! Phases are hit with `KILN_TEST_PAUSE_AT=<phase>` (the builder says
//! `paused at <phase>` on stderr and waits there); no test depends on timing.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use kiln_ec2::testkit::{MotoOptions, MotoServer};
use kiln_ec2::{DescribeImagesRequest, Ec2Client, Filter, InstanceState, Tags};

use crate::cli::{Project, text};
use crate::peers::sshd::{Sshd, SshdOptions};

const ACCESS_KEY: &str = "AKIAKILNTESTZQ8XW001";
const SECRET_KEY: &str = "kiln-test-secret-Zq8Xw/uN7+Pv";
const CANONICAL: &str = "099720109477";
const PHASES: &[&str] = &[
    "launching",
    "waiting",
    "provisioning",
    "stopping",
    "imaging",
];
/// Generous: a loaded 2-core machine; nothing asserts on durations.
const PATIENCE: Duration = Duration::from_secs(180);

/// moto, and an sshd that authorizes the key pairs moto knows.
struct Peers {
    rt: tokio::runtime::Runtime,
    moto: MotoServer,
    sshd: Sshd,
    _akc: tempfile::TempDir,
    /// The snapshots moto starts with (those of its default AMIs): not a build's.
    baseline: BTreeSet<String>,
}

impl Peers {
    fn start() -> Peers {
        Self::start_with(MotoOptions::default())
    }

    fn start_with(opts: MotoOptions) -> Peers {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let moto = rt
            .block_on(MotoServer::start_with(opts))
            .unwrap_or_else(|e| panic!("moto peer: {e}"));
        // sshd checks only the program (python3, root-owned), not the script it is given.
        let akc = tempfile::Builder::new()
            .prefix("kiln-akc-")
            .tempdir()
            .unwrap();
        let script = akc.path().join("moto-keys.py");
        std::fs::write(
            &script,
            format!(
                r#"import re, urllib.request
req = urllib.request.Request("{}/", data=b"Action=DescribeKeyPairs&IncludePublicKey=true&Version=2016-11-15",
    headers={{"Authorization": "AWS4-HMAC-SHA256 Credential=x/20240101/us-east-1/ec2/aws4_request, SignedHeaders=host, Signature=00",
             "Content-Type": "application/x-www-form-urlencoded"}})
for k in re.findall(r"<publicKey>([^<]+)</publicKey>", urllib.request.urlopen(req, timeout=30).read().decode()):
    print(k.strip())
"#,
                moto.endpoint()
            ),
        )
        .unwrap();
        let sshd = Sshd::start_with(SshdOptions {
            authorized_keys_command: Some(format!("/usr/bin/python3 {} %u", script.display())),
            ..Default::default()
        });
        let mut peers = Peers {
            rt,
            moto,
            sshd,
            _akc: akc,
            baseline: BTreeSet::new(),
        };
        peers.baseline = peers.snapshots(&["us-east-1", "eu-west-1"]);
        peers
    }

    /// This account's snapshots in `regions`, as `region: id`.
    fn snapshots(&self, regions: &[&str]) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for r in regions {
            let c = self.ec2(r);
            for s in self
                .block(c.describe_snapshots(&[], &["self".into()], &[]))
                .expect("snapshots")
            {
                out.insert(format!("{r}: snapshot {}", s.snapshot_id));
            }
        }
        out
    }

    fn ec2(&self, region: &str) -> Ec2Client {
        self.moto.client(region).expect("moto client")
    }

    fn block<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// Everything a build may leave in `regions`: live instances, key pairs, security
    /// groups but `default`, this account's AMIs and snapshots, volumes.
    fn leftovers(&self, regions: &[&str]) -> Vec<String> {
        let mut out = Vec::new();
        for r in regions {
            let c = self.ec2(r);
            self.block(async {
                for i in c.describe_instances(&[], &[]).await.expect("instances") {
                    if i.state != InstanceState::Terminated {
                        out.push(format!("{r}: instance {} ({})", i.instance_id, i.state));
                    }
                }
                for k in c
                    .describe_key_pairs(&[], &[], false)
                    .await
                    .expect("key pairs")
                {
                    out.push(format!("{r}: key pair {}", k.key_name));
                }
                for g in c.describe_security_groups(&[], &[]).await.expect("groups") {
                    if g.group_name != "default" {
                        out.push(format!(
                            "{r}: security group {} ({})",
                            g.group_id, g.group_name
                        ));
                    }
                }
                for i in self_images(&c).await {
                    out.push(format!("{r}: AMI {} ({:?})", i.image_id, i.name));
                }
                for s in c
                    .describe_snapshots(&[], &["self".into()], &[])
                    .await
                    .expect("snapshots")
                {
                    let line = format!("{r}: snapshot {}", s.snapshot_id);
                    if !self.baseline.contains(&line) {
                        out.push(line);
                    }
                }
                for v in c
                    .describe_volumes(&[], &[Filter::tag_key("kiln:run")])
                    .await
                    .expect("volumes")
                {
                    if v.state != "deleted" {
                        out.push(format!("{r}: volume {} ({})", v.volume_id, v.state));
                    }
                }
            });
        }
        out
    }
}

async fn self_images(c: &Ec2Client) -> Vec<kiln_ec2::Image> {
    c.describe_images(&DescribeImagesRequest {
        owners: vec!["self".into()],
        ..Default::default()
    })
    .await
    .expect("images")
}

/// A project with an amazon_ebs source, and a state dir for its ledger.
struct Aws {
    p: Project,
    state: tempfile::TempDir,
}

impl Aws {
    fn new() -> Aws {
        Aws {
            p: Project::new(),
            state: tempfile::Builder::new()
                .prefix("kiln-state-")
                .tempdir()
                .unwrap(),
        }
    }

    /// Another project sharing this one's state dir (so the same ledger).
    fn sibling(&self) -> Project {
        Project::new()
    }

    /// Writes build.rhai: the amazon_ebs source with `extra` options, one shell step and
    /// one file upload into the project's `remote` dir, and a manifest.
    fn write(&self, peers: &Peers, ami_name: &str, extra: &str, steps: Option<&str>) {
        self.p.write("files/app.conf", "listen = 8080\n");
        let remote = self.p.remote.path().display().to_string();
        let default_steps = format!(
            r#"shell(["echo hello > {remote}/hello", "id -un >> {remote}/hello"]), file("files/app.conf", "{remote}/app.conf")"#
        );
        let steps = steps.map(str::to_string).unwrap_or(default_steps);
        let script = format!(
            r#"
source("aws", amazon_ebs(#{{
    region: "us-east-1",
    endpoint: "{endpoint}",
    endpoint_ignores_client_tokens: true,
    access_key: secret("KILN_TEST_AWS_KEY"),
    secret_key: secret("KILN_TEST_AWS_SECRET"),
    source_ami_filter: #{{ filters: #{{ name: "ubuntu/images/hvm-ssd/ubuntu-*-amd64-server-*",
        "virtualization-type": "hvm" }}, owners: ["{CANONICAL}"], most_recent: true }},
    instance_type: "t3.micro",
    ami_name: "{ami_name}",
    ssh_host: "127.0.0.1",
    ssh: #{{ user: "root", port: {port}, timeout: "90s" }},
    {extra}
}}));
build("img", #{{ sources: ["aws"], steps: [{steps}], post: [manifest("manifest.json")] }});
"#,
            endpoint = peers.moto.endpoint(),
            port = peers.sshd.port,
        );
        self.p.write("build.rhai", &script);
    }

    fn cmd_in(&self, dir: &Path, args: &[&str]) -> Command {
        let mut c = crate::cli::kiln_cmd(dir, args);
        c.env("KILN_STATE_DIR", self.state.path())
            .env("KILN_TEST_AWS_KEY", ACCESS_KEY)
            .env("KILN_TEST_AWS_SECRET", SECRET_KEY)
            .env_remove("KILN_TEST_PAUSE_AT")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY");
        c
    }

    fn kiln(&self, args: &[&str]) -> Output {
        self.cmd_in(self.p.path(), args).output().expect("run kiln")
    }

    fn build(&self) -> Output {
        self.kiln(&["build", "."])
    }

    /// `kiln build` paused at `phase`, with its output collected.
    fn spawn_paused(&self, phase: &str) -> Running {
        let mut cmd = self.cmd_in(self.p.path(), &["build", "."]);
        cmd.env("KILN_TEST_PAUSE_AT", phase);
        Running::spawn(cmd)
    }

    /// Every file under the state dir and the project (ledger, WAL, audit log,
    /// manifest), as text: where no secret may be.
    fn all_files_text(&self) -> String {
        let mut text = String::new();
        for root in [self.state.path(), self.p.path()] {
            for f in walk(root) {
                text.push_str(&String::from_utf8_lossy(
                    &std::fs::read(&f).unwrap_or_default(),
                ));
            }
        }
        text
    }

    fn audit_log(&self, out: &Output) -> PathBuf {
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout
            .lines()
            .find_map(|l| l.strip_prefix("Audit log: "))
            .unwrap_or_else(|| panic!("no audit log path in the output:\n{}", text(out)));
        PathBuf::from(line.trim())
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn run_id_of(audit: &Path) -> String {
    audit
        .parent()
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .expect("run dir")
}

/// A kiln process whose stdout and stderr are collected as they come.
struct Running {
    child: Child,
    out: Arc<Mutex<String>>,
    lines: mpsc::Receiver<String>,
}

impl Running {
    fn spawn(mut cmd: Command) -> Running {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn kiln");
        let out = Arc::new(Mutex::new(String::new()));
        let (tx, lines) = mpsc::channel();
        let pipes: Vec<Box<dyn std::io::Read + Send>> = vec![
            Box::new(child.stdout.take().expect("stdout")),
            Box::new(child.stderr.take().expect("stderr")),
        ];
        for pipe in pipes {
            let out = out.clone();
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    out.lock().unwrap().push_str(&format!("{line}\n"));
                    let _ = tx.send(line);
                }
            });
        }
        Running { child, out, lines }
    }

    /// Waits until a line contains `marker`; panics with the output if kiln exits first.
    fn wait_for(&mut self, marker: &str) {
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            match self.lines.recv_timeout(Duration::from_millis(200)) {
                Ok(l) if l.contains(marker) => return,
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Ok(Some(status)) = self.child.try_wait() {
                        // Drain what is left before giving up.
                        std::thread::sleep(Duration::from_millis(200));
                        while let Ok(l) = self.lines.try_recv() {
                            if l.contains(marker) {
                                return;
                            }
                        }
                        panic!(
                            "kiln exited ({status}) before {marker:?}:\n{}",
                            self.out.lock().unwrap()
                        );
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    panic!(
                        "kiln's output ended before {marker:?}:\n{}",
                        self.out.lock().unwrap()
                    )
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no {marker:?} within {PATIENCE:?}:\n{}",
                self.out.lock().unwrap()
            );
        }
    }

    fn signal(&self, sig: i32) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid");
        // SAFETY: kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(rc, 0, "kill({pid}, {sig})");
    }

    /// Waits for the exit; returns the code (None when killed by a signal) and the output.
    fn wait(mut self) -> (Option<i32>, String) {
        let deadline = std::time::Instant::now() + PATIENCE;
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                break s;
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "kiln did not exit within {PATIENCE:?}:\n{}",
                    self.out.lock().unwrap()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        // The reader threads finish once the pipes close.
        std::thread::sleep(Duration::from_millis(300));
        let out = self.out.lock().unwrap().clone();
        (status.code(), out)
    }
}

fn image_tags(peers: &Peers, region: &str, name: &str) -> (kiln_ec2::Image, Vec<Tags>) {
    let c = peers.ec2(region);
    peers.block(async {
        let imgs = c.find_own_images_by_name(name).await.expect("images");
        assert_eq!(imgs.len(), 1, "one AMI named {name} in {region}: {imgs:?}");
        let img = imgs.into_iter().next().expect("image");
        let snaps = c
            .describe_snapshots(&img.snapshot_ids(), &[], &[])
            .await
            .expect("snapshots");
        assert!(!snaps.is_empty(), "AMI {} has snapshots", img.image_id);
        (img, snaps.into_iter().map(|s| s.tags).collect())
    })
}

fn assert_no_secrets(a: &Aws, outputs: &[&str]) {
    let files = a.all_files_text();
    for (what, hay) in outputs
        .iter()
        .map(|o| ("output", *o))
        .chain([("state/project files", files.as_str())])
    {
        for needle in [SECRET_KEY, ACCESS_KEY, "PRIVATE KEY"] {
            assert!(
                !hay.contains(needle),
                "{needle:?} leaked into the {what}:\n{hay}"
            );
        }
    }
}

#[test]
fn full_flow_with_temporary_key_pair_and_security_group() {
    let peers = Peers::start();
    let a = Aws::new();
    a.write(
        &peers,
        "kiln-full-flow",
        r#"tags: #{ Name: "kiln full flow", team: "platform" }, snapshot_tags: #{ role: "base" },
    run_tags: #{ purpose: "build" }, temporary_key_pair_type: "ed25519","#,
        None,
    );
    let out = a.build();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    // Provisioning really ran over SSH with the temporary key.
    let hello = std::fs::read_to_string(a.p.remote.path().join("hello")).unwrap();
    assert_eq!(hello, "hello\nroot\n");
    assert_eq!(
        std::fs::read_to_string(a.p.remote.path().join("app.conf")).unwrap(),
        "listen = 8080\n"
    );
    assert!(
        peers.sshd.log().contains("moto-keys.py"),
        "the key came from moto: {}",
        peers.sshd.log()
    );
    // The artifact, Packer-style, in the output and the manifest.
    let (img, snap_tags) = image_tags(&peers, "us-east-1", "kiln-full-flow");
    let id = format!("us-east-1:{}", img.image_id);
    assert!(all.contains(&id), "{all}");
    let manifest = std::fs::read_to_string(a.p.path().join("manifest.json")).unwrap();
    assert!(manifest.contains(&id), "{manifest}");
    // The AMI and its snapshots carry the user's tags and kiln:run, and (as an artifact)
    // no kiln:expires.
    let audit = a.audit_log(&out);
    let run = run_id_of(&audit);
    assert_eq!(img.tags.get("team").map(String::as_str), Some("platform"));
    assert_eq!(img.tags.get("kiln:run"), Some(&run));
    assert!(!img.tags.contains_key("kiln:expires"), "{:?}", img.tags);
    for t in &snap_tags {
        assert_eq!(t.get("role").map(String::as_str), Some("base"), "{t:?}");
        assert_eq!(t.get("kiln:run"), Some(&run));
        assert!(!t.contains_key("kiln:expires"), "{t:?}");
    }
    // The scaffolding is gone: instance terminated, temporary key pair and group deleted.
    let left = peers.leftovers(&["us-east-1"]);
    let unexpected: Vec<_> = left
        .iter()
        .filter(|l| !l.contains(&img.image_id) && !l.contains("snapshot"))
        .collect();
    assert!(unexpected.is_empty(), "{unexpected:?}\n{all}");
    // One audit line per EC2 call: action, region, outcome.
    let log = std::fs::read_to_string(&audit).unwrap();
    let ec2: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["capability"] == "ec2")
        .collect();
    for action in [
        "DescribeImages",
        "CreateKeyPair",
        "CreateSecurityGroup",
        "AuthorizeSecurityGroupIngress",
        "RunInstances",
        "StopInstances",
        "CreateImage",
        "TerminateInstances",
        "DeleteSecurityGroup",
        "DeleteKeyPair",
    ] {
        let object = format!("us-east-1: {action}");
        assert!(
            ec2.iter()
                .any(|v| v["object"] == object.as_str() && v["outcome"] == "ok"),
            "no ok audit line for {object}:\n{log}"
        );
    }
    // Credentials and the private key appear nowhere.
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_no_secrets(&a, &[&stdout, &stderr]);
    // The run left nothing: no stale run, nothing for kiln cleanup.
    let out = a.kiln(&["cleanup", "--dry-run"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("Nothing to clean up."),
        "{}",
        text(&out)
    );
}

#[test]
fn existing_key_pair_and_rsa_file() {
    let peers = Peers::start();
    let a = Aws::new();
    // The test's own key pair, imported into moto; its private key in the project.
    let public = std::fs::read_to_string(peers.sshd.key_path.with_extension("pub")).unwrap();
    let c = peers.ec2("us-east-1");
    peers
        .block(c.import_key_pair("kiln-test-own", &public, &Tags::new()))
        .expect("import key pair");
    std::fs::create_dir_all(a.p.path().join("keys")).unwrap();
    std::fs::copy(&peers.sshd.key_path, a.p.path().join("keys/id")).unwrap();
    a.write(
        &peers,
        "kiln-own-key",
        r#"ssh_keypair_name: "kiln-test-own", ssh_private_key_file: "keys/id","#,
        None,
    );
    let out = a.build();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("Using existing key pair kiln-test-own"),
        "{}",
        text(&out)
    );
    // The instance was launched with it, and it is still there afterwards.
    let instances = peers.block(c.describe_instances(&[], &[])).unwrap();
    assert_eq!(instances.len(), 1, "{instances:?}");
    assert_eq!(instances[0].key_name.as_deref(), Some("kiln-test-own"));
    let keys = peers.block(c.describe_key_pairs(&[], &[], false)).unwrap();
    let names: Vec<_> = keys.iter().map(|k| k.key_name.as_str()).collect();
    assert_eq!(names, vec!["kiln-test-own"], "no temporary key pair");
}

#[test]
fn source_ami_filter_most_recent_and_rsa_temporary_key() {
    let peers = Peers::start();
    let a = Aws::new();
    // Without most_recent, two Canonical images match: a clear error, nothing created.
    a.p.write("build.rhai", "");
    a.write(
        &peers,
        "kiln-filter",
        r#"temporary_key_pair_type: "rsa","#,
        None,
    );
    let script = std::fs::read_to_string(a.p.path().join("build.rhai")).unwrap();
    a.p.write(
        "build.rhai",
        &script.replace("most_recent: true", "most_recent: false"),
    );
    let out = a.build();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("most_recent"), "{}", text(&out));
    assert!(peers.leftovers(&["us-east-1"]).is_empty());
    // With it, the newest (xenial) is used, through an RSA temporary key pair.
    a.p.write("build.rhai", &script);
    let out = a.build();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let c = peers.ec2("us-east-1");
    let instances = peers.block(c.describe_instances(&[], &[])).unwrap();
    let source = peers
        .block(c.describe_image(instances[0].image_id.as_deref().unwrap()))
        .unwrap()
        .expect("source image");
    assert!(
        source.name.as_deref().unwrap_or("").contains("xenial"),
        "{source:?}"
    );
    assert!(peers.sshd.log().contains("RSA"), "{}", peers.sshd.log());
}

#[test]
fn copy_to_a_second_region_with_tags_on_amis_and_snapshots() {
    let peers = Peers::start();
    let a = Aws::new();
    a.write(
        &peers,
        "kiln-copied",
        r#"ami_regions: ["eu-west-1"], tags: #{ Name: "kiln copy", team: "platform" },
    snapshot_tags: #{ role: "base" }, ami_users: ["123456789012"], ami_description: "copied by kiln","#,
        None,
    );
    let out = a.build();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let run = run_id_of(&a.audit_log(&out));
    let (east, east_snaps) = image_tags(&peers, "us-east-1", "kiln-copied");
    let (west, west_snaps) = image_tags(&peers, "eu-west-1", "kiln-copied");
    let id = format!("eu-west-1:{},us-east-1:{}", west.image_id, east.image_id);
    assert!(
        text(&out).contains(&id),
        "sorted region:ami list {id}:\n{}",
        text(&out)
    );
    for (img, snaps) in [(&east, &east_snaps), (&west, &west_snaps)] {
        assert_eq!(
            img.tags.get("team").map(String::as_str),
            Some("platform"),
            "{img:?}"
        );
        assert_eq!(img.tags.get("kiln:run"), Some(&run), "{img:?}");
        assert!(!img.tags.contains_key("kiln:expires"), "{img:?}");
        assert_eq!(img.description.as_deref(), Some("copied by kiln"));
        for t in snaps.iter() {
            assert_eq!(t.get("role").map(String::as_str), Some("base"), "{t:?}");
            assert!(!t.contains_key("kiln:expires"), "{t:?}");
        }
    }
    let audit = std::fs::read_to_string(a.audit_log(&out)).unwrap();
    assert!(audit.contains("eu-west-1: CopyImage"), "{audit}");
    assert!(audit.contains("ModifyImageAttribute"), "{audit}");
}

#[test]
fn force_deregister_replaces_the_ami_and_its_snapshots() {
    let peers = Peers::start();
    let a = Aws::new();
    a.write(&peers, "kiln-fixed-name", "", None);
    let out = a.build();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let (first, _) = image_tags(&peers, "us-east-1", "kiln-fixed-name");
    // The name is taken: refused before anything is created.
    let out = a.build();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("force_deregister"), "{}", text(&out));
    // With force_deregister + force_delete_snapshot the old AMI and snapshots go.
    a.write(
        &peers,
        "kiln-fixed-name",
        "force_deregister: true, force_delete_snapshot: true,",
        None,
    );
    let out = a.build();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("Deregistered AMI {}", first.image_id)),
        "{}",
        text(&out)
    );
    let (second, _) = image_tags(&peers, "us-east-1", "kiln-fixed-name");
    assert_ne!(first.image_id, second.image_id);
    let c = peers.ec2("us-east-1");
    let snaps = peers
        .block(c.describe_snapshots(&first.snapshot_ids(), &[], &[]))
        .unwrap_or_default();
    assert!(snaps.is_empty(), "old snapshots deleted: {snaps:?}");
}

#[test]
fn a_provisioning_failure_removes_everything_it_created() {
    let peers = Peers::start();
    let a = Aws::new();
    a.write(
        &peers,
        "kiln-fails",
        "",
        Some(r#"shell(["echo about to fail", "exit 3"])"#),
    );
    let out = a.build();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("exited with status 3"),
        "{}",
        text(&out)
    );
    let left = peers.leftovers(&["us-east-1"]);
    assert!(left.is_empty(), "{left:?}\n{}", text(&out));
    let out = a.kiln(&["cleanup", "--dry-run"]);
    assert!(
        text(&out).contains("Nothing to clean up."),
        "{}",
        text(&out)
    );
}

#[test]
fn sigint_and_sigterm_at_each_phase_leave_nothing() {
    let peers = Peers::start();
    let a = Aws::new();
    for (n, phase) in PHASES.iter().enumerate() {
        for (sig, name) in [(libc::SIGINT, "SIGINT"), (libc::SIGTERM, "SIGTERM")] {
            a.write(
                &peers,
                &format!("kiln-int-{n}-{name}"),
                r#"temporary_security_group_source_cidrs: ["203.0.113.0/24", "198.51.100.7/32"],"#,
                None,
            );
            let mut run = a.spawn_paused(phase);
            run.wait_for(&format!("paused at {phase}"));
            if *phase == "provisioning" && sig == libc::SIGINT {
                // The temporary group is open on the SSH port to the given CIDRs only.
                let c = peers.ec2("us-east-1");
                let groups = peers.block(c.describe_security_groups(&[], &[])).unwrap();
                let g = groups
                    .iter()
                    .find(|g| g.group_name.starts_with("kiln-"))
                    .expect("temporary group");
                assert_eq!(g.ingress.len(), 1, "{g:?}");
                let rule = &g.ingress[0];
                let port = i64::from(peers.sshd.port);
                assert_eq!(
                    (rule.protocol.as_str(), rule.from_port, rule.to_port),
                    ("tcp", Some(port), Some(port))
                );
                let cidrs: BTreeSet<_> = rule.cidrs.iter().map(String::as_str).collect();
                assert_eq!(cidrs, BTreeSet::from(["203.0.113.0/24", "198.51.100.7/32"]));
            }
            if *phase == "waiting" && sig == libc::SIGINT {
                // kiln cleanup leaves a live run alone.
                let out = a.kiln(&["cleanup"]);
                assert_eq!(out.status.code(), Some(0), "{}", text(&out));
                assert!(
                    peers
                        .leftovers(&["us-east-1"])
                        .iter()
                        .any(|l| l.contains("instance")),
                    "the live run's instance is still there"
                );
            }
            run.signal(sig);
            let (code, output) = run.wait();
            assert_eq!(code, Some(1), "{phase}/{name}:\n{output}");
            assert!(
                output.contains(&format!("Interrupted by {name}")),
                "{output}"
            );
            let left = peers.leftovers(&["us-east-1"]);
            assert!(left.is_empty(), "{phase}/{name} left {left:?}:\n{output}");
            let out = a.kiln(&["cleanup", "--dry-run"]);
            assert!(
                text(&out).contains("Nothing to clean up."),
                "{phase}/{name}: {}",
                text(&out)
            );
        }
    }
}

#[test]
fn sigkill_at_each_phase_then_kiln_cleanup_leaves_nothing() {
    let peers = Peers::start();
    let a = Aws::new();
    for (n, phase) in PHASES.iter().enumerate() {
        a.write(
            &peers,
            &format!("kiln-kill-{n}"),
            r#"ami_regions: ["eu-west-1"],"#,
            None,
        );
        let mut run = a.spawn_paused(phase);
        run.wait_for(&format!("paused at {phase}"));
        run.signal(libc::SIGKILL);
        let (code, output) = run.wait();
        assert_eq!(code, None, "killed:\n{output}");
        let left = peers.leftovers(&["us-east-1", "eu-west-1"]);
        assert!(
            left.iter().any(|l| l.contains("key pair"))
                && left.iter().any(|l| l.contains("instance")),
            "{phase}: a killed build leaves things behind: {left:?}"
        );
        if *phase == "imaging" {
            assert!(left.iter().any(|l| l.contains("AMI")), "{left:?}");
        }
        // The next build (any build) says so, in one line naming the command.
        let other = a.sibling();
        other.write(
            "build.rhai",
            r#"source("x", ssh_host(#{ host: "127.0.0.1",
    ssh: #{ user: "root", port: 1, password: "x", host_key: "SHA256:x", timeout: "1s" } }));
build("b", #{ sources: ["x"], steps: [shell(["true"])] });"#,
        );
        let out = a.cmd_in(other.path(), &["build", "."]).output().unwrap();
        let t = text(&out);
        let stale: Vec<&str> = t.lines().filter(|l| l.contains("earlier run")).collect();
        assert_eq!(stale.len(), 1, "{t}");
        assert!(stale[0].contains("kiln cleanup"), "{t}");
        // --dry-run lists and removes nothing.
        let out = a.kiln(&["cleanup", "--dry-run"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        assert!(text(&out).contains("would remove"), "{}", text(&out));
        assert_eq!(peers.leftovers(&["us-east-1", "eu-west-1"]), left);
        // kiln cleanup removes it all, and a second run has nothing to do.
        let out = a.kiln(&["cleanup"]);
        assert_eq!(out.status.code(), Some(0), "{phase}: {}", text(&out));
        let after = peers.leftovers(&["us-east-1", "eu-west-1"]);
        assert!(
            after.is_empty(),
            "{phase}: left {after:?} after kiln cleanup:\n{}",
            text(&out)
        );
        let out = a.kiln(&["cleanup"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        assert!(
            text(&out).contains("Nothing to clean up."),
            "{}",
            text(&out)
        );
    }
}

#[test]
fn a_wrong_secret_is_a_clear_auth_error_and_creates_nothing() {
    let peers = Peers::start_with(MotoOptions {
        signature_checking: true,
        load_default_amis: false,
    });
    let a = Aws::new();
    a.write(&peers, "kiln-auth", "", None);
    let out = a
        .cmd_in(a.p.path(), &["build", "."])
        .env("KILN_TEST_AWS_KEY", peers.moto.access_key_id())
        .env("KILN_TEST_AWS_SECRET", "definitely-the-wrong-secret")
        .output()
        .unwrap();
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("AuthFailure") || t.contains("SignatureDoesNotMatch"),
        "{t}"
    );
    assert!(t.contains("check your credentials"), "{t}");
    assert!(t.contains("access_key/secret_key options"), "{t}");
    assert!(!t.contains("definitely-the-wrong-secret"), "{t}");
    assert!(!t.contains(peers.moto.secret_access_key()), "{t}");
    // moto, asked with the right keys, holds nothing kiln made.
    let left = peers.leftovers(&["us-east-1"]);
    assert!(left.is_empty(), "{left:?}");
    let out = a.kiln(&["cleanup", "--dry-run"]);
    assert!(
        text(&out).contains("Nothing to clean up."),
        "{}",
        text(&out)
    );
}

/// The ledger outside EC2: a killed build's partial output directory and the script it
/// left running on an ssh_host are removed by kiln cleanup.
#[test]
fn sigkill_leaves_output_dir_and_remote_script_for_kiln_cleanup() {
    let sshd = Sshd::start();
    let a = Aws::new();
    let ssh = sshd.ssh_config_rhai_in(a.p.path());
    a.p.write(
        "builders/partial.rhai",
        r#"
fn options() { #{ output_directory: "out", ssh: () } }
fn grants(cfg) { #{ machine: true, ssh: ["127.0.0.1"] } }
fn run(cfg, ctx) {
    ctx.output_dir(cfg.output_directory);
    ctx.write_text(`${cfg.output_directory}/partial.img`, "half an image");
    let m = ctx.connect(cfg.ssh);
    ctx.provision(m);
    ctx.keep(cfg.output_directory);
    ctx.artifact(#{ id: "x", files: [] })
}
"#,
    );
    a.p.write(
        "build.rhai",
        &format!(
            r#"
source("box", builder("builders/partial.rhai", #{{ ssh: {ssh} }}));
build("b", #{{ sources: ["box"], steps: [shell(["echo STEP-STARTED", "sleep 600"])] }});
"#
        ),
    );
    let mut run = Running::spawn(a.cmd_in(a.p.path(), &["build", "."]));
    run.wait_for("STEP-STARTED");
    run.signal(libc::SIGKILL);
    let (code, output) = run.wait();
    assert_eq!(code, None, "{output}");
    assert!(a.p.path().join("out/partial.img").exists());
    // The script is still running on the machine (this host, through sshd).
    let out = a.kiln(&["cleanup", "--dry-run"]);
    let t = text(&out);
    let script = t
        .lines()
        .find_map(|l| {
            l.split_whitespace()
                .find(|w| w.starts_with("/tmp/kiln-shell-") && w.ends_with(".sh.pid"))
        })
        .unwrap_or_else(|| panic!("no remote script listed:\n{t}"))
        .to_string();
    assert!(t.contains("output directory"), "{t}");
    let pid = std::fs::read_to_string(&script)
        .expect("pid file")
        .trim()
        .to_string();
    assert!(
        Path::new(&format!("/proc/{pid}")).exists(),
        "script {pid} runs"
    );
    let out = a.kiln(&["cleanup"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(!a.p.path().join("out").exists(), "{}", text(&out));
    assert!(!Path::new(&script).exists(), "pid file removed");
    // The script (and its sleep) got SIGTERM; give the kernel a moment to reap it.
    let deadline = std::time::Instant::now() + PATIENCE;
    while Path::new(&format!("/proc/{pid}")).exists()
        && std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "script {pid} still runs"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = a.kiln(&["cleanup"]);
    assert!(
        text(&out).contains("Nothing to clean up."),
        "{}",
        text(&out)
    );
}
