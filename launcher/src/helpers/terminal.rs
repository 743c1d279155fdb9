//! The local terminal, for interactive helpers: raw mode that is always
//! undone, and the signals that would otherwise end the helper without
//! undoing it, taken through a signalfd instead.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

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

/// SIGINT, SIGTERM and SIGHUP, blocked and readable from a descriptor.
pub struct Signals {
    fd: OwnedFd,
}

impl Signals {
    pub fn take() -> std::io::Result<Self> {
        // SAFETY: an empty sigset is filled by sigemptyset before use.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a valid sigset for these calls; blocking the
        // signals in this thread only makes them readable via signalfd.
        let fd = unsafe {
            libc::sigemptyset(&mut set);
            for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
                libc::sigaddset(&mut set, signal);
            }
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK)
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Signals { fd })
    }

    pub fn as_raw_fd(&self) -> i32 {
        self.fd.as_raw_fd()
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
