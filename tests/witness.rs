//! The witness end to end: the `ftnet witness` binary on 127.0.0.1, and a
//! real etcd (Debian's etcd-server) started by each test on loopback in its
//! own temp dir with free ports. Every process a test starts is killed by
//! PID when its guard drops, also when the test fails. Needs no root; the
//! etcd tests need `/usr/bin/etcd` (apt-get install etcd-server).

use ftnet::link::Key;
use ftnet::witness::proto::{AnswerBody, Op, RequestBody, WireKeys};
use ftnet::witness::{Answer, LeaseClient, Request, WitnessConfig, WitnessError, connect};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(3);

fn write_key(dir: &Path, name: &str, byte: u8) -> (PathBuf, Key) {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    let hex: String = std::iter::repeat_n(format!("{byte:02x}"), 32).collect();
    std::fs::write(&p, hex).expect("write key");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod key");
    let key = Key::from_file(&p).expect("key");
    (p, key)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// A child killed by PID (SIGKILL) and reaped when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `ftnet witness` in the background, its stderr in a file.
struct Witness {
    _child: Killed,
    addr: SocketAddr,
    log: PathBuf,
}

impl Witness {
    fn start(listen: &str, key: &Path, state: &Path, log: &Path) -> Witness {
        let err = std::fs::File::create(log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_ftnet"))
            .args(["witness", "--listen", listen, "--key"])
            .arg(key)
            .arg("--state")
            .arg(state)
            .args(if state.exists() { None } else { Some("--init") })
            .env("FTNET_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .expect("spawn ftnet witness");
        let mut child = Killed(child);
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            if let Some(rest) = text.split("listening on ").nth(1) {
                let addr = rest.split(',').next().unwrap_or("").trim().parse().expect("address in the log");
                return Witness { _child: child, addr, log: log.to_path_buf() };
            }
            if let Ok(Some(st)) = child.0.try_wait() {
                panic!("ftnet witness exited with {st}: {text}");
            }
            assert!(Instant::now() < until, "ftnet witness did not start: {text}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn client(&self, key: &Key) -> Box<dyn LeaseClient> {
        connect(&WitnessConfig::Ftnet { address: self.addr }, key).expect("client")
    }
}

fn epoch(a: &Answer) -> u64 {
    match a {
        Answer::Granted { epoch, .. } => *epoch,
        other => panic!("expected a grant, got {other:?}"),
    }
}

fn reason(a: &Answer) -> &str {
    match a {
        Answer::Denied { reason, .. } => reason,
        other => panic!("expected a denial, got {other:?}"),
    }
}

/// `n` clients race `Takeover { log_epoch }` on `service` from threads,
/// released together; returns the answers by node name.
fn race(mut clients: Vec<Box<dyn LeaseClient>>, service: &str, log_epoch: u64) -> Vec<(String, Answer)> {
    let barrier = Arc::new(Barrier::new(clients.len()));
    let threads: Vec<_> = clients
        .drain(..)
        .enumerate()
        .map(|(i, mut c)| {
            let (b, service) = (barrier.clone(), service.to_string());
            std::thread::spawn(move || {
                let node = format!("n{i}");
                b.wait();
                let a = c.request(&service, &node, Request::Takeover { log_epoch }, Duration::from_secs(5), WAIT);
                (node, a.expect("takeover answered"))
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().expect("racer")).collect()
}

fn exactly_one_winner(answers: &[(String, Answer)], want_epoch: u64) {
    let winners: Vec<_> = answers.iter().filter(|(_, a)| matches!(a, Answer::Granted { .. })).collect();
    assert_eq!(winners.len(), 1, "exactly one takeover granted: {answers:?}");
    let (winner, a) = winners[0];
    assert_eq!(epoch(a), want_epoch);
    for (node, a) in answers {
        if node != winner {
            match a {
                Answer::Denied { holder, epoch, .. } => {
                    assert_eq!((holder.as_deref(), *epoch), (Some(winner.as_str()), want_epoch), "{a:?}")
                }
                other => panic!("{node}: {other:?}"),
            }
        }
    }
}

#[test]
fn ftnet_witness_one_takeover_wins_a_race() {
    let d = tempfile::tempdir().expect("tempdir");
    let (kp, key) = write_key(d.path(), "key", 7);
    let w = Witness::start("127.0.0.1:0", &kp, &d.path().join("state"), &d.path().join("w.log"));
    let mut a = w.client(&key);
    let (long, short) = (Duration::from_secs(5), Duration::from_millis(50));
    for round in 0..20 {
        let service = format!("svc{round}");
        let e = epoch(&a.request(&service, "a", Request::Start, long, WAIT).expect("start"));
        // While it is held, nobody wins.
        let held = race((0..4).map(|_| w.client(&key)).collect(), &service, e);
        assert!(held.iter().all(|(_, a)| reason(a).starts_with("held by a for")), "{held:?}");
        // The holder renews for a short TTL and then falls silent.
        assert_eq!(epoch(&a.request(&service, "a", Request::Renew { epoch: e }, short, WAIT).expect("renew")), e);
        std::thread::sleep(short + Duration::from_millis(5));
        let answers = race((0..4).map(|_| w.client(&key)).collect(), &service, e);
        exactly_one_winner(&answers, e + 1);
        // The old primary cannot renew.
        let old = a.request(&service, "a", Request::Renew { epoch: e }, short, WAIT).expect("renew");
        assert!(reason(&old).starts_with("held by n"), "{old:?}");
    }
}

#[test]
fn ftnet_witness_restart_keeps_the_epoch_and_the_holder() {
    let d = tempfile::tempdir().expect("tempdir");
    let (kp, key) = write_key(d.path(), "key", 7);
    let state = d.path().join("state");
    let ttl = Duration::from_millis(500);
    let mut w = Witness::start("127.0.0.1:0", &kp, &state, &d.path().join("w1.log"));
    let addr = w.addr;
    let mut a = w.client(&key);
    let e1 = epoch(&a.request("svc", "a", Request::Start, ttl, WAIT).expect("start"));
    let e2 = epoch(&a.request("svc", "a", Request::Solo { epoch: e1 }, ttl, WAIT).expect("solo"));
    assert_eq!((e1, e2), (1, 2));
    // kill -9 and start again on the same address with the same state.
    drop(w);
    std::thread::sleep(Duration::from_millis(600));
    let restarted = Instant::now();
    w = Witness::start(&addr.to_string(), &kp, &state, &d.path().join("w2.log"));
    assert!(w.log().contains("(1 services)"), "{}", w.log());
    let mut b = w.client(&key);
    let v = b.query("svc", WAIT).expect("query");
    assert_eq!((v.holder.as_deref(), v.epoch, v.solo), (Some("a"), 2, true));
    // The lease had expired before the restart, but the witness cannot know:
    // it holds for a full TTL from the restart.
    let left = v.remaining.expect("held after the restart");
    assert!(left <= ttl, "{left:?}");
    let a1 = b.request("svc", "b", Request::Takeover { log_epoch: e2 }, ttl, WAIT).expect("takeover");
    assert!(reason(&a1).starts_with("held by a for"), "{a1:?}");
    // It lets go only a full TTL after the restart.
    let until = Instant::now() + Duration::from_secs(10);
    while b.query("svc", WAIT).expect("query").remaining.is_some() {
        assert!(Instant::now() < until, "the lease never expired after the restart");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(restarted.elapsed() >= ttl, "expired {:?} after the restart", restarted.elapsed());
    // An old log is refused for good: the primary went on alone.
    let a3 = b.request("svc", "b", Request::Takeover { log_epoch: e1 }, ttl, WAIT).expect("takeover");
    assert!(
        reason(&a3).contains("your log is from epoch 1 but the lease is at epoch 2: the primary went on alone"),
        "{a3:?}"
    );
    assert_eq!(epoch(&b.request("svc", "b", Request::Takeover { log_epoch: e2 }, ttl, WAIT).expect("takeover")), 3);
    // The old client still works against the restarted witness (its clock
    // is newer than the restart), and is told it lost.
    let a4 = a.request("svc", "a", Request::Renew { epoch: e2 }, ttl, WAIT).expect("renew");
    assert!(reason(&a4).starts_with("held by b"), "{a4:?}");
}

#[test]
fn ftnet_witness_wrong_key_is_dropped_and_counted() {
    let d = tempfile::tempdir().expect("tempdir");
    let (kp, key) = write_key(d.path(), "key", 7);
    let (_, wrong) = write_key(d.path(), "wrong", 8);
    let w = Witness::start("127.0.0.1:0", &kp, &d.path().join("state"), &d.path().join("w.log"));
    let mut bad = w.client(&wrong);
    let t = Instant::now();
    let e =
        bad.request("svc", "x", Request::Start, Duration::from_millis(400), Duration::from_millis(300)).unwrap_err();
    assert!(matches!(e, WitnessError::Timeout { .. }), "{e}");
    assert!(t.elapsed() < Duration::from_secs(2));
    assert!(bad.query("svc", Duration::from_millis(100)).is_err());
    // The server logged (and counted) the rejection; nothing was granted.
    let until = Instant::now() + Duration::from_secs(3);
    while !w.log().contains("bad MAC") && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = w.log();
    assert!(log.contains("bad MAC") && log.contains("totals: 1 bad MAC"), "{log}");
    let mut good = w.client(&key);
    let v = good.query("svc", WAIT).expect("query");
    assert_eq!((v.holder, v.epoch), (None, 0));
}

#[test]
fn ftnet_witness_refuses_a_replayed_request() {
    let d = tempfile::tempdir().expect("tempdir");
    let (kp, key) = write_key(d.path(), "key", 7);
    let w = Witness::start("127.0.0.1:0", &kp, &d.path().join("state"), &d.path().join("w.log"));
    let ttl = Duration::from_millis(300);
    let mut a = w.client(&key);
    let e = epoch(&a.request("svc", "a", Request::Start, ttl, WAIT).expect("start"));
    // A Renew captured on the wire...
    let keys = WireKeys::new(&key);
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() as u64;
    let body = RequestBody {
        time_ms: now_ms + 5,
        service: "svc".into(),
        node: "a".into(),
        ttl_ms: 300,
        op: Op::Renew { epoch: e },
    };
    let captured = keys.seal_request([9; 16], [9; 16], &body).expect("seal");
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut buf = [0u8; 4096];
    let mut send = |d: &[u8]| {
        sock.send_to(d, w.addr).expect("send");
        let n = sock.recv(&mut buf).expect("answer");
        keys.open_answer(&buf[..n]).expect("authentic answer")
    };
    assert_eq!(send(&captured), ([9; 16], AnswerBody::Granted { epoch: e, ttl_ms: 300 }));
    // ... and replayed after node a died: refused, the lease runs out.
    std::thread::sleep(Duration::from_millis(200));
    let (id, again) = send(&captured);
    assert_eq!(id, [9; 16]);
    assert!(matches!(&again, AnswerBody::Refused { reason } if reason.contains("not newer")), "{again:?}");
    std::thread::sleep(Duration::from_millis(150));
    let v = a.query("svc", WAIT).expect("query");
    assert_eq!(v.remaining, None, "the replay did not extend the lease: {v:?}");
    assert!(w.log().contains("a replay?"), "{}", w.log());
}

/// `renews` renewals of one lease (their times, sorted) and the mean time of
/// `starts` Starts, each moving an epoch on disk: one per fresh service,
/// since a live lease is never restarted, not even by its holder.
fn round_trips(a: &mut dyn LeaseClient, renews: usize, starts: u32) -> (Vec<Duration>, Duration) {
    let ttl = Duration::from_millis(400);
    let e = epoch(&a.request("svc", "a", Request::Start, ttl, WAIT).expect("start"));
    let mut times: Vec<Duration> = (0..renews)
        .map(|_| {
            let t = Instant::now();
            assert_eq!(epoch(&a.request("svc", "a", Request::Renew { epoch: e }, ttl, WAIT).expect("renew")), e);
            t.elapsed()
        })
        .collect();
    times.sort();
    let t = Instant::now();
    for i in 0..starts {
        epoch(&a.request(&format!("s{i}"), "a", Request::Start, ttl, WAIT).expect("start"));
    }
    (times, t.elapsed() / starts)
}

#[test]
fn ftnet_witness_round_trip_time() {
    let d = tempfile::tempdir().expect("tempdir");
    let (kp, key) = write_key(d.path(), "key", 7);
    let w = Witness::start("127.0.0.1:0", &kp, &d.path().join("state"), &d.path().join("w.log"));
    let (times, start) = round_trips(w.client(&key).as_mut(), 300, 20);
    eprintln!(
        "ftnet witness on loopback: renew p50 {:?} p99 {:?} max {:?}; start (with fsync) mean {start:?}",
        times[150], times[297], times[299]
    );
    assert!(times[150] < Duration::from_millis(20), "{:?}", times[150]);
}

// ---------------------------------------------------------------- etcd

/// An etcd member on loopback, killed by PID and its data removed on drop.
struct Etcd {
    _child: Killed,
    url: String,
    _dir: tempfile::TempDir,
}

impl Etcd {
    /// `election_ms`: etcd's election timeout (its minimum lease TTL is
    /// 1.5 times that, rounded up to whole seconds).
    fn start(election_ms: u32) -> Etcd {
        let bin = Path::new("/usr/bin/etcd");
        assert!(bin.exists(), "/usr/bin/etcd is missing: apt-get install etcd-server");
        let dir = tempfile::tempdir().expect("tempdir");
        let (client, peer) = (free_port(), free_port());
        let url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let log = std::fs::File::create(dir.path().join("etcd.log")).expect("log");
        let child = Command::new(bin)
            .arg("--name=t")
            .arg(format!("--data-dir={}", dir.path().join("data").display()))
            .arg(format!("--listen-client-urls={url}"))
            .arg(format!("--advertise-client-urls={url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=t={peer_url}"))
            .arg(format!("--heartbeat-interval={}", (election_ms / 10).max(1)))
            .arg(format!("--election-timeout={election_ms}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn etcd");
        let child = Killed(child);
        let e = Etcd { _child: child, url, _dir: dir };
        let mut c = e.client();
        let until = Instant::now() + Duration::from_secs(20);
        while let Err(err) = c.query("probe", Duration::from_millis(500)) {
            let log = std::fs::read_to_string(e._dir.path().join("etcd.log")).unwrap_or_default();
            assert!(Instant::now() < until, "etcd did not come up: {err}\n{log}");
            std::thread::sleep(Duration::from_millis(50));
        }
        e
    }

    fn client(&self) -> Box<dyn LeaseClient> {
        let cfg = WitnessConfig::Etcd { endpoints: vec![self.url.clone()], prefix: "/ftnet-test".into() };
        connect(&cfg, &Key::from_bytes(&[0; 32]).expect("key")).expect("etcd client")
    }
}

#[test]
fn etcd_one_takeover_wins_a_race() {
    let etcd = Etcd::start(100);
    let mut a = etcd.client();
    for round in 0..3 {
        let service = format!("svc{round}");
        let g = a.request(&service, "a", Request::Start, Duration::from_millis(2500), WAIT).expect("start");
        let Answer::Granted { epoch: e, ttl } = g else { panic!("{g:?}") };
        assert_eq!(ttl, Duration::from_secs(3), "etcd grants whole seconds, rounded up");
        let held = race((0..4).map(|_| etcd.client()).collect(), &service, e);
        assert!(held.iter().all(|(_, a)| reason(a).starts_with("held by a")), "{held:?}");
        // Release (the planned switchover) so the race does not wait a TTL.
        assert_eq!(epoch(&a.request(&service, "a", Request::Release { epoch: e }, ttl, WAIT).expect("release")), e);
        let answers = race((0..4).map(|_| etcd.client()).collect(), &service, e);
        exactly_one_winner(&answers, e + 1);
        let v = a.query(&service, WAIT).expect("query");
        assert_eq!(v.epoch, e + 1);
        assert!(v.remaining.is_some());
    }
}

#[test]
fn etcd_expiry_renew_and_takeover() {
    let etcd = Etcd::start(100);
    let (mut a, mut b) = (etcd.client(), etcd.client());
    let ttl = Duration::from_millis(300);
    let sent = Instant::now();
    let Answer::Granted { epoch: e, ttl: granted } = a.request("svc", "a", Request::Start, ttl, WAIT).expect("start")
    else {
        panic!("start denied")
    };
    let d = b.request("svc", "b", Request::Takeover { log_epoch: e }, ttl, WAIT).expect("takeover");
    match &d {
        Answer::Denied { holder, remaining, .. } => {
            assert_eq!(holder.as_deref(), Some("a"));
            assert!(*remaining <= granted, "{d:?}");
        }
        other => panic!("{other:?}"),
    }
    // Nobody renews: the holder key goes away after the granted TTL.
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let v = a.query("svc", WAIT).expect("query");
        if v.remaining.is_none() {
            assert_eq!((v.holder.as_deref(), v.epoch), (Some("a"), e), "expired, still a's");
            break;
        }
        assert!(Instant::now() < until, "the etcd lease never expired");
        std::thread::sleep(Duration::from_millis(20));
    }
    let expired_after = sent.elapsed();
    assert!(expired_after >= granted, "expired after {expired_after:?}, granted {granted:?}");
    // Renew after expiry when nobody took it: granted, same epoch.
    assert_eq!(epoch(&a.request("svc", "a", Request::Renew { epoch: e }, ttl, WAIT).expect("renew")), e);
    assert!(a.query("svc", WAIT).expect("query").remaining.is_some());
    // Now a stops; b polls until its takeover is granted, never early.
    let stopped = Instant::now();
    let took = loop {
        match b.request("svc", "b", Request::Takeover { log_epoch: e }, ttl, WAIT).expect("takeover") {
            Answer::Granted { epoch: got, .. } => {
                assert_eq!(got, e + 1);
                break stopped.elapsed();
            }
            Answer::Denied { holder, .. } => assert_eq!(holder.as_deref(), Some("a")),
        }
        assert!(stopped.elapsed() < Duration::from_secs(10), "takeover never granted");
        std::thread::sleep(Duration::from_millis(25));
    };
    assert!(took >= granted - Duration::from_millis(50), "took over after {took:?}, granted {granted:?}");
    let old = a.request("svc", "a", Request::Renew { epoch: e }, ttl, WAIT).expect("renew");
    assert!(reason(&old).starts_with("held by b"), "{old:?}");
    eprintln!(
        "etcd: granted TTL {granted:?}; holder key gone {expired_after:?} after the start; takeover {took:?} after the last renew"
    );
}

#[test]
fn etcd_solo_then_takeover_denied() {
    let etcd = Etcd::start(100);
    let mut a = etcd.client();
    // b lists a dead endpoint first: it moves on to the live one.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let cfg = WitnessConfig::Etcd { endpoints: vec![dead, etcd.url.clone()], prefix: "/ftnet-test".into() };
    let mut b = connect(&cfg, &Key::from_bytes(&[0; 32]).expect("key")).expect("client");
    let ttl = Duration::from_millis(300);
    let e1 = epoch(&a.request("svc", "a", Request::Start, ttl, WAIT).expect("start"));
    let e2 = epoch(&a.request("svc", "a", Request::Solo { epoch: e1 }, ttl, WAIT).expect("solo"));
    assert_eq!(e2, e1 + 1);
    // A retried Solo (answer lost) is the same grant.
    assert_eq!(epoch(&a.request("svc", "a", Request::Solo { epoch: e1 }, ttl, WAIT).expect("solo")), e2);
    let v = b.query("svc", WAIT).expect("query");
    assert_eq!((v.holder.as_deref(), v.epoch, v.solo), (Some("a"), e2, true));
    // Released, so no wait for expiry: the backup's old log is still refused.
    assert_eq!(epoch(&a.request("svc", "a", Request::Release { epoch: e2 }, ttl, WAIT).expect("release")), e2);
    let d = b.request("svc", "b", Request::Takeover { log_epoch: e1 }, ttl, WAIT).expect("takeover");
    assert!(
        reason(&d).contains("your log is from epoch 1 but the lease is at epoch 2: the primary went on alone"),
        "{d:?}"
    );
    assert_eq!(
        epoch(&b.request("svc", "b", Request::Takeover { log_epoch: e2 }, ttl, WAIT).expect("takeover")),
        e2 + 1
    );
}

#[test]
fn etcd_round_trip_time() {
    let etcd = Etcd::start(100);
    let (times, start) = round_trips(etcd.client().as_mut(), 100, 10);
    eprintln!("etcd on loopback: renew p50 {:?} p99 {:?}; start mean {start:?}", times[50], times[98]);
    assert!(times[50] < Duration::from_millis(200), "{:?}", times[50]);
}

#[test]
fn etcd_unreachable_times_out() {
    let port = free_port();
    let cfg = WitnessConfig::Etcd { endpoints: vec![format!("http://127.0.0.1:{port}")], prefix: "/ftnet".into() };
    let mut c = connect(&cfg, &Key::from_bytes(&[0; 32]).expect("key")).expect("client");
    let t = Instant::now();
    let e = c.request("svc", "a", Request::Start, Duration::from_millis(400), Duration::from_millis(300)).unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(1));
    assert!(e.to_string().contains(&format!("127.0.0.1:{port}")), "{e}");
}

#[test]
fn ftnet_witness_needs_init_for_a_missing_state_file_and_refuses_it_for_an_existing_one() {
    let d = tempfile::tempdir().expect("tempdir");
    let (kp, _) = write_key(d.path(), "key", 7);
    let state = d.path().join("state");
    let run = |init: bool| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_ftnet"));
        c.args(["witness", "--listen", "127.0.0.1:0", "--key"]).arg(&kp).arg("--state").arg(&state);
        if init {
            c.arg("--init");
        }
        c.stdin(Stdio::null()).output().expect("run ftnet witness")
    };
    let o = run(false);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("{} does not exist: start a new witness with --init", state.display())), "{err}");
    assert!(!state.exists(), "nothing was created");
    // A new witness writes its (empty) state at once; a restart reads it.
    let w = Witness::start("127.0.0.1:0", &kp, &state, &d.path().join("w.log"));
    assert!(state.exists());
    drop(w);
    let o = run(true);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("already exists: --init only creates a new witness's state"), "{err}");
}
