//! File-system helpers of the spool: per-message lock files, fsync of files
//! and directories, and (in this crate's tests) injected failures.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io;
use std::path::{Path, PathBuf};

use super::SpoolError;

/// How often [`LockFile::try_open`] retries when the file it locked was
/// unlinked meanwhile (by a holder removing the message or by recovery).
const STALE_RETRIES: usize = 8;

/// An exclusively locked `lock/<id>` file. Dropping it closes the file,
/// which releases the lock (also when the process dies).
///
/// Invariant: the locked file is the one at `path` at the time of locking.
/// A lock file is only ever unlinked by a holder of its lock, so checking
/// this after locking (see [`same_file`]) rules out two holders of two
/// different inodes under one name.
#[derive(Debug)]
pub(super) struct LockFile {
    file: File,
    path: PathBuf,
}

impl LockFile {
    /// Creates `path`, which must not exist, and locks it. `Ok(None)` when
    /// the name is taken or was taken away before the lock held: the caller
    /// picks another name.
    pub(super) fn create_new(path: &Path) -> Result<Option<LockFile>, SpoolError> {
        let opened = inject("create")
            .and_then(|()| OpenOptions::new().write(true).create_new(true).open(path));
        let file = match opened {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(None),
            Err(e) => return Err(SpoolError::io("create lock file", path, e)),
        };
        match LockFile::lock(file, path)? {
            Attempt::Locked(lock) => Ok(Some(lock)),
            Attempt::Busy | Attempt::Stale => Ok(None),
        }
    }

    /// Opens `path` (creating it if missing) and tries to lock it without
    /// waiting. `Ok(None)` when someone else holds it.
    pub(super) fn try_open(path: &Path) -> Result<Option<LockFile>, SpoolError> {
        for _ in 0..STALE_RETRIES {
            let file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
                .map_err(|e| SpoolError::io("open lock file", path, e))?;
            match LockFile::lock(file, path)? {
                Attempt::Locked(lock) => return Ok(Some(lock)),
                Attempt::Busy => return Ok(None),
                Attempt::Stale => {}
            }
        }
        Ok(None)
    }

    fn lock(file: File, path: &Path) -> Result<Attempt, SpoolError> {
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Ok(Attempt::Busy),
            Err(TryLockError::Error(e)) => return Err(SpoolError::io("lock", path, e)),
        }
        if same_file(&file, path)? {
            Ok(Attempt::Locked(LockFile {
                file,
                path: path.to_path_buf(),
            }))
        } else {
            Ok(Attempt::Stale)
        }
    }

    /// Unlinks the lock file, then releases the lock. Only for when the
    /// message it guards is gone (or never became one).
    pub(super) fn remove(self) -> Result<(), SpoolError> {
        let result = remove_if_present(&self.path, "remove lock file");
        drop(self.file);
        result
    }
}

/// The outcome of one try at locking a lock file.
enum Attempt {
    Locked(LockFile),
    /// Someone else holds it.
    Busy,
    /// Locked, but the name was unlinked (or replaced) meanwhile.
    Stale,
}

/// Whether the open `file` is the file now at `path`.
#[cfg(unix)]
fn same_file(file: &File, path: &Path) -> Result<bool, SpoolError> {
    use std::os::unix::fs::MetadataExt;
    let open = file
        .metadata()
        .map_err(|e| SpoolError::io("stat", path, e))?;
    match fs::symlink_metadata(path) {
        Ok(now) => Ok(open.dev() == now.dev() && open.ino() == now.ino()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(SpoolError::io("stat", path, e)),
    }
}

#[cfg(not(unix))]
fn same_file(_file: &File, path: &Path) -> Result<bool, SpoolError> {
    path.try_exists()
        .map_err(|e| SpoolError::io("stat", path, e))
}

/// Removes a file; one that is already gone is fine.
pub(super) fn remove_if_present(path: &Path, op: &'static str) -> Result<(), SpoolError> {
    match inject("remove").and_then(|()| fs::remove_file(path)) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(SpoolError::io(op, path, e)),
    }
}

/// fsyncs a file's data and metadata.
pub(super) fn sync_file(file: &File, path: &Path) -> Result<(), SpoolError> {
    inject("fsync")
        .and_then(|()| file.sync_all())
        .map_err(|e| SpoolError::io("fsync", path, e))
}

/// fsyncs a directory, so the entries created, renamed or removed in it
/// survive a crash. A no-op where directories cannot be opened as files.
pub(super) fn sync_dir(path: &Path) -> Result<(), SpoolError> {
    #[cfg(unix)]
    {
        inject("fsync directory")
            .and_then(|()| File::open(path))
            .and_then(|dir| dir.sync_all())
            .map_err(|e| SpoolError::io("fsync directory", path, e))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Renames `from` to `to` (replacing `to`).
pub(super) fn rename(from: &Path, to: &Path, op: &'static str) -> Result<(), SpoolError> {
    inject("rename")
        .and_then(|()| fs::rename(from, to))
        .map_err(|e| SpoolError::io(op, from, e))
}

/// Creates a directory if missing; `Ok(true)` if it was created.
pub(super) fn make_dir(path: &Path) -> Result<bool, SpoolError> {
    match fs::create_dir(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => Ok(false),
        Err(e) => Err(SpoolError::io("create directory", path, e)),
    }
}

/// A file that is removed when dropped, unless disarmed: the staging file
/// of a message or of a record.
#[derive(Debug)]
pub(super) struct TmpFile {
    path: PathBuf,
    armed: bool,
}

impl TmpFile {
    pub(super) fn armed(path: PathBuf) -> Self {
        TmpFile { path, armed: true }
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    pub(super) fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for TmpFile {
    fn drop(&mut self) {
        if self.armed {
            if let Err(e) = remove_if_present(&self.path, "remove staging file") {
                tracing::warn!(error = %e, "spool: cannot remove a staging file");
            }
        }
    }
}

/// Fault injection point: a no-op outside this crate's own tests.
#[inline]
pub(super) fn inject(op: &'static str) -> io::Result<()> {
    faults::fail_point(op)
}

#[cfg(not(test))]
mod faults {
    use std::io;

    #[inline(always)]
    pub(super) fn fail_point(_op: &'static str) -> io::Result<()> {
        Ok(())
    }
}

/// Test-only: make the n-th next operation of a kind fail, per thread, so
/// tests running in parallel do not interfere.
#[cfg(test)]
pub(super) mod faults {
    use std::cell::RefCell;
    use std::io;

    thread_local! {
        static FAULTS: RefCell<Vec<(&'static str, usize)>> = const { RefCell::new(Vec::new()) };
    }

    /// Makes the `nth` (0-based) next operation `op` on this thread fail.
    pub(in crate::spool) fn fail_nth(op: &'static str, nth: usize) {
        FAULTS.with(|f| f.borrow_mut().push((op, nth)));
    }

    /// Clears pending faults.
    pub(in crate::spool) fn clear() {
        FAULTS.with(|f| f.borrow_mut().clear());
    }

    pub(super) fn fail_point(op: &'static str) -> io::Result<()> {
        FAULTS.with(|f| {
            let mut faults = f.borrow_mut();
            let mut fired = None;
            for (i, (want, n)) in faults.iter_mut().enumerate() {
                if *want == op {
                    if *n == 0 {
                        fired = Some(i);
                        break;
                    }
                    *n -= 1;
                }
            }
            match fired {
                Some(i) => {
                    faults.remove(i);
                    Err(io::Error::other(format!("injected failure of {op}")))
                }
                None => Ok(()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    /// The race the identity check exists for: a file opened before its
    /// holder unlinked it can be locked afterwards, but that lock guards
    /// nothing any more.
    #[test]
    fn a_lock_on_an_unlinked_lock_file_does_not_count() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l");
        let holder = LockFile::try_open(&path).unwrap().expect("free");
        let early = File::open(&path).unwrap();
        holder.remove().unwrap();
        assert!(!path.exists());
        assert!(matches!(
            LockFile::lock(early, &path).unwrap(),
            Attempt::Stale
        ));

        let fresh = LockFile::try_open(&path)
            .unwrap()
            .expect("a new file, free");
        let late = File::open(&path).unwrap();
        assert!(matches!(
            LockFile::lock(late, &path).unwrap(),
            Attempt::Busy
        ));
        assert!(LockFile::try_open(&path).unwrap().is_none());
        assert!(LockFile::create_new(&path).unwrap().is_none(), "name taken");
        drop(fresh);
        assert!(path.exists(), "dropping a lock keeps the file");
        assert!(LockFile::try_open(&path).unwrap().is_some());
    }
}
