//! Seccomp user notification: the listener side used by the supervisor, and
//! the structures of the filter the replica installs.
//!
//! Layouts follow `include/uapi/linux/seccomp.h`; [`check_sizes`] asks the
//! kernel for its sizes at start so a mismatch fails loudly instead of
//! corrupting a notification.

use super::{Errno, Result, SysError, check};
use std::os::fd::{AsRawFd, BorrowedFd};

pub const RET_KILL_PROCESS: u32 = 0x8000_0000;
pub const RET_ERRNO: u32 = 0x0005_0000;
pub const RET_USER_NOTIF: u32 = 0x7fc0_0000;
pub const RET_ALLOW: u32 = 0x7fff_0000;

pub const FILTER_FLAG_NEW_LISTENER: u64 = 1 << 3;
pub const FILTER_FLAG_WAIT_KILLABLE_RECV: u64 = 1 << 5;

pub const USER_NOTIF_FLAG_CONTINUE: u32 = 1;
pub const ADDFD_FLAG_SETFD: u32 = 1;
pub const ADDFD_FLAG_SEND: u32 = 2;
/// `SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP`: wake the target on the same CPU.
pub const USER_NOTIF_FD_SYNC_WAKE_UP: u64 = 1;

const IOCTL_NOTIF_RECV: u64 = 0xc050_2100;
const IOCTL_NOTIF_SEND: u64 = 0xc018_2101;
const IOCTL_NOTIF_ID_VALID: u64 = 0x4008_2102;
const IOCTL_NOTIF_ADDFD: u64 = 0x4018_2103;
const IOCTL_NOTIF_SET_FLAGS: u64 = 0x4008_2104;

/// `struct seccomp_data`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeccompData {
    pub nr: i32,
    pub arch: u32,
    pub instruction_pointer: u64,
    pub args: [u64; 6],
}

/// `struct seccomp_notif`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Notif {
    pub id: u64,
    pub pid: u32,
    pub flags: u32,
    pub data: SeccompData,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct NotifResp {
    id: u64,
    val: i64,
    error: i32,
    flags: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct NotifAddfd {
    id: u64,
    flags: u32,
    srcfd: u32,
    newfd: u32,
    newfd_flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct NotifSizes {
    seccomp_notif: u16,
    seccomp_notif_resp: u16,
    seccomp_data: u16,
}

/// One classic BPF instruction (`struct sock_filter`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockFilter {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

/// Verifies that the kernel's structure sizes match ours.
pub fn check_sizes() -> Result<()> {
    let mut s = NotifSizes::default();
    // SAFETY: SECCOMP_GET_NOTIF_SIZES (3) writes a `struct seccomp_notif_sizes`.
    let r = unsafe { libc::syscall(libc::SYS_seccomp, 3, 0, &mut s as *mut NotifSizes) };
    check(r, "seccomp", "SECCOMP_GET_NOTIF_SIZES")?;
    let ours = (std::mem::size_of::<Notif>(), std::mem::size_of::<NotifResp>(), std::mem::size_of::<SeccompData>());
    if (s.seccomp_notif as usize, s.seccomp_notif_resp as usize, s.seccomp_data as usize) != ours {
        return Err(SysError::new(
            "seccomp",
            format!(
                "kernel notification sizes {}/{}/{} differ from ftnet's {ours:?}",
                s.seccomp_notif, s.seccomp_notif_resp, s.seccomp_data
            ),
            Errno(libc::EINVAL),
        ));
    }
    Ok(())
}

/// Asks the kernel to wake notified threads on the supervisor's CPU.
pub fn set_sync_wakeup(listener: BorrowedFd) -> Result<()> {
    let flags: u64 = USER_NOTIF_FD_SYNC_WAKE_UP;
    // SAFETY: SET_FLAGS takes the flags by value in the pointer argument slot.
    let r = unsafe { libc::ioctl(listener.as_raw_fd(), IOCTL_NOTIF_SET_FLAGS as _, flags) };
    check(r as _, "ioctl", "SECCOMP_IOCTL_NOTIF_SET_FLAGS").map(drop)
}

/// Receives the next notification. `Ok(None)` when the target died before we
/// got it (ENOENT) or the call was interrupted.
pub fn recv(listener: BorrowedFd) -> Result<Option<Notif>> {
    let mut n = Notif::default();
    // SAFETY: RECV fills a zeroed `struct seccomp_notif` of the checked size.
    let r = unsafe { libc::ioctl(listener.as_raw_fd(), IOCTL_NOTIF_RECV as _, &mut n as *mut Notif) };
    if r < 0 {
        let e = Errno::last();
        if e.0 == libc::ENOENT || e.0 == libc::EINTR {
            return Ok(None);
        }
        return Err(SysError::new("ioctl", "SECCOMP_IOCTL_NOTIF_RECV", e));
    }
    Ok(Some(n))
}

/// Answers notification `id`: `Ok(value)` or `Err(errno)`, as the syscall's
/// result. Returns false when the target is gone (ENOENT).
pub fn respond(listener: BorrowedFd, id: u64, result: i64) -> Result<bool> {
    let (val, error) = if result < 0 { (0, result as i32) } else { (result, 0) };
    send(listener, NotifResp { id, val, error, flags: 0 })
}

/// Lets the notified call run natively in the replica.
pub fn respond_continue(listener: BorrowedFd, id: u64) -> Result<bool> {
    send(listener, NotifResp { id, val: 0, error: 0, flags: USER_NOTIF_FLAG_CONTINUE })
}

fn send(listener: BorrowedFd, mut resp: NotifResp) -> Result<bool> {
    // SAFETY: SEND reads a `struct seccomp_notif_resp` of the checked size.
    let r = unsafe { libc::ioctl(listener.as_raw_fd(), IOCTL_NOTIF_SEND as _, &mut resp as *mut NotifResp) };
    if r < 0 {
        let e = Errno::last();
        if e.0 == libc::ENOENT {
            return Ok(false);
        }
        return Err(SysError::new("ioctl", format!("SECCOMP_IOCTL_NOTIF_SEND id {}", resp.id), e));
    }
    Ok(true)
}

/// Whether notification `id` is still pending (its thread is alive and
/// waiting). Check after reading target memory, before trusting it.
pub fn id_valid(listener: BorrowedFd, id: u64) -> bool {
    let mut v = id;
    // SAFETY: ID_VALID reads a u64.
    let r = unsafe { libc::ioctl(listener.as_raw_fd(), IOCTL_NOTIF_ID_VALID as _, &mut v as *mut u64) };
    r == 0
}

/// Installs `src` in the target of notification `id`. With `at`, the fd gets
/// exactly that number; with `send`, the notified call completes atomically
/// returning the new fd number. Returns the number the target got.
pub fn addfd(
    listener: BorrowedFd,
    id: u64,
    src: BorrowedFd,
    at: Option<i32>,
    cloexec: bool,
    send: bool,
) -> std::result::Result<i32, Errno> {
    let mut flags = 0;
    if at.is_some() {
        flags |= ADDFD_FLAG_SETFD;
    }
    if send {
        flags |= ADDFD_FLAG_SEND;
    }
    let mut a = NotifAddfd {
        id,
        flags,
        srcfd: src.as_raw_fd() as u32,
        newfd: at.unwrap_or(0) as u32,
        newfd_flags: if cloexec { libc::O_CLOEXEC as u32 } else { 0 },
    };
    // SAFETY: ADDFD reads a `struct seccomp_notif_addfd`.
    let r = unsafe { libc::ioctl(listener.as_raw_fd(), IOCTL_NOTIF_ADDFD as _, &mut a as *mut NotifAddfd) };
    if r < 0 { Err(Errno::last()) } else { Ok(r) }
}
