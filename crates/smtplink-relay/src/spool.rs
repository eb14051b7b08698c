//! The spool: the durable queue of messages awaiting relay.
//!
//! The server writes each accepted message here before it answers `250` to
//! the end of DATA, and a message leaves only when every recipient is done
//! (delivered, or failed with a bounce queued for the sender). Several
//! processes may share one spool at once: the delivery workers of
//! `smtplink serve` and `smtplink queue list|flush|delete|show`.
//!
//! # On-disk layout
//!
//! ```text
//! <root>/                  the `spool` setting, default ./spool
//!   tmp/<id>               a message being received (SpoolWriter)
//!   tmp/<id>.json.<n>      an envelope record being written
//!   msg/<id>               message bytes, trace header fields included;
//!                          never changed once committed
//!   env/<id>.json          the envelope record (EnvelopeRecord, JSON);
//!                          replaced whole by rename, never edited in place
//!   lock/<id>              empty; locked (File::try_lock) by whoever works
//!                          on the message
//!   corrupt/<id>.json      records set aside by recovery (see below), with
//!   corrupt/<id>           their message when there is one
//! ```
//!
//! A message is queued exactly when `env/<id>.json` exists. Ids
//! ([`MessageId`]) are made here from the clock, the process id and a
//! counter; nothing a peer sends ends up in a file name.
//!
//! # Commit protocol
//!
//! [`Spool::begin`] creates and locks `lock/<id>` and opens `tmp/<id>`;
//! [`SpoolWriter::write_all`] appends bytes; [`SpoolWriter::commit`] then
//!
//! 1. flushes and fsyncs `tmp/<id>`, renames it to `msg/<id>`, fsyncs `msg/`;
//! 2. writes the record to `tmp/<id>.json.<n>`, fsyncs it, renames it to
//!    `env/<id>.json`, fsyncs `env/`;
//! 3. releases the lock.
//!
//! `msg/` is fsync'd before the record is renamed into place, so no crash
//! can leave a durable record without its message. Only when `commit`
//! returned `Ok` may the server answer `250`. If a step fails, `commit`
//! undoes the earlier ones and nothing is queued. Every later change of the
//! record ([`SpoolLock::update`]) is the same write-fsync-rename-fsync, so a
//! reader sees the old record or the new one, never a mix.
//!
//! # Recovery
//!
//! [`Spool::open`] (and [`Spool::recover`]) repair what a crash leaves,
//! taking each message's lock first so that it never touches a message
//! another process is working on:
//!
//! | found                          | cause                              | action                       |
//! |--------------------------------|------------------------------------|------------------------------|
//! | files in `tmp/`                | crash while receiving or updating  | deleted                      |
//! | `msg/<id>` without a record    | crash inside commit (never acked), or inside [`SpoolLock::remove`] | deleted |
//! | a record with no pending recipient | crash between the last [`SpoolLock::update`] and [`SpoolLock::remove`] | removed with its message |
//! | a record without `msg/<id>`    | damage                             | logged, moved to `corrupt/`  |
//! | a record that does not parse   | damage                             | logged, moved to `corrupt/` with its message |
//! | `lock/<id>` with neither       | crash inside begin or remove       | deleted                      |
//!
//! # Locking
//!
//! Lock files rather than the record itself, because each update replaces
//! the record's inode. Locks are per open file description, so two threads
//! of one process exclude each other just as two processes do, and a lock
//! dies with its process. A lock file is only unlinked by a holder of its
//! lock, and a locker checks after locking that the file it locked is still
//! the one at `lock/<id>`; so there is never more than one holder.
//! Readers ([`Spool::list`], [`Spool::load`]) take no lock.
//!
//! A crash after the next hop accepted a message but before
//! [`SpoolLock::update`] recorded it means that message is sent again:
//! RFC 5321 (section 6.1) accepts a duplicate over a loss.
//!
//! All of this is blocking `std::fs` I/O: an async server calls it through
//! `tokio::task::spawn_blocking`. [`Spool`] is cheap to clone, and writers
//! and locks own what they need, so all of them can move between threads.

mod disk;
mod error;
mod id;
mod record;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use disk::{inject, remove_if_present, rename, sync_dir, sync_file, LockFile, TmpFile};

pub use error::SpoolError;
pub use id::MessageId;
pub use record::{
    EnvelopeRecord, NewEnvelope, NewRecipient, Notify, RecipientRecord, RecipientState, Ret,
};

/// Staging area for messages and records being written.
const TMP: &str = "tmp";
/// Committed message bytes.
const MSG: &str = "msg";
/// Envelope records: the queue itself.
const ENV: &str = "env";
/// One lock file per message.
const LOCK: &str = "lock";
/// Records (and messages) recovery could not use.
const CORRUPT: &str = "corrupt";
/// Suffix of a record file.
const JSON: &str = ".json";

/// Size of the write buffer in front of a message being received.
const BUFFER_SIZE: usize = 64 * 1024;
/// How many ids [`Spool::begin`] tries before giving up (more than one is
/// needed only if recovery in another process raced for the same lock file).
const BEGIN_ATTEMPTS: usize = 16;

/// Makes record staging names (`tmp/<id>.json.<n>`) unique in a process.
static RECORD_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A spool directory: see the [module documentation](self) for the layout
/// and the guarantees.
#[derive(Debug, Clone)]
pub struct Spool {
    root: PathBuf,
}

/// What [`Spool::recover`] repaired. Everything it did is also logged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Recovery {
    /// Files deleted from `tmp/`.
    pub staging_removed: usize,
    /// Messages deleted from `msg/` because they had no record (they were
    /// never acknowledged, or were already delivered).
    pub orphans_removed: usize,
    /// Messages whose record was missing its message or did not parse,
    /// moved to `corrupt/`.
    pub moved_to_corrupt: Vec<MessageId>,
    /// Lock files found with neither record nor message, deleted.
    pub locks_removed: usize,
    /// Messages whose record had no pending recipient left (all delivered,
    /// or failed with their bounce queued), removed: the holder crashed
    /// before it could remove them.
    pub finished_removed: usize,
}

impl Recovery {
    /// Whether recovery found nothing to do.
    pub fn is_clean(&self) -> bool {
        *self == Recovery::default()
    }
}

impl Spool {
    /// Opens the spool at `root`, creating it and its directories as needed,
    /// and runs [`Spool::recover`].
    ///
    /// Safe while other processes use the same spool: recovery skips every
    /// message someone holds the lock of.
    pub fn open(root: impl Into<PathBuf>) -> Result<Spool, SpoolError> {
        let spool = Spool { root: root.into() };
        spool.create_dirs()?;
        let recovery = spool.recover()?;
        if !recovery.is_clean() {
            tracing::info!(
                spool = %spool.root.display(),
                staging_removed = recovery.staging_removed,
                orphans_removed = recovery.orphans_removed,
                moved_to_corrupt = recovery.moved_to_corrupt.len(),
                locks_removed = recovery.locks_removed,
                finished_removed = recovery.finished_removed,
                "spool recovered"
            );
        }
        Ok(spool)
    }

    /// The spool's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Starts receiving a message: assigns its id, locks it and opens its
    /// staging file in `tmp/`. Finish with [`SpoolWriter::commit`]; dropping
    /// the writer instead removes everything it created.
    pub fn begin(&self) -> Result<SpoolWriter, SpoolError> {
        for _ in 0..BEGIN_ATTEMPTS {
            let id = MessageId::generate();
            let Some(lock) = LockFile::create_new(&self.lock_path(&id))? else {
                continue;
            };
            let path = self.dir(TMP).join(id.as_str());
            let created = inject("create").and_then(|()| File::create_new(&path));
            let file = match created {
                Ok(file) => file,
                Err(e) => {
                    discard_lock(lock);
                    return Err(SpoolError::io("create", path, e));
                }
            };
            return Ok(SpoolWriter {
                spool: self.clone(),
                id,
                file: BufWriter::with_capacity(BUFFER_SIZE, file),
                staged: TmpFile::armed(path),
                lock: Some(lock),
                written: 0,
                failed: false,
            });
        }
        Err(SpoolError::io(
            "create lock file",
            self.dir(LOCK),
            io::Error::new(io::ErrorKind::AlreadyExists, "no free message id"),
        ))
    }

    /// Every queued message's record, sorted by id (arrival order).
    ///
    /// Takes no lock: a record being replaced is read whole, old or new. A
    /// message removed while listing is left out; so is a record that does
    /// not parse (logged as an error; [`Spool::recover`] sets it aside).
    pub fn list(&self) -> Result<Vec<EnvelopeRecord>, SpoolError> {
        let mut records = Vec::new();
        for id in self.queued_ids()? {
            match self.load(&id) {
                Ok(record) => records.push(record),
                Err(SpoolError::NotFound { .. }) => {}
                Err(e @ SpoolError::Record { .. }) => {
                    tracing::error!(error = %e, "spool: skipping an unreadable envelope record");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(records)
    }

    /// One message's record, read without locking.
    /// [`SpoolError::NotFound`] if the message is not queued.
    pub fn load(&self, id: &MessageId) -> Result<EnvelopeRecord, SpoolError> {
        read_record(&self.env_path(id), id)
    }

    /// Where the message's bytes are (`msg/<id>`); nothing is checked.
    pub fn message_path(&self, id: &MessageId) -> PathBuf {
        self.dir(MSG).join(id.as_str())
    }

    /// Opens the message's bytes for reading.
    /// [`SpoolError::NotFound`] if there is no such message file.
    pub fn open_message(&self, id: &MessageId) -> Result<File, SpoolError> {
        let path = self.message_path(id);
        match File::open(&path) {
            Ok(file) => Ok(file),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(SpoolError::NotFound {
                id: id.clone(),
                path,
            }),
            Err(e) => Err(SpoolError::io("open message", path, e)),
        }
    }

    /// Ids of the messages with a pending recipient whose `next_attempt` is
    /// at or before `now` (Unix seconds), in arrival order.
    pub fn due(&self, now: u64) -> Result<Vec<MessageId>, SpoolError> {
        Ok(self
            .list()?
            .into_iter()
            .filter(|r| r.is_due(now))
            .map(|r| r.id)
            .collect())
    }

    /// Locks one message for work on it, without waiting.
    ///
    /// `Ok(None)` when another holder (thread or process) has it, which
    /// includes a message still being committed. [`SpoolError::NotFound`]
    /// when it is not queued (any more). The record is read after locking,
    /// so it is current for as long as the lock is held.
    pub fn try_lock(&self, id: &MessageId) -> Result<Option<SpoolLock>, SpoolError> {
        let Some(lock) = LockFile::try_open(&self.lock_path(id))? else {
            return Ok(None);
        };
        match self.load(id) {
            Ok(record) => Ok(Some(SpoolLock {
                spool: self.clone(),
                record,
                lock,
            })),
            Err(e) => {
                if e.is_not_found() {
                    // We may just have created the lock file: don't leave it.
                    discard_lock(lock);
                }
                Err(e)
            }
        }
    }

    /// Repairs what a crash can leave behind (see the table in the
    /// [module documentation](self)) and says what it did. [`Spool::open`]
    /// calls it; messages locked by someone else are left alone.
    pub fn recover(&self) -> Result<Recovery, SpoolError> {
        let mut seen: BTreeMap<MessageId, Seen> = BTreeMap::new();
        for (dir, suffix) in [
            (TMP, None),
            (MSG, Some("")),
            (ENV, Some(JSON)),
            (LOCK, Some("")),
        ] {
            for name in self.names(dir)? {
                let id_part = match suffix {
                    // `<id>` or `<id>.json.<n>`
                    None => name.split('.').next().unwrap_or(""),
                    Some(suffix) => name.strip_suffix(suffix).unwrap_or(""),
                };
                let Ok(id) = MessageId::parse(id_part) else {
                    tracing::warn!(
                        file = %self.dir(dir).join(&name).display(),
                        "spool: leaving alone a file that is not the spool's"
                    );
                    continue;
                };
                let entry = seen.entry(id).or_default();
                match dir {
                    TMP => entry.staging.push(self.dir(TMP).join(&name)),
                    MSG => entry.msg = true,
                    ENV => entry.env = true,
                    _ => entry.lock = true,
                }
            }
        }
        let mut report = Recovery::default();
        for (id, seen) in seen {
            let suspect = !seen.staging.is_empty()
                || seen.msg != seen.env
                || (seen.lock && !seen.env)
                || (seen.env
                    && match self.load(&id) {
                        Err(SpoolError::Record { .. }) => true,
                        // Finished, but not removed: nothing would ever
                        // pick it up again (it is never due).
                        Ok(record) => !record.has_pending(),
                        Err(_) => false,
                    });
            if suspect {
                self.recover_one(&id, &seen, &mut report)?;
            }
        }
        Ok(report)
    }

    /// Recovery of one message, under its lock.
    fn recover_one(
        &self,
        id: &MessageId,
        seen: &Seen,
        report: &mut Recovery,
    ) -> Result<(), SpoolError> {
        let Some(lock) = LockFile::try_open(&self.lock_path(id))? else {
            return Ok(()); // someone is working on it
        };
        // Holding the lock, nobody is writing: staging files are leftovers.
        for path in &seen.staging {
            remove_if_present(path, "remove staging file")?;
            report.staging_removed += 1;
            tracing::debug!(file = %path.display(), "spool: removed a leftover staging file");
        }
        // Look again: things may have changed since the directories were read.
        let env = self.env_path(id);
        let msg = self.message_path(id);
        let has_env = exists(&env)?;
        let has_msg = exists(&msg)?;
        let loaded = self.load(id);
        let finished = matches!(&loaded, Ok(record) if !record.has_pending());
        let unreadable = match loaded {
            Err(e @ SpoolError::Record { .. }) => Some(e.to_string()),
            _ => None,
        };
        match (has_env, has_msg) {
            (true, _) if finished => {
                // What SpoolLock::remove would have done: record first.
                tracing::info!(id = %id, "spool: removing a finished message (no recipient pending)");
                remove_if_present(&env, "remove envelope record")?;
                sync_dir(&self.dir(ENV))?;
                remove_if_present(&msg, "remove message")?;
                report.finished_removed += 1;
            }
            (true, true) if unreadable.is_none() => {
                drop(lock); // a healthy message
                return Ok(());
            }
            (true, _) => {
                let why = unreadable.unwrap_or_else(|| format!("{} is missing", msg.display()));
                tracing::error!(id = %id, reason = %why, "spool: moving a broken message to corrupt/");
                self.move_to_corrupt(id, has_msg)?;
                report.moved_to_corrupt.push(id.clone());
            }
            (false, true) => {
                tracing::warn!(id = %id, "spool: removing a message with no envelope record (never acknowledged, or already done)");
                remove_if_present(&msg, "remove orphan message")?;
                report.orphans_removed += 1;
            }
            (false, false) => {
                if seen.lock {
                    report.locks_removed += 1;
                }
            }
        }
        // In every case above the message is gone from the queue now.
        lock.remove()
    }

    /// Moves the record (and the message, if any) of `id` to `corrupt/`:
    /// the message first, so a crash in between leaves a record without a
    /// message, which the next recovery moves too.
    fn move_to_corrupt(&self, id: &MessageId, has_msg: bool) -> Result<(), SpoolError> {
        let corrupt = self.dir(CORRUPT);
        if has_msg {
            rename(
                &self.message_path(id),
                &corrupt.join(id.as_str()),
                "move message to corrupt/",
            )?;
        }
        rename(
            &self.env_path(id),
            &corrupt.join(format!("{id}{JSON}")),
            "move envelope record to corrupt/",
        )?;
        sync_dir(&corrupt)?;
        sync_dir(&self.dir(ENV))?;
        if has_msg {
            sync_dir(&self.dir(MSG))?;
        }
        Ok(())
    }

    /// Creates the root and its subdirectories where missing, fsyncing the
    /// parent of each one created.
    fn create_dirs(&self) -> Result<(), SpoolError> {
        if !self.root.is_dir() {
            fs::create_dir_all(&self.root)
                .map_err(|e| SpoolError::io("create directory", &self.root, e))?;
            if let Some(parent) = self.root.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir(parent)?;
            }
        }
        let mut created = false;
        for sub in [TMP, MSG, ENV, LOCK, CORRUPT] {
            created |= disk::make_dir(&self.dir(sub))?;
        }
        if created {
            sync_dir(&self.root)?;
        }
        Ok(())
    }

    /// The queued ids (from `env/`), sorted.
    fn queued_ids(&self) -> Result<Vec<MessageId>, SpoolError> {
        let mut ids: Vec<MessageId> = self
            .names(ENV)?
            .iter()
            .filter_map(|name| name.strip_suffix(JSON))
            .filter_map(|id| MessageId::parse(id).ok())
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// The file names in one subdirectory (names that are not UTF-8 are
    /// not the spool's and are skipped).
    fn names(&self, sub: &str) -> Result<Vec<String>, SpoolError> {
        let dir = self.dir(sub);
        let entries = fs::read_dir(&dir).map_err(|e| SpoolError::io("read directory", &dir, e))?;
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| SpoolError::io("read directory", &dir, e))?;
            if let Ok(name) = entry.file_name().into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }

    /// Writes `record` as `env/<id>.json` by write-fsync-rename. The caller
    /// fsyncs `env/` afterwards; once this returned `Ok` the new record is
    /// in place (though not yet durable).
    fn write_record(&self, record: &EnvelopeRecord) -> Result<(), SpoolError> {
        let target = self.env_path(&record.id);
        let mut bytes = serde_json::to_vec_pretty(record).map_err(|source| SpoolError::Record {
            op: "encode",
            path: target.clone(),
            source,
        })?;
        bytes.push(b'\n');
        let n = RECORD_COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = self.dir(TMP).join(format!("{}{JSON}.{n}", record.id));
        let mut staged = TmpFile::armed(tmp);
        // Truncate rather than create_new: we hold the id's lock, so a file
        // of this name is a leftover of a crashed holder that recovery
        // could not remove while someone else held the lock.
        let mut file = inject("create")
            .and_then(|()| File::create(staged.path()))
            .map_err(|e| SpoolError::io("create", staged.path(), e))?;
        inject("write")
            .and_then(|()| file.write_all(&bytes))
            .map_err(|e| SpoolError::io("write", staged.path(), e))?;
        sync_file(&file, staged.path())?;
        drop(file);
        rename(staged.path(), &target, "move envelope record into env/")?;
        staged.disarm();
        Ok(())
    }

    fn dir(&self, sub: &str) -> PathBuf {
        self.root.join(sub)
    }

    fn env_path(&self, id: &MessageId) -> PathBuf {
        self.dir(ENV).join(format!("{id}{JSON}"))
    }

    fn lock_path(&self, id: &MessageId) -> PathBuf {
        self.dir(LOCK).join(id.as_str())
    }
}

/// The files recovery found for one id.
#[derive(Debug, Default)]
struct Seen {
    staging: Vec<PathBuf>,
    msg: bool,
    env: bool,
    lock: bool,
}

/// Reads and checks one record file.
fn read_record(path: &Path, id: &MessageId) -> Result<EnvelopeRecord, SpoolError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(SpoolError::NotFound {
                id: id.clone(),
                path: path.to_path_buf(),
            })
        }
        Err(e) => return Err(SpoolError::io("read", path, e)),
    };
    let decode_error = |source| SpoolError::Record {
        op: "decode",
        path: path.to_path_buf(),
        source,
    };
    let record: EnvelopeRecord = serde_json::from_slice(&bytes).map_err(decode_error)?;
    if record.id != *id {
        return Err(decode_error(serde::de::Error::custom(format!(
            "the record is for message {}",
            record.id
        ))));
    }
    Ok(record)
}

fn exists(path: &Path) -> Result<bool, SpoolError> {
    path.try_exists()
        .map_err(|e| SpoolError::io("stat", path, e))
}

/// Removes a lock file whose message is gone (or never was), logging a
/// failure: a stray lock file is harmless and recovery removes it.
fn discard_lock(lock: LockFile) {
    if let Err(e) = lock.remove() {
        tracing::warn!(error = %e, "spool: cannot remove a lock file");
    }
}

/// One message being received into `tmp/`, from [`Spool::begin`].
///
/// Finish with [`SpoolWriter::commit`]. Dropping it instead (the link was
/// cut mid-DATA, the size limit was hit, ...) removes the staging file and
/// the lock file: nothing partial is ever queued.
#[derive(Debug)]
pub struct SpoolWriter {
    spool: Spool,
    id: MessageId,
    file: BufWriter<File>,
    staged: TmpFile,
    /// `None` once committed.
    lock: Option<LockFile>,
    written: u64,
    failed: bool,
}

impl SpoolWriter {
    /// The id the message will have (for the `Received:` field's `id`
    /// clause and for logs).
    pub fn id(&self) -> &MessageId {
        &self.id
    }

    /// Appends bytes, stored as they are: trace header fields first, then
    /// the message with CRLF line ends as received after dot-unstuffing.
    ///
    /// After a failed write every further call, and [`SpoolWriter::commit`],
    /// fails with [`SpoolError::IncompleteMessage`].
    pub fn write_all(&mut self, bytes: &[u8]) -> Result<(), SpoolError> {
        if self.failed {
            return Err(self.incomplete());
        }
        match inject("write").and_then(|()| self.file.write_all(bytes)) {
            Ok(()) => {
                self.written += bytes.len() as u64;
                Ok(())
            }
            Err(e) => {
                self.failed = true;
                Err(SpoolError::io("write", self.staged.path(), e))
            }
        }
    }

    /// Bytes written so far: the `size` the record will have.
    pub fn bytes_written(&self) -> u64 {
        self.written
    }

    /// Queues the message with its envelope and returns its id; see the
    /// commit protocol in the [module documentation](self). When this
    /// returns `Ok`, message and record are on disk and fsync'd: the server
    /// may answer `250`.
    ///
    /// On error nothing is queued (what was written is removed again) and
    /// the server answers with a transient failure. Fails with
    /// [`SpoolError::NoRecipients`] if `envelope` has no recipient.
    pub fn commit(mut self, envelope: NewEnvelope) -> Result<MessageId, SpoolError> {
        if self.failed {
            return Err(self.incomplete());
        }
        if envelope.recipients.is_empty() {
            return Err(SpoolError::NoRecipients);
        }
        let record = envelope.into_record(self.id.clone(), self.written);
        inject("write")
            .and_then(|()| self.file.flush())
            .map_err(|e| SpoolError::io("write", self.staged.path(), e))?;
        sync_file(self.file.get_ref(), self.staged.path())?;
        let msg = self.spool.message_path(&self.id);
        rename(self.staged.path(), &msg, "move message into msg/")?;
        self.staged.disarm();
        let mut env_written = false;
        if let Err(e) = self.publish(&record, &mut env_written) {
            self.roll_back(env_written);
            return Err(e);
        }
        // Queued. Release the lock, keeping the lock file.
        self.lock = None;
        Ok(self.id.clone())
    }

    /// Steps of the commit after the message reached `msg/`.
    fn publish(&self, record: &EnvelopeRecord, env_written: &mut bool) -> Result<(), SpoolError> {
        sync_dir(&self.spool.dir(MSG))?;
        self.spool.write_record(record)?;
        *env_written = true;
        sync_dir(&self.spool.dir(ENV))
    }

    /// Undoes a failed commit after the message reached `msg/`: record
    /// first, then message, so that no record is ever left without its
    /// message. Failures are logged; the commit error is what is reported.
    fn roll_back(&self, env_written: bool) {
        if env_written {
            let env = self.spool.env_path(&self.id);
            let undone = remove_if_present(&env, "remove envelope record")
                .and_then(|()| sync_dir(&self.spool.dir(ENV)));
            if let Err(e) = undone {
                // The record may survive: the message stays queued and the
                // client's retry makes a duplicate, which beats a loss.
                tracing::error!(id = %self.id, error = %e, "spool: cannot undo a failed commit");
                return;
            }
        }
        let msg = self.spool.message_path(&self.id);
        if let Err(e) = remove_if_present(&msg, "remove message") {
            tracing::warn!(id = %self.id, error = %e, "spool: cannot remove a message after a failed commit");
        }
    }

    fn incomplete(&self) -> SpoolError {
        SpoolError::IncompleteMessage {
            path: self.staged.path().to_path_buf(),
        }
    }
}

impl Drop for SpoolWriter {
    fn drop(&mut self) {
        // Not committed: remove the staging file, then the lock file (in that
        // order, so that recovery never finds a staging file unguarded).
        if let Some(lock) = self.lock.take() {
            if let Err(e) = remove_if_present(self.staged.path(), "remove staging file") {
                tracing::warn!(error = %e, "spool: cannot remove a staging file");
            }
            self.staged.disarm();
            discard_lock(lock);
        }
    }
}

/// Exclusive hold on one queued message, from [`Spool::try_lock`]. Released
/// when dropped (or when the process dies).
///
/// While it is held nobody else changes the record, so [`SpoolLock::record`]
/// is the record on disk.
#[derive(Debug)]
pub struct SpoolLock {
    spool: Spool,
    record: EnvelopeRecord,
    lock: LockFile,
}

impl SpoolLock {
    /// The message's id.
    pub fn id(&self) -> &MessageId {
        &self.record.id
    }

    /// The message's record as it is on disk.
    pub fn record(&self) -> &EnvelopeRecord {
        &self.record
    }

    /// Where the message's bytes are.
    pub fn message_path(&self) -> PathBuf {
        self.spool.message_path(&self.record.id)
    }

    /// Opens the message's bytes for reading.
    pub fn open_message(&self) -> Result<File, SpoolError> {
        self.spool.open_message(&self.record.id)
    }

    /// Changes the record with `f` and replaces it on disk atomically
    /// (write, fsync, rename, fsync `env/`). A change to `id` is ignored.
    ///
    /// If writing fails before the rename, disk and [`SpoolLock::record`]
    /// keep the old record. If only the final fsync of `env/` fails, the
    /// error is returned but the new record is in place (and in memory);
    /// a crash may still bring back the old one.
    pub fn update(&mut self, f: impl FnOnce(&mut EnvelopeRecord)) -> Result<(), SpoolError> {
        let mut new = self.record.clone();
        f(&mut new);
        new.id = self.record.id.clone();
        self.spool.write_record(&new)?;
        self.record = new;
        sync_dir(&self.spool.dir(ENV))
    }

    /// Makes every pending recipient due now (`next_attempt = 0`), for
    /// `smtplink queue flush`; a running server's worker picks it up on its
    /// next look at [`Spool::due`].
    pub fn reschedule_now(&mut self) -> Result<(), SpoolError> {
        self.update(|record| {
            for r in &mut record.recipients {
                if r.state == RecipientState::Pending {
                    r.next_attempt = 0;
                }
            }
        })
    }

    /// Takes the message out of the spool: deletes the record and fsyncs
    /// `env/` (from here on it is no longer queued), then deletes the
    /// message and the lock file. A crash in between leaves a message with
    /// no record, which [`Spool::open`] deletes.
    ///
    /// An error means the record may still be there: the message may be
    /// tried again. Failures after that point are only logged.
    pub fn remove(self) -> Result<(), SpoolError> {
        let SpoolLock {
            spool,
            record,
            lock,
        } = self;
        remove_if_present(&spool.env_path(&record.id), "remove envelope record")?;
        sync_dir(&spool.dir(ENV))?;
        if let Err(e) = remove_if_present(&spool.message_path(&record.id), "remove message") {
            tracing::warn!(id = %record.id, error = %e, "spool: cannot remove a delivered message; recovery will");
        }
        discard_lock(lock);
        Ok(())
    }
}
