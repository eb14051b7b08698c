//! Spool tests: commit protocol, crash states built by hand, locking across
//! threads and processes, atomic record replacement.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::{self, File, TryLockError};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use super::disk::faults;
use super::*;

fn envelope(recipients: &[&str], arrived: u64) -> NewEnvelope {
    NewEnvelope {
        sender: "alice@example.org".into(),
        arrived,
        peer: "tcp://192.0.2.7:4711".into(),
        helo: "client.example.org".into(),
        envid: Some("QQ314159".into()),
        ret: Some(Ret::Hdrs),
        is_bounce: false,
        recipients: recipients
            .iter()
            .map(|a| NewRecipient {
                notify: Some(vec![Notify::Failure, Notify::Delay]),
                next_hop: Some("tcp://b.example.net:25".into()),
                ..NewRecipient::new(*a)
            })
            .collect(),
    }
}

/// Commits one message with the given body and recipients.
fn queue(spool: &Spool, body: &[u8], recipients: &[&str], arrived: u64) -> MessageId {
    let mut w = spool.begin().unwrap();
    w.write_all(body).unwrap();
    w.commit(envelope(recipients, arrived)).unwrap()
}

/// Sorted file names in `<root>/<sub>`.
fn files(root: &Path, sub: &str) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(root.join(sub))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// Asserts the spool holds exactly these queued ids and nothing in
/// `tmp/` or `corrupt/`.
fn assert_only(root: &Path, ids: &[&MessageId]) {
    let mut msgs: Vec<String> = ids.iter().map(|id| id.to_string()).collect();
    msgs.sort();
    let envs: Vec<String> = msgs.iter().map(|id| format!("{id}.json")).collect();
    assert_eq!(files(root, "msg"), msgs, "msg/");
    assert_eq!(files(root, "env"), envs, "env/");
    assert_eq!(files(root, "tmp"), Vec::<String>::new(), "tmp/");
    assert_eq!(files(root, "corrupt"), Vec::<String>::new(), "corrupt/");
}

#[test]
fn commit_then_list_load_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path().join("spool")).unwrap();
    let mut w = spool.begin().unwrap();
    let id = w.id().clone();
    w.write_all(b"Received: from x\r\n").unwrap();
    w.write_all(b"Subject: hi\r\n\r\nHello.\r\n").unwrap();
    assert_eq!(w.bytes_written(), 41);
    let committed = w
        .commit(envelope(&["b@example.net", "c@example.net"], 1000))
        .unwrap();
    assert_eq!(committed, id);

    let record = spool.load(&id).unwrap();
    assert_eq!(record.id, id);
    assert_eq!(record.size, 41);
    assert_eq!(record.sender, "alice@example.org");
    assert_eq!(record.envid.as_deref(), Some("QQ314159"));
    assert_eq!(record.ret, Some(Ret::Hdrs));
    assert_eq!(record.recipients.len(), 2);
    for r in &record.recipients {
        assert_eq!(r.state, RecipientState::Pending);
        assert_eq!(r.attempts, 0);
        assert_eq!(r.next_attempt, 1000);
        assert_eq!(r.notify, Some(vec![Notify::Failure, Notify::Delay]));
    }
    assert_eq!(spool.list().unwrap(), vec![record]);

    let mut body = Vec::new();
    spool
        .open_message(&id)
        .unwrap()
        .read_to_end(&mut body)
        .unwrap();
    assert_eq!(body, b"Received: from x\r\nSubject: hi\r\n\r\nHello.\r\n");
    assert_eq!(
        spool.message_path(&id),
        spool.root().join("msg").join(id.as_str())
    );
    assert_only(spool.root(), &[&id]);

    // The lock was released by commit, and a reopened spool sees the same.
    drop(
        spool
            .try_lock(&id)
            .unwrap()
            .expect("lock released after commit"),
    );
    let again = Spool::open(dir.path().join("spool")).unwrap();
    assert_eq!(again.list().unwrap().len(), 1);
    assert_only(again.root(), &[&id]);
}

#[test]
fn list_is_in_arrival_order() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let ids: Vec<MessageId> = (0..5)
        .map(|i| queue(&spool, b"x\r\n", &["a@x"], i))
        .collect();
    let listed: Vec<MessageId> = spool.list().unwrap().into_iter().map(|r| r.id).collect();
    assert_eq!(listed, ids);
}

#[test]
fn drop_without_commit_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let mut w = spool.begin().unwrap();
    w.write_all(b"partial message, link cut mid-DATA").unwrap();
    assert_eq!(files(dir.path(), "tmp").len(), 1);
    drop(w);
    assert_only(dir.path(), &[]);
    assert_eq!(files(dir.path(), "lock"), Vec::<String>::new());
    assert!(spool.list().unwrap().is_empty());
}

#[test]
fn commit_refuses_no_recipients_and_incomplete_messages() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let w = spool.begin().unwrap();
    assert!(matches!(
        w.commit(envelope(&[], 1)),
        Err(SpoolError::NoRecipients)
    ));

    let mut w = spool.begin().unwrap();
    faults::fail_nth("write", 0);
    assert!(matches!(
        w.write_all(b"x"),
        Err(SpoolError::Io { op: "write", .. })
    ));
    faults::clear();
    assert!(matches!(
        w.write_all(b"y"),
        Err(SpoolError::IncompleteMessage { .. })
    ));
    assert!(matches!(
        w.commit(envelope(&["a@x"], 1)),
        Err(SpoolError::IncompleteMessage { .. })
    ));
    assert_only(dir.path(), &[]);
    assert_eq!(files(dir.path(), "lock"), Vec::<String>::new());
}

/// A commit that fails at any step queues nothing and leaves no file.
#[test]
fn failed_commit_leaves_nothing() {
    for (op, nth) in [
        ("fsync", 0),           // the message file
        ("rename", 0),          // tmp/<id> -> msg/<id>
        ("fsync directory", 0), // msg/
        ("create", 0),          // tmp/<id>.json.<n>
        ("fsync", 1),           // the record file
        ("rename", 1),          // the record into env/
        ("fsync directory", 1), // env/: the record was in place already
    ] {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let mut w = spool.begin().unwrap();
        w.write_all(b"Subject: x\r\n\r\nbody\r\n").unwrap();
        faults::fail_nth(op, nth);
        let result = w.commit(envelope(&["a@x"], 1));
        faults::clear();
        assert!(
            matches!(result, Err(SpoolError::Io { .. })),
            "{op} #{nth}: {result:?}"
        );
        assert_only(dir.path(), &[]);
        assert_eq!(
            files(dir.path(), "lock"),
            Vec::<String>::new(),
            "{op} #{nth}"
        );
        // And the spool still works.
        let id = queue(&spool, b"y\r\n", &["a@x"], 1);
        assert_only(dir.path(), &[&id]);
    }
}

#[test]
fn open_recovers_crash_states() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let spool = Spool::open(root).unwrap();
    let healthy = queue(&spool, b"healthy\r\n", &["a@x"], 1);
    let no_msg = queue(&spool, b"lost\r\n", &["a@x"], 1);
    let garbled = queue(&spool, b"garbled record\r\n", &["a@x"], 1);
    let orphan = MessageId::generate();
    let lone_lock = MessageId::generate();
    let staged = MessageId::generate();

    // Crash between the two renames of a commit: msg without record.
    fs::write(root.join("msg").join(orphan.as_str()), b"never acked").unwrap();
    File::create(root.join("lock").join(orphan.as_str())).unwrap();
    // Crash while receiving and while replacing a record: tmp leftovers.
    fs::write(root.join("tmp").join(staged.as_str()), b"partial").unwrap();
    fs::write(
        root.join("tmp").join(format!("{healthy}.json.17")),
        b"{\"id\":",
    )
    .unwrap();
    // Crash inside begin: a lock file and nothing else.
    File::create(root.join("lock").join(lone_lock.as_str())).unwrap();
    // Damage: a record without its message, and a record that is not JSON.
    fs::remove_file(root.join("msg").join(no_msg.as_str())).unwrap();
    fs::write(
        root.join("env").join(format!("{garbled}.json")),
        b"{\"id\": tru",
    )
    .unwrap();
    // Not the spool's: left alone.
    fs::write(root.join("tmp").join("README"), b"hello").unwrap();

    // list() copes before recovery: the garbled record is skipped.
    let listed: Vec<MessageId> = spool.list().unwrap().into_iter().map(|r| r.id).collect();
    assert_eq!(listed, vec![healthy.clone(), no_msg.clone()]);
    assert!(matches!(
        spool.load(&garbled),
        Err(SpoolError::Record { op: "decode", .. })
    ));

    let report = spool.recover().unwrap();
    assert_eq!(report.staging_removed, 2);
    assert_eq!(report.orphans_removed, 1);
    assert_eq!(report.locks_removed, 1);
    let mut corrupt = vec![no_msg.clone(), garbled.clone()];
    corrupt.sort();
    assert_eq!(report.moved_to_corrupt, corrupt);

    assert_eq!(files(root, "msg"), vec![healthy.to_string()]);
    assert_eq!(files(root, "env"), vec![format!("{healthy}.json")]);
    assert_eq!(files(root, "tmp"), vec!["README".to_string()]);
    let mut expected_corrupt = vec![
        format!("{no_msg}.json"),
        garbled.to_string(),
        format!("{garbled}.json"),
    ];
    expected_corrupt.sort();
    assert_eq!(files(root, "corrupt"), expected_corrupt);
    let corrupt_body = fs::read(root.join("corrupt").join(garbled.as_str())).unwrap();
    assert_eq!(corrupt_body, b"garbled record\r\n", "the bytes are kept");
    for gone in [&orphan, &lone_lock, &no_msg, &garbled] {
        assert!(
            !root.join("lock").join(gone.as_str()).exists(),
            "lock/{gone}"
        );
    }

    // A second recovery finds nothing to do, and the healthy message is intact.
    fs::remove_file(root.join("tmp").join("README")).unwrap();
    let reopened = Spool::open(root).unwrap();
    assert!(reopened.recover().unwrap().is_clean());
    assert_eq!(reopened.list().unwrap().len(), 1);
    let mut body = String::new();
    reopened
        .open_message(&healthy)
        .unwrap()
        .read_to_string(&mut body)
        .unwrap();
    assert_eq!(body, "healthy\r\n");
}

/// Another process opening the spool (say `smtplink queue list` while the
/// server receives) must not take away a message being written.
#[test]
fn recovery_leaves_locked_messages_alone() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let mut w = spool.begin().unwrap();
    w.write_all(b"in flight\r\n").unwrap();
    let other = Spool::open(dir.path()).unwrap();
    assert_eq!(files(dir.path(), "tmp"), vec![w.id().to_string()]);
    let id = w.commit(envelope(&["a@x"], 1)).unwrap();
    assert_only(other.root(), &[&id]);

    // Mid-commit as seen from outside: message there, record not yet, lock
    // held by the committer.
    let mid = MessageId::generate();
    fs::write(other.root().join("msg").join(mid.as_str()), b"m").unwrap();
    let held = File::create(other.root().join("lock").join(mid.as_str())).unwrap();
    held.try_lock().unwrap();
    assert!(other.recover().unwrap().is_clean());
    assert!(other.message_path(&mid).exists());
    drop(held);
    assert_eq!(other.recover().unwrap().orphans_removed, 1);
    assert!(!other.message_path(&mid).exists());
}

/// A crash after the worker recorded the last outcome but before it removed
/// the message leaves a record with nothing pending: never due again, so
/// recovery removes it (and leaves a message with a pending recipient).
#[test]
fn recovery_removes_a_finished_message_left_by_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let done = queue(&spool, b"done\r\n", &["a@x", "b@x"], 1);
    let half = queue(&spool, b"half\r\n", &["a@x", "b@x"], 1);
    for (id, states) in [
        (&done, [RecipientState::Delivered, RecipientState::Bounced]),
        (&half, [RecipientState::Delivered, RecipientState::Pending]),
    ] {
        let mut lock = spool.try_lock(id).unwrap().unwrap();
        lock.update(|r| {
            for (rcpt, state) in r.recipients.iter_mut().zip(states) {
                rcpt.state = state;
            }
        })
        .unwrap();
        drop(lock); // the "crash": no remove()
    }
    assert!(!spool.load(&done).unwrap().is_due(u64::MAX), "never due");

    assert_eq!(
        spool.recover().unwrap(),
        Recovery {
            finished_removed: 1,
            ..Recovery::default()
        }
    );
    assert_only(dir.path(), &[&half]);
    assert!(!dir.path().join("lock").join(done.as_str()).exists());
    assert!(Spool::open(dir.path())
        .unwrap()
        .recover()
        .unwrap()
        .is_clean());
}

/// Locks are per open file description: two handles in one process
/// conflict, which is what lets threads of one server exclude each other.
#[test]
fn two_file_handles_in_one_process_conflict() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l");
    let a = File::create(&path).unwrap();
    let b = File::open(&path).unwrap();
    a.try_lock().unwrap();
    assert!(matches!(b.try_lock(), Err(TryLockError::WouldBlock)));
    drop(a);
    b.try_lock().unwrap();
}

#[test]
fn second_lock_from_another_thread_gets_none() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let id = queue(&spool, b"x\r\n", &["a@x"], 1);
    let first = spool.try_lock(&id).unwrap().expect("free");
    thread::scope(|s| {
        let got = s.spawn(|| spool.try_lock(&id).unwrap().is_some());
        assert!(!got.join().unwrap(), "the second locker must get None");
    });
    assert!(spool.try_lock(&id).unwrap().is_none(), "same thread too");
    drop(first);
    thread::scope(|s| {
        let got = s.spawn(|| spool.try_lock(&id).unwrap().is_some());
        assert!(got.join().unwrap(), "free again after drop");
    });
}

const CHILD_ROOT: &str = "SMTPLINK_SPOOL_TEST_CHILD_ROOT";
const CHILD_ID: &str = "SMTPLINK_SPOOL_TEST_CHILD_ID";

/// Not a test on its own: the body of the child process started by
/// `lock_excludes_another_process`. Without its environment it does nothing.
#[test]
fn child_process_lock_holder() {
    let (Ok(root), Ok(id)) = (std::env::var(CHILD_ROOT), std::env::var(CHILD_ID)) else {
        return;
    };
    let spool = Spool::open(root).unwrap();
    let lock = spool.try_lock(&MessageId::parse(&id).unwrap()).unwrap();
    let mut out = std::io::stdout();
    let word = if lock.is_some() {
        "CHILD-LOCKED"
    } else {
        "CHILD-BUSY"
    };
    writeln!(out, "\n{word}").unwrap();
    out.flush().unwrap();
    // Hold the lock until the parent closes stdin (or kills us).
    let mut rest = String::new();
    let _ = std::io::stdin().read_to_string(&mut rest);
    drop(lock);
}

#[test]
fn lock_excludes_another_process() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let id = queue(&spool, b"x\r\n", &["a@x"], 1);
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "spool::tests::child_process_lock_holder",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ROOT, dir.path())
        .env(CHILD_ID, id.as_str())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut answer = None;
    for line in stdout.lines() {
        let line = line.unwrap();
        if line.starts_with("CHILD-") {
            answer = Some(line);
            break;
        }
    }
    assert_eq!(answer.as_deref(), Some("CHILD-LOCKED"));
    assert!(
        spool.try_lock(&id).unwrap().is_none(),
        "locked by the child process"
    );
    // The child dies without unlocking: the lock dies with it.
    child.kill().unwrap();
    child.wait().unwrap();
    let mut lock = spool
        .try_lock(&id)
        .unwrap()
        .expect("free after the child died");
    lock.reschedule_now().unwrap();
}

#[test]
fn update_is_atomic_for_readers() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let id = queue(&spool, b"x\r\n", &["a@x", "b@x"], 1);
    let done = AtomicBool::new(false);
    thread::scope(|s| {
        let reader = s.spawn(|| {
            let mut reads = 0u32;
            let mut last = 0;
            while !done.load(Ordering::Acquire) {
                let record = spool
                    .load(&id)
                    .expect("the record is readable at all times");
                let attempts = record.recipients[0].attempts;
                assert!(attempts >= last, "never goes back");
                last = attempts;
                let listed = spool.list().unwrap();
                assert_eq!(listed.len(), 1, "list never misses the record");
                reads += 1;
            }
            reads
        });
        let mut lock = spool.try_lock(&id).unwrap().unwrap();
        for i in 1..=200u32 {
            lock.update(|r| {
                let first = &mut r.recipients[0];
                first.attempts = i;
                first.last_attempt = Some(u64::from(i));
                // Records of changing length: a torn read would not parse.
                first.last_reply = Some(format!(
                    "451 4.4.1 try {}",
                    "again ".repeat(i as usize % 37)
                ));
            })
            .unwrap();
        }
        done.store(true, Ordering::Release);
        let reads = reader.join().unwrap();
        assert!(reads > 0);
        assert_eq!(lock.record().recipients[0].attempts, 200);
    });
    assert_eq!(spool.load(&id).unwrap().recipients[0].attempts, 200);
    assert_only(dir.path(), &[&id]);
}

#[test]
fn update_keeps_the_id_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let id = queue(&spool, b"x\r\n", &["a@x", "b@x"], 1);
    let other = queue(&spool, b"y\r\n", &["a@x"], 1);
    let mut lock = spool.try_lock(&id).unwrap().unwrap();
    lock.update(|r| {
        r.id = other.clone();
        r.recipients[0].state = RecipientState::Delivered;
        r.recipients[0].last_reply = Some("250 2.0.0 ok".into());
    })
    .unwrap();
    assert_eq!(lock.id(), &id);
    drop(lock);
    let reopened = Spool::open(dir.path()).unwrap();
    let record = reopened.load(&id).unwrap();
    assert_eq!(record.id, id);
    assert_eq!(record.recipients[0].state, RecipientState::Delivered);
    assert_eq!(record.recipients[1].state, RecipientState::Pending);
    assert_eq!(
        reopened.load(&other).unwrap().recipients[0].state,
        RecipientState::Pending
    );
}

#[test]
fn failed_update_keeps_the_old_record() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let id = queue(&spool, b"x\r\n", &["a@x"], 1);
    let mut lock = spool.try_lock(&id).unwrap().unwrap();
    faults::fail_nth("rename", 0);
    let result = lock.update(|r| r.recipients[0].attempts = 9);
    faults::clear();
    assert!(matches!(
        result,
        Err(SpoolError::Io {
            op: "move envelope record into env/",
            ..
        })
    ));
    assert_eq!(lock.record().recipients[0].attempts, 0);
    assert_eq!(spool.load(&id).unwrap().recipients[0].attempts, 0);
    assert_only(dir.path(), &[&id]);
}

#[test]
fn due_respects_next_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let early = queue(&spool, b"x\r\n", &["a@x", "b@x"], 100);
    let late = queue(&spool, b"y\r\n", &["a@x"], 300);
    assert_eq!(spool.due(99).unwrap(), Vec::<MessageId>::new());
    assert_eq!(spool.due(100).unwrap(), vec![early.clone()]);
    assert_eq!(spool.due(300).unwrap(), vec![early.clone(), late.clone()]);

    let mut lock = spool.try_lock(&early).unwrap().unwrap();
    lock.update(|r| {
        r.recipients[0].state = RecipientState::Delivered;
        r.recipients[1].next_attempt = 1000;
        r.recipients[1].attempts = 1;
    })
    .unwrap();
    assert_eq!(spool.due(999).unwrap(), vec![late.clone()]);
    assert_eq!(spool.due(1000).unwrap(), vec![early.clone(), late.clone()]);

    // queue flush: due at once; the delivered recipient stays delivered.
    lock.reschedule_now().unwrap();
    assert_eq!(spool.due(0).unwrap(), vec![early.clone()]);
    let record = spool.load(&early).unwrap();
    assert_eq!(record.recipients[0].state, RecipientState::Delivered);
    assert_eq!(record.recipients[0].next_attempt, 100);
    assert_eq!(record.recipients[1].next_attempt, 0);

    // Nothing pending: never due.
    lock.update(|r| r.recipients[1].state = RecipientState::Bounced)
        .unwrap();
    assert_eq!(spool.due(u64::MAX).unwrap(), vec![late]);
}

#[test]
fn remove_removes_every_file() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let keep = queue(&spool, b"keep\r\n", &["a@x"], 1);
    let id = queue(&spool, b"x\r\n", &["a@x"], 1);
    let mut lock = spool.try_lock(&id).unwrap().unwrap();
    lock.update(|r| r.recipients[0].state = RecipientState::Delivered)
        .unwrap();
    lock.remove().unwrap();
    assert_only(dir.path(), &[&keep]);
    assert_eq!(files(dir.path(), "lock"), vec![keep.to_string()]);
    assert!(spool.load(&id).unwrap_err().is_not_found());
    assert!(spool.open_message(&id).unwrap_err().is_not_found());
    // Locking a message that is gone says so, and leaves no lock file.
    assert!(matches!(
        spool.try_lock(&id),
        Err(SpoolError::NotFound { .. })
    ));
    assert_eq!(files(dir.path(), "lock"), vec![keep.to_string()]);
}

/// A user-given id is checked before it names any file.
#[test]
fn user_given_ids_are_validated() {
    for bad in ["../x", "", "a/b", "../../env/x", "."] {
        assert!(matches!(
            MessageId::parse(bad),
            Err(SpoolError::InvalidId { .. })
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let id = queue(&spool, b"x\r\n", &["a@x"], 1);
    let parsed: MessageId = id.as_str().parse().unwrap();
    assert_eq!(spool.load(&parsed).unwrap().id, id);
}

/// Not a test: how many messages per second the spool accepts, fsyncs
/// included (each commit is 2 file and 2 directory fsyncs). Asserts
/// nothing about time. Run with
/// `cargo test --release -p smtplink-relay spool_commit_rate -- --ignored --nocapture`;
/// `SMTPLINK_SPOOL_BENCH_DIR` picks the file system (default: the temp dir).
#[test]
#[ignore = "benchmark; prints a figure"]
fn spool_commit_rate() {
    let base = std::env::var_os("SMTPLINK_SPOOL_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let body: Vec<u8> = b"Subject: bench\r\n\r\n"
        .iter()
        .copied()
        .chain(std::iter::repeat_n(b'x', 5 * 1024))
        .collect();
    for threads in [1usize, 4] {
        let dir = tempfile::tempdir_in(&base).unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let per_thread = 400 / threads;
        let start = std::time::Instant::now();
        thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| {
                    for _ in 0..per_thread {
                        queue(&spool, &body, &["a@example.net", "b@example.net"], 1);
                    }
                });
            }
        });
        let elapsed = start.elapsed();
        let n = per_thread * threads;
        assert_eq!(spool.list().unwrap().len(), n);
        println!(
            "spool commit, 5 KiB, {threads} thread(s), {}: {n} messages in {:.2?}, {:.0} msg/s",
            base.display(),
            elapsed,
            n as f64 / elapsed.as_secs_f64()
        );
    }
}
