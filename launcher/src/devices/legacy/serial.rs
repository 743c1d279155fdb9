//! COM1: a 16550 UART (vm-superio) whose output goes to a writer (the
//! container's stdout for now) and whose input comes from a bounded queue
//! that refills the UART's 64-byte FIFO as the guest reads, so typed input
//! is never dropped. Its interrupt is an eventfd wired to IRQ 4 (irqfd).
//!
//! Register accesses run on vCPU threads; input arrives from the input
//! thread. Both go through the device's mutex.

use std::collections::VecDeque;
use std::io::Write;

use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::bus::BusDevice;

/// How much typed-ahead input waits for the guest before the sender is
/// asked to hold back.
pub const INPUT_QUEUE_LIMIT: usize = 64 * 1024;
const DATA_REGISTER: u64 = 0;

/// Raises the UART's interrupt line by signalling its irqfd.
pub struct IrqTrigger(EventFd);

impl Trigger for IrqTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

pub struct SerialPort {
    uart: Serial<IrqTrigger, NoEvents, Box<dyn Write + Send>>,
    pending_input: VecDeque<u8>,
}

impl SerialPort {
    /// `interrupt` is the eventfd registered as the UART's irqfd.
    pub fn new(interrupt: EventFd, output: Box<dyn Write + Send>) -> Self {
        SerialPort {
            uart: Serial::new(IrqTrigger(interrupt), output),
            pending_input: VecDeque::new(),
        }
    }

    /// Queues bytes typed for the guest; returns how many were taken (fewer
    /// than offered only when the queue is full: offer the rest later).
    pub fn queue_input(&mut self, bytes: &[u8]) -> usize {
        let room = INPUT_QUEUE_LIMIT.saturating_sub(self.pending_input.len());
        let taken = room.min(bytes.len());
        self.pending_input.extend(&bytes[..taken]);
        self.refill_fifo();
        taken
    }

    fn refill_fifo(&mut self) {
        let room = self.uart.fifo_capacity().min(self.pending_input.len());
        if room == 0 {
            return;
        }
        let chunk: Vec<u8> = self.pending_input.drain(..room).collect();
        if let Err(error) = self.uart.enqueue_raw_bytes(&chunk) {
            log::warn!("serial input could not be passed to the guest: {error:?}");
        }
    }
}

/// A port access covers one byte per repetition: `rep insb`/`rep outsb`
/// reach the device as one access with many bytes, all for one register.
impl BusDevice for SerialPort {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let Ok(register) = u8::try_from(offset) else {
            data.fill(0xff);
            return;
        };
        for byte in data.iter_mut() {
            *byte = self.uart.read(register);
            if offset == DATA_REGISTER {
                self.refill_fifo();
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Ok(register) = u8::try_from(offset) else {
            return;
        };
        for value in data {
            if let Err(error) = self.uart.write(register, *value) {
                // A closed stdout must not stop the guest.
                log::debug!("serial output failed: {error:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A writer the test can look into.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn port() -> (SerialPort, Captured, EventFd) {
        let interrupt = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        let captured = Captured::default();
        let port = SerialPort::new(
            interrupt.try_clone().expect("clone"),
            Box::new(captured.clone()),
        );
        (port, captured, interrupt)
    }

    #[test]
    fn guest_output_reaches_the_writer() {
        let (mut port, captured, _) = port();
        for byte in b"hi\n" {
            port.write(DATA_REGISTER, &[*byte]);
        }
        assert_eq!(captured.0.lock().expect("lock").as_slice(), b"hi\n");
    }

    #[test]
    fn string_io_writes_every_byte() {
        let (mut port, captured, _) = port();
        port.write(DATA_REGISTER, b"rep outsb");
        assert_eq!(captured.0.lock().expect("lock").as_slice(), b"rep outsb");
        let (mut port, _, _) = self::port();
        port.queue_input(b"abc");
        let mut read = [0u8; 3];
        port.read(DATA_REGISTER, &mut read);
        assert_eq!(&read, b"abc");
    }

    #[test]
    fn long_input_is_delivered_whole_and_in_order() {
        let (mut port, _, interrupt) = port();
        port.write(1, &[0x01]); // IER: received-data interrupt on
        let typed: Vec<u8> = (0..1000u32).map(|i| b'a' + (i % 26) as u8).collect();
        assert_eq!(port.queue_input(&typed), typed.len());
        assert!(interrupt.read().is_ok(), "the guest is interrupted");
        let mut received = Vec::new();
        let mut status = [0u8];
        loop {
            port.read(5, &mut status);
            if status[0] & 1 == 0 {
                break;
            }
            let mut byte = [0u8];
            port.read(DATA_REGISTER, &mut byte);
            received.push(byte[0]);
        }
        assert_eq!(received, typed);
    }

    #[test]
    fn a_full_queue_pushes_back_instead_of_dropping() {
        let (mut port, _, _) = port();
        let flood = vec![b'x'; INPUT_QUEUE_LIMIT + 1000];
        assert_eq!(port.queue_input(&flood), INPUT_QUEUE_LIMIT);
        // Only the room the UART's FIFO made is left; the sender must wait.
        assert!(port.queue_input(&flood) <= 64);
    }
}
