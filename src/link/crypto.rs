//! The pre-shared key, the greeting handshake, key derivation and sealing.
//!
//! Invariants (the argument is in the [module docs](super)):
//! - a key file is refused unless it is a regular file with no permission
//!   bits for group or others and holds at least 32 key bytes;
//! - every connection derives its keys from the master key and both
//!   greetings, one key per (purpose, direction);
//! - a [`Sealer`] never seals two frames with the same nonce: per sequence
//!   space the counter must strictly increase, or sealing fails;
//! - an [`Opener`] returns a body only if the tag verifies over the header
//!   (associated data) and the ciphertext; otherwise nothing.

use super::wire::{GREETING_LEN, HEADER_LEN, Header, Kind, SALT_LEN, TAG_LEN};
use super::{LinkError, Side};
use chacha20poly1305::ChaCha20Poly1305;
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use std::path::Path;

/// Nonce direction byte: initiator → responder.
const DIR_I2R: u8 = 1;
/// Nonce direction byte: responder → initiator.
const DIR_R2I: u8 = 2;
/// Nonce purpose byte of heartbeats (the stream uses [`super::wire::Space`]'s values).
pub(crate) const PURPOSE_HEARTBEAT: u8 = 4;

/// Fewest key bytes a key file must hold.
pub const MIN_KEY_LEN: usize = 32;
/// Most bytes read from a key file.
const MAX_KEY_FILE: u64 = 4096;

/// The pre-shared master key (32 bytes, normalized from the key file).
#[derive(Clone)]
pub struct Key([u8; 32]);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

impl Key {
    /// A key from raw key material (at least [`MIN_KEY_LEN`] bytes).
    pub fn from_bytes(raw: &[u8]) -> Result<Key, LinkError> {
        if raw.len() < MIN_KEY_LEN {
            return Err(LinkError::Key {
                path: "(bytes)".into(),
                what: format!("{} key bytes; at least {MIN_KEY_LEN} are needed", raw.len()),
            });
        }
        Ok(Key(blake3::derive_key("ftnet 2026-01 link pre-shared key v1", raw)))
    }

    /// Reads a key file: either hex (the whole file, surrounding whitespace
    /// ignored, is an even number of hex digits) or raw bytes (anything
    /// else, used as is). Either way at least 32 key bytes. The file must be
    /// a regular file that group and others cannot access (mode 0600 or
    /// 0400), since it decrypts the log.
    pub fn from_file(path: &Path) -> Result<Key, LinkError> {
        use std::io::Read;
        use std::os::unix::fs::PermissionsExt;
        let name = path.display().to_string();
        let io = |source| LinkError::KeyIo { path: name.clone(), source };
        let bad = |what: String| LinkError::Key { path: name.clone(), what };
        let f = std::fs::File::open(path).map_err(io)?;
        let meta = f.metadata().map_err(io)?;
        if !meta.is_file() {
            return Err(bad("not a regular file".into()));
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(bad(format!(
                "mode {mode:04o} lets group or others access the key (it decrypts the log): chmod 600 {name}"
            )));
        }
        let mut raw = Vec::new();
        f.take(MAX_KEY_FILE + 1).read_to_end(&mut raw).map_err(io)?;
        if raw.len() as u64 > MAX_KEY_FILE {
            return Err(bad(format!("larger than {MAX_KEY_FILE} bytes; is this really a key file?")));
        }
        let material = decode_hex(raw.trim_ascii()).unwrap_or(raw);
        if material.len() < MIN_KEY_LEN {
            return Err(bad(format!(
                "holds {} key bytes; at least {MIN_KEY_LEN} are needed (e.g. `ftnet` can write one, or \
                 `head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n' > FILE`)",
                material.len()
            )));
        }
        Key::from_bytes(&material)
    }

    /// A 32-byte key for another purpose (e.g. the witness), derived from the
    /// master key under its own blake3 context, so it is independent of
    /// every link key (those use other contexts).
    pub(crate) fn derive(&self, context: &str) -> [u8; 32] {
        blake3::derive_key(context, &self.0)
    }

    /// Writes a new random key file (64 hex digits, mode 0600); fails if
    /// `path` exists.
    pub fn write_new(path: &Path) -> Result<Key, LinkError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let name = path.display().to_string();
        let io = |source| LinkError::KeyIo { path: name.clone(), source };
        let raw = random_salt()?;
        let mut hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        hex.push('\n');
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(io)?;
        f.write_all(hex.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
        Key::from_bytes(&raw)
    }
}

fn decode_hex(s: &[u8]) -> Option<Vec<u8>> {
    if s.is_empty() || !s.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    s.chunks_exact(2).map(|p| Some(digit(p[0])? << 4 | digit(p[1])?)).collect()
}

/// 32 random bytes from the OS.
pub fn random_salt() -> Result<[u8; SALT_LEN], LinkError> {
    use chacha20poly1305::aead::rand_core::RngCore;
    let mut salt = [0u8; SALT_LEN];
    chacha20poly1305::aead::OsRng.try_fill_bytes(&mut salt).map_err(|e| LinkError::Random(e.to_string()))?;
    Ok(salt)
}

fn nonce(dir: u8, purpose: u8, path: u8, counter: u64) -> chacha20poly1305::Nonce {
    let mut n = [0u8; 12];
    n[0] = dir;
    n[1] = purpose;
    n[2] = path;
    n[4..].copy_from_slice(&counter.to_be_bytes());
    n.into()
}

fn cipher(key: [u8; 32]) -> ChaCha20Poly1305 {
    ChaCha20Poly1305::new(&key.into())
}

/// The first step of a connection: our greeting, then the peer's.
pub struct Handshake {
    side: Side,
    master: [u8; 32],
    ours: [u8; GREETING_LEN],
}

impl Handshake {
    /// `salt` must be fresh for every connection ([`random_salt`]).
    pub fn new(side: Side, key: &Key, epoch: u64, salt: [u8; SALT_LEN]) -> Handshake {
        let mut ours = [0u8; GREETING_LEN];
        ours[..HEADER_LEN]
            .copy_from_slice(&Header { kind: Kind::Greeting, epoch, seq: 0, len: SALT_LEN as u32 }.emit());
        ours[HEADER_LEN..].copy_from_slice(&salt);
        Handshake { side, master: key.0, ours }
    }

    /// The bytes to send first.
    pub fn greeting(&self) -> &[u8; GREETING_LEN] {
        &self.ours
    }

    /// Checks the peer's greeting (exactly [`GREETING_LEN`] bytes) and
    /// derives the session.
    pub fn finish(&self, theirs: &[u8]) -> Result<Session, LinkError> {
        let h = Header::parse(theirs)?;
        if h.kind != Kind::Greeting || h.len as usize != SALT_LEN || theirs.len() != GREETING_LEN {
            return Err(LinkError::Protocol(format!(
                "expected a greeting of {GREETING_LEN} bytes, got {:?} with {} body bytes",
                h.kind, h.len
            )));
        }
        if theirs == self.ours {
            return Err(LinkError::Protocol("the peer's greeting is ours (connected to ourselves?)".into()));
        }
        let (gi, gr) = match self.side {
            Side::Initiator => (&self.ours[..], theirs),
            Side::Responder => (theirs, &self.ours[..]),
        };
        let mut ikm = Vec::with_capacity(32 + 2 * GREETING_LEN);
        ikm.extend_from_slice(&self.master);
        ikm.extend_from_slice(gi);
        ikm.extend_from_slice(gr);
        let secret = blake3::derive_key("ftnet 2026-01 link session secret v1", &ikm);
        let k = |ctx: &str| blake3::derive_key(ctx, &secret);
        let (s_i2r, s_r2i) = (k("ftnet 2026-01 link stream i2r v1"), k("ftnet 2026-01 link stream r2i v1"));
        let (h_i2r, h_r2i) = (k("ftnet 2026-01 link heartbeat i2r v1"), k("ftnet 2026-01 link heartbeat r2i v1"));
        let mut id = [0u8; 8];
        id.copy_from_slice(&k("ftnet 2026-01 link session id v1")[..8]);
        let (tx_dir, rx_dir, tx, rx, htx, hrx) = match self.side {
            Side::Initiator => (DIR_I2R, DIR_R2I, s_i2r, s_r2i, h_i2r, h_r2i),
            Side::Responder => (DIR_R2I, DIR_I2R, s_r2i, s_i2r, h_r2i, h_i2r),
        };
        Ok(Session {
            id,
            peer_epoch: h.epoch,
            tx: Sealer { cipher: cipher(tx), dir: tx_dir, last: [None; 3] },
            rx: Opener { cipher: cipher(rx), dir: rx_dir },
            heartbeat: HeartbeatKeys { session: id, tx: cipher(htx), tx_dir, rx: cipher(hrx), rx_dir },
        })
    }
}

/// The keys of one connection.
pub struct Session {
    /// Identifies the session in heartbeats and logs.
    pub id: [u8; 8],
    /// The epoch the peer's greeting claimed (unauthenticated until its
    /// Hello verifies; for messages only).
    pub peer_epoch: u64,
    /// Seals what we send (give it to [`super::Sender::attach`]).
    pub tx: Sealer,
    /// Opens what we receive (give it to [`super::Receiver::attach`]).
    pub rx: Opener,
    /// Heartbeat keys of this session.
    pub heartbeat: HeartbeatKeys,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("id", &self.id).field("peer_epoch", &self.peer_epoch).finish_non_exhaustive()
    }
}

/// Seals the frames of one direction of one connection.
pub struct Sealer {
    cipher: ChaCha20Poly1305,
    dir: u8,
    /// Last counter sealed per [`super::wire::Space`] (index `space - 1`).
    last: [Option<u64>; 3],
}

impl Sealer {
    /// Appends the sealed frame `header` + `body` to `out`.
    pub(crate) fn seal(
        &mut self,
        kind: Kind,
        epoch: u64,
        seq: u64,
        body: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), LinkError> {
        let len = u32::try_from(body.len()).unwrap_or(u32::MAX);
        if kind == Kind::Greeting || len > kind.max_body() {
            return Err(LinkError::Oversize { kind, len: body.len() as u64, max: u64::from(kind.max_body()) });
        }
        let space = kind.space();
        let slot = &mut self.last[space as usize - 1];
        if let Some(last) = *slot
            && seq <= last
        {
            return Err(LinkError::NonceReuse { counter: seq, last });
        }
        if seq == u64::MAX {
            return Err(LinkError::NonceReuse { counter: seq, last: seq });
        }
        let header = Header { kind, epoch, seq, len }.emit();
        let start = out.len();
        out.extend_from_slice(&header);
        out.extend_from_slice(body);
        let n = nonce(self.dir, space as u8, 0, seq);
        match self.cipher.encrypt_in_place_detached(&n, &header, &mut out[start + HEADER_LEN..]) {
            Ok(tag) => {
                *slot = Some(seq);
                out.extend_from_slice(&tag);
                Ok(())
            }
            Err(_) => {
                out.truncate(start);
                Err(LinkError::Protocol(format!("sealing a {kind:?} frame of {len} bytes failed")))
            }
        }
    }
}

/// Opens the frames of one direction of one connection.
pub struct Opener {
    cipher: ChaCha20Poly1305,
    dir: u8,
}

impl Opener {
    /// The plaintext body of the frame `frame` (header, ciphertext, tag;
    /// `header` parsed from it), or `None` if it does not authenticate.
    pub(crate) fn open(&self, header: &Header, frame: &[u8]) -> Option<Vec<u8>> {
        let hdr = frame.get(..HEADER_LEN)?;
        let end = HEADER_LEN + header.len as usize;
        let mut body = frame.get(HEADER_LEN..end)?.to_vec();
        let tag: [u8; TAG_LEN] = frame.get(end..end + TAG_LEN)?.try_into().ok()?;
        let n = nonce(self.dir, header.kind.space() as u8, 0, header.seq);
        self.cipher.decrypt_in_place_detached(&n, hdr, &mut body, &tag.into()).ok()?;
        Some(body)
    }
}

/// The heartbeat keys of one session (see [`super::heartbeat`]).
#[derive(Clone)]
pub struct HeartbeatKeys {
    pub(crate) session: [u8; 8],
    tx: ChaCha20Poly1305,
    tx_dir: u8,
    rx: ChaCha20Poly1305,
    rx_dir: u8,
}

impl HeartbeatKeys {
    pub fn session(&self) -> [u8; 8] {
        self.session
    }

    /// Seals heartbeat `body` in place; returns the tag.
    pub(crate) fn seal(&self, path: u8, counter: u64, ad: &[u8], body: &mut [u8]) -> Option<[u8; TAG_LEN]> {
        let n = nonce(self.tx_dir, PURPOSE_HEARTBEAT, path, counter);
        let tag = self.tx.encrypt_in_place_detached(&n, ad, body).ok()?;
        <[u8; TAG_LEN]>::try_from(tag.as_slice()).ok()
    }

    /// Opens heartbeat `body` in place; false if it does not authenticate.
    pub(crate) fn open(&self, path: u8, counter: u64, ad: &[u8], body: &mut [u8], tag: [u8; TAG_LEN]) -> bool {
        let n = nonce(self.rx_dir, PURPOSE_HEARTBEAT, path, counter);
        self.rx.decrypt_in_place_detached(&n, ad, body, &tag.into()).is_ok()
    }
}

impl std::fmt::Debug for HeartbeatKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeartbeatKeys").field("session", &self.session).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn write(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn key_files() {
        let d = tempfile::tempdir().unwrap();
        let hex = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n";
        let raw: Vec<u8> = (0..32u8).map(|i| i.wrapping_mul(7).wrapping_add(200)).collect();
        let k1 = Key::from_file(&write(d.path(), "hex", hex.as_bytes(), 0o600)).unwrap();
        let k2 = Key::from_bytes(&decode_hex(hex.trim().as_bytes()).unwrap()).unwrap();
        assert_eq!(k1.0, k2.0);
        let k3 = Key::from_file(&write(d.path(), "raw", &raw, 0o400)).unwrap();
        assert_eq!(k3.0, Key::from_bytes(&raw).unwrap().0);
        assert_ne!(k1.0, k3.0);
        assert_eq!(format!("{k1:?}"), "Key(..)");

        let e = Key::from_file(&write(d.path(), "world", hex.as_bytes(), 0o644)).unwrap_err().to_string();
        assert!(e.contains("mode 0644") && e.contains("chmod 600"), "{e}");
        let e = Key::from_file(&write(d.path(), "group", hex.as_bytes(), 0o640)).unwrap_err().to_string();
        assert!(e.contains("mode 0640"), "{e}");
        let e = Key::from_file(&write(d.path(), "short", b"0011223344", 0o600)).unwrap_err().to_string();
        assert!(e.contains("holds 5 key bytes; at least 32"), "{e}");
        let e = Key::from_file(&write(d.path(), "shortraw", &[0xff; 31], 0o600)).unwrap_err().to_string();
        assert!(e.contains("holds 31 key bytes"), "{e}");
        let e = Key::from_file(&d.path().join("missing")).unwrap_err().to_string();
        assert!(e.contains("missing"), "{e}");
        let e = Key::from_file(d.path()).unwrap_err().to_string();
        assert!(e.contains("not a regular file") || e.contains("mode"), "{e}");
        let e = Key::from_file(&write(d.path(), "big", &[b'a'; 5000], 0o600)).unwrap_err().to_string();
        assert!(e.contains("larger than"), "{e}");

        let p = d.path().join("new");
        let k = Key::write_new(&p).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(Key::from_file(&p).unwrap().0, k.0);
        assert!(Key::write_new(&p).is_err(), "never overwrites a key");
    }

    #[test]
    fn hex_decoding() {
        assert_eq!(decode_hex(b"00ff10Ab"), Some(vec![0, 255, 16, 0xab]));
        assert_eq!(decode_hex(b"0"), None);
        assert_eq!(decode_hex(b""), None);
        assert_eq!(decode_hex(b"zz"), None);
    }

    #[test]
    fn greetings_are_checked() {
        let key = Key::from_bytes(&[1; 32]).unwrap();
        let a = Handshake::new(Side::Initiator, &key, 3, [1; 32]);
        let b = Handshake::new(Side::Responder, &key, 4, [2; 32]);
        let sa = a.finish(b.greeting()).unwrap();
        let sb = b.finish(a.greeting()).unwrap();
        assert_eq!(sa.id, sb.id);
        assert_eq!((sa.peer_epoch, sb.peer_epoch), (4, 3));
        assert!(matches!(a.finish(a.greeting()), Err(LinkError::Protocol(_))));
        assert!(matches!(a.finish(&b.greeting()[..40]), Err(LinkError::Protocol(_))));
        let mut g = *b.greeting();
        g[4] = 9;
        assert!(matches!(a.finish(&g), Err(LinkError::Version { found: 9 })));
        let mut g = *b.greeting();
        g[5] = Kind::Hello as u8;
        assert!(matches!(a.finish(&g), Err(LinkError::Protocol(_))));
    }

    #[test]
    fn sealer_refuses_nonce_reuse() {
        let key = Key::from_bytes(&[1; 32]).unwrap();
        let a = Handshake::new(Side::Initiator, &key, 0, [1; 32]);
        let b = Handshake::new(Side::Responder, &key, 0, [2; 32]);
        let mut s = a.finish(b.greeting()).unwrap();
        let mut out = Vec::new();
        s.tx.seal(Kind::Log, 0, 5, b"x", &mut out).unwrap();
        assert!(matches!(s.tx.seal(Kind::Log, 0, 5, b"x", &mut out), Err(LinkError::NonceReuse { .. })));
        assert!(matches!(s.tx.seal(Kind::Segment, 0, 4, b"x", &mut out), Err(LinkError::NonceReuse { .. })));
        // Other spaces have their own counters.
        s.tx.seal(Kind::Ack, 0, 0, b"x", &mut out).unwrap();
        s.tx.seal(Kind::Hello, 0, 0, b"x", &mut out).unwrap();
        assert!(matches!(s.tx.seal(Kind::Hello, 0, 0, b"x", &mut out), Err(LinkError::NonceReuse { .. })));
        assert!(matches!(s.tx.seal(Kind::Log, 0, u64::MAX, b"x", &mut out), Err(LinkError::NonceReuse { .. })));
        assert!(matches!(s.tx.seal(Kind::Greeting, 0, 9, b"x", &mut out), Err(LinkError::Oversize { .. })));
        let big = vec![0u8; Kind::Ack.max_body() as usize + 1];
        assert!(matches!(s.tx.seal(Kind::Ack, 0, 9, &big, &mut out), Err(LinkError::Oversize { .. })));
    }
}
