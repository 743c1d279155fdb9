//! The local terminal, for interactive helpers: raw mode that is always
//! undone, and the escape key that detaches. The helper's main thread.

/// Raw mode on stdin for as long as this lives.
pub struct RawMode {
    saved: libc::termios,
}

impl RawMode {
    /// `None` when stdin is not a terminal.
    pub fn enter() -> Option<Self> {
        // SAFETY: isatty only inspects the descriptor.
        if unsafe { libc::isatty(0) } != 1 {
            return None;
        }
        // SAFETY: an all-zero termios is valid for tcgetattr to fill.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: tcgetattr writes into `saved` only.
        if unsafe { libc::tcgetattr(0, &mut saved) } != 0 {
            return None;
        }
        let mut raw = saved;
        // SAFETY: cfmakeraw edits the termios it is given.
        unsafe { libc::cfmakeraw(&mut raw) };
        // SAFETY: applies a termios derived from the terminal's own.
        if unsafe { libc::tcsetattr(0, libc::TCSANOW, &raw) } != 0 {
            return None;
        }
        Some(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restores the attributes read when raw mode was entered.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &self.saved) };
    }
}

/// The byte that detaches an interactive session, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EscapeKey(pub Option<u8>);

/// Parses an escape key: `^]`, `^X` (a control character), `none`.
pub fn parse_escape(text: &str) -> Result<EscapeKey, String> {
    if text == "none" {
        return Ok(EscapeKey(None));
    }
    match text.as_bytes() {
        [b'^', key] if (b'@'..=b'_').contains(&key.to_ascii_uppercase()) => {
            Ok(EscapeKey(Some(key.to_ascii_uppercase() & 0x1f)))
        }
        _ => Err(format!(
            "{text:?} is not an escape key: use ^] or another ^ and a letter, or none"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_keys() {
        assert_eq!(parse_escape("^]"), Ok(EscapeKey(Some(0x1d))));
        assert_eq!(parse_escape("^x"), Ok(EscapeKey(Some(0x18))));
        assert_eq!(parse_escape("none"), Ok(EscapeKey(None)));
        assert!(parse_escape("]").is_err());
        assert!(parse_escape("^1").is_err());
    }
}
