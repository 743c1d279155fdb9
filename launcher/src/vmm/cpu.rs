//! x86 vCPU state at power-on: CPUID (the host's KVM-supported leaves with
//! vmpod's topology), MSRs, registers and segments for the chosen entry
//! (PVH 32-bit or Linux 64-bit), the GDT and identity page tables, FPU and
//! the local APIC's LINT pins.
//!
//! VMM thread only (before the vCPU threads start).

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, CpuId, Msrs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::boot::Entry;
use super::layout;
use crate::spec::config::CpuTopology;

#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    #[error("KVM refused the CPUID of vCPU {vcpu}")]
    Cpuid {
        vcpu: u32,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("KVM refused the initial {what} of vCPU {vcpu}")]
    State {
        what: &'static str,
        vcpu: u32,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("cannot write the page tables or GDT into guest memory")]
    Memory(#[source] vm_memory::GuestMemoryError),
}

fn state_error(what: &'static str, vcpu: u32) -> impl FnOnce(kvm_ioctls::Error) -> CpuError {
    move |source| CpuError::State { what, vcpu, source }
}

const LEAF_FEATURES: u32 = 1;
const LEAF_CACHE_TOPOLOGY: u32 = 4;
const LEAF_EXTENDED_TOPOLOGY: u32 = 0xb;
const LEAF_V2_EXTENDED_TOPOLOGY: u32 = 0x1f;
const FEATURE_ECX_TSC_DEADLINE: u32 = 1 << 24;
const FEATURE_ECX_HYPERVISOR: u32 = 1 << 31;
const FEATURE_EDX_HTT: u32 = 1 << 28;

/// What vmpod adds to the host's supported CPUID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extras {
    /// KVM emulates the local APIC's TSC-deadline mode
    /// (`KVM_CAP_TSC_DEADLINE_TIMER`) but leaves its CPUID bit out of the
    /// supported set; with it, Linux programs its timer by deadline and
    /// need not calibrate the APIC timer against another clock.
    pub tsc_deadline: bool,
}

/// Adapts the host's supported CPUID to one vCPU of this topology.
pub fn vcpu_cpuid(
    supported: &CpuId,
    topology: &CpuTopology,
    apic_id: u32,
    extras: Extras,
) -> CpuId {
    let mut cpuid = supported.clone();
    let per_socket = topology.cores * topology.threads;
    let thread_bits = topology.thread_bits();
    let core_bits = topology.core_bits();
    for entry in cpuid.as_mut_slice() {
        match entry.function {
            LEAF_FEATURES => {
                entry.ebx = (entry.ebx & 0x0000_ffff)
                    | (apic_id << 24)
                    | ((1 << (core_bits + thread_bits)) << 16);
                entry.ecx |= FEATURE_ECX_HYPERVISOR;
                if extras.tsc_deadline {
                    entry.ecx |= FEATURE_ECX_TSC_DEADLINE;
                }
                if per_socket > 1 {
                    entry.edx |= FEATURE_EDX_HTT;
                }
            }
            LEAF_CACHE_TOPOLOGY => {
                entry.eax = (entry.eax & 0x03ff_ffff) | (((1 << core_bits) - 1) << 26);
            }
            LEAF_EXTENDED_TOPOLOGY | LEAF_V2_EXTENDED_TOPOLOGY => {
                entry.edx = apic_id;
                let (shift, count, level_type) = match entry.index {
                    0 => (thread_bits, topology.threads, 1),
                    1 => (thread_bits + core_bits, per_socket, 2),
                    _ => (0, 0, 0),
                };
                entry.eax = shift;
                entry.ebx = count;
                entry.ecx = (level_type << 8) | (entry.index & 0xff);
            }
            _ => {}
        }
    }
    cpuid
}

pub fn set_cpuid(vcpu: &VcpuFd, index: u32, cpuid: &CpuId) -> Result<(), CpuError> {
    vcpu.set_cpuid2(cpuid).map_err(|source| CpuError::Cpuid {
        vcpu: index,
        source,
    })
}

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MISC_ENABLE_FAST_STRING: u64 = 1;
const MTRR_ENABLE_WRITEBACK: u64 = (1 << 11) | 6;

/// Power-on MSR values vmpod sets when the host allows them.
const BOOT_MSRS: &[(u32, u64)] = &[
    (MSR_IA32_SYSENTER_CS, 0),
    (MSR_IA32_SYSENTER_ESP, 0),
    (MSR_IA32_SYSENTER_EIP, 0),
    (MSR_STAR, 0),
    (MSR_CSTAR, 0),
    (MSR_KERNEL_GS_BASE, 0),
    (MSR_SYSCALL_MASK, 0),
    (MSR_LSTAR, 0),
    (MSR_IA32_TSC, 0),
    (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
    (MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WRITEBACK),
];

/// Sets each boot MSR the host accepts; returns those it refused, so the
/// caller can say which were skipped (some hosts refuse some MSRs).
pub fn set_boot_msrs(vcpu: &VcpuFd) -> Vec<u32> {
    let mut refused = Vec::new();
    for &(index, data) in BOOT_MSRS {
        let entry = kvm_msr_entry {
            index,
            data,
            ..Default::default()
        };
        let accepted = Msrs::from_entries(&[entry])
            .ok()
            .and_then(|msrs| vcpu.set_msrs(&msrs).ok());
        if accepted != Some(1) {
            refused.push(index);
        }
    }
    refused
}

/// GDT entries: null, 64-bit code, data, TSS, 32-bit code.
const GDT: [u64; 5] = [
    0,
    0x00af_9b00_0000_ffff,
    0x00cf_9300_0000_ffff,
    0x008f_8b00_0000_ffff,
    0x00cf_9b00_0000_ffff,
];
const CODE64_SELECTOR: u16 = 0x08;
const DATA_SELECTOR: u16 = 0x10;
const TSS_SELECTOR: u16 = 0x18;
const CODE32_SELECTOR: u16 = 0x20;

/// Expands a GDT entry into KVM's segment form.
fn segment(entry: u64, selector: u16) -> kvm_segment {
    let base = ((entry >> 16) & 0xff_ffff) | (((entry >> 56) & 0xff) << 24);
    let limit = (entry & 0xffff) | (((entry >> 48) & 0xf) << 16);
    let flags = |bit: u32| ((entry >> bit) & 1) as u8;
    let granularity = flags(55);
    kvm_segment {
        base,
        limit: if granularity == 1 {
            ((limit as u32) << 12) | 0xfff
        } else {
            limit as u32
        },
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        present: flags(47),
        dpl: ((entry >> 45) & 3) as u8,
        db: flags(54),
        s: flags(44),
        l: flags(53),
        g: granularity,
        avl: flags(52),
        unusable: 0,
        padding: 0,
    }
}

/// Writes the GDT, an empty IDT and identity page tables for the first 4 GiB.
pub fn write_boot_tables(memory: &GuestMemoryMmap) -> Result<(), CpuError> {
    for (index, entry) in GDT.iter().enumerate() {
        memory
            .write_obj(*entry, GuestAddress(layout::GDT_ADDR + index as u64 * 8))
            .map_err(CpuError::Memory)?;
    }
    memory
        .write_obj(0u64, GuestAddress(layout::IDT_ADDR))
        .map_err(CpuError::Memory)?;
    memory
        .write_obj(layout::PDPT | 0x3, GuestAddress(layout::PML4))
        .map_err(CpuError::Memory)?;
    for gib in 0..layout::IDENTITY_MAPPED_GIB {
        let directory = layout::PAGE_DIRECTORIES + gib * 0x1000;
        memory
            .write_obj(directory | 0x3, GuestAddress(layout::PDPT + gib * 8))
            .map_err(CpuError::Memory)?;
        for entry in 0..512u64 {
            let page = ((gib << 30) + (entry << 21)) | 0x83; // present, writable, 2 MiB
            memory
                .write_obj(page, GuestAddress(directory + entry * 8))
                .map_err(CpuError::Memory)?;
        }
    }
    Ok(())
}

const CR0_PE: u64 = 1;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// Registers and segments of the boot vCPU for `entry`.
pub fn set_boot_registers(vcpu: &VcpuFd, index: u32, entry: Entry) -> Result<(), CpuError> {
    let mut sregs: kvm_sregs = vcpu
        .get_sregs()
        .map_err(state_error("segment registers", index))?;
    let data = segment(GDT[2], DATA_SELECTOR);
    sregs.gdt.base = layout::GDT_ADDR;
    sregs.gdt.limit = (GDT.len() * 8 - 1) as u16;
    sregs.idt.base = layout::IDT_ADDR;
    sregs.idt.limit = 7;
    sregs.tr = segment(GDT[3], TSS_SELECTOR);
    (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
    let mut regs = kvm_regs {
        rflags: 0x2,
        ..Default::default()
    };
    match entry {
        Entry::Pvh { entry, start_info } => {
            sregs.cs = segment(GDT[4], CODE32_SELECTOR);
            sregs.cr0 = CR0_PE | CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
            regs.rip = entry;
            regs.rbx = start_info;
        }
        Entry::Linux64 { entry, boot_params } => {
            sregs.cs = segment(GDT[1], CODE64_SELECTOR);
            sregs.cr0 = CR0_PE | CR0_ET | CR0_PG;
            sregs.cr3 = layout::PML4;
            sregs.cr4 = CR4_PAE;
            sregs.efer = EFER_LME | EFER_LMA;
            regs.rip = entry;
            regs.rsi = boot_params;
            regs.rsp = layout::BOOT_STACK;
            regs.rbp = layout::BOOT_STACK;
        }
    }
    vcpu.set_sregs(&sregs)
        .map_err(state_error("segment registers", index))?;
    vcpu.set_regs(&regs)
        .map_err(state_error("registers", index))
}

/// FPU at its power-on control words.
pub fn set_fpu(vcpu: &VcpuFd, index: u32) -> Result<(), CpuError> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(state_error("FPU state", index))
}

const APIC_LVT_LINT0: usize = 0x350;
const APIC_LVT_LINT1: usize = 0x360;
const DELIVERY_MODE_EXTINT: u32 = 0x7 << 8;
const DELIVERY_MODE_NMI: u32 = 0x4 << 8;

/// LINT0 delivers the PIC's interrupts (ExtINT), LINT1 is the NMI line.
pub fn set_lint_pins(vcpu: &VcpuFd, index: u32) -> Result<(), CpuError> {
    let mut lapic = vcpu.get_lapic().map_err(state_error("local APIC", index))?;
    for (offset, mode) in [
        (APIC_LVT_LINT0, DELIVERY_MODE_EXTINT),
        (APIC_LVT_LINT1, DELIVERY_MODE_NMI),
    ] {
        let register = &mut lapic.regs[offset..offset + 4];
        let bytes: Vec<u8> = register.iter().map(|b| *b as u8).collect();
        let value = u32::from_le_bytes(bytes.try_into().unwrap_or_default());
        let updated = (value & !0x700) | mode;
        for (slot, byte) in register.iter_mut().zip(updated.to_le_bytes()) {
            *slot = byte as _;
        }
    }
    vcpu.set_lapic(&lapic)
        .map_err(state_error("local APIC", index))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_decode_to_flat_segments() {
        let code64 = segment(GDT[1], CODE64_SELECTOR);
        assert_eq!(
            (code64.base, code64.limit, code64.l, code64.db, code64.type_),
            (0, 0xffff_ffff, 1, 0, 0xb)
        );
        let code32 = segment(GDT[4], CODE32_SELECTOR);
        assert_eq!(
            (code32.l, code32.db, code32.present, code32.s),
            (0, 1, 1, 1)
        );
        let tss = segment(GDT[3], TSS_SELECTOR);
        assert_eq!((tss.s, tss.type_), (0, 0xb));
    }

    #[test]
    fn the_tsc_deadline_bit_follows_kvm() {
        let mut supported = CpuId::new(1).expect("cpuid");
        supported.as_mut_slice()[0].function = LEAF_FEATURES;
        let topology = CpuTopology {
            sockets: 1,
            cores: 2,
            threads: 1,
        };
        let leaf_1 = |tsc_deadline| {
            vcpu_cpuid(&supported, &topology, 1, Extras { tsc_deadline }).as_slice()[0].ecx
        };
        assert_eq!(
            leaf_1(true) & FEATURE_ECX_TSC_DEADLINE,
            FEATURE_ECX_TSC_DEADLINE
        );
        assert_eq!(leaf_1(false) & FEATURE_ECX_TSC_DEADLINE, 0);
        assert_ne!(leaf_1(false) & FEATURE_ECX_HYPERVISOR, 0);
    }

    #[test]
    fn page_tables_identity_map_4_gib() {
        let memory = super::super::memory::create(1 << 20).expect("memory");
        write_boot_tables(&memory).expect("tables");
        let read = |address: u64| memory.read_obj::<u64>(GuestAddress(address)).expect("read");
        assert_eq!(read(layout::PML4), layout::PDPT | 3);
        assert_eq!(
            read(layout::PDPT + 3 * 8),
            (layout::PAGE_DIRECTORIES + 0x3000) | 3
        );
        let last = read(layout::PAGE_DIRECTORIES + 0x3000 + 511 * 8);
        assert_eq!(last & !0xfff, (4 << 30) - (2 << 20));
    }
}
