//! vmpod's hardware-reduced ACPI platform registers, as the FADT describes
//! them: sleep control (offset 0), sleep status (offset 1) and the reset
//! register (offset 2). Writing SLP_EN with the `\_S5_` sleep type powers
//! the VM off; writing the reset value resets it.
//!
//! Runs on the vCPU thread that accesses it.

use crate::api::{Command, CommandSender};
use crate::devices::bus::BusDevice;

const SLEEP_CONTROL: u64 = 0;
const SLEEP_STATUS: u64 = 1;
const RESET: u64 = 2;
/// Sleep control register fields (ACPI 6.5, 4.8.3.7).
const SLP_EN: u8 = 1 << 5;
const SLP_TYP_SHIFT: u8 = 2;
const SLP_TYP_MASK: u8 = 0b111;

pub struct AcpiPlatform {
    s5_sleep_type: u8,
    reset_value: u8,
    requests: CommandSender,
}

impl AcpiPlatform {
    pub fn new(s5_sleep_type: u8, reset_value: u8, requests: CommandSender) -> Self {
        AcpiPlatform {
            s5_sleep_type,
            reset_value,
            requests,
        }
    }
}

impl BusDevice for AcpiPlatform {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // Sleep status: WAK_STS is never set, because vmpod never wakes.
        let _ = offset == SLEEP_STATUS;
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        let request = match offset {
            SLEEP_CONTROL if value & SLP_EN != 0 => {
                let sleep_type = (value >> SLP_TYP_SHIFT) & SLP_TYP_MASK;
                if sleep_type != self.s5_sleep_type {
                    log::warn!(
                        "guest asked for ACPI sleep type {sleep_type}; vmpod only powers off (S5)"
                    );
                    return;
                }
                Command::GuestPoweroff
            }
            RESET if value == self.reset_value => Command::GuestReset("ACPI reset register"),
            _ => return,
        };
        // The VMM may already be gone on its way out; nothing to do then.
        self.requests.send(request);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn platform() -> (AcpiPlatform, crate::api::CommandReceiver) {
        let (sender, receiver) = crate::api::channel().expect("channel");
        (AcpiPlatform::new(5, 1, sender), receiver)
    }

    #[test]
    fn s5_with_slp_en_powers_off() {
        let (mut device, requests) = platform();
        device.write(SLEEP_CONTROL, &[5 << 2]);
        assert!(
            requests.drain().is_empty(),
            "without SLP_EN nothing happens"
        );
        device.write(SLEEP_CONTROL, &[(5 << 2) | SLP_EN]);
        assert!(matches!(requests.drain()[..], [Command::GuestPoweroff]));
    }

    #[test]
    fn other_sleep_states_are_refused() {
        let (mut device, requests) = platform();
        device.write(SLEEP_CONTROL, &[(3 << 2) | SLP_EN]);
        assert!(requests.drain().is_empty());
    }

    #[test]
    fn reset_value_resets() {
        let (mut device, requests) = platform();
        device.write(RESET, &[2]);
        assert!(requests.drain().is_empty());
        device.write(RESET, &[1]);
        assert!(matches!(
            requests.drain()[..],
            [Command::GuestReset("ACPI reset register")]
        ));
    }
}
