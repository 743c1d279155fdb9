//! Loading what the guest boots: the kernel (ELF with a PVH note, or a
//! bzImage through the 64-bit boot protocol), the initrd, the command line,
//! the memory map and the ACPI tables, all written into guest memory.
//!
//! VMM thread only; runs again from scratch on every reset.

use std::fs::File;
use std::path::{Path, PathBuf};

use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::{bzimage::BzImage, KernelLoader, KernelLoaderResult};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout;

const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;
const PVH_MAGIC: u32 = 0x336e_c578;
/// Boot protocol: loader type "undefined" (0xff), heap usable, 64-bit entry.
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
const CAN_USE_HEAP: u8 = 0x80;
const XLF_KERNEL_64: u16 = 1 << 0;
const KERNEL_64_ENTRY_OFFSET: u64 = 0x200;
const MIN_BOOT_PROTOCOL: u16 = 0x020c;
const PAGE: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("cannot open the kernel {}", path.display())]
    OpenKernel {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a kernel vmpod can boot: expected a bzImage or an ELF vmlinux with a PVH entry note", path.display())]
    NotAKernel { path: PathBuf },
    #[error("{} is an ELF file without a PVH entry note: build the kernel with CONFIG_PVH=y, or boot its bzImage", path.display())]
    NoPvhNote { path: PathBuf },
    #[error("{} does not fit in guest memory ({memory} bytes): give the VM more memory", path.display())]
    KernelTooBig {
        path: PathBuf,
        memory: u64,
        #[source]
        source: linux_loader::loader::Error,
    },
    #[error("{} uses boot protocol {version:#06x} without a 64-bit entry point; vmpod needs protocol 2.12 or later with XLF_KERNEL_64", path.display())]
    OldBzImage { path: PathBuf, version: u16 },
    #[error("cannot read the initrd {}", path.display())]
    ReadInitrd {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the initrd {} ({size} bytes) does not fit in guest memory above the kernel: give the VM more memory", path.display())]
    InitrdTooBig { path: PathBuf, size: u64 },
    #[error("the kernel command line is {len} bytes; this kernel accepts at most {max}")]
    CmdlineTooLong { len: usize, max: usize },
    #[error("cannot write boot data into guest memory")]
    Memory(#[source] vm_memory::GuestMemoryError),
    #[error("cannot write the PVH start info")]
    Pvh(#[source] linux_loader::configurator::Error),
}

/// How the first vCPU enters the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// 32-bit protected mode, paging off, %ebx = start_info.
    Pvh { entry: u64, start_info: u64 },
    /// 64-bit long mode on identity-mapped page tables, %rsi = boot_params.
    Linux64 { entry: u64, boot_params: u64 },
}

/// A kernel or initrd: a file in the pod, or one staged in memory from
/// the boot disk (named for errors by where it came from).
#[derive(Clone, Copy)]
pub enum BootFile<'a> {
    Path(&'a Path),
    Staged { name: &'a Path, file: &'a File },
}

impl BootFile<'_> {
    pub fn name(&self) -> &Path {
        match self {
            BootFile::Path(path) => path,
            BootFile::Staged { name, .. } => name,
        }
    }

    fn open(&self) -> std::io::Result<File> {
        match self {
            BootFile::Path(path) => File::open(path),
            BootFile::Staged { file, .. } => {
                let mut file = file.try_clone()?;
                std::io::Seek::rewind(&mut file)?;
                Ok(file)
            }
        }
    }
}

/// What to boot, with the command line vmpod will pass.
pub struct BootSpec<'a> {
    pub kernel: BootFile<'a>,
    pub initrd: Option<BootFile<'a>>,
    pub cmdline: &'a str,
    pub memory_bytes: u64,
    pub rsdp_address: u64,
    /// The framebuffer a Linux kernel is told of, if the VM has a display.
    pub screen: Option<linux_loader::loader::bootparam::screen_info>,
}

/// The e820 map that matches [`layout::ram_regions`].
pub fn e820_map(memory_bytes: u64) -> Vec<(u64, u64, u32)> {
    let mut map = Vec::new();
    for (start, len) in layout::ram_regions(memory_bytes) {
        if start == 0 {
            map.push((0, layout::EBDA_START.min(len), E820_RAM));
            if len > layout::EBDA_START {
                map.push((
                    layout::EBDA_START,
                    layout::HIGH_MEMORY_START - layout::EBDA_START,
                    E820_RESERVED,
                ));
            }
            if len > layout::HIGH_MEMORY_START {
                map.push((
                    layout::HIGH_MEMORY_START,
                    len - layout::HIGH_MEMORY_START,
                    E820_RAM,
                ));
            }
        } else {
            map.push((start, len, E820_RAM));
        }
    }
    map
}

/// Loads everything into `memory` and says where the guest starts.
pub fn load(memory: &GuestMemoryMmap, spec: &BootSpec) -> Result<Entry, BootError> {
    let path = spec.kernel.name().to_owned();
    let mut kernel = spec.kernel.open().map_err(|source| BootError::OpenKernel {
        path: path.clone(),
        source,
    })?;
    let high = Some(GuestAddress(layout::HIGH_MEMORY_START));
    let too_big = |source| BootError::KernelTooBig {
        path: path.clone(),
        memory: spec.memory_bytes,
        source,
    };
    match Elf::load(memory, None, &mut kernel, high) {
        Ok(loaded) => {
            let PvhBootCapability::PvhEntryPresent(entry) = loaded.pvh_boot_cap else {
                return Err(BootError::NoPvhNote { path });
            };
            let initrd = load_initrd(memory, spec, loaded.kernel_end, u64::MAX)?;
            write_cmdline(memory, spec.cmdline, layout::CMDLINE_MAX)?;
            write_pvh_start_info(memory, spec, initrd)?;
            Ok(Entry::Pvh {
                entry: entry.0,
                start_info: layout::PVH_START_INFO,
            })
        }
        Err(linux_loader::loader::Error::Elf(
            linux_loader::loader::elf::Error::InvalidElfMagicNumber,
        )) => {
            let loaded =
                BzImage::load(memory, None, &mut kernel, high).map_err(|error| match error {
                    linux_loader::loader::Error::Bzimage(_) => {
                        BootError::NotAKernel { path: path.clone() }
                    }
                    other => too_big(other),
                })?;
            load_bzimage_params(memory, spec, &loaded, &path)
        }
        Err(
            error @ linux_loader::loader::Error::Elf(
                linux_loader::loader::elf::Error::ReadKernelImage,
            ),
        ) => Err(too_big(error)),
        Err(_) => Err(BootError::NotAKernel { path }),
    }
}

fn load_bzimage_params(
    memory: &GuestMemoryMmap,
    spec: &BootSpec,
    loaded: &KernelLoaderResult,
    path: &Path,
) -> Result<Entry, BootError> {
    let Some(mut header) = loaded.setup_header else {
        return Err(BootError::NotAKernel {
            path: path.to_owned(),
        });
    };
    if header.version < MIN_BOOT_PROTOCOL || header.xloadflags & XLF_KERNEL_64 == 0 {
        return Err(BootError::OldBzImage {
            path: path.to_owned(),
            version: header.version,
        });
    }
    let cmdline_max = (header.cmdline_size as usize).clamp(1, layout::CMDLINE_MAX);
    write_cmdline(memory, spec.cmdline, cmdline_max)?;
    let initrd = load_initrd(
        memory,
        spec,
        loaded.kernel_end,
        u64::from(header.initrd_addr_max),
    )?;
    header.type_of_loader = LOADER_TYPE_UNDEFINED;
    header.loadflags |= CAN_USE_HEAP;
    header.heap_end_ptr = 0xfe00;
    header.vid_mode = 0xffff;
    header.cmd_line_ptr = layout::CMDLINE as u32;
    header.cmdline_size = spec.cmdline.len() as u32;
    if let Some((address, size)) = initrd {
        header.ramdisk_image = address as u32;
        header.ramdisk_size = size as u32;
    }
    let mut params = boot_params {
        hdr: header,
        acpi_rsdp_addr: spec.rsdp_address,
        screen_info: spec.screen.unwrap_or_default(),
        ..Default::default()
    };
    for (slot, (start, len, kind)) in params
        .e820_table
        .iter_mut()
        .zip(e820_map(spec.memory_bytes))
    {
        *slot = boot_e820_entry {
            addr: start,
            size: len,
            r#type: kind,
        };
        params.e820_entries += 1;
    }
    memory
        .write_obj(params, GuestAddress(layout::ZERO_PAGE))
        .map_err(BootError::Memory)?;
    Ok(Entry::Linux64 {
        entry: loaded.kernel_load.0 + KERNEL_64_ENTRY_OFFSET,
        boot_params: layout::ZERO_PAGE,
    })
}

fn write_cmdline(memory: &GuestMemoryMmap, cmdline: &str, max: usize) -> Result<(), BootError> {
    if cmdline.len() + 1 > max {
        return Err(BootError::CmdlineTooLong {
            len: cmdline.len(),
            max: max - 1,
        });
    }
    let mut bytes = cmdline.as_bytes().to_vec();
    bytes.push(0);
    memory
        .write_slice(&bytes, GuestAddress(layout::CMDLINE))
        .map_err(BootError::Memory)
}

/// Puts the initrd at the top of low RAM (below `address_max`), page aligned.
fn load_initrd(
    memory: &GuestMemoryMmap,
    spec: &BootSpec,
    kernel_end: u64,
    address_max: u64,
) -> Result<Option<(u64, u64)>, BootError> {
    let Some(initrd) = spec.initrd else {
        return Ok(None);
    };
    let path = initrd.name();
    let read_error = |source| BootError::ReadInitrd {
        path: path.to_owned(),
        source,
    };
    let mut file = initrd.open().map_err(read_error)?;
    let size = file.metadata().map_err(read_error)?.len();
    let low_end = spec
        .memory_bytes
        .min(layout::MMIO_HOLE_START)
        .min(address_max.saturating_add(1));
    let start = low_end.checked_sub(size).map(|start| start / PAGE * PAGE);
    let Some(start) = start.filter(|start| *start >= kernel_end.max(layout::HIGH_MEMORY_START))
    else {
        return Err(BootError::InitrdTooBig {
            path: path.to_owned(),
            size,
        });
    };
    memory
        .read_exact_volatile_from(GuestAddress(start), &mut file, size as usize)
        .map_err(BootError::Memory)?;
    Ok(Some((start, size)))
}

fn write_pvh_start_info(
    memory: &GuestMemoryMmap,
    spec: &BootSpec,
    initrd: Option<(u64, u64)>,
) -> Result<(), BootError> {
    let map: Vec<hvm_memmap_table_entry> = e820_map(spec.memory_bytes)
        .into_iter()
        .map(|(addr, size, type_)| hvm_memmap_table_entry {
            addr,
            size,
            type_,
            reserved: 0,
        })
        .collect();
    let mut start_info = hvm_start_info {
        magic: PVH_MAGIC,
        version: 1,
        cmdline_paddr: layout::CMDLINE,
        rsdp_paddr: spec.rsdp_address,
        memmap_paddr: layout::PVH_MEMMAP,
        memmap_entries: map.len() as u32,
        ..Default::default()
    };
    let mut modules = Vec::new();
    if let Some((paddr, size)) = initrd {
        start_info.nr_modules = 1;
        start_info.modlist_paddr = layout::PVH_MODLIST;
        modules.push(hvm_modlist_entry {
            paddr,
            size,
            ..Default::default()
        });
    }
    let mut params = BootParams::new(&start_info, GuestAddress(layout::PVH_START_INFO));
    params.set_sections(&map, GuestAddress(layout::PVH_MEMMAP));
    if !modules.is_empty() {
        params.set_modules(&modules, GuestAddress(layout::PVH_MODLIST));
    }
    PvhBootConfigurator::write_bootparams(&params, memory).map_err(BootError::Pvh)
}

/// The real-mode code at the reset vector: `mov $port, %dx; mov $value,
/// %al; out %al, %dx; 1: hlt; jmp 1b` with the ACPI reset register.
pub fn reset_vector_stub() -> [u8; 9] {
    let [port_low, port_high] = layout::ACPI_RESET_PORT.to_le_bytes();
    [
        0xba,
        port_low,
        port_high,
        0xb0,
        layout::ACPI_RESET_VALUE,
        0xee,
        0xf4,
        0xeb,
        0xfd,
    ]
}

/// Writes the reset-vector stub, so a jump to f000:fff0 resets the VM.
pub fn write_reset_vector(memory: &GuestMemoryMmap) -> Result<(), BootError> {
    memory
        .write_slice(&reset_vector_stub(), GuestAddress(layout::RESET_VECTOR))
        .map_err(BootError::Memory)
}

/// Copies the ACPI tables into guest memory.
pub fn write_acpi(
    memory: &GuestMemoryMmap,
    tables: &super::acpi::AcpiTables,
) -> Result<(), BootError> {
    for (address, bytes) in &tables.blobs {
        memory
            .write_slice(bytes, GuestAddress(*address))
            .map_err(BootError::Memory)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e820_reserves_the_bios_area_and_skips_the_hole() {
        let map = e820_map(4 << 30);
        assert_eq!(
            map,
            vec![
                (0, 0x9fc00, E820_RAM),
                (0x9fc00, 0x60400, E820_RESERVED),
                (0x100000, 0xc000_0000 - 0x100000, E820_RAM),
                (0x1_0000_0000, (4 << 30) - 0xc000_0000, E820_RAM),
            ]
        );
    }

    #[test]
    fn reset_vector_stub_writes_the_acpi_reset_register() {
        let stub = reset_vector_stub();
        // mov $0x602, %dx; mov $1, %al; out %al, %dx; hlt; jmp back to hlt
        assert_eq!(stub, [0xba, 0x02, 0x06, 0xb0, 0x01, 0xee, 0xf4, 0xeb, 0xfd]);
        assert!(layout::RESET_VECTOR + stub.len() as u64 <= layout::HIGH_MEMORY_START);
    }

    #[test]
    fn missing_and_bogus_kernels_are_named() {
        let memory = super::super::memory::create(16 << 20).expect("memory");
        let spec = |kernel: &'static Path| BootSpec {
            kernel: BootFile::Path(kernel),
            initrd: None,
            cmdline: "",
            memory_bytes: 16 << 20,
            rsdp_address: layout::ACPI_START,
            screen: None,
        };
        let missing = load(&memory, &spec(Path::new("/nonexistent/vmlinuz"))).expect_err("missing");
        assert!(matches!(missing, BootError::OpenKernel { .. }));
        let not_a_kernel = load(&memory, &spec(Path::new("/etc/hostname"))).expect_err("text file");
        assert!(
            not_a_kernel
                .to_string()
                .contains("is not a kernel vmpod can boot"),
            "{not_a_kernel}"
        );
    }
}
