//! virtio-blk (virtio 1.2, section 5.2) on any `images::DiskImage` (raw
//! file, block device, qcow2, overlay): reads, writes, flush (what a
//! flushing guest was told is written survives a crash of vmpod), discard
//! and write-zeroes, the serial number (GET_ID), and read-only disks
//! advertised with VIRTIO_BLK_F_RO and refused writes. Request parsing and
//! execution are in `request`.
//!
//! Activated on a vCPU thread; requests are served on the VMM thread when
//! the queue's notifier fires. Through the transport's mutex.

pub mod request;

use virtio_queue::QueueT;

use crate::api::{BlockIoError, Event, EventSender, Timed};
use crate::images::DiskImage;

use super::{device_type, log_bad_request, ActivateError, Activation, SingleQueue, VirtioDevice};
use request::{Disk, ID_BYTES, MAX_SEGMENTS, MAX_SEGMENT_SECTORS, SECTOR};

/// Feature bits (virtio 1.2, section 5.2.3).
const F_RO: u64 = 1 << 5;
const F_BLK_SIZE: u64 = 1 << 6;
const F_FLUSH: u64 = 1 << 9;
const F_DISCARD: u64 = 1 << 13;
const F_WRITE_ZEROES: u64 = 1 << 14;

/// The alignment a driver should keep in discards: 4 KiB.
const DISCARD_ALIGNMENT_SECTORS: u32 = 8;

const QUEUE_SIZES: &[u16] = &[256];

pub struct Block {
    name: String,
    image: Box<dyn DiskImage>,
    capacity_bytes: u64,
    readonly: bool,
    id: [u8; ID_BYTES],
    active: Option<SingleQueue>,
    bad_requests: u64,
    io_errors: u64,
    /// Where backend failures are reported (QMP's BLOCK_IO_ERROR).
    events: Option<EventSender>,
}

impl Block {
    /// `image` holds the disk's bytes (its size, rounded down to whole
    /// sectors, is the capacity); `serial` is what GET_ID answers (at most
    /// 20 bytes are kept, as in QEMU).
    pub fn new(
        name: &str,
        image: Box<dyn DiskImage>,
        readonly: bool,
        serial: Option<&str>,
    ) -> Self {
        let mut id = [0u8; ID_BYTES];
        let serial = serial.unwrap_or(name).as_bytes();
        let len = serial.len().min(ID_BYTES);
        id[..len].copy_from_slice(&serial[..len]);
        Block {
            name: name.to_owned(),
            capacity_bytes: image.size() / SECTOR * SECTOR,
            image,
            readonly,
            id,
            active: None,
            bad_requests: 0,
            io_errors: 0,
            events: None,
        }
    }

    /// Reports backend failures to `events`, as often as they are logged.
    pub fn with_events(mut self, events: EventSender) -> Self {
        self.events = Some(events);
        self
    }

    /// The configuration space (virtio 1.2, 5.2.4): capacity in sectors,
    /// blk_size, and the discard and write-zeroes limits.
    fn config(&self) -> [u8; 60] {
        let mut config = [0u8; 60];
        let mut put =
            |at: usize, value: u32| config[at..at + 4].copy_from_slice(&value.to_le_bytes());
        put(20, SECTOR as u32);
        put(36, MAX_SEGMENT_SECTORS); // max_discard_sectors
        put(40, MAX_SEGMENTS as u32); // max_discard_seg
        put(44, DISCARD_ALIGNMENT_SECTORS); // discard_sector_alignment
        put(48, MAX_SEGMENT_SECTORS); // max_write_zeroes_sectors
        put(52, MAX_SEGMENTS as u32); // max_write_zeroes_seg
        config[56] = 1; // write_zeroes_may_unmap
        config[..8].copy_from_slice(&(self.capacity_bytes / SECTOR).to_le_bytes());
        config
    }

    /// Serves every request the driver has made available.
    fn serve(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let memory = active.memory.clone();
        let memory = &*memory;
        let mut disk = Disk {
            image: &mut *self.image,
            capacity_bytes: self.capacity_bytes,
            readonly: self.readonly,
            id: &self.id,
        };
        let mut served = false;
        while let Some(chain) = active.queue.pop_descriptor_chain(memory) {
            let head = chain.head_index();
            let outcome = request::serve(chain, memory, &mut disk);
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
                    if let Some(events) = &self.events {
                        events.send(Timed::now(Event::BlockIoError(BlockIoError {
                            device: self.name.clone(),
                            operation: outcome.operation,
                            nospace: error.raw_os_error() == Some(libc::ENOSPC),
                            reason: error.to_string(),
                        })));
                    }
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
        } else {
            features |= F_DISCARD | F_WRITE_ZEROES;
        }
        features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.config(), offset, data);
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
