//! Guest RAM: anonymous, lazily backed mappings (MAP_NORESERVE), so an idle
//! guest costs the host only the pages it touched, and a reset gives the
//! pages back instead of zeroing them one by one. Each region starts on a
//! 2 MiB boundary and is advised for transparent huge pages, so that KVM
//! can map the guest with 2 MiB pages: a fault per 2 MiB instead of per
//! 4 KiB, and fewer TLB misses for the guest's whole life (hosts whose THP
//! mode is `madvise`, the common default, give huge pages only to memory
//! advised so). The first 2 MiB of guest memory are left to small pages:
//! what lives there (boot structures, page tables, ACPI tables, a tiny
//! guest's whole world) is a few scattered KiB, which a huge page would
//! make 2 MiB of resident memory.
//!
//! Called by the VMM thread only.

use std::sync::Arc;

use vm_memory::{
    GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap,
    MmapRegion,
};

use super::layout;

/// The size of an x86 huge page, which guest RAM is aligned to.
const HUGE_PAGE: usize = 2 << 20;
const RAM_PROTECTION: i32 = libc::PROT_READ | libc::PROT_WRITE;
const RAM_FLAGS: i32 = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("cannot map {size} bytes of guest memory")]
    Map {
        size: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot describe guest memory at {start:#x} ({size} bytes)")]
    Region { start: u64, size: u64 },
    #[error("cannot release guest memory for a reset")]
    Release(#[source] std::io::Error),
}

/// Guest RAM and the host mappings behind it. The memory is shared with
/// devices through [`GuestRam::shared`]; the mappings go away with the
/// last user.
pub struct GuestRam {
    memory: Option<Arc<GuestMemoryMmap>>,
    mappings: Vec<Mapping>,
}

impl GuestRam {
    /// The guest memory, to be shared with devices and vCPUs.
    pub fn shared(&self) -> Arc<GuestMemoryMmap> {
        Arc::clone(self.memory.as_ref().expect("present until dropped"))
    }
}

impl std::ops::Deref for GuestRam {
    type Target = GuestMemoryMmap;

    fn deref(&self) -> &GuestMemoryMmap {
        self.memory.as_ref().expect("present until dropped")
    }
}

impl Drop for GuestRam {
    fn drop(&mut self) {
        if let Some(memory) = self.memory.take() {
            match Arc::try_unwrap(memory) {
                Ok(memory) => drop(memory),
                // Someone still holds the memory: it stays mapped (for the
                // life of the process) rather than vanish under them.
                Err(_) => {
                    log::debug!("guest memory still in use; left mapped");
                    return;
                }
            }
        }
        self.mappings.drain(..).for_each(Mapping::unmap);
    }
}

/// One host mapping of guest RAM.
struct Mapping {
    address: usize,
    len: usize,
}

impl Mapping {
    /// Maps `len` bytes (a multiple of 4 KiB) starting on a 2 MiB boundary:
    /// maps 2 MiB more than asked, then gives back what lies before the
    /// first boundary and after the end. Advises huge pages from `advise_from`
    /// bytes in.
    fn huge_page_aligned(len: usize, advise_from: usize) -> std::io::Result<Mapping> {
        let padded = len + HUGE_PAGE;
        // SAFETY: a new private anonymous mapping; no existing memory is touched.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                padded,
                RAM_PROTECTION,
                RAM_FLAGS,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let start = raw as usize;
        let address = start.next_multiple_of(HUGE_PAGE);
        let (head, tail) = (address - start, start + padded - (address + len));
        // SAFETY: both ranges lie inside the mapping just made, outside
        // [address, address + len), and nothing refers to them.
        unsafe {
            if head > 0 {
                libc::munmap(raw, head);
            }
            if tail > 0 {
                libc::munmap((address + len) as *mut libc::c_void, tail);
            }
        }
        // A host without transparent huge pages refuses the advice; the
        // memory works the same with small pages.
        let advised = (address + advise_from.min(len)) as *mut libc::c_void;
        let advised_len = len.saturating_sub(advise_from);
        // SAFETY: the advised range lies inside the mapping kept above.
        let refused = unsafe { libc::madvise(advised, advised_len, libc::MADV_HUGEPAGE) } != 0;
        if advised_len > 0 && refused {
            log::debug!(
                "no transparent huge pages for guest memory: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(Mapping { address, len })
    }

    fn unmap(self) {
        // SAFETY: the mapping was made by `huge_page_aligned` and nothing
        // refers to it any more (the guest memory built on it is gone).
        unsafe { libc::munmap(self.address as *mut libc::c_void, self.len) };
    }
}

/// Maps guest RAM for `memory_bytes` (a multiple of 4 KiB).
pub fn create(memory_bytes: u64) -> Result<GuestRam, MemoryError> {
    // Holds the mappings from the start, so that an error unmaps them.
    let mut ram = GuestRam {
        memory: None,
        mappings: Vec::new(),
    };
    let mut regions = Vec::new();
    for (start, len) in layout::ram_regions(memory_bytes) {
        let small_pages = if start == 0 { HUGE_PAGE } else { 0 };
        let mapping = Mapping::huge_page_aligned(len as usize, small_pages).map_err(|source| {
            MemoryError::Map {
                size: memory_bytes,
                source,
            }
        })?;
        let (address, mapped) = (mapping.address, mapping.len);
        ram.mappings.push(mapping);
        let host = address as *mut u8;
        // [address, address + mapped) is a live private anonymous mapping
        // with these protections and flags; `GuestRam` unmaps it only after
        // the guest memory built on it is dropped.
        // SAFETY: the mapping above outlives the region built on it.
        let region = unsafe { MmapRegion::build_raw(host, mapped, RAM_PROTECTION, RAM_FLAGS) };
        let region = region
            .ok()
            .and_then(|region| GuestRegionMmap::new(region, GuestAddress(start)))
            .ok_or(MemoryError::Region { start, size: len })?;
        regions.push(region);
    }
    let memory = GuestMemoryMmap::from_regions(regions).map_err(|_| MemoryError::Region {
        start: 0,
        size: memory_bytes,
    })?;
    ram.memory = Some(Arc::new(memory));
    Ok(ram)
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

    #[test]
    fn regions_start_on_huge_page_boundaries_and_are_advised_for_huge_pages_but_the_first_2_mib() {
        // Above the 32-bit hole too: two regions, each aligned.
        let memory = create((layout::MMIO_HOLE_START as usize + (4 << 20)) as u64).expect("map");
        let starts = host_starts(&memory);
        assert_eq!(starts.len(), 2);
        for host in &starts {
            assert_eq!(host % HUGE_PAGE, 0, "region at {host:#x}");
        }
        // The kernel shows the advice as the "hg" flag of the mapping, where
        // it supports transparent huge pages.
        let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .is_ok_and(|mode| !mode.contains("[never]"));
        let smaps = std::fs::read_to_string("/proc/self/smaps").expect("smaps");
        let low = mapping_flags(&smaps, starts[0]).expect("low 2 MiB listed");
        assert!(!low.contains(&"hg"), "flags of the low 2 MiB {low:?}");
        for start in [starts[0] + HUGE_PAGE, starts[1]] {
            let flags = mapping_flags(&smaps, start).expect("mapping listed");
            assert!(!thp || flags.contains(&"hg"), "flags {flags:?}");
        }
    }

    #[test]
    fn the_mappings_go_when_the_memory_does_but_not_before() {
        let memory = create(8 << 20).expect("map");
        let host = host_starts(&memory)[0];
        let user = memory.shared();
        drop(memory);
        // A device still holding the memory can use it.
        user.write_obj(7u64, GuestAddress(0x2000))
            .expect("still mapped");
        drop(user);
        let second = create(8 << 20).expect("map");
        let second_host = host_starts(&second)[0];
        drop(second);
        let smaps = std::fs::read_to_string("/proc/self/smaps").expect("smaps");
        // The first mapping outlived its GuestRam (a user held it), the
        // second is gone with it.
        assert!(mapping_flags(&smaps, host).is_some());
        assert!(mapping_flags(&smaps, second_host).is_none());
    }

    /// Where each region of guest memory starts in vmpod's address space.
    fn host_starts(memory: &GuestMemoryMmap) -> Vec<usize> {
        memory
            .iter()
            .map(|region| {
                region
                    .get_host_address(vm_memory::MemoryRegionAddress(0))
                    .expect("host address") as usize
            })
            .collect()
    }

    /// The VmFlags of the mapping that starts at `start`, from smaps.
    fn mapping_flags(smaps: &str, start: usize) -> Option<Vec<&str>> {
        let mut in_mapping = false;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ') {
                if let Some((from, _)) = range.split_once('-') {
                    if let Ok(from) = usize::from_str_radix(from, 16) {
                        in_mapping = from == start;
                        continue;
                    }
                }
            }
            if let (true, Some(flags)) = (in_mapping, line.strip_prefix("VmFlags:")) {
                return Some(flags.split_whitespace().collect());
            }
        }
        None
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
