//! Starting the replica: a fresh PID, mount and IPC namespace with an ftnet
//! init as pid 1, and the replica's root process as pid 2.
//!
//! ```text
//! supervisor ──clone(NEWPID|NEWNS|NEWIPC)──▶ init (pid 1): private mounts, /proc,
//!                                             bind mounts; waits for "go"; forks
//!                                             └──▶ replica (pid 2): personality,
//!                                                  TSC trap, CPU pin, rlimits, umask,
//!                                                  cwd, seccomp filter (listener = fd 3),
//!                                                  int3 (SIGTRAP stop), execve
//! ```
//!
//! Invariants:
//! - the code after `clone`/`fork` in the children never allocates: every
//!   string and pointer array is built by [`Plan::new`] beforehand;
//! - the replica closes every fd but 0, 1 and 2 before installing its filter,
//!   so the listener is always fd 3 (close-on-exec, gone after `execve`);
//! - any failure in a child is reported on fd 2 with a fixed message naming the
//!   step, and the child exits 126 (127 when `execve` fails).

use super::seccomp::{FILTER_FLAG_NEW_LISTENER, FILTER_FLAG_WAIT_KILLABLE_RECV, SockFilter};
use super::{Result, check};
use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};

/// The fd number the replica's seccomp listener has just before `execve`.
pub const LISTENER_FD: i32 = 3;

/// Everything the children need, built before `clone`.
pub struct Plan {
    exe: CString,
    argv: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    env: Vec<CString>,
    env_ptrs: Vec<*const libc::c_char>,
    cwd: CString,
    cpu: Option<usize>,
    rlimits: Vec<(i32, libc::rlimit)>,
    umask: u32,
    binds: Vec<(CString, CString)>,
    filter: Vec<SockFilter>,
    go: (OwnedFd, OwnedFd),
}

/// What the replica runs and in which environment.
pub struct Spec<'a> {
    pub exe: &'a [u8],
    pub argv: &'a [Vec<u8>],
    pub env: &'a [Vec<u8>],
    pub cwd: &'a [u8],
    pub cpu: Option<usize>,
    pub rlimits: &'a [(i32, u64, u64)],
    pub umask: u32,
    /// `(source, target)` bind mounts made in the replica's mount namespace.
    pub binds: &'a [(Vec<u8>, Vec<u8>)],
    pub filter: Vec<SockFilter>,
}

fn cstr(b: &[u8], what: &str) -> Result<CString> {
    CString::new(b.to_vec())
        .map_err(|_| super::SysError::new("spawn", format!("{what} contains a NUL byte"), super::Errno(libc::EINVAL)))
}

impl Plan {
    pub fn new(spec: Spec) -> Result<Plan> {
        let argv: Vec<CString> = spec.argv.iter().map(|a| cstr(a, "argument")).collect::<Result<_>>()?;
        let env: Vec<CString> = spec.env.iter().map(|a| cstr(a, "environment entry")).collect::<Result<_>>()?;
        let mut argv_ptrs: Vec<_> = argv.iter().map(|c| c.as_ptr()).collect();
        argv_ptrs.push(std::ptr::null());
        let mut env_ptrs: Vec<_> = env.iter().map(|c| c.as_ptr()).collect();
        env_ptrs.push(std::ptr::null());
        let binds = spec
            .binds
            .iter()
            .map(|(s, t)| Ok((cstr(s, "bind source")?, cstr(t, "bind target")?)))
            .collect::<Result<_>>()?;
        Ok(Plan {
            exe: cstr(spec.exe, "executable path")?,
            argv,
            argv_ptrs,
            env,
            env_ptrs,
            cwd: cstr(spec.cwd, "working directory")?,
            cpu: spec.cpu,
            rlimits: spec
                .rlimits
                .iter()
                .map(|&(r, cur, max)| (r, libc::rlimit { rlim_cur: cur, rlim_max: max }))
                .collect(),
            umask: spec.umask,
            binds,
            filter: spec.filter,
            go: super::fd::pipe()?,
        })
    }

    /// Lets the init fork the replica (call after seizing the init).
    pub fn release_init(&self) -> Result<()> {
        let r = super::fd::write(std::os::fd::AsFd::as_fd(&self.go.1), b"g");
        check(r as _, "write", "init go pipe").map(drop)
    }
}

/// Clones the init into new PID, mount and IPC namespaces. Returns its pid as
/// seen by the caller. The init blocks until [`Plan::release_init`].
pub fn spawn_init(plan: &Plan) -> Result<i32> {
    let flags = libc::CLONE_NEWPID | libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::SIGCHLD;
    // SAFETY: a fork-like clone (no new stack, no CLONE_VM): the child gets a
    // copy of the address space and only runs `init_main`, which never
    // returns and never allocates.
    let r = unsafe { libc::syscall(libc::SYS_clone, flags as libc::c_ulong, 0usize, 0usize, 0usize, 0usize) };
    let pid = check(r, "clone", "CLONE_NEWPID|CLONE_NEWNS|CLONE_NEWIPC")?;
    if pid == 0 {
        init_main(plan);
    }
    Ok(pid as i32)
}

fn die(msg: &[u8], code: i32) -> ! {
    // SAFETY: write of a static buffer, then _exit; both async-signal-safe.
    unsafe {
        libc::write(2, msg.as_ptr().cast(), msg.len());
        libc::_exit(code)
    }
}

fn reset_signals() {
    // SAFETY: only async-signal-safe calls on locals.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        for sig in 1..=64 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
    }
}

fn init_main(plan: &Plan) -> ! {
    reset_signals();
    // SAFETY: raw syscalls on pre-built C strings owned by `plan`, which stays
    // alive (this process image never frees it before exiting).
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        let none: *const libc::c_char = std::ptr::null();
        if libc::mount(none, c"/".as_ptr(), none, libc::MS_REC | libc::MS_PRIVATE, std::ptr::null()) != 0 {
            die(b"ftnet init: making mounts private failed\n", 126);
        }
        if libc::mount(
            c"proc".as_ptr(),
            c"/proc".as_ptr(),
            c"proc".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            std::ptr::null(),
        ) != 0
        {
            die(b"ftnet init: mounting /proc failed\n", 126);
        }
        for (src, dst) in &plan.binds {
            if libc::mount(src.as_ptr(), dst.as_ptr(), none, libc::MS_BIND | libc::MS_REC, std::ptr::null()) != 0 {
                die(b"ftnet init: bind-mounting a state directory copy failed\n", 126);
            }
        }
        // The init must not keep the daemon's sockets (link, NFQUEUE, control)
        // alive: close everything but the go pipe.
        let go = plan.go.0.as_raw_fd() as u32;
        if go > 3 {
            libc::syscall(libc::SYS_close_range, 3u32, go - 1, 0u32);
        }
        libc::syscall(libc::SYS_close_range, go + 1, u32::MAX, 0u32);
        let mut b = 0u8;
        if libc::read(plan.go.0.as_raw_fd(), (&mut b as *mut u8).cast(), 1) != 1 {
            die(b"ftnet init: supervisor went away before start\n", 126);
        }
        let child = libc::syscall(libc::SYS_fork);
        if child < 0 {
            die(b"ftnet init: fork failed\n", 126);
        }
        if child == 0 {
            replica_main(plan);
        }
        // Reap everything until the namespace is empty; orphans come here.
        let mut code = 0;
        loop {
            let mut status = 0;
            let r = libc::waitpid(-1, &mut status, libc::__WALL);
            if r < 0 {
                if *libc::__errno_location() == libc::EINTR {
                    continue;
                }
                break;
            }
            if r as libc::c_long == child {
                code = if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { 128 + libc::WTERMSIG(status) };
            }
        }
        libc::_exit(code)
    }
}

fn replica_main(plan: &Plan) -> ! {
    // SAFETY: raw syscalls on pre-built buffers owned by `plan`.
    unsafe {
        if libc::personality(libc::ADDR_NO_RANDOMIZE as libc::c_ulong) < 0 {
            die(b"ftnet: personality(ADDR_NO_RANDOMIZE) failed\n", 126);
        }
        if libc::prctl(libc::PR_SET_TSC, libc::PR_TSC_SIGSEGV) != 0 {
            die(b"ftnet: prctl(PR_SET_TSC) failed\n", 126);
        }
        if let Some(cpu) = plan.cpu {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                die(b"ftnet: pinning the replica to its CPU failed\n", 126);
            }
        }
        for (res, lim) in &plan.rlimits {
            if libc::setrlimit(*res as _, lim) != 0 {
                die(b"ftnet: setting a recorded resource limit failed\n", 126);
            }
        }
        libc::umask(plan.umask);
        if libc::chdir(plan.cwd.as_ptr()) != 0 {
            die(b"ftnet: changing to the recorded working directory failed\n", 126);
        }
        if libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) != 0 {
            die(b"ftnet: close_range failed\n", 126);
        }
        let prog =
            libc::sock_fprog { len: plan.filter.len() as u16, filter: plan.filter.as_ptr() as *mut libc::sock_filter };
        let flags = FILTER_FLAG_NEW_LISTENER | FILTER_FLAG_WAIT_KILLABLE_RECV;
        let fd =
            libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, flags, &prog as *const libc::sock_fprog);
        if fd != LISTENER_FD as libc::c_long {
            die(b"ftnet: installing the seccomp filter failed\n", 126);
        }
        // Stop without a system call (every call may now be intercepted, and
        // nobody listens yet): int3 raises SIGTRAP, and the supervisor takes
        // the listener (fd 3) at its delivery stop and suppresses it.
        std::arch::asm!("int3");
        let _ = &plan.argv;
        let _ = &plan.env;
        libc::execve(plan.exe.as_ptr(), plan.argv_ptrs.as_ptr(), plan.env_ptrs.as_ptr());
        die(b"ftnet: execve of the replica's command failed\n", 127)
    }
}

/// `getrlimit(resource)`; false when the resource is unknown.
pub fn getrlimit(resource: i32, out: &mut libc::rlimit) -> bool {
    // SAFETY: `out` is a valid rlimit to fill.
    unsafe { libc::getrlimit(resource as _, out) == 0 }
}

/// Whether the process runs with uid 0.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no failure mode and no pointers.
    unsafe { libc::geteuid() == 0 }
}
