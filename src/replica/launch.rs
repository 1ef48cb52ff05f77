//! `ftnet record` and `ftnet replay`: building the header, starting the
//! replica under the supervisor, and the checks replay makes before it
//! starts (same executable and libraries, same kernel facts).
//!
//! Start-up sequence (both modes): the supervisor blocks SIGCHLD/SIGINT/
//! SIGTERM into a signalfd, clones the init into new namespaces, seizes it
//! with the event options, lets it fork the replica (which inherits the
//! options), detaches the init, lets the replica install its filter and stop,
//! takes the listener (fd 3) with `pidfd_getfd`, and runs the engine.

use super::engine::{EngineError, Mode, Options, Result, Supervisor};
use super::log::{FileDigest, FileSink, Frame, Header, Reader, Sink, StateEntry, Writer};
use crate::sys::{self, fd as sfd, ptrace, seccomp, spawn};
use std::io::Read;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

/// Set by the daemon: stop requests reach its main thread, not the engine.
pub static DAEMON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Masks RDRAND and RDSEED from OpenSSL's CPU dispatch: the instructions
/// cannot be trapped here, so a replica must not use them.
pub const OPENSSL_MASK: &str = "OPENSSL_ia32cap=~0x4000000000000000:~0x40000";

pub struct RecordArgs {
    pub log: PathBuf,
    pub state: Vec<PathBuf>,
    pub cmd: Vec<std::ffi::OsString>,
    pub cpu: Option<usize>,
    pub opts: Options,
}

pub struct ReplayArgs {
    pub log: PathBuf,
    pub cpu: Option<usize>,
    pub opts: Options,
    /// When the log ends without an end record, let the replica go on live
    /// (what a backup does at takeover) instead of failing.
    pub go_live: bool,
}

/// Counters printed when a run ends.
pub struct Summary {
    pub status: i32,
    pub stats: super::engine::Stats,
    pub log_events: u64,
    pub log_bytes: u64,
}

fn setup(msg: impl Into<String>) -> EngineError {
    EngineError::Setup(msg.into())
}

fn resolve_exe(cmd: &std::ffi::OsStr) -> Result<PathBuf> {
    let p = Path::new(cmd);
    if cmd.as_encoded_bytes().contains(&b'/') {
        return if p.exists() { Ok(p.to_path_buf()) } else { Err(setup(format!("{}: no such file", p.display()))) };
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(p))
        .find(|c| c.is_file())
        .ok_or_else(|| setup(format!("{}: command not found in PATH", p.display())))
}

fn digest_file(p: &Path) -> Result<[u8; 32]> {
    let mut f = std::fs::File::open(p).map_err(|e| setup(format!("{}: {e}", p.display())))?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(|e| setup(format!("{}: {e}", p.display())))?;
        if n == 0 {
            return Ok(*h.finalize().as_bytes());
        }
        h.update(&buf[..n]);
    }
}

fn rlimits() -> Vec<(i32, u64, u64)> {
    (0..16)
        .filter_map(|r| {
            let mut l = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            crate::sys::spawn::getrlimit(r, &mut l).then_some((r, l.rlim_cur, l.rlim_max))
        })
        .collect()
}

fn umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Umask:"))
                .and_then(|l| u32::from_str_radix(l.split_whitespace().nth(1)?, 8).ok())
        })
        .unwrap_or(0o022)
}

fn kernel_facts() -> (String, String) {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string();
    let thp =
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default().trim().to_string();
    (kernel, thp)
}

fn require_root() -> Result<()> {
    if !crate::sys::spawn::is_root() {
        return Err(setup("ftnet record/replay must run as root (it creates namespaces and traces the replica)"));
    }
    Ok(())
}

/// Starts the replica described by `spec` and returns the supervisor's
/// pieces: the listener, the signalfd, the init's pid and the replica's tid.
fn start(spec: spawn::Spec, cpu: Option<usize>) -> Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd, i32, i32)> {
    seccomp::check_sizes()?;
    // In `ftnet up` the daemon's main thread owns SIGINT/SIGTERM/SIGHUP (they
    // are blocked everywhere); the engine only takes SIGCHLD then.
    let sigfd = if DAEMON.load(std::sync::atomic::Ordering::Relaxed) {
        sfd::signalfd_for(&[libc::SIGCHLD])?
    } else {
        sfd::signalfd_for(&[libc::SIGCHLD, libc::SIGINT, libc::SIGTERM, libc::SIGHUP])?
    };
    sfd::ignore_signal(libc::SIGPIPE, true)?;
    if let Some(c) = cpu {
        sfd::pin_self(c)?;
    }
    let plan = spawn::Plan::new(spec)?;
    let init = spawn::spawn_init(&plan)?;
    ptrace::seize(init, ptrace::OPTIONS)?;
    plan.release_init()?;
    let mut replica = None;
    let mut initial_stop = false;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while replica.is_none() || !initial_stop {
        if std::time::Instant::now() > deadline {
            return Err(setup("the replica did not start within 10 s"));
        }
        let Some((pid, status)) = sfd::waitpid(-1, 0).map_err(|e| sys::SysError::new("waitpid", "start", e))? else {
            continue;
        };
        match ptrace::decode(status) {
            ptrace::Stop::Event(libc::PTRACE_EVENT_FORK) if pid == init => {
                replica = Some(ptrace::event_msg(init)? as i32);
                ptrace::detach(init)?;
            }
            ptrace::Stop::GroupStop(_) if pid != init => initial_stop = true,
            ptrace::Stop::Exited(c) | ptrace::Stop::Killed(c) if pid == init => {
                return Err(setup(format!(
                    "the replica's init ended before starting it (status {c}); see its message above"
                )));
            }
            _ if pid == init => ptrace::cont(init, 0)?,
            _ => {}
        }
    }
    let replica = replica.unwrap_or(0);
    ptrace::cont(replica, 0)?;
    // Wait for the replica to stop itself after installing its filter.
    loop {
        let Some((pid, status)) = sfd::waitpid(replica, 0).map_err(|e| sys::SysError::new("waitpid", "replica", e))?
        else {
            continue;
        };
        match ptrace::decode(status) {
            ptrace::Stop::Signal(libc::SIGTRAP) if pid == replica => break,
            ptrace::Stop::Exited(c) => {
                return Err(setup(format!("the replica failed to start (exit {c}); see its message above")));
            }
            ptrace::Stop::Killed(s) => {
                return Err(setup(format!("the replica was killed by signal {s} while starting")));
            }
            _ => ptrace::cont(replica, 0)?,
        }
    }
    let pidfd = sys::pidfd::open(replica)?;
    let listener = sys::pidfd::getfd(pidfd.as_fd(), spawn::LISTENER_FD)
        .map_err(|e| sys::SysError::new("pidfd_getfd", "the replica's seccomp listener", e))?;
    if let Err(e) = seccomp::set_sync_wakeup(listener.as_fd()) {
        tracing::warn!("{e}: notifications will wake the replica through the scheduler (slower)");
    }
    ptrace::cont(replica, 0)?;
    Ok((listener, sigfd, init, replica))
}

/// What to run: the executable (as given to `execve`), its arguments,
/// environment and working directory.
pub struct Program {
    pub exe: PathBuf,
    pub argv: Vec<Vec<u8>>,
    pub env: Vec<Vec<u8>>,
    pub cwd: PathBuf,
}

impl Program {
    /// `cmd` resolved through PATH, with ftnet's own environment (plus the
    /// OpenSSL mask) and working directory: what `ftnet record` runs.
    pub fn from_command(cmd: &[std::ffi::OsString]) -> Result<Program> {
        let Some(cmd0) = cmd.first() else { return Err(setup("no command given")) };
        let exe = resolve_exe(cmd0)?;
        let mut env: Vec<Vec<u8>> = std::env::vars_os()
            .filter(|(k, _)| k != "OPENSSL_ia32cap")
            .map(|(k, v)| {
                let mut e = k.into_encoded_bytes();
                e.push(b'=');
                e.extend_from_slice(v.as_encoded_bytes());
                e
            })
            .collect();
        env.push(OPENSSL_MASK.as_bytes().to_vec());
        let cwd = std::env::current_dir().map_err(|e| setup(format!("current directory: {e}")))?;
        Ok(Program { exe, argv: cmd.iter().map(|a| a.as_encoded_bytes().to_vec()).collect(), env, cwd })
    }

    /// A program with an environment that does not depend on how ftnet was
    /// started (so both nodes of a pair give the replica the same one):
    /// a fixed PATH, the OpenSSL mask, then `extra`.
    pub fn with_clean_env(cmd: &[String], extra: &[String], cwd: &Path) -> Result<Program> {
        let os: Vec<std::ffi::OsString> = cmd.iter().map(|c| c.into()).collect();
        let Some(cmd0) = os.first() else { return Err(setup("no command given")) };
        let exe = resolve_exe(cmd0)?;
        let mut env: Vec<Vec<u8>> = vec![
            b"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_vec(),
            OPENSSL_MASK.as_bytes().to_vec(),
        ];
        env.extend(extra.iter().map(|e| e.as_bytes().to_vec()));
        Ok(Program { exe, argv: cmd.iter().map(|a| a.as_bytes().to_vec()).collect(), env, cwd: cwd.to_path_buf() })
    }
}

/// The log header for `program` (digests of its executable and libraries,
/// this host's facts) and the snapshot of `state` directories.
pub fn header_for(program: &Program, state: &[PathBuf]) -> Result<(Header, Vec<StateEntry>)> {
    let mut files = vec![];
    for f in super::elf::closure(&program.exe) {
        files.push(FileDigest { path: f.as_os_str().as_encoded_bytes().to_vec(), blake3: digest_file(&f)? });
    }
    let (kernel, thp) = kernel_facts();
    let mut state_dirs = vec![];
    let mut entries = vec![];
    for (i, d) in state.iter().enumerate() {
        let abs = std::fs::canonicalize(d).map_err(|e| setup(format!("state directory {}: {e}", d.display())))?;
        entries.extend(super::state::snapshot(i as u32, &abs).map_err(|e| setup(e.to_string()))?);
        state_dirs.push(abs.into_os_string().into_encoded_bytes());
    }
    let header = Header {
        exe: program.exe.as_os_str().as_encoded_bytes().to_vec(),
        argv: program.argv.clone(),
        env: program.env.clone(),
        cwd: program.cwd.as_os_str().as_encoded_bytes().to_vec(),
        rlimits: rlimits(),
        umask: umask(),
        files,
        kernel,
        thp,
        state_dirs,
        started_unix_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
    };
    Ok((header, entries))
}

/// Starts recording `header`'s program into `sink` (header and state go
/// first). Returns the supervisor, ready to [`Supervisor::run`].
pub fn start_recording(
    header: &Header,
    state: &[StateEntry],
    sink: Box<dyn Sink>,
    cpu: Option<usize>,
    opts: Options,
) -> Result<Supervisor> {
    require_root()?;
    let mut w = Writer::new(sink);
    w.header(header)?;
    for e in state {
        w.state(e)?;
    }
    let filter = super::filter::build().map_err(|e| setup(e.to_string()))?;
    let spec = spawn::Spec {
        exe: &header.exe,
        argv: &header.argv,
        env: &header.env,
        cwd: &header.cwd,
        cpu,
        rlimits: &[],
        umask: header.umask,
        binds: &[],
        filter,
    };
    let (listener, sigfd, init, tid) = start(spec, cpu)?;
    let mut sup = Supervisor::new(Mode::Record(w), opts, listener, sigfd, init)?;
    let root = sup.adopt_root(tid);
    sup.log(&super::log::Event::Switch { to: root })?;
    Ok(sup)
}

/// `ftnet record`.
pub fn record(args: RecordArgs) -> Result<Summary> {
    require_root()?;
    let program = Program::from_command(&args.cmd)?;
    let (header, state) = header_for(&program, &args.state)?;
    let sink: Box<dyn Sink> = Box::new(FileSink::create(&args.log)?);
    let mut sup = start_recording(&header, &state, sink, args.cpu, args.opts)?;
    let status = match sup.run()? {
        super::engine::RunEnd::Exited(s) => s,
        super::engine::RunEnd::LogCut => return Err(setup("internal: recording ended as a cut log")),
    };
    let (events, bytes) = match &sup.mode {
        Mode::Record(w) => (w.events, w.bytes),
        Mode::Replay(_) => (0, 0),
    };
    Ok(Summary { status, stats: sup.stats.clone(), log_events: events, log_bytes: bytes })
}

/// Reads the header and state frames; returns them and the first event.
fn read_prologue(r: &mut Reader<Box<dyn Read>>) -> Result<(Header, Vec<StateEntry>, Option<super::log::Event>)> {
    let header = match r.next_frame()? {
        Some(Frame::Header(h)) => h,
        Some(_) => return Err(setup("corrupt log at offset 12: the first frame is not a header")),
        None => return Err(setup("the log holds no header (empty after the preamble)")),
    };
    let mut state = vec![];
    loop {
        match r.next_frame()? {
            Some(Frame::State(e)) => state.push(e),
            Some(Frame::Event(e)) => return Ok((header, state, Some(e))),
            Some(Frame::Header(_)) => {
                return Err(setup(format!("corrupt log at offset {}: a second header", r.offset())));
            }
            None => return Ok((header, state, None)),
        }
    }
}

/// Differences between the recording host's files and facts and ours.
fn compare_host(h: &Header) -> Vec<String> {
    let mut diffs = vec![];
    for f in &h.files {
        let p = PathBuf::from(String::from_utf8_lossy(&f.path).into_owned());
        match digest_file(&p) {
            Ok(d) if d == f.blake3 => {}
            Ok(_) => diffs.push(format!("{} differs from the recording's copy", p.display())),
            Err(_) => diffs.push(format!("{} is missing", p.display())),
        }
    }
    let (kernel, thp) = kernel_facts();
    if kernel != h.kernel {
        diffs.push(format!("kernel release {kernel} differs from the recording's {}", h.kernel));
    }
    if thp != h.thp {
        diffs.push(format!("transparent hugepage mode \"{thp}\" differs from the recording's \"{}\"", h.thp));
    }
    diffs
}

/// A replay started from a log stream: the supervisor (its first event
/// already read) and the private copies of the state directories, which
/// must outlive it.
pub struct Replaying {
    pub sup: Supervisor,
    pub header: Header,
    pub scratch: tempfile::TempDir,
}

/// Starts replaying the log on `input` (preamble, header, state, events):
/// checks this host can, restores the state copies, starts the replica.
/// Blocks until the first event arrives.
pub fn start_replay(input: Box<dyn Read>, cpu: Option<usize>, opts: Options) -> Result<Replaying> {
    require_root()?;
    let mut reader = Reader::new(input)?;
    let (header, state, first) = read_prologue(&mut reader)?;
    let Some(first) = first else { return Err(super::log::LogError::NoEnd(reader.offset()).into()) };
    let diffs = compare_host(&header);
    if !diffs.is_empty() {
        return Err(setup(format!("this host cannot replay the log:\n  {}", diffs.join("\n  "))));
    }
    let scratch = tempfile::Builder::new()
        .prefix("ftnet-replay-")
        .tempdir()
        .map_err(|e| setup(format!("temporary directory for state copies: {e}")))?;
    let binds = super::state::restore(&header.state_dirs, &state, scratch.path()).map_err(|e| setup(e.to_string()))?;
    let filter = super::filter::build().map_err(|e| setup(e.to_string()))?;
    let spec = spawn::Spec {
        exe: &header.exe,
        argv: &header.argv,
        env: &header.env,
        cwd: &header.cwd,
        cpu,
        rlimits: &header.rlimits,
        umask: header.umask,
        binds: &binds,
        filter,
    };
    let (listener, sigfd, init, tid) = start(spec, cpu)?;
    let mut sup = Supervisor::new(Mode::Replay(Box::new(reader)), opts, listener, sigfd, init)?;
    sup.peeked = Some(first);
    sup.adopt_root(tid);
    Ok(Replaying { sup, header, scratch })
}

/// `ftnet replay`.
pub fn replay(args: ReplayArgs) -> Result<Summary> {
    require_root()?;
    let f = std::fs::File::open(&args.log).map_err(|e| setup(format!("{}: {e}", args.log.display())))?;
    let input: Box<dyn Read> = Box::new(std::io::BufReader::with_capacity(1 << 20, f));
    let mut opts = args.opts;
    opts.live = args.go_live;
    let Replaying { mut sup, scratch, .. } = start_replay(input, args.cpu, opts)?;
    if args.go_live {
        sup.live = Some(super::engine::live::shared());
    }
    let status = match sup.run()? {
        super::engine::RunEnd::Exited(s) => s,
        super::engine::RunEnd::LogCut => {
            sup.go_live(Box::new(super::log::NullSink))?;
            match sup.run()? {
                super::engine::RunEnd::Exited(s) => s,
                super::engine::RunEnd::LogCut => return Err(super::log::LogError::NoEnd(0).into()),
            }
        }
    };
    let events = match &sup.mode {
        Mode::Replay(r) => r.events(),
        Mode::Record(_) => 0,
    };
    drop(scratch);
    Ok(Summary { status, stats: sup.stats.clone(), log_events: events, log_bytes: 0 })
}
