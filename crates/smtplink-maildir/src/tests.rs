//! Tests of the store: durability steps, rollback, hostile input.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::store::{escape_hostname, hooks};
use crate::{MaildirError, MaildirStore, MessageWriter, TraceInfo};

/// 2026-12-03 13:42:36 UTC.
fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_796_305_356) + Duration::from_micros(123_456)
}

fn trace(recipients: &[&str]) -> TraceInfo {
    TraceInfo {
        reverse_path: "alice@example.org".into(),
        helo: "client.example.org".into(),
        peer: "127.0.0.1".into(),
        peer_ip: Some("127.0.0.1".parse().unwrap()),
        protocol: "ESMTP".into(),
        id: "T1".into(),
        recipients: recipients.iter().map(|s| s.to_string()).collect(),
        tls: None,
    }
}

fn rcpts(t: &TraceInfo) -> Vec<String> {
    t.recipients.clone()
}

fn list(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = match fs::read_dir(dir) {
        Ok(rd) => rd.map(|e| e.unwrap().path()).collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("read_dir {}: {e}", dir.display()),
    };
    v.sort();
    v
}

/// Every regular file below `dir`, recursively.
fn all_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for p in list(&d) {
            let meta = fs::symlink_metadata(&p).unwrap();
            if meta.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn setup() -> (tempfile::TempDir, MaildirStore) {
    hooks::clear();
    let dir = tempfile::tempdir().unwrap();
    let store = MaildirStore::new(dir.path().join("mail"), "mx.example.net");
    (dir, store)
}

const BODY: &[u8] = b"Subject: test\r\n\r\nHello.\r\n..leading dot kept\r\n";

#[test]
fn one_recipient() {
    let (_dir, store) = setup();
    let t = trace(&["Bob@Example.NET"]);
    let mut w = store.begin_at(&t, now()).unwrap();
    assert!(w
        .tmp_path()
        .starts_with(store.root().join("Bob@example.net/tmp")));
    w.write_all(&BODY[..10]).unwrap();
    w.write_all(&BODY[10..]).unwrap();
    assert_eq!(w.bytes_written(), BODY.len() as u64);
    let paths = w.commit(&rcpts(&t)).unwrap();

    let maildir = store.mailbox_path("Bob@Example.NET");
    assert_eq!(maildir, store.root().join("Bob@example.net"));
    assert_eq!(paths.len(), 1);
    assert_eq!(list(&maildir.join("new")), paths);
    assert!(list(&maildir.join("tmp")).is_empty());
    assert!(maildir.join("cur").is_dir());

    let mut want = t.render("mx.example.net", now());
    want.extend_from_slice(BODY);
    assert_eq!(fs::read(&paths[0]).unwrap(), want);

    let name = paths[0].file_name().unwrap().to_str().unwrap().to_owned();
    let prefix = format!("1796305356.M123456P{}Q", std::process::id());
    assert!(name.starts_with(&prefix), "{name}");
    assert!(
        name.ends_with(&format!(".mx.example.net,S={}", want.len())),
        "{name}"
    );
    let text = String::from_utf8(want).unwrap();
    assert!(text.starts_with(
        "Return-Path: <alice@example.org>\r\nReceived: from client.example.org ([127.0.0.1])\r\n"
    ));
    assert!(text.contains("\tfor <Bob@Example.NET>; Thu, 03 Dec 2026 13:42:36 +0000\r\n"));
}

#[test]
fn three_recipients_two_share_a_mailbox() {
    let (_dir, store) = setup();
    let t = trace(&["bob@example.net", "carol@example.net", "bob@EXAMPLE.NET"]);
    let mut w = store.begin_at(&t, now()).unwrap();
    w.write_all(BODY).unwrap();
    let (files_before, dirs_before) = hooks::syncs();
    let paths = w.commit(&rcpts(&t)).unwrap();
    let (files_after, dirs_after) = hooks::syncs();

    assert_eq!(paths.len(), 2);
    let bob = store.mailbox_path("bob@example.net");
    let carol = store.mailbox_path("carol@example.net");
    assert_eq!(list(&bob.join("new")), vec![paths[0].clone()]);
    assert_eq!(list(&carol.join("new")), vec![paths[1].clone()]);
    assert_eq!(list(store.root()).len(), 2, "{:?}", list(store.root()));
    assert!(list(&bob.join("tmp")).is_empty());
    assert!(list(&carol.join("tmp")).is_empty());

    let a = fs::read(&paths[0]).unwrap();
    let b = fs::read(&paths[1]).unwrap();
    assert_eq!(a, b);
    assert!(a.ends_with(BODY));
    // Several recipients: no "for" clause naming one of them.
    let header = String::from_utf8_lossy(&a[..a.len() - BODY.len()]).into_owned();
    assert!(!header.contains("for <"), "{header}");
    assert!(!header.contains("carol"), "{header}");

    // fsync path taken: the data file once, and tmp/ + new/ of both
    // mailboxes (plus carol's freshly created directories).
    assert!(files_after - files_before >= 1);
    assert!(dirs_after - dirs_before >= 4);

    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        // Hard-linked: one inode, two names.
        let ma = fs::metadata(&paths[0]).unwrap();
        let mb = fs::metadata(&paths[1]).unwrap();
        assert_eq!(ma.ino(), mb.ino());
        assert_eq!(ma.nlink(), 2);
    }
}

#[test]
fn fsync_path_taken_for_one_recipient() {
    let (_dir, store) = setup();
    let t = trace(&["bob@example.net"]);
    let (f0, d0) = hooks::syncs();
    let mut w = store.begin_at(&t, now()).unwrap();
    let (f1, d1) = hooks::syncs();
    // Creating root, mailbox and its subdirectories fsyncs their parents.
    assert_eq!(f1, f0);
    assert!(d1 - d0 >= 2, "{d0} -> {d1}");
    w.write_all(BODY).unwrap();
    w.commit(&rcpts(&t)).unwrap();
    let (f2, d2) = hooks::syncs();
    assert_eq!(f2 - f1, 1, "the message file is fsync'd once");
    assert_eq!(d2 - d1, 1, "new/ is fsync'd (tmp/ need not be)");
}

#[test]
fn drop_without_commit_leaves_nothing() {
    let (_dir, store) = setup();
    let t = trace(&["bob@example.net"]);
    let mut w = store.begin_at(&t, now()).unwrap();
    w.write_all(BODY).unwrap();
    w.write_all(&vec![b'x'; 200_000]).unwrap();
    let tmp = w.tmp_path().to_path_buf();
    assert!(tmp.exists());
    drop(w);
    let maildir = store.mailbox_path("bob@example.net");
    assert!(list(&maildir.join("tmp")).is_empty());
    assert!(list(&maildir.join("new")).is_empty());
    assert!(all_files(store.root()).is_empty());
}

#[test]
fn abort_leaves_nothing() {
    let (_dir, store) = setup();
    let t = trace(&["bob@example.net"]);
    let mut w = store.begin_at(&t, now()).unwrap();
    w.write_all(BODY).unwrap();
    w.abort().unwrap();
    assert!(all_files(store.root()).is_empty());
}

#[test]
fn failed_commit_leaves_no_file_in_any_new() {
    let (_dir, store) = setup();
    let t = trace(&["bob@example.net", "carol@example.net", "dave@example.net"]);
    fs::create_dir_all(store.root()).unwrap();
    // carol's maildir path is a regular file: creating it fails.
    let carol = store.mailbox_path("carol@example.net");
    fs::write(&carol, b"not a directory").unwrap();

    let mut w = store.begin_at(&t, now()).unwrap();
    w.write_all(BODY).unwrap();
    let err = w.commit(&rcpts(&t)).unwrap_err();
    match &err {
        MaildirError::Io { path, op, .. } => {
            assert_eq!(*op, "create directory");
            assert_eq!(path, &carol);
        }
        other => panic!("unexpected error {other:?}"),
    }
    assert!(err.to_string().contains("carol@example.net"), "{err}");
    // Nothing anywhere but carol's blocking file.
    assert_eq!(all_files(store.root()), vec![carol]);
}

#[test]
fn failed_rename_unlinks_what_already_reached_new() {
    let (_dir, store) = setup();
    let t = trace(&["bob@example.net", "carol@example.net", "dave@example.net"]);
    let mut w = store.begin_at(&t, now()).unwrap();
    w.write_all(BODY).unwrap();
    // The first two renames succeed, the third fails.
    hooks::fail_nth("rename", 2, io::ErrorKind::PermissionDenied);
    let err = w.commit(&rcpts(&t)).unwrap_err();
    match &err {
        MaildirError::Io { op, path, .. } => {
            assert_eq!(*op, "rename into new/");
            assert!(
                path.starts_with(store.mailbox_path("dave@example.net").join("tmp")),
                "{err}"
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(
        all_files(store.root()).is_empty(),
        "{:?}",
        all_files(store.root())
    );
    for r in ["bob@example.net", "carol@example.net", "dave@example.net"] {
        assert!(store.mailbox_path(r).join("new").is_dir());
    }
}

#[test]
fn failed_directory_fsync_rolls_back() {
    let (_dir, store) = setup();
    let t = trace(&["bob@example.net", "carol@example.net"]);
    // Create both maildirs first so only commit's own fsyncs are counted.
    drop(store.begin_at(&t, now()).unwrap());
    drop(
        store
            .begin_at(&trace(&["carol@example.net"]), now())
            .unwrap(),
    );
    let mut w = store.begin_at(&t, now()).unwrap();
    w.write_all(BODY).unwrap();
    // new, new: fail the last one, after every rename succeeded.
    hooks::fail_nth("fsync directory", 1, io::ErrorKind::Other);
    let err = w.commit(&rcpts(&t)).unwrap_err();
    match &err {
        MaildirError::Io { op, path, .. } => {
            assert_eq!(*op, "fsync directory");
            assert!(
                path.starts_with(store.mailbox_path("carol@example.net").join("new")),
                "{err}"
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(all_files(store.root()).is_empty());
}

#[test]
fn failed_file_fsync_fails_commit() {
    let (_dir, store) = setup();
    let t = trace(&["bob@example.net"]);
    let mut w = store.begin_at(&t, now()).unwrap();
    w.write_all(BODY).unwrap();
    hooks::fail_nth("fsync", 0, io::ErrorKind::Other);
    let err = w.commit(&rcpts(&t)).unwrap_err();
    assert!(
        matches!(err, MaildirError::Io { op: "fsync", .. }),
        "{err:?}"
    );
    assert!(all_files(store.root()).is_empty());
}

#[test]
fn rollback_that_cannot_unlink_is_reported() {
    let (_dir, store) = setup();
    let t = trace(&["bob@example.net", "carol@example.net"]);
    let mut w = store.begin_at(&t, now()).unwrap();
    w.write_all(BODY).unwrap();
    // Commit fails at carol's rename; rolling back bob's copy fails too.
    hooks::fail_nth("rename", 1, io::ErrorKind::Other);
    hooks::fail_nth("roll back", 0, io::ErrorKind::PermissionDenied);
    let err = w.commit(&rcpts(&t)).unwrap_err();
    match err {
        MaildirError::RollbackIncomplete { source, stranded } => {
            assert!(matches!(
                *source,
                MaildirError::Io {
                    op: "rename into new/",
                    ..
                }
            ));
            assert_eq!(stranded.len(), 1);
            assert!(stranded[0].starts_with(store.mailbox_path("bob@example.net").join("new")));
            assert!(stranded[0].exists());
        }
        other => panic!("unexpected {other:?}"),
    }
    // The tmp files are gone all the same.
    assert_eq!(all_files(store.root()).len(), 1);
}

#[test]
fn hard_link_failure_falls_back_to_copy() {
    let (_dir, store) = setup();
    let t = trace(&["bob@example.net", "carol@example.net"]);
    let mut w = store.begin_at(&t, now()).unwrap();
    w.write_all(BODY).unwrap();
    hooks::fail_nth("hard-link", 0, io::ErrorKind::CrossesDevices);
    let (f0, _) = hooks::syncs();
    let paths = w.commit(&rcpts(&t)).unwrap();
    let (f1, _) = hooks::syncs();
    assert_eq!(f1 - f0, 2, "original and copy are both fsync'd");
    assert_eq!(paths.len(), 2);
    assert_eq!(fs::read(&paths[0]).unwrap(), fs::read(&paths[1]).unwrap());
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let ma = fs::metadata(&paths[0]).unwrap();
        let mb = fs::metadata(&paths[1]).unwrap();
        assert_ne!(ma.ino(), mb.ino());
    }
    assert_eq!(all_files(store.root()), {
        let mut p = paths.clone();
        p.sort();
        p
    });
}

#[test]
fn large_body_is_byte_identical() {
    let (_dir, store) = setup();
    let t = trace(&["bob@example.net", "carol@example.net"]);
    let body: Vec<u8> = (0..3 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mut w = store.begin_at(&t, now()).unwrap();
    // Uneven chunks, as a network would deliver them.
    let mut rest = &body[..];
    let mut n = 1;
    while !rest.is_empty() {
        let take = n.min(rest.len());
        w.write_all(&rest[..take]).unwrap();
        rest = &rest[take..];
        n = n * 3 % 100_003 + 1;
    }
    assert_eq!(w.bytes_written(), body.len() as u64);
    let total = w.total_size();
    let paths = w.commit(&rcpts(&t)).unwrap();
    let mut want = t.render("mx.example.net", now());
    want.extend_from_slice(&body);
    assert_eq!(total, want.len() as u64);
    for p in &paths {
        let got = fs::read(p).unwrap();
        assert!(got == want, "stored copy differs");
        assert!(p.to_str().unwrap().ends_with(&format!(",S={total}")));
    }
}

#[test]
fn eight_bit_and_odd_line_ends_preserved() {
    let (_dir, store) = setup();
    let t = trace(&["bob@example.net"]);
    let mut body: Vec<u8> = (0..=255u8).collect();
    body.extend_from_slice(b"\r\nbare LF\nbare CR\rcrlf\r\n\xff\xfe\x00end");
    body.extend_from_slice("Grüße, 你好\r\n".as_bytes());
    let mut w = store.begin_at(&t, now()).unwrap();
    w.write_all(&body).unwrap();
    let paths = w.commit(&rcpts(&t)).unwrap();
    let got = fs::read(&paths[0]).unwrap();
    let header = t.render("mx.example.net", now());
    assert_eq!(&got[..header.len()], &header[..]);
    assert_eq!(&got[header.len()..], &body[..]);
}

#[test]
fn empty_body_is_stored() {
    let (_dir, store) = setup();
    let t = trace(&["bob@example.net"]);
    let w = store.begin_at(&t, now()).unwrap();
    let paths = w.commit(&rcpts(&t)).unwrap();
    assert_eq!(
        fs::read(&paths[0]).unwrap(),
        t.render("mx.example.net", now())
    );
}

#[test]
fn failed_write_poisons_the_message() {
    let (_dir, store) = setup();
    let t = trace(&["bob@example.net"]);
    let mut w = store.begin_at(&t, now()).unwrap();
    w.write_all(BODY).unwrap();
    hooks::fail_nth("write", 0, io::ErrorKind::StorageFull);
    let err = w.write_all(BODY).unwrap_err();
    assert!(
        matches!(err, MaildirError::Io { op: "write", .. }),
        "{err:?}"
    );
    assert!(matches!(
        w.write_all(BODY),
        Err(MaildirError::IncompleteMessage)
    ));
    assert!(matches!(
        w.commit(&rcpts(&t)),
        Err(MaildirError::IncompleteMessage)
    ));
    assert!(all_files(store.root()).is_empty());
}

#[test]
fn no_recipients() {
    let (_dir, store) = setup();
    assert!(matches!(
        store.begin_at(&trace(&[]), now()),
        Err(MaildirError::NoRecipients)
    ));
    let t = trace(&["bob@example.net"]);
    let mut w = store.begin_at(&t, now()).unwrap();
    w.write_all(BODY).unwrap();
    assert!(matches!(w.commit(&[]), Err(MaildirError::NoRecipients)));
    assert!(all_files(store.root()).is_empty());
}

#[test]
fn staged_mailbox_not_among_commit_recipients() {
    let (_dir, store) = setup();
    let t = trace(&["bob@example.net"]);
    let mut w = store.begin_at(&t, now()).unwrap();
    w.write_all(BODY).unwrap();
    let paths = w.commit(&["carol@example.net".to_owned()]).unwrap();
    assert_eq!(all_files(store.root()), paths);
    assert!(paths[0].starts_with(store.mailbox_path("carol@example.net").join("new")));
}

#[test]
fn hostile_recipients_stay_inside_root() {
    let (dir, store) = setup();
    let long = format!("{}@x", "l".repeat(1000));
    let hostile = [
        "../../etc@x",
        "a/b@c",
        "\"quoted local\"@x",
        ".hidden@x",
        "..",
        "",
        long.as_str(),
    ];
    let t = trace(&hostile);
    let mut w = store.begin_at(&t, now()).unwrap();
    w.write_all(BODY).unwrap();
    let paths = w.commit(&rcpts(&t)).unwrap();
    assert_eq!(paths.len(), hostile.len());
    // Only the root was created beside the store; every mailbox is a
    // direct child of the root with new/tmp/cur.
    assert_eq!(list(dir.path()), vec![store.root().to_path_buf()]);
    let mailboxes = list(store.root());
    assert_eq!(mailboxes.len(), hostile.len());
    for (r, p) in hostile.iter().zip(&paths) {
        let maildir = store.mailbox_path(r);
        assert_eq!(maildir.parent().unwrap(), store.root());
        assert!(p.starts_with(maildir.join("new")));
        let name = maildir.file_name().unwrap().to_str().unwrap();
        assert!(!name.starts_with('.'));
        assert!(name.len() <= 200);
    }
}

#[cfg(unix)]
#[test]
fn symlinked_mailbox_gets_one_copy() {
    let (_dir, store) = setup();
    let t = trace(&["bob@example.net"]);
    drop(store.begin_at(&t, now()).unwrap());
    std::os::unix::fs::symlink(
        store.mailbox_path("bob@example.net"),
        store.mailbox_path("robert@example.net"),
    )
    .unwrap();
    let t = trace(&["robert@example.net", "bob@example.net"]);
    let mut w = store.begin_at(&t, now()).unwrap();
    w.write_all(BODY).unwrap();
    let paths = w.commit(&rcpts(&t)).unwrap();
    assert_eq!(paths.len(), 1);
    assert_eq!(
        list(&store.mailbox_path("bob@example.net").join("new")).len(),
        1
    );
    assert!(list(&store.mailbox_path("bob@example.net").join("tmp")).is_empty());
}

#[test]
fn file_names_are_unique() {
    let (_dir, store) = setup();
    let t = trace(&["bob@example.net"]);
    for _ in 0..50 {
        let mut w = store.begin_at(&t, now()).unwrap();
        w.write_all(BODY).unwrap();
        w.commit(&rcpts(&t)).unwrap();
    }
    assert_eq!(
        list(&store.mailbox_path("bob@example.net").join("new")).len(),
        50
    );
}

#[test]
fn begin_uses_the_clock() {
    let (_dir, store) = setup();
    let t = trace(&["bob@example.net"]);
    let mut w = store.begin(&t).unwrap();
    w.write_all(BODY).unwrap();
    let paths = w.commit(&rcpts(&t)).unwrap();
    let text = fs::read(&paths[0]).unwrap();
    assert!(text.starts_with(b"Return-Path: <alice@example.org>\r\nReceived: "));
}

#[test]
fn hostnames_are_escaped_in_file_names() {
    assert_eq!(escape_hostname("mx.example.net"), "mx.example.net");
    assert_eq!(escape_hostname("a/b:c,d"), "a\\057b\\072c\\054d");
    assert_eq!(escape_hostname("a b\n"), "a\\040b\\012");
    assert_eq!(escape_hostname(""), "localhost");
    let (_dir, store) = setup();
    let store = MaildirStore::new(store.root(), "evil/../host:1");
    let t = trace(&["bob@example.net"]);
    let w = store.begin_at(&t, now()).unwrap();
    let paths = w.commit(&rcpts(&t)).unwrap();
    assert_eq!(
        paths[0].parent().unwrap(),
        store.mailbox_path("bob@example.net").join("new")
    );
    assert!(paths[0]
        .to_str()
        .unwrap()
        .contains(".evil\\057..\\057host\\0721,S="));
}

#[test]
fn types_can_move_to_a_blocking_thread() {
    fn send<T: Send + 'static>() {}
    send::<MaildirStore>();
    send::<MessageWriter>();
    send::<MaildirError>();
    fn sync<T: Sync>() {}
    sync::<MaildirError>();
}
