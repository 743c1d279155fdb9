//! The guest-physical memory map: where vmpod puts RAM, boot structures,
//! ACPI tables and device windows. Constants only; every other module
//! takes addresses from here so that the e820 map, the ACPI tables and the
//! devices always agree (and compile-time checks that they do not overlap).

/// GDT written by the VMM (the 64-bit boot path uses it as is).
pub const GDT_ADDR: u64 = 0x500;
/// An empty IDT, loaded until the kernel installs its own.
pub const IDT_ADDR: u64 = 0x520;
/// PVH `hvm_start_info`, then its memory map and module list.
pub const PVH_START_INFO: u64 = 0x6000;
pub const PVH_MEMMAP: u64 = 0x6040;
pub const PVH_MODLIST: u64 = 0x6400;
/// Linux `boot_params` (the "zero page").
pub const ZERO_PAGE: u64 = 0x7000;
/// Initial stack for the 64-bit entry (grows down from here).
pub const BOOT_STACK: u64 = 0x8ff0;
/// Identity-mapped page tables: PML4, PDPT, then 4 page directories (4 GiB).
pub const PML4: u64 = 0x9000;
pub const PDPT: u64 = 0xa000;
pub const PAGE_DIRECTORIES: u64 = 0xb000;
pub const IDENTITY_MAPPED_GIB: u64 = 4;
/// Kernel command line (at most 2 KiB plus its NUL).
pub const CMDLINE: u64 = 0x20000;
pub const CMDLINE_MAX: usize = 2048;
/// End of conventional memory; from here to 1 MiB is reserved (EBDA, BIOS area).
pub const EBDA_START: u64 = 0x9fc00;
/// ACPI tables live in the BIOS area, where a legacy OS also looks for the RSDP.
pub const ACPI_START: u64 = 0xe0000;
pub const ACPI_END: u64 = RESET_VECTOR;
/// The x86 reset vector (f000:fff0). OSes without another way to reset
/// (Linux on hardware-reduced ACPI falls back to it) jump here in real
/// mode; vmpod puts a stub here that writes the ACPI reset register.
pub const RESET_VECTOR: u64 = 0xffff0;
/// Kernels are loaded at 1 MiB and above.
pub const HIGH_MEMORY_START: u64 = 0x100000;

/// The 32-bit MMIO hole: RAM stops here and resumes at 4 GiB.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
pub const RAM_ABOVE_4G: u64 = 0x1_0000_0000;
/// The framebuffer, when the VM has a display: memory of its own at the
/// start of the hole, never RAM in the e820 map (up to 256 MiB).
pub const FRAMEBUFFER_ADDR: u64 = MMIO_HOLE_START;
pub const FRAMEBUFFER_MAX: u64 = 0x1000_0000;
/// Window for virtio-mmio devices (the device manager allocates from it).
pub const DEVICE_WINDOW_START: u64 = 0xd000_0000;
pub const DEVICE_WINDOW_END: u64 = 0xfe00_0000;
/// Interrupt lines the device manager hands out: IOAPIC pins above the
/// legacy ISA devices vmpod has (keyboard 1, COM1 4, GED 5) and the
/// lines old drivers assume (8 RTC, 9 SCI), up to the IOAPIC's last pin.
pub const FIRST_DEVICE_GSI: u32 = 10;
pub const LAST_DEVICE_GSI: u32 = 23;
/// The ACPI Generic Event Device's register (power button) and its IRQ.
pub const GED_ADDR: u64 = 0xfeb0_0000;
pub const GED_IRQ: u32 = 5;
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
pub const LAPIC_ADDR: u64 = 0xfee0_0000;

/// KVM's own areas inside the hole (Intel needs them even when unused).
pub const KVM_TSS_ADDR: u64 = 0xfffb_d000;
pub const KVM_IDENTITY_MAP_ADDR: u64 = 0xfffb_c000;

/// Legacy I/O ports.
pub const COM1_PORT: u16 = 0x3f8;
pub const COM1_IRQ: u32 = 4;
pub const I8042_PORT: u16 = 0x60;
pub const KEYBOARD_IRQ: u32 = 1;
/// vmpod's ACPI platform registers: sleep control, sleep status, reset.
pub const ACPI_PM_PORT: u16 = 0x600;
pub const ACPI_SLEEP_CONTROL_PORT: u16 = ACPI_PM_PORT;
pub const ACPI_SLEEP_STATUS_PORT: u16 = ACPI_PM_PORT + 1;
pub const ACPI_RESET_PORT: u16 = ACPI_PM_PORT + 2;
pub const ACPI_RESET_VALUE: u8 = 0x01;
/// `\_S5_` sleep type: SLP_TYP written to the sleep control register.
pub const S5_SLEEP_TYPE: u8 = 5;

// The device window and the interrupt lines the device manager hands out
// stay clear of RAM, of the fixed devices and of the IOAPIC's 24 pins;
// checked when vmpod is compiled.
const _: () = assert!(FRAMEBUFFER_ADDR + FRAMEBUFFER_MAX <= DEVICE_WINDOW_START);
const _: () = assert!(MMIO_HOLE_START <= DEVICE_WINDOW_START);
const _: () = assert!(DEVICE_WINDOW_START < DEVICE_WINDOW_END);
const _: () = assert!(DEVICE_WINDOW_END <= GED_ADDR);
const _: () = assert!(FIRST_DEVICE_GSI <= LAST_DEVICE_GSI && LAST_DEVICE_GSI < 24);
const _: () = assert!(COM1_IRQ < FIRST_DEVICE_GSI);
const _: () = assert!(KEYBOARD_IRQ < FIRST_DEVICE_GSI && GED_IRQ < FIRST_DEVICE_GSI);

/// Guest RAM regions for a given size: below the hole, then above 4 GiB.
pub fn ram_regions(memory_bytes: u64) -> Vec<(u64, u64)> {
    let below = memory_bytes.min(MMIO_HOLE_START);
    let mut regions = vec![(0, below)];
    if memory_bytes > below {
        regions.push((RAM_ABOVE_4G, memory_bytes - below));
    }
    regions
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guests_have_one_region_below_the_hole() {
        assert_eq!(ram_regions(128 << 20), vec![(0, 128 << 20)]);
    }

    #[test]
    fn large_guests_continue_above_4g() {
        assert_eq!(
            ram_regions(4 << 30),
            vec![
                (0, MMIO_HOLE_START),
                (RAM_ABOVE_4G, (4 << 30) - MMIO_HOLE_START)
            ]
        );
    }

    #[test]
    fn boot_structures_sit_in_conventional_memory_without_overlap() {
        let areas = [
            (GDT_ADDR, 0x20),
            (IDT_ADDR, 8),
            (PVH_START_INFO, 0x40),
            (PVH_MEMMAP, 0x3c0),
            (PVH_MODLIST, 0x100),
            (ZERO_PAGE, 0x1000),
            (PML4, 0x1000),
            (PDPT, 0x1000),
            (PAGE_DIRECTORIES, IDENTITY_MAPPED_GIB * 0x1000),
            (CMDLINE, CMDLINE_MAX as u64),
        ];
        for (index, (start, len)) in areas.iter().enumerate() {
            assert!(start + len <= EBDA_START);
            for (other_start, other_len) in &areas[index + 1..] {
                assert!(start + len <= *other_start || other_start + other_len <= *start);
            }
        }
    }
}
