//! Where a NIC's frames go: a stream of length-prefixed frames (passt's
//! and QEMU's `-netdev stream` framing: a 32-bit big-endian length, then
//! the Ethernet frame) or a tap device (one frame per read and write).
//! Both are non-blocking; what a full socket cannot take yet waits in a
//! bounded outgoing buffer, and a backend that is backed up says so, so
//! the device stops taking frames from the guest until it drains.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

/// The largest frame either way: 64 KiB, the framing's practical bound
/// (passt sends at most its MTU plus the Ethernet header).
pub const MAX_FRAME: usize = 65536 + 14;
/// How much outgoing data waits for a full socket before the guest waits.
const OUT_LIMIT: usize = 1 << 20;

pub trait NetBackend: Send + std::fmt::Debug {
    /// The descriptor to wait on.
    fn fd(&self) -> RawFd;
    /// Queues one frame; it is written now or when the descriptor is
    /// writable. An error means the backend is gone.
    fn send(&mut self, frame: &[u8]) -> io::Result<()>;
    /// Whether the backend holds so much unsent data that the device
    /// should stop taking frames from the guest.
    fn backed_up(&self) -> bool;
    /// Whether anything waits to be written (wait for writability).
    fn has_unsent(&self) -> bool;
    /// Writes what it can of the unsent data.
    fn flush(&mut self) -> io::Result<()>;
    /// The next whole frame, or `None` when none is ready. An error means
    /// the backend is gone (end of stream included).
    fn recv(&mut self) -> io::Result<Option<Vec<u8>>>;
}

/// Length-prefixed frames over a connected Unix stream (passt).
#[derive(Debug)]
pub struct StreamBackend {
    stream: UnixStream,
    unsent: Vec<u8>,
    received: Vec<u8>,
}

impl StreamBackend {
    pub fn new(stream: UnixStream) -> io::Result<Self> {
        stream.set_nonblocking(true)?;
        Ok(StreamBackend {
            stream,
            unsent: Vec::new(),
            received: Vec::new(),
        })
    }

    /// A whole frame at the front of `received`, taken out.
    fn take_frame(&mut self) -> io::Result<Option<Vec<u8>>> {
        let Some(prefix) = self.received.first_chunk::<4>() else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(*prefix) as usize;
        if len > MAX_FRAME {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the peer announced a {len}-byte frame (at most {MAX_FRAME})"),
            ));
        }
        if self.received.len() < 4 + len {
            return Ok(None);
        }
        let frame = self.received[4..4 + len].to_vec();
        self.received.drain(..4 + len);
        Ok(Some(frame))
    }
}

impl NetBackend for StreamBackend {
    fn fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        self.unsent
            .extend_from_slice(&(frame.len() as u32).to_be_bytes());
        self.unsent.extend_from_slice(frame);
        self.flush()
    }

    fn backed_up(&self) -> bool {
        self.unsent.len() >= OUT_LIMIT
    }

    fn has_unsent(&self) -> bool {
        !self.unsent.is_empty()
    }

    fn flush(&mut self) -> io::Result<()> {
        while !self.unsent.is_empty() {
            match self.stream.write(&self.unsent) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(written) => {
                    self.unsent.drain(..written);
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    fn recv(&mut self) -> io::Result<Option<Vec<u8>>> {
        if let Some(frame) = self.take_frame()? {
            return Ok(Some(frame));
        }
        let mut buffer = [0u8; 65536];
        loop {
            match self.stream.read(&mut buffer) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the peer closed the connection",
                    ))
                }
                Ok(read) => {
                    self.received.extend_from_slice(&buffer[..read]);
                    if let Some(frame) = self.take_frame()? {
                        return Ok(Some(frame));
                    }
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
    }
}

/// A tap device: each read is one frame, each write sends one.
#[derive(Debug)]
pub struct TapBackend {
    tap: std::fs::File,
    /// Frames the tap could not take yet, oldest first.
    unsent: std::collections::VecDeque<Vec<u8>>,
    unsent_bytes: usize,
}

impl TapBackend {
    /// `tap` is an open, non-blocking tap queue without packet info.
    pub fn new(tap: OwnedFd) -> Self {
        TapBackend {
            tap: std::fs::File::from(tap),
            unsent: Default::default(),
            unsent_bytes: 0,
        }
    }
}

impl NetBackend for TapBackend {
    fn fd(&self) -> RawFd {
        self.tap.as_raw_fd()
    }

    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        self.unsent_bytes += frame.len();
        self.unsent.push_back(frame.to_vec());
        self.flush()
    }

    fn backed_up(&self) -> bool {
        self.unsent_bytes >= OUT_LIMIT
    }

    fn has_unsent(&self) -> bool {
        !self.unsent.is_empty()
    }

    fn flush(&mut self) -> io::Result<()> {
        while let Some(frame) = self.unsent.front() {
            match self.tap.write(frame) {
                Ok(_) => {
                    self.unsent_bytes -= frame.len();
                    self.unsent.pop_front();
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    fn recv(&mut self) -> io::Result<Option<Vec<u8>>> {
        let mut buffer = vec![0u8; MAX_FRAME];
        loop {
            match self.tap.read(&mut buffer) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(read) => {
                    buffer.truncate(read);
                    return Ok(Some(buffer));
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
    }
}
