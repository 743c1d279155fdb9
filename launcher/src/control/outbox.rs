//! A client connection's outgoing bytes: queued by whoever answers, written
//! without blocking by the control loop, bounded so a client that stops
//! reading is dropped instead of growing without limit. Control thread.

use std::collections::VecDeque;
use std::io::{ErrorKind, Write};
use std::os::unix::net::UnixStream;

pub struct Outbox {
    pub stream: UnixStream,
    pending: VecDeque<u8>,
    limit: usize,
}

impl Outbox {
    pub fn new(stream: UnixStream, limit: usize) -> Self {
        Outbox {
            stream,
            pending: VecDeque::new(),
            limit,
        }
    }

    pub fn queue(&mut self, bytes: &[u8]) {
        self.pending.extend(bytes);
    }

    /// Bytes queued and not yet written.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Whether the client is so far behind that it should be dropped.
    pub fn overflowing(&self) -> bool {
        self.pending.len() > self.limit
    }

    /// Writes what the socket takes; false when the client is gone.
    pub fn flush(&mut self) -> bool {
        while !self.pending.is_empty() {
            let (front, _) = self.pending.as_slices();
            match self.stream.write(front) {
                Ok(0) => return false,
                Ok(written) => {
                    self.pending.drain(..written);
                }
                Err(error) if error.kind() == ErrorKind::WouldBlock => return true,
                Err(error) if error.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
        }
        true
    }
}

/// What one non-blocking read gave.
enum Read {
    Data(usize),
    Nothing,
    Closed,
}

/// At most this much is read per readiness event: input is handled (and
/// its limits applied) as it arrives, and epoll calls again for the rest.
pub const READ_BUDGET: usize = 1024 * 1024;

/// A client whose input is commands: it owns an outbox and handles bytes.
pub trait Connection {
    fn outbox(&mut self) -> &mut Outbox;
    fn take_input(&mut self, bytes: &[u8], vm: &super::VmControl);
}

/// Reads what arrived (up to [`READ_BUDGET`]) and hands it over chunk by
/// chunk; false when the client is gone or too far behind.
pub fn on_readable(client: &mut impl Connection, vm: &super::VmControl) -> bool {
    let mut buffer = [0u8; 65536];
    let mut budget = READ_BUDGET;
    while budget > 0 {
        match read_some(&mut client.outbox().stream, &mut buffer) {
            Read::Data(read) => {
                budget = budget.saturating_sub(read);
                client.take_input(&buffer[..read], vm);
            }
            Read::Nothing => break,
            Read::Closed => return false,
        }
    }
    !client.outbox().overflowing()
}

/// One non-blocking read into `buffer`.
fn read_some(stream: &mut UnixStream, buffer: &mut [u8]) -> Read {
    use std::io::Read as _;
    loop {
        return match stream.read(buffer) {
            Ok(0) => Read::Closed,
            Ok(read) => Read::Data(read),
            Err(error) if error.kind() == ErrorKind::WouldBlock => Read::Nothing,
            Err(error) if error.kind() == ErrorKind::Interrupted => continue,
            Err(_) => Read::Closed,
        };
    }
}
