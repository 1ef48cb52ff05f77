//! Tests across the link's parts: a whole pair in memory, tampering,
//! ordering, epochs, heartbeats, reconnects and a fuzz loop.

use super::crypto::{Handshake, HeartbeatKeys, Key};
use super::msg::tests::hello;
use super::wire::{HEADER_LEN, Header, Kind, TAG_LEN};
use super::*;
use std::sync::Arc;
use std::time::{Duration, Instant};

struct End {
    sender: Sender,
    receiver: Receiver,
    counters: Arc<Counters>,
    role: Role,
}

fn end(role: Role, epoch: u64) -> End {
    let counters = Arc::new(Counters::default());
    End { sender: Sender::new(0, epoch), receiver: Receiver::new(0, epoch, counters.clone()), counters, role }
}

/// Connects `a` (initiator) and `b` in memory; returns both sides'
/// heartbeat keys and the sealed hellos (a→b, b→a).
fn connect(a: &mut End, b: &mut End, ka: &Key, kb: &Key, salts: ([u8; 32], [u8; 32])) -> [HeartbeatKeys; 2] {
    let ha = Handshake::new(Side::Initiator, ka, a.sender.epoch(), salts.0);
    let hb = Handshake::new(Side::Responder, kb, b.sender.epoch(), salts.1);
    let sa = ha.finish(hb.greeting()).unwrap();
    let sb = hb.finish(ha.greeting()).unwrap();
    let mut hellos = Vec::new();
    for (e, s, name) in [(&mut *a, sa.tx, "a"), (&mut *b, sb.tx, "b")] {
        e.sender.attach(s);
        let mut h = hello(e.role, name);
        h.next_position = e.sender.position();
        h.resume_from = e.receiver.position();
        let mut out = Vec::new();
        e.sender.hello(&h, &mut out).unwrap();
        hellos.push(out);
    }
    a.receiver.attach(sa.rx);
    b.receiver.attach(sb.rx);
    let peer_of = |r: &mut Receiver, bytes: &[u8]| match r.decode(bytes).unwrap() {
        Some((inc, used)) if used == bytes.len() => match inc.into_frame().msg {
            Message::Hello(h) => *h,
            m => panic!("{m:?}"),
        },
        other => panic!("{other:?}"),
    };
    let hb_ = peer_of(&mut a.receiver, &hellos[1]);
    let ha_ = peer_of(&mut b.receiver, &hellos[0]);
    assert!(hello_diff(&ha_, &hb_).is_empty());
    a.sender.resume(hb_.resume_from).unwrap();
    b.sender.resume(ha_.resume_from).unwrap();
    [sa.heartbeat, sb.heartbeat]
}

fn key(b: u8) -> Key {
    Key::from_bytes(&[b; 32]).unwrap()
}

fn pair() -> (End, End) {
    let (mut a, mut b) = (end(Role::Primary, 1), end(Role::Backup, 1));
    connect(&mut a, &mut b, &key(1), &key(1), ([1; 32], [2; 32]));
    (a, b)
}

/// Every frame in `bytes`, stopping at the first error.
fn drain(r: &mut Receiver, bytes: &[u8]) -> Result<(Vec<Incoming>, usize), LinkError> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some((inc, used)) = r.decode(&bytes[at..])? {
        at += used;
        out.push(inc);
    }
    Ok((out, at))
}

fn msgs(v: Vec<Incoming>) -> Vec<Message> {
    v.into_iter().map(|i| i.into_frame().msg).collect()
}

fn sample_messages() -> Vec<Message> {
    vec![
        Message::Log(b"\x03\x05\x00\x00\x00abcdhello".to_vec()),
        Message::Segment(vec![0x45; 1500]),
        Message::Fence(Fence { reason: FenceReason::Switchover, position: 3, detail: "promote".into() }),
        Message::Promoted(Promoted { epoch: 1, node: "b".into() }),
        Message::Log(vec![]),
    ]
}

#[test]
fn every_kind_travels_sealed() {
    let (mut a, mut b) = pair();
    let t = Instant::now();
    for m in sample_messages() {
        a.sender.push_message(&m, t).unwrap();
    }
    a.sender.queue_ack(Ack { received: 0, applied: 0 });
    let mut wire = Vec::new();
    assert_eq!(a.sender.transmit(&mut wire).unwrap(), 6);
    a.sender.bye("done", &mut wire).unwrap();
    // Nothing readable leaks: the segment's bytes are not in the clear.
    assert!(!wire.windows(64).any(|w| w.iter().all(|&x| x == 0x45)));
    let (got, used) = drain(&mut b.receiver, &wire).unwrap();
    assert_eq!(used, wire.len());
    let mut want = vec![Message::Ack(Ack::default())];
    want.extend(sample_messages());
    want.push(Message::Bye(Bye::new("done")));
    assert_eq!(msgs(got.clone()), want);
    let seqs: Vec<u64> = got.iter().map(|i| i.frame().seq).collect();
    assert_eq!(seqs, [0, 0, 1, 2, 3, 4, 1], "control counter, stream positions, control counter");
    assert_eq!(b.receiver.position(), 5);
    assert_eq!(b.receiver.ack(9), Ack { received: 5, applied: 5 });
    assert_eq!(b.counters.snapshot(), CounterSnapshot::default());
    // The backup acks; the primary's sender learns it.
    b.sender.queue_ack(b.receiver.ack(4));
    let mut back = Vec::new();
    b.sender.transmit(&mut back).unwrap();
    let (got, _) = drain(&mut a.receiver, &back).unwrap();
    let Message::Ack(ack) = got[0].frame().msg else { panic!() };
    a.sender.on_ack(ack).unwrap();
    assert_eq!((a.sender.acked_through(), a.sender.applied_through()), (5, 4));
}

#[test]
fn untransmitted_frames_and_acks_are_reported() {
    let mut lone = end(Role::Primary, 1);
    lone.sender.push(Kind::Log, b"x".to_vec(), Instant::now()).unwrap();
    assert!(!lone.sender.has_untransmitted(), "no connection: nothing can be transmitted");
    let (mut a, _b) = pair();
    assert!(!a.sender.has_untransmitted());
    a.sender.push(Kind::Log, b"record".to_vec(), Instant::now()).unwrap();
    assert!(a.sender.has_untransmitted());
    let mut wire = Vec::new();
    a.sender.transmit(&mut wire).unwrap();
    assert!(!a.sender.has_untransmitted());
    a.sender.queue_ack(Ack { received: 0, applied: 0 });
    assert!(a.sender.has_untransmitted(), "a pending ack counts");
    a.sender.transmit(&mut wire).unwrap();
    assert!(!a.sender.has_untransmitted());
}

fn one_frame() -> (End, Vec<u8>) {
    let (mut a, b) = pair();
    a.sender.push(Kind::Log, b"some log record bytes".to_vec(), Instant::now()).unwrap();
    let mut wire = Vec::new();
    a.sender.transmit(&mut wire).unwrap();
    (b, wire)
}

#[test]
fn every_flipped_bit_is_rejected_and_counted() {
    let (_, good) = one_frame();
    for i in 0..good.len() {
        for bit in 0..8 {
            let (mut b, _) = one_frame();
            let mut bad = good.clone();
            bad[i] ^= 1 << bit;
            let r = b.receiver.decode(&bad);
            let c = b.counters.snapshot();
            match (i, &r) {
                (0..=3, Err(LinkError::BadMagic { .. })) => assert_eq!(c.rejected_other, 1),
                (4, Err(LinkError::Version { .. })) => assert_eq!(c.rejected_version, 1),
                (5, Err(LinkError::UnknownKind { .. })) => assert_eq!(c.rejected_other, 1),
                (5, Err(LinkError::Protocol(_))) => assert_eq!(c.rejected_other, 1), // became a greeting
                (6..=7, Err(LinkError::Flags { .. })) => assert_eq!(c.rejected_other, 1),
                (24..=27, Err(LinkError::Oversize { .. })) => assert_eq!(c.rejected_oversize, 1),
                (24..=27, Ok(None)) => assert!(bad.len() < Header::parse(&bad).unwrap().frame_len()), // waits
                (_, Err(LinkError::BadMac { .. })) => assert_eq!(c.rejected_mac, 1),
                _ => panic!("flip of bit {bit} in byte {i}: {r:?}"),
            }
            if i >= HEADER_LEN || (8..24).contains(&i) {
                assert!(matches!(r, Err(LinkError::BadMac { .. })), "byte {i}: {r:?}");
            }
            // The connection is closed after any rejection.
            if r.is_err() {
                assert!(matches!(b.receiver.decode(&good), Err(LinkError::Closed)));
            }
        }
    }
}

#[test]
fn bad_headers_name_what_failed_and_count() {
    let (_, good) = one_frame();
    type Case = (usize, &'static [u8], fn(&LinkError) -> bool, fn(&CounterSnapshot) -> u64);
    let cases: [Case; 4] = [
        (4, &[2], |e| matches!(e, LinkError::Version { found: 2 }), |c| c.rejected_version),
        (0, b"XXXX", |e| matches!(e, LinkError::BadMagic { .. }), |c| c.rejected_other),
        (5, &[42], |e| matches!(e, LinkError::UnknownKind { found: 42 }), |c| c.rejected_other),
        (
            24,
            &[0xff, 0xff, 0xff, 0xff],
            |e| matches!(e, LinkError::Oversize { kind: Kind::Log, .. }),
            |c| c.rejected_oversize,
        ),
    ];
    for (at, bytes, is, counter) in cases {
        let (mut b, _) = one_frame();
        let mut bad = good.clone();
        bad[at..at + bytes.len()].copy_from_slice(bytes);
        // Rejected as soon as the deciding bytes arrive, before the body.
        let e = b.receiver.decode(&bad[..HEADER_LEN]).unwrap_err();
        assert!(is(&e), "{e}");
        assert_eq!(counter(&b.counters.snapshot()), 1, "{e}");
    }
    // The messages are clear.
    let (mut b, _) = one_frame();
    let mut bad = good.clone();
    bad[24..28].copy_from_slice(&u32::MAX.to_be_bytes());
    let e = b.receiver.decode(&bad).unwrap_err().to_string();
    assert!(e.contains("Log body of 4294967295 bytes exceeds the limit of 67174400"), "{e}");
}

#[test]
fn truncated_input_needs_more_bytes() {
    let (_, good) = one_frame();
    for cut in 0..good.len() {
        let (mut b, _) = one_frame();
        assert!(matches!(b.receiver.decode(&good[..cut]), Ok(None)), "cut {cut}");
        assert_eq!(b.counters.snapshot(), CounterSnapshot::default());
        assert!(b.receiver.decode(&good).unwrap().is_some());
    }
}

#[test]
fn replayed_and_reordered_frames_are_rejected() {
    let (mut a, _) = pair();
    let t = Instant::now();
    let mut frames = Vec::new();
    for i in 0..3u8 {
        a.sender.push(Kind::Log, vec![i], t).unwrap();
        let mut f = Vec::new();
        a.sender.transmit(&mut f).unwrap();
        frames.push(f);
    }
    // Replay of frame 0 after frame 0 (every `pair()` has the same salts,
    // hence keys, so a fresh pair's receiver opens these frames).
    let (_, mut b) = pair();
    b.receiver.decode(&frames[0]).unwrap().unwrap();
    let e = b.receiver.decode(&frames[0]).unwrap_err();
    assert!(matches!(e, LinkError::Sequence { expected: 1, found: 0, .. }), "{e}");
    assert!(e.to_string().contains("replayed"));
    assert_eq!(b.counters.snapshot().rejected_sequence, 1);
    // Frame 2 before frame 1.
    let (_, mut b) = pair();
    b.receiver.decode(&frames[0]).unwrap().unwrap();
    let e = b.receiver.decode(&frames[2]).unwrap_err();
    assert!(matches!(e, LinkError::Sequence { expected: 1, found: 2, .. }), "{e}");
    assert!(e.to_string().contains("gap or reordered"));
    // A stream frame before the hello, and a second hello.
    let (mut a2, mut b2) = (end(Role::Primary, 1), end(Role::Backup, 1));
    let ha = Handshake::new(Side::Initiator, &key(1), 1, [1; 32]);
    let hb = Handshake::new(Side::Responder, &key(1), 1, [2; 32]);
    a2.sender.attach(ha.finish(hb.greeting()).unwrap().tx);
    a2.sender.resume(0).unwrap();
    a2.sender.push(Kind::Log, vec![1], t).unwrap();
    let mut w = Vec::new();
    a2.sender.transmit(&mut w).unwrap();
    b2.receiver.attach(hb.finish(ha.greeting()).unwrap().rx);
    assert!(matches!(b2.receiver.decode(&w), Err(LinkError::Protocol(m)) if m.contains("before the hello")));
}

#[test]
fn epochs_older_rejected_newer_reported() {
    let t = Instant::now();
    let (mut a, mut b) = pair();
    b.receiver.set_epoch(5);
    a.sender.push(Kind::Log, vec![1], t).unwrap();
    let mut w = Vec::new();
    a.sender.transmit(&mut w).unwrap();
    let e = b.receiver.decode(&w).unwrap_err();
    assert!(matches!(e, LinkError::StaleEpoch { ours: 5, theirs: 1, kind: Kind::Log }), "{e}");
    assert_eq!(b.counters.snapshot().rejected_epoch, 1);
    assert_eq!(b.receiver.position(), 0, "a rejected frame is not acknowledged");

    let (mut a, mut b) = pair();
    a.sender.set_epoch(7);
    a.sender.set_epoch(3); // never lowered
    a.sender.push(Kind::Promoted, Message::Promoted(Promoted { epoch: 7, node: "a".into() }).encode(), t).unwrap();
    let mut w = Vec::new();
    a.sender.transmit(&mut w).unwrap();
    match b.receiver.decode(&w).unwrap() {
        Some((Incoming::NewerEpoch { ours: 1, frame }, _)) => {
            assert_eq!(frame.epoch, 7);
            assert!(matches!(frame.msg, Message::Promoted(Promoted { epoch: 7, .. })));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(b.counters.snapshot(), CounterSnapshot::default());
}

#[test]
fn wrong_key_fails_at_the_hello() {
    let (mut a, mut b) = (end(Role::Primary, 1), end(Role::Backup, 1));
    let ha = Handshake::new(Side::Initiator, &key(1), 1, [1; 32]);
    let hb = Handshake::new(Side::Responder, &key(2), 1, [2; 32]);
    a.sender.attach(ha.finish(hb.greeting()).unwrap().tx);
    b.receiver.attach(hb.finish(ha.greeting()).unwrap().rx);
    let mut w = Vec::new();
    a.sender.hello(&hello(Role::Primary, "a"), &mut w).unwrap();
    assert!(matches!(b.receiver.decode(&w), Err(LinkError::BadMac { kind: Kind::Hello, seq: 0 })));
    assert_eq!(b.counters.snapshot().rejected_mac, 1);
}

#[test]
fn reconnects_use_fresh_keys_and_resume() {
    let t = Instant::now();
    let (mut a, mut b) = (end(Role::Primary, 1), end(Role::Backup, 1));
    connect(&mut a, &mut b, &key(1), &key(1), ([1; 32], [2; 32]));
    for i in 0..10u8 {
        a.sender.push(Kind::Log, vec![i; 20], t).unwrap();
    }
    let mut w1 = Vec::new();
    a.sender.transmit(&mut w1).unwrap();
    // Only 6 frames arrive before the connection breaks.
    let frame_len = w1.len() / 10;
    let (got, _) = drain(&mut b.receiver, &w1[..6 * frame_len + 5]).unwrap();
    assert_eq!(got.len(), 6);
    a.sender.detach();
    b.receiver.detach();
    assert!(matches!(b.receiver.decode(&w1), Err(LinkError::Closed)));

    // Same key, new salts on our side: the frames differ even where the
    // plaintext and position are the same; the peer replaying its old salt
    // does not help.
    connect(&mut a, &mut b, &key(1), &key(1), ([3; 32], [2; 32]));
    assert_eq!(a.sender.acked_through(), 6, "the hello's resume point acknowledges");
    let mut w2 = Vec::new();
    assert_eq!(a.sender.transmit(&mut w2).unwrap(), 4);
    assert_eq!(w2.len(), 4 * frame_len);
    assert_ne!(w2[..frame_len], w1[6 * frame_len..7 * frame_len]);
    assert_eq!(w2[..HEADER_LEN], w1[6 * frame_len..6 * frame_len + HEADER_LEN], "same header, same position");
    let (got, _) = drain(&mut b.receiver, &w2).unwrap();
    let want: Vec<Message> = (6..10u8).map(|i| Message::Log(vec![i; 20])).collect();
    assert_eq!(msgs(got), want);
    // Old-session bytes do not authenticate on the new connection.
    assert!(matches!(b.receiver.decode(&w1[6 * frame_len..]), Err(LinkError::BadMac { .. })));

    // Sessions differ in every derived key: same plaintext, same seq.
    let seal = |salt: u8| {
        let ha = Handshake::new(Side::Initiator, &key(1), 1, [salt; 32]);
        let mut s = ha.finish(Handshake::new(Side::Responder, &key(1), 1, [9; 32]).greeting()).unwrap();
        let mut out = Vec::new();
        s.tx.seal(Kind::Log, 1, 0, b"same plaintext", &mut out).unwrap();
        (out, s.id)
    };
    let (x, idx) = seal(1);
    let (y, idy) = seal(2);
    assert_eq!(x[..HEADER_LEN], y[..HEADER_LEN]);
    assert_ne!(x[HEADER_LEN..], y[HEADER_LEN..]);
    assert_ne!(idx, idy);
}

#[test]
fn both_directions_use_different_keys() {
    let (mut a, mut b) = pair();
    let t = Instant::now();
    a.sender.push(Kind::Log, b"x".to_vec(), t).unwrap();
    b.sender.push(Kind::Log, b"x".to_vec(), t).unwrap();
    let (mut wa, mut wb) = (Vec::new(), Vec::new());
    a.sender.transmit(&mut wa).unwrap();
    b.sender.transmit(&mut wb).unwrap();
    assert_eq!(wa[..HEADER_LEN], wb[..HEADER_LEN]);
    assert_ne!(wa[HEADER_LEN..], wb[HEADER_LEN..]);
    // A frame reflected back to its sender does not authenticate.
    assert!(matches!(a.receiver.decode(&wa), Err(LinkError::BadMac { .. })));
    assert!(b.receiver.decode(&wa).unwrap().is_some());
}

fn beat(role: Role, position: u64) -> Beat {
    Beat {
        role,
        fenced: false,
        stopping: false,
        witness_ok: role == Role::Backup,
        epoch: 1,
        position,
        applied: position / 2,
    }
}

#[test]
fn heartbeats_seal_open_and_replay() {
    let (mut a, mut b) = (end(Role::Primary, 1), end(Role::Backup, 1));
    let [ka, kb] = connect(&mut a, &mut b, &key(1), &key(1), ([1; 32], [2; 32]));
    let mut tx = HeartbeatTx::new(ka.clone());
    let mut rx = HeartbeatRx::new(b.counters.clone());
    rx.install(kb.clone());
    let mut x = beat(Role::Primary, 77);
    x.fenced = true;
    x.witness_ok = true;
    let d0 = tx.seal(Path::Replication, &x).unwrap();
    let d1 = tx.seal(Path::Replication, &beat(Role::Primary, 78)).unwrap();
    let s0 = tx.seal(Path::Service, &x).unwrap();
    assert_eq!(rx.open(&d0, Path::Replication).unwrap(), x);
    assert_eq!(rx.open(&s0, Path::Service).unwrap(), x, "each path has its own counter");
    assert_eq!(rx.open(&d1, Path::Replication).unwrap().position, 78);
    assert!(matches!(rx.open(&d1, Path::Replication), Err(LinkError::HeartbeatStale { counter: 1, last: 1, .. })));
    assert!(matches!(rx.open(&d0, Path::Replication), Err(LinkError::HeartbeatStale { .. })));
    assert_eq!(b.counters.snapshot().heartbeat_replayed, 2);
    assert!(matches!(rx.open(&d0, Path::Service), Err(LinkError::Heartbeat(m)) if m.contains("arrived on")));
    // Tampering anywhere fails.
    let d2 = tx.seal(Path::Replication, &x).unwrap();
    for i in 0..d2.len() {
        let mut bad = d2;
        bad[i] ^= 0x10;
        assert!(rx.open(&bad, Path::Replication).is_err(), "byte {i}");
    }
    assert!(b.counters.snapshot().heartbeat_rejected_mac >= 48);
    assert!(rx.open(&d2[..71], Path::Replication).is_err());
    assert_eq!(rx.open(&d2, Path::Replication).unwrap(), x);
    // Our own heartbeat reflected back does not authenticate.
    let mut rx_a = HeartbeatRx::new(a.counters.clone());
    rx_a.install(ka);
    assert!(matches!(rx_a.open(&d2, Path::Replication), Err(LinkError::HeartbeatMac)));

    // A reconnect: the old session is accepted on a path until the new one is heard there.
    let [ka2, kb2] = connect(&mut a, &mut b, &key(1), &key(1), ([5; 32], [6; 32]));
    rx.install(kb2);
    let mut tx2 = HeartbeatTx::new(ka2);
    let old = tx.seal(Path::Service, &x).unwrap();
    let old2 = tx.seal(Path::Service, &x).unwrap();
    assert!(rx.open(&old, Path::Service).is_ok());
    assert!(rx.open(&tx2.seal(Path::Service, &x).unwrap(), Path::Service).is_ok());
    assert!(matches!(rx.open(&old2, Path::Service), Err(LinkError::Heartbeat(m)) if m.contains("replaced")));
    assert!(rx.open(&tx.seal(Path::Replication, &x).unwrap(), Path::Replication).is_ok());
}

#[test]
fn detector_timeline() {
    let t0 = Instant::now();
    let ms = |n: u64| t0 + Duration::from_millis(n);
    let cfg = DetectorConfig::default();
    assert_eq!(cfg.suspect_after, Duration::from_millis(50));
    cfg.validate().unwrap();
    let mut d = Detector::new(cfg, t0);
    assert_eq!(d.state(ms(0)), PeerState::Alive);
    assert_eq!(d.state(ms(60)), PeerState::Suspect, "never heard");
    assert_eq!(d.state(ms(100)), PeerState::Dead);
    // Heartbeats every 20 ms on both paths.
    for i in 0..10 {
        d.heard(Path::Replication, beat(Role::Primary, i), ms(i * 20));
        d.heard(Path::Service, beat(Role::Primary, i), ms(i * 20 + 1));
        assert_eq!(d.state(ms(i * 20 + 19)), PeerState::Alive);
    }
    // The replication network is cut at 200 ms: the peer stays alive.
    for i in 10..15 {
        d.heard(Path::Service, beat(Role::Primary, i), ms(i * 20));
    }
    assert_eq!(d.state(ms(290)), PeerState::Alive);
    assert_eq!(d.path_state(Path::Replication, ms(290)), PeerState::Dead);
    assert_eq!(d.path_state(Path::Service, ms(290)), PeerState::Alive);
    assert_eq!(d.last_beat().map(|b| b.position), Some(14));
    // The peer dies after its beat at 280 ms: suspect at 330, dead at 380.
    assert_eq!(d.state(ms(329)), PeerState::Alive);
    assert_eq!(d.state(ms(330)), PeerState::Suspect);
    assert_eq!(d.state(ms(379)), PeerState::Suspect);
    assert_eq!(d.state(ms(380)), PeerState::Dead);
    assert_eq!(d.silence(ms(380)), Duration::from_millis(100));
    // It comes back.
    d.heard(Path::Replication, beat(Role::Primary, 99), ms(500));
    assert_eq!(d.state(ms(510)), PeerState::Alive);
    assert_eq!(d.path_state(Path::Service, ms(510)), PeerState::Dead);
    // An out-of-order notification does not move time back.
    d.heard(Path::Replication, beat(Role::Primary, 98), ms(400));
    assert_eq!(d.last_heard(Path::Replication), Some(ms(500)));

    // Configurations.
    let c = DetectorConfig::new(Duration::from_millis(10), Duration::from_millis(40));
    assert_eq!(c.suspect_after, Duration::from_millis(25));
    c.validate().unwrap();
    assert!(DetectorConfig::new(Duration::from_millis(50), Duration::from_millis(60)).validate().is_err());
    assert!(DetectorConfig::new(Duration::ZERO, Duration::from_millis(60)).validate().is_err());
}

/// xorshift64*: a tiny PRNG for the fuzz loop.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

#[test]
fn fuzz_decoders_never_panic() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (_, good) = one_frame();
    let (mut a, _) = pair();
    let t = Instant::now();
    for m in sample_messages() {
        a.sender.push_message(&m, t).unwrap();
    }
    let mut stream = Vec::new();
    a.sender.transmit(&mut stream).unwrap();
    let counters = Arc::new(Counters::default());
    let mut hrx = HeartbeatRx::new(counters.clone());
    let (mut ha, mut hb) = (end(Role::Primary, 1), end(Role::Backup, 1));
    let [kx, ky] = connect(&mut ha, &mut hb, &key(1), &key(1), ([1; 32], [2; 32]));
    hrx.install(ky);
    let hgood = HeartbeatTx::new(kx).seal(Path::Service, &beat(Role::Primary, 1)).unwrap();
    let mut accepted = 0;
    for round in 0..3000 {
        let input: Vec<u8> = match round % 4 {
            0 => (0..rng.below(200)).map(|_| rng.next() as u8).collect(),
            1 => {
                let mut g = good.clone();
                for _ in 0..1 + rng.below(4) {
                    let i = rng.below(g.len());
                    g[i] = rng.next() as u8;
                }
                g.truncate(rng.below(g.len() + 1).max(HEADER_LEN / 2));
                g
            }
            2 => {
                let mut g = stream.clone();
                let i = rng.below(g.len());
                g[i] ^= 1 << rng.below(8);
                g
            }
            _ => {
                let mut h = Header { kind: Kind::Log, epoch: rng.next(), seq: rng.next(), len: 0 }.emit().to_vec();
                h[5] = rng.below(10) as u8;
                h[24..28].copy_from_slice(&(rng.next() as u32 >> rng.below(32)).to_be_bytes());
                h.extend((0..rng.below(100)).map(|_| rng.next() as u8));
                h
            }
        };
        let (mut b, _) = one_frame();
        if let Ok((got, _)) = drain(&mut b.receiver, &input) {
            accepted += got.len();
        }
        let _ = Header::parse(&input);
        let _ = Header::parse_prefix(&input);
        for k in [Kind::Hello, Kind::Ack, Kind::Fence, Kind::Promoted, Kind::Bye] {
            let _ = Message::decode(k, input.clone());
        }
        let mut hd = hgood.to_vec();
        if round % 2 == 0 {
            let i = rng.below(hd.len());
            hd[i] = rng.next() as u8;
        } else {
            hd = input.clone();
        }
        let _ = hrx.open(&hd, Path::Service);
    }
    // Only the untouched prefix frames of mutated streams can pass.
    assert!(accepted < 3000 * 5);
    assert!(counters.snapshot().heartbeat_rejected_mac + counters.snapshot().heartbeat_rejected_other > 0);
    assert_eq!(TAG_LEN, 16);
}
