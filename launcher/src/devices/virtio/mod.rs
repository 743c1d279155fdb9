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
pub mod mmio;
pub mod rng;

use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

/// The guest is hostile: a request it malformed fails, and is logged at
/// most this often (the first few, then every power of two).
pub fn log_bad_request(count: &mut u64, device: &str, what: impl std::fmt::Display) {
    *count += 1;
    if *count <= 4 || count.is_power_of_two() {
        log::warn!("{device}: the guest sent a malformed request ({what}); failed it (bad requests so far: {count})");
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
}
