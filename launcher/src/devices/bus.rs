//! A bus: address ranges mapped to devices, nothing more. One bus for port
//! I/O, one for MMIO. Read by every vCPU thread; devices are locked only
//! for the duration of one access.

use std::sync::{Arc, Mutex, MutexGuard};

/// A device reachable through guest port or MMIO accesses.
pub trait BusDevice: Send {
    /// Guest reads `data.len()` bytes at `offset` from the device's base.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Guest writes `data` at `offset` from the device's base.
    fn write(&mut self, offset: u64, data: &[u8]);
}

pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

#[derive(Debug, thiserror::Error)]
#[error("device range {base:#x}+{len:#x} overlaps another device")]
pub struct OverlapError {
    pub base: u64,
    pub len: u64,
}

#[derive(Clone)]
struct Range {
    base: u64,
    len: u64,
    device: SharedDevice,
}

#[derive(Clone, Default)]
pub struct Bus {
    /// Sorted by base, never overlapping.
    ranges: Vec<Range>,
}

impl Bus {
    pub fn insert(
        &mut self,
        base: u64,
        len: u64,
        device: SharedDevice,
    ) -> Result<(), OverlapError> {
        let end = base.checked_add(len).ok_or(OverlapError { base, len })?;
        if len == 0
            || self
                .ranges
                .iter()
                .any(|r| base < r.base + r.len && r.base < end)
        {
            return Err(OverlapError { base, len });
        }
        let at = self.ranges.partition_point(|r| r.base < base);
        self.ranges.insert(at, Range { base, len, device });
        Ok(())
    }

    fn find(&self, address: u64, size: usize) -> Option<(&Range, u64)> {
        let index = self
            .ranges
            .partition_point(|r| r.base <= address)
            .checked_sub(1)?;
        let range = &self.ranges[index];
        let offset = address - range.base;
        (offset + size as u64 <= range.len).then_some((range, offset))
    }

    /// The device answering `size` bytes at `address`, locked, with the
    /// offset into it. A device that panicked while locked is still
    /// answered: its state is plain registers, and the guest must not bring
    /// the VMM down.
    fn locked_device(
        &self,
        address: u64,
        size: usize,
    ) -> Option<(MutexGuard<'_, dyn BusDevice + 'static>, u64)> {
        let (range, offset) = self.find(address, size)?;
        let device = range
            .device
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Some((device, offset))
    }

    /// Returns false when no device answers at `address`.
    pub fn read(&self, address: u64, data: &mut [u8]) -> bool {
        let Some((mut device, offset)) = self.locked_device(address, data.len()) else {
            return false;
        };
        device.read(offset, data);
        true
    }

    /// Returns false when no device answers at `address`.
    pub fn write(&self, address: u64, data: &[u8]) -> bool {
        let Some((mut device, offset)) = self.locked_device(address, data.len()) else {
            return false;
        };
        device.write(offset, data);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        writes: Vec<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.writes.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn accesses_reach_the_device_with_offsets() {
        let device = Arc::new(Mutex::new(Recorder::default()));
        let mut bus = Bus::default();
        bus.insert(0x3f8, 8, device.clone()).expect("insert");
        let mut data = [0u8; 1];
        assert!(bus.read(0x3fd, &mut data));
        assert_eq!(data, [5]);
        assert!(bus.write(0x3f8, b"x"));
        assert_eq!(
            device.lock().expect("lock").writes,
            vec![(0, b"x".to_vec())]
        );
    }

    #[test]
    fn unmapped_and_straddling_accesses_are_not_answered() {
        let mut bus = Bus::default();
        bus.insert(0x1000, 0x10, Arc::new(Mutex::new(Recorder::default())))
            .expect("insert");
        let mut data = [0u8; 4];
        assert!(!bus.read(0xfff, &mut data[..1]));
        assert!(!bus.read(0x100e, &mut data));
        assert!(!bus.write(0x1010, &[1]));
        assert!(!bus.read(u64::MAX, &mut data));
    }

    #[test]
    fn overlapping_ranges_are_refused() {
        let mut bus = Bus::default();
        let device = || Arc::new(Mutex::new(Recorder::default()));
        bus.insert(0x100, 0x10, device()).expect("insert");
        assert!(bus.insert(0x108, 0x10, device()).is_err());
        assert!(bus.insert(0xf8, 0x10, device()).is_err());
        assert!(bus.insert(u64::MAX, 2, device()).is_err());
        assert!(bus.insert(0x110, 0x10, device()).is_ok());
    }
}
