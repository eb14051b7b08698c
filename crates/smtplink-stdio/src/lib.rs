//! Process pipes as smtplink links: serve one SMTP session on this process's
//! own stdin and stdout (`stdio:`), or speak SMTP to a command run as a
//! child process (`exec:COMMAND ARGS...`).
//!
//! These two let smtplink fit wherever something else already moves the
//! bytes. A server started by inetd, by systemd socket activation, as an ssh
//! forced command or by a program that expects `sendmail -bs` listens on
//! [`StdioTransport`] (`smtplink serve --listen stdio:`): it serves exactly
//! one session and then the listener is exhausted, so the server exits. A
//! relay reaches such a server, or anything else a command can connect to,
//! through [`ExecTransport`]: `exec:ssh gateway smtplink serve --listen
//! stdio:` runs ssh and treats its stdin and stdout as the link.
//!
//! ```
//! use std::sync::Arc;
//! use smtplink_stdio::{ExecTransport, StdioTransport};
//! use smtplink_transport::Registry;
//!
//! let registry = Registry::new()
//!     .with("stdio", Arc::new(StdioTransport::new()))
//!     .with("exec", Arc::new(ExecTransport::new()));
//! # let _ = registry;
//! ```
//!
//! Both kinds of link are plain byte streams, so STARTTLS can run over them
//! like over TCP (`LinkInfo::can_upgrade_tls` is true); whether it is worth
//! it depends on what carries the pipes (an ssh channel already encrypts).

mod argv;
mod exec;
mod stdio;

pub use argv::{split_command_line, CommandLineError};
pub use exec::{ExecTransport, DEFAULT_EXIT_GRACE, EXEC_KIND};
pub use stdio::{StdioListener, StdioTransport, STDIO_KIND};
