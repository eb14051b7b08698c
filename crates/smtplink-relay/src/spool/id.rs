//! Message ids: unique, sortable by arrival, safe as file names.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::SpoolError;

/// Makes ids unique within this process (the last field).
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Hex digits of each field, and so the fixed shape of an id.
const FIELDS: [usize; 4] = [10, 8, 8, 8];
/// Length of an id: the fields and three dashes.
const LEN: usize = 10 + 8 + 8 + 8 + 3;

/// The name of one message in the spool, e.g.
/// `0068a1b2c3-1a2b3c4d-00001f40-00000001`.
///
/// Four fixed-width fields of lowercase hex, separated by dashes: the arrival
/// time in Unix seconds (10 digits), its nanoseconds (8), the process id of
/// the writer (8) and a per-process counter (8). Fixed widths make the
/// string order the arrival order, so `ls` and [`Ord`] agree; the process
/// id and counter make ids unique across processes sharing one spool.
///
/// An id is never derived from anything a peer sent. One given by a user
/// (`smtplink queue delete ID`) goes through [`MessageId::parse`], which
/// accepts exactly this shape: no path separators, no dots, nothing empty.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MessageId(String);

impl MessageId {
    /// A fresh id for a message arriving now.
    pub(crate) fn generate() -> Self {
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        // Ten hex digits last until the year 36812; clamp rather than
        // produce an id of another shape if the clock is absurd.
        let secs = since.as_secs().min(0xff_ffff_ffff);
        MessageId(format!(
            "{secs:010x}-{:08x}-{:08x}-{:08x}",
            since.subsec_nanos(),
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ))
    }

    /// Checks that `input` is a message id and returns it. Refuses anything
    /// else (wrong length, upper case, any character other than `0-9a-f`
    /// and the three dashes, nanoseconds out of range) with
    /// [`SpoolError::InvalidId`], so a user's input can never name a path
    /// outside the spool.
    pub fn parse(input: &str) -> Result<Self, SpoolError> {
        if is_valid(input) {
            Ok(MessageId(input.to_owned()))
        } else {
            Err(invalid(input))
        }
    }

    /// The id as text (also its file name in `msg/` and `lock/`).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Arrival time encoded in the id, in Unix seconds.
    pub fn arrival_secs(&self) -> u64 {
        self.0
            .get(..FIELDS[0])
            .and_then(|s| u64::from_str_radix(s, 16).ok())
            .unwrap_or(0)
    }
}

/// The error for a string that is not an id; quotes at most 80 characters.
fn invalid(input: &str) -> SpoolError {
    SpoolError::InvalidId {
        input: input.chars().take(80).collect(),
    }
}

fn is_valid(input: &str) -> bool {
    if input.len() != LEN {
        return false;
    }
    let mut fields = input.split('-');
    for width in FIELDS {
        match fields.next() {
            Some(f)
                if f.len() == width
                    && f.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) => {}
            _ => return false,
        }
    }
    if fields.next().is_some() {
        return false;
    }
    // The second field is a sub-second count of nanoseconds.
    input
        .get(11..19)
        .and_then(|n| u32::from_str_radix(n, 16).ok())
        .is_some_and(|n| n < 1_000_000_000)
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for MessageId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl FromStr for MessageId {
    type Err = SpoolError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        MessageId::parse(s)
    }
}

impl TryFrom<String> for MessageId {
    type Error = SpoolError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        if is_valid(&s) {
            Ok(MessageId(s))
        } else {
            Err(invalid(&s))
        }
    }
}

impl From<MessageId> for String {
    fn from(id: MessageId) -> String {
        id.0
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn generated_ids_parse_and_sort_by_arrival() {
        let ids: Vec<MessageId> = (0..100).map(|_| MessageId::generate()).collect();
        for id in &ids {
            assert_eq!(MessageId::parse(id.as_str()).unwrap(), *id);
            assert_eq!(id.as_str().len(), LEN);
        }
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(sorted, ids, "generation order is sort order");
        let unique: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len());
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(now.abs_diff(ids[0].arrival_secs()) < 60);
    }

    #[test]
    fn parse_refuses_anything_else() {
        let good = "0068a1b2c3-1a2b3c4d-00001f40-00000001";
        assert!(MessageId::parse(good).is_ok());
        for bad in [
            "",
            "../x",
            "a/b",
            "..",
            ".",
            "0068a1b2c3-1a2b3c4d-00001f40-0000000",
            "0068a1b2c3-1a2b3c4d-00001f40-000000011",
            "0068A1B2C3-1a2b3c4d-00001f40-00000001",
            "0068a1b2c3_1a2b3c4d-00001f40-00000001",
            "0068a1b2c3-1a2b3c4d-00001f4000000001-",
            "0068a1b2c3-ffffffff-00001f40-00000001",
            "../../../../../../../../../../etc/passwd",
            "0068a1b2c3-1a2b3c4d-00001f40-0000000/",
            "0068a1b2c3-1a2b3c4d-00001f40-0000000\u{e9}",
            "0068a1b2c3-1a2b3c4d-00001f40-00000001.json",
        ] {
            assert!(
                matches!(MessageId::parse(bad), Err(SpoolError::InvalidId { .. })),
                "accepted {bad:?}"
            );
        }
    }

    #[test]
    fn serde_validates() {
        let good = "\"0068a1b2c3-1a2b3c4d-00001f40-00000001\"";
        let id: MessageId = serde_json::from_str(good).unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), good);
        assert!(serde_json::from_str::<MessageId>("\"../x\"").is_err());
    }
}
