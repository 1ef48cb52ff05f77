//! Finds the files an executable needs (its interpreter and the libraries it
//! names, transitively), so both nodes can compare their digests.
//!
//! The ELF parser follows the wire-parser contract: every offset is checked
//! against the file length before it is read, so malformed input yields
//! `None` or an empty list, never a panic.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const DT_NEEDED: u64 = 1;
const DT_STRTAB: u64 = 5;
const DT_RPATH: u64 = 15;
const DT_RUNPATH: u64 = 29;

const LIB_DIRS: &[&str] = &[
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
    "/usr/local/lib",
];

struct Elf<'a> {
    b: &'a [u8],
}

impl<'a> Elf<'a> {
    fn parse(b: &'a [u8]) -> Option<Elf<'a>> {
        // 64-bit little-endian ELF only.
        (b.len() >= 64 && &b[..4] == b"\x7fELF" && b[4] == 2 && b[5] == 1).then_some(Elf { b })
    }
    fn u16(&self, o: usize) -> Option<u16> {
        Some(u16::from_le_bytes(self.b.get(o..o.checked_add(2)?)?.try_into().ok()?))
    }
    fn u32(&self, o: usize) -> Option<u32> {
        Some(u32::from_le_bytes(self.b.get(o..o.checked_add(4)?)?.try_into().ok()?))
    }
    fn u64(&self, o: usize) -> Option<u64> {
        Some(u64::from_le_bytes(self.b.get(o..o.checked_add(8)?)?.try_into().ok()?))
    }
    fn cstr(&self, o: usize) -> Option<&'a [u8]> {
        let rest = self.b.get(o..)?;
        Some(&rest[..rest.iter().position(|&c| c == 0)?])
    }
    /// `(type, offset, vaddr, filesz)` of each program header.
    fn phdrs(&self) -> Vec<(u32, u64, u64, u64)> {
        let (Some(off), Some(size), Some(n)) = (self.u64(32), self.u16(54), self.u16(56)) else { return vec![] };
        (0..n as usize)
            .filter_map(|i| {
                let o = (off as usize).checked_add(i.checked_mul(size as usize)?)?;
                Some((
                    self.u32(o)?,
                    self.u64(o.checked_add(8)?)?,
                    self.u64(o.checked_add(16)?)?,
                    self.u64(o.checked_add(32)?)?,
                ))
            })
            .collect()
    }
    /// Maps a virtual address to a file offset through the PT_LOAD headers.
    fn vaddr_to_off(&self, va: u64) -> Option<usize> {
        self.phdrs()
            .into_iter()
            .filter(|p| p.0 == 1)
            .find(|&(_, _, vaddr, filesz)| va >= vaddr && va - vaddr < filesz)
            .and_then(|(_, off, vaddr, _)| usize::try_from(off.checked_add(va - vaddr)?).ok())
    }
    fn interp(&self) -> Option<Vec<u8>> {
        let (_, off, _, sz) = self.phdrs().into_iter().find(|p| p.0 == PT_INTERP)?;
        let raw = self.b.get(usize::try_from(off).ok()?..usize::try_from(off.checked_add(sz)?).ok()?)?;
        Some(raw.iter().take_while(|&&c| c != 0).copied().collect())
    }
    /// (needed names, search paths).
    fn dynamic(&self) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
        let Some((_, off, _, sz)) = self.phdrs().into_iter().find(|p| p.0 == PT_DYNAMIC) else {
            return (vec![], vec![]);
        };
        let mut entries = vec![];
        let (Ok(mut o), Some(end)) = (usize::try_from(off), off.checked_add(sz).and_then(|e| usize::try_from(e).ok()))
        else {
            return (vec![], vec![]);
        };
        while o.checked_add(16).is_some_and(|x| x <= end) {
            let (Some(tag), Some(val)) = (self.u64(o), self.u64(o + 8)) else { break };
            if tag == 0 {
                break;
            }
            entries.push((tag, val));
            o += 16;
        }
        let Some(strtab) = entries.iter().find(|e| e.0 == DT_STRTAB).and_then(|e| self.vaddr_to_off(e.1)) else {
            return (vec![], vec![]);
        };
        let s = |v: u64| self.cstr(strtab.checked_add(usize::try_from(v).ok()?)?).map(|x| x.to_vec());
        let needed = entries.iter().filter(|e| e.0 == DT_NEEDED).filter_map(|e| s(e.1)).collect();
        let paths = entries
            .iter()
            .filter(|e| e.0 == DT_RUNPATH || e.0 == DT_RPATH)
            .filter_map(|e| s(e.1))
            .flat_map(|p| p.split(|&c| c == b':').map(|x| x.to_vec()).collect::<Vec<_>>())
            .collect();
        (needed, paths)
    }
}

/// The executable, its interpreter and every library it needs (as far as
/// they can be found), in a stable order.
pub fn closure(exe: &Path) -> Vec<PathBuf> {
    let mut out = BTreeSet::new();
    let mut todo = vec![exe.to_path_buf()];
    while let Some(p) = todo.pop() {
        if !out.insert(p.clone()) {
            continue;
        }
        let Ok(bytes) = std::fs::read(&p) else { continue };
        let Some(elf) = Elf::parse(&bytes) else { continue };
        if let Some(i) = elf.interp() {
            todo.push(PathBuf::from(String::from_utf8_lossy(&i).into_owned()));
        }
        let (needed, paths) = elf.dynamic();
        for name in needed {
            let name = String::from_utf8_lossy(&name).into_owned();
            let dirs = paths
                .iter()
                .map(|d| String::from_utf8_lossy(d).into_owned())
                .chain(LIB_DIRS.iter().map(|s| s.to_string()));
            if let Some(found) = dirs.map(|d| Path::new(&d).join(&name)).find(|c| c.exists()) {
                todo.push(found);
            }
        }
    }
    out.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_libc_and_the_loader_of_a_dynamic_binary() {
        let files = closure(Path::new("/bin/ls"));
        assert!(files.iter().any(|f| f.to_string_lossy().contains("libc.so")), "{files:?}");
        assert!(files.iter().any(|f| f.to_string_lossy().contains("ld-linux")), "{files:?}");
    }

    #[test]
    fn garbage_is_not_an_elf() {
        assert!(Elf::parse(b"\x7fELF").is_none());
        let mut fake = vec![0u8; 64];
        fake[..6].copy_from_slice(b"\x7fELF\x02\x01");
        fake[32..40].copy_from_slice(&u64::MAX.to_le_bytes());
        fake[56..58].copy_from_slice(&100u16.to_le_bytes());
        let e = Elf::parse(&fake).expect("header accepted");
        assert!(e.phdrs().is_empty());
        assert!(e.interp().is_none());
    }
}
