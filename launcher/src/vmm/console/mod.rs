//! The container's side of the serial console, on the VMM thread's event
//! loop. Guest output goes to stdout through [`stdout::StdoutBuffer`]
//! (never blocking the guest) and to the rest of the console through a
//! tee; typed input (stdin, and the control plane's socket) goes to the
//! UART only as fast as the guest reads it: the UART asks for more when
//! the guest has read its FIFO empty, and until then nothing is read.
//!
//! The output writer runs on vCPU threads; everything else on the VMM thread.

pub mod stdout;

use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::event_loop::{EventHandler, Registrar};
use crate::api::Command;
use crate::devices::legacy::serial::SerialPort;
pub use stdout::{StdoutBuffer, STDOUT_BUFFER};

const STDIN: RawFd = 0;

/// The UART's output: stdout, and the rest of the console (the control
/// plane's hub) through `tee`.
pub struct ConsoleWriter {
    stdout: Arc<StdoutBuffer>,
    tee: Box<dyn Write + Send>,
}

impl ConsoleWriter {
    pub fn new(stdout: Arc<StdoutBuffer>, tee: Box<dyn Write + Send>) -> Self {
        ConsoleWriter { stdout, tee }
    }
}

impl Write for ConsoleWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.stdout.push(bytes);
        if let Err(error) = self.tee.write_all(bytes) {
            log::debug!("console output to the control plane failed: {error}");
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Where typed input comes from.
struct Input {
    fd: RawFd,
    /// Keeps a socket open; stdin is not ours to close.
    _socket: Option<UnixStream>,
    name: &'static str,
    open: bool,
}

/// Epoll sources of the console.
const WANTS_INPUT: u32 = 0;
const OUTPUT_WAITING: u32 = 1;
const STDOUT_WRITABLE: u32 = 2;
const FIRST_INPUT: u32 = 3;

pub struct Console {
    uart: Arc<Mutex<SerialPort>>,
    wants_input: EventFd,
    inputs: Vec<Input>,
    /// Whether the inputs are watched (false while the UART is full).
    inputs_watched: bool,
    stdout: Arc<StdoutBuffer>,
    /// The descriptor watched for room on stdout, while output waits.
    waiting_on: Option<RawFd>,
}

impl Console {
    /// `typed`: the VMM's end of the control plane's typed-input socket;
    /// `use_stdin`: whether stdin carries typing too.
    pub fn new(
        uart: Arc<Mutex<SerialPort>>,
        wants_input: EventFd,
        stdout: Arc<StdoutBuffer>,
        typed: Option<UnixStream>,
        use_stdin: bool,
    ) -> Self {
        let mut inputs = Vec::new();
        if let Some(socket) = typed {
            inputs.push(Input {
                fd: socket.as_raw_fd(),
                _socket: Some(socket),
                name: "serial clients",
                open: true,
            });
        }
        if use_stdin && carries_typing(STDIN) {
            inputs.push(Input {
                fd: STDIN,
                _socket: None,
                name: "stdin",
                open: true,
            });
        }
        Console {
            uart,
            wants_input,
            inputs,
            inputs_watched: true,
            stdout,
            waiting_on: None,
        }
    }

    fn uart(&self) -> std::sync::MutexGuard<'_, SerialPort> {
        self.uart
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Reads typed bytes from one input, as many as the UART has room for.
    fn pass_input(&mut self, index: usize, events: &Registrar<'_>) {
        let room = self.uart().input_room();
        if room == 0 {
            self.watch_inputs(false, events);
            return;
        }
        let mut buffer = [0u8; 256];
        let want = room.min(buffer.len());
        let input = &mut self.inputs[index];
        // SAFETY: reads at most `want` bytes into `buffer`, which outlives the call.
        let read = unsafe { libc::read(input.fd, buffer.as_mut_ptr().cast(), want) };
        if read == 0 || (read < 0 && !retry_later(&std::io::Error::last_os_error())) {
            log::debug!("typed input from {} ended", input.name);
            input.open = false;
            events.remove(input.fd);
            return;
        }
        if read > 0 {
            let taken = self.uart().queue_input(&buffer[..read as usize]);
            debug_assert_eq!(taken, read as usize, "no more than the room was read");
        }
    }

    fn watch_inputs(&mut self, watched: bool, events: &Registrar<'_>) {
        if self.inputs_watched == watched {
            return;
        }
        self.inputs_watched = watched;
        let interest = if watched {
            EventSet::IN
        } else {
            EventSet::empty()
        };
        for (index, input) in self.inputs.iter().enumerate().filter(|(_, i)| i.open) {
            if let Err(error) = events.modify(input.fd, FIRST_INPUT + index as u32, interest) {
                log::warn!("cannot watch typed input from {}: {error}", input.name);
            }
        }
    }

    /// Writes what waits for stdout; watches for room while it takes none.
    fn drain_output(&mut self, events: &Registrar<'_>) {
        let wanted = match self.stdout.drain() {
            stdout::Drained::Empty => None,
            stdout::Drained::Blocked(fd) => Some(fd),
        };
        if wanted == self.waiting_on {
            return;
        }
        if let Some(fd) = self.waiting_on.take() {
            events.remove(fd);
        }
        if let Some(fd) = wanted {
            match events.add(fd, STDOUT_WRITABLE, EventSet::OUT) {
                Ok(()) => self.waiting_on = Some(fd),
                Err(error) => log::warn!("cannot wait for stdout: {error}"),
            }
        }
    }
}

impl EventHandler for Console {
    fn register(&mut self, events: &Registrar<'_>) -> std::io::Result<()> {
        events.add(self.wants_input.as_raw_fd(), WANTS_INPUT, EventSet::IN)?;
        events.add(self.stdout.wake_fd(), OUTPUT_WAITING, EventSet::IN)?;
        for (index, input) in self.inputs.iter().enumerate() {
            events.add(input.fd, FIRST_INPUT + index as u32, EventSet::IN)?;
        }
        Ok(())
    }

    fn handle(&mut self, source: u32, _: EventSet, events: &Registrar<'_>) -> Option<Command> {
        match source {
            WANTS_INPUT => {
                let _ = self.wants_input.read();
                self.watch_inputs(true, events);
            }
            OUTPUT_WAITING | STDOUT_WRITABLE => self.drain_output(events),
            input => {
                let index = (input - FIRST_INPUT) as usize;
                if self.inputs.get(index).is_some_and(|i| i.open) {
                    self.pass_input(index, events);
                }
            }
        }
        None
    }
}

impl Drop for Console {
    /// vmpod is about to exit: what stdout takes now goes out, the rest is
    /// reported.
    fn drop(&mut self) {
        self.stdout.finish();
    }
}

fn retry_later(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
    )
}

/// Whether `fd` can carry typing: a terminal, a pipe or a socket, and not
/// /dev/null (as under a pod without `stdin: true`).
fn carries_typing(fd: RawFd) -> bool {
    // SAFETY: an all-zero `stat` is a valid value for fstat to overwrite.
    let mut status: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat only writes into `status`, which lives for the call.
    if unsafe { libc::fstat(fd, &mut status) } != 0 {
        return false;
    }
    let kind = status.st_mode & libc::S_IFMT;
    let is_null = std::fs::metadata("/dev/null").is_ok_and(|null| {
        use std::os::unix::fs::MetadataExt;
        null.rdev() == status.st_rdev && kind == libc::S_IFCHR
    });
    matches!(kind, libc::S_IFCHR | libc::S_IFIFO | libc::S_IFSOCK) && !is_null
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
        if unsafe { libc::tcgetattr(STDIN, &mut saved) } != 0 {
            return TerminalMode { saved: None };
        }
        let mut raw = saved;
        raw.c_lflag &= !(libc::ICANON | libc::ECHO);
        raw.c_iflag &= !libc::ICRNL;
        // SAFETY: sets attributes from a termios obtained from the same fd.
        unsafe { libc::tcsetattr(STDIN, libc::TCSANOW, &raw) };
        TerminalMode { saved: Some(saved) }
    }
}

impl Drop for TerminalMode {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            // SAFETY: restores the attributes read at start-up.
            unsafe { libc::tcsetattr(STDIN, libc::TCSANOW, saved) };
        }
    }
}
