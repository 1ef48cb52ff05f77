//! Helpers for tests that drive the `ftnet` binary: building the C test
//! programs, recording under ftnet in the background, replaying, and free
//! ports. Every process a helper starts is killed by PID when its guard
//! drops, also when a test fails.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The ftnet binary under test.
pub fn ftnet() -> &'static str {
    env!("CARGO_BIN_EXE_ftnet")
}

/// Deterministic content: the byte at offset i is a function of i.
pub fn content(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A CPU for this test's replica (spread parallel tests over the CPUs).
pub fn cpu() -> String {
    let n = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    (std::process::id() as usize % n).to_string()
}

/// Compiles `tests/progs/NAME.c` (once per source change) and returns the
/// binary's path.
pub fn prog(name: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let src = root.join("tests/progs").join(format!("{name}.c"));
    let dir = root.join("target/ftnet-progs");
    std::fs::create_dir_all(&dir).expect("create target/ftnet-progs");
    let out = dir.join(name);
    let stale = match (std::fs::metadata(&src), std::fs::metadata(&out)) {
        (Ok(s), Ok(o)) => s.modified().ok() > o.modified().ok(),
        _ => true,
    };
    if stale {
        // Build to a unique name and rename, so parallel tests never see a
        // half-written binary.
        let tmp = dir.join(format!("{name}.{}", std::process::id()));
        let st = Command::new("gcc")
            .args(["-O1", "-pthread", "-o"])
            .arg(&tmp)
            .arg(&src)
            .status()
            .expect("gcc runs (install gcc)");
        assert!(st.success(), "gcc failed on {}", src.display());
        std::fs::rename(&tmp, &out).expect("rename test program");
    }
    out
}

/// A free TCP port on 127.0.0.1 (bind to 0, read, release).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// Waits until something accepts TCP connections on 127.0.0.1:`port`.
pub fn wait_port(port: u16, limit: Duration) {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nothing listens on port {port} after {limit:?}");
}

/// A process killed (SIGKILL, by pid) and reaped when dropped.
pub struct Guard(pub Option<Child>);

impl Guard {
    pub fn pid(&self) -> u32 {
        self.0.as_ref().map(|c| c.id()).unwrap_or(0)
    }
    /// Sends `sig` (by name, e.g. "TERM") to the process.
    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill").arg(format!("-{sig}")).arg(self.pid().to_string()).status();
    }
    /// Waits for exit with a time limit; returns the output.
    pub fn wait(mut self, limit: Duration) -> Output {
        let mut child = self.0.take().expect("child present");
        let until = Instant::now() + limit;
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                return child.wait_with_output().expect("collect output");
            }
            if Instant::now() > until {
                let _ = child.kill();
                let out = child.wait_with_output().expect("collect output");
                panic!("process did not exit within {limit:?}; stderr:\n{}", String::from_utf8_lossy(&out.stderr));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts `ftnet record --log LOG [--state DIR]... -- CMD...` in the
/// background with piped output.
pub fn record_bg(log: &Path, state: &[&Path], cmd: &[&str]) -> Guard {
    let mut c = Command::new(ftnet());
    c.arg("record").arg("--log").arg(log).arg("--cpu").arg(cpu());
    for s in state {
        c.arg("--state").arg(s);
    }
    c.arg("--").args(cmd).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    Guard(Some(c.spawn().expect("spawn ftnet record")))
}

/// Runs `ftnet record` to completion.
pub fn record(log: &Path, cmd: &[&str]) -> Output {
    record_bg(log, &[], cmd).wait(Duration::from_secs(120))
}

/// Runs `ftnet replay` to completion.
pub fn replay(log: &Path) -> Output {
    let mut c = Command::new(ftnet());
    c.arg("replay").arg("--log").arg(log).arg("--cpu").arg(cpu()).arg("--stall").arg("20");
    c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    Guard(Some(c.spawn().expect("spawn ftnet replay"))).wait(Duration::from_secs(180))
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Asserts a replay succeeded, printing its stderr otherwise.
pub fn assert_replays(log: &Path) -> Output {
    let out = replay(log);
    assert_eq!(out.status.code(), Some(0), "replay failed:\n{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("every output matched"), "{}", text(&out.stderr));
    out
}
