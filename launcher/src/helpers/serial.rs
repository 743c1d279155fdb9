//! `/vm/serial`: attaches stdio to the VM's serial console. On a terminal
//! it switches to raw mode and detaches on the escape key (Ctrl-] unless
//! told otherwise); without one it is a plain pipe for scripts, and after
//! stdin ends it shows what the console still says until it is quiet.
//! The helper process's main thread: one poll loop.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use super::terminal::RawMode;
use crate::api::SERIAL_SOCKET;
use crate::signals::SignalFd;

/// After stdin ends, output is still shown until this long a silence.
const QUIET_AFTER_INPUT_ENDS_MS: i32 = 500;

#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    #[error("cannot reach {}: is vmpod running in this pod (or with this --run-dir)?", path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the connection to {} failed", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot take the terminal's signals")]
    Signals(#[source] std::io::Error),
}

/// How the session ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    Detached,
    ConsoleClosed,
    InputEnded,
    Signalled,
}

/// `/vm/qmp`, `/vm/monitor`: the socket relayed to stdio as it is (QMP
/// is JSON; the monitor prompts and reads lines, which a terminal's own
/// line editing suits).
pub fn relay_plain(run_dir: &std::path::Path, socket: &str) -> Result<Ended, SerialError> {
    relay_socket(run_dir, socket, InputEnd::Quiet)
}

/// Connects to `socket` in the run directory and relays it to stdio.
fn relay_socket(
    run_dir: &std::path::Path,
    socket: &str,
    input_end: InputEnd,
) -> Result<Ended, SerialError> {
    let path = run_dir.join(socket);
    let mut connection = UnixStream::connect(&path).map_err(|source| SerialError::Connect {
        path: path.clone(),
        source,
    })?;
    let signals = SignalFd::take(&[libc::SIGINT, libc::SIGTERM, libc::SIGHUP])
        .map_err(SerialError::Signals)?;
    relay_until(&mut connection, &signals, None, input_end)
        .map_err(|source| SerialError::Io { path, source })
}

/// `/vm/vnc`: the VNC socket relayed to stdio, binary-clean. When stdin
/// ends (the viewer left), vmpod is told so and the relay ends with it.
pub fn relay_binary(run_dir: &std::path::Path, socket: &str) -> Result<Ended, SerialError> {
    relay_socket(run_dir, socket, InputEnd::HalfClose)
}

pub fn attach(run_dir: &std::path::Path, escape: Option<u8>) -> Result<Ended, SerialError> {
    let path = run_dir.join(SERIAL_SOCKET);
    let mut console = UnixStream::connect(&path).map_err(|source| SerialError::Connect {
        path: path.clone(),
        source,
    })?;
    // Taken as events, so raw mode is undone on these too.
    let signals = SignalFd::take(&[libc::SIGINT, libc::SIGTERM, libc::SIGHUP])
        .map_err(SerialError::Signals)?;
    let raw = RawMode::enter();
    if raw.is_some() {
        let key = escape.map_or("no key".to_owned(), |k| {
            format!("Ctrl-{}", (k | 0x40) as char)
        });
        eprint!("[vmpod: attached to the serial console; {key} detaches]\r\n");
    }
    let ended = relay(
        &mut console,
        &signals,
        raw.is_some().then_some(escape).flatten(),
    )
    .map_err(|source| SerialError::Io { path, source });
    drop(raw);
    if matches!(ended, Ok(Ended::Detached)) {
        eprintln!("\n[vmpod: detached from the serial console]");
    }
    ended
}

/// What the relay does when its stdin ends.
#[derive(Clone, Copy, PartialEq, Eq)]
enum InputEnd {
    /// Passes on what is still coming until it goes quiet (the answers to
    /// the last commands).
    Quiet,
    /// Tells the socket no more is coming and passes on the rest until the
    /// other side closes.
    HalfClose,
}

fn relay(
    console: &mut UnixStream,
    signals: &SignalFd,
    escape: Option<u8>,
) -> std::io::Result<Ended> {
    relay_until(console, signals, escape, InputEnd::Quiet)
}

fn relay_until(
    console: &mut UnixStream,
    signals: &SignalFd,
    escape: Option<u8>,
    input_end: InputEnd,
) -> std::io::Result<Ended> {
    let mut stdin_open = true;
    let mut buffer = [0u8; 8192];
    let mut stdout = std::io::stdout().lock();
    loop {
        let mut fds = [
            libc::pollfd {
                fd: console.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: signals.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: if stdin_open { 0 } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let timeout = if stdin_open || input_end == InputEnd::HalfClose {
            -1
        } else {
            QUIET_AFTER_INPUT_ENDS_MS
        };
        // SAFETY: `fds` holds three valid pollfd entries for the call.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if ready < 0 {
            let error = std::io::Error::last_os_error();
            if error.kind() == ErrorKind::Interrupted {
                continue;
            }
            return Err(error);
        }
        if ready == 0 {
            return Ok(Ended::InputEnded);
        }
        if fds[1].revents != 0 {
            return Ok(Ended::Signalled);
        }
        if fds[0].revents != 0 {
            let read = console.read(&mut buffer)?;
            if read == 0 {
                return Ok(Ended::ConsoleClosed);
            }
            stdout.write_all(&buffer[..read])?;
            stdout.flush()?;
        }
        if fds[2].revents != 0 {
            let read = std::io::stdin().lock().read(&mut buffer)?;
            if read == 0 {
                stdin_open = false;
                if input_end == InputEnd::HalfClose {
                    console.shutdown(std::net::Shutdown::Write)?;
                }
                continue;
            }
            let typed = &buffer[..read];
            match escape.and_then(|key| typed.iter().position(|byte| *byte == key)) {
                Some(at) => {
                    console.write_all(&typed[..at])?;
                    return Ok(Ended::Detached);
                }
                None => console.write_all(typed)?,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_failure_names_the_socket_it_concerns() {
        let missing = relay_plain(std::path::Path::new("/nonexistent-run"), "qmp.sock")
            .expect_err("nothing listens there");
        assert!(
            missing
                .to_string()
                .starts_with("cannot reach /nonexistent-run/qmp.sock"),
            "{missing}"
        );
        let broken = SerialError::Io {
            path: "/vm/run/monitor.sock".into(),
            source: std::io::ErrorKind::BrokenPipe.into(),
        };
        assert_eq!(
            broken.to_string(),
            "the connection to /vm/run/monitor.sock failed"
        );
    }
}
