//! A small blocking adapter over `std::net::TcpStream`, built on the sans-IO
//! core: the handshake ([`establish`]), a [`LinkWriter`] and a [`LinkReader`].
//!
//! Threading: the reader and the writer own clones of the socket and can run
//! on two threads. The [`Sender`] and [`Receiver`] live outside them (they
//! outlive connections); the writer borrows the sender only while sealing
//! ([`LinkWriter::flush_shared`]), never while blocked on the socket, so a
//! reader thread applying acks to the same sender is never stuck behind a
//! full socket. Only one thread may write: sealing order is wire order.
//!
//! Invariants: the reader's buffer grows only to the length of a frame
//! whose header was already validated (so at most the kind's limit); a
//! frame is handed out only after the receiver verified it.

use super::crypto::{Handshake, HeartbeatKeys, Key, random_salt};
use super::msg::{Hello, Message, hello_diff};
use super::receiver::{Incoming, Receiver};
use super::sender::Sender;
use super::wire::{GREETING_LEN, HEADER_LEN, Header};
use super::{LinkError, Side};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Mutex;
use std::time::Duration;

/// A connection after a successful handshake.
#[derive(Debug)]
pub struct Established {
    /// The peer's hello.
    pub peer: Hello,
    /// The peer's hello came at a newer epoch than ours: we were superseded
    /// and must stop serving at once.
    pub superseded: bool,
    pub session_id: [u8; 8],
    /// For [`super::HeartbeatTx::new`] and [`super::HeartbeatRx::install`].
    pub heartbeat: HeartbeatKeys,
    pub writer: LinkWriter,
    pub reader: LinkReader,
}

fn io(what: &'static str) -> impl Fn(std::io::Error) -> LinkError {
    move |source| LinkError::Io { what, source }
}

/// Runs the handshake on a connected stream: greetings, hellos, the
/// compatibility check (refused with [`LinkError::Incompatible`] after a bye
/// naming the differences) and the resume point. `ours` is sent with its
/// positions filled in from `sender` and `receiver`; `timeout` bounds each
/// read of the handshake.
pub fn establish(
    stream: TcpStream,
    side: Side,
    key: &Key,
    ours: &Hello,
    sender: &mut Sender,
    receiver: &mut Receiver,
    timeout: Duration,
) -> Result<Established, LinkError> {
    stream.set_nodelay(true).map_err(io("set TCP_NODELAY"))?;
    stream.set_read_timeout(Some(timeout)).map_err(io("set read timeout"))?;
    let mut w = stream.try_clone().map_err(io("clone socket"))?;
    let hs = Handshake::new(side, key, sender.epoch(), random_salt()?);
    w.write_all(hs.greeting()).map_err(io("send greeting"))?;
    let mut g = [0u8; GREETING_LEN];
    read_exact(&mut &stream, &mut g)?;
    // A greeting with a wrong magic, version, kind or length is a rejected
    // frame like any other: counted before the connection is dropped.
    let session = hs.finish(&g).inspect_err(|e| receiver.counters().count(e))?;
    receiver.attach(session.rx);
    sender.attach(session.tx);

    let mut hello = ours.clone();
    hello.next_position = sender.position();
    hello.resume_from = receiver.position();
    hello.applied = hello.applied.min(hello.resume_from);
    let mut out = Vec::new();
    sender.hello(&hello, &mut out)?;
    w.write_all(&out).map_err(io("send hello"))?;

    let mut reader = LinkReader::new(stream);
    let incoming = reader.recv(receiver)?;
    let superseded = matches!(incoming, Incoming::NewerEpoch { .. });
    let Message::Hello(peer) = incoming.into_frame().msg else {
        return Err(LinkError::Protocol("the first frame was not a hello".into()));
    };
    if peer.next_position < receiver.position() {
        let e = LinkError::Protocol(format!(
            "the peer's stream starts again at position {} but we received up to {}: the peer lost its state",
            peer.next_position,
            receiver.position()
        ));
        return Err(refuse(sender, receiver, &mut w, e));
    }
    let diff = hello_diff(&hello, &peer);
    if !diff.is_empty() {
        return Err(refuse(sender, receiver, &mut w, LinkError::Incompatible(diff)));
    }
    if let Err(e) = sender.resume(peer.resume_from) {
        return Err(refuse(sender, receiver, &mut w, e));
    }
    reader.stream.set_read_timeout(None).map_err(io("clear read timeout"))?;
    Ok(Established {
        peer: *peer,
        superseded,
        session_id: session.id,
        heartbeat: session.heartbeat,
        writer: LinkWriter { stream: w, buf: Vec::new() },
        reader,
    })
}

/// Tells the peer why we refuse (best effort: the error is ours to report)
/// and drops the connection's keys.
fn refuse(sender: &mut Sender, receiver: &mut Receiver, w: &mut TcpStream, e: LinkError) -> LinkError {
    let mut out = Vec::new();
    if sender.bye(&e.to_string(), &mut out).is_ok() {
        let _ = w.write_all(&out);
    }
    sender.detach();
    receiver.detach();
    e
}

fn read_exact(r: &mut impl Read, buf: &mut [u8]) -> Result<(), LinkError> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => return Err(LinkError::Eof { mid_frame: got > 0 }),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(LinkError::Io { what: "receive greeting", source: e }),
        }
    }
    Ok(())
}

/// The writing half of a connection.
#[derive(Debug)]
pub struct LinkWriter {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl LinkWriter {
    /// Seals everything pending in `sender` (the queued ack, unsent stream
    /// frames) and writes it; returns the number of frames written.
    pub fn flush(&mut self, sender: &mut Sender) -> Result<usize, LinkError> {
        self.buf.clear();
        let n = sender.transmit(&mut self.buf)?;
        self.write_buf()?;
        Ok(n)
    }

    /// [`LinkWriter::flush`] for a sender shared with other threads: the
    /// lock is held while sealing, not while writing.
    pub fn flush_shared(&mut self, sender: &Mutex<Sender>) -> Result<usize, LinkError> {
        self.buf.clear();
        let n = {
            let mut s = sender.lock().map_err(|_| LinkError::Protocol("the sender's lock is poisoned".into()))?;
            s.transmit(&mut self.buf)?
        };
        self.write_buf()?;
        Ok(n)
    }

    /// Sends a bye and closes our direction of the connection.
    pub fn bye(&mut self, sender: &mut Sender, reason: &str) -> Result<(), LinkError> {
        self.buf.clear();
        sender.bye(reason, &mut self.buf)?;
        self.write_buf()?;
        self.stream.shutdown(Shutdown::Write).map_err(io("shut down"))
    }

    fn write_buf(&mut self) -> Result<(), LinkError> {
        if !self.buf.is_empty() {
            self.stream.write_all(&self.buf).map_err(io("send"))?;
        }
        if self.buf.capacity() > 4 << 20 {
            self.buf = Vec::new();
        }
        Ok(())
    }

    /// The socket (for timeouts, shutdown).
    pub fn socket(&self) -> &TcpStream {
        &self.stream
    }
}

const READ_CHUNK: usize = 64 << 10;

/// The reading half of a connection.
#[derive(Debug)]
pub struct LinkReader {
    stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl LinkReader {
    fn new(stream: TcpStream) -> LinkReader {
        LinkReader { stream, buf: vec![0; READ_CHUNK], start: 0, end: 0 }
    }

    /// Whether a whole frame is already buffered, so the next [`recv`]
    /// will not block (the backup acknowledges once per burst, when this
    /// turns false).
    ///
    /// [`recv`]: LinkReader::recv
    pub fn frame_buffered(&self) -> bool {
        let b = &self.buf[self.start..self.end];
        matches!(Header::parse_prefix(b), Ok(Some(h)) if h.frame_len() <= b.len())
    }

    /// Blocks until the next verified frame. Errors are final for this
    /// connection (see the rejection policy); [`LinkError::Eof`] when the
    /// peer closed.
    pub fn recv(&mut self, receiver: &mut Receiver) -> Result<Incoming, LinkError> {
        loop {
            if let Some((incoming, used)) = receiver.decode(&self.buf[self.start..self.end])? {
                self.start += used;
                return Ok(incoming);
            }
            // Need more: make room for the whole frame (its header, when
            // present, was validated by `decode` above).
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            let need = match Header::parse_prefix(&self.buf[..self.end]) {
                Ok(Some(h)) => h.frame_len(),
                _ => HEADER_LEN,
            };
            let want = need.max(READ_CHUNK);
            if self.buf.len() < want {
                self.buf.resize(want, 0);
            } else if self.buf.len() > 4 * READ_CHUNK && want == READ_CHUNK && self.end <= READ_CHUNK {
                self.buf.truncate(READ_CHUNK);
                self.buf.shrink_to_fit();
            }
            let n = loop {
                match self.stream.read(&mut self.buf[self.end..]) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(LinkError::Io { what: "receive", source: e }),
                }
            };
            if n == 0 {
                return Err(LinkError::Eof { mid_frame: self.end > 0 });
            }
            self.end += n;
        }
    }

    /// The socket (for timeouts, shutdown).
    pub fn socket(&self) -> &TcpStream {
        &self.stream
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::msg::tests::hello;
    use crate::link::{Ack, Counters, Kind, Role, Sender};
    use crate::replica::log::{Event, FrameKind, frame};
    use std::net::TcpListener;
    use std::sync::Arc;
    use std::time::Instant;

    const N: u64 = 10_000;

    fn log_frame(i: u64) -> Vec<u8> {
        let e = Event::Rdtsc { tid: (i % 7) as u32, tsc: i * 1000, aux: i.is_multiple_of(3).then_some(i as u32) };
        let mut body = postcard::to_allocvec(&e).unwrap();
        body.resize(body.len() + (i as usize * 37) % 600, i as u8);
        frame(FrameKind::Event, &body)
    }

    /// A real TCP pair on loopback: hellos, 10,000 log frames, acks, bye.
    #[test]
    fn tcp_pair_streams_the_log_and_acks() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let key = Key::from_bytes(&[7; 32]).unwrap();
        let timeout = Duration::from_secs(10);
        let bkey = key.clone();
        let backup = std::thread::spawn(move || {
            let (sock, _) = listener.accept().unwrap();
            let counters = Arc::new(Counters::default());
            let mut sender = Sender::new(0, 1);
            let mut receiver = Receiver::new(0, 1, counters.clone());
            let ours = hello(Role::Backup, "b");
            let mut est = establish(sock, Side::Responder, &bkey, &ours, &mut sender, &mut receiver, timeout).unwrap();
            assert_eq!(est.peer.node, "a");
            let mut applied = 0;
            loop {
                let f = est.reader.recv(&mut receiver).unwrap().into_frame();
                match f.msg {
                    Message::Log(body) => {
                        assert_eq!(f.seq, applied);
                        assert_eq!(body, log_frame(f.seq));
                        applied += 1;
                        if applied % 500 == 0 || applied == N {
                            sender.queue_ack(receiver.ack(applied));
                            est.writer.flush(&mut sender).unwrap();
                        }
                    }
                    Message::Bye(b) => {
                        assert_eq!(b.reason, "done");
                        break;
                    }
                    m => panic!("unexpected {m:?}"),
                }
            }
            assert!(matches!(est.reader.recv(&mut receiver), Err(LinkError::Eof { mid_frame: false })));
            (applied, counters.snapshot())
        });

        let sock = TcpStream::connect(addr).unwrap();
        let counters = Arc::new(Counters::default());
        let sender = Arc::new(Mutex::new(Sender::new(0, 1)));
        let mut receiver = Receiver::new(0, 1, counters.clone());
        let ours = hello(Role::Primary, "a");
        let est = {
            let mut s = sender.lock().unwrap();
            establish(sock, Side::Initiator, &key, &ours, &mut s, &mut receiver, timeout).unwrap()
        };
        assert_eq!(est.peer.node, "b");
        assert!(!est.superseded);
        let Established { mut writer, mut reader, .. } = est;
        // The primary's reader thread applies acks to the shared sender.
        let acks = {
            let sender = sender.clone();
            std::thread::spawn(move || {
                let mut n = 0;
                loop {
                    match reader.recv(&mut receiver) {
                        Ok(i) => match i.into_frame().msg {
                            Message::Ack(a) => {
                                sender.lock().unwrap().on_ack(a).unwrap();
                                n += 1;
                                if a.received == N {
                                    return n;
                                }
                            }
                            m => panic!("unexpected {m:?}"),
                        },
                        Err(e) => panic!("{e}"),
                    }
                }
            })
        };
        let t = Instant::now();
        for i in 0..N {
            let pos = sender.lock().unwrap().push(Kind::Log, log_frame(i), t).unwrap();
            assert_eq!(pos, i);
            if i % 64 == 63 || i == N - 1 {
                writer.flush_shared(&sender).unwrap();
            }
        }
        assert_eq!(acks.join().unwrap(), N / 500);
        {
            let mut s = sender.lock().unwrap();
            assert_eq!((s.acked_through(), s.applied_through(), s.position()), (N, N, N));
            assert_eq!(s.lag(Instant::now()).unacked_bytes, 0);
            writer.bye(&mut s, "done").unwrap();
        }
        let (applied, backup_counters) = backup.join().unwrap();
        assert_eq!(applied, N);
        assert_eq!(backup_counters, Default::default());
        assert_eq!(counters.snapshot(), Default::default());
        let _ = Ack::default();
    }

    /// Different binaries: both sides refuse with the diff; a wrong key
    /// fails as a bad MAC on the hello.
    #[test]
    fn tcp_pair_refuses_mismatch_and_wrong_key() {
        for (wrong_key, exe) in [(false, [0u8; 32]), (true, [1; 32])] {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let t = Duration::from_secs(10);
            let peer = std::thread::spawn(move || {
                let (sock, _) = listener.accept().unwrap();
                let mut h = hello(Role::Backup, "b");
                h.replica.files[0].blake3 = exe;
                let key = Key::from_bytes(&[if wrong_key { 9 } else { 7 }; 32]).unwrap();
                let c = Arc::new(Counters::default());
                let (mut s, mut r) = (Sender::new(0, 1), Receiver::new(0, 1, c.clone()));
                (establish(sock, Side::Responder, &key, &h, &mut s, &mut r, t).map(|_| ()), c.snapshot())
            });
            let sock = TcpStream::connect(addr).unwrap();
            let key = Key::from_bytes(&[7; 32]).unwrap();
            let c = Arc::new(Counters::default());
            let (mut s, mut r) = (Sender::new(0, 1), Receiver::new(0, 1, c.clone()));
            let ours = establish(sock, Side::Initiator, &key, &hello(Role::Primary, "a"), &mut s, &mut r, t);
            let (theirs, their_counters) = peer.join().unwrap();
            if wrong_key {
                assert!(matches!(ours, Err(LinkError::BadMac { kind: Kind::Hello, .. })), "{ours:?}");
                assert!(matches!(theirs, Err(LinkError::BadMac { kind: Kind::Hello, .. })), "{theirs:?}");
                assert_eq!((c.snapshot().rejected_mac, their_counters.rejected_mac), (1, 1));
            } else {
                let e = ours.unwrap_err().to_string();
                assert!(e.contains("executable /usr/sbin/nginx differs"), "{e}");
                assert!(matches!(theirs, Err(LinkError::Incompatible(d)) if d.len() == 1));
            }
        }
    }

    /// A backup that has more of the stream than the primary's new stream
    /// holds: both sides refuse instead of replaying the wrong frames.
    #[test]
    fn tcp_pair_refuses_a_restarted_stream() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let t = Duration::from_secs(10);
        let key = Key::from_bytes(&[7; 32]).unwrap();
        let k2 = key.clone();
        let peer = std::thread::spawn(move || {
            let (sock, _) = listener.accept().unwrap();
            let c = Arc::new(Counters::default());
            let (mut s, mut r) = (Sender::new(0, 1), Receiver::new(5, 1, c));
            establish(sock, Side::Responder, &k2, &hello(Role::Backup, "b"), &mut s, &mut r, t).map(|_| ())
        });
        let sock = TcpStream::connect(addr).unwrap();
        let c = Arc::new(Counters::default());
        let (mut s, mut r) = (Sender::new(0, 1), Receiver::new(0, 1, c));
        let ours = establish(sock, Side::Initiator, &key, &hello(Role::Primary, "a"), &mut s, &mut r, t);
        let e = ours.unwrap_err().to_string();
        assert!(e.contains("claims to have 5 frames, but only 0 were sent"), "{e}");
        let e = peer.join().unwrap().unwrap_err().to_string();
        assert!(e.contains("starts again at position 0 but we received up to 5"), "{e}");
    }
}
