//! The ACPI Generic Event Device (ACPI0013) of a hardware-reduced platform:
//! one 32-bit MMIO register of pending events, read-to-clear, and an
//! interrupt. vmpod's only event is the power button: the DSDT's `_EVT`
//! reads the register and notifies `\_SB.PWRB`, which the OS turns into
//! an orderly shutdown.
//!
//! `press_power_button` runs on the VMM thread (SIGTERM, QMP, the monitor);
//! register reads on vCPU threads. Both go through the device's mutex.

use vmm_sys_util::eventfd::EventFd;

use crate::devices::bus::BusDevice;

/// Bit of the event register that means "the power button was pressed".
pub const POWER_BUTTON_EVENT: u32 = 1;
/// Size of the register window.
pub const GED_REGISTER_SIZE: u64 = 4;

pub struct GenericEventDevice {
    pending: u32,
    interrupt: EventFd,
}

impl GenericEventDevice {
    /// `interrupt` is the eventfd registered as the device's irqfd.
    pub fn new(interrupt: EventFd) -> Self {
        GenericEventDevice {
            pending: 0,
            interrupt,
        }
    }

    /// Presses the ACPI power button.
    pub fn press_power_button(&mut self) -> std::io::Result<()> {
        self.pending |= POWER_BUTTON_EVENT;
        self.interrupt.write(1)
    }
}

impl BusDevice for GenericEventDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset == 0 && data.len() == 4 {
            data.copy_from_slice(&self.pending.to_le_bytes());
            self.pending = 0;
        }
    }

    fn write(&mut self, _offset: u64, _data: &[u8]) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_press_interrupts_and_reads_once() {
        let interrupt = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        let mut ged = GenericEventDevice::new(interrupt.try_clone().expect("clone"));
        let mut register = [0u8; 4];
        ged.read(0, &mut register);
        assert_eq!(u32::from_le_bytes(register), 0);
        ged.press_power_button().expect("press");
        assert_eq!(interrupt.read().expect("interrupted"), 1);
        ged.read(0, &mut register);
        assert_eq!(u32::from_le_bytes(register), POWER_BUTTON_EVENT);
        ged.read(0, &mut register);
        assert_eq!(u32::from_le_bytes(register), 0, "read clears");
    }
}
