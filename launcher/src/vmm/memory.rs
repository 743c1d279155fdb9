//! Guest RAM: anonymous, lazily backed mappings (MAP_NORESERVE), so an idle
//! guest costs the host only the pages it touched, and a reset gives the
//! pages back instead of zeroing them one by one.
//!
//! Called by the VMM thread only.

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::layout;

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("cannot map {size} bytes of guest memory")]
    Map {
        size: u64,
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },
    #[error("cannot release guest memory for a reset")]
    Release(#[source] std::io::Error),
}

/// Maps guest RAM for `memory_bytes` (a multiple of 4 KiB).
pub fn create(memory_bytes: u64) -> Result<GuestMemoryMmap, MemoryError> {
    let ranges: Vec<(GuestAddress, usize)> = layout::ram_regions(memory_bytes)
        .into_iter()
        .map(|(start, len)| (GuestAddress(start), len as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges).map_err(|source| MemoryError::Map {
        size: memory_bytes,
        source,
    })
}

/// Returns every page to the kernel: the guest sees zeroes, the host
/// frees the memory. Used on guest reset.
pub fn clear(memory: &GuestMemoryMmap) -> Result<(), MemoryError> {
    for region in memory.iter() {
        let host = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(|_| {
                MemoryError::Release(std::io::Error::other("region has no host mapping"))
            })?;
        // MADV_DONTNEED only replaces the contents with zero pages, which is
        // the intent; no vCPU runs while memory is cleared.
        let result =
            // SAFETY: `host` starts a private anonymous mapping of `region.len()` bytes owned by `memory`.
            unsafe { libc::madvise(host.cast(), region.len() as usize, libc::MADV_DONTNEED) };
        if result != 0 {
            return Err(MemoryError::Release(std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn clear_zeroes_what_the_guest_wrote() {
        let memory = create(4 << 20).expect("map");
        memory
            .write_obj(0xdead_beef_u32, GuestAddress(0x1000))
            .expect("write");
        clear(&memory).expect("clear");
        assert_eq!(
            memory.read_obj::<u32>(GuestAddress(0x1000)).expect("read"),
            0
        );
    }

    #[test]
    fn mapping_is_lazy() {
        // 2 GiB of guest RAM must not cost 2 GiB of host memory up front.
        let before = resident_kib();
        let memory = create(2 << 30).expect("map 2 GiB");
        let after = resident_kib();
        assert!(
            after - before < 16 * 1024,
            "RSS grew by {} KiB",
            after - before
        );
        drop(memory);
    }

    fn resident_kib() -> i64 {
        let status = std::fs::read_to_string("/proc/self/status").expect("status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .expect("VmRSS")
    }
}
