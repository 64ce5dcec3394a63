//! Per-run store state: the kiln:host implementations, WASI context, limits and the
//! linker that only contains what a step was granted.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Component, Path};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use wasmtime::component::{HasSelf, Linker, Resource, ResourceTable};
use wasmtime::{ResourceLimiter, StoreContextMut};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::{GuestError, GuestHost, LogLevel, Preopen};

pub(crate) mod bindings {
    wasmtime::component::bindgen!({
        path: "../guest-sdk/wit",
        world: "provisioner",
        imports: { default: async | trappable },
        exports: { default: async },
    });
}

use bindings::kiln::host::types::{Error as WitError, ExecOutput as WitExecOutput};
use bindings::kiln::host::{log, machine, secrets, types};

/// The interfaces that are linked only when granted. Everything else a provisioner may
/// import (log, types, WASI cli/clocks/random/io/filesystem) is always linked; the
/// file system then only contains the granted preopens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct LinkKey {
    pub machine: bool,
    pub secrets: bool,
    pub network: bool,
}

/// Shared by the log interface and guest stdout/stderr: one byte budget per run.
pub(crate) struct LogSink {
    host: Arc<dyn GuestHost>,
    state: Mutex<LogBudget>,
}

struct LogBudget {
    remaining: usize,
    limit: usize,
    dropped: usize,
}

impl LogSink {
    pub(crate) fn new(host: Arc<dyn GuestHost>, limit: usize) -> Arc<Self> {
        Arc::new(LogSink {
            host,
            state: Mutex::new(LogBudget {
                remaining: limit,
                limit,
                dropped: 0,
            }),
        })
    }

    fn emit(&self, level: LogLevel, message: &str) {
        let mut b = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if b.remaining == 0 {
            b.dropped = b.dropped.saturating_add(message.len());
            return;
        }
        let keep = floor_char_boundary(message, message.len().min(b.remaining));
        b.remaining -= keep.max(1).min(b.remaining);
        let first_drop = keep < message.len() || b.remaining == 0;
        if keep < message.len() {
            b.dropped = b.dropped.saturating_add(message.len() - keep);
        }
        let limit = b.limit;
        drop(b);
        self.host.log(level, &message[..keep]);
        if first_drop && keep < message.len() {
            self.host.log(
                LogLevel::Warn,
                &format!("provisioner log exceeded {limit} bytes; further output is dropped"),
            );
            self.host
                .audit("wasm.log", &format!("{limit} bytes"), "truncated");
        }
    }

    /// Bytes the guest tried to log beyond the budget.
    pub(crate) fn dropped(&self) -> usize {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).dropped
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Guest stdout/stderr: split into lines and sent to the build log through the budget.
pub(crate) struct GuestStdio {
    pub level: LogLevel,
    pub sink: Arc<LogSink>,
}

impl IsTerminal for GuestStdio {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestStdio {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(LineWriter {
            level: self.level,
            sink: self.sink.clone(),
            buf: Vec::new(),
        })
    }
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(LineWriter {
            level: self.level,
            sink: self.sink.clone(),
            buf: Vec::new(),
        })
    }
}

/// Longest partial line held before it is logged anyway, so a guest printing without
/// newlines cannot make the host buffer without limit.
const MAX_LINE: usize = 8 << 10;

struct LineWriter {
    level: LogLevel,
    sink: Arc<LogSink>,
    buf: Vec<u8>,
}

impl LineWriter {
    fn push(&mut self, bytes: &[u8]) {
        for chunk in bytes.split_inclusive(|b| *b == b'\n') {
            self.buf.extend_from_slice(chunk);
            if self.buf.ends_with(b"\n") || self.buf.len() >= MAX_LINE {
                self.flush_line();
            }
        }
    }

    fn flush_line(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let line = String::from_utf8_lossy(&self.buf);
        self.sink.emit(self.level, line.trim_end_matches('\n'));
        self.buf.clear();
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        self.flush_line();
    }
}

impl OutputStream for LineWriter {
    fn write(&mut self, bytes: wasmtime_wasi_io::bytes::Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }
    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }
    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 << 10)
    }
}

#[async_trait::async_trait]
impl Pollable for LineWriter {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for LineWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.get_mut().push(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Caps the total linear memory of all instances in the store and remembers that the
/// cap was hit, so a guest's resulting abort is reported as the memory limit.
pub(crate) struct MemLimiter {
    pub limit: usize,
    pub used: usize,
    pub hit: bool,
}

impl ResourceLimiter for MemLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let grow = desired.saturating_sub(current);
        if self.used.saturating_add(grow) > self.limit {
            self.hit = true;
            return Ok(false);
        }
        self.used += grow;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1 << 20)
    }

    fn instances(&self) -> usize {
        64
    }
    fn tables(&self) -> usize {
        256
    }
    fn memories(&self) -> usize {
        64
    }
}

/// Everything one run's store holds.
pub(crate) struct HostState {
    pub wasi: WasiCtx,
    pub table: ResourceTable,
    pub limiter: MemLimiter,
    pub host: Arc<dyn GuestHost>,
    pub log: Arc<LogSink>,
    pub read: Vec<Preopen>,
    pub secrets: Vec<String>,
    pub deadline_hit: bool,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

fn to_wit(e: GuestError) -> WitError {
    match e {
        GuestError::Denied(m) => WitError::Denied(m),
        GuestError::NotFound(m) => WitError::NotFound(m),
        GuestError::Io(m) => WitError::Io(m),
        GuestError::Timeout(m) => WitError::Timeout(m),
        GuestError::Failed(m) => WitError::Failed(m),
    }
}

impl types::Host for HostState {}

impl log::Host for HostState {
    async fn info(&mut self, msg: String) -> wasmtime::Result<()> {
        self.log.emit(LogLevel::Info, &msg);
        Ok(())
    }
    async fn warn(&mut self, msg: String) -> wasmtime::Result<()> {
        self.log.emit(LogLevel::Warn, &msg);
        Ok(())
    }
    async fn debug(&mut self, msg: String) -> wasmtime::Result<()> {
        self.log.emit(LogLevel::Debug, &msg);
        Ok(())
    }
}

impl secrets::Host for HostState {
    async fn get(&mut self, name: String) -> wasmtime::Result<Result<String, WitError>> {
        if !self.secrets.contains(&name) {
            self.host.audit("secret", &name, "denied");
            return Ok(Err(WitError::Denied(format!(
                "secret `{name}` is not granted to this step; add allow: #{{ secrets: [{name:?}] }}"
            ))));
        }
        Ok(self.host.secret(&name).map_err(to_wit))
    }
}

impl machine::Host for HostState {
    async fn exec(
        &mut self,
        command: String,
        env: Vec<(String, String)>,
    ) -> wasmtime::Result<Result<WitExecOutput, WitError>> {
        let host = self.host.clone();
        Ok(host
            .exec(command, env)
            .await
            .map(|o| WitExecOutput {
                exit_code: o.exit_code,
                stdout: o.stdout,
                stderr: o.stderr,
            })
            .map_err(to_wit))
    }

    async fn upload(
        &mut self,
        host_path: String,
        guest_path: String,
        mode: Option<u32>,
    ) -> wasmtime::Result<Result<u64, WitError>> {
        let file = match open_beneath(&self.read, &host_path) {
            Ok(f) => f,
            Err(e) => {
                if matches!(e, GuestError::Denied(_)) {
                    self.host.audit("fs.read", &host_path, "denied");
                }
                return Ok(Err(to_wit(e)));
            }
        };
        let host = self.host.clone();
        Ok(host.upload(file, guest_path, mode).await.map_err(to_wit))
    }

    async fn write_file(
        &mut self,
        guest_path: String,
        contents: Vec<u8>,
        mode: Option<u32>,
    ) -> wasmtime::Result<Result<(), WitError>> {
        let host = self.host.clone();
        Ok(host
            .write_file(guest_path, contents, mode)
            .await
            .map_err(to_wit))
    }

    async fn read_file(
        &mut self,
        guest_path: String,
    ) -> wasmtime::Result<Result<Vec<u8>, WitError>> {
        let host = self.host.clone();
        Ok(host.read_file(guest_path).await.map_err(to_wit))
    }

    async fn facts(&mut self) -> wasmtime::Result<Vec<(String, String)>> {
        let host = self.host.clone();
        Ok(host.facts().await)
    }
}

/// Components of a guest path, without `.` and leading `/` (preopen names and paths are
/// matched the way wasi-libc matches them).
fn parts(p: &str) -> Option<Vec<&str>> {
    let mut out = Vec::new();
    for c in Path::new(p).components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(s) => out.push(s.to_str()?),
            // `..` is left to cap-std inside the directory; here it can only mean escaping.
            Component::ParentDir => out.push(".."),
            Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Opens `host_path` (as the guest names it) beneath the granted read directory it
/// falls into. cap-std refuses `..` escapes, absolute paths and symlinks leading out.
pub(crate) fn open_beneath(
    read: &[Preopen],
    host_path: &str,
) -> Result<cap_std::fs::File, GuestError> {
    let want = parts(host_path)
        .ok_or_else(|| GuestError::Denied(format!("`{host_path}` is not a valid path")))?;
    let absolute = host_path.starts_with('/');
    for p in read {
        let Some(base) = parts(&p.guest_path) else {
            continue;
        };
        if p.guest_path.starts_with('/') != absolute && !base.is_empty() {
            continue;
        }
        if want.len() <= base.len() || want[..base.len()] != base[..] {
            continue;
        }
        let rel = want[base.len()..].join("/");
        return match p.dir.open(&rel) {
            Ok(f) => match f.metadata() {
                Ok(m) if m.is_file() => Ok(f),
                Ok(_) => Err(GuestError::Failed(format!(
                    "`{host_path}` is not a regular file"
                ))),
                Err(e) => Err(GuestError::Io(format!("{host_path}: {e}"))),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(GuestError::NotFound(
                format!("`{host_path}` does not exist in `{}`", p.label),
            )),
            Err(e) => Err(GuestError::Denied(format!(
                "`{host_path}` cannot be opened beneath the granted directory `{}`: {e}",
                p.label
            ))),
        };
    }
    Err(GuestError::Denied(format!(
        "`{host_path}` is not inside a directory granted with read; add allow: #{{ read: [\"<dir>\"] }} and name the file by its guest path"
    )))
}

/// A parsed `http` grant: a host (name or IP literal) and an optional port.
#[derive(Debug, Clone)]
pub(crate) struct NetRule {
    pub host: String,
    pub port: Option<u16>,
}

impl NetRule {
    pub(crate) fn parse(s: &str) -> Result<NetRule, String> {
        let s = s.trim();
        let s = s
            .strip_prefix("https://")
            .or_else(|| s.strip_prefix("http://"))
            .unwrap_or(s);
        let s = s.trim_end_matches('/');
        if s.is_empty() || s.contains('/') {
            return Err(format!("`{s}` must be a host or host:port"));
        }
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (h, tail) = rest
                .split_once(']')
                .ok_or_else(|| format!("`{s}`: unclosed `[`"))?;
            (h.to_string(), tail.strip_prefix(':'))
        } else if s.matches(':').count() == 1 {
            let (h, p) = s.split_once(':').unwrap_or((s, ""));
            (h.to_string(), Some(p))
        } else {
            (s.to_string(), None)
        };
        let port = match port {
            None | Some("*") => None,
            Some(p) => Some(
                p.parse::<u16>()
                    .map_err(|_| format!("`{s}`: `{p}` is not a port"))?,
            ),
        };
        if host.is_empty() || host.contains('*') {
            return Err(format!(
                "`{s}`: wildcard hosts are not supported; name each host"
            ));
        }
        Ok(NetRule {
            host: host.to_ascii_lowercase(),
            port,
        })
    }
}

/// The resolved `http` grants a socket check consults: (address, port rule, label).
pub(crate) type NetAllow = Vec<(IpAddr, Option<u16>, String)>;

pub(crate) async fn resolve_rules(rules: &[NetRule]) -> NetAllow {
    let mut out = Vec::new();
    for r in rules {
        if let Ok(ip) = r.host.parse::<IpAddr>() {
            out.push((ip, r.port, r.host.clone()));
            continue;
        }
        match tokio::net::lookup_host((r.host.as_str(), r.port.unwrap_or(443))).await {
            Ok(addrs) => out.extend(addrs.map(|a| (a.ip(), r.port, r.host.clone()))),
            Err(e) => {
                tracing::warn!(host = %r.host, error = %e, "granted http host does not resolve; connections to it will be refused")
            }
        }
    }
    out
}

pub(crate) fn check_addr(allow: &NetAllow, host: &dyn GuestHost, addr: SocketAddr) -> bool {
    let hit = allow
        .iter()
        .find(|(ip, port, _)| *ip == addr.ip() && port.is_none_or(|p| p == addr.port()));
    match hit {
        Some((_, _, label)) => match host.allow_http(label, addr.port()) {
            Ok(()) => true,
            Err(e) => {
                tracing::info!(%addr, error = %e, "broker refused a granted socket");
                false
            }
        },
        None => {
            host.audit("net.http", &addr.to_string(), "denied");
            false
        }
    }
}

/// The WASI filesystem `types` instance name our bindings register under.
const FS_TYPES: &str = "wasi:filesystem/types@0.2.12";

/// Builds a linker with exactly the interfaces `key` allows.
pub(crate) fn build_linker(
    engine: &wasmtime::Engine,
    key: LinkKey,
) -> wasmtime::Result<Linker<HostState>> {
    use wasmtime_wasi::cli::{WasiCli, WasiCliView as _};
    use wasmtime_wasi::clocks::{WasiClocks, WasiClocksView as _};
    use wasmtime_wasi::filesystem::{WasiFilesystem, WasiFilesystemView as _};
    use wasmtime_wasi::p2::bindings::{cli, clocks, filesystem, random, sockets};
    use wasmtime_wasi::random::WasiRandom;
    use wasmtime_wasi::sockets::{WasiSockets, WasiSocketsView as _};

    let mut linker: Linker<HostState> = Linker::new(engine);
    let l = &mut linker;
    types::add_to_linker::<HostState, HasSelf<HostState>>(l, |s| s)?;
    log::add_to_linker::<HostState, HasSelf<HostState>>(l, |s| s)?;
    if key.machine {
        machine::add_to_linker::<HostState, HasSelf<HostState>>(l, |s| s)?;
    }
    if key.secrets {
        secrets::add_to_linker::<HostState, HasSelf<HostState>>(l, |s| s)?;
    }

    wasmtime_wasi_io::add_to_linker_async(l)?;
    clocks::wall_clock::add_to_linker::<HostState, WasiClocks>(l, |t| t.clocks())?;
    clocks::monotonic_clock::add_to_linker::<HostState, WasiClocks>(l, |t| t.clocks())?;
    filesystem::preopens::add_to_linker::<HostState, WasiFilesystem>(l, |t| t.filesystem())?;
    filesystem::types::add_to_linker::<HostState, WasiFilesystem>(l, |t| t.filesystem())?;
    random::random::add_to_linker::<HostState, WasiRandom>(l, |t| t.wasi.random())?;
    random::insecure::add_to_linker::<HostState, WasiRandom>(l, |t| t.wasi.random())?;
    random::insecure_seed::add_to_linker::<HostState, WasiRandom>(l, |t| t.wasi.random())?;
    cli::exit::add_to_linker::<HostState, WasiCli>(l, |t| t.cli())?;
    cli::environment::add_to_linker::<HostState, WasiCli>(l, |t| t.cli())?;
    cli::stdin::add_to_linker::<HostState, WasiCli>(l, |t| t.cli())?;
    cli::stdout::add_to_linker::<HostState, WasiCli>(l, |t| t.cli())?;
    cli::stderr::add_to_linker::<HostState, WasiCli>(l, |t| t.cli())?;
    cli::terminal_input::add_to_linker::<HostState, WasiCli>(l, |t| t.cli())?;
    cli::terminal_output::add_to_linker::<HostState, WasiCli>(l, |t| t.cli())?;
    cli::terminal_stdin::add_to_linker::<HostState, WasiCli>(l, |t| t.cli())?;
    cli::terminal_stdout::add_to_linker::<HostState, WasiCli>(l, |t| t.cli())?;
    cli::terminal_stderr::add_to_linker::<HostState, WasiCli>(l, |t| t.cli())?;
    if key.network {
        let opts = sockets::network::LinkOptions::default();
        sockets::tcp_create_socket::add_to_linker::<HostState, WasiSockets>(l, |t| t.sockets())?;
        sockets::instance_network::add_to_linker::<HostState, WasiSockets>(l, |t| t.sockets())?;
        sockets::network::add_to_linker::<HostState, WasiSockets>(l, &opts, |t| t.sockets())?;
        sockets::ip_name_lookup::add_to_linker::<HostState, WasiSockets>(l, |t| t.sockets())?;
        sockets::tcp::add_to_linker::<HostState, WasiSockets>(l, |t| t.sockets())?;
        sockets::udp::add_to_linker::<HostState, WasiSockets>(l, |t| t.sockets())?;
        sockets::udp_create_socket::add_to_linker::<HostState, WasiSockets>(l, |t| t.sockets())?;
    }
    audit_open_at(l)?;
    Ok(linker)
}

impl wasmtime_wasi_io::IoView for HostState {
    fn table(&mut self) -> &mut ResourceTable {
        &mut self.table
    }
}

/// Replaces `descriptor.open-at` with a wrapper that reports refused opens (`..`,
/// absolute paths, symlinks leading out, writes to read-only grants) to the audit log.
/// wasmtime-wasi still does the work and the confinement; this only observes.
fn audit_open_at(l: &mut Linker<HostState>) -> wasmtime::Result<()> {
    use wasmtime_wasi::filesystem::WasiFilesystemView;
    use wasmtime_wasi::p2::bindings::filesystem::types::{
        Descriptor, DescriptorFlags, ErrorCode, Host as _, HostDescriptor, OpenFlags, PathFlags,
    };

    l.allow_shadowing(true);
    let mut inst = l.instance(FS_TYPES)?;
    inst.func_wrap_async(
        "[method]descriptor.open-at",
        |mut store: StoreContextMut<'_, HostState>,
         (fd, path_flags, path, open_flags, flags): (
            Resource<Descriptor>,
            PathFlags,
            String,
            OpenFlags,
            DescriptorFlags,
        )| {
            Box::new(async move {
                let writing = flags.contains(DescriptorFlags::WRITE)
                    || open_flags.intersects(OpenFlags::CREATE | OpenFlags::TRUNCATE);
                let res = {
                    let mut view = store.data_mut().filesystem();
                    HostDescriptor::open_at(
                        &mut view,
                        fd,
                        path_flags,
                        path.clone(),
                        open_flags,
                        flags,
                    )
                    .await
                };
                let res = match res {
                    Ok(d) => Ok(d),
                    Err(e) => Err(store.data_mut().filesystem().convert_error_code(e)?),
                };
                if let Err(code) = &res
                    && matches!(
                        code,
                        ErrorCode::NotPermitted | ErrorCode::Access | ErrorCode::ReadOnly
                    )
                {
                    let cap = if writing { "fs.write" } else { "fs.read" };
                    let host = store.data().host.clone();
                    host.audit(cap, &path, &format!("denied ({code:?})"));
                }
                Ok((res,))
            })
        },
    )?;
    l.allow_shadowing(false);
    Ok(())
}

/// Interfaces that need a grant, for the link check and `inspect`.
pub(crate) fn needs_grant(import: &str) -> Option<(&'static str, &'static str)> {
    let iface = import.split('@').next().unwrap_or(import);
    match iface {
        "kiln:host/machine" => Some(("machine", "allow: #{ machine: true }")),
        "kiln:host/secrets" => Some(("any secret", "allow: #{ secrets: [\"NAME\"] }")),
        i if i.starts_with("wasi:sockets/") => {
            Some(("network access", "allow: #{ http: [\"host:port\"] }"))
        }
        i if i.starts_with("wasi:http/") => Some(("http", "allow: #{ http: [\"host:port\"] }")),
        _ => None,
    }
}

/// Cached per-key linkers: built once per engine, shared by every run.
pub(crate) type LinkerCache = Mutex<HashMap<LinkKey, Arc<Linker<HostState>>>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_rules_parse_hosts_and_ports() {
        let r = NetRule::parse("Example.com:8080").unwrap();
        assert_eq!((r.host.as_str(), r.port), ("example.com", Some(8080)));
        assert_eq!(NetRule::parse("https://example.com/").unwrap().port, None);
        assert_eq!(NetRule::parse("[::1]:443").unwrap().host, "::1");
        assert_eq!(NetRule::parse("10.0.0.1:*").unwrap().port, None);
        assert!(NetRule::parse("*.example.com").is_err());
        assert!(NetRule::parse("example.com/path").is_err());
        assert!(NetRule::parse("example.com:http").is_err());
    }

    #[test]
    fn upload_sources_resolve_only_beneath_read_grants() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("files")).unwrap();
        std::fs::write(tmp.path().join("files/a.txt"), "a").unwrap();
        std::fs::write(tmp.path().join("secret.txt"), "s").unwrap();
        let dir = cap_std::fs::Dir::open_ambient_dir(
            tmp.path().join("files"),
            cap_std::ambient_authority(),
        )
        .unwrap();
        let read = vec![Preopen {
            dir,
            guest_path: "files".into(),
            label: "files".into(),
        }];
        assert!(open_beneath(&read, "files/a.txt").is_ok());
        assert!(open_beneath(&read, "./files/a.txt").is_ok());
        assert!(matches!(
            open_beneath(&read, "files/missing"),
            Err(GuestError::NotFound(_))
        ));
        assert!(matches!(
            open_beneath(&read, "files/../secret.txt"),
            Err(GuestError::Denied(_))
        ));
        assert!(matches!(
            open_beneath(&read, "secret.txt"),
            Err(GuestError::Denied(_))
        ));
        assert!(matches!(
            open_beneath(&read, "/etc/passwd"),
            Err(GuestError::Denied(_))
        ));
        assert!(matches!(
            open_beneath(&read, "files"),
            Err(GuestError::Denied(_) | GuestError::Failed(_))
        ));
    }
}
