//! The Maildir store: staging a message, then publishing it durably into
//! every recipient's `new/`.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::MaildirError;
use crate::mailbox::mailbox_dir_name;
use crate::trace::TraceInfo;

/// Size of the write buffer in front of the staged file.
const BUFFER_SIZE: usize = 64 * 1024;

/// Makes file names unique within this process (the `Q<n>` part).
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A tree of Maildirs, one per recipient: `<root>/<mailbox>/{tmp,new,cur}`,
/// where `<mailbox>` is [`mailbox_dir_name`] of the recipient address.
///
/// All methods do blocking file-system I/O; call them from
/// `tokio::task::spawn_blocking` (or any thread that may block). A store is
/// cheap to clone, and [`MessageWriter`] owns what it needs, so both can be
/// moved between threads.
///
/// Directories (the root included) are created when first needed, and each
/// new directory entry is fsync'd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaildirStore {
    root: PathBuf,
    hostname: String,
}

impl MaildirStore {
    /// A store under `root`. `hostname` is this server's name: it goes into
    /// the `by` clause of the `Received:` field and, escaped, into every
    /// file name. Nothing is touched on disk yet.
    pub fn new(root: impl Into<PathBuf>, hostname: impl Into<String>) -> Self {
        MaildirStore {
            root: root.into(),
            hostname: hostname.into(),
        }
    }

    /// A store under `root` named after this machine's host name.
    pub fn with_system_hostname(root: impl Into<PathBuf>) -> Self {
        let hostname = gethostname::gethostname().to_string_lossy().into_owned();
        MaildirStore::new(root, hostname)
    }

    /// The directory that holds the Maildirs.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The host name given to [`MaildirStore::new`].
    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    /// Path of the Maildir for a recipient (does not create it). See
    /// [`mailbox_dir_name`] for how the address is mapped.
    pub fn mailbox_path(&self, recipient: &str) -> PathBuf {
        self.root.join(mailbox_dir_name(recipient))
    }

    /// Starts one message, stamped with the current time.
    ///
    /// Creates the first recipient's Maildir if needed, opens a new file in
    /// its `tmp/` and writes the trace header fields
    /// ([`TraceInfo::render`]) before any body byte. Fails with
    /// [`MaildirError::NoRecipients`] if `trace.recipients` is empty.
    pub fn begin(&self, trace: &TraceInfo) -> Result<MessageWriter, MaildirError> {
        self.begin_at(trace, SystemTime::now())
    }

    /// [`MaildirStore::begin`] with the time given: it dates the `Received:`
    /// field and the file name.
    pub fn begin_at(
        &self,
        trace: &TraceInfo,
        now: SystemTime,
    ) -> Result<MessageWriter, MaildirError> {
        let first = trace.recipients.first().ok_or(MaildirError::NoRecipients)?;
        self.begin_with_header(first, &trace.render(&self.hostname, now), now)
    }

    /// Starts one message with header fields the caller prepared (e.g. a
    /// `Return-Path:` for a message that already carries its `Received:`
    /// fields), staged in `first_recipient`'s Maildir.
    pub fn begin_with_header(
        &self,
        first_recipient: &str,
        header: &[u8],
        now: SystemTime,
    ) -> Result<MessageWriter, MaildirError> {
        let mailbox = mailbox_dir_name(first_recipient);
        let maildir = ensure_maildir(&self.root, &mailbox)?;
        let base = unique_base(&self.hostname, now);
        let path = maildir.join("tmp").join(&base);
        inject("create").map_err(|e| MaildirError::io("create", &path, e))?;
        let file = File::create_new(&path).map_err(|e| MaildirError::io("create", &path, e))?;
        let staged = TmpFile::armed(path);
        let mut file = BufWriter::with_capacity(BUFFER_SIZE, file);
        file.write_all(header)
            .map_err(|e| MaildirError::io("write", staged.path(), e))?;
        Ok(MessageWriter {
            root: self.root.clone(),
            base,
            mailbox,
            file,
            staged,
            header_len: header.len() as u64,
            body_len: 0,
            failed: false,
        })
    }
}

/// One message being received: the trace header fields, then the body as
/// it arrives, in a file in `tmp/`.
///
/// Finish with [`MessageWriter::commit`]. Dropping it instead (the link was
/// cut mid-DATA, the size limit was hit, ...) removes the file: nothing
/// partial is ever delivered.
#[derive(Debug)]
pub struct MessageWriter {
    root: PathBuf,
    /// Unique name of the message without the `,S=` part.
    base: String,
    /// Mailbox directory name the staged file lives in.
    mailbox: String,
    file: BufWriter<File>,
    /// The staged file; removed on drop unless it was moved into `new/`.
    staged: TmpFile,
    header_len: u64,
    body_len: u64,
    failed: bool,
}

impl MessageWriter {
    /// Appends body bytes, stored byte for byte: the raw message with CRLF
    /// line ends as received after dot-unstuffing. No line-end conversion.
    ///
    /// After a failed write every further call, and [`commit`], fails with
    /// [`MaildirError::IncompleteMessage`].
    ///
    /// [`commit`]: MessageWriter::commit
    pub fn write_all(&mut self, body: &[u8]) -> Result<(), MaildirError> {
        if self.failed {
            return Err(MaildirError::IncompleteMessage);
        }
        let result = inject("write").and_then(|()| self.file.write_all(body));
        match result {
            Ok(()) => {
                self.body_len += body.len() as u64;
                Ok(())
            }
            Err(e) => {
                self.failed = true;
                Err(MaildirError::io("write", self.staged.path(), e))
            }
        }
    }

    /// Body bytes written so far (the trace header fields not counted).
    pub fn bytes_written(&self) -> u64 {
        self.body_len
    }

    /// Bytes the stored file will have: trace header fields plus body. This
    /// is the `S=` value of the final file name.
    pub fn total_size(&self) -> u64 {
        self.header_len + self.body_len
    }

    /// Path of the staged file in `tmp/`.
    pub fn tmp_path(&self) -> &Path {
        self.staged.path()
    }

    /// Throws the message away, removing the staged file, and reports
    /// whether that worked. Dropping the writer does the same silently.
    pub fn abort(mut self) -> Result<(), MaildirError> {
        let path = self.staged.path().to_path_buf();
        self.staged.disarm();
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(MaildirError::io("remove", path, e)),
        }
    }

    /// Makes the message durable, one copy per distinct recipient mailbox,
    /// and returns the paths of the files in `new/`, one per mailbox in
    /// order of first appearance.
    ///
    /// Recipients whose addresses map to the same directory (they differ
    /// only in the case of the domain) get one copy. `recipients` is
    /// normally `trace.recipients` from [`MaildirStore::begin`]; if the
    /// first recipient's mailbox is not among them the staged file is only
    /// used as the source of the copies.
    ///
    /// Steps, following the Maildir rules: flush and fsync the staged file;
    /// for every other mailbox create `tmp/`, `new/`, `cur/` as needed and
    /// hard-link the file into its `tmp/` (copy and fsync instead if the
    /// link fails, e.g. across file systems); rename each `tmp/` file into
    /// `new/` as `<unique>,S=<size>`; fsync every `new/` directory. Only when all of that succeeded is the message stored.
    ///
    /// On failure no file is left in any `tmp/` or `new/`: files already
    /// renamed into `new/` are unlinked again, so a retry by the client does
    /// not give some recipients a second copy. If such an unlink fails, the
    /// error is [`MaildirError::RollbackIncomplete`]. A crash between the
    /// first rename and the last fsync can still leave the message in some
    /// mailboxes and not others; after the client retries, those get it
    /// twice, which RFC 5321 (6.1) accepts over losing it.
    pub fn commit(self, recipients: &[String]) -> Result<Vec<PathBuf>, MaildirError> {
        let MessageWriter {
            root,
            base,
            mailbox,
            file,
            staged,
            header_len,
            body_len,
            failed,
        } = self;
        let mut txn = Txn {
            staged,
            links: Vec::new(),
            published: Vec::new(),
        };
        if failed {
            // Discard the buffer rather than flush it into a doomed file.
            drop(file.into_parts());
            return Err(MaildirError::IncompleteMessage);
        }
        let size = header_len + body_len;
        match txn.run(&root, &base, &mailbox, file, size, recipients) {
            Ok(paths) => Ok(paths),
            Err(err) => {
                let stranded = txn.roll_back();
                if stranded.is_empty() {
                    Err(err)
                } else {
                    Err(MaildirError::RollbackIncomplete {
                        source: Box::new(err),
                        stranded,
                    })
                }
            }
        }
    }
}

/// The state of a commit in progress, so a failure can be undone.
struct Txn {
    staged: TmpFile,
    /// Files hard-linked or copied into other mailboxes' `tmp/`.
    links: Vec<TmpFile>,
    /// Files already renamed into a `new/`.
    published: Vec<PathBuf>,
}

/// One mailbox's part of a commit.
struct Target {
    maildir: PathBuf,
    /// Index into `Txn::links`, or `None` for the staged file itself.
    link: Option<usize>,
    tmp: PathBuf,
    new: PathBuf,
}

impl Txn {
    fn run(
        &mut self,
        root: &Path,
        base: &str,
        staged_mailbox: &str,
        mut file: BufWriter<File>,
        size: u64,
        recipients: &[String],
    ) -> Result<Vec<PathBuf>, MaildirError> {
        let staged_path = self.staged.path().to_path_buf();
        inject("flush")
            .and_then(|()| file.flush())
            .map_err(|e| MaildirError::io("write", &staged_path, e))?;
        sync_file(file.get_ref(), &staged_path)?;
        drop(file);

        let mut seen = HashSet::new();
        let mailboxes: Vec<String> = recipients
            .iter()
            .map(|r| mailbox_dir_name(r))
            .filter(|m| seen.insert(m.clone()))
            .collect();
        if mailboxes.is_empty() {
            return Err(MaildirError::NoRecipients);
        }

        let final_name = format!("{base},S={size}");
        let mut targets = Vec::with_capacity(mailboxes.len());
        let mut dirs_seen = HashSet::new();
        let staged_id = dir_identity(&root.join(staged_mailbox)).unwrap_or(None);
        for mailbox in &mailboxes {
            let maildir = ensure_maildir(root, mailbox)?;
            // Two names can still be one directory: a case-insensitive file
            // system, or a mailbox that is a symlink to another. One copy.
            let id = dir_identity(&maildir)?;
            if let Some(id) = id {
                if !dirs_seen.insert(id) {
                    continue;
                }
            }
            let new = maildir.join("new").join(&final_name);
            if mailbox == staged_mailbox || (id.is_some() && id == staged_id) {
                targets.push(Target {
                    maildir,
                    link: None,
                    tmp: staged_path.clone(),
                    new,
                });
            } else {
                let tmp = maildir.join("tmp").join(base);
                let copy = link_or_copy(&staged_path, &tmp)?;
                self.links.push(copy);
                targets.push(Target {
                    maildir,
                    link: Some(self.links.len() - 1),
                    tmp,
                    new,
                });
            }
        }

        for target in &targets {
            inject("rename")
                .and_then(|()| fs::rename(&target.tmp, &target.new))
                .map_err(|e| MaildirError::io("rename into new/", &target.tmp, e))?;
            match target.link {
                None => self.staged.disarm(),
                Some(i) => {
                    if let Some(link) = self.links.get_mut(i) {
                        link.disarm();
                    }
                }
            }
            self.published.push(target.new.clone());
        }

        // Only new/ is fsync'd: the message is durable once its new/ entry
        // is. A tmp/ entry that a crash resurrects is a stale name for the
        // same file, which Maildir readers never look at (and cleaners
        // remove), so syncing tmp/ would cost a seek and buy nothing.
        for target in &targets {
            sync_dir(&target.maildir.join("new"))?;
        }

        // Success. If the staged mailbox got no copy, its tmp file is
        // removed when `self.staged` is dropped.
        self.published.clear();
        Ok(targets.into_iter().map(|t| t.new).collect())
    }

    /// Undoes a failed commit: unlinks what reached `new/` and (through
    /// the guards' drop) every tmp file. Returns the `new/` files that could
    /// not be removed.
    fn roll_back(&mut self) -> Vec<PathBuf> {
        let mut stranded = Vec::new();
        let mut dirs: Vec<PathBuf> = Vec::new();
        for path in self.published.drain(..) {
            match inject("roll back").and_then(|()| fs::remove_file(&path)) {
                Ok(()) => {
                    if let Some(dir) = path.parent() {
                        dirs.push(dir.to_path_buf());
                    }
                }
                Err(e) => {
                    tracing::error!(
                        path = %path.display(),
                        error = %e,
                        "cannot remove a partly delivered message from new/"
                    );
                    stranded.push(path);
                }
            }
        }
        for dir in dirs {
            if let Err(e) = sync_dir(&dir) {
                tracing::warn!(error = %e, "rollback: fsync failed");
            }
        }
        self.links.clear();
        stranded
    }
}

/// A file in `tmp/` that is removed when dropped, unless disarmed.
#[derive(Debug)]
struct TmpFile {
    path: PathBuf,
    armed: bool,
}

impl TmpFile {
    fn armed(path: PathBuf) -> Self {
        TmpFile { path, armed: true }
    }

    fn path(&self) -> &Path {
        &self.path
    }

    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for TmpFile {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        match fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(
                path = %self.path.display(),
                error = %e,
                "cannot remove a temporary message file"
            ),
        }
    }
}

/// Hard-links `src` to `dst`, or copies it (and fsyncs the copy) when the
/// link cannot be made. Returns a guard for `dst`.
fn link_or_copy(src: &Path, dst: &Path) -> Result<TmpFile, MaildirError> {
    let linked = inject("hard-link").and_then(|()| fs::hard_link(src, dst));
    match linked {
        Ok(()) => Ok(TmpFile::armed(dst.to_path_buf())),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            Err(MaildirError::io("hard-link", dst, e))
        }
        Err(e) => {
            tracing::debug!(error = %e, to = %dst.display(), "hard link failed; copying");
            let mut from = File::open(src).map_err(|e| MaildirError::io("open", src, e))?;
            let mut to = File::create_new(dst).map_err(|e| MaildirError::io("create", dst, e))?;
            let guard = TmpFile::armed(dst.to_path_buf());
            io::copy(&mut from, &mut to).map_err(|e| MaildirError::io("copy to", dst, e))?;
            sync_file(&to, dst)?;
            Ok(guard)
        }
    }
}

/// Makes sure `<root>/<mailbox>/{tmp,new,cur}` exist and returns
/// `<root>/<mailbox>`. Every directory created has its entry fsync'd.
fn ensure_maildir(root: &Path, mailbox: &str) -> Result<PathBuf, MaildirError> {
    if !root.is_dir() {
        fs::create_dir_all(root).map_err(|e| MaildirError::io("create directory", root, e))?;
        if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
    }
    let maildir = root.join(mailbox);
    if make_dir(&maildir)? {
        sync_dir(root)?;
    }
    let mut created = false;
    for sub in ["tmp", "new", "cur"] {
        created |= make_dir(&maildir.join(sub))?;
    }
    if created {
        sync_dir(&maildir)?;
    }
    Ok(maildir)
}

/// Creates one directory; `Ok(false)` if it was already there.
fn make_dir(path: &Path) -> Result<bool, MaildirError> {
    let made = inject("create directory").and_then(|()| fs::create_dir(path));
    match made {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            if path.is_dir() {
                Ok(false)
            } else {
                Err(MaildirError::io(
                    "create directory",
                    path,
                    io::Error::new(
                        io::ErrorKind::NotADirectory,
                        "exists and is not a directory",
                    ),
                ))
            }
        }
        Err(e) => Err(MaildirError::io("create directory", path, e)),
    }
}

/// The (device, inode) of a directory, to tell when two paths are one.
#[cfg(unix)]
fn dir_identity(path: &Path) -> Result<Option<(u64, u64)>, MaildirError> {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(path).map_err(|e| MaildirError::io("stat", path, e))?;
    Ok(Some((meta.dev(), meta.ino())))
}

#[cfg(not(unix))]
fn dir_identity(_path: &Path) -> Result<Option<(u64, u64)>, MaildirError> {
    Ok(None)
}

fn sync_file(file: &File, path: &Path) -> Result<(), MaildirError> {
    inject("fsync")
        .and_then(|()| file.sync_all())
        .map_err(|e| MaildirError::io("fsync", path, e))?;
    hooks::count_file_sync();
    Ok(())
}

/// fsyncs a directory so the entries created, renamed or removed in it
/// survive a crash. A no-op where directories cannot be opened as files.
fn sync_dir(path: &Path) -> Result<(), MaildirError> {
    #[cfg(unix)]
    {
        inject("fsync directory")
            .and_then(|()| File::open(path))
            .and_then(|dir| dir.sync_all())
            .map_err(|e| MaildirError::io("fsync directory", path, e))?;
        hooks::count_dir_sync();
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// `<secs>.M<usec>P<pid>Q<counter>.<host>`: the Maildir unique name.
fn unique_base(hostname: &str, now: SystemTime) -> String {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    format!(
        "{}.M{}P{}Q{}.{}",
        since.as_secs(),
        since.subsec_micros(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        escape_hostname(hostname)
    )
}

/// The host name as it goes into a file name: `/` becomes `\057` and `:`
/// `\072` (the Maildir convention), `,` `\054` (it starts Maildir++
/// fields), `\` `\134`, and control and white-space characters their octal
/// bytes the same way. An empty name becomes `localhost`.
pub(crate) fn escape_hostname(hostname: &str) -> String {
    if hostname.is_empty() {
        return "localhost".to_owned();
    }
    let mut out = String::with_capacity(hostname.len());
    for ch in hostname.chars() {
        if matches!(ch, '/' | ':' | ',' | '\\') || ch.is_control() || ch.is_whitespace() {
            let mut buf = [0u8; 4];
            for b in ch.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("\\{b:03o}"));
            }
        } else {
            out.push(ch);
        }
    }
    out
}

/// Fault injection point: a no-op outside this crate's own tests.
#[inline]
fn inject(op: &'static str) -> io::Result<()> {
    hooks::fail_point(op)
}

#[cfg(not(test))]
mod hooks {
    use std::io;

    #[inline(always)]
    pub(super) fn fail_point(_op: &'static str) -> io::Result<()> {
        Ok(())
    }
    #[inline(always)]
    pub(super) fn count_file_sync() {}
    #[inline(always)]
    pub(super) fn count_dir_sync() {}
}

/// Test-only hooks: make the n-th operation of a kind fail, and count
/// fsyncs. Per thread, so tests running in parallel do not interfere.
#[cfg(test)]
pub(crate) mod hooks {
    use std::cell::{Cell, RefCell};
    use std::io;

    thread_local! {
        static FAULTS: RefCell<Vec<(&'static str, usize, io::ErrorKind)>> =
            const { RefCell::new(Vec::new()) };
        static FILE_SYNCS: Cell<usize> = const { Cell::new(0) };
        static DIR_SYNCS: Cell<usize> = const { Cell::new(0) };
    }

    /// Makes the `nth` (0-based) next operation `op` on this thread fail
    /// with `kind`. Faults for different operations can be combined.
    pub(crate) fn fail_nth(op: &'static str, nth: usize, kind: io::ErrorKind) {
        FAULTS.with(|f| f.borrow_mut().push((op, nth, kind)));
    }

    /// Clears any pending fault.
    pub(crate) fn clear() {
        FAULTS.with(|f| f.borrow_mut().clear());
    }

    /// (file fsyncs, directory fsyncs) on this thread so far.
    pub(crate) fn syncs() -> (usize, usize) {
        (FILE_SYNCS.with(Cell::get), DIR_SYNCS.with(Cell::get))
    }

    pub(super) fn fail_point(op: &'static str) -> io::Result<()> {
        FAULTS.with(|f| {
            let mut faults = f.borrow_mut();
            let mut fired = None;
            for (i, (want, n, kind)) in faults.iter_mut().enumerate() {
                if *want == op {
                    if *n == 0 {
                        fired = Some((i, *kind));
                        break;
                    }
                    *n -= 1;
                }
            }
            match fired {
                Some((i, kind)) => {
                    faults.remove(i);
                    Err(io::Error::new(kind, format!("injected failure of {op}")))
                }
                None => Ok(()),
            }
        })
    }

    pub(super) fn count_file_sync() {
        FILE_SYNCS.with(|c| c.set(c.get() + 1));
    }

    pub(super) fn count_dir_sync() {
        DIR_SYNCS.with(|c| c.set(c.get() + 1));
    }
}
