//! `serial://` endpoints: the device and its line settings, and opening it.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use smtplink_transport::{Endpoint, TransportError};
use tokio_serial::{DataBits, FlowControl, Parity, SerialPort, SerialStream, StopBits};

/// The query keys a `serial://` endpoint takes.
pub const KEYS: &[&str] = &["baud", "data", "parity", "stop", "flow", "idle"];

/// A serial device and how to drive it, from an endpoint such as
/// `serial:///dev/ttyUSB0?baud=9600&data=8&parity=none&stop=1&flow=none`.
///
/// | key      | values                          | default |
/// |----------|---------------------------------|---------|
/// | `baud`   | bits per second, e.g. 9600      | required |
/// | `data`   | 5, 6, 7, 8                      | 8       |
/// | `parity` | none, odd, even                 | none    |
/// | `stop`   | 1, 2                            | 1       |
/// | `flow`   | none, software, hardware        | none    |
/// | `idle`   | seconds without traffic before a session is given up; 0 = never | 600 |
///
/// The baud rate has no default on purpose: both ends must agree, and a
/// guessed rate fails in ways (garbage, silence) that are hard to read.
/// 8 data bits are needed for 8-bit mail; 7 works only for 7-bit text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerialSettings {
    /// The device, e.g. `/dev/ttyUSB0` or a socat pty link.
    pub path: PathBuf,
    /// Bits per second; both ends must use the same rate.
    pub baud: u32,
    /// Bits per character.
    pub data_bits: DataBits,
    /// Parity bit.
    pub parity: Parity,
    /// Stop bits.
    pub stop_bits: StopBits,
    /// Flow control: none, XON/XOFF (software) or RTS/CTS (hardware).
    pub flow: FlowControl,
    /// A session with no traffic either way for this long is given up
    /// (`None`: never; SMTP's own timeouts still apply).
    pub idle_timeout: Option<Duration>,
}

fn bad(endpoint: &Endpoint, key: &str, value: &str, expected: &str) -> TransportError {
    TransportError::invalid_endpoint(
        endpoint,
        format!("bad value '{value}' for {key} (expected {expected})"),
    )
}

impl SerialSettings {
    /// Reads the settings from a `serial:///path?baud=...` endpoint.
    ///
    /// Errors name the key at fault: a missing path or `baud`, a value out
    /// of range, an unknown option (a misspelt key is reported, not
    /// ignored).
    pub fn from_endpoint(endpoint: &Endpoint) -> Result<SerialSettings, TransportError> {
        if endpoint.is_opaque() {
            return Err(TransportError::invalid_endpoint(
                endpoint,
                format!(
                    "expected {}:///path/to/device?baud=N (three slashes)",
                    endpoint.scheme()
                ),
            ));
        }
        if let Some(host) = endpoint.host() {
            return Err(TransportError::invalid_endpoint(
                endpoint,
                format!(
                    "serial endpoints have no host ('{host}'): write {}:///dev/ttyS0 with three slashes",
                    endpoint.scheme()
                ),
            ));
        }
        if endpoint.port().is_some() {
            return Err(TransportError::invalid_endpoint(
                endpoint,
                "serial endpoints have no port",
            ));
        }
        let path = endpoint.path();
        if path.is_empty() || path == "/" {
            return Err(TransportError::invalid_endpoint(
                endpoint,
                "missing device path (e.g. serial:///dev/ttyUSB0?baud=9600)",
            ));
        }
        endpoint.ensure_query_keys(KEYS)?;
        let baud: u32 = endpoint.query_as("baud")?.ok_or_else(|| {
            TransportError::invalid_endpoint(
                endpoint,
                "missing baud (the line speed both ends use, e.g. ?baud=9600)",
            )
        })?;
        if baud == 0 {
            return Err(bad(endpoint, "baud", "0", "a rate such as 9600"));
        }
        let data_bits = match endpoint.query("data") {
            None | Some("8") => DataBits::Eight,
            Some("7") => DataBits::Seven,
            Some("6") => DataBits::Six,
            Some("5") => DataBits::Five,
            Some(other) => return Err(bad(endpoint, "data", other, "5, 6, 7 or 8")),
        };
        let parity = match endpoint.query("parity") {
            None | Some("none") => Parity::None,
            Some("odd") => Parity::Odd,
            Some("even") => Parity::Even,
            Some(other) => return Err(bad(endpoint, "parity", other, "none, odd or even")),
        };
        let stop_bits = match endpoint.query("stop") {
            None | Some("1") => StopBits::One,
            Some("2") => StopBits::Two,
            Some(other) => return Err(bad(endpoint, "stop", other, "1 or 2")),
        };
        let flow = match endpoint.query("flow") {
            None | Some("none") => FlowControl::None,
            Some("software") => FlowControl::Software,
            Some("hardware") => FlowControl::Hardware,
            Some(other) => return Err(bad(endpoint, "flow", other, "none, software or hardware")),
        };
        let idle_timeout = match endpoint.query_as::<u64>("idle")? {
            None => Some(Duration::from_secs(600)),
            Some(0) => None,
            Some(seconds) => Some(Duration::from_secs(seconds)),
        };
        Ok(SerialSettings {
            path: PathBuf::from(path),
            baud,
            data_bits,
            parity,
            stop_bits,
            flow,
            idle_timeout,
        })
    }

    /// Opens the device with these settings, for exclusive use (a second
    /// opener, in this process or another, is told the port is busy), and
    /// throws away whatever was waiting in its input buffer.
    ///
    /// The error says whether the device does not exist, is busy, or is not
    /// a terminal at all. A pseudo-terminal (socat, `SerialStream::pair`)
    /// ignores the baud rate; where the serial library cannot set a rate on
    /// one, the pty is opened without setting it, and the debug log says
    /// so.
    pub fn open(&self) -> io::Result<SerialStream> {
        let path = &self.path;
        let metadata = std::fs::metadata(path).map_err(|err| match err.kind() {
            io::ErrorKind::NotFound => io::Error::new(
                io::ErrorKind::NotFound,
                format!("no such serial device {}", path.display()),
            ),
            _ => io::Error::new(err.kind(), format!("{}: {err}", path.display())),
        })?;
        if !is_char_device(&metadata) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} is not a tty (it is a {}, not a character device)",
                    path.display(),
                    if metadata.is_dir() {
                        "directory"
                    } else {
                        "regular file"
                    }
                ),
            ));
        }
        let port = match SerialStream::open(&self.builder(self.baud)) {
            Ok(port) => port,
            Err(err) if is_pty(path) && !is_busy(&err) && !is_not_a_tty(&err) => {
                // Some serial library versions and systems refuse to set a
                // rate on a pty, which has none. Open it as the library
                // opens a pty: with rate 0, meaning "leave it".
                tracing::debug!(
                    device = %path.display(),
                    error = %err,
                    "serial: cannot set the baud rate on this pseudo-terminal; opening it without"
                );
                SerialStream::open(&self.builder(0)).map_err(|err| open_error(path, &err))?
            }
            Err(err) => return Err(open_error(path, &err)),
        };
        if let Err(err) = port.clear(tokio_serial::ClearBuffer::Input) {
            tracing::debug!(device = %path.display(), error = %err, "serial: could not clear the input buffer");
        }
        Ok(port)
    }

    fn builder(&self, baud: u32) -> tokio_serial::SerialPortBuilder {
        tokio_serial::new(self.path.to_string_lossy(), baud)
            .data_bits(self.data_bits)
            .parity(self.parity)
            .stop_bits(self.stop_bits)
            .flow_control(self.flow)
    }

    /// A label for logs and `Received:` headers: `serial:/dev/ttyUSB0`.
    pub fn label(&self) -> String {
        format!("serial:{}", self.path.display())
    }
}

#[cfg(unix)]
fn is_char_device(metadata: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::FileTypeExt;
    metadata.file_type().is_char_device()
}

#[cfg(not(unix))]
fn is_char_device(metadata: &std::fs::Metadata) -> bool {
    !metadata.is_dir() && !metadata.is_file()
}

/// Whether `path` is (a link to) a pseudo-terminal's terminal side.
pub(crate) fn is_pty(path: &Path) -> bool {
    if let Ok(real) = std::fs::canonicalize(path) {
        if real.starts_with("/dev/pts") {
            return true;
        }
    }
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::MetadataExt;
        if let Ok(metadata) = std::fs::metadata(path) {
            let rdev = metadata.rdev();
            let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff);
            // Unix98 pty slaves.
            return (136..=143).contains(&major);
        }
    }
    false
}

fn is_busy(err: &tokio_serial::Error) -> bool {
    matches!(err.kind, tokio_serial::ErrorKind::NoDevice)
        || err.description.contains("busy")
        || err.description.contains("lock")
}

/// ENOTTY, which the serial library reports by its text only (nix calls it
/// "Not a typewriter", libc "Inappropriate ioctl for device").
fn is_not_a_tty(err: &tokio_serial::Error) -> bool {
    err.description.contains("typewriter") || err.description.contains("Inappropriate ioctl")
}

fn open_error(path: &Path, err: &tokio_serial::Error) -> io::Error {
    if is_busy(err) {
        io::Error::new(
            io::ErrorKind::ResourceBusy,
            format!(
                "serial device {} is busy: another program (or another smtplink) has it open ({})",
                path.display(),
                err.description
            ),
        )
    } else if is_not_a_tty(err) {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a tty ({})", path.display(), err.description),
        )
    } else {
        let kind = match err.kind {
            tokio_serial::ErrorKind::Io(kind) => kind,
            tokio_serial::ErrorKind::InvalidInput => io::ErrorKind::InvalidInput,
            _ => io::ErrorKind::Other,
        };
        io::Error::new(
            kind,
            format!("cannot open {}: {}", path.display(), err.description),
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn settings(text: &str) -> Result<SerialSettings, TransportError> {
        SerialSettings::from_endpoint(&text.parse().unwrap())
    }

    #[test]
    fn full_endpoint() {
        let s = settings(
            "serial:///dev/ttyUSB0?baud=9600&data=7&parity=even&stop=2&flow=hardware&idle=30",
        )
        .unwrap();
        assert_eq!(s.path, PathBuf::from("/dev/ttyUSB0"));
        assert_eq!(s.baud, 9600);
        assert_eq!(s.data_bits, DataBits::Seven);
        assert_eq!(s.parity, Parity::Even);
        assert_eq!(s.stop_bits, StopBits::Two);
        assert_eq!(s.flow, FlowControl::Hardware);
        assert_eq!(s.idle_timeout, Some(Duration::from_secs(30)));
        assert_eq!(s.label(), "serial:/dev/ttyUSB0");
    }

    #[test]
    fn defaults_are_8n1_without_flow_control() {
        let s = settings("serial:///dev/ttyS0?baud=115200").unwrap();
        assert_eq!(
            (s.data_bits, s.parity, s.stop_bits, s.flow),
            (
                DataBits::Eight,
                Parity::None,
                StopBits::One,
                FlowControl::None
            )
        );
        assert_eq!(s.idle_timeout, Some(Duration::from_secs(600)));
        let s = settings("serial:///dev/ttyS0?baud=115200&idle=0").unwrap();
        assert_eq!(s.idle_timeout, None);
    }

    #[test]
    fn bad_settings_name_the_key() {
        for (text, needle) in [
            ("serial:///dev/ttyS0", "missing baud"),
            ("serial:///dev/ttyS0?baud=fast", "for baud"),
            ("serial:///dev/ttyS0?baud=0", "for baud"),
            ("serial:///dev/ttyS0?baud=9600&data=9", "'9' for data"),
            (
                "serial:///dev/ttyS0?baud=9600&parity=mark",
                "'mark' for parity",
            ),
            ("serial:///dev/ttyS0?baud=9600&stop=1.5", "'1.5' for stop"),
            ("serial:///dev/ttyS0?baud=9600&flow=rts", "'rts' for flow"),
            ("serial:///dev/ttyS0?baud=9600&idle=soon", "for idle"),
            (
                "serial:///dev/ttyS0?baud=9600&speed=1",
                "unknown option 'speed'",
            ),
            ("serial://?baud=9600", "missing device path"),
            ("serial://dev/ttyS0?baud=9600", "no host ('dev')"),
            ("serial:/dev/ttyS0?baud=9600", "three slashes"),
        ] {
            let err = settings(text).unwrap_err();
            assert!(
                matches!(err, TransportError::InvalidEndpoint { .. }),
                "{text}: {err:?}"
            );
            assert!(err.to_string().contains(needle), "{text}: {err}");
        }
    }

    #[tokio::test]
    async fn opening_what_is_not_a_serial_port_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let missing = settings(&format!(
            "serial://{}/ttyNone?baud=9600",
            dir.path().display()
        ))
        .unwrap();
        let err = missing.open().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(err.to_string().contains("no such serial device"), "{err}");

        let file = dir.path().join("plain");
        std::fs::write(&file, b"x").unwrap();
        let plain = settings(&format!("serial://{}?baud=9600", file.display())).unwrap();
        let err = plain.open().unwrap_err();
        assert!(err.to_string().contains("is not a tty"), "{err}");

        #[cfg(unix)]
        {
            let null = settings("serial:///dev/null?baud=9600").unwrap();
            let err = null.open().unwrap_err();
            assert!(err.to_string().contains("not a tty"), "{err}");
        }
    }
}
