//! Splitting an `exec:` command line into the program and its arguments.

/// Why an `exec:` command line cannot be split into words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommandLineError {
    /// Nothing but spaces after `exec:`.
    #[error("no command given (expected exec:COMMAND ARGS...)")]
    Empty,
    /// A quote was opened and never closed.
    #[error("unterminated {quote} quote starting at byte {at}")]
    UnterminatedQuote {
        /// The quote character, `"` or `'`.
        quote: char,
        /// Byte offset of the opening quote in the command line.
        at: usize,
    },
}

/// Splits `line` into words the way a shell would for simple commands, but
/// without running one: no variables, globs, pipes or redirections.
///
/// * Unquoted whitespace separates words.
/// * `"..."` keeps spaces inside a word; within it `\"` is a quote and `\\`
///   a backslash, any other backslash is kept as it is.
/// * `'...'` keeps everything inside literally.
/// * Quotes may join text on either side: `--name="a b"` is one word,
///   `--name=a b`; `""` is an empty word.
/// * A backslash outside quotes is an ordinary character.
///
/// ```
/// use smtplink_stdio::split_command_line;
///
/// let words = split_command_line(r#"ssh -o "ProxyCommand nc %h %p" gw 'smtplink serve'"#).unwrap();
/// assert_eq!(words, ["ssh", "-o", "ProxyCommand nc %h %p", "gw", "smtplink serve"]);
/// ```
pub fn split_command_line(line: &str) -> Result<Vec<String>, CommandLineError> {
    let mut words = Vec::new();
    // The word being built; `Some` once anything (even "") belongs to it.
    let mut word: Option<String> = None;
    let mut chars = line.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if let Some(w) = word.take() {
                    words.push(w);
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        None => return Err(CommandLineError::UnterminatedQuote { quote: '"', at }),
                        Some((_, '"')) => break,
                        Some((_, '\\')) => match chars.peek() {
                            Some(&(_, next @ ('"' | '\\'))) => {
                                w.push(next);
                                chars.next();
                            }
                            _ => w.push('\\'),
                        },
                        Some((_, other)) => w.push(other),
                    }
                }
            }
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        None => {
                            return Err(CommandLineError::UnterminatedQuote { quote: '\'', at })
                        }
                        Some((_, '\'')) => break,
                        Some((_, other)) => w.push(other),
                    }
                }
            }
            other => word.get_or_insert_with(String::new).push(other),
        }
    }
    if let Some(w) = word {
        words.push(w);
    }
    if words.is_empty() {
        return Err(CommandLineError::Empty);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn split(line: &str) -> Vec<String> {
        split_command_line(line).unwrap()
    }

    #[test]
    fn whitespace_separates_words() {
        assert_eq!(
            split("  smtplink serve\t--listen  stdio: "),
            ["smtplink", "serve", "--listen", "stdio:"]
        );
    }

    #[test]
    fn double_quotes_group_and_escape() {
        assert_eq!(split(r#"a "b c" d"#), ["a", "b c", "d"]);
        assert_eq!(split(r#"--name="x y"z"#), ["--name=x yz"]);
        assert_eq!(split(r#""say \"hi\" \\ \n""#), [r#"say "hi" \ \n"#]);
        assert_eq!(split(r#"a "" b"#), ["a", "", "b"]);
    }

    #[test]
    fn single_quotes_are_literal() {
        assert_eq!(
            split(r#"sh -c 'nc host 25 "x" \'"#),
            ["sh", "-c", r#"nc host 25 "x" \"#]
        );
    }

    #[test]
    fn backslash_outside_quotes_is_literal() {
        assert_eq!(split(r"C:\bin\x a\ b"), [r"C:\bin\x", r"a\", "b"]);
    }

    #[test]
    fn errors() {
        assert_eq!(split_command_line("   "), Err(CommandLineError::Empty));
        assert_eq!(split_command_line(""), Err(CommandLineError::Empty));
        assert_eq!(
            split_command_line(r#"ssh "gw"#),
            Err(CommandLineError::UnterminatedQuote { quote: '"', at: 4 })
        );
        assert_eq!(
            split_command_line("a 'b"),
            Err(CommandLineError::UnterminatedQuote { quote: '\'', at: 2 })
        );
        assert!(split_command_line(r#"a "b\""#)
            .unwrap_err()
            .to_string()
            .contains("unterminated \" quote"));
    }
}
