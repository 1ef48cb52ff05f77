//! What each of the replica's descriptors refers to, decided on the primary.
//!
//! Classification looks at a `pidfd_getfd` copy (fstat, fstatfs, socket
//! options). The copy, its kind and its O_NONBLOCK flag are cached per
//! (process, fd). Invariants:
//! - the cache entry for an fd (and so the supervisor's copy of the file) is
//!   dropped before the replica's close, dup2, dup3 or close_range of it
//!   runs, and all entries of a process at exec and exit: a copy never keeps
//!   a file alive that the replica closed (no missing FIN, no stale epoll
//!   item), and a reused number is always classified afresh;
//! - the cached O_NONBLOCK flags are forgotten whenever the replica calls
//!   fcntl or ioctl(FIONBIO), the only ways to change them;
//! - a blocked thread waits on a `dup` of the cached copy, which
//!   [`super::wait`] drops when the thread wakes.

use super::threads::Pvid;
use crate::sys::{self, fd as sfd};
use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, OwnedFd};
use std::rc::Rc;

/// The kind of object behind a descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A regular file or directory: reads are verified, writes run on both.
    File,
    /// Created inside the tree and deterministic once threads are serialized:
    /// pipes, socketpairs, eventfds, /dev/null. Runs natively.
    Internal,
    /// Crosses the tree's boundary: network sockets, outside pipes and
    /// terminals, devices, /proc and /sys files, timerfds, inotify.
    Boundary(Boundary),
    /// A listening socket: accepted connections are inputs.
    Listener { unix: bool },
    /// An epoll set.
    Epoll,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Boundary {
    /// A TCP (or other INET stream) connection.
    Tcp,
    /// A datagram or other INET socket.
    Dgram,
    /// A unix socket whose peer is outside the tree.
    Unix,
    /// Netlink (host facts).
    Netlink,
    /// A pipe, FIFO or terminal shared with the outside (stdio).
    Stream,
    /// A file on /proc, /sys and similar (host facts).
    HostFile,
    /// A character device (random, tty, ...).
    Device,
    /// A timerfd or inotify (time and host events).
    Event,
}

const PROC_SUPER_MAGIC: i64 = 0x9fa0;
const SYSFS_MAGIC: i64 = 0x6265_6572;
const DEBUGFS_MAGIC: i64 = 0x6462_6720;
const TRACEFS_MAGIC: i64 = 0x7472_6163;
const CGROUP_SUPER_MAGIC: i64 = 0x0027_e0eb;
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
const SECURITYFS_MAGIC: i64 = 0x7363_6673;
const PIPEFS_MAGIC: i64 = 0x5049_5045;

/// What the supervisor keeps about one of the replica's descriptors.
struct Entry {
    kind: Kind,
    copy: Rc<OwnedFd>,
    nonblock: Cell<Option<bool>>,
}

#[derive(Default)]
pub struct Fds {
    cache: HashMap<(Pvid, i32), Entry>,
    /// Inodes of pipes, FIFOs and sockets the replica inherited from outside.
    external: HashSet<(u64, u64)>,
    /// Host pids of every process ever in the tree (for unix peers).
    pub tree_pids: HashSet<i32>,
}

impl Fds {
    /// Notes the objects behind the supervisor's own stdio, which the replica
    /// inherits: they cross the boundary even though they are pipes.
    pub fn note_inherited(&mut self) {
        let (i, o, e) = (std::io::stdin(), std::io::stdout(), std::io::stderr());
        for f in [i.as_fd(), o.as_fd(), e.as_fd()] {
            if let Ok(st) = sfd::fstat(f) {
                self.external.insert((st.st_dev, st.st_ino));
            }
        }
    }

    pub fn forget(&mut self, pvid: Pvid, fd: i32) {
        self.cache.remove(&(pvid, fd));
    }

    pub fn forget_range(&mut self, pvid: Pvid, lo: u32, hi: u32) {
        self.cache.retain(|&(p, fd), _| p != pvid || (fd as u32) < lo || (fd as u32) > hi);
    }

    pub fn forget_process(&mut self, pvid: Pvid) {
        self.cache.retain(|&(p, _), _| p != pvid);
    }

    /// The supervisor's copy of `fd` of process `pvid` (host pid `tgid`,
    /// reachable through `pidfd`) and its kind, classified the first time.
    /// `Err(errno)` is what the replica's own call would have failed with
    /// (EBADF for a closed fd).
    pub fn get(
        &mut self,
        pvid: Pvid,
        tgid: i32,
        pidfd: Option<&OwnedFd>,
        fd: i32,
    ) -> Result<(Rc<OwnedFd>, Kind), sys::Errno> {
        if let Some(e) = self.cache.get(&(pvid, fd)) {
            return Ok((e.copy.clone(), e.kind));
        }
        let copy = Rc::new(copy(pidfd, fd)?);
        let kind = self.classify(tgid, fd, &copy);
        self.cache.insert((pvid, fd), Entry { kind, copy: copy.clone(), nonblock: Cell::new(None) });
        Ok((copy, kind))
    }

    /// Whether the file behind `fd` has O_NONBLOCK set (cached).
    pub fn nonblock(&self, pvid: Pvid, fd: i32, copy: &OwnedFd) -> bool {
        let read = || sfd::get_fl(copy.as_fd()).map(|f| f & libc::O_NONBLOCK != 0).unwrap_or(true);
        match self.cache.get(&(pvid, fd)) {
            Some(e) => match e.nonblock.get() {
                Some(v) => v,
                None => {
                    let v = read();
                    e.nonblock.set(Some(v));
                    v
                }
            },
            None => read(),
        }
    }

    /// The replica may have changed file status flags: forget them all
    /// (processes can share an open file description).
    pub fn forget_flags(&mut self) {
        for e in self.cache.values() {
            e.nonblock.set(None);
        }
    }

    fn classify(&self, tgid: i32, fd: i32, copy: &OwnedFd) -> Kind {
        let f = copy.as_fd();
        let Ok(st) = sfd::fstat(f) else { return Kind::Boundary(Boundary::Device) };
        let magic = sfd::fstatfs_magic(f).unwrap_or(0);
        // Whatever the replica inherited from ftnet's own stdio is outside the
        // tree, even a regular file: the backup must not write to it.
        if self.external.contains(&(st.st_dev, st.st_ino)) {
            return Kind::Boundary(Boundary::Stream);
        }
        match st.st_mode & libc::S_IFMT {
            libc::S_IFREG | libc::S_IFDIR | libc::S_IFLNK => {
                if [
                    PROC_SUPER_MAGIC,
                    SYSFS_MAGIC,
                    DEBUGFS_MAGIC,
                    TRACEFS_MAGIC,
                    CGROUP_SUPER_MAGIC,
                    CGROUP2_SUPER_MAGIC,
                    SECURITYFS_MAGIC,
                ]
                .contains(&magic)
                {
                    Kind::Boundary(Boundary::HostFile)
                } else {
                    Kind::File
                }
            }
            libc::S_IFCHR => {
                let (maj, min) = (libc::major(st.st_rdev), libc::minor(st.st_rdev));
                // /dev/null, /dev/zero, /dev/full behave identically everywhere.
                if maj == 1 && matches!(min, 3 | 5 | 7) { Kind::Internal } else { Kind::Boundary(Boundary::Device) }
            }
            libc::S_IFIFO => {
                if magic == PIPEFS_MAGIC && !self.external.contains(&(st.st_dev, st.st_ino)) {
                    Kind::Internal
                } else {
                    Kind::Boundary(Boundary::Stream)
                }
            }
            libc::S_IFSOCK => self.classify_socket(f, &st),
            _ => {
                let link = sfd::readlink(std::path::Path::new(&format!("/proc/{tgid}/fd/{fd}"))).unwrap_or_default();
                if link.contains("eventpoll") {
                    Kind::Epoll
                } else if link.contains("[eventfd]") || link.contains("[pidfd]") {
                    Kind::Internal
                } else {
                    Kind::Boundary(Boundary::Event)
                }
            }
        }
    }

    fn classify_socket(&self, f: std::os::fd::BorrowedFd, st: &libc::stat) -> Kind {
        let domain = sfd::getsockopt_int(f, libc::SOL_SOCKET, libc::SO_DOMAIN).unwrap_or(-1);
        let ty = sfd::getsockopt_int(f, libc::SOL_SOCKET, libc::SO_TYPE).unwrap_or(-1);
        let listening = sfd::getsockopt_int(f, libc::SOL_SOCKET, libc::SO_ACCEPTCONN).unwrap_or(0) != 0;
        match domain {
            libc::AF_INET | libc::AF_INET6 => {
                if listening {
                    Kind::Listener { unix: false }
                } else if ty == libc::SOCK_STREAM {
                    Kind::Boundary(Boundary::Tcp)
                } else {
                    Kind::Boundary(Boundary::Dgram)
                }
            }
            libc::AF_UNIX => {
                if listening {
                    return Kind::Listener { unix: true };
                }
                if self.external.contains(&(st.st_dev, st.st_ino)) {
                    return Kind::Boundary(Boundary::Stream);
                }
                let mut cred = [0u8; 12];
                let peer = match sfd::getsockopt_raw(f, libc::SOL_SOCKET, libc::SO_PEERCRED, &mut cred) {
                    Ok(12) => i32::from_ne_bytes([cred[0], cred[1], cred[2], cred[3]]),
                    _ => 0,
                };
                if peer == 0 || self.tree_pids.contains(&peer) {
                    Kind::Internal
                } else {
                    Kind::Boundary(Boundary::Unix)
                }
            }
            libc::AF_NETLINK => Kind::Boundary(Boundary::Netlink),
            _ => Kind::Boundary(Boundary::Dgram),
        }
    }
}

/// Copies fd `fd` of the process behind `pidfd`; `Err(errno)` exactly as the
/// replica's own call would have failed (EBADF for a closed fd).
pub fn copy(pidfd: Option<&OwnedFd>, fd: i32) -> Result<OwnedFd, sys::Errno> {
    if fd < 0 {
        return Err(sys::Errno(libc::EBADF));
    }
    let Some(p) = pidfd else { return Err(sys::Errno(libc::ESRCH)) };
    sys::pidfd::getfd(p.as_fd(), fd)
}

/// The path of `fd` of `tgid`, for reports.
pub fn path_of(tgid: i32, fd: i32) -> Option<String> {
    sfd::readlink(std::path::Path::new(&format!("/proc/{tgid}/fd/{fd}")))
}
