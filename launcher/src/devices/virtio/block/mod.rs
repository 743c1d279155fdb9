//! virtio-blk (virtio 1.2, section 5.2) on a raw file or block device:
//! reads, writes, flush (fdatasync: what a flushing guest was told is
//! written survives a crash of vmpod), the serial number (GET_ID), and
//! read-only disks advertised with VIRTIO_BLK_F_RO and refused writes.
//! Request parsing and execution are in `request`.
//!
//! Activated on a vCPU thread; requests are served on the VMM thread when
//! the queue's notifier fires. Through the transport's mutex.

pub mod request;

use std::fs::File;

use virtio_queue::QueueT;

use super::{device_type, log_bad_request, ActivateError, Activation, SingleQueue, VirtioDevice};
use request::{Disk, ID_BYTES, SECTOR};

/// Feature bits (virtio 1.2, section 5.2.3).
const F_RO: u64 = 1 << 5;
const F_BLK_SIZE: u64 = 1 << 6;
const F_FLUSH: u64 = 1 << 9;

const QUEUE_SIZES: &[u16] = &[256];

pub struct Block {
    name: String,
    file: File,
    capacity_bytes: u64,
    readonly: bool,
    id: [u8; ID_BYTES],
    active: Option<SingleQueue>,
    bad_requests: u64,
    io_errors: u64,
}

impl Block {
    /// `file` holds the disk's bytes (its size, rounded down to whole
    /// sectors, is the capacity); `serial` is what GET_ID answers (at most
    /// 20 bytes are kept, as in QEMU).
    pub fn new(
        name: &str,
        file: File,
        size_bytes: u64,
        readonly: bool,
        serial: Option<&str>,
    ) -> Self {
        let mut id = [0u8; ID_BYTES];
        let serial = serial.unwrap_or(name).as_bytes();
        let len = serial.len().min(ID_BYTES);
        id[..len].copy_from_slice(&serial[..len]);
        Block {
            name: name.to_owned(),
            file,
            capacity_bytes: size_bytes / SECTOR * SECTOR,
            readonly,
            id,
            active: None,
            bad_requests: 0,
            io_errors: 0,
        }
    }

    /// The configuration space: capacity in sectors, then blk_size at 20.
    fn config(&self) -> [u8; 24] {
        let mut config = [0u8; 24];
        config[..8].copy_from_slice(&(self.capacity_bytes / SECTOR).to_le_bytes());
        config[20..].copy_from_slice(&(SECTOR as u32).to_le_bytes());
        config
    }

    /// Serves every request the driver has made available.
    fn serve(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let memory = active.memory.clone();
        let memory = &*memory;
        let disk = Disk {
            file: &self.file,
            capacity_bytes: self.capacity_bytes,
            readonly: self.readonly,
            id: &self.id,
        };
        let mut served = false;
        while let Some(chain) = active.queue.pop_descriptor_chain(memory) {
            let head = chain.head_index();
            let outcome = request::serve(chain, memory, &disk);
            if let Some(why) = outcome.malformed {
                log_bad_request(
                    &mut self.bad_requests,
                    &format!("virtio-blk {}", self.name),
                    why,
                );
            }
            if let Some(error) = outcome.io_error {
                self.io_errors += 1;
                if self.io_errors <= 4 || self.io_errors.is_power_of_two() {
                    log::error!("disk {}: I/O error, the guest sees it as one: {error} (I/O errors so far: {})", self.name, self.io_errors);
                }
            }
            if let Err(error) = active.queue.add_used(memory, head, outcome.written) {
                log_bad_request(
                    &mut self.bad_requests,
                    &format!("virtio-blk {}", self.name),
                    error,
                );
            }
            served = true;
        }
        active.interrupt_if_needed(served, &format!("disk {}", self.name));
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        device_type::BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        let mut features = F_BLK_SIZE | F_FLUSH;
        if self.readonly {
            features |= F_RO;
        }
        features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let config = self.config();
        for (index, byte) in data.iter_mut().enumerate() {
            *byte = usize::try_from(offset)
                .ok()
                .and_then(|offset| offset.checked_add(index))
                .and_then(|at| config.get(at).copied())
                .unwrap_or(0);
        }
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {} // writeback toggling is not offered

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        self.active = Some(SingleQueue::take(activation)?);
        self.serve();
        Ok(())
    }

    fn queue_notified(&mut self, index: u16) {
        if index == 0 {
            self.serve();
        }
    }

    fn reset(&mut self) {
        self.active = None;
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
