//! What device tests share: an interrupt that counts, and guest memory.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::{InterruptCause, VirtioInterrupt};

/// An interrupt that counts how often the device raised it.
#[derive(Default)]
pub struct Counted(AtomicU32);

impl Counted {
    pub fn count(&self) -> u32 {
        self.0.load(Ordering::SeqCst)
    }
}

impl VirtioInterrupt for Counted {
    fn trigger(&self, _: InterruptCause) -> std::io::Result<()> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// 1 MiB of guest memory at address 0.
pub fn memory() -> Arc<GuestMemoryMmap> {
    Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).expect("guest memory"))
}

/// VRING_DESC_F_WRITE (virtio 1.2, section 2.7.5).
pub const WRITE: u16 = 2;
