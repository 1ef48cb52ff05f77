//! ptrace for events only: fork/clone/exec/exit, signal-delivery stops and the
//! rdtsc fault. The supervisor never asks for per-syscall stops.
//!
//! Invariant: every call here must come from the thread that seized the
//! tracee (the kernel enforces it; the supervisor runs one tracer thread).

use super::{Result, check};

pub const OPTIONS: i64 = (libc::PTRACE_O_TRACEFORK
    | libc::PTRACE_O_TRACEVFORK
    | libc::PTRACE_O_TRACECLONE
    | libc::PTRACE_O_TRACEEXEC
    | libc::PTRACE_O_TRACEVFORKDONE
    | libc::PTRACE_O_TRACEEXIT
    | libc::PTRACE_O_EXITKILL) as i64;

fn raw(req: libc::c_uint, tid: i32, addr: usize, data: usize, what: &str) -> Result<libc::c_long> {
    // SAFETY: callers pass `addr`/`data` that are either plain integers or
    // pointers to live locals of the size the request expects.
    let r = unsafe { libc::ptrace(req, tid, addr, data) };
    if r >= 0 {
        return Ok(r);
    }
    check(r, "ptrace", format!("{what} tid {tid}"))
}

/// `PTRACE_SEIZE` with the event options ftnet uses.
pub fn seize(tid: i32, options: i64) -> Result<()> {
    raw(libc::PTRACE_SEIZE, tid, 0, options as usize, "SEIZE").map(drop)
}

/// Resumes a stopped tracee, delivering `sig` (0 for none).
pub fn cont(tid: i32, sig: i32) -> Result<()> {
    raw(libc::PTRACE_CONT, tid, 0, sig as usize, "CONT").map(drop)
}

/// Resumes a tracee in group-stop without ending the stop.
pub fn listen(tid: i32) -> Result<()> {
    raw(libc::PTRACE_LISTEN, tid, 0, 0, "LISTEN").map(drop)
}

/// Detaches from a stopped tracee.
pub fn detach(tid: i32) -> Result<()> {
    raw(libc::PTRACE_DETACH, tid, 0, 0, "DETACH").map(drop)
}

/// The event message of the current stop (new tid, exit status, old tid).
pub fn event_msg(tid: i32) -> Result<u64> {
    let mut v: libc::c_ulong = 0;
    raw(libc::PTRACE_GETEVENTMSG, tid, 0, &mut v as *mut libc::c_ulong as usize, "GETEVENTMSG")?;
    Ok(v as u64)
}

/// The raw 128-byte siginfo of the current signal-delivery stop.
pub fn get_siginfo(tid: i32) -> Result<[u8; 128]> {
    let mut b = [0u8; 128];
    raw(libc::PTRACE_GETSIGINFO, tid, 0, b.as_mut_ptr() as usize, "GETSIGINFO")?;
    Ok(b)
}

/// Replaces the siginfo of the current signal-delivery stop.
pub fn set_siginfo(tid: i32, info: &[u8; 128]) -> Result<()> {
    raw(libc::PTRACE_SETSIGINFO, tid, 0, info.as_ptr() as usize, "SETSIGINFO").map(drop)
}

/// The general registers of a stopped tracee.
pub fn get_regs(tid: i32) -> Result<libc::user_regs_struct> {
    // SAFETY: user_regs_struct is plain old data.
    let mut r: libc::user_regs_struct = unsafe { std::mem::zeroed() };
    raw(libc::PTRACE_GETREGS, tid, 0, &mut r as *mut libc::user_regs_struct as usize, "GETREGS")?;
    Ok(r)
}

/// Sets the general registers of a stopped tracee.
pub fn set_regs(tid: i32, regs: &libc::user_regs_struct) -> Result<()> {
    raw(libc::PTRACE_SETREGS, tid, 0, regs as *const libc::user_regs_struct as usize, "SETREGS").map(drop)
}

/// Decoded `waitpid` status of a traced thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// Exited with a status code.
    Exited(i32),
    /// Killed by a signal.
    Killed(i32),
    /// A `PTRACE_EVENT_*` stop (event number).
    Event(i32),
    /// Group-stop (seized tracees report it as `PTRACE_EVENT_STOP`).
    GroupStop(i32),
    /// Signal-delivery stop for this signal.
    Signal(i32),
}

/// Decodes a `waitpid` status.
pub fn decode(status: i32) -> Stop {
    if libc::WIFEXITED(status) {
        return Stop::Exited(libc::WEXITSTATUS(status));
    }
    if libc::WIFSIGNALED(status) {
        return Stop::Killed(libc::WTERMSIG(status));
    }
    let sig = libc::WSTOPSIG(status);
    let event = status >> 16;
    if event == libc::PTRACE_EVENT_STOP {
        return Stop::GroupStop(sig);
    }
    if event != 0 {
        return Stop::Event(event);
    }
    Stop::Signal(sig)
}
