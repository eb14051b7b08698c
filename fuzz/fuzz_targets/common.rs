//! Helpers shared by the targets (included with `#[path]`).
#![allow(dead_code)]

/// Stalwart-style alphabet remapping: every input byte becomes one of a few
/// SMTP-significant pieces, so the fuzzer reaches deep states quickly.
const ALPHABET: &[&[u8]] = &[
    b"\r\n",
    b"\r",
    b"\n",
    b".",
    b"..",
    b" ",
    b":",
    b"<",
    b">",
    b"@",
    b"\"",
    b"\\",
    b"[",
    b"]",
    b"=",
    b"-",
    b"a",
    b"x.org",
    b"EHLO ",
    b"HELO ",
    b"MAIL FROM:",
    b"RCPT TO:",
    b"DATA",
    b"RSET",
    b"NOOP",
    b"QUIT",
    b"VRFY ",
    b"SIZE=",
    b"BODY=8BITMIME",
    b"SMTPUTF8",
    b"\r\n.\r\n",
    b"IPv6:",
    b"\xc3\xa9",
    b"\xff",
    b"\x00",
    b"250",
    b"250-",
    b"354 ",
    b"421 ",
    b"550 ",
];

pub fn remap(data: &[u8]) -> Vec<u8> {
    data.iter()
        .flat_map(|&b| ALPHABET[usize::from(b) % ALPHABET.len()].iter().copied())
        .collect()
}

/// Chunk boundaries from a seed (xorshift); seed 0 means "all at once".
pub fn chunks(len: usize, seed: u8) -> Vec<usize> {
    let mut cuts = Vec::new();
    if seed == 0 {
        return cuts;
    }
    let max = usize::from(seed % 32) + 1;
    let mut x = u32::from(seed).wrapping_mul(2_654_435_761) | 1;
    let mut at = 0;
    loop {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        at += (x as usize % max) + 1;
        if at >= len {
            return cuts;
        }
        cuts.push(at);
    }
}

/// Splits `data` at `cuts`.
pub fn pieces<'a>(data: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut start = 0;
    for &c in cuts.iter().chain(std::iter::once(&data.len())) {
        out.push(&data[start..c]);
        start = c;
    }
    out
}

/// Whether every CR and LF is part of a CRLF pair.
pub fn only_crlf(b: &[u8]) -> bool {
    b.iter().enumerate().all(|(i, &c)| match c {
        b'\r' => b.get(i + 1) == Some(&b'\n'),
        b'\n' => i > 0 && b[i - 1] == b'\r',
        _ => true,
    })
}
