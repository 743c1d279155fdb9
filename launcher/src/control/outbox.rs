//! A client connection's outgoing bytes: queued by whoever answers, written
//! without blocking by the control loop, bounded so a client that stops
//! reading is dropped instead of growing without limit.

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

/// Reads everything available without blocking; false when the peer is gone.
pub fn read_available(stream: &mut UnixStream, mut sink: impl FnMut(&[u8])) -> bool {
    use std::io::Read;
    let mut buffer = [0u8; 65536];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return false,
            Ok(read) => sink(&buffer[..read]),
            Err(error) if error.kind() == ErrorKind::WouldBlock => return true,
            Err(error) if error.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
}
