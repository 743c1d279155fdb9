//! The devices every vmpod VM has, each added to the device manager in one
//! call: COM1 (16550), the i8042 with its PS/2 keyboard, vmpod's ACPI
//! platform registers, and the Generic Event Device with the power button.
//! They live as long as the process, across guest resets.
//!
//! VMM thread only (built before the first boot).

use std::io::Write;
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

use super::acpi;
use super::device_manager::{DeviceError, DeviceManager, DeviceSpec, Irq, Window};
use super::layout;
use crate::api::CommandSender;
use crate::devices::ged::{GenericEventDevice, GED_REGISTER_SIZE};
use crate::devices::legacy::{acpi_pm::AcpiPlatform, i8042::I8042, serial::SerialPort};

pub struct Platform {
    pub devices: DeviceManager,
    pub serial: Arc<Mutex<SerialPort>>,
    /// Readable when the guest has read all typed input (more, please).
    pub serial_wants_input: EventFd,
    pub i8042: Arc<Mutex<I8042>>,
    pub ged: Arc<Mutex<GenericEventDevice>>,
}

fn legacy(name: &str, window: Window, irq: Irq, acpi: Option<acpi::Entry>) -> DeviceSpec {
    DeviceSpec {
        name: name.into(),
        window,
        irq,
        notifiers: Vec::new(),
        acpi,
    }
}

/// Builds the platform devices; `serial_output` takes what the guest
/// writes to COM1.
pub fn build(
    commands: &CommandSender,
    serial_output: Box<dyn Write + Send>,
) -> Result<Platform, DeviceError> {
    let mut devices = DeviceManager::new();
    let serial_wants_input =
        EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(|source| {
            DeviceError::EventFd {
                device: "COM1".into(),
                what: "input request",
                source,
            }
        })?;
    let wants_input = serial_wants_input
        .try_clone()
        .map_err(|source| DeviceError::EventFd {
            device: "COM1".into(),
            what: "input request",
            source,
        })?;
    let serial = devices.add(
        legacy(
            "COM1",
            Window::Pio {
                base: layout::COM1_PORT,
                len: 8,
            },
            Irq::Fixed(layout::COM1_IRQ),
            Some(Box::new(|_| {
                acpi::pnp_device(
                    "COM1",
                    "PNP0501",
                    &[(layout::COM1_PORT, 8)],
                    layout::COM1_IRQ,
                )
            })),
        ),
        |resources| {
            Ok(SerialPort::new(
                resources.interrupt()?,
                wants_input,
                serial_output,
            ))
        },
    )?;
    let keyboard_requests = commands.clone();
    let i8042 = devices.add(
        legacy(
            "i8042",
            Window::Pio {
                base: layout::I8042_PORT,
                len: 5,
            },
            Irq::Fixed(layout::KEYBOARD_IRQ),
            Some(Box::new(|_| {
                // Linux's i8042 driver wants the data and command ports as
                // two one-byte ranges.
                let ports = [(layout::I8042_PORT, 1), (layout::I8042_PORT + 4, 1)];
                acpi::pnp_device("PS2K", "PNP0303", &ports, layout::KEYBOARD_IRQ)
            })),
        ),
        |resources| Ok(I8042::new(keyboard_requests, resources.interrupt()?)),
    )?;
    let platform_requests = commands.clone();
    // The FADT, not the DSDT, points at these registers.
    devices.add(
        legacy(
            "ACPI platform registers",
            Window::Pio {
                base: layout::ACPI_PM_PORT,
                len: 3,
            },
            Irq::None,
            None,
        ),
        |_| {
            Ok(AcpiPlatform::new(
                layout::S5_SLEEP_TYPE,
                layout::ACPI_RESET_VALUE,
                platform_requests,
            ))
        },
    )?;
    let ged = devices.add(
        legacy(
            "GED",
            Window::Mmio {
                base: layout::GED_ADDR,
                len: GED_REGISTER_SIZE,
            },
            Irq::Fixed(layout::GED_IRQ),
            Some(Box::new(|resources| {
                acpi::ged_with_power_button(resources.base, layout::GED_IRQ)
            })),
        ),
        |resources| Ok(GenericEventDevice::new(resources.interrupt()?)),
    )?;
    Ok(Platform {
        devices,
        serial,
        serial_wants_input,
        i8042,
        ged,
    })
}
