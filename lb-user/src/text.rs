//! Error text that quotes outside input, kept to a readable size.
//!
//! Configuration and control errors quote the value at fault (`"10.0.0.x"
//! is not an IPv4 address`). The value can be anything a file or a client
//! sent, megabytes included, and an error must not echo it whole into a log
//! line or an answer. [`clip`] cuts every quoted string of a message (as
//! Rust's `{:?}` writes them) to [`QUOTE_MAX`] characters, saying how long
//! it was, and the whole message to [`MESSAGE_MAX`].

/// Characters of a quoted value kept in a message.
pub const QUOTE_MAX: usize = 64;
/// Characters of a whole message kept.
pub const MESSAGE_MAX: usize = 1024;

/// `message` with each `"..."` longer than [`QUOTE_MAX`] characters cut
/// (`"abc…" (70000 bytes)`), and the whole cut to [`MESSAGE_MAX`]
/// characters. Messages that need no cut come back unchanged.
pub fn clip(message: &str) -> String {
    let mut out = String::with_capacity(message.len().min(MESSAGE_MAX + 16));
    let mut chars = message.char_indices().peekable();
    while let Some((start, c)) = chars.next() {
        if c != '"' {
            out.push(c);
            continue;
        }
        // A quoted string: up to the next quote not escaped by a backslash.
        let mut end = None;
        let mut escaped = false;
        for (i, c) in chars.by_ref() {
            match c {
                '\\' if !escaped => escaped = true,
                '"' if !escaped => {
                    end = Some(i);
                    break;
                }
                _ => escaped = false,
            }
        }
        let end = end.unwrap_or(message.len());
        let inner = &message[start + 1..end];
        if inner.chars().count() <= QUOTE_MAX {
            out.push('"');
            out.push_str(inner);
            if end < message.len() {
                out.push('"');
            }
        } else {
            let mut cut: String = inner.chars().take(QUOTE_MAX).collect();
            // Not in the middle of an escape sequence.
            while cut.ends_with('\\') {
                cut.pop();
            }
            out.push('"');
            out.push_str(&cut);
            out.push_str(&format!("…\" ({} bytes)", inner.len()));
        }
    }
    if out.chars().count() > MESSAGE_MAX {
        let mut cut: String = out.chars().take(MESSAGE_MAX).collect();
        cut.push_str("… (message cut)");
        return cut;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_messages_are_untouched() {
        for m in [
            "",
            "plain",
            r#""10.0.0.x" is not an IPv4 address"#,
            r#"a "quoted \" escape" and "another""#,
            r#"an "unterminated quote"#,
        ] {
            assert_eq!(clip(m), m);
        }
    }

    #[test]
    fn long_quotes_are_cut_with_their_length() {
        let value = "x".repeat(10_000_000);
        let m = format!("vip[0].address: {value:?} is not an IPv4 address");
        let c = clip(&m);
        assert!(c.len() < 200, "{}", c.len());
        assert!(
            c.starts_with(&format!(
                "vip[0].address: \"{}…\" (10000000 bytes)",
                "x".repeat(64)
            )),
            "{c}"
        );
        assert!(c.ends_with(" is not an IPv4 address"), "{c}");
        // Escapes are not split; multibyte characters are not split.
        let c = clip(&format!("{:?}", "\"".repeat(100)));
        assert!(c.starts_with("\"\\\""), "{c}");
        let c = clip(&format!("{:?}", "é".repeat(100)));
        assert!(
            c.contains("… (200 bytes)") || c.contains("…\" (200 bytes)"),
            "{c}"
        );
    }

    #[test]
    fn the_whole_message_is_bounded() {
        let m = "word ".repeat(100_000);
        let c = clip(&m);
        assert!(c.chars().count() <= MESSAGE_MAX + 20);
        assert!(c.ends_with("(message cut)"));
    }
}
