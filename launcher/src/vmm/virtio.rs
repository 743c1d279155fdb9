//! Virtio devices on the virtio-mmio transport: each is added to the
//! device manager in one call (a window in the device window, an
//! interrupt line, one ioeventfd per queue, its `LNRO0005` DSDT entry),
//! and its queue notifiers and backend descriptors (a NIC's socket) are
//! served by the VMM thread's event loop.
//!
//! VMM thread only.

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::device_manager::{DeviceError, DeviceManager, DeviceSpec, Irq, Notifier, Window};
use super::event_loop::{EventHandler, Registrar};
use super::{acpi, disks, io_error, network, VmmError};
use crate::api::{Command, EventSender};
use crate::devices::virtio::mmio::{MmioTransport, QUEUE_NOTIFY, WINDOW_SIZE};
use crate::devices::virtio::{BackendEvent, VirtioDevice};
use crate::spec::VmConfig;

/// An input device the VMM sends keys or pointer moves to.
pub struct InputSlot {
    pub handle: crate::devices::virtio::input::InputHandle,
    pub transport: Arc<Mutex<MmioTransport>>,
}

impl InputSlot {
    /// Queues `events` and lets the device hand them to its driver.
    pub fn send(&self, events: Vec<crate::devices::virtio::input::InputEvent>) {
        self.handle.queue(events);
        self.transport
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .notify(0);
    }
}

/// Where keys and pointer moves go: the virtio keyboard and tablet whose
/// drivers run, else the PS/2 keyboard (keys only).
pub struct InputRouter {
    inputs: Vec<InputSlot>,
    /// The pointer buttons down now.
    buttons: u8,
    /// Whether pointer events without a tablet were mentioned.
    pointer_unrouted: bool,
}

impl InputRouter {
    pub fn new(inputs: Vec<InputSlot>) -> Self {
        InputRouter {
            inputs,
            buttons: 0,
            pointer_unrouted: false,
        }
    }

    fn running(&self, kind: crate::devices::virtio::input::InputKind) -> Option<&InputSlot> {
        self.inputs
            .iter()
            .find(|input| input.handle.kind == kind && input.handle.is_active())
    }

    /// Keys go to a virtio keyboard whose driver runs, else to the PS/2
    /// keyboard (early boot, guests without virtio-input): never both, or
    /// the guest would see each key twice.
    pub fn press(
        &self,
        keys: &[crate::api::KeyEvent],
        i8042: &Mutex<crate::devices::legacy::i8042::I8042>,
    ) {
        use crate::devices::virtio::input::{key_events, InputKind};
        match self.running(InputKind::Keyboard) {
            Some(keyboard) => keyboard.send(key_events(keys)),
            None => i8042.lock().unwrap_or_else(|p| p.into_inner()).press(keys),
        }
    }

    /// Moves the pointer on the VM's tablet; without one whose driver
    /// runs, it goes nowhere (said once when there is no tablet at all).
    pub fn point(&mut self, pointer: crate::api::display::PointerEvent) {
        use crate::devices::virtio::input::{pointer_events, InputKind};
        if let Some(tablet) = self.running(InputKind::Tablet) {
            tablet.send(pointer_events(self.buttons, pointer));
            self.buttons = pointer.buttons;
            return;
        }
        let has_tablet = self
            .inputs
            .iter()
            .any(|input| input.handle.kind == InputKind::Tablet);
        if !has_tablet && !self.pointer_unrouted {
            self.pointer_unrouted = true;
            log::info!("the VM has no tablet, so pointer events (first {pointer:?}) go nowhere; add inputs: [{{name: tablet, type: tablet, bus: virtio}}] to its devices");
        }
    }
}

/// What the definition's devices became.
pub(super) struct Added {
    pub slots: Vec<VirtioSlot>,
    pub boot_disk: Option<crate::images::Shared>,
    pub inputs: Vec<InputSlot>,
}

/// A virtio device on its transport, and what wakes it.
pub struct VirtioSlot {
    pub transport: Arc<Mutex<MmioTransport>>,
    pub notifiers: QueueNotifiers,
}

/// Adds `device` as the `index`th virtio-mmio device.
pub fn add(
    devices: &mut DeviceManager,
    index: u8,
    name: &str,
    device: Box<dyn VirtioDevice>,
    memory: &Arc<GuestMemoryMmap>,
) -> Result<VirtioSlot, DeviceError> {
    let notifiers = (0..device.queue_max_sizes().len() as u32)
        .map(|queue| Notifier {
            offset: QUEUE_NOTIFY,
            datamatch: Some(queue),
        })
        .collect();
    let spec = DeviceSpec {
        name: name.to_owned(),
        window: Window::MmioAnywhere {
            len: WINDOW_SIZE,
            align: WINDOW_SIZE,
        },
        irq: Irq::Allocate,
        notifiers,
        acpi: Some(Box::new(move |resources| {
            acpi::virtio_mmio_device(
                index,
                resources.base,
                resources.len,
                resources.gsi.unwrap_or(0),
            )
        })),
    };
    let mut queue_fds = Vec::new();
    let transport = devices.add(spec, |resources| {
        queue_fds = resources.notifiers()?;
        Ok(MmioTransport::new(
            device,
            memory.clone(),
            resources.interrupt()?,
        ))
    })?;
    Ok(VirtioSlot {
        notifiers: QueueNotifiers {
            transport: transport.clone(),
            fds: queue_fds,
            watched: Vec::new(),
        },
        transport,
    })
}

/// Backend sources are numbered from here, queue notifiers from 0.
const BACKEND_SOURCES: u32 = 1 << 16;

/// The ioeventfds of one device's queues and its backend's descriptors,
/// on the event loop.
pub struct QueueNotifiers {
    transport: Arc<Mutex<MmioTransport>>,
    fds: Vec<EventFd>,
    /// The backend descriptors registered now, as last asked for.
    watched: Vec<BackendEvent>,
}

impl QueueNotifiers {
    fn transport(&self) -> std::sync::MutexGuard<'_, MmioTransport> {
        self.transport
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Brings the epoll in line with what the backend wants now.
    fn watch_backend(&mut self, events: &Registrar<'_>) -> std::io::Result<()> {
        let wanted = self.transport().backend_events();
        for old in &self.watched {
            if !wanted.iter().any(|new| new.fd == old.fd) {
                events.remove(old.fd);
            }
        }
        for new in &wanted {
            let mut interest = EventSet::empty();
            if new.readable {
                interest |= EventSet::IN;
            }
            if new.writable {
                interest |= EventSet::OUT;
            }
            let source = BACKEND_SOURCES + new.source;
            match self.watched.iter().find(|old| old.fd == new.fd) {
                Some(old) if old == new => {}
                Some(_) => events.modify(new.fd, source, interest)?,
                None => events.add(new.fd, source, interest)?,
            }
        }
        self.watched = wanted;
        Ok(())
    }
}

impl EventHandler for QueueNotifiers {
    fn register(&mut self, events: &Registrar<'_>) -> std::io::Result<()> {
        for (queue, fd) in self.fds.iter().enumerate() {
            events.add(fd.as_raw_fd(), queue as u32, EventSet::IN)?;
        }
        self.watch_backend(events)
    }

    fn handle(&mut self, source: u32, _: EventSet, events: &Registrar<'_>) -> Option<Command> {
        if source >= BACKEND_SOURCES {
            self.transport().backend_ready(source - BACKEND_SOURCES);
        } else {
            let fd = self.fds.get(source as usize)?;
            let _ = fd.read();
            self.transport().notify(source as u16);
        }
        if let Err(error) = self.watch_backend(events) {
            log::error!("cannot watch a device backend: {error}");
        }
        None
    }
}

/// The virtio devices the definition asks for, in DSDT order: the disks
/// in their order, then the rest.
pub(super) fn add_devices(
    config: &VmConfig,
    scratch: &std::path::Path,
    block_devices: &crate::api::SharedBlockDevices,
    events: &EventSender,
    devices: &mut DeviceManager,
    memory: &Arc<GuestMemoryMmap>,
) -> Result<Added, VmmError> {
    let mut slots = Vec::new();
    let mut attached = Vec::new();
    let mut boot_disk = None;
    for disk in &config.disks {
        let opened = disks::open(disk, scratch, &config.identity)?;
        let size_bytes = opened.image.size();
        let format = opened.image.format().name();
        log::info!(
            "disk {}: {} {} bytes{}",
            opened.name,
            format,
            size_bytes,
            if opened.readonly { ", read-only" } else { "" }
        );
        attached.push(crate::api::BlockDevice {
            name: opened.name.clone(),
            file: opened.path.display().to_string(),
            backing_file: opened.base.map(|base| base.display().to_string()),
            format,
            readonly: opened.readonly,
            size_bytes,
        });
        let mut image = opened.image;
        if matches!(&config.boot, crate::spec::config::Boot::Disk(boot) if boot.disk == opened.name)
        {
            let shared = crate::images::Shared::new(image);
            boot_disk = Some(shared.clone());
            image = Box::new(shared);
        }
        let block = Box::new(
            crate::devices::virtio::block::Block::new(
                &opened.name,
                image,
                opened.readonly,
                opened.serial.as_deref(),
            )
            .with_events(events.clone()),
        );
        let name = format!("virtio-blk {}", opened.name);
        slots.push(add(devices, slots.len() as u8, &name, block, memory)?);
    }
    block_devices.set(attached);
    // Only one NIC can forward every port of the pod: the first that
    // lists none.
    let forwards_all = config.nics.iter().position(|nic| nic.ports.is_empty());
    for (index, nic) in config.nics.iter().enumerate() {
        if nic.ports.is_empty() && forwards_all != Some(index) {
            log::warn!(
                "NIC {}: lists no ports, but NIC {} already forwards all of the pod's ports; this one forwards none",
                nic.name,
                config.nics[forwards_all.unwrap_or(0)].name
            );
        }
        let mac = network::parse_mac(&nic.name, &nic.mac)?;
        log::info!("NIC {}: virtio-net, MAC {}", nic.name, nic.mac);
        let network::Started { backend, connect } =
            network::start(nic, forwards_all == Some(index))?;
        let net =
            crate::devices::virtio::net::Net::new(&nic.name, mac, network::MTU, backend, connect)
                .map_err(io_error("create a NIC's restart timer"))?;
        slots.push(add(
            devices,
            slots.len() as u8,
            &format!("virtio-net {}", nic.name),
            Box::new(net),
            memory,
        )?);
    }
    if config.rng {
        let rng = Box::new(crate::devices::virtio::rng::Rng::default());
        slots.push(add(devices, slots.len() as u8, "virtio-rng", rng, memory)?);
    }
    let mut inputs = Vec::new();
    for input in &config.inputs {
        use crate::devices::virtio::input::{Input, InputKind};
        let (kind, what) = match input.kind {
            crate::spec::config::InputKind::Keyboard => (InputKind::Keyboard, "keyboard"),
            crate::spec::config::InputKind::Tablet => (InputKind::Tablet, "tablet"),
        };
        let (device, handle) = Input::new(kind, &format!("vmpod virtio {what}"));
        log::info!("input {}: virtio {what}", input.name);
        let name = format!("virtio-input {}", input.name);
        let slot = add(devices, slots.len() as u8, &name, Box::new(device), memory)?;
        inputs.push(InputSlot {
            handle,
            transport: slot.transport.clone(),
        });
        slots.push(slot);
    }
    Ok(Added {
        slots,
        boot_disk,
        inputs,
    })
}
