//! The only module of ftnet that uses `unsafe`.
//!
//! Invariants this module keeps:
//! - every `unsafe` block has a `// SAFETY:` line saying why it is sound;
//! - every wrapper returns [`SysError`], which names the call, the object it
//!   was applied to and the errno, so callers never print a bare "EPERM";
//! - file descriptors handed out are [`std::os::fd::OwnedFd`], so they are
//!   closed exactly once.
//!
//! Code that runs between `clone` and `execve` in a child (see [`spawn`]) must
//! not allocate; it only uses pre-built buffers and raw syscalls.

pub mod fd;
pub mod mem;
pub mod netlink;
pub mod packet;
pub mod pidfd;
pub mod ptrace;
pub mod seccomp;
pub mod spawn;
pub mod tcp_repair;
pub mod tsc;

use std::fmt;

/// An `errno` value.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Errno(pub i32);

impl Errno {
    /// The calling thread's current errno.
    pub fn last() -> Errno {
        Errno(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }
}

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = errno_name(self.0);
        write!(f, "{name} ({})", std::io::Error::from_raw_os_error(self.0))
    }
}

/// A failed system call: which call, on what, and the errno.
#[derive(Debug, thiserror::Error)]
#[error("{call}({what}) failed: {errno}")]
pub struct SysError {
    pub call: &'static str,
    pub what: String,
    pub errno: Errno,
}

impl SysError {
    pub fn new(call: &'static str, what: impl fmt::Display, errno: Errno) -> SysError {
        SysError { call, what: what.to_string(), errno }
    }
    /// Builds the error from the calling thread's errno.
    pub fn last(call: &'static str, what: impl fmt::Display) -> SysError {
        SysError::new(call, what, Errno::last())
    }
}

pub type Result<T> = std::result::Result<T, SysError>;

/// Turns a `-1`-on-error return into a `Result`.
pub(crate) fn check(ret: libc::c_long, call: &'static str, what: impl fmt::Display) -> Result<libc::c_long> {
    if ret < 0 { Err(SysError::last(call, what)) } else { Ok(ret) }
}

/// The symbolic name of an errno, for messages and reports.
pub fn errno_name(e: i32) -> &'static str {
    match e {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::ESRCH => "ESRCH",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::EBADF => "EBADF",
        libc::ECHILD => "ECHILD",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::EMFILE => "EMFILE",
        libc::ENOSPC => "ENOSPC",
        libc::ESPIPE => "ESPIPE",
        libc::EPIPE => "EPIPE",
        libc::ENOSYS => "ENOSYS",
        libc::ENOTSOCK => "ENOTSOCK",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EADDRINUSE => "EADDRINUSE",
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::ECONNRESET => "ECONNRESET",
        libc::ENOTCONN => "ENOTCONN",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::EINPROGRESS => "EINPROGRESS",
        libc::ENOTTY => "ENOTTY",
        libc::ERANGE => "ERANGE",
        libc::E2BIG => "E2BIG",
        libc::ENOEXEC => "ENOEXEC",
        libc::EROFS => "EROFS",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ELOOP => "ELOOP",
        libc::ENODATA => "ENODATA",
        libc::EPROTONOSUPPORT => "EPROTONOSUPPORT",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::ENOPROTOOPT => "ENOPROTOOPT",
        libc::EALREADY => "EALREADY",
        libc::EISCONN => "EISCONN",
        libc::ENOBUFS => "ENOBUFS",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::ECONNABORTED => "ECONNABORTED",
        libc::EMSGSIZE => "EMSGSIZE",
        512 => "ERESTARTSYS",
        513 => "ERESTARTNOINTR",
        514 => "ERESTARTNOHAND",
        516 => "ERESTART_RESTARTBLOCK",
        _ => "E?",
    }
}
