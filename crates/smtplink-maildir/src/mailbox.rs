//! Mapping a (hostile) recipient address to one safe directory name.

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
    let digest = sha256(out.as_bytes());
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

/// SHA-256 (FIPS 180-4). Used only to keep shortened names unique, where a
/// non-cryptographic hash would let a peer craft a colliding address.
pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];
    let mut h: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ];

    let bit_len = (data.len() as u64).wrapping_mul(8);
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bit_len.to_be_bytes());

    for block in msg.chunks_exact(64) {
        let mut w = [0u32; 64];
        for (i, word) in block.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut hh] = h;
        for i in 0..64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = hh
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(K[i])
                .wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            hh = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (state, v) in h.iter_mut().zip([a, b, c, d, e, f, g, hh]) {
            *state = state.wrapping_add(v);
        }
    }

    let mut out = [0u8; 32];
    for (chunk, word) in out.chunks_exact_mut(4).zip(h) {
        chunk.copy_from_slice(&word.to_be_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn sha256_known_vectors() {
        assert_eq!(
            hex(&sha256(b"")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            hex(&sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            hex(&sha256(
                b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"
            )),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
        );
        assert_eq!(
            hex(&sha256(&vec![b'a'; 1_000_000])),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"
        );
    }

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
