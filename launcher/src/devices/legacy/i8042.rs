//! The i8042 keyboard controller, as far as vmpod needs it: the reset line
//! (command 0xFE on the command port pulses the CPU reset). Data and status
//! read as "no data, input buffer empty", so probing guests move on.
//!
//! Registered at ports 0x60–0x64; runs on the vCPU thread that accesses it.

use crate::devices::bus::BusDevice;
use crate::devices::{RequestSender, VmRequest};

const COMMAND_OFFSET: u64 = 4;
const PULSE_RESET: u8 = 0xfe;

pub struct I8042 {
    requests: RequestSender,
}

impl I8042 {
    pub fn new(requests: RequestSender) -> Self {
        I8042 { requests }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == COMMAND_OFFSET && data.first() == Some(&PULSE_RESET) {
            // The VMM may already be gone on its way out; nothing to do then.
            let _ = self.requests.send(VmRequest::Reset("i8042 reset line"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pulse_reset_asks_for_a_reset_and_other_writes_do_not() {
        let (sender, receiver) = std::sync::mpsc::channel();
        let mut i8042 = I8042::new(sender);
        i8042.write(0, &[PULSE_RESET]);
        i8042.write(COMMAND_OFFSET, &[0xad]);
        assert!(receiver.try_recv().is_err());
        i8042.write(COMMAND_OFFSET, &[PULSE_RESET]);
        assert_eq!(
            receiver.try_recv(),
            Ok(VmRequest::Reset("i8042 reset line"))
        );
        let mut status = [0xffu8];
        i8042.read(COMMAND_OFFSET, &mut status);
        assert_eq!(status, [0]);
    }
}
