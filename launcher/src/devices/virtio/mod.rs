//! The virtio device model every transport shares (virtio 1.2, sections 2
//! and 4): what a device offers — its type, queue sizes, feature bits and
//! configuration space — and what it is handed when the driver sets
//! DRIVER_OK: guest memory, its queues with their notifiers, and a way to
//! interrupt the driver. The transports (virtio-mmio, and PCI later) own
//! the registers, the status state machine, feature negotiation and queue
//! setup; a device never knows which transport carries it.
//!
//! Devices are built on the VMM thread and activated by the driver's
//! register writes (a vCPU thread); queue notifications reach them from
//! the VMM thread's event loop (ioeventfds). All through the transport's
//! mutex.

pub mod block;
pub mod input;
pub mod mmio;
pub mod net;
pub mod rng;
#[cfg(test)]
pub mod test_support;

use std::os::fd::RawFd;
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

/// The guest is hostile: a request it malformed fails, and is logged at
/// most this often (the first few, then every power of two).
pub fn log_bad_request(count: &mut u64, device: &str, what: impl std::fmt::Display) {
    *count += 1;
    if *count <= 4 || count.is_power_of_two() {
        log::warn!("{device}: the guest sent a malformed request ({what}); failed it (bad requests so far: {count})");
    }
}

/// Reads `data.len()` bytes of a configuration space at `offset`; bytes
/// past its end read as zero.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    for (index, byte) in data.iter_mut().enumerate() {
        *byte = usize::try_from(offset)
            .ok()
            .and_then(|offset| offset.checked_add(index))
            .and_then(|at| config.get(at).copied())
            .unwrap_or(0);
    }
}

/// Device types (virtio 1.2, section 5).
pub mod device_type {
    pub const NET: u32 = 1;
    pub const BLOCK: u32 = 2;
    pub const ENTROPY: u32 = 4;
    pub const INPUT: u32 = 18;
}

/// Feature bits every modern device offers (virtio 1.2, section 6).
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// Why the driver is interrupted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterruptCause {
    /// The device used buffers of this queue.
    Queue(u16),
    /// The device's configuration space changed (a resized disk, a link
    /// going down or up).
    ConfigChange,
}

/// How a device interrupts its driver: an irqfd plus the interrupt status
/// register on MMIO, a vector per queue on PCI.
pub trait VirtioInterrupt: Send + Sync {
    fn trigger(&self, cause: InterruptCause) -> std::io::Result<()>;
}

/// One queue the driver set up.
pub struct ActiveQueue {
    pub index: u16,
    pub queue: Queue,
}

/// What a device gets when the driver has finished setting it up.
pub struct Activation {
    pub memory: Arc<GuestMemoryMmap>,
    /// The features both sides agreed on.
    pub features: u64,
    pub queues: Vec<ActiveQueue>,
    pub interrupt: Arc<dyn VirtioInterrupt>,
}

#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("the driver set up {given} queues; this device needs {needed}")]
    Queues { given: usize, needed: usize },
    #[error("the device's backend failed")]
    Backend(#[source] std::io::Error),
}

/// A descriptor of a device's backend (a socket, a tap, a timer) that the
/// VMM thread waits on, and for what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendEvent {
    /// The device's own number for it, handed back to `backend_ready`.
    pub source: u32,
    pub fd: RawFd,
    pub readable: bool,
    pub writable: bool,
}

/// A virtio device, whichever transport carries it.
pub trait VirtioDevice: Send {
    /// Its virtio device type ([`device_type`]).
    fn device_type(&self) -> u32;
    /// The largest size of each of its queues; their number is the length.
    fn queue_max_sizes(&self) -> &[u16];
    /// The feature bits it offers (the transport adds VIRTIO_F_VERSION_1).
    fn features(&self) -> u64;
    /// Reads its configuration space; bytes past its end read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes its configuration space (most devices ignore writes).
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Starts serving its queues.
    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError>;
    /// The driver made buffers available on queue `index`.
    fn queue_notified(&mut self, index: u16);
    /// The driver reset the device: drop the queues, keep the backend.
    fn reset(&mut self);
    /// What the backend needs waited on now; asked again after every
    /// event the device handled, since a backend's descriptors and
    /// interests change (a restarted helper, a full socket).
    fn backend_events(&self) -> Vec<BackendEvent> {
        Vec::new()
    }
    /// The backend descriptor registered as `source` is ready.
    fn backend_ready(&mut self, _source: u32) {}
}

/// What a device with one request queue holds once activated: the queue,
/// guest memory and its interrupt.
pub struct SingleQueue {
    pub queue: Queue,
    pub memory: Arc<GuestMemoryMmap>,
    interrupt: Arc<dyn VirtioInterrupt>,
}

impl SingleQueue {
    /// Takes queue 0 from the activation.
    pub fn take(activation: Activation) -> Result<Self, ActivateError> {
        let given = activation.queues.len();
        let Some(queue) = activation.queues.into_iter().find(|q| q.index == 0) else {
            return Err(ActivateError::Queues { given, needed: 1 });
        };
        Ok(SingleQueue {
            queue: queue.queue,
            memory: activation.memory,
            interrupt: activation.interrupt,
        })
    }

    /// After serving requests: interrupts the driver unless it asked not
    /// to be (`served`: whether any request was answered).
    pub fn interrupt_if_needed(&mut self, served: bool, device: &str) {
        let wanted = self.queue.needs_notification(&*self.memory).unwrap_or(true);
        if served && wanted {
            if let Err(error) = self.interrupt.trigger(InterruptCause::Queue(0)) {
                log::warn!("{device}: cannot interrupt the guest: {error}");
            }
        }
    }
}
