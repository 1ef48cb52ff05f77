//! Reading and writing the replica's memory with `process_vm_readv` /
//! `process_vm_writev`.
//!
//! Both wrappers move whole buffers or fail: a short transfer (the range
//! crossed into an unmapped or read-only page) is reported as `EFAULT`, never
//! returned as a partial success the caller might forget to check.

use super::{Errno, Result, SysError};

/// Reads `len` bytes at `addr` in process/thread `tid`.
pub fn read(tid: i32, addr: u64, len: usize) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    read_into(tid, addr, &mut buf)?;
    Ok(buf)
}

/// Reads `buf.len()` bytes at `addr` in `tid` into `buf`.
pub fn read_into(tid: i32, addr: u64, buf: &mut [u8]) -> Result<()> {
    if buf.is_empty() {
        return Ok(());
    }
    let local = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    let remote = libc::iovec { iov_base: addr as *mut libc::c_void, iov_len: buf.len() };
    // SAFETY: `local` describes `buf`, which is writable for its length; the
    // remote iovec is only interpreted by the kernel in the other process.
    let r = unsafe { libc::process_vm_readv(tid, &local, 1, &remote, 1, 0) };
    transferred(r, buf.len(), "process_vm_readv", tid, addr)
}

/// Writes `data` at `addr` in `tid`.
pub fn write(tid: i32, addr: u64, data: &[u8]) -> Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    let local = libc::iovec { iov_base: data.as_ptr() as *mut libc::c_void, iov_len: data.len() };
    let remote = libc::iovec { iov_base: addr as *mut libc::c_void, iov_len: data.len() };
    // SAFETY: `local` describes `data`, readable for its length; the kernel
    // only reads from it.
    let r = unsafe { libc::process_vm_writev(tid, &local, 1, &remote, 1, 0) };
    transferred(r, data.len(), "process_vm_writev", tid, addr)
}

fn transferred(r: isize, want: usize, call: &'static str, tid: i32, addr: u64) -> Result<()> {
    if r as usize == want && r >= 0 {
        return Ok(());
    }
    let what = format!("tid {tid} addr {addr:#x} len {want}");
    if r < 0 {
        return Err(SysError::last(call, what));
    }
    Err(SysError::new(call, format!("{what} (moved {r})"), Errno(libc::EFAULT)))
}

/// Reads a NUL-terminated string of at most `max` bytes at `addr`.
pub fn read_cstr(tid: i32, addr: u64, max: usize) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut at = addr;
    while out.len() < max {
        // Read up to the end of the page so we never cross into an unmapped one.
        let room = 4096 - (at as usize % 4096);
        let chunk = read(tid, at, room.min(max - out.len()))?;
        if let Some(pos) = chunk.iter().position(|&b| b == 0) {
            out.extend_from_slice(&chunk[..pos]);
            return Ok(out);
        }
        out.extend_from_slice(&chunk);
        at += chunk.len() as u64;
    }
    Err(SysError::new("read_cstr", format!("tid {tid} addr {addr:#x}: longer than {max}"), Errno(libc::ENAMETOOLONG)))
}
