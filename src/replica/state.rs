//! State directories: what the replica writes (redis's dump.rdb, nginx's
//! logs) must not leak from a recording into its replay on the same host.
//!
//! `ftnet record --state DIR` snapshots each DIR into the log before the
//! replica starts; `ftnet replay` restores the snapshots into a private
//! directory and bind-mounts them over the original paths inside the
//! replica's own mount namespace, so the host's copies are never touched.

use super::log::{StateEntry, StateKind};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state directory {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("state directory {0} is not a directory")]
    NotDir(String),
    #[error("state file {path} is {size} bytes; snapshots hold files up to {max}")]
    TooBig { path: String, size: u64, max: usize },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io { path: path.display().to_string(), source }
}

/// Snapshots every entry under `dir` (index `idx`), directories first.
pub fn snapshot(idx: u32, dir: &Path) -> Result<Vec<StateEntry>, StateError> {
    if !dir.is_dir() {
        return Err(StateError::NotDir(dir.display().to_string()));
    }
    let mut out = vec![];
    walk(idx, dir, Path::new(""), &mut out)?;
    Ok(out)
}

fn walk(idx: u32, root: &Path, rel: &Path, out: &mut Vec<StateEntry>) -> Result<(), StateError> {
    let here = root.join(rel);
    let mut entries: Vec<_> = std::fs::read_dir(&here).map_err(io(&here))?.filter_map(|e| e.ok()).collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let r = rel.join(e.file_name());
        let md = std::fs::symlink_metadata(&path).map_err(io(&path))?;
        let rel_bytes = r.as_os_str().as_encoded_bytes().to_vec();
        let mode = md.mode() & 0o7777;
        if md.file_type().is_symlink() {
            let t = std::fs::read_link(&path).map_err(io(&path))?;
            out.push(StateEntry {
                dir: idx,
                path: rel_bytes,
                mode,
                kind: StateKind::Symlink(t.into_os_string().into_encoded_bytes()),
            });
        } else if md.is_dir() {
            out.push(StateEntry { dir: idx, path: rel_bytes, mode, kind: StateKind::Dir });
            walk(idx, root, &r, out)?;
        } else if md.is_file() {
            let max = super::log::MAX_FRAME - 4096;
            if md.len() as usize > max {
                return Err(StateError::TooBig { path: path.display().to_string(), size: md.len(), max });
            }
            let data = std::fs::read(&path).map_err(io(&path))?;
            out.push(StateEntry { dir: idx, path: rel_bytes, mode, kind: StateKind::File(data) });
        }
    }
    Ok(())
}

/// A bind mount `(source, target)` as raw path bytes.
pub type Bind = (Vec<u8>, Vec<u8>);

/// Restores snapshots under `into/<index>` and returns the bind mounts
/// `(copy, original)` to make in the replica's mount namespace.
pub fn restore(dirs: &[Vec<u8>], entries: &[StateEntry], into: &Path) -> Result<Vec<Bind>, StateError> {
    let mut binds = vec![];
    for (i, d) in dirs.iter().enumerate() {
        let copy = into.join(i.to_string());
        std::fs::create_dir_all(&copy).map_err(io(&copy))?;
        let orig = PathBuf::from(String::from_utf8_lossy(d).into_owned());
        if let Ok(md) = std::fs::metadata(&orig) {
            let _ = std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(md.mode() & 0o7777));
            let _ = std::os::unix::fs::chown(&copy, Some(md.uid()), Some(md.gid()));
        }
        binds.push((copy.into_os_string().into_encoded_bytes(), d.clone()));
    }
    for e in entries {
        let base = into.join(e.dir.to_string());
        let rel = String::from_utf8_lossy(&e.path).into_owned();
        if rel.split('/').any(|c| c == "..") || rel.starts_with('/') {
            return Err(StateError::NotDir(format!("snapshot entry {rel} escapes its directory")));
        }
        let p = base.join(&rel);
        match &e.kind {
            StateKind::Dir => std::fs::create_dir_all(&p).map_err(io(&p))?,
            StateKind::File(data) => std::fs::write(&p, data).map_err(io(&p))?,
            StateKind::Symlink(t) => {
                std::os::unix::fs::symlink(String::from_utf8_lossy(t).into_owned(), &p).map_err(io(&p))?
            }
        }
        if !matches!(e.kind, StateKind::Symlink(_)) {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(e.mode)).map_err(io(&p))?;
        }
    }
    Ok(binds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_and_restore_round_trip() {
        let src = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(src.path().join("sub")).expect("mkdir");
        std::fs::write(src.path().join("sub/dump.rdb"), b"REDIS0011").expect("write");
        std::os::unix::fs::symlink("sub/dump.rdb", src.path().join("link")).expect("symlink");
        let entries = snapshot(0, src.path()).expect("snapshot");
        assert_eq!(entries.len(), 3);
        let dst = tempfile::tempdir().expect("tempdir");
        let dirs = vec![src.path().as_os_str().as_encoded_bytes().to_vec()];
        let binds = restore(&dirs, &entries, dst.path()).expect("restore");
        assert_eq!(binds.len(), 1);
        assert_eq!(std::fs::read(dst.path().join("0/sub/dump.rdb")).expect("read"), b"REDIS0011");
        assert_eq!(std::fs::read_link(dst.path().join("0/link")).expect("link").to_str(), Some("sub/dump.rdb"));
    }

    #[test]
    fn entries_cannot_escape() {
        let dst = tempfile::tempdir().expect("tempdir");
        let bad = StateEntry { dir: 0, path: b"../evil".to_vec(), mode: 0o644, kind: StateKind::File(vec![]) };
        assert!(restore(&[b"/tmp".to_vec()], &[bad], dst.path()).is_err());
    }
}
