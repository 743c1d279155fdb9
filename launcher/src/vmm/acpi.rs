//! ACPI tables for a hardware-reduced x86 platform: RSDP, XSDT, FADT (sleep
//! control/status and reset registers), MADT (one local APIC per vCPU, the
//! IOAPIC) and a DSDT with `\_S5_` and the devices' entries, which the
//! device manager collects from each device's registration (the AML
//! helpers for those entries are here too).
//!
//! Pure: builds bytes for a given set of facts; the boot code writes them
//! into guest memory at [`layout::ACPI_START`]. VMM thread only.

use acpi_tables::aml;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;

use super::layout;

const OEM_ID: [u8; 6] = *b"VMPOD ";
const OEM_TABLE_ID: [u8; 8] = *b"VMPODVM ";
const OEM_REVISION: u32 = 1;

/// FADT IA-PC boot architecture flags (ACPI 6.5, 5.2.9.3).
const BOOT_ARCH_8042: u16 = 1 << 1;
const BOOT_ARCH_VGA_NOT_PRESENT: u16 = 1 << 2;
const BOOT_ARCH_NO_CMOS_RTC: u16 = 1 << 5;

/// MADT structure types and flags (ACPI 6.5, 5.2.12).
const MADT_PCAT_COMPAT: u32 = 1;
const MADT_LOCAL_APIC: u8 = 0;
const MADT_IO_APIC: u8 = 1;
const MADT_LOCAL_APIC_NMI: u8 = 4;
const LOCAL_APIC_ENABLED: u32 = 1;

/// A device's DSDT entry, built from the resources it was given.
pub type Entry = Box<dyn Fn(&super::device_manager::Resources) -> Vec<u8>>;

/// What the tables describe.
pub struct AcpiFacts<'a> {
    /// APIC id of each vCPU, in vCPU order.
    pub apic_ids: &'a [u32],
    /// The devices' DSDT entries (AML `Device` objects), for `\_SB_`.
    pub devices: &'a [u8],
}

/// Tables ready to be copied into guest memory.
pub struct AcpiTables {
    /// (guest address, bytes) of each table, RSDP first.
    pub blobs: Vec<(u64, Vec<u8>)>,
    pub rsdp_address: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("the ACPI tables need {needed} bytes but only {available} fit below 1 MiB")]
pub struct AcpiTooLarge {
    needed: u64,
    available: u64,
}

fn align16(address: u64) -> u64 {
    address.div_ceil(16) * 16
}

pub fn build(facts: &AcpiFacts) -> Result<AcpiTables, AcpiTooLarge> {
    let dsdt = dsdt(facts.devices);
    let madt = madt(facts.apic_ids);
    let rsdp_address = layout::ACPI_START;
    let xsdt_address = align16(rsdp_address + Rsdp::len() as u64);
    let xsdt_len = 36 + 2 * 8;
    let dsdt_address = align16(xsdt_address + xsdt_len);
    let fadt_address = align16(dsdt_address + dsdt.len() as u64);
    let madt_address = align16(fadt_address + acpi_tables::fadt::FADT::len() as u64);
    let end = madt_address + madt.len() as u64;
    if end > layout::ACPI_END {
        return Err(AcpiTooLarge {
            needed: end - layout::ACPI_START,
            available: layout::ACPI_END - layout::ACPI_START,
        });
    }
    let fadt = fadt(dsdt_address);
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_address);
    xsdt.add_entry(madt_address);
    Ok(AcpiTables {
        blobs: vec![
            (rsdp_address, aml_bytes(&Rsdp::new(OEM_ID, xsdt_address))),
            (xsdt_address, aml_bytes(&xsdt)),
            (dsdt_address, dsdt),
            (fadt_address, fadt),
            (madt_address, madt),
        ],
        rsdp_address,
    })
}

fn aml_bytes(object: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    object.to_aml_bytes(&mut bytes);
    bytes
}

fn io_register(port: u16) -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(port),
    )
}

fn fadt(dsdt_address: u64) -> Vec<u8> {
    let mut builder = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::PwrButton)
        .flag(Flags::ResetRegSup)
        .dsdt_64(dsdt_address);
    builder.iapc_boot_arch =
        (BOOT_ARCH_8042 | BOOT_ARCH_VGA_NOT_PRESENT | BOOT_ARCH_NO_CMOS_RTC).into();
    builder.sleep_control_reg = io_register(layout::ACPI_SLEEP_CONTROL_PORT);
    builder.sleep_status_reg = io_register(layout::ACPI_SLEEP_STATUS_PORT);
    builder.reset_reg = io_register(layout::ACPI_RESET_PORT);
    builder.reset_value = layout::ACPI_RESET_VALUE;
    builder.hypervisor_vendor_identity = u64::from_le_bytes(*b"VMPOD\0\0\0").into();
    aml_bytes(&builder.finalize())
}

/// The IOAPIC's id: the lowest one no local APIC has (they share one
/// 8-bit id space; `VmConfig::validate` keeps APIC ids below 0xff).
pub fn io_apic_id(apic_ids: &[u32]) -> u8 {
    (0..=u8::MAX)
        .find(|id| !apic_ids.contains(&u32::from(*id)))
        .unwrap_or(u8::MAX)
}

fn madt(apic_ids: &[u32]) -> Vec<u8> {
    let mut table = Sdt::new(*b"APIC", 44, 5, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    table.write_u32(36, layout::LAPIC_ADDR as u32);
    table.write_u32(40, MADT_PCAT_COMPAT);
    for (uid, apic_id) in apic_ids.iter().enumerate() {
        table.append_slice(&[MADT_LOCAL_APIC, 8, uid as u8, *apic_id as u8]);
        table.append_slice(&LOCAL_APIC_ENABLED.to_le_bytes());
    }
    table.append_slice(&[MADT_IO_APIC, 12, io_apic_id(apic_ids), 0]);
    table.append_slice(&(layout::IOAPIC_ADDR as u32).to_le_bytes());
    table.append_slice(&0u32.to_le_bytes()); // GSI base
                                             // LINT1 of every processor (uid 0xff) is the NMI line.
    table.append_slice(&[MADT_LOCAL_APIC_NMI, 6, 0xff, 0, 0, 1]);
    table.update_checksum();
    table.as_slice().to_vec()
}

/// A legacy device's DSDT entry: a PNP id, I/O port ranges (port, length)
/// and an edge-triggered interrupt.
pub fn pnp_device(name: &str, pnp_id: &str, ports: &[(u16, u8)], irq: u32) -> Vec<u8> {
    let ports: Vec<aml::IO> = ports
        .iter()
        .map(|(port, len)| aml::IO::new(*port, *port, 1, *len))
        .collect();
    let interrupt = aml::Interrupt::new(true, true, false, false, irq);
    let mut resources: Vec<&dyn Aml> = ports.iter().map(|io| io as &dyn Aml).collect();
    resources.push(&interrupt);
    aml_bytes(&aml::Device::new(
        name.into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new(pnp_id)),
            &aml::Name::new("_UID".into(), &aml::ONE),
            &aml::Name::new("_CRS".into(), &aml::ResourceTemplate::new(resources)),
        ],
    ))
}

/// A virtio-mmio device's DSDT entry (`LNRO0005`, as Linux's virtio_mmio
/// driver matches it): its register window and its edge-triggered
/// interrupt. Debian's kernel finds virtio-mmio devices only this way.
pub fn virtio_mmio_device(index: u8, base: u64, len: u64, irq: u32) -> Vec<u8> {
    let window = aml::Memory32Fixed::new(true, base as u32, len as u32);
    let interrupt = aml::Interrupt::new(true, true, false, false, irq);
    let name = format!("VR{index:02X}");
    aml_bytes(&aml::Device::new(
        name.as_str().into(),
        vec![
            &aml::Name::new("_HID".into(), &"LNRO0005"),
            &aml::Name::new("_UID".into(), &index),
            &aml::Name::new(
                "_CRS".into(),
                &aml::ResourceTemplate::new(vec![&window, &interrupt]),
            ),
        ],
    ))
}

/// The Generic Event Device and the power button it notifies: `_EVT`
/// reads the event register and notifies `\_SB.PWRB` when its bit is set.
/// Its `_CRS` holds only the interrupt (Linux's driver refuses anything
/// else there); the register is the operation region.
pub fn ged_with_power_button(register: u64, irq: u32) -> Vec<u8> {
    let interrupt = aml::Interrupt::new(true, true, false, false, irq);
    let register = register as u32;
    let region = aml::OpRegion::new(
        "GDST".into(),
        aml::OpRegionSpace::SystemMemory,
        &register,
        &4u32,
    );
    let field = aml::Field::new(
        "GDST".into(),
        aml::FieldAccessType::DWord,
        aml::FieldLockRule::NoLock,
        aml::FieldUpdateRule::WriteAsZeroes,
        vec![aml::FieldEntry::Named(*b"GDAT", 32)],
    );
    let events = aml::Local(0);
    let event_register = aml::Path::new("GDAT");
    let power_button_device = aml::Path::new("\\_SB_.PWRB");
    let read_events = aml::Store::new(&events, &event_register);
    let power_button_bit = aml::And::new(&aml::ZERO, &events, &aml::ONE);
    let pressed = aml::Equal::new(&power_button_bit, &aml::ONE);
    let notify = aml::Notify::new(&power_button_device, &0x80u8);
    let on_power_button = aml::If::new(&pressed, vec![&notify]);
    let evt = aml::Method::new("_EVT".into(), 1, true, vec![&read_events, &on_power_button]);
    let mut bytes = aml_bytes(&aml::Device::new(
        "GED0".into(),
        vec![
            &aml::Name::new("_HID".into(), &"ACPI0013"),
            &aml::Name::new("_UID".into(), &aml::ZERO),
            &aml::Name::new("_CRS".into(), &aml::ResourceTemplate::new(vec![&interrupt])),
            &region,
            &field,
            &evt,
        ],
    ));
    bytes.extend(aml_bytes(&aml::Device::new(
        "PWRB".into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0C0C")),
            &aml::Name::new("_UID".into(), &aml::ZERO),
        ],
    )));
    bytes
}

/// AML that is already encoded, so finished devices can go into a scope.
struct Encoded<'a>(&'a [u8]);

impl Aml for Encoded<'_> {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        sink.vec(self.0);
    }
}

fn dsdt(devices: &[u8]) -> Vec<u8> {
    let s5 = aml_bytes(&aml::Name::new(
        "_S5_".into(),
        &aml::Package::new(vec![&layout::S5_SLEEP_TYPE, &aml::ZERO]),
    ));
    let system_bus = aml_bytes(&aml::Scope::new("\\_SB_".into(), vec![&Encoded(devices)]));
    let mut table = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    table.append_slice(&system_bus);
    table.append_slice(&s5);
    table.update_checksum();
    table.as_slice().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tables(vcpus: u32) -> AcpiTables {
        let apic_ids: Vec<u32> = (0..vcpus).collect();
        let devices = pnp_device("COM1", "PNP0501", &[(0x3f8, 8)], 4);
        build(&AcpiFacts {
            apic_ids: &apic_ids,
            devices: &devices,
        })
        .expect("tables fit")
    }

    #[test]
    fn the_io_apic_id_never_collides_with_a_local_apic() {
        assert_eq!(io_apic_id(&[0, 1, 2, 3]), 4);
        // sockets 2 × cores 3: APIC ids 0, 1, 2, 4, 5, 6 leave 3 free.
        assert_eq!(io_apic_id(&[0, 1, 2, 4, 5, 6]), 3);
        let madt = &tables(4).blobs[4].1;
        let io_apic = madt[44 + 4 * 8..].chunks(12).next().expect("IOAPIC entry");
        assert_eq!((io_apic[0], io_apic[2]), (MADT_IO_APIC, 4));
    }

    #[test]
    fn device_entries_go_into_the_system_bus_scope() {
        let dsdt = &tables(1).blobs[2].1;
        let scope = dsdt.windows(4).position(|w| w == b"_SB_").expect("scope");
        let com1 = dsdt.windows(4).position(|w| w == b"COM1").expect("device");
        assert!(scope < com1);
    }

    fn checksum_ok(bytes: &[u8]) -> bool {
        bytes.iter().fold(0u8, |sum, byte| sum.wrapping_add(*byte)) == 0
    }

    #[test]
    fn every_table_checksums_and_has_its_signature() {
        let tables = tables(2);
        let signatures: Vec<&[u8]> = tables.blobs.iter().map(|(_, bytes)| &bytes[..4]).collect();
        assert_eq!(
            signatures,
            [&b"RSD "[..], b"XSDT", b"DSDT", b"FACP", b"APIC"]
        );
        for (_, bytes) in &tables.blobs[1..] {
            let length = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes")) as usize;
            assert_eq!(length, bytes.len());
            assert!(checksum_ok(bytes));
        }
        assert!(checksum_ok(&tables.blobs[0].1[..20]));
        assert!(checksum_ok(&tables.blobs[0].1));
    }

    #[test]
    fn fadt_points_at_vmpods_registers() {
        let tables = tables(1);
        let fadt = &tables.blobs[3].1;
        let u64_at = |offset: usize| {
            u64::from_le_bytes(fadt[offset..offset + 8].try_into().expect("8 bytes"))
        };
        let flags = u32::from_le_bytes(fadt[112..116].try_into().expect("4 bytes"));
        assert_ne!(flags & Flags::HwReducedAcpi as u32, 0);
        assert_ne!(flags & Flags::ResetRegSup as u32, 0);
        assert_eq!(u64_at(120), u64::from(layout::ACPI_RESET_PORT));
        assert_eq!(fadt[128], layout::ACPI_RESET_VALUE);
        assert_eq!(u64_at(140), tables.blobs[2].0, "X_DSDT");
        assert_eq!(u64_at(248), u64::from(layout::ACPI_SLEEP_CONTROL_PORT));
        assert_eq!(u64_at(260), u64::from(layout::ACPI_SLEEP_STATUS_PORT));
    }

    #[test]
    fn madt_lists_every_vcpu() {
        let tables = tables(4);
        let madt = &tables.blobs[4].1;
        let local_apics = madt[44..]
            .chunks(8)
            .take_while(|entry| entry[0] == MADT_LOCAL_APIC)
            .map(|entry| entry[3])
            .collect::<Vec<_>>();
        assert_eq!(local_apics, [0, 1, 2, 3]);
    }

    #[test]
    fn dsdt_carries_s5() {
        let tables = tables(1);
        let dsdt = &tables.blobs[2].1;
        let at = dsdt
            .windows(4)
            .position(|w| w == b"_S5_")
            .expect("_S5_ present");
        assert_eq!(dsdt[at + 4], 0x12, "PackageOp");
        assert_eq!(
            &dsdt[at + 7..at + 9],
            &[0x0a, layout::S5_SLEEP_TYPE],
            "BytePrefix 5"
        );
    }
}
