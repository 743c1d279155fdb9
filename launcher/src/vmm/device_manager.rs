//! The device manager: one registration gives a device everything it needs
//! — its port or MMIO range (fixed, or allocated from the device window by
//! vm-allocator), its interrupt (GSI + irqfd), its queue notifiers
//! (ioeventfds) and its ACPI DSDT entry — and `attach` replays the wiring
//! on every boot, because a guest reset builds a new KVM VM.
//!
//! VMM thread only. Devices never see the manager; they get their
//! [`Resources`] when they are built.

use std::sync::{Arc, Mutex};

use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use vm_allocator::{AddressAllocator, AllocPolicy, IdAllocator};
use vmm_sys_util::eventfd::EventFd;

use super::layout;
use crate::devices::bus::{Bus, BusDevice, OverlapError};

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("device {device}: no room for {len:#x} bytes in the device window")]
    NoAddressSpace {
        device: String,
        len: u64,
        #[source]
        source: vm_allocator::Error,
    },
    #[error("device {device}: no interrupt line is left")]
    NoInterrupt {
        device: String,
        #[source]
        source: vm_allocator::Error,
    },
    #[error("device {device}: its range overlaps another device")]
    Overlap {
        device: String,
        #[source]
        source: OverlapError,
    },
    #[error("device {device}: cannot create its {what}")]
    EventFd {
        device: String,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("device {device}: KVM refused its {what}")]
    Wire {
        device: String,
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("device {device} could not be built")]
    Build {
        device: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Where a device's registers are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// I/O ports at a fixed base.
    Pio { base: u16, len: u16 },
    /// MMIO at a fixed address (outside the device window).
    Mmio { base: u64, len: u64 },
    /// MMIO anywhere in the device window, aligned to `align`.
    MmioAnywhere { len: u64, align: u64 },
}

/// The interrupt line a device wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Irq {
    None,
    Fixed(u32),
    Allocate,
}

/// A doorbell register the guest writes to notify the device, delivered
/// as an eventfd instead of a vCPU exit (`datamatch`: only that value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Notifier {
    pub offset: u64,
    pub datamatch: Option<u32>,
}

/// What a device asks for.
pub struct DeviceSpec {
    pub name: String,
    pub window: Window,
    pub irq: Irq,
    pub notifiers: Vec<Notifier>,
    /// Its DSDT entry, built from the resources it was given.
    pub acpi: Option<super::acpi::Entry>,
}

/// What a device was given.
pub struct Resources {
    pub name: String,
    /// Port or guest-physical base, and length.
    pub base: u64,
    pub len: u64,
    pub is_pio: bool,
    pub gsi: Option<u32>,
    interrupt: Option<EventFd>,
    notifiers: Vec<(Notifier, EventFd)>,
}

impl Resources {
    /// A handle on the device's irqfd (writing 1 raises its interrupt).
    pub fn interrupt(&self) -> Result<EventFd, DeviceError> {
        let interrupt = self
            .interrupt
            .as_ref()
            .ok_or_else(|| DeviceError::EventFd {
                device: self.name.clone(),
                what: "interrupt (it asked for none)",
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            })?;
        interrupt
            .try_clone()
            .map_err(|source| DeviceError::EventFd {
                device: self.name.clone(),
                what: "interrupt",
                source,
            })
    }

    /// Handles on the device's notifiers, in the order it asked for them.
    pub fn notifiers(&self) -> Result<Vec<EventFd>, DeviceError> {
        self.notifiers
            .iter()
            .map(|(_, fd)| {
                fd.try_clone().map_err(|source| DeviceError::EventFd {
                    device: self.name.clone(),
                    what: "notifier",
                    source,
                })
            })
            .collect()
    }
}

struct Registered {
    resources: Resources,
    acpi: Vec<u8>,
}

pub struct DeviceManager {
    pio: Bus,
    mmio: Bus,
    mmio_space: AddressAllocator,
    gsis: IdAllocator,
    devices: Vec<Registered>,
}

fn new_eventfd(device: &str, what: &'static str) -> Result<EventFd, DeviceError> {
    EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(|source| DeviceError::EventFd {
        device: device.to_owned(),
        what,
        source,
    })
}

impl DeviceManager {
    pub fn new() -> Self {
        DeviceManager {
            pio: Bus::default(),
            mmio: Bus::default(),
            // Constants that layout's tests keep valid: a non-empty window
            // and a non-empty GSI range.
            mmio_space: AddressAllocator::new(
                layout::DEVICE_WINDOW_START,
                layout::DEVICE_WINDOW_END - layout::DEVICE_WINDOW_START,
            )
            .unwrap_or_else(|_| unreachable!("layout's device window is valid")),
            gsis: IdAllocator::new(layout::FIRST_DEVICE_GSI, layout::LAST_DEVICE_GSI)
                .unwrap_or_else(|_| unreachable!("layout's GSI range is valid")),
            devices: Vec::new(),
        }
    }

    /// Registers a device: gives it its resources, builds it with them
    /// (`build`), and puts it on its bus. This is the one call a new device
    /// needs.
    pub fn add<D: BusDevice + 'static>(
        &mut self,
        spec: DeviceSpec,
        build: impl FnOnce(&Resources) -> Result<D, DeviceError>,
    ) -> Result<Arc<Mutex<D>>, DeviceError> {
        let resources = self.allocate(&spec)?;
        let device = Arc::new(Mutex::new(build(&resources)?));
        let bus = if resources.is_pio {
            &mut self.pio
        } else {
            &mut self.mmio
        };
        bus.insert(resources.base, resources.len, device.clone())
            .map_err(|source| DeviceError::Overlap {
                device: spec.name.clone(),
                source,
            })?;
        let acpi = spec.acpi.map(|entry| entry(&resources)).unwrap_or_default();
        self.devices.push(Registered { resources, acpi });
        Ok(device)
    }

    fn allocate(&mut self, spec: &DeviceSpec) -> Result<Resources, DeviceError> {
        let name = spec.name.clone();
        let (base, len, is_pio) = match spec.window {
            Window::Pio { base, len } => (u64::from(base), u64::from(len), true),
            Window::Mmio { base, len } => (base, len, false),
            Window::MmioAnywhere { len, align } => {
                let range = self
                    .mmio_space
                    .allocate(len, align, AllocPolicy::FirstMatch)
                    .map_err(|source| DeviceError::NoAddressSpace {
                        device: name.clone(),
                        len,
                        source,
                    })?;
                (range.start(), len, false)
            }
        };
        let gsi = match spec.irq {
            Irq::None => None,
            Irq::Fixed(gsi) => Some(gsi),
            Irq::Allocate => {
                Some(
                    self.gsis
                        .allocate_id()
                        .map_err(|source| DeviceError::NoInterrupt {
                            device: name.clone(),
                            source,
                        })?,
                )
            }
        };
        let interrupt = match gsi {
            Some(_) => Some(new_eventfd(&name, "interrupt")?),
            None => None,
        };
        let notifiers = spec
            .notifiers
            .iter()
            .map(|notifier| Ok((*notifier, new_eventfd(&name, "notifier")?)))
            .collect::<Result<_, DeviceError>>()?;
        Ok(Resources {
            name,
            base,
            len,
            is_pio,
            gsi,
            interrupt,
            notifiers,
        })
    }

    /// The port I/O and MMIO buses, for the vCPU threads.
    pub fn buses(&self) -> (Bus, Bus) {
        (self.pio.clone(), self.mmio.clone())
    }

    /// The DSDT entries of every device, in the order they were added.
    pub fn acpi_devices(&self) -> Vec<u8> {
        self.devices
            .iter()
            .flat_map(|device| device.acpi.iter().copied())
            .collect()
    }

    /// Wires every device's interrupt and notifiers into a new KVM VM (on
    /// every boot: a reset builds a new one).
    pub fn attach(&self, vm: &VmFd) -> Result<(), DeviceError> {
        for Registered { resources, .. } in &self.devices {
            let wire_error = |what| {
                move |source| DeviceError::Wire {
                    device: resources.name.clone(),
                    what,
                    source,
                }
            };
            if let (Some(gsi), Some(interrupt)) = (resources.gsi, &resources.interrupt) {
                vm.register_irqfd(interrupt, gsi)
                    .map_err(wire_error("interrupt"))?;
            }
            for (notifier, fd) in &resources.notifiers {
                let address = resources.base + notifier.offset;
                let address = if resources.is_pio {
                    IoEventAddress::Pio(address)
                } else {
                    IoEventAddress::Mmio(address)
                };
                match notifier.datamatch {
                    Some(value) => vm.register_ioevent(fd, &address, value),
                    None => vm.register_ioevent(fd, &address, NoDatamatch),
                }
                .map_err(wire_error("notifier"))?;
            }
        }
        Ok(())
    }
}

impl Default for DeviceManager {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Registers;

    impl BusDevice for Registers {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, _: u64, _: &[u8]) {}
    }

    fn spec(name: &str, window: Window, irq: Irq) -> DeviceSpec {
        DeviceSpec {
            name: name.into(),
            window,
            irq,
            notifiers: vec![Notifier {
                offset: 0x50,
                datamatch: None,
            }],
            acpi: Some(Box::new(|resources: &Resources| {
                format!(
                    "{}@{:#x}/{:?};",
                    resources.name, resources.base, resources.gsi
                )
                .into_bytes()
            })),
        }
    }

    #[test]
    fn one_registration_gives_range_interrupt_notifiers_and_acpi() {
        let mut devices = DeviceManager::new();
        let anywhere = Window::MmioAnywhere {
            len: 0x200,
            align: 0x1000,
        };
        let first = devices
            .add(spec("first", anywhere, Irq::Allocate), |resources| {
                assert_eq!(resources.notifiers().expect("notifiers").len(), 1);
                resources.interrupt().expect("an interrupt");
                Ok(Registers)
            })
            .expect("added");
        devices
            .add(spec("second", anywhere, Irq::Allocate), |_| Ok(Registers))
            .expect("added");
        devices
            .add(
                spec(
                    "com",
                    Window::Pio {
                        base: 0x3f8,
                        len: 8,
                    },
                    Irq::Fixed(4),
                ),
                |_| Ok(Registers),
            )
            .expect("added");
        let acpi = String::from_utf8(devices.acpi_devices()).expect("text");
        let first_base = layout::DEVICE_WINDOW_START;
        let second_base = first_base + 0x1000;
        assert_eq!(
            acpi,
            format!(
                "first@{first_base:#x}/Some({});second@{second_base:#x}/Some({});com@0x3f8/Some(4);",
                layout::FIRST_DEVICE_GSI,
                layout::FIRST_DEVICE_GSI + 1
            )
        );
        let (pio, mmio) = devices.buses();
        let mut byte = [0u8];
        assert!(mmio.read(second_base + 7, &mut byte));
        assert_eq!(byte, [7]);
        assert!(pio.read(0x3f9, &mut byte));
        drop(first);
    }

    #[test]
    fn overlapping_fixed_ranges_name_the_device() {
        let mut devices = DeviceManager::new();
        let window = Window::Pio { base: 0x60, len: 5 };
        devices
            .add(spec("kbd", window, Irq::None), |_| Ok(Registers))
            .expect("added");
        let error = devices
            .add(spec("clash", window, Irq::None), |_| Ok(Registers))
            .err()
            .expect("refused");
        assert_eq!(
            error.to_string(),
            "device clash: its range overlaps another device"
        );
    }

    #[test]
    fn interrupt_lines_run_out_with_a_clear_error() {
        let mut devices = DeviceManager::new();
        let lines = layout::LAST_DEVICE_GSI - layout::FIRST_DEVICE_GSI + 1;
        let small = Window::MmioAnywhere {
            len: 0x100,
            align: 0x100,
        };
        for index in 0..lines {
            devices
                .add(spec(&format!("d{index}"), small, Irq::Allocate), |_| {
                    Ok(Registers)
                })
                .expect("a line is left");
        }
        let error = devices
            .add(spec("one-too-many", small, Irq::Allocate), |_| {
                Ok(Registers)
            })
            .err()
            .expect("none left");
        assert_eq!(
            error.to_string(),
            "device one-too-many: no interrupt line is left"
        );
    }
}
