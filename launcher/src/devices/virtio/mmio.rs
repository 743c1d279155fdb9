//! The virtio-mmio transport, modern layout (virtio 1.2, section 4.2.2):
//! the register window a driver finds through the DSDT (`LNRO0005`), the
//! device status state machine, feature negotiation (VIRTIO_F_VERSION_1
//! required), queue setup, and the interrupt status register. Queue
//! notifications normally arrive as ioeventfds on the VMM thread
//! ([`MmioTransport::notify`]); a write that reaches the register anyway
//! is passed on the same way.
//!
//! Register accesses run on vCPU threads, notifications on the VMM thread;
//! both through the transport's mutex.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::VIRTIO_F_VERSION_1;
use super::{Activation, ActiveQueue, InterruptCause, VirtioDevice, VirtioInterrupt};
use crate::devices::bus::BusDevice;

/// The size of a transport's register window (registers + config space).
pub const WINDOW_SIZE: u64 = 0x1000;
/// Where the driver writes a queue's index to notify it (its ioeventfd).
pub const QUEUE_NOTIFY: u64 = 0x050;

const MAGIC_VALUE: u64 = 0x000;
const VERSION: u64 = 0x004;
const DEVICE_ID: u64 = 0x008;
const VENDOR_ID: u64 = 0x00c;
const DEVICE_FEATURES: u64 = 0x010;
const DEVICE_FEATURES_SEL: u64 = 0x014;
const DRIVER_FEATURES: u64 = 0x020;
const DRIVER_FEATURES_SEL: u64 = 0x024;
const QUEUE_SEL: u64 = 0x030;
const QUEUE_NUM_MAX: u64 = 0x034;
const QUEUE_NUM: u64 = 0x038;
const QUEUE_READY: u64 = 0x044;
const INTERRUPT_STATUS: u64 = 0x060;
const INTERRUPT_ACK: u64 = 0x064;
const STATUS: u64 = 0x070;
const QUEUE_DESC_LOW: u64 = 0x080;
const QUEUE_DESC_HIGH: u64 = 0x084;
const QUEUE_DRIVER_LOW: u64 = 0x090;
const QUEUE_DRIVER_HIGH: u64 = 0x094;
const QUEUE_DEVICE_LOW: u64 = 0x0a0;
const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
const SHM_LEN_LOW: u64 = 0x0b0;
const SHM_LEN_HIGH: u64 = 0x0b4;
const CONFIG_GENERATION: u64 = 0x0fc;
const CONFIG: u64 = 0x100;

/// "virt", little-endian.
const MAGIC: u32 = 0x7472_6976;
/// "VMPD", little-endian: vmpod's vendor id.
const VENDOR: u32 = 0x4450_4d56;

/// Device status bits (virtio 1.2, section 2.1).
pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const FAILED: u32 = 128;
}

/// Interrupt status bits (virtio 1.2, section 4.2.2).
const USED_BUFFER: u32 = 1;
const CONFIG_CHANGE: u32 = 2;

/// The interrupt of one MMIO transport: a status register the driver
/// reads and acknowledges, and an irqfd.
pub struct MmioInterrupt {
    status: AtomicU32,
    irqfd: EventFd,
}

impl VirtioInterrupt for MmioInterrupt {
    fn trigger(&self, cause: InterruptCause) -> std::io::Result<()> {
        let bit = match cause {
            InterruptCause::Queue(_) => USED_BUFFER,
            InterruptCause::ConfigChange => CONFIG_CHANGE,
        };
        self.status.fetch_or(bit, Ordering::SeqCst);
        self.irqfd.write(1)
    }
}

pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    memory: Arc<GuestMemoryMmap>,
    interrupt: Arc<MmioInterrupt>,
    queues: Vec<Queue>,
    queue_select: u32,
    device_features_select: u32,
    driver_features_select: u32,
    driver_features: u64,
    status: u32,
    config_generation: u32,
    active: bool,
}

impl MmioTransport {
    /// `irqfd` raises the transport's interrupt line.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        memory: Arc<GuestMemoryMmap>,
        irqfd: EventFd,
    ) -> Self {
        let queues = device
            .queue_max_sizes()
            .iter()
            .filter_map(|size| Queue::new(*size).ok())
            .collect();
        MmioTransport {
            device,
            memory,
            interrupt: Arc::new(MmioInterrupt {
                status: AtomicU32::new(0),
                irqfd,
            }),
            queues,
            queue_select: 0,
            device_features_select: 0,
            driver_features_select: 0,
            driver_features: 0,
            status: 0,
            config_generation: 0,
            active: false,
        }
    }

    fn offered_features(&self) -> u64 {
        self.device.features() | VIRTIO_F_VERSION_1
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        // A queue is set up before DRIVER_OK; once the device is live,
        // writes to the queue registers are ignored (section 4.2.3.2).
        if self.status & status::DRIVER_OK != 0 {
            return None;
        }
        self.queues.get_mut(self.queue_select as usize)
    }

    /// The driver notified queue `index` (its ioeventfd fired, or its
    /// write reached the register).
    pub fn notify(&mut self, index: u16) {
        if self.active {
            self.device.queue_notified(index);
        }
    }

    /// What the device's backend needs waited on (whether or not the
    /// driver has set the device up: a backend may have to be drained).
    pub fn backend_events(&self) -> Vec<super::BackendEvent> {
        self.device.backend_events()
    }

    pub fn backend_ready(&mut self, source: u32) {
        self.device.backend_ready(source);
    }

    /// Back to the state after power-on: a guest reset, or status 0.
    pub fn reset(&mut self) {
        if self.active {
            self.device.reset();
        }
        self.active = false;
        for queue in &mut self.queues {
            queue.reset();
        }
        self.queue_select = 0;
        self.device_features_select = 0;
        self.driver_features_select = 0;
        self.driver_features = 0;
        self.status = 0;
        self.interrupt.status.store(0, Ordering::SeqCst);
    }

    fn read_register(&self, offset: u64) -> u32 {
        let queue = self.queues.get(self.queue_select as usize);
        match offset {
            MAGIC_VALUE => MAGIC,
            VERSION => 2,
            DEVICE_ID => self.device.device_type(),
            VENDOR_ID => VENDOR,
            DEVICE_FEATURES => match self.device_features_select {
                0 => self.offered_features() as u32,
                1 => (self.offered_features() >> 32) as u32,
                _ => 0,
            },
            QUEUE_NUM_MAX => queue.map_or(0, |q| u32::from(q.max_size())),
            QUEUE_READY => queue.map_or(0, |q| u32::from(q.ready())),
            INTERRUPT_STATUS => self.interrupt.status.load(Ordering::SeqCst),
            STATUS => self.status,
            // No shared memory regions: length all ones (section 4.2.2).
            SHM_LEN_LOW | SHM_LEN_HIGH => u32::MAX,
            CONFIG_GENERATION => self.config_generation,
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            DEVICE_FEATURES_SEL => self.device_features_select = value,
            DRIVER_FEATURES_SEL => self.driver_features_select = value,
            DRIVER_FEATURES if self.status & status::FEATURES_OK == 0 => {
                match self.driver_features_select {
                    0 => {
                        self.driver_features =
                            (self.driver_features & !0xffff_ffff) | u64::from(value)
                    }
                    1 => {
                        self.driver_features =
                            (self.driver_features & 0xffff_ffff) | (u64::from(value) << 32)
                    }
                    _ => {}
                }
            }
            QUEUE_SEL => self.queue_select = value,
            QUEUE_NUM => {
                if let Some(queue) = self.selected_queue() {
                    queue.set_size(value as u16);
                }
            }
            QUEUE_READY if value == 0 && self.status & status::DRIVER_OK != 0 => self.stop_queue(),
            QUEUE_READY => {
                if let Some(queue) = self.selected_queue() {
                    queue.set_ready(value == 1);
                }
            }
            QUEUE_DESC_LOW | QUEUE_DESC_HIGH | QUEUE_DRIVER_LOW | QUEUE_DRIVER_HIGH
            | QUEUE_DEVICE_LOW | QUEUE_DEVICE_HIGH => self.set_queue_address(offset, value),
            QUEUE_NOTIFY => self.notify(value as u16),
            INTERRUPT_ACK => {
                self.interrupt.status.fetch_and(!value, Ordering::SeqCst);
            }
            STATUS => self.set_status(value),
            _ => {} // read-only registers, or features after FEATURES_OK
        }
    }

    fn set_queue_address(&mut self, offset: u64, value: u32) {
        let Some(queue) = self.selected_queue() else {
            return;
        };
        let (low, high) = if offset.is_multiple_of(8) {
            (Some(value), None)
        } else {
            (None, Some(value))
        };
        match offset & !7 {
            QUEUE_DESC_LOW => queue.set_desc_table_address(low, high),
            QUEUE_DRIVER_LOW => queue.set_avail_ring_address(low, high),
            _ => queue.set_used_ring_address(low, high),
        }
    }

    /// The status state machine (virtio 1.2, sections 3.1.1 and 2.1.2).
    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let added = value & !self.status;
        if added & status::FEATURES_OK != 0 {
            let offered = self.offered_features();
            let acceptable = self.driver_features & !offered == 0
                && self.driver_features & VIRTIO_F_VERSION_1 != 0;
            if !acceptable {
                // The driver reads the status back and sees FEATURES_OK unset.
                self.status = value & !status::FEATURES_OK;
                return;
            }
        }
        self.status = value;
        if added & status::DRIVER_OK != 0 && self.status & status::FEATURES_OK != 0 {
            self.activate();
        }
    }

    /// The driver stops using a live queue (section 4.2.2.2: it writes 0
    /// to QueueReady and reads it back, as drivers do before a reset).
    /// The device stops using all its queues at once, so nothing is ever
    /// written into buffers the driver may already have freed.
    fn stop_queue(&mut self) {
        let Some(queue) = self.queues.get_mut(self.queue_select as usize) else {
            return;
        };
        queue.set_ready(false);
        if self.active {
            log::debug!(
                "virtio device type {}: the driver stopped queue {}; the device stops",
                self.device.device_type(),
                self.queue_select
            );
            self.device.reset();
            self.active = false;
        }
    }

    fn activate(&mut self) {
        let mut active = Vec::new();
        for (index, queue) in self.queues.iter().enumerate() {
            if !queue.ready() {
                continue;
            }
            if !queue.is_valid(&*self.memory) {
                log::warn!("virtio device type {}: the driver set up queue {index} outside guest memory or misaligned", self.device.device_type());
                self.status |= status::FAILED;
                return;
            }
            active.push(ActiveQueue {
                index: index as u16,
                queue: copy_of(queue),
            });
        }
        let activation = Activation {
            memory: self.memory.clone(),
            features: self.driver_features,
            queues: active,
            interrupt: self.interrupt.clone(),
        };
        match self.device.activate(activation) {
            Ok(()) => self.active = true,
            Err(error) => {
                log::warn!(
                    "virtio device type {} could not start: {error}",
                    self.device.device_type()
                );
                self.status |= status::FAILED;
            }
        }
    }
}

/// The device's own copy of a queue the driver set up (the transport
/// keeps its own, to answer register reads).
fn copy_of(queue: &Queue) -> Queue {
    let mut copy = Queue::new(queue.max_size()).unwrap_or_default();
    copy.set_size(queue.size());
    let halves = |address: u64| (Some(address as u32), Some((address >> 32) as u32));
    let (low, high) = halves(queue.desc_table());
    copy.set_desc_table_address(low, high);
    let (low, high) = halves(queue.avail_ring());
    copy.set_avail_ring_address(low, high);
    let (low, high) = halves(queue.used_ring());
    copy.set_used_ring_address(low, high);
    copy.set_ready(queue.ready());
    copy
}

/// Registers are 32 bits wide; config space may be read in any width.
impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG {
            self.device.read_config(offset - CONFIG, data);
            return;
        }
        let value = if data.len() == 4 && offset.is_multiple_of(4) {
            self.read_register(offset)
        } else {
            0
        };
        let bytes = value.to_le_bytes();
        let len = data.len().min(4);
        data[..len].copy_from_slice(&bytes[..len]);
        data[len..].fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG {
            self.device.write_config(offset - CONFIG, data);
            return;
        }
        if let (4, 0) = (data.len(), offset % 4) {
            let mut bytes = [0u8; 4];
            bytes.copy_from_slice(data);
            self.write_register(offset, u32::from_le_bytes(bytes));
        }
    }
}

#[cfg(test)]
#[path = "mmio_tests.rs"]
mod tests;
