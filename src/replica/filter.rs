//! Generates the replica's seccomp filter from the syscall table.
//!
//! The filter is a binary search over the ranges of numbers whose class is
//! `Execute` (answered `ALLOW`); every other call, every unclassified number
//! and every call made through another ABI (i386 `int 0x80`, x32) is sent to
//! the supervisor (`USER_NOTIF`), which handles, refuses or answers it. So the
//! fail-closed rule lives in one place: the supervisor's dispatch.
//!
//! Invariant: jumps are resolved by the assembler and checked to fit BPF's
//! 8-bit offsets; an oversize program is an error, never a truncated filter.

use super::table::{Class, TABLE};
use crate::sys::seccomp::{RET_ALLOW, RET_USER_NOTIF, SockFilter};

const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

// Classic BPF opcodes.
const LD_W_ABS: u16 = 0x20;
const JEQ_K: u16 = 0x15;
const JGE_K: u16 = 0x35;
const JGT_K: u16 = 0x25;
const RET_K: u16 = 0x06;

/// Byte offsets in `struct seccomp_data`.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;

#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("seccomp filter jump of {0} instructions does not fit BPF's 8-bit offset")]
    JumpTooFar(usize),
    #[error("seccomp filter of {0} instructions exceeds the kernel's limit of 4096")]
    TooLong(usize),
}

#[derive(Clone, Copy)]
enum Insn {
    Ld(u32),
    /// Conditional jump: (opcode, k, label if true, label if false).
    J(u16, u32, usize, usize),
    Ret(u32),
    Label(usize),
}

struct Asm {
    code: Vec<Insn>,
    labels: usize,
}

impl Asm {
    fn label(&mut self) -> usize {
        self.labels += 1;
        self.labels - 1
    }

    /// Emits a search over `ranges` (sorted, disjoint, inclusive).
    fn search(&mut self, ranges: &[(u32, u32)]) {
        if ranges.is_empty() {
            self.code.push(Insn::Ret(RET_USER_NOTIF));
            return;
        }
        let mid = ranges.len() / 2;
        let (lo, hi) = ranges[mid];
        let (left, upper, right) = (self.label(), self.label(), self.label());
        self.code.push(Insn::J(JGE_K, lo, upper, left));
        self.code.push(Insn::Label(upper));
        let allow = self.label();
        self.code.push(Insn::J(JGT_K, hi, right, allow));
        self.code.push(Insn::Label(allow));
        self.code.push(Insn::Ret(RET_ALLOW));
        self.code.push(Insn::Label(right));
        self.search(&ranges[mid + 1..]);
        self.code.push(Insn::Label(left));
        self.search(&ranges[..mid]);
    }

    fn assemble(&self) -> Result<Vec<SockFilter>, FilterError> {
        let mut at = vec![0usize; self.labels];
        let mut pc = 0;
        for i in &self.code {
            match i {
                Insn::Label(l) => at[*l] = pc,
                _ => pc += 1,
            }
        }
        if pc > 4096 {
            return Err(FilterError::TooLong(pc));
        }
        let mut out = Vec::with_capacity(pc);
        for i in &self.code {
            let here = out.len();
            let rel = |l: usize| -> Result<u8, FilterError> {
                let d = at[l] - here - 1;
                u8::try_from(d).map_err(|_| FilterError::JumpTooFar(d))
            };
            match *i {
                Insn::Label(_) => continue,
                Insn::Ld(off) => out.push(SockFilter { code: LD_W_ABS, jt: 0, jf: 0, k: off }),
                Insn::Ret(k) => out.push(SockFilter { code: RET_K, jt: 0, jf: 0, k }),
                Insn::J(op, k, t, f) => out.push(SockFilter { code: op, jt: rel(t)?, jf: rel(f)?, k }),
            }
        }
        Ok(out)
    }
}

/// The inclusive ranges of numbers the filter lets run natively.
pub fn allowed_ranges() -> Vec<(u32, u32)> {
    let mut ranges: Vec<(u32, u32)> = Vec::new();
    for e in TABLE.iter().filter(|e| e.class == Class::Execute) {
        match ranges.last_mut() {
            Some(last) if last.1 + 1 == e.nr => last.1 = e.nr,
            _ => ranges.push((e.nr, e.nr)),
        }
    }
    ranges
}

/// Builds the filter program.
pub fn build() -> Result<Vec<SockFilter>, FilterError> {
    let mut a = Asm { code: Vec::new(), labels: 0 };
    let (native, other) = (a.label(), a.label());
    a.code.push(Insn::Ld(OFF_ARCH));
    a.code.push(Insn::J(JEQ_K, AUDIT_ARCH_X86_64, native, other));
    a.code.push(Insn::Label(other));
    a.code.push(Insn::Ret(RET_USER_NOTIF));
    a.code.push(Insn::Label(native));
    a.code.push(Insn::Ld(OFF_NR));
    let (x32, search) = (a.label(), a.label());
    a.code.push(Insn::J(JGE_K, X32_SYSCALL_BIT, x32, search));
    a.code.push(Insn::Label(x32));
    a.code.push(Insn::Ret(RET_USER_NOTIF));
    a.code.push(Insn::Label(search));
    a.search(&allowed_ranges());
    a.assemble()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replica::table::lookup;

    /// A tiny interpreter for the subset of classic BPF the generator emits.
    fn run(prog: &[SockFilter], arch: u32, nr: u32) -> u32 {
        let mut pc = 0;
        let mut acc = 0u32;
        for _ in 0..prog.len() {
            let i = prog[pc];
            match i.code {
                LD_W_ABS => acc = if i.k == OFF_ARCH { arch } else { nr },
                RET_K => return i.k,
                JEQ_K | JGE_K | JGT_K => {
                    let t = match i.code {
                        JEQ_K => acc == i.k,
                        JGE_K => acc >= i.k,
                        _ => acc > i.k,
                    };
                    pc += if t { i.jt as usize } else { i.jf as usize };
                }
                c => panic!("unexpected opcode {c:#x}"),
            }
            pc += 1;
        }
        panic!("program ran off its end")
    }

    #[test]
    fn every_number_gets_its_class() {
        let prog = build().expect("filter builds");
        assert!(prog.len() < 512, "filter is {} instructions", prog.len());
        for nr in 0..600 {
            let want = match lookup(nr) {
                Some(e) if e.class == Class::Execute => RET_ALLOW,
                _ => RET_USER_NOTIF,
            };
            assert_eq!(run(&prog, AUDIT_ARCH_X86_64, nr), want, "syscall {nr}");
        }
        assert_eq!(run(&prog, AUDIT_ARCH_X86_64, X32_SYSCALL_BIT | 39), RET_USER_NOTIF, "x32 getpid");
        assert_eq!(run(&prog, 0x4000_0003, 20), RET_USER_NOTIF, "i386 getpid");
    }

    #[test]
    fn hot_native_calls_are_not_intercepted() {
        let prog = build().expect("filter builds");
        for name in ["mmap", "munmap", "brk", "getpid", "rt_sigprocmask", "epoll_ctl", "openat", "lseek"] {
            let e = crate::replica::table::by_name(name).expect("known");
            assert_eq!(run(&prog, AUDIT_ARCH_X86_64, e.nr), RET_ALLOW, "{name}");
        }
        for name in ["read", "write", "epoll_wait", "clock_gettime", "futex", "accept4", "getrandom"] {
            let e = crate::replica::table::by_name(name).expect("known");
            assert_eq!(run(&prog, AUDIT_ARCH_X86_64, e.nr), RET_USER_NOTIF, "{name}");
        }
    }
}
