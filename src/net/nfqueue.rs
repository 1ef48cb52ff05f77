//! The NFQUEUE netlink protocol (`nfnetlink_queue`), sans-IO: building the
//! configuration and verdict messages and parsing what the kernel sends.
//!
//! Layout (see `linux/netfilter/nfnetlink_queue.h`): each message is a
//! `nlmsghdr` (16 bytes, host byte order), an `nfgenmsg` (family, version,
//! queue number in network order) and attributes (`nlattr`: length and type
//! in host order, 4-byte aligned). NFQUEUE's attribute payloads are in
//! network byte order.
//!
//! Invariants:
//! - parsing never panics and never reads past a length it has checked: every
//!   header is bounds-checked once against the bytes actually present, then
//!   read through fixed-size arrays; a malformed message is a
//!   [`MessageError`] naming the part that was wrong;
//! - after a malformed message the iterator stops (a netlink datagram whose
//!   framing is broken cannot be resynchronised);
//! - builders only append to the caller's buffer and patch the length they
//!   wrote, so several messages can be packed into one datagram (the kernel
//!   processes them in order).

use std::fmt;

/// nfnetlink subsystem number of NFQUEUE.
pub const NFNL_SUBSYS_QUEUE: u16 = 3;
/// A queued packet (kernel → user).
pub const NFQNL_MSG_PACKET: u16 = 0;
/// A verdict on one packet.
pub const NFQNL_MSG_VERDICT: u16 = 1;
/// A configuration message.
pub const NFQNL_MSG_CONFIG: u16 = 2;
/// A verdict on every queued packet with an id up to the given one.
pub const NFQNL_MSG_VERDICT_BATCH: u16 = 3;

/// `NFQNL_CFG_CMD_BIND`: become the queue's consumer.
pub const CMD_BIND: u8 = 1;
/// `NFQNL_CFG_CMD_UNBIND`.
pub const CMD_UNBIND: u8 = 2;
/// `NFQNL_COPY_PACKET`: metadata and packet bytes.
pub const COPY_PACKET: u8 = 2;
/// Largest copy range the kernel grants (`0xffff - NLA_HDRLEN`); a packet
/// longer than this arrives truncated, with `NFQA_CAP_LEN` set.
pub const MAX_COPY_RANGE: u32 = 0xffff - 4;

/// `NFQA_CFG_F_FAIL_OPEN`: accept packets when the queue is full. ftnet never
/// sets it (a held packet must be dropped, not leaked).
pub const CFG_F_FAIL_OPEN: u32 = 1;
/// `NFQA_CFG_F_GSO`: pass GSO super-segments whole, checksums unfinished.
pub const CFG_F_GSO: u32 = 4;

/// `NF_DROP`.
pub const NF_DROP: u32 = 0;
/// `NF_ACCEPT`.
pub const NF_ACCEPT: u32 = 1;

/// Netfilter hook numbers (`enum nf_inet_hooks`).
pub const HOOK_PRE_ROUTING: u8 = 0;
/// Locally delivered packets.
pub const HOOK_LOCAL_IN: u8 = 1;
/// Forwarded packets.
pub const HOOK_FORWARD: u8 = 2;
/// Locally generated packets, before routing.
pub const HOOK_LOCAL_OUT: u8 = 3;
/// Every outgoing packet, last hook before the device.
pub const HOOK_POST_ROUTING: u8 = 4;

/// `NFQA_SKB_INFO` bit: a GSO super-segment.
pub const SKB_GSO: u32 = 2;

const NLMSG_HDRLEN: usize = 16;
const NFGEN_LEN: usize = 4;
const NLA_HDRLEN: usize = 4;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLA_TYPE_MASK: u16 = 0x3fff;

const NFQA_PACKET_HDR: u16 = 1;
const NFQA_VERDICT_HDR: u16 = 2;
const NFQA_IFINDEX_INDEV: u16 = 5;
const NFQA_IFINDEX_OUTDEV: u16 = 6;
const NFQA_PAYLOAD: u16 = 10;
const NFQA_CAP_LEN: u16 = 13;
const NFQA_SKB_INFO: u16 = 14;

const NFQA_CFG_CMD: u16 = 1;
const NFQA_CFG_PARAMS: u16 = 2;
const NFQA_CFG_QUEUE_MAXLEN: u16 = 3;
const NFQA_CFG_MASK: u16 = 4;
const NFQA_CFG_FLAGS: u16 = 5;

const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// A malformed message from the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// Fewer bytes than a header needs.
    #[error("netlink {what} truncated: needs {need} bytes, {have} present")]
    Truncated {
        /// Which header.
        what: &'static str,
        /// Bytes it needs.
        need: usize,
        /// Bytes present.
        have: usize,
    },
    /// A length field that is too small or runs past the data.
    #[error("netlink {what} length {len} invalid ({have} bytes present)")]
    BadLength {
        /// Which length field.
        what: &'static str,
        /// Its value.
        len: usize,
        /// Bytes present.
        have: usize,
    },
    /// A packet message without a required attribute.
    #[error("NFQUEUE packet message without {0}")]
    MissingAttribute(&'static str),
}

/// A packet the kernel queued.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PacketMsg<'a> {
    /// The queue number.
    pub queue: u16,
    /// The packet id verdicts refer to (increasing per queue, wrapping).
    pub id: u32,
    /// The hook it was queued at ([`HOOK_LOCAL_IN`], …).
    pub hook: u8,
    /// The L3 protocol (ethertype, e.g. 0x0800).
    pub hw_protocol: u16,
    /// The network-layer packet as copied (IPv4 header first); shorter than
    /// the packet if [`PacketMsg::cap_len`] is set.
    pub payload: &'a [u8],
    /// The packet's real length, present only when the copy was truncated.
    pub cap_len: Option<u32>,
    /// `NFQA_SKB_INFO` flags ([`SKB_GSO`], …), 0 if absent.
    pub skb_info: u32,
    /// Input interface index.
    pub indev: Option<u32>,
    /// Output interface index.
    pub outdev: Option<u32>,
}

impl PacketMsg<'_> {
    /// The copy holds the whole packet.
    pub fn is_whole(&self) -> bool {
        self.cap_len.is_none_or(|c| c as usize == self.payload.len())
    }
}

impl fmt::Debug for PacketMsg<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PacketMsg")
            .field("queue", &self.queue)
            .field("id", &self.id)
            .field("hook", &self.hook)
            .field("payload_len", &self.payload.len())
            .field("cap_len", &self.cap_len)
            .field("skb_info", &self.skb_info)
            .finish()
    }
}

/// One message of a datagram from the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    /// A queued packet.
    Packet(PacketMsg<'a>),
    /// `NLMSG_ERROR` with error 0: the request with this sequence number
    /// succeeded.
    Ack {
        /// Sequence number of the request.
        seq: u32,
    },
    /// `NLMSG_ERROR`: the request with this sequence number failed.
    Error {
        /// Sequence number of the request.
        seq: u32,
        /// The (positive) errno.
        errno: i32,
    },
    /// Any other message type.
    Other {
        /// Its `nlmsg_type`.
        msg_type: u16,
    },
}

/// The messages of one datagram, in order; see [`messages`].
#[derive(Debug, Clone)]
pub struct Messages<'a> {
    buf: &'a [u8],
    off: usize,
}

/// Iterates over the netlink messages packed in `datagram`.
pub fn messages(datagram: &[u8]) -> Messages<'_> {
    Messages { buf: datagram, off: 0 }
}

fn u16_ne(b: [u8; 2]) -> u16 {
    u16::from_ne_bytes(b)
}

fn u32_ne(b: [u8; 4]) -> u32 {
    u32::from_ne_bytes(b)
}

/// The first `N` bytes of `b`, or a `Truncated` error naming `what`.
fn head<const N: usize>(b: &[u8], what: &'static str) -> Result<[u8; N], MessageError> {
    match b.get(..N) {
        Some(s) => {
            let mut out = [0u8; N];
            out.copy_from_slice(s);
            Ok(out)
        }
        None => Err(MessageError::Truncated { what, need: N, have: b.len() }),
    }
}

impl<'a> Iterator for Messages<'a> {
    type Item = Result<Message<'a>, MessageError>;

    fn next(&mut self) -> Option<Self::Item> {
        let rest = self.buf.get(self.off..).unwrap_or(&[]);
        if rest.is_empty() {
            return None;
        }
        let result = parse_one(rest);
        match &result {
            Ok((_, used)) => self.off = self.off.saturating_add(*used),
            Err(_) => self.off = self.buf.len(),
        }
        Some(result.map(|(m, _)| m))
    }
}

/// Parses the message at the start of `rest`; returns it and the bytes it
/// occupies (aligned, capped at `rest.len()`).
fn parse_one(rest: &[u8]) -> Result<(Message<'_>, usize), MessageError> {
    let hdr: [u8; NLMSG_HDRLEN] = head(rest, "nlmsghdr")?;
    let len = u32_ne([hdr[0], hdr[1], hdr[2], hdr[3]]) as usize;
    if len < NLMSG_HDRLEN || len > rest.len() {
        return Err(MessageError::BadLength { what: "nlmsg_len", len, have: rest.len() });
    }
    let msg_type = u16_ne([hdr[4], hdr[5]]);
    let body = &rest[NLMSG_HDRLEN..len];
    let used = align4(len).min(rest.len());
    let msg = if msg_type == NLMSG_ERROR {
        let e: [u8; 4 + NLMSG_HDRLEN] = head(body, "nlmsgerr")?;
        let error = i32::from_ne_bytes([e[0], e[1], e[2], e[3]]);
        let seq = u32_ne([e[12], e[13], e[14], e[15]]);
        if error == 0 { Message::Ack { seq } } else { Message::Error { seq, errno: error.saturating_neg() } }
    } else if msg_type == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET {
        Message::Packet(parse_packet(body)?)
    } else {
        Message::Other { msg_type }
    };
    Ok((msg, used))
}

fn be32(p: &[u8], what: &'static str) -> Result<u32, MessageError> {
    head::<4>(p, what).map(u32::from_be_bytes)
}

fn parse_packet(body: &[u8]) -> Result<PacketMsg<'_>, MessageError> {
    let g: [u8; NFGEN_LEN] = head(body, "nfgenmsg")?;
    let queue = u16::from_be_bytes([g[2], g[3]]);
    let mut attrs = body.get(NFGEN_LEN..).unwrap_or(&[]);
    let mut hdr: Option<[u8; 7]> = None;
    let mut msg = PacketMsg {
        queue,
        id: 0,
        hook: 0,
        hw_protocol: 0,
        payload: &[],
        cap_len: None,
        skb_info: 0,
        indev: None,
        outdev: None,
    };
    let mut have_payload = false;
    while !attrs.is_empty() {
        let a: [u8; NLA_HDRLEN] = head(attrs, "nlattr")?;
        let alen = u16_ne([a[0], a[1]]) as usize;
        if alen < NLA_HDRLEN || alen > attrs.len() {
            return Err(MessageError::BadLength { what: "nla_len", len: alen, have: attrs.len() });
        }
        let payload = &attrs[NLA_HDRLEN..alen];
        match u16_ne([a[2], a[3]]) & NLA_TYPE_MASK {
            NFQA_PACKET_HDR => hdr = Some(head(payload, "NFQA_PACKET_HDR")?),
            NFQA_PAYLOAD => {
                msg.payload = payload;
                have_payload = true;
            }
            NFQA_CAP_LEN => msg.cap_len = Some(be32(payload, "NFQA_CAP_LEN")?),
            NFQA_SKB_INFO => msg.skb_info = be32(payload, "NFQA_SKB_INFO")?,
            NFQA_IFINDEX_INDEV => msg.indev = Some(be32(payload, "NFQA_IFINDEX_INDEV")?),
            NFQA_IFINDEX_OUTDEV => msg.outdev = Some(be32(payload, "NFQA_IFINDEX_OUTDEV")?),
            _ => {}
        }
        attrs = attrs.get(align4(alen)..).unwrap_or(&[]);
    }
    let h = hdr.ok_or(MessageError::MissingAttribute("NFQA_PACKET_HDR"))?;
    if !have_payload {
        return Err(MessageError::MissingAttribute("NFQA_PAYLOAD"));
    }
    msg.id = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
    msg.hw_protocol = u16::from_be_bytes([h[4], h[5]]);
    msg.hook = h[6];
    Ok(msg)
}

/// Appends a message header and `nfgenmsg`; returns where the message
/// starts, for [`finish`].
fn begin(out: &mut Vec<u8>, msg: u16, flags: u16, seq: u32, family: u8, queue: u16) -> usize {
    let start = out.len();
    out.extend_from_slice(&0u32.to_ne_bytes()); // patched by finish
    out.extend_from_slice(&((NFNL_SUBSYS_QUEUE << 8) | msg).to_ne_bytes());
    out.extend_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.extend_from_slice(&[family, 0]);
    out.extend_from_slice(&queue.to_be_bytes());
    start
}

fn attr(out: &mut Vec<u8>, ty: u16, payload: &[u8]) {
    let len = (NLA_HDRLEN + payload.len()) as u16;
    out.extend_from_slice(&len.to_ne_bytes());
    out.extend_from_slice(&ty.to_ne_bytes());
    out.extend_from_slice(payload);
    out.resize(align4(out.len()), 0);
}

fn finish(out: &mut [u8], start: usize) {
    let len = (out.len() - start) as u32;
    out[start..start + 4].copy_from_slice(&len.to_ne_bytes());
}

/// Appends a configuration command ([`CMD_BIND`], [`CMD_UNBIND`]) for
/// `queue`, asking for an acknowledgement.
pub fn config_cmd(out: &mut Vec<u8>, seq: u32, queue: u16, cmd: u8, pf: u16) {
    let start = begin(out, NFQNL_MSG_CONFIG, NLM_F_ACK, seq, libc::AF_UNSPEC as u8, queue);
    let pf = pf.to_be_bytes();
    attr(out, NFQA_CFG_CMD, &[cmd, 0, pf[0], pf[1]]);
    finish(out, start);
}

/// Appends the copy mode and range for `queue`, asking for an ack.
pub fn config_params(out: &mut Vec<u8>, seq: u32, queue: u16, copy_range: u32, mode: u8) {
    let start = begin(out, NFQNL_MSG_CONFIG, NLM_F_ACK, seq, libc::AF_UNSPEC as u8, queue);
    let r = copy_range.to_be_bytes();
    attr(out, NFQA_CFG_PARAMS, &[r[0], r[1], r[2], r[3], mode]);
    finish(out, start);
}

/// Appends the queue's maximum length (packets waiting for a verdict).
pub fn config_maxlen(out: &mut Vec<u8>, seq: u32, queue: u16, maxlen: u32) {
    let start = begin(out, NFQNL_MSG_CONFIG, NLM_F_ACK, seq, libc::AF_UNSPEC as u8, queue);
    attr(out, NFQA_CFG_QUEUE_MAXLEN, &maxlen.to_be_bytes());
    finish(out, start);
}

/// Appends queue flags: the bits of `mask` are set to those of `flags`.
pub fn config_flags(out: &mut Vec<u8>, seq: u32, queue: u16, flags: u32, mask: u32) {
    let start = begin(out, NFQNL_MSG_CONFIG, NLM_F_ACK, seq, libc::AF_UNSPEC as u8, queue);
    attr(out, NFQA_CFG_FLAGS, &flags.to_be_bytes());
    attr(out, NFQA_CFG_MASK, &mask.to_be_bytes());
    finish(out, start);
}

/// Appends a verdict ([`NF_ACCEPT`], [`NF_DROP`]) on packet `id` of `queue`;
/// with `batch`, on every packet still queued with an id up to `id`.
pub fn verdict(out: &mut Vec<u8>, queue: u16, id: u32, verdict: u32, batch: bool) {
    let msg = if batch { NFQNL_MSG_VERDICT_BATCH } else { NFQNL_MSG_VERDICT };
    let start = begin(out, msg, 0, 0, libc::AF_UNSPEC as u8, queue);
    let v = verdict.to_be_bytes();
    let i = id.to_be_bytes();
    attr(out, NFQA_VERDICT_HDR, &[v[0], v[1], v[2], v[3], i[0], i[1], i[2], i[3]]);
    finish(out, start);
}

/// Splits a buffer of messages built here into the individual messages
/// (stops at the first length that does not fit).
pub fn split_messages(buf: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        let hdr: [u8; 4] = head(rest, "nlmsghdr").ok()?;
        let len = u32_ne(hdr) as usize;
        if len < NLMSG_HDRLEN || len > rest.len() {
            return None;
        }
        let (msg, tail) = rest.split_at(len);
        rest = tail.get(align4(len) - len..).unwrap_or(&[]);
        Some(msg)
    })
}

/// A verdict message parsed back (for tests and diagnostics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerdictMsg {
    /// The queue.
    pub queue: u16,
    /// The packet id.
    pub id: u32,
    /// `NF_ACCEPT` or `NF_DROP`.
    pub verdict: u32,
    /// A batch verdict.
    pub batch: bool,
}

/// Parses the verdict messages built by [`verdict`] back out of `buf`.
pub fn parse_verdicts(buf: &[u8]) -> Result<Vec<VerdictMsg>, MessageError> {
    let mut out = Vec::new();
    let mut rest = buf;
    while !rest.is_empty() {
        let hdr: [u8; NLMSG_HDRLEN] = head(rest, "nlmsghdr")?;
        let len = u32_ne([hdr[0], hdr[1], hdr[2], hdr[3]]) as usize;
        if len < NLMSG_HDRLEN || len > rest.len() {
            return Err(MessageError::BadLength { what: "nlmsg_len", len, have: rest.len() });
        }
        let ty = u16_ne([hdr[4], hdr[5]]);
        let body = &rest[NLMSG_HDRLEN..len];
        let b: [u8; NFGEN_LEN + NLA_HDRLEN + 8] = head(body, "verdict message")?;
        out.push(VerdictMsg {
            queue: u16::from_be_bytes([b[2], b[3]]),
            verdict: u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
            id: u32::from_be_bytes([b[12], b[13], b[14], b[15]]),
            batch: ty == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_VERDICT_BATCH,
        });
        rest = rest.get(align4(len)..).unwrap_or(&[]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A packet message as the kernel lays it out.
    fn packet_msg(queue: u16, id: u32, hook: u8, payload: &[u8], extra: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut out = Vec::new();
        let start = out.len();
        out.extend_from_slice(&0u32.to_ne_bytes());
        out.extend_from_slice(&(NFNL_SUBSYS_QUEUE << 8).to_ne_bytes());
        out.extend_from_slice(&0u16.to_ne_bytes());
        out.extend_from_slice(&0u32.to_ne_bytes());
        out.extend_from_slice(&0u32.to_ne_bytes());
        out.extend_from_slice(&[libc::AF_INET as u8, 0]);
        out.extend_from_slice(&queue.to_be_bytes());
        let mut hdr = id.to_be_bytes().to_vec();
        hdr.extend_from_slice(&0x0800u16.to_be_bytes());
        hdr.push(hook);
        attr(&mut out, NFQA_PACKET_HDR, &hdr);
        for (ty, p) in extra {
            attr(&mut out, *ty, p);
        }
        attr(&mut out, NFQA_PAYLOAD | 0x8000, payload);
        finish(&mut out, start);
        out
    }

    #[test]
    fn parses_two_packets_in_one_datagram() {
        let mut dg =
            packet_msg(7, 41, HOOK_LOCAL_IN, &[0x45, 1, 2], &[(NFQA_SKB_INFO, SKB_GSO.to_be_bytes().to_vec())]);
        dg.extend(packet_msg(7, 42, HOOK_POST_ROUTING, &[0x45; 40], &[(NFQA_CAP_LEN, 60u32.to_be_bytes().to_vec())]));
        let msgs: Vec<_> = messages(&dg).collect::<Result<_, _>>().unwrap();
        assert_eq!(msgs.len(), 2);
        let Message::Packet(a) = msgs[0] else { panic!("{:?}", msgs[0]) };
        assert_eq!(
            (a.queue, a.id, a.hook, a.hw_protocol, a.payload),
            (7, 41, HOOK_LOCAL_IN, 0x0800, &[0x45, 1, 2][..])
        );
        assert_eq!(a.skb_info, SKB_GSO);
        assert!(a.is_whole());
        let Message::Packet(b) = msgs[1] else { panic!("{:?}", msgs[1]) };
        assert_eq!((b.id, b.hook, b.cap_len, b.payload.len()), (42, HOOK_POST_ROUTING, Some(60), 40));
        assert!(!b.is_whole());
    }

    #[test]
    fn parses_ack_and_error() {
        let mut dg = Vec::new();
        for (err, seq) in [(0i32, 5u32), (-libc::EBUSY, 6)] {
            dg.extend_from_slice(&36u32.to_ne_bytes());
            dg.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
            dg.extend_from_slice(&[0; 10]);
            dg.extend_from_slice(&err.to_ne_bytes());
            dg.extend_from_slice(&[0; 8]);
            dg.extend_from_slice(&seq.to_ne_bytes());
            dg.extend_from_slice(&[0; 4]);
        }
        let msgs: Vec<_> = messages(&dg).collect::<Result<_, _>>().unwrap();
        assert_eq!(msgs, vec![Message::Ack { seq: 5 }, Message::Error { seq: 6, errno: libc::EBUSY }]);
    }

    #[test]
    fn malformed_messages_are_errors_not_panics() {
        let good = packet_msg(1, 2, HOOK_LOCAL_IN, &[0x45; 20], &[]);
        // Every truncation of a valid message is an error (its nlmsg_len
        // then runs past the data).
        for cut in 1..good.len() {
            let r: Vec<_> = messages(&good[..cut]).collect();
            assert!(r.iter().all(|m| m.is_err()), "cut {cut}: {r:?}");
        }
        // nlmsg_len smaller than the header, or past the end.
        let mut bad = good.clone();
        bad[..4].copy_from_slice(&8u32.to_ne_bytes());
        assert!(matches!(messages(&bad).next(), Some(Err(MessageError::BadLength { what: "nlmsg_len", .. }))));
        bad[..4].copy_from_slice(&1000u32.to_ne_bytes());
        assert!(matches!(messages(&bad).next(), Some(Err(MessageError::BadLength { .. }))));
        // An attribute length running past the message.
        let mut bad = good.clone();
        bad[20..22].copy_from_slice(&900u16.to_ne_bytes());
        assert!(matches!(messages(&bad).next(), Some(Err(MessageError::BadLength { what: "nla_len", .. }))));
        // Missing packet header.
        let mut out = Vec::new();
        let s = begin(&mut out, NFQNL_MSG_PACKET, 0, 0, 2, 1);
        attr(&mut out, NFQA_PAYLOAD, &[1, 2, 3]);
        finish(&mut out, s);
        let e = messages(&out).next().unwrap().unwrap_err();
        assert_eq!(e, MessageError::MissingAttribute("NFQA_PACKET_HDR"));
        assert!(e.to_string().contains("NFQA_PACKET_HDR"));
        // Garbage never panics.
        let mut x = 0x1234_5678u32;
        for len in 0..300 {
            let g: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            for m in messages(&g) {
                let _ = m;
            }
        }
    }

    #[test]
    fn builds_config_and_verdicts() {
        let mut out = Vec::new();
        config_cmd(&mut out, 9, 300, CMD_BIND, libc::AF_INET as u16);
        assert_eq!(out.len(), 16 + 4 + 8);
        assert_eq!(u32_ne([out[0], out[1], out[2], out[3]]) as usize, out.len());
        assert_eq!(u16_ne([out[4], out[5]]), (3 << 8) | 2);
        assert_eq!(u16_ne([out[6], out[7]]), NLM_F_REQUEST | NLM_F_ACK);
        assert_eq!(u32_ne([out[8], out[9], out[10], out[11]]), 9);
        assert_eq!(&out[18..20], &300u16.to_be_bytes());
        assert_eq!(&out[24..28], &[CMD_BIND, 0, 0, libc::AF_INET as u8]);
        let mut p = Vec::new();
        config_params(&mut p, 1, 300, 0xffff, COPY_PACKET);
        assert_eq!(p.len(), 16 + 4 + 12, "5-byte params padded to 8");
        assert_eq!(u16_ne([p[20], p[21]]), 9);

        let mut v = Vec::new();
        verdict(&mut v, 300, 17, NF_ACCEPT, true);
        verdict(&mut v, 300, 18, NF_DROP, false);
        let parts: Vec<&[u8]> = split_messages(&v).collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts.concat(), v);
        assert_eq!(
            parse_verdicts(&v).unwrap(),
            vec![
                VerdictMsg { queue: 300, id: 17, verdict: NF_ACCEPT, batch: true },
                VerdictMsg { queue: 300, id: 18, verdict: NF_DROP, batch: false },
            ]
        );
    }
}
