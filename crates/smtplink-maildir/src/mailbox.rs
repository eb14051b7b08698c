//! Mapping a (hostile) recipient address to one safe directory name.

use sha2::{Digest, Sha256};

/// Longest directory name [`mailbox_dir_name`] returns, in bytes.
pub const MAX_MAILBOX_NAME_LEN: usize = 200;

/// Name given to the empty address (which no escape can produce).
const EMPTY_NAME: &str = "%empty";

/// Marker between the kept prefix and the hash of a shortened name.
const HASH_MARKER: &str = "%~";

/// Hex digits of the hash appended to a shortened name.
const HASH_HEX_LEN: usize = 16;

/// Maps a recipient address to the name of its Maildir directory: a single,
/// safe path component.
///
/// The address comes from the network and may contain anything. The mapping:
///
/// 1. **Normalise.** The address is split at its *last* `@` (a quoted local
///    part may itself contain `@`; a domain never does). The domain is
///    lower-cased; the local part is kept as is, because RFC 5321 (2.4) makes
///    it case-sensitive. `Bob@Example.NET` becomes `Bob@example.net`. An
///    address without `@` (such as `postmaster`) is kept as is.
/// 2. **Escape.** ASCII letters and digits, the characters
///    ``@.!#$&'*+=?^_`{|}~-`` and non-ASCII letters (Unicode alphabetic) are
///    kept. Every other character, `%` included, is written as `%XX` per
///    UTF-8 byte, with upper-case hex digits: `/` becomes `%2F`, a space
///    `%20`, `"` `%22`, `\` `%5C`, `%` `%25`.
/// 3. **No leading dot.** A `.` in first position becomes `%2E`, so the
///    name never starts with a dot (hidden files, `.` and `..`).
/// 4. **Empty.** The empty address maps to `%empty`.
/// 5. **Length.** A name longer than [`MAX_MAILBOX_NAME_LEN`] (200) bytes is
///    cut to at most 182 bytes (never inside a character or a `%XX`
///    escape) and followed by `%~` and 16 hex digits of the SHA-256 of the
///    whole escaped name, giving at most 200 bytes.
///
/// The result is never `""`, `.` or `..`, never contains `/` or NUL, and
/// never starts with `.`. Escaping is one-to-one, and the two markers
/// (`%empty`, `%~`) contain a `%` that is not followed by two upper-case
/// hex digits, which no escape produces; so two addresses get the same name
/// only when they differ just in the case of their domain (or, for names
/// over 200 bytes, share a 182-byte prefix and 64 bits of SHA-256).
///
/// On a case-insensitive file system (macOS, Windows defaults), local parts
/// that differ only in case share a directory.
///
/// ```
/// use smtplink_maildir::mailbox_dir_name;
/// assert_eq!(mailbox_dir_name("Bob@Example.NET"), "Bob@example.net");
/// assert_eq!(mailbox_dir_name("../../etc@x"), "%2E.%2F..%2Fetc@x");
/// assert_eq!(mailbox_dir_name("\"quoted local\"@x"), "%22quoted%20local%22@x");
/// ```
pub fn mailbox_dir_name(recipient: &str) -> String {
    if recipient.is_empty() {
        return EMPTY_NAME.to_owned();
    }
    let normalized = match recipient.rfind('@') {
        Some(at) => {
            let (local, domain) = recipient.split_at(at);
            format!("{local}{}", domain.to_lowercase())
        }
        None => recipient.to_owned(),
    };

    let mut out = String::with_capacity(normalized.len());
    for (i, ch) in normalized.char_indices() {
        if keep(ch) && !(i == 0 && ch == '.') {
            out.push(ch);
        } else {
            let mut buf = [0u8; 4];
            for b in ch.encode_utf8(&mut buf).bytes() {
                push_escape(&mut out, b);
            }
        }
    }

    if out.len() <= MAX_MAILBOX_NAME_LEN {
        return out;
    }
    // SHA-256, not a cheap hash: a peer must not be able to craft a long
    // address that collides with another one.
    let digest = Sha256::digest(out.as_bytes());
    let mut cut = MAX_MAILBOX_NAME_LEN - HASH_MARKER.len() - HASH_HEX_LEN;
    while !out.is_char_boundary(cut) {
        cut -= 1;
    }
    // `%` only ever starts a three-byte escape here; do not split one.
    let bytes = out.as_bytes();
    if cut >= 1 && bytes[cut - 1] == b'%' {
        cut -= 1;
    } else if cut >= 2 && bytes[cut - 2] == b'%' {
        cut -= 2;
    }
    out.truncate(cut);
    out.push_str(HASH_MARKER);
    for b in &digest[..HASH_HEX_LEN / 2] {
        out.push(hex_digit(b >> 4).to_ascii_lowercase());
        out.push(hex_digit(b & 0x0f).to_ascii_lowercase());
    }
    out
}

/// Whether `ch` may appear unescaped in a mailbox directory name.
fn keep(ch: char) -> bool {
    ch.is_ascii_alphanumeric()
        || "@.!#$&'*+=?^_`{|}~-".contains(ch)
        || (!ch.is_ascii() && ch.is_alphabetic())
}

fn push_escape(out: &mut String, b: u8) {
    out.push('%');
    out.push(hex_digit(b >> 4));
    out.push(hex_digit(b & 0x0f));
}

fn hex_digit(nibble: u8) -> char {
    char::from(b"0123456789ABCDEF"[usize::from(nibble & 0x0f)])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    /// The properties every name must have.
    fn assert_safe(name: &str) {
        assert!(!name.is_empty());
        assert_ne!(name, ".");
        assert_ne!(name, "..");
        assert!(!name.starts_with('.'), "{name}");
        assert!(!name.contains('/'), "{name}");
        assert!(!name.contains('\0'), "{name}");
        assert!(!name.contains('\\'), "{name}");
        assert!(name.len() <= MAX_MAILBOX_NAME_LEN, "{}", name.len());
        for ch in name.chars() {
            assert!(!ch.is_control(), "{name:?}");
            assert!(!ch.is_whitespace(), "{name:?}");
        }
    }

    #[test]
    fn domain_lowercased_local_kept() {
        assert_eq!(mailbox_dir_name("Bob@Example.NET"), "Bob@example.net");
        assert_eq!(mailbox_dir_name("bob@EXAMPLE.net"), "bob@example.net");
        assert_ne!(
            mailbox_dir_name("Bob@example.net"),
            mailbox_dir_name("bob@example.net")
        );
        assert_eq!(mailbox_dir_name("postmaster"), "postmaster");
    }

    #[test]
    fn hostile_inputs() {
        let cases = [
            ("../../etc@x", "%2E.%2F..%2Fetc@x"),
            ("a/b@c", "a%2Fb@c"),
            ("\"quoted local\"@x", "%22quoted%20local%22@x"),
            (".hidden@x", "%2Ehidden@x"),
            (".", "%2E"),
            ("..", "%2E."),
            ("a\\b@x", "a%5Cb@x"),
            ("100%@x", "100%25@x"),
            ("a\0b@x", "a%00b@x"),
            ("a\r\nb@x", "a%0D%0Ab@x"),
            ("\"a@b\"@X.ORG", "%22a@b%22@x.org"),
            ("@", "@"),
            ("", "%empty"),
            ("x@[IPv6:::1]", "x@%5Bipv6%3A%3A%3A1%5D"),
        ];
        for (input, want) in cases {
            let got = mailbox_dir_name(input);
            assert_eq!(got, want, "input {input:?}");
            assert_safe(&got);
        }
    }

    #[test]
    fn utf8_letters_kept_other_unicode_escaped() {
        assert_eq!(mailbox_dir_name("Jörg@Bücher.DE"), "Jörg@bücher.de");
        assert_eq!(mailbox_dir_name("用户@例子.广告"), "用户@例子.广告");
        // RIGHT-TO-LEFT OVERRIDE and a zero-width space are not letters.
        assert_eq!(mailbox_dir_name("a\u{202e}b@x"), "a%E2%80%AEb@x");
        assert_eq!(mailbox_dir_name("a\u{200b}@x"), "a%E2%80%8B@x");
        // A non-ASCII dot-like character first is escaped or kept, never '.'.
        assert_safe(&mailbox_dir_name("\u{2024}@x"));
    }

    #[test]
    fn long_names_are_cut_and_stay_unique() {
        let long_a = format!("{}@x", "a".repeat(1000));
        let long_b = format!("{}b@x", "a".repeat(999));
        let a = mailbox_dir_name(&long_a);
        let b = mailbox_dir_name(&long_b);
        assert_safe(&a);
        assert_safe(&b);
        assert_eq!(a.len(), MAX_MAILBOX_NAME_LEN);
        assert!(a.starts_with(&"a".repeat(182)));
        assert!(a[182..].starts_with("%~"));
        assert_ne!(a, b);
        // Stable: the same input always gives the same name.
        assert_eq!(a, mailbox_dir_name(&long_a));
        // Domain case still does not matter.
        assert_eq!(mailbox_dir_name(&format!("{}@X", "a".repeat(1000))), a);

        // Exactly 200 bytes is not cut; 201 is.
        let exact = "a".repeat(198) + "@x";
        assert_eq!(mailbox_dir_name(&exact), exact);
        let over = "a".repeat(199) + "@x";
        assert_ne!(mailbox_dir_name(&over), over);
        assert_safe(&mailbox_dir_name(&over));
    }

    #[test]
    fn cut_never_splits_an_escape_or_a_char() {
        for pad in 0..6 {
            for filler in ["/", "ö", "\u{202e}", "用"] {
                let addr = format!("{}{}@x", "a".repeat(pad), filler.repeat(300));
                let name = mailbox_dir_name(&addr);
                assert_safe(&name);
                let (prefix, _) = name.split_once("%~").unwrap();
                // Every '%' in the prefix starts a complete escape.
                let bytes = prefix.as_bytes();
                for (i, &b) in bytes.iter().enumerate() {
                    if b == b'%' {
                        assert!(i + 2 < bytes.len(), "split escape in {name}");
                        assert!(bytes[i + 1].is_ascii_hexdigit());
                        assert!(bytes[i + 2].is_ascii_hexdigit());
                    }
                }
            }
        }
    }

    #[test]
    fn different_addresses_get_different_names() {
        let inputs = [
            "a/b@c", "a%2Fb@c", "a_b@c", ".a@c", "%2Ea@c", "a@c", "A@c", "", "%empty", "%25empty",
        ];
        let mut names: Vec<String> = inputs.iter().map(|s| mailbox_dir_name(s)).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), inputs.len());
    }
}
