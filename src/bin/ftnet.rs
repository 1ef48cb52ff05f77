//! The `ftnet` command line.

use clap::{Parser, Subcommand};
use ftnet::replica::engine::{EngineError, Options};
use ftnet::replica::launch;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "ftnet", version, about = "Transparent failover for unmodified Linux TCP servers")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum RoleArg {
    Primary,
    Backup,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run CMD under recording: every nondeterministic input it receives
    /// (time, randomness, client bytes, accepts, readiness, signals, host
    /// facts) and the order its threads run in go to the log; its outputs go
    /// there as digests. Exits with CMD's status (128+N if killed by signal
    /// N). SIGINT or SIGTERM stops CMD with SIGTERM at a recorded point and
    /// finishes the log.
    ///
    /// The log holds every input byte, enough to derive the replica's TLS
    /// session keys: it is created mode 0600; treat it as a secret.
    Record {
        /// Where to write the log.
        #[arg(long, value_name = "PATH")]
        log: PathBuf,
        /// A directory CMD writes (repeatable): snapshotted before CMD
        /// starts, so a replay on this host runs over a private copy.
        #[arg(long, value_name = "DIR")]
        state: Vec<PathBuf>,
        /// The CPU the replica tree and the supervisor are pinned to.
        #[arg(long, default_value_t = 0)]
        cpu: usize,
        /// The command to run, after `--`.
        #[arg(required = true, last = true, value_name = "CMD")]
        cmd: Vec<std::ffi::OsString>,
    },
    /// Re-run a recorded command with the recorded inputs and check that
    /// every output matches. Exit 0: the whole log was replayed and matched.
    /// Exit 3: divergence (a report on stderr names the process, thread,
    /// syscall, fd, offset and the differing bytes). Exit 1: any other error.
    Replay {
        /// The log written by `ftnet record`.
        #[arg(long, value_name = "PATH")]
        log: PathBuf,
        /// The CPU the replica tree and the supervisor are pinned to.
        #[arg(long, default_value_t = 0)]
        cpu: usize,
        /// How long to wait for the replica to reach the next logged event
        /// before declaring it stalled (a divergence).
        #[arg(long, default_value = "30", value_name = "SECONDS")]
        stall: u64,
        /// When the log ends without an end record (a cut stream), let the
        /// replica go on running live, as a backup does when it takes over,
        /// and exit with its status.
        #[arg(long)]
        go_live: bool,
    },
    /// Run one node of a failover pair (foreground; logs to stderr). Both
    /// nodes use the same configuration file except its [node] section. The
    /// primary records its server and serves clients; the backup replays and
    /// takes over (VIP and every live connection) when the primary dies or on
    /// `ftnet promote`. Exits with the server's status when it stops by
    /// itself.
    Up {
        /// The configuration file (see README, "Configuration").
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// The role this node starts in.
        #[arg(long, value_enum, default_value = "backup")]
        role: RoleArg,
    },
    /// Show a running node's state: role, peer, last heartbeat, log position
    /// and lag, connections tracked, divergences, rejected frames.
    Status {
        /// The node's control socket.
        #[arg(long, value_name = "PATH", default_value = "/run/ftnet/ftnet.sock")]
        socket: PathBuf,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// Planned switchover: ask the backup at SOCKET to take over (the
    /// primary is fenced first, then the backup promotes). On a primary,
    /// only `--force` is accepted: stop waiting for a lost backup and go on
    /// alone (unprotected).
    Promote {
        /// The backup's control socket.
        #[arg(long, value_name = "PATH", default_value = "/run/ftnet/ftnet.sock")]
        socket: PathBuf,
        /// Promote even a backup whose replica diverged.
        #[arg(long)]
        force: bool,
    },
    /// Deliver a signal to the server on the primary at a recorded point (so
    /// the backup's copy gets it too), e.g. `ftnet signal 3` makes nginx quit.
    Signal {
        /// The primary's control socket.
        #[arg(long, value_name = "PATH", default_value = "/run/ftnet/ftnet.sock")]
        socket: PathBuf,
        /// The signal number.
        signal: i32,
    },
    /// Run the witness (foreground; logs to stderr): a third host grants the
    /// pair's lease with an epoch so there are never two primaries. State
    /// (epochs and holders) lives in FILE, written atomically before every
    /// answer that changes it; never delete it while a node holds a lease.
    Witness {
        /// The UDP address to listen on, e.g. 10.79.0.3:7800.
        #[arg(long, value_name = "ADDR")]
        listen: std::net::SocketAddr,
        /// The pair's pre-shared key file (the nodes' link.key_file).
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// The state file.
        #[arg(long, value_name = "FILE")]
        state: PathBuf,
        /// Start a new witness: FILE must not exist yet (it is written at the
        /// first grant). Without it a missing FILE is an error, so a witness
        /// pointed at a wrong path never restarts the epochs at 1.
        #[arg(long)]
        init: bool,
    },
    /// Print a log's header and events, one per line (for debugging; the
    /// output contains the recorded input bytes, which are secrets).
    Dump {
        /// The log written by `ftnet record`.
        #[arg(long, value_name = "PATH")]
        log: PathBuf,
    },
}

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("FTNET_LOG").unwrap_or_else(|_| "info".into()))
        .with_target(false)
        .init();
    let cli = Cli::parse();
    let code = match cli.cmd {
        Cmd::Record { log, state, cpu, cmd } => {
            let r = launch::record(launch::RecordArgs { log, state, cmd, cpu: Some(cpu), opts: Options::default() });
            match r {
                Ok(s) => {
                    summary("record", &s);
                    s.status
                }
                Err(e) => fail(e),
            }
        }
        Cmd::Replay { log, cpu, stall, go_live } => {
            let opts = Options { stall: Duration::from_secs(stall), ..Options::default() };
            match launch::replay(launch::ReplayArgs { log, cpu: Some(cpu), opts, go_live }) {
                Ok(s) => {
                    summary("replay", &s);
                    eprintln!("ftnet replay: the whole log was replayed and every output matched");
                    if go_live { s.status } else { 0 }
                }
                Err(e) => fail(e),
            }
        }
        Cmd::Up { config, role } => {
            let role = match role {
                RoleArg::Primary => ftnet::link::Role::Primary,
                RoleArg::Backup => ftnet::link::Role::Backup,
            };
            match ftnet::node::daemon::up(&config, role) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("ftnet: {e:#}");
                    1
                }
            }
        }
        Cmd::Status { socket, json } => match ftnet::node::control::request(&socket, "status") {
            Ok(v) if json => {
                println!("{v}");
                0
            }
            Ok(v) => {
                print_status(&v);
                0
            }
            Err(e) => {
                eprintln!("ftnet: {e}");
                1
            }
        },
        Cmd::Promote { socket, force } => {
            let req = if force { "promote --force" } else { "promote" };
            match ftnet::node::control::request(&socket, req) {
                Ok(v) if v["ok"] == true => {
                    println!("{v}");
                    0
                }
                Ok(v) => {
                    eprintln!("ftnet: {v}");
                    1
                }
                Err(e) => {
                    eprintln!("ftnet: {e}");
                    1
                }
            }
        }
        Cmd::Signal { socket, signal } => match ftnet::node::control::request(&socket, &format!("signal {signal}")) {
            Ok(v) if v["ok"] == true => 0,
            Ok(v) => {
                eprintln!("ftnet: {v}");
                1
            }
            Err(e) => {
                eprintln!("ftnet: {e}");
                1
            }
        },
        Cmd::Witness { listen, key, state, init } => match ftnet::witness::server::run(listen, &key, &state, init) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("ftnet: {e}");
                1
            }
        },
        Cmd::Dump { log } => match dump(&log) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("ftnet: {e}");
                1
            }
        },
    };
    std::process::exit(code);
}

fn dump(path: &std::path::Path) -> Result<(), ftnet::replica::log::LogError> {
    use ftnet::replica::log::{Event, Frame, LogError, Reader};
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    macro_rules! println {
        ($($t:tt)*) => {
            if writeln!(out, $($t)*).is_err() {
                return Ok(());
            }
        };
    }
    let f = std::fs::File::open(path).map_err(|source| LogError::Io { path: path.display().to_string(), source })?;
    let mut r = Reader::new(std::io::BufReader::new(f))?;
    let mut calls = 0u64;
    while let Some(frame) = r.next_frame()? {
        match frame {
            Frame::Header(h) => println!(
                "header: exe {} argv {:?}",
                String::from_utf8_lossy(&h.exe),
                h.argv.iter().map(|a| String::from_utf8_lossy(a).into_owned()).collect::<Vec<_>>()
            ),
            Frame::State(e) => println!("state: dir {} {}", e.dir, String::from_utf8_lossy(&e.path)),
            Frame::Event(Event::Call(c)) => {
                let mem: Vec<String> = c.mem.iter().map(|m| format!("{:#x}+{}", m.addr, m.bytes.len())).collect();
                println!(
                    "#{calls} thread {} {} {:?} mem {:?} check {:?}",
                    c.tid,
                    ftnet::replica::table::name(c.nr as u32),
                    c.answer,
                    mem,
                    c.check.map(|k| (k.kind, k.offset, k.digest.len))
                );
                calls += 1;
            }
            Frame::Event(e) => println!("{e:?}"),
        }
    }
    Ok(())
}

fn print_status(v: &serde_json::Value) {
    let s = |k: &str| v[k].as_str().unwrap_or("").to_string();
    let n = |k: &str| v[k].as_u64().unwrap_or(0);
    println!("node {} role {} state {}", s("node"), s("role"), s("state"));
    let hb = v["last_heartbeat_ms_ago"].as_u64().map(|m| format!("{m} ms ago")).unwrap_or_else(|| "never".into());
    println!("peer {} ({}), last heartbeat {hb}, epoch {}", s("peer"), s("peer_state"), n("epoch"));
    println!(
        "log position {} acked {} received {} applied {}; lag {} frames, {} bytes, {} ms",
        n("log_position"),
        n("acked"),
        n("received"),
        n("applied"),
        n("lag_frames"),
        n("lag_bytes"),
        n("lag_ms")
    );
    println!("connections tracked {}", n("connections_tracked"));
    println!("rejected frames {}", v["rejected_frames"]);
    if let Some(l) = v["lease"].as_object() {
        let g = |k: &str| l.get(k).cloned().unwrap_or(serde_json::Value::Null);
        let holder = g("holder");
        println!(
            "lease from {}: {} at epoch {} (holder {}, valid for {} ms, ttl {} ms){}",
            g("witness").as_str().unwrap_or("?"),
            if g("held") == true { "held" } else { "not held" },
            g("epoch"),
            holder.as_str().unwrap_or("none"),
            g("valid_for_ms").as_u64().map(|m| m.to_string()).unwrap_or_else(|| "-".into()),
            g("ttl_ms"),
            match (g("last_error").as_str(), g("last_denial").as_str()) {
                (Some(e), _) => format!("; last error: {e}"),
                (None, Some(d)) => format!("; last denial: {d}"),
                _ => String::new(),
            }
        );
    }
    if let Some(c) = v["output_commit"].as_object() {
        println!("output commit {}", serde_json::Value::Object(c.clone()));
    }
    for d in v["divergences"].as_array().into_iter().flatten() {
        println!("DIVERGENCE {}", d.as_str().unwrap_or(""));
    }
    for d in v["notes"].as_array().into_iter().flatten() {
        println!("note: {}", d.as_str().unwrap_or(""));
    }
}

fn summary(what: &str, s: &launch::Summary) {
    tracing::info!(
        "{what}: status {}, {} intercepted calls ({} native), {} hand-overs, {} signals, {} rdtsc, {} log events, {} log bytes, supervisor {:.1} ms",
        s.status,
        s.stats.calls,
        s.stats.continued,
        s.stats.switches,
        s.stats.signals,
        s.stats.rdtsc,
        s.log_events,
        s.log_bytes,
        s.stats.supervisor_ns as f64 / 1e6
    );
}

fn fail(e: EngineError) -> i32 {
    let code = e.exit_code();
    eprintln!("ftnet: {e}");
    code
}
