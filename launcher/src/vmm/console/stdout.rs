//! Guest console output to the container's stdout (what `kubectl logs`
//! shows), never blocking. While stdout keeps up, the vCPU that wrote a
//! byte passes it straight on with a non-blocking write; what stdout does
//! not take waits in a bounded buffer that the VMM thread's event loop
//! drains, in large writes, when stdout becomes writable again. Past the
//! bound, stdout misses output (the serial console's scrollback and its
//! clients still get everything), and how much is logged once per episode.
//!
//! `push` runs on vCPU threads; `drain` and `finish` on the VMM thread.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

/// Guest output held for stdout at most, by default.
pub const STDOUT_BUFFER: usize = 1024 * 1024;
/// The most one write from the buffer carries.
const WRITE_CHUNK: usize = 64 * 1024;
const STDOUT: RawFd = 1;

/// How vmpod writes to its stdout without waiting for whoever reads it.
enum Sink {
    /// A pipe, FIFO or terminal, opened again through /proc with
    /// O_NONBLOCK: a file description of vmpod's own, so the flag touches
    /// nobody else who shares fd 1.
    Reopened(File),
    /// A socket: sends that do not wait.
    Socket,
    /// A regular file (or a stdout vmpod could not reopen): plain,
    /// unbuffered writes to this descriptor (fd 1), so a prompt without a
    /// newline is in the file at once.
    Plain(RawFd),
}

impl Sink {
    fn for_stdout() -> Sink {
        // SAFETY: an all-zero `stat` is a valid value for fstat to overwrite.
        let mut status: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat only writes into `status`, which lives for the call.
        if unsafe { libc::fstat(STDOUT, &mut status) } != 0 {
            return Sink::Plain(STDOUT);
        }
        match status.st_mode & libc::S_IFMT {
            libc::S_IFSOCK => Sink::Socket,
            libc::S_IFIFO | libc::S_IFCHR => {
                let reopened = std::fs::OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
                    .open("/proc/self/fd/1");
                match reopened {
                    Ok(file) => Sink::Reopened(file),
                    Err(error) => {
                        log::warn!("cannot reopen stdout without blocking ({error}): if nobody reads it, the guest's console output will wait for it");
                        Sink::Plain(STDOUT)
                    }
                }
            }
            _ => Sink::Plain(STDOUT),
        }
    }

    /// Writes what stdout takes now; `WouldBlock` when it takes nothing.
    fn try_write(&self, bytes: &[u8]) -> std::io::Result<usize> {
        match self {
            Sink::Reopened(file) => (&*file).write(bytes),
            Sink::Socket => {
                // SAFETY: sends from `bytes`, which lives for the call.
                let sent = unsafe {
                    libc::send(
                        STDOUT,
                        bytes.as_ptr().cast(),
                        bytes.len(),
                        libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                    )
                };
                if sent < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(sent as usize)
                }
            }
            Sink::Plain(fd) => {
                // SAFETY: writes from `bytes`, which lives for the call.
                let written = unsafe { libc::write(*fd, bytes.as_ptr().cast(), bytes.len()) };
                if written < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(written as usize)
                }
            }
        }
    }

    /// The descriptor epoll can wait on for room, if any.
    fn pollable(&self) -> Option<RawFd> {
        match self {
            Sink::Reopened(file) => Some(file.as_raw_fd()),
            Sink::Socket => Some(STDOUT),
            Sink::Plain(_) => None,
        }
    }
}

#[derive(Default)]
struct Waiting {
    bytes: VecDeque<u8>,
    /// Dropped since stdout last caught up.
    dropped: u64,
}

/// What a drain left behind.
#[derive(Debug, PartialEq, Eq)]
pub enum Drained {
    /// Nothing waits any more.
    Empty,
    /// Stdout takes nothing now: wait until this descriptor is writable.
    Blocked(RawFd),
}

pub struct StdoutBuffer {
    sink: Sink,
    closed: AtomicBool,
    waiting: Mutex<Waiting>,
    limit: usize,
    wake: EventFd,
    wake_pending: AtomicBool,
}

fn is_retry(error: &std::io::Error) -> bool {
    error.kind() == std::io::ErrorKind::Interrupted
}

impl StdoutBuffer {
    /// Holds at most `limit` bytes for a stdout that is not being read.
    pub fn new(limit: usize) -> std::io::Result<Arc<Self>> {
        Ok(Arc::new(StdoutBuffer {
            sink: Sink::for_stdout(),
            closed: AtomicBool::new(false),
            waiting: Mutex::new(Waiting::default()),
            limit,
            wake: EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?,
            wake_pending: AtomicBool::new(false),
        }))
    }

    /// Readable when output waits for the event loop.
    pub fn wake_fd(&self) -> RawFd {
        self.wake.as_raw_fd()
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.waiting
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn close(&self, error: &std::io::Error) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            log::info!("stdout is closed ({error}): guest console output goes only to the serial console from now on");
        }
    }

    /// Guest output: straight to stdout if nothing waits and it takes it;
    /// the rest waits (up to the limit) or is counted. Never blocks.
    pub fn push(&self, bytes: &[u8]) {
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        let mut waiting = self.waiting();
        let mut rest = bytes;
        while waiting.bytes.is_empty() && !rest.is_empty() {
            match self.sink.try_write(rest) {
                Ok(written) => rest = &rest[written..],
                Err(error) if is_retry(&error) => continue,
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(error) => {
                    self.close(&error);
                    return;
                }
            }
        }
        if rest.is_empty() {
            return;
        }
        let room = self.limit.saturating_sub(waiting.bytes.len());
        let kept = room.min(rest.len());
        waiting.bytes.extend(&rest[..kept]);
        waiting.dropped += (rest.len() - kept) as u64;
        drop(waiting);
        if !self.wake_pending.swap(true, Ordering::AcqRel) {
            let _ = self.wake.write(1);
        }
    }

    /// Writes what waits while stdout takes it (without holding the lock
    /// during a write, so vCPUs are never held up).
    pub fn drain(&self) -> Drained {
        let _ = self.wake.read();
        self.wake_pending.store(false, Ordering::Release);
        let mut chunk = Vec::new();
        loop {
            chunk.clear();
            {
                let mut waiting = self.waiting();
                if self.closed.load(Ordering::Acquire) {
                    waiting.bytes.clear();
                }
                if waiting.bytes.is_empty() {
                    report_dropped(&mut waiting);
                    return Drained::Empty;
                }
                let (front, back) = waiting.bytes.as_slices();
                chunk.extend(front.iter().chain(back).take(WRITE_CHUNK));
            }
            match self.sink.try_write(&chunk) {
                Ok(written) => {
                    self.waiting().bytes.drain(..written);
                }
                Err(error) if is_retry(&error) => {}
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                    if let Some(fd) = self.sink.pollable() {
                        return Drained::Blocked(fd);
                    }
                }
                Err(error) => self.close(&error),
            }
        }
    }

    /// At exit: what stdout takes now goes out; the rest is reported.
    pub fn finish(&self) {
        if let Drained::Blocked(_) = self.drain() {
            let mut waiting = self.waiting();
            waiting.dropped += waiting.bytes.len() as u64;
            waiting.bytes.clear();
            report_dropped(&mut waiting);
        }
    }
}

/// Logs, once per episode, how much output stdout missed.
fn report_dropped(waiting: &mut Waiting) {
    if waiting.dropped > 0 {
        log::warn!(
            "stdout was not read for a while: {} bytes of guest console output were not written to it (the serial console's scrollback and clients have them)",
            waiting.dropped
        );
        waiting.dropped = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipe() -> (File, File) {
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills both entries of `fds`.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: both descriptors are new and owned by nobody else.
        unsafe {
            use std::os::fd::FromRawFd;
            (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1]))
        }
    }

    fn buffer_on(sink: File, limit: usize) -> StdoutBuffer {
        StdoutBuffer {
            sink: Sink::Reopened(sink),
            closed: AtomicBool::new(false),
            waiting: Mutex::new(Waiting::default()),
            limit,
            wake: EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"),
            wake_pending: AtomicBool::new(false),
        }
    }

    fn non_blocking(file: &File) {
        // SAFETY: F_SETFL only changes this test pipe's flags.
        unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    }

    #[test]
    fn output_goes_straight_through_while_stdout_keeps_up() {
        let (mut reader, writer) = pipe();
        non_blocking(&writer);
        let buffer = buffer_on(writer, 16);
        buffer.push(b"hello ");
        buffer.push(b"world");
        assert!(buffer.wake.read().is_err(), "the event loop was not needed");
        let mut seen = [0u8; 11];
        std::io::Read::read_exact(&mut reader, &mut seen).expect("read");
        assert_eq!(&seen, b"hello world");
    }

    #[test]
    fn a_full_stdout_keeps_the_order_bounds_the_wait_and_counts_the_rest() {
        let (mut reader, writer) = pipe();
        non_blocking(&writer);
        // SAFETY: F_SETPIPE_SZ only resizes this test pipe.
        let capacity =
            unsafe { libc::fcntl(writer.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) } as usize;
        let buffer = buffer_on(writer, 100);
        let flood: Vec<u8> = (0..capacity + 300).map(|i| (i % 251) as u8).collect();
        buffer.push(&flood);
        assert_eq!(buffer.wake.read().ok(), Some(1), "the event loop is woken");
        assert_eq!(buffer.waiting().bytes.len(), 100);
        assert_eq!(buffer.waiting().dropped, 200);
        assert!(matches!(buffer.drain(), Drained::Blocked(_)));
        let mut seen = vec![0u8; capacity];
        std::io::Read::read_exact(&mut reader, &mut seen).expect("read");
        assert_eq!(seen, flood[..capacity]);
        assert_eq!(buffer.drain(), Drained::Empty);
        let mut rest = vec![0u8; 100];
        std::io::Read::read_exact(&mut reader, &mut rest).expect("read");
        assert_eq!(
            rest,
            flood[capacity..capacity + 100],
            "then what waited, in order"
        );
        assert_eq!(buffer.waiting().dropped, 0, "reported and reset");
    }

    #[test]
    fn a_file_gets_output_at_once_even_without_a_newline() {
        let path = std::env::temp_dir().join(format!("vmpod-stdout-{}", std::process::id()));
        let file = File::create(&path).expect("file");
        let buffer = StdoutBuffer {
            sink: Sink::Plain(file.as_raw_fd()),
            closed: AtomicBool::new(false),
            waiting: Mutex::new(Waiting::default()),
            limit: 100,
            wake: EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"),
            wake_pending: AtomicBool::new(false),
        };
        buffer.push(b"login: ");
        assert_eq!(std::fs::read(&path).expect("read"), b"login: ");
        drop(file);
        std::fs::remove_file(&path).ok();
    }

    #[test]
    fn a_closed_stdout_stops_taking_output() {
        let (reader, writer) = pipe();
        drop(reader);
        let buffer = buffer_on(writer, 100);
        buffer.push(b"nobody hears this");
        assert!(buffer.closed.load(Ordering::Acquire));
        assert!(buffer.waiting().bytes.is_empty());
    }
}
