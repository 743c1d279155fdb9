//! The container's side of the serial console: guest output to stdout
//! (what `kubectl logs` shows), and typed input from stdin when stdin is a
//! terminal or a pipe, on a named thread that stops with the VM.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::devices::legacy::serial::SerialPort;

/// Guest output straight to stdout, flushed per write so nothing lingers.
pub struct ConsoleOutput;

impl Write for ConsoleOutput {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(bytes)?;
        stdout.flush()?;
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stdout().flush()
    }
}

fn is_interactive_or_pipe(fd: i32) -> bool {
    // SAFETY: an all-zero `stat` is a valid value for fstat to overwrite.
    let mut status: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat only writes into `status`, which lives for the call.
    if unsafe { libc::fstat(fd, &mut status) } != 0 {
        return false;
    }
    matches!(
        status.st_mode & libc::S_IFMT,
        libc::S_IFCHR | libc::S_IFIFO | libc::S_IFSOCK
    ) && !is_dev_null(&status)
}

fn is_dev_null(status: &libc::stat) -> bool {
    std::fs::metadata("/dev/null")
        .map(|null| {
            use std::os::unix::fs::MetadataExt;
            null.rdev() == status.st_rdev
        })
        .unwrap_or(false)
}

/// Reads stdin into the serial port until EOF or until stopped.
pub struct ConsoleInput {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ConsoleInput {
    /// Starts the input thread if stdin can carry typing; `None` otherwise.
    pub fn start(serial: Arc<Mutex<SerialPort>>) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut thread = None;
        if is_interactive_or_pipe(std::io::stdin().as_raw_fd()) {
            let thread_stop = stop.clone();
            thread = Some(
                std::thread::Builder::new()
                    .name("serial-input".into())
                    .spawn(move || pump_stdin(&serial, &thread_stop))?,
            );
        }
        Ok(ConsoleInput { stop, thread })
    }

    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                log::error!("the serial input thread panicked");
            }
        }
    }
}

/// Waits up to 100 ms for stdin to become readable.
fn stdin_ready() -> bool {
    let mut poll = libc::pollfd {
        fd: 0,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `poll` is one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut poll, 1, 100) > 0 }
}

fn pump_stdin(serial: &Mutex<SerialPort>, stop: &AtomicBool) {
    let mut buffer = [0u8; 4096];
    while !stop.load(Ordering::SeqCst) {
        if !stdin_ready() {
            continue;
        }
        // SAFETY: reads at most `buffer.len()` bytes into `buffer`.
        let read = unsafe { libc::read(0, buffer.as_mut_ptr().cast(), buffer.len()) };
        if read <= 0 {
            if read < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
            {
                continue;
            }
            return; // EOF: nobody will type any more
        }
        let mut pending = &buffer[..read as usize];
        while !pending.is_empty() && !stop.load(Ordering::SeqCst) {
            let taken = serial
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .queue_input(pending);
            pending = &pending[taken..];
            if !pending.is_empty() {
                std::thread::sleep(Duration::from_millis(10)); // the guest is behind: wait for it
            }
        }
    }
}

/// Puts a terminal on stdin into character mode (no line editing, no
/// local echo: the guest echoes) and restores it when dropped.
pub struct TerminalMode {
    saved: Option<libc::termios>,
}

impl TerminalMode {
    pub fn character_mode() -> Self {
        // SAFETY: an all-zero termios is valid for tcgetattr to fill.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // fd 0 may not be a terminal: then tcgetattr fails and nothing changes.
        // SAFETY: tcgetattr writes into `saved` only.
        if unsafe { libc::tcgetattr(0, &mut saved) } != 0 {
            return TerminalMode { saved: None };
        }
        let mut raw = saved;
        raw.c_lflag &= !(libc::ICANON | libc::ECHO);
        raw.c_iflag &= !libc::ICRNL;
        // SAFETY: sets attributes from a termios obtained from the same fd.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &raw) };
        TerminalMode { saved: Some(saved) }
    }
}

impl Drop for TerminalMode {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            // SAFETY: restores the attributes read at start-up.
            unsafe { libc::tcsetattr(0, libc::TCSANOW, saved) };
        }
    }
}
