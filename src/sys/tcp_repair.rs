//! TCP_REPAIR socket options: the placeholder shared with replay, and one
//! wrapper per repair operation the takeover uses.
//!
//! Invariants: every wrapper is one system call (no hidden ordering: the
//! order is `crate::tcpstate::build`'s), returns a [`SysError`] naming the
//! option and value, and takes a borrowed fd, so none of them closes or
//! duplicates a socket.

use super::{Errno, Result, SysError, check};
use std::net::SocketAddrV4;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// The placeholder contract shared by replay and takeover: a TCP socket in
/// TCP_REPAIR mode with `IP_TRANSPARENT`, bound to the service address
/// `local` (a raw `sockaddr_in`/`sockaddr_in6`), not connected (TCP_CLOSE).
/// The supervisor installs it in the replica at the recorded fd number; a
/// takeover later sets its sequence numbers, connects it in repair mode and
/// releases it. Creating it needs CAP_NET_ADMIN, which the supervisor has
/// and the replica's processes may lack.
pub fn placeholder(local: &[u8], nonblock: bool) -> Result<OwnedFd> {
    let family = if local.len() >= 2 { u16::from_ne_bytes([local[0], local[1]]) as i32 } else { -1 };
    let (level, opt) = match family {
        libc::AF_INET => (libc::SOL_IP, libc::IP_TRANSPARENT),
        libc::AF_INET6 => (libc::SOL_IPV6, libc::IPV6_TRANSPARENT),
        _ => {
            return Err(SysError::new(
                "placeholder",
                format!("address family {family}"),
                super::Errno(libc::EAFNOSUPPORT),
            ));
        }
    };
    let mut ty = libc::SOCK_STREAM | libc::SOCK_CLOEXEC;
    if nonblock {
        ty |= libc::SOCK_NONBLOCK;
    }
    // SAFETY: plain socket creation; no pointers.
    let fd = check(unsafe { libc::socket(family, ty, 0) } as _, "socket", "placeholder")?;
    // SAFETY: the kernel just returned this descriptor; nothing else owns it.
    let sock = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let one: i32 = 1;
    for (lvl, o, name) in [(libc::SOL_TCP, libc::TCP_REPAIR, "TCP_REPAIR"), (level, opt, "IP_TRANSPARENT")] {
        // SAFETY: `one` is a live i32 of the advertised size.
        let r = unsafe { libc::setsockopt(fd as i32, lvl, o, (&one as *const i32).cast(), 4) };
        check(r as _, "setsockopt", format!("placeholder {name}"))?;
    }
    // SAFETY: `local` is a caller-supplied sockaddr of `local.len()` bytes.
    let r = unsafe { libc::bind(fd as i32, local.as_ptr().cast(), local.len() as libc::socklen_t) };
    check(r as _, "bind", "placeholder to the service address")?;
    Ok(sock)
}

// ---------------------------------------------------------------------------
// Repair operations on one socket. Each is one system call; the order in
// which the takeover calls them is decided (and documented) in
// `crate::tcpstate::build`.

/// `TCP_TIMESTAMP` (not in every libc).
const TCP_TIMESTAMP: i32 = 24;
/// `TCP_REPAIR_WINDOW`.
const TCP_REPAIR_WINDOW: i32 = 29;
/// `SO_SNDBUFFORCE`.
const SO_SNDBUFFORCE: i32 = 32;
/// `SO_RCVBUFFORCE`.
const SO_RCVBUFFORCE: i32 = 33;
/// `SO_BUF_LOCK` (Linux >= 5.14): which of `SOCK_SNDBUF_LOCK` (1) and
/// `SOCK_RCVBUF_LOCK` (2) are set; writing 0 re-enables autotuning.
const SO_BUF_LOCK: i32 = 72;
/// `SIOCINQ` / `FIONREAD`.
const SIOCINQ: libc::c_ulong = 0x541B;
/// `SIOCOUTQ` / `TIOCOUTQ`: bytes in the send queue not yet acknowledged.
const SIOCOUTQ: libc::c_ulong = 0x5411;

/// How to leave or enter repair mode (`TCP_REPAIR` values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepairMode {
    /// `TCP_REPAIR_ON` (1).
    On,
    /// `TCP_REPAIR_OFF` (0): leaves repair mode and sends a window probe.
    Off,
    /// `TCP_REPAIR_OFF_NO_WP` (-1): leaves repair mode silently.
    OffNoWindowProbe,
}

/// The queue that `TCP_QUEUE_SEQ` and `send` act on in repair mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepairQueue {
    /// `TCP_NO_QUEUE` (0).
    None,
    /// `TCP_RECV_QUEUE` (1).
    Recv,
    /// `TCP_SEND_QUEUE` (2).
    Send,
}

/// One `struct tcp_repair_opt` for `TCP_REPAIR_OPTIONS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct RepairOpt {
    /// `TCPOPT_MSS` (2), `TCPOPT_WINDOW` (3), `TCPOPT_SACK_PERM` (4) or
    /// `TCPOPT_TIMESTAMP` (8).
    pub code: u32,
    /// The value (MSS; `snd_wscale | rcv_wscale << 16`; ignored for the others).
    pub value: u32,
}

/// `struct tcp_repair_window`, field for field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct RawRepairWindow {
    /// Sequence number of the segment that last updated the send window.
    pub snd_wl1: u32,
    /// The peer's window, scaled.
    pub snd_wnd: u32,
    /// Largest peer window seen.
    pub max_window: u32,
    /// Our last advertised window, scaled.
    pub rcv_wnd: u32,
    /// `rcv_nxt` when `rcv_wnd` was advertised.
    pub rcv_wup: u32,
}

fn setsockopt_raw<T>(fd: BorrowedFd, level: i32, opt: i32, value: &T, what: &str) -> Result<()> {
    let len = std::mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: `value` is a live, initialised `T` of `len` bytes for the call.
    let r = unsafe { libc::setsockopt(fd.as_raw_fd(), level, opt, (value as *const T).cast(), len) };
    check(r as _, "setsockopt", format!("fd {} {what}", fd.as_raw_fd())).map(drop)
}

fn setsockopt_int(fd: BorrowedFd, level: i32, opt: i32, value: i32, what: &str) -> Result<()> {
    setsockopt_raw(fd, level, opt, &value, what)
}

/// `TCP_REPAIR`.
pub fn set_repair(fd: BorrowedFd, mode: RepairMode) -> Result<()> {
    let v = match mode {
        RepairMode::On => 1,
        RepairMode::Off => 0,
        RepairMode::OffNoWindowProbe => -1,
    };
    setsockopt_int(fd, libc::SOL_TCP, libc::TCP_REPAIR, v, &format!("TCP_REPAIR={v}"))
}

/// `TCP_REPAIR_QUEUE`.
pub fn set_repair_queue(fd: BorrowedFd, queue: RepairQueue) -> Result<()> {
    let v = match queue {
        RepairQueue::None => 0,
        RepairQueue::Recv => 1,
        RepairQueue::Send => 2,
    };
    setsockopt_int(fd, libc::SOL_TCP, libc::TCP_REPAIR_QUEUE, v, &format!("TCP_REPAIR_QUEUE={v}"))
}

/// `TCP_QUEUE_SEQ` for the queue selected with [`set_repair_queue`] (only
/// in TCP_CLOSE state, i.e. before the repair connect).
pub fn set_queue_seq(fd: BorrowedFd, seq: u32) -> Result<()> {
    setsockopt_raw(fd, libc::SOL_TCP, libc::TCP_QUEUE_SEQ, &seq, &format!("TCP_QUEUE_SEQ={seq}"))
}

/// `TCP_REPAIR_OPTIONS` (only on a connected socket that has sent nothing).
pub fn set_repair_options(fd: BorrowedFd, opts: &[RepairOpt]) -> Result<()> {
    let len = std::mem::size_of_val(opts) as libc::socklen_t;
    // SAFETY: `opts` is a live slice of `#[repr(C)]` pairs of u32, `len` bytes.
    let r =
        unsafe { libc::setsockopt(fd.as_raw_fd(), libc::SOL_TCP, libc::TCP_REPAIR_OPTIONS, opts.as_ptr().cast(), len) };
    check(r as _, "setsockopt", format!("fd {} TCP_REPAIR_OPTIONS {opts:?}", fd.as_raw_fd())).map(drop)
}

/// `TCP_TIMESTAMP`: the TSval the socket sends from now on; on kernels
/// >= 6.7 bit 0 selects the µs clock (the caller encodes it).
pub fn set_timestamp(fd: BorrowedFd, value: u32) -> Result<()> {
    setsockopt_raw(fd, libc::SOL_TCP, TCP_TIMESTAMP, &value, &format!("TCP_TIMESTAMP={value}"))
}

/// `TCP_TIMESTAMP` read back: the TSval the socket would send now.
pub fn get_timestamp(fd: BorrowedFd) -> Result<u32> {
    super::fd::getsockopt_int(fd, libc::SOL_TCP, TCP_TIMESTAMP).map(|v| v as u32)
}

/// `TCP_REPAIR_WINDOW`.
pub fn set_repair_window(fd: BorrowedFd, w: &RawRepairWindow) -> Result<()> {
    setsockopt_raw(fd, libc::SOL_TCP, TCP_REPAIR_WINDOW, w, &format!("TCP_REPAIR_WINDOW {w:?}"))
}

/// `SO_SNDBUFFORCE` and `SO_RCVBUFFORCE` (CAP_NET_ADMIN); `None` leaves one as it is.
pub fn force_buffers(fd: BorrowedFd, snd: Option<i32>, rcv: Option<i32>) -> Result<()> {
    if let Some(v) = snd {
        setsockopt_int(fd, libc::SOL_SOCKET, SO_SNDBUFFORCE, v, &format!("SO_SNDBUFFORCE={v}"))?;
    }
    if let Some(v) = rcv {
        setsockopt_int(fd, libc::SOL_SOCKET, SO_RCVBUFFORCE, v, &format!("SO_RCVBUFFORCE={v}"))?;
    }
    Ok(())
}

/// `SO_BUF_LOCK = 0`: lets TCP autotune both buffers again after they were
/// forced (the sizes stay; autotuning only grows them).
pub fn unlock_buffers(fd: BorrowedFd) -> Result<()> {
    setsockopt_int(fd, libc::SOL_SOCKET, SO_BUF_LOCK, 0, "SO_BUF_LOCK=0")
}

/// `SO_SNDBUF` and `SO_RCVBUF` as the kernel reports them (doubled values).
pub fn buffer_sizes(fd: BorrowedFd) -> Result<(i32, i32)> {
    let s = super::fd::getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUF)?;
    let r = super::fd::getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF)?;
    Ok((s, r))
}

/// A raw `sockaddr_in` for `addr`, as `bind`/`connect` and [`placeholder`] take it.
pub fn sockaddr_in(addr: SocketAddrV4) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
    b[2..4].copy_from_slice(&addr.port().to_be_bytes());
    b[4..8].copy_from_slice(&addr.ip().octets());
    b
}

/// `connect` to an IPv4 peer; in repair mode this completes at once and
/// sends nothing.
pub fn connect_v4(fd: BorrowedFd, peer: SocketAddrV4) -> Result<()> {
    let sa = sockaddr_in(peer);
    // SAFETY: `sa` is a 16-byte sockaddr_in that outlives the call.
    let r = unsafe { libc::connect(fd.as_raw_fd(), sa.as_ptr().cast(), sa.len() as libc::socklen_t) };
    check(r as _, "connect", format!("fd {} to {peer}", fd.as_raw_fd())).map(drop)
}

/// One `send(MSG_NOSIGNAL | flags)`; `Ok(None)` for EAGAIN, `Ok(Some(n))`
/// for `n` bytes written. EINTR is retried.
pub fn send_once(fd: BorrowedFd, buf: &[u8], dont_wait: bool) -> Result<Option<usize>> {
    let flags = libc::MSG_NOSIGNAL | if dont_wait { libc::MSG_DONTWAIT } else { 0 };
    loop {
        // SAFETY: `buf` is a live slice of `buf.len()` readable bytes.
        let r = unsafe { libc::send(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len(), flags) };
        if r >= 0 {
            return Ok(Some(r as usize));
        }
        match Errno::last().0 {
            libc::EINTR => continue,
            libc::EAGAIN => return Ok(None),
            e => return Err(SysError::new("send", format!("fd {} ({} bytes)", fd.as_raw_fd(), buf.len()), Errno(e))),
        }
    }
}

/// One `recv(MSG_DONTWAIT)`; `Ok(None)` for EAGAIN, `Ok(Some(0))` at EOF.
pub fn recv_once(fd: BorrowedFd, buf: &mut [u8]) -> Result<Option<usize>> {
    loop {
        // SAFETY: `buf` is a live slice of `buf.len()` writable bytes.
        let r = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        if r >= 0 {
            return Ok(Some(r as usize));
        }
        match Errno::last().0 {
            libc::EINTR => continue,
            libc::EAGAIN => return Ok(None),
            e => return Err(SysError::new("recv", format!("fd {}", fd.as_raw_fd()), Errno(e))),
        }
    }
}

/// `shutdown(SHUT_WR)`: queue a FIN after the data.
pub fn shutdown_write(fd: BorrowedFd) -> Result<()> {
    // SAFETY: no pointers.
    let r = unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_WR) };
    check(r as _, "shutdown", format!("fd {} SHUT_WR", fd.as_raw_fd())).map(drop)
}

fn ioctl_int(fd: BorrowedFd, req: libc::c_ulong, name: &str) -> Result<u32> {
    let mut v: libc::c_int = 0;
    // SAFETY: the request writes one int to `v`.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req as _, &mut v) };
    check(r as _, "ioctl", format!("fd {} {name}", fd.as_raw_fd())).map(|_| v.max(0) as u32)
}

/// `SIOCOUTQ`: bytes in the send queue not yet acknowledged by the peer.
pub fn outq(fd: BorrowedFd) -> Result<u32> {
    ioctl_int(fd, SIOCOUTQ, "SIOCOUTQ")
}

/// `SIOCINQ`: bytes ready to read.
pub fn inq(fd: BorrowedFd) -> Result<u32> {
    ioctl_int(fd, SIOCINQ, "SIOCINQ")
}

/// The first bytes of `struct tcp_info`: state and a few counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TcpInfoLite {
    /// `tcpi_state` (1 = ESTABLISHED, 4 = FIN_WAIT1, 5 = FIN_WAIT2, 7 = CLOSE, 8 = CLOSE_WAIT, 9 = LAST_ACK).
    pub state: u8,
    /// `tcpi_retransmits`.
    pub retransmits: u8,
    /// `tcpi_rto` in µs.
    pub rto_us: u32,
    /// `tcpi_unacked` segments.
    pub unacked: u32,
    /// `tcpi_total_retrans`.
    pub total_retrans: u32,
    /// `tcpi_bytes_acked`.
    pub bytes_acked: u64,
    /// `tcpi_bytes_received`.
    pub bytes_received: u64,
}

/// `TCP_INFO`, the fields of [`TcpInfoLite`].
pub fn tcp_info(fd: BorrowedFd) -> Result<TcpInfoLite> {
    let mut buf = [0u8; 256];
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: `buf` and `len` are valid out-pointers of the advertised size.
    let r =
        unsafe { libc::getsockopt(fd.as_raw_fd(), libc::SOL_TCP, libc::TCP_INFO, buf.as_mut_ptr().cast(), &mut len) };
    check(r as _, "getsockopt", format!("fd {} TCP_INFO", fd.as_raw_fd()))?;
    let u32_at = |o: usize| u32::from_ne_bytes([buf[o], buf[o + 1], buf[o + 2], buf[o + 3]]);
    let u64_at = |o: usize| u64::from(u32_at(o)) | (u64::from(u32_at(o + 4)) << 32);
    // Offsets of `struct tcp_info` (include/uapi/linux/tcp.h): 8 u8 fields,
    // then u32s from byte 8; tcpi_total_retrans at 100; bytes_acked at 120,
    // bytes_received at 128.
    let got = len as usize;
    Ok(TcpInfoLite {
        state: buf[0],
        retransmits: buf[2],
        rto_us: u32_at(8),
        unacked: u32_at(24),
        total_retrans: if got >= 104 { u32_at(100) } else { 0 },
        bytes_acked: if got >= 128 { u64_at(120) } else { 0 },
        bytes_received: if got >= 136 { u64_at(128) } else { 0 },
    })
}
