//! The container's side of the serial console, on the VMM thread's event
//! loop. Guest output goes into a bounded buffer that the loop drains to
//! stdout (what `kubectl logs` shows) in large writes, only as fast as
//! stdout takes it: when nobody reads stdout, the guest keeps running, the
//! rest of the console (scrollback, `/vm/serial` clients) keeps getting
//! everything, and what stdout could not take is counted and reported once
//! per episode. Typed input (stdin, and the control plane's socket) goes
//! to the UART only as fast as the guest reads it; the UART asks for more.
//!
//! The output writer runs on vCPU threads; everything else on the VMM thread.

use std::collections::VecDeque;
use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::event_loop::{EventHandler, Registrar};
use crate::api::Command;
use crate::devices::legacy::serial::SerialPort;

/// Guest output held for stdout at most; beyond it, output is dropped for
/// stdout only (the scrollback and serial clients still get it).
pub const STDOUT_BUFFER: usize = 1024 * 1024;
const STDIN: RawFd = 0;
const STDOUT: RawFd = 1;

/// Guest output waiting for stdout.
pub struct OutputBuffer {
    state: Mutex<OutputState>,
    limit: usize,
    wake: EventFd,
    wake_pending: AtomicBool,
}

#[derive(Default)]
struct OutputState {
    bytes: VecDeque<u8>,
    /// Dropped since stdout last caught up.
    dropped: u64,
}

impl OutputBuffer {
    pub fn new(limit: usize) -> std::io::Result<Arc<Self>> {
        Ok(Arc::new(OutputBuffer {
            state: Mutex::new(OutputState::default()),
            limit,
            wake: EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?,
            wake_pending: AtomicBool::new(false),
        }))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, OutputState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Appends what fits; counts the rest as dropped. Never blocks.
    pub fn push(&self, bytes: &[u8]) {
        let mut state = self.state();
        let room = self.limit.saturating_sub(state.bytes.len());
        let taken = room.min(bytes.len());
        state.bytes.extend(&bytes[..taken]);
        state.dropped += (bytes.len() - taken) as u64;
        drop(state);
        if !self.wake_pending.swap(true, Ordering::AcqRel) {
            let _ = self.wake.write(1);
        }
    }
}

/// The UART's output: the stdout buffer, and the rest of the console
/// (the control plane's hub) through `tee`.
pub struct ConsoleWriter {
    buffer: Arc<OutputBuffer>,
    tee: Box<dyn Write + Send>,
}

impl ConsoleWriter {
    pub fn new(buffer: Arc<OutputBuffer>, tee: Box<dyn Write + Send>) -> Self {
        ConsoleWriter { buffer, tee }
    }
}

impl Write for ConsoleWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buffer.push(bytes);
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
    output: Arc<OutputBuffer>,
    stdout: Stdout,
}

/// What vmpod knows of its stdout.
struct Stdout {
    /// Whether epoll can wait on it (pipes, terminals, sockets; not files).
    pollable: bool,
    /// Whether we wait for it to become writable.
    waiting: bool,
    /// Writes failed for good (closed): output is no longer sent.
    closed: bool,
}

impl Console {
    /// `typed`: the control plane's end of the typed-input socket.
    pub fn new(
        uart: Arc<Mutex<SerialPort>>,
        wants_input: EventFd,
        output: Arc<OutputBuffer>,
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
            output,
            stdout: Stdout {
                pollable: false,
                waiting: false,
                closed: false,
            },
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

    /// Writes buffered output while stdout takes it.
    fn drain_output(&mut self, events: &Registrar<'_>) {
        let _ = self.output.wake.read();
        self.output.wake_pending.store(false, Ordering::Release);
        loop {
            let mut state = self.output.state();
            if self.stdout.closed {
                state.bytes.clear();
                return;
            }
            if state.bytes.is_empty() {
                report_dropped(&mut state);
                drop(state);
                self.wait_for_stdout(false, events);
                return;
            }
            if self.stdout.pollable && !writable_now(STDOUT) {
                drop(state);
                self.wait_for_stdout(true, events);
                return;
            }
            let chunk = state.bytes.as_slices().0;
            let chunk = &chunk[..chunk
                .len()
                .min(safe_write_size(STDOUT, self.stdout.pollable))];
            // SAFETY: writes from `chunk`, which lives for the call.
            let written = unsafe { libc::write(STDOUT, chunk.as_ptr().cast(), chunk.len()) };
            if written > 0 {
                state.bytes.drain(..written as usize);
                continue;
            }
            let error = std::io::Error::last_os_error();
            match error.kind() {
                std::io::ErrorKind::Interrupted if written < 0 => continue,
                std::io::ErrorKind::WouldBlock if written < 0 => {
                    // Someone else made stdout non-blocking: wait for it.
                    drop(state);
                    self.wait_for_stdout(true, events);
                    return;
                }
                _ => {}
            }
            log::info!("stdout is closed ({error}): guest console output goes only to the serial console from now on");
            self.stdout.closed = true;
        }
    }

    fn wait_for_stdout(&mut self, wait: bool, events: &Registrar<'_>) {
        if self.stdout.waiting == wait {
            return;
        }
        let result = if wait {
            events.add(STDOUT, STDOUT_WRITABLE, EventSet::OUT)
        } else {
            events.remove(STDOUT);
            Ok(())
        };
        match result {
            Ok(()) => self.stdout.waiting = wait,
            Err(error) => log::warn!("cannot wait for stdout: {error}"),
        }
    }
}

/// Logs, once per episode, how much output stdout could not take.
fn report_dropped(state: &mut OutputState) {
    if state.dropped > 0 {
        log::warn!(
            "stdout was not read for a while: {} bytes of guest console output were not written to it (the serial console's scrollback and clients have them)",
            state.dropped
        );
        state.dropped = 0;
    }
}

impl EventHandler for Console {
    fn register(&mut self, events: &Registrar<'_>) -> std::io::Result<()> {
        events.add(self.wants_input.as_raw_fd(), WANTS_INPUT, EventSet::IN)?;
        events.add(self.output.wake.as_raw_fd(), OUTPUT_WAITING, EventSet::IN)?;
        // Epoll refuses regular files, which never make a writer wait anyway.
        match events.add(STDOUT, STDOUT_WRITABLE, EventSet::OUT) {
            Ok(()) => {
                self.stdout.pollable = true;
                events.remove(STDOUT);
            }
            Err(error) if error.raw_os_error() == Some(libc::EPERM) => {}
            Err(error) => return Err(error),
        }
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
    /// What stdout has not taken yet goes out now, as far as it goes
    /// without waiting: vmpod is about to exit.
    fn drop(&mut self) {
        let mut state = self.output.state();
        while !self.stdout.closed && !state.bytes.is_empty() {
            if self.stdout.pollable && !writable_now(STDOUT) {
                state.dropped += state.bytes.len() as u64;
                break;
            }
            let chunk = state.bytes.as_slices().0;
            let chunk = &chunk[..chunk
                .len()
                .min(safe_write_size(STDOUT, self.stdout.pollable))];
            // SAFETY: writes from `chunk`, which lives for the call.
            let written = unsafe { libc::write(STDOUT, chunk.as_ptr().cast(), chunk.len()) };
            if written <= 0 {
                break;
            }
            state.bytes.drain(..written as usize);
        }
        report_dropped(&mut state);
    }
}

fn retry_later(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
    )
}

/// Whether a write to `fd` would not block now.
fn writable_now(fd: RawFd) -> bool {
    let mut poll = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    let ready = unsafe { libc::poll(&mut poll, 1, 0) };
    // An error or hang-up counts too: the write then says what is wrong.
    ready == 1 && (poll.revents & (libc::POLLOUT | libc::POLLERR | libc::POLLHUP)) != 0
}

/// How much one write may carry without blocking once `fd` polled
/// writable: a pipe takes its free space (capacity less unread bytes),
/// other waitable descriptors at least one page; files take anything.
/// vmpod does not set O_NONBLOCK on stdout, which it shares with others.
fn safe_write_size(fd: RawFd, pollable: bool) -> usize {
    const PAGE: usize = 4096;
    if !pollable {
        return usize::MAX;
    }
    // SAFETY: F_GETPIPE_SZ only reads the descriptor's pipe size.
    let capacity = unsafe { libc::fcntl(fd, libc::F_GETPIPE_SZ) };
    if capacity <= 0 {
        return PAGE;
    }
    let mut unread: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int into `unread`.
    if unsafe { libc::ioctl(fd, libc::FIONREAD, &mut unread) } != 0 {
        return PAGE;
    }
    (capacity as usize)
        .saturating_sub(unread.max(0) as usize)
        .max(1)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_buffer_drops_for_stdout_only_and_counts() {
        let buffer = OutputBuffer::new(8).expect("buffer");
        let seen = Arc::new(Mutex::new(Vec::new()));
        struct Tee(Arc<Mutex<Vec<u8>>>);
        impl Write for Tee {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().expect("lock").extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut writer = ConsoleWriter::new(buffer.clone(), Box::new(Tee(seen.clone())));
        writer.write_all(b"0123456789abc").expect("never fails");
        let state = buffer.state();
        assert_eq!(
            state.bytes.iter().copied().collect::<Vec<u8>>(),
            b"01234567"
        );
        assert_eq!(state.dropped, 5);
        assert_eq!(seen.lock().expect("lock").as_slice(), b"0123456789abc");
        assert_eq!(
            buffer.wake.read().ok(),
            Some(1),
            "one wake-up for many writes"
        );
    }

    #[test]
    fn a_pipe_takes_its_free_space_in_one_write() {
        let mut fds = [0; 2];
        // SAFETY: pipe fills both entries of `fds`.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let free = safe_write_size(fds[1], true);
        // SAFETY: F_GETPIPE_SZ only reads.
        let capacity = unsafe { libc::fcntl(fds[1], libc::F_GETPIPE_SZ) } as usize;
        assert_eq!(free, capacity);
        assert_eq!(
            // SAFETY: writes 100 bytes from a live buffer.
            unsafe { libc::write(fds[1], [7u8; 100].as_ptr().cast(), 100) },
            100
        );
        assert_eq!(safe_write_size(fds[1], true), capacity - 100);
        assert_eq!(safe_write_size(fds[1], false), usize::MAX);
        // SAFETY: closes the two descriptors this test opened.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
    }
}
