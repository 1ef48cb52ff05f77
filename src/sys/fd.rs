//! Thin wrappers over fd-level system calls used by the supervisor on its own
//! descriptors (epoll, signalfd, and copies of the replica's fds).
//!
//! Every function takes a borrowed fd and returns a [`Result`] naming the
//! call; buffers are plain slices, so no wrapper can write out of bounds.

use super::{Errno, Result, SysError, check};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

fn owned(fd: libc::c_long) -> OwnedFd {
    // SAFETY: `fd` was just returned by the kernel as a new descriptor that
    // nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd as RawFd) }
}

/// `epoll_create1(EPOLL_CLOEXEC)`.
pub fn epoll_create() -> Result<OwnedFd> {
    // SAFETY: no pointers are passed.
    let r = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    check(r as _, "epoll_create1", "").map(owned)
}

/// Adds, modifies or removes `fd` in the epoll set `ep`, with `data` as tag.
pub fn epoll_ctl(ep: BorrowedFd, op: i32, fd: BorrowedFd, events: u32, data: u64) -> Result<()> {
    let mut ev = libc::epoll_event { events, u64: data };
    // SAFETY: `ev` is a valid epoll_event for the duration of the call.
    let r = unsafe { libc::epoll_ctl(ep.as_raw_fd(), op, fd.as_raw_fd(), &mut ev) };
    if r == 0 {
        return Ok(());
    }
    check(r as _, "epoll_ctl", format!("fd {}", fd.as_raw_fd())).map(drop)
}

/// `epoll_wait` into `out`; returns how many entries were filled.
pub fn epoll_wait(ep: BorrowedFd, out: &mut [libc::epoll_event], timeout_ms: i32) -> Result<usize> {
    let max = out.len().min(i32::MAX as usize) as i32;
    // SAFETY: `out` has room for `max` events.
    let r = unsafe { libc::epoll_wait(ep.as_raw_fd(), out.as_mut_ptr(), max, timeout_ms) };
    if r < 0 && Errno::last().0 == libc::EINTR {
        return Ok(0);
    }
    check(r as _, "epoll_wait", format!("epoll fd {}", ep.as_raw_fd())).map(|n| n as usize)
}

/// Blocks `signals` in the calling thread and returns a signalfd for them.
pub fn signalfd_for(signals: &[i32]) -> Result<OwnedFd> {
    block_signals(signals)?;
    let set = sigset(signals);
    // SAFETY: `set` is an initialised signal set that outlives the call.
    let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
    check(fd as _, "signalfd", format!("{signals:?}")).map(owned)
}

/// Reads one pending `signalfd_siginfo`; `None` when none is pending.
pub fn signalfd_read(fd: BorrowedFd) -> Result<Option<libc::signalfd_siginfo>> {
    // SAFETY: signalfd_siginfo is plain old data; zeroed is a valid value.
    let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::signalfd_siginfo>();
    // SAFETY: `info` is `size` writable bytes.
    let r = unsafe { libc::read(fd.as_raw_fd(), (&mut info as *mut libc::signalfd_siginfo).cast(), size) };
    if r < 0 {
        let e = Errno::last();
        if e.0 == libc::EAGAIN {
            return Ok(None);
        }
        return Err(SysError::new("read", "signalfd", e));
    }
    Ok(Some(info))
}

/// Sets the disposition of `sig` to ignore (`true`) or default (`false`).
pub fn ignore_signal(sig: i32, ignore: bool) -> Result<()> {
    let h = if ignore { libc::SIG_IGN } else { libc::SIG_DFL };
    // SAFETY: installs a standard disposition, no handler code.
    let r = unsafe { libc::signal(sig, h) };
    if r == libc::SIG_ERR { Err(SysError::last("signal", sig)) } else { Ok(()) }
}

/// `fstat` on a descriptor.
pub fn fstat(fd: BorrowedFd) -> Result<libc::stat> {
    // SAFETY: stat is plain old data.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid out-pointer.
    let r = unsafe { libc::fstat(fd.as_raw_fd(), &mut st) };
    check(r as _, "fstat", fd.as_raw_fd()).map(|_| st)
}

/// `fstatfs` on a descriptor; returns the filesystem magic.
pub fn fstatfs_magic(fd: BorrowedFd) -> Result<i64> {
    // SAFETY: statfs is plain old data.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid out-pointer.
    let r = unsafe { libc::fstatfs(fd.as_raw_fd(), &mut st) };
    check(r as _, "fstatfs", fd.as_raw_fd()).map(|_| st.f_type)
}

/// The file status flags (`F_GETFL`).
pub fn get_fl(fd: BorrowedFd) -> Result<i32> {
    // SAFETY: F_GETFL takes no pointer.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    check(r as _, "fcntl(F_GETFL)", fd.as_raw_fd()).map(|v| v as i32)
}

/// An integer socket option.
pub fn getsockopt_int(fd: BorrowedFd, level: i32, opt: i32) -> Result<i32> {
    let mut v: i32 = 0;
    let mut len = std::mem::size_of::<i32>() as libc::socklen_t;
    // SAFETY: `v` and `len` are valid out-pointers of the advertised size.
    let r = unsafe { libc::getsockopt(fd.as_raw_fd(), level, opt, (&mut v as *mut i32).cast(), &mut len) };
    if r == 0 {
        return Ok(v);
    }
    check(r as _, "getsockopt", format!("fd {} level {level} opt {opt}", fd.as_raw_fd())).map(|_| v)
}

/// Sets an integer socket option.
pub fn setsockopt_int(fd: BorrowedFd, level: i32, opt: i32, v: i32) -> Result<()> {
    // SAFETY: `v` is a valid i32 of the advertised size.
    let r = unsafe {
        libc::setsockopt(fd.as_raw_fd(), level, opt, (&v as *const i32).cast(), std::mem::size_of::<i32>() as _)
    };
    check(r as _, "setsockopt", format!("fd {} level {level} opt {opt}={v}", fd.as_raw_fd())).map(drop)
}

/// A raw socket option into `buf`; returns the length the kernel reported.
pub fn getsockopt_raw(fd: BorrowedFd, level: i32, opt: i32, buf: &mut [u8]) -> std::result::Result<usize, Errno> {
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: `buf` is `len` writable bytes.
    let r = unsafe { libc::getsockopt(fd.as_raw_fd(), level, opt, buf.as_mut_ptr().cast(), &mut len) };
    if r < 0 { Err(Errno::last()) } else { Ok(len as usize) }
}

/// Sets a raw socket option from `buf`.
pub fn setsockopt_raw(fd: BorrowedFd, level: i32, opt: i32, buf: &[u8]) -> std::result::Result<(), Errno> {
    // SAFETY: `buf` is `buf.len()` readable bytes.
    let r = unsafe { libc::setsockopt(fd.as_raw_fd(), level, opt, buf.as_ptr().cast(), buf.len() as _) };
    if r < 0 { Err(Errno::last()) } else { Ok(()) }
}

/// `poll` on one descriptor; returns the revents (0 on timeout).
pub fn poll_one(fd: BorrowedFd, events: i16, timeout_ms: i32) -> Result<i16> {
    let mut p = libc::pollfd { fd: fd.as_raw_fd(), events, revents: 0 };
    // SAFETY: `p` is one valid pollfd.
    let r = unsafe { libc::poll(&mut p, 1, timeout_ms) };
    if r < 0 && Errno::last().0 == libc::EINTR {
        return Ok(0);
    }
    check(r as _, "poll", fd.as_raw_fd()).map(|_| p.revents)
}

/// `poll` on many descriptors with raw results, for emulating the replica's
/// own poll/select. Returns the count or the errno.
pub fn poll_raw(fds: &mut [libc::pollfd]) -> std::result::Result<usize, Errno> {
    // SAFETY: `fds` is a valid array of `len` pollfd.
    let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as _, 0) };
    if r < 0 { Err(Errno::last()) } else { Ok(r as usize) }
}

/// Raw `syscall(nr, args...)` on descriptors the supervisor owns, returning the
/// kernel's result or `-errno`, exactly as the replica would have seen it.
/// Only for calls whose pointer arguments point into `bufs` owned by the caller.
pub fn raw_syscall6(nr: i64, a: [u64; 6]) -> i64 {
    // SAFETY: callers pass pointer arguments only to live buffers of the sizes
    // they advertise in the other arguments (checked at each call site).
    let r = unsafe { libc::syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]) };
    if r < 0 { -(Errno::last().0 as i64) } else { r }
}

/// `read` into a buffer; `-errno` on failure.
pub fn read(fd: BorrowedFd, buf: &mut [u8]) -> i64 {
    // SAFETY: `buf` is `len` writable bytes.
    let r = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 { -(Errno::last().0 as i64) } else { r as i64 }
}

/// `pread` into a buffer; `-errno` on failure.
pub fn pread(fd: BorrowedFd, buf: &mut [u8], off: i64) -> i64 {
    // SAFETY: `buf` is `len` writable bytes.
    let r = unsafe { libc::pread(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), off) };
    if r < 0 { -(Errno::last().0 as i64) } else { r as i64 }
}

/// `write` from a buffer; `-errno` on failure.
pub fn write(fd: BorrowedFd, buf: &[u8]) -> i64 {
    // SAFETY: `buf` is `len` readable bytes.
    let r = unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
    if r < 0 { -(Errno::last().0 as i64) } else { r as i64 }
}

/// `recv` with flags; `-errno` on failure.
pub fn recv(fd: BorrowedFd, buf: &mut [u8], flags: i32) -> i64 {
    // SAFETY: `buf` is `len` writable bytes.
    let r = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), flags) };
    if r < 0 { -(Errno::last().0 as i64) } else { r as i64 }
}

/// `send` with flags; `-errno` on failure.
pub fn send(fd: BorrowedFd, buf: &[u8], flags: i32) -> i64 {
    // SAFETY: `buf` is `len` readable bytes.
    let r = unsafe { libc::send(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len(), flags) };
    if r < 0 { -(Errno::last().0 as i64) } else { r as i64 }
}

/// `recvfrom` with flags, also returning the source address bytes.
pub fn recvfrom(fd: BorrowedFd, buf: &mut [u8], flags: i32, addr: &mut [u8]) -> (i64, usize) {
    let mut alen = addr.len() as libc::socklen_t;
    // SAFETY: `buf` and `addr` are writable for their lengths; `alen` is valid.
    let r = unsafe {
        libc::recvfrom(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), flags, addr.as_mut_ptr().cast(), &mut alen)
    };
    if r < 0 { (-(Errno::last().0 as i64), 0) } else { (r as i64, alen as usize) }
}

/// `accept4` returning the new fd and the peer address bytes.
pub fn accept4(fd: BorrowedFd, flags: i32, addr: &mut [u8]) -> std::result::Result<(OwnedFd, usize), Errno> {
    let mut alen = addr.len() as libc::socklen_t;
    // SAFETY: `addr` is writable for `alen` bytes.
    let r = unsafe { libc::accept4(fd.as_raw_fd(), addr.as_mut_ptr().cast(), &mut alen, flags) };
    if r < 0 { Err(Errno::last()) } else { Ok((owned(r as _), alen as usize)) }
}

/// `getsockname` (or `getpeername` when `peer`) into `addr`.
pub fn sockname(fd: BorrowedFd, peer: bool, addr: &mut [u8]) -> std::result::Result<usize, Errno> {
    let mut alen = addr.len() as libc::socklen_t;
    // SAFETY: `addr` is writable for `alen` bytes.
    let r = unsafe {
        if peer {
            libc::getpeername(fd.as_raw_fd(), addr.as_mut_ptr().cast(), &mut alen)
        } else {
            libc::getsockname(fd.as_raw_fd(), addr.as_mut_ptr().cast(), &mut alen)
        }
    };
    if r < 0 { Err(Errno::last()) } else { Ok(alen as usize) }
}

/// `lseek(fd, 0, SEEK_CUR)`; `None` for unseekable files.
pub fn tell(fd: BorrowedFd) -> Option<i64> {
    // SAFETY: no pointers.
    let r = unsafe { libc::lseek(fd.as_raw_fd(), 0, libc::SEEK_CUR) };
    if r < 0 { None } else { Some(r) }
}

/// Reads a symlink (e.g. `/proc/PID/fd/N`).
pub fn readlink(path: &std::path::Path) -> Option<String> {
    std::fs::read_link(path).ok().map(|p| p.to_string_lossy().into_owned())
}

/// A pipe with both ends close-on-exec.
pub fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for two descriptors.
    let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    check(r as _, "pipe2", "").map(|_| (owned(fds[0] as _), owned(fds[1] as _)))
}

/// Pins the calling thread to `cpu`.
pub fn pin_self(cpu: usize) -> Result<()> {
    // SAFETY: cpu_set_t is plain old data; CPU_SET writes inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        let r = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        check(r as _, "sched_setaffinity", format!("cpu {cpu}")).map(drop)
    }
}

/// The number of CPUs the calling thread may run on.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain old data and sched_getaffinity fills it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return vec![0];
        }
        (0..libc::CPU_SETSIZE as usize).filter(|&c| libc::CPU_ISSET(c, &set)).collect()
    }
}

/// `tgkill(tgid, tid, sig)`.
pub fn tgkill(tgid: i32, tid: i32, sig: i32) -> Result<()> {
    // SAFETY: no pointers.
    let r = unsafe { libc::syscall(libc::SYS_tgkill, tgid, tid, sig) };
    if r == 0 {
        return Ok(());
    }
    check(r, "tgkill", format!("tid {tid} signal {sig}")).map(drop)
}

/// `kill(pid, sig)`.
pub fn kill(pid: i32, sig: i32) -> Result<()> {
    // SAFETY: no pointers.
    let r = unsafe { libc::kill(pid, sig) };
    check(r as _, "kill", format!("pid {pid} signal {sig}")).map(drop)
}

/// `waitpid(pid, __WALL | flags)`: `None` when nothing is ready (WNOHANG).
pub fn waitpid(pid: i32, flags: i32) -> std::result::Result<Option<(i32, i32)>, Errno> {
    let mut status = 0;
    // SAFETY: `status` is a valid out-pointer.
    let r = unsafe { libc::waitpid(pid, &mut status, flags | libc::__WALL) };
    if r < 0 {
        return Err(Errno::last());
    }
    Ok(if r == 0 { None } else { Some((r, status)) })
}

/// The current time of `clock` in nanoseconds.
pub fn clock_ns(clock: libc::clockid_t) -> i64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid out-pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

/// `sysinfo` into raw bytes (the struct as the kernel lays it out).
pub fn sysinfo_bytes() -> Vec<u8> {
    // SAFETY: sysinfo is plain old data filled by the kernel.
    unsafe {
        let mut si: libc::sysinfo = std::mem::zeroed();
        libc::sysinfo(&mut si);
        std::slice::from_raw_parts((&si as *const libc::sysinfo).cast::<u8>(), std::mem::size_of::<libc::sysinfo>())
            .to_vec()
    }
}

/// Views a plain-old-data value as bytes.
pub fn pod_bytes<T: Copy>(v: &T) -> Vec<u8> {
    // SAFETY: `T: Copy` values used here are kernel structs without padding
    // invariants; reading their bytes is always defined for initialised values.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()).to_vec() }
}

/// Takes ownership of a descriptor a raw syscall just returned.
pub fn own(fd: i32) -> OwnedFd {
    owned(fd as libc::c_long)
}

/// A non-blocking, close-on-exec eventfd (a wake-up between threads).
pub fn eventfd() -> Result<OwnedFd> {
    // SAFETY: no pointers.
    let r = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    check(r as _, "eventfd", "").map(owned)
}

/// Signals an eventfd (never blocks; a saturated counter is still readable).
pub fn eventfd_signal(fd: BorrowedFd) {
    let one = 1u64.to_ne_bytes();
    // SAFETY: `one` is 8 readable bytes.
    unsafe { libc::write(fd.as_raw_fd(), one.as_ptr().cast(), 8) };
}

/// Clears an eventfd's counter.
pub fn eventfd_drain(fd: BorrowedFd) {
    let mut b = [0u8; 8];
    // SAFETY: `b` is 8 writable bytes.
    unsafe { libc::read(fd.as_raw_fd(), b.as_mut_ptr().cast(), 8) };
}

/// `poll` on several descriptors for POLLIN; returns which are readable.
pub fn poll_in(fds: &[BorrowedFd], timeout_ms: i32) -> Vec<bool> {
    let mut p: Vec<libc::pollfd> =
        fds.iter().map(|f| libc::pollfd { fd: f.as_raw_fd(), events: libc::POLLIN, revents: 0 }).collect();
    // SAFETY: `p` is a valid array of pollfd.
    let r = unsafe { libc::poll(p.as_mut_ptr(), p.len() as _, timeout_ms) };
    if r <= 0 {
        return vec![false; fds.len()];
    }
    p.iter().map(|x| x.revents != 0).collect()
}

/// The signal set holding `signals`.
fn sigset(signals: &[i32]) -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the zeroed set before sigaddset uses it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in signals {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Blocks `signals` in the calling thread (and the threads it starts later).
pub fn block_signals(signals: &[i32]) -> Result<()> {
    let set = sigset(signals);
    // SAFETY: `set` is an initialised signal set that outlives the call.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if r != 0 {
        return Err(SysError::new("pthread_sigmask", "SIG_BLOCK", Errno(r)));
    }
    Ok(())
}
