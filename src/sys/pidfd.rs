//! `pidfd_open` and `pidfd_getfd`: how the supervisor borrows the replica's
//! file descriptors.
//!
//! Invariant: a copy obtained here refers to the same open file description as
//! the replica's fd (shared offset and status flags). Callers must drop copies
//! before the replica's close, dup2/dup3, close_range, exec or exit completes,
//! or the file stays alive (no FIN, stale epoll items).

use super::{Result, check};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// A pidfd for process (or thread, with PIDFD_THREAD) `pid`.
pub fn open(pid: i32) -> Result<OwnedFd> {
    // SAFETY: no pointers.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    // SAFETY: on success the kernel returned a fresh descriptor we now own.
    check(r, "pidfd_open", format!("pid {pid}")).map(|fd| unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// A copy of `fd` from the process behind `pidfd`.
pub fn getfd(pidfd: BorrowedFd, fd: i32) -> std::result::Result<OwnedFd, super::Errno> {
    // SAFETY: no pointers.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if r < 0 {
        return Err(super::Errno::last());
    }
    // SAFETY: the kernel returned a fresh descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(r as i32) })
}
