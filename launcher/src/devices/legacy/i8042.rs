//! The i8042 keyboard controller and a PS/2 keyboard behind it: enough of
//! both for Linux's i8042 and atkbd drivers (controller self-tests, the
//! command byte, keyboard reset, ID, LEDs, scancode set) and for keys
//! typed through QMP `send-key`, delivered in scancode set 1 on IRQ 1.
//! Command 0xFE on the command port pulses the CPU reset line.
//!
//! Registered at ports 0x60–0x64. Register accesses run on vCPU threads,
//! key presses on the VMM thread (its event loop); both through the device's mutex.

use std::collections::VecDeque;

use vmm_sys_util::eventfd::EventFd;

use crate::api::{keys, Command, CommandSender, KeyEvent};
use crate::devices::bus::BusDevice;

const DATA_OFFSET: u64 = 0;
const COMMAND_OFFSET: u64 = 4;

/// Status register bits.
const STATUS_OUTPUT_FULL: u8 = 1 << 0;
const STATUS_SYSTEM: u8 = 1 << 2;
const STATUS_LAST_WAS_COMMAND: u8 = 1 << 3;
const STATUS_UNLOCKED: u8 = 1 << 4;

/// Command byte bits.
const COMMAND_BYTE_KEYBOARD_INTERRUPT: u8 = 1 << 0;
const COMMAND_BYTE_SYSTEM: u8 = 1 << 2;
const COMMAND_BYTE_KEYBOARD_DISABLED: u8 = 1 << 4;
const COMMAND_BYTE_TRANSLATE: u8 = 1 << 6;

/// Keyboard replies.
const ACK: u8 = 0xfa;
const SELF_TEST_PASSED: u8 = 0xaa;
/// The most bytes waiting for the guest; more typing than this is dropped
/// (a real keyboard's buffer is 16 bytes).
const OUTPUT_LIMIT: usize = 1024;

pub struct I8042 {
    requests: CommandSender,
    interrupt: EventFd,
    output: VecDeque<u8>,
    command_byte: u8,
    /// A controller command waiting for its data byte.
    controller_command: Option<u8>,
    /// A keyboard command waiting for its argument.
    keyboard_command: Option<u8>,
    last_was_command: bool,
    scanning: bool,
}

impl I8042 {
    /// `interrupt` is the eventfd registered as IRQ 1's irqfd.
    pub fn new(requests: CommandSender, interrupt: EventFd) -> Self {
        I8042 {
            requests,
            interrupt,
            output: VecDeque::new(),
            command_byte: COMMAND_BYTE_KEYBOARD_INTERRUPT
                | COMMAND_BYTE_SYSTEM
                | COMMAND_BYTE_TRANSLATE,
            controller_command: None,
            keyboard_command: None,
            last_was_command: false,
            scanning: true,
        }
    }

    /// Types keys as if from the keyboard (in scancode set 1).
    pub fn press(&mut self, events: &[KeyEvent]) {
        if !self.scanning || self.command_byte & COMMAND_BYTE_KEYBOARD_DISABLED != 0 {
            log::info!("keys were sent while the guest had the keyboard disabled: dropped");
            return;
        }
        self.reply(&keys::set1_bytes(events));
    }

    fn reply(&mut self, bytes: &[u8]) {
        let room = OUTPUT_LIMIT.saturating_sub(self.output.len());
        self.output.extend(&bytes[..bytes.len().min(room)]);
        self.interrupt_if_waiting();
    }

    fn interrupt_if_waiting(&mut self) {
        if !self.output.is_empty() && self.command_byte & COMMAND_BYTE_KEYBOARD_INTERRUPT != 0 {
            // The interrupt line is best effort; the guest also polls.
            let _ = self.interrupt.write(1);
        }
    }

    fn status(&self) -> u8 {
        let mut status = STATUS_SYSTEM | STATUS_UNLOCKED;
        if !self.output.is_empty() {
            status |= STATUS_OUTPUT_FULL;
        }
        if self.last_was_command {
            status |= STATUS_LAST_WAS_COMMAND;
        }
        status
    }

    fn controller(&mut self, command: u8) {
        match command {
            0x20 => self.reply(&[self.command_byte]),
            0x60 | 0xd1 | 0xd2 | 0xd3 | 0xd4 => self.controller_command = Some(command),
            0xaa => self.reply(&[0x55]), // controller self-test passed
            0xab => self.reply(&[0x00]), // keyboard interface test passed
            0xa9 => self.reply(&[0x01]), // no mouse port
            0xad => self.command_byte |= COMMAND_BYTE_KEYBOARD_DISABLED,
            0xae => self.command_byte &= !COMMAND_BYTE_KEYBOARD_DISABLED,
            0xfe => {
                // The VMM may already be gone on its way out; nothing to do then.
                self.requests.send(Command::GuestReset("i8042 reset line"));
            }
            _ => {} // A20, mouse enable/disable, LEDs of old laptops: nothing to do
        }
    }

    fn controller_data(&mut self, command: u8, value: u8) {
        match command {
            0x60 => self.command_byte = value,
            0xd2 => self.reply(&[value]),  // as if the keyboard sent it
            0xd3 => self.reply(&[!value]), // mouse loopback: no mouse answers
            _ => {}
        }
    }

    fn keyboard(&mut self, byte: u8) {
        self.command_byte &= !COMMAND_BYTE_KEYBOARD_DISABLED;
        if let Some(command) = self.keyboard_command.take() {
            return match (command, byte) {
                (0xf0, 0) => self.reply(&[ACK, 0x02]), // "which set": set 2 (translated to 1)
                _ => self.reply(&[ACK]),
            };
        }
        match byte {
            0xff => {
                self.scanning = true;
                self.reply(&[ACK, SELF_TEST_PASSED]);
            }
            0xf2 => self.reply(&[ACK, 0xab, 0x83]), // an MF2 keyboard
            0xed | 0xf0 | 0xf3 => {
                self.keyboard_command = Some(byte);
                self.reply(&[ACK]);
            }
            0xf4 => {
                self.scanning = true;
                self.reply(&[ACK]);
            }
            0xf5 => {
                self.scanning = false;
                self.reply(&[ACK]);
            }
            0xee => self.reply(&[0xee]), // echo
            _ => self.reply(&[ACK]),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        for byte in data.iter_mut() {
            *byte = match offset {
                DATA_OFFSET => {
                    let value = self.output.pop_front().unwrap_or(0);
                    self.interrupt_if_waiting();
                    value
                }
                COMMAND_OFFSET => self.status(),
                _ => 0xff,
            };
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        for &value in data {
            match offset {
                COMMAND_OFFSET => {
                    self.last_was_command = true;
                    self.controller(value);
                }
                DATA_OFFSET => {
                    self.last_was_command = false;
                    match self.controller_command.take() {
                        Some(command) => self.controller_data(command, value),
                        None => self.keyboard(value),
                    }
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn controller() -> (I8042, crate::api::CommandReceiver, EventFd) {
        let (sender, receiver) = crate::api::channel().expect("channel");
        let interrupt = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        (
            I8042::new(sender, interrupt.try_clone().expect("clone")),
            receiver,
            interrupt,
        )
    }

    fn read_all(i8042: &mut I8042) -> Vec<u8> {
        let mut bytes = Vec::new();
        let mut status = [0u8];
        loop {
            i8042.read(COMMAND_OFFSET, &mut status);
            if status[0] & STATUS_OUTPUT_FULL == 0 {
                return bytes;
            }
            let mut byte = [0u8];
            i8042.read(DATA_OFFSET, &mut byte);
            bytes.push(byte[0]);
        }
    }

    #[test]
    fn pulse_reset_asks_for_a_reset() {
        let (mut i8042, requests, _) = controller();
        i8042.write(COMMAND_OFFSET, &[0xfe]);
        assert!(matches!(
            requests.drain()[..],
            [Command::GuestReset("i8042 reset line")]
        ));
    }

    #[test]
    fn linux_probe_sequence_is_answered() {
        let (mut i8042, _, _) = controller();
        i8042.write(COMMAND_OFFSET, &[0xaa]);
        assert_eq!(read_all(&mut i8042), [0x55]);
        i8042.write(COMMAND_OFFSET, &[0x20]);
        let command_byte = read_all(&mut i8042)[0];
        assert_ne!(command_byte & COMMAND_BYTE_TRANSLATE, 0);
        i8042.write(COMMAND_OFFSET, &[0x60]);
        i8042.write(
            DATA_OFFSET,
            &[command_byte | COMMAND_BYTE_KEYBOARD_INTERRUPT],
        );
        i8042.write(DATA_OFFSET, &[0xff]);
        assert_eq!(read_all(&mut i8042), [ACK, SELF_TEST_PASSED]);
        i8042.write(DATA_OFFSET, &[0xf2]);
        assert_eq!(read_all(&mut i8042), [ACK, 0xab, 0x83]);
        i8042.write(DATA_OFFSET, &[0xed]);
        i8042.write(DATA_OFFSET, &[0x02]);
        assert_eq!(read_all(&mut i8042), [ACK, ACK]);
    }

    #[test]
    fn pressed_keys_arrive_with_an_interrupt() {
        let (mut i8042, _, interrupt) = controller();
        let a = keys::chord(&["a"]).expect("a key");
        i8042.press(&a);
        assert!(interrupt.read().is_ok());
        assert_eq!(read_all(&mut i8042), [0x1e, 0x9e]);
        i8042.write(DATA_OFFSET, &[0xf5]); // the guest disables scanning
        read_all(&mut i8042);
        i8042.press(&a);
        assert!(read_all(&mut i8042).is_empty());
    }
}
