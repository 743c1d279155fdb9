//! COM1: a 16550 UART (vm-superio) whose output goes to a writer and whose
//! input is offered by the VMM's event loop, at most as much as the UART's
//! 64-byte FIFO has room for. When the guest has read the FIFO empty, the
//! UART signals `wants_input` (vm-superio's `in_buffer_empty` event), and
//! the event loop offers more: nothing polls, and typed input waits in its
//! source (stdin, the control plane's socket) instead of being dropped.
//! Its interrupt is an eventfd wired to IRQ 4 (irqfd).
//!
//! Register accesses run on vCPU threads; input arrives from the VMM
//! thread. Both go through the device's mutex.

use std::io::Write;

use vm_superio::serial::SerialEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::bus::BusDevice;

/// Raises the UART's interrupt line by signalling its irqfd.
pub struct IrqTrigger(EventFd);

impl Trigger for IrqTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// Tells the event loop that the guest emptied the receive FIFO.
pub struct InputWanted(EventFd);

impl SerialEvents for InputWanted {
    fn buffer_read(&self) {}
    fn out_byte(&self) {}
    fn tx_lost_byte(&self) {}
    fn in_buffer_empty(&self) {
        // A full counter still reads as readable; nothing is lost.
        let _ = self.0.write(1);
    }
}

pub struct SerialPort {
    uart: Serial<IrqTrigger, InputWanted, Box<dyn Write + Send>>,
}

impl SerialPort {
    /// `interrupt` is the eventfd registered as the UART's irqfd;
    /// `wants_input` becomes readable when the guest has read all input.
    pub fn new(interrupt: EventFd, wants_input: EventFd, output: Box<dyn Write + Send>) -> Self {
        SerialPort {
            uart: Serial::with_events(IrqTrigger(interrupt), InputWanted(wants_input), output),
        }
    }

    /// How many typed bytes the UART can take now.
    pub fn input_room(&self) -> usize {
        self.uart.fifo_capacity()
    }

    /// Passes typed bytes to the guest; returns how many it took (at most
    /// [`Self::input_room`]: offer the rest after `wants_input`).
    pub fn queue_input(&mut self, bytes: &[u8]) -> usize {
        let taken = self.input_room().min(bytes.len());
        if taken == 0 {
            return 0;
        }
        match self.uart.enqueue_raw_bytes(&bytes[..taken]) {
            Ok(_) => taken,
            Err(error) => {
                log::warn!("serial input could not be passed to the guest: {error:?}");
                0
            }
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
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Ok(register) = u8::try_from(offset) else {
            return;
        };
        for value in data {
            if let Err(error) = self.uart.write(register, *value) {
                // A failing output writer must not stop the guest.
                log::debug!("serial output failed: {error:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    const DATA_REGISTER: u64 = 0;

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

    struct Fixture {
        port: SerialPort,
        captured: Captured,
        interrupt: EventFd,
        wants_input: EventFd,
    }

    fn port() -> Fixture {
        let interrupt = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        let wants_input = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        let captured = Captured::default();
        let port = SerialPort::new(
            interrupt.try_clone().expect("clone"),
            wants_input.try_clone().expect("clone"),
            Box::new(captured.clone()),
        );
        Fixture {
            port,
            captured,
            interrupt,
            wants_input,
        }
    }

    fn read_received(port: &mut SerialPort) -> Vec<u8> {
        let mut received = Vec::new();
        let mut status = [0u8];
        loop {
            port.read(5, &mut status);
            if status[0] & 1 == 0 {
                return received;
            }
            let mut byte = [0u8];
            port.read(DATA_REGISTER, &mut byte);
            received.push(byte[0]);
        }
    }

    #[test]
    fn guest_output_reaches_the_writer() {
        let mut fixture = port();
        for byte in b"hi\n" {
            fixture.port.write(DATA_REGISTER, &[*byte]);
        }
        assert_eq!(fixture.captured.0.lock().expect("lock").as_slice(), b"hi\n");
    }

    #[test]
    fn string_io_writes_every_byte() {
        let mut fixture = port();
        fixture.port.write(DATA_REGISTER, b"rep outsb");
        assert_eq!(
            fixture.captured.0.lock().expect("lock").as_slice(),
            b"rep outsb"
        );
        let mut fixture = port();
        fixture.port.queue_input(b"abc");
        let mut read = [0u8; 3];
        fixture.port.read(DATA_REGISTER, &mut read);
        assert_eq!(&read, b"abc");
    }

    #[test]
    fn input_is_taken_only_as_far_as_the_fifo_has_room() {
        let mut fixture = port();
        fixture.port.write(1, &[0x01]); // IER: received-data interrupt on
        let typed: Vec<u8> = (0..1000u32).map(|i| b'a' + (i % 26) as u8).collect();
        let room = fixture.port.input_room();
        assert_eq!(fixture.port.queue_input(&typed), room);
        assert_eq!(
            fixture.port.queue_input(&typed[room..]),
            0,
            "full: the rest waits"
        );
        assert!(fixture.interrupt.read().is_ok(), "the guest is interrupted");
        assert!(fixture.wants_input.read().is_err(), "nothing asked for yet");
        assert_eq!(read_received(&mut fixture.port), typed[..room]);
        assert_eq!(
            fixture.wants_input.read().ok(),
            Some(1),
            "emptied: more, please"
        );
        assert_eq!(fixture.port.input_room(), room);
    }

    #[test]
    fn long_input_offered_on_demand_arrives_whole_and_in_order() {
        let mut fixture = port();
        let typed: Vec<u8> = (0..1000u32).map(|i| b'0' + (i % 10) as u8).collect();
        let mut offered = 0;
        let mut received = Vec::new();
        while received.len() < typed.len() {
            offered += fixture.port.queue_input(&typed[offered..]);
            received.extend(read_received(&mut fixture.port));
            assert!(fixture.wants_input.read().is_ok());
        }
        assert_eq!(received, typed);
    }
}
