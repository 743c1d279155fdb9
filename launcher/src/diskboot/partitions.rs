//! Partition tables, read as a bootloader reads them: GPT (with its
//! header checksum, falling back to the backup header) or MBR (primary
//! partitions and a bounded chain of logical ones); a disk with neither is
//! one file system. Every count, size and offset comes from the disk and is
//! checked against the disk's size before it is used.

use super::DiskRead;

pub const SECTOR: u64 = 512;
/// More GPT entries than any tool writes by default (128) needs a reason;
/// more than this is corruption.
const MAX_GPT_ENTRIES: u32 = 1024;
/// Logical partitions followed through an MBR extended partition.
const MAX_LOGICAL: usize = 128;
const GPT_SIGNATURE: &[u8; 8] = b"EFI PART";
const MBR_PROTECTIVE: u8 = 0xee;
const MBR_EXTENDED: [u8; 3] = [0x05, 0x0f, 0x85];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Table {
    Gpt,
    Mbr,
    /// No partition table: the whole disk is one file system.
    None,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// 1-based, as Linux and GRUB number them (gpt2, msdos5).
    pub number: u32,
    pub start: u64,
    pub size: u64,
    /// The GPT type GUID or the MBR type byte, as text.
    pub kind: String,
    /// The GPT partition name, or empty.
    pub name: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TableError {
    #[error("the GPT header says {count} partition entries of {size} bytes (expected at most {MAX_GPT_ENTRIES} entries of 128 bytes or a larger power of two)")]
    GptEntries { count: u32, size: u32 },
    #[error("partition {number} lies outside the disk (bytes {start}..{end} of {disk_size})")]
    OutsideDisk {
        number: u32,
        start: u64,
        end: u64,
        disk_size: u64,
    },
    #[error("both GPT headers are damaged (bad signature or checksum)")]
    GptDamaged,
    #[error("cannot read the partition table: {0}")]
    Read(String),
}

/// Reads the partition table of a disk.
pub fn read(disk: &mut dyn DiskRead) -> Result<(Table, Vec<Partition>), TableError> {
    let size = disk.size();
    let mut mbr = [0u8; 512];
    if size < SECTOR {
        return Ok((Table::None, Vec::new()));
    }
    disk.read_exact_at(&mut mbr, 0).map_err(read_error)?;
    let entries = mbr_entries(&mbr);
    let has_signature = mbr[510..512] == [0x55, 0xaa];
    if has_signature && entries.iter().any(|entry| entry.kind == MBR_PROTECTIVE) {
        return Ok((Table::Gpt, read_gpt(disk)?));
    }
    // A GPT without a protective MBR still counts (some tools skip it).
    if let Ok(partitions) = read_gpt(disk) {
        return Ok((Table::Gpt, partitions));
    }
    if !has_signature || entries.iter().all(|entry| entry.kind == 0) || !plausible_mbr(&entries) {
        return Ok((Table::None, Vec::new()));
    }
    Ok((Table::Mbr, read_mbr(disk, &entries)?))
}

fn read_error(error: std::io::Error) -> TableError {
    TableError::Read(error.to_string())
}

#[derive(Clone, Copy)]
struct MbrEntry {
    kind: u8,
    first_lba: u32,
    sectors: u32,
}

fn mbr_entries(sector: &[u8; 512]) -> [MbrEntry; 4] {
    std::array::from_fn(|index| {
        let entry = &sector[446 + index * 16..446 + (index + 1) * 16];
        MbrEntry {
            kind: entry[4],
            first_lba: le32(&entry[8..12]),
            sectors: le32(&entry[12..16]),
        }
    })
}

/// A boot sector of a FAT or ext file system also ends in 55 aa; its
/// "entries" are code, whose status bytes are rarely all 0x00 or 0x80.
fn plausible_mbr(entries: &[MbrEntry; 4]) -> bool {
    entries
        .iter()
        .all(|entry| entry.kind == 0 || (entry.first_lba > 0 && entry.sectors > 0))
}

fn read_mbr(
    disk: &mut dyn DiskRead,
    entries: &[MbrEntry; 4],
) -> Result<Vec<Partition>, TableError> {
    let mut partitions = Vec::new();
    for (index, entry) in entries.iter().enumerate() {
        let number = index as u32 + 1;
        if entry.kind == 0 {
            continue;
        }
        let start = u64::from(entry.first_lba) * SECTOR;
        let size = u64::from(entry.sectors) * SECTOR;
        check_inside(disk.size(), number, start, size)?;
        if MBR_EXTENDED.contains(&entry.kind) {
            read_logical(disk, start, &mut partitions)?;
        } else {
            partitions.push(Partition {
                number,
                start,
                size,
                kind: format!("{:#04x}", entry.kind),
                name: String::new(),
            });
        }
    }
    partitions.sort_by_key(|partition| partition.number);
    Ok(partitions)
}

/// Logical partitions: a chain of extended boot records, each relative to
/// the extended partition's start; numbered from 5, as Linux does.
fn read_logical(
    disk: &mut dyn DiskRead,
    extended_start: u64,
    partitions: &mut Vec<Partition>,
) -> Result<(), TableError> {
    let mut record = extended_start;
    for number in 5..5 + MAX_LOGICAL as u32 {
        let mut sector = [0u8; 512];
        disk.read_exact_at(&mut sector, record)
            .map_err(read_error)?;
        if sector[510..512] != [0x55, 0xaa] {
            return Ok(());
        }
        let [logical, next, ..] = mbr_entries(&sector);
        if logical.kind != 0 {
            let start = record + u64::from(logical.first_lba) * SECTOR;
            let size = u64::from(logical.sectors) * SECTOR;
            check_inside(disk.size(), number, start, size)?;
            partitions.push(Partition {
                number,
                start,
                size,
                kind: format!("{:#04x}", logical.kind),
                name: String::new(),
            });
        }
        if next.kind == 0 || next.first_lba == 0 {
            return Ok(());
        }
        record = extended_start + u64::from(next.first_lba) * SECTOR;
    }
    Ok(()) // longer chains are cut, not followed forever
}

fn check_inside(disk_size: u64, number: u32, start: u64, size: u64) -> Result<(), TableError> {
    let end = start.saturating_add(size);
    if start >= disk_size || end > disk_size {
        return Err(TableError::OutsideDisk {
            number,
            start,
            end,
            disk_size,
        });
    }
    Ok(())
}

fn read_gpt(disk: &mut dyn DiskRead) -> Result<Vec<Partition>, TableError> {
    let last_lba = disk.size() / SECTOR - 1;
    let header = match gpt_header(disk, 1)? {
        Some(header) => header,
        None => gpt_header(disk, last_lba)?.ok_or(TableError::GptDamaged)?,
    };
    let GptHeader {
        entries_lba,
        count,
        entry_size,
    } = header;
    if count > MAX_GPT_ENTRIES
        || entry_size < 128
        || !entry_size.is_power_of_two()
        || entry_size > 4096
    {
        return Err(TableError::GptEntries {
            count,
            size: entry_size,
        });
    }
    let table_bytes = u64::from(count) * u64::from(entry_size);
    let table_start = entries_lba.saturating_mul(SECTOR);
    check_inside(disk.size(), 0, table_start, table_bytes)?;
    let mut table = vec![0u8; table_bytes as usize];
    disk.read_exact_at(&mut table, table_start)
        .map_err(read_error)?;
    let mut partitions = Vec::new();
    for (index, entry) in table.chunks_exact(entry_size as usize).enumerate() {
        let type_guid = &entry[0..16];
        if type_guid.iter().all(|&b| b == 0) {
            continue;
        }
        let number = index as u32 + 1;
        let first = le64(&entry[32..40]);
        let last = le64(&entry[40..48]);
        if last < first {
            continue;
        }
        let start = first.saturating_mul(SECTOR);
        let size = (last - first + 1).saturating_mul(SECTOR);
        check_inside(disk.size(), number, start, size)?;
        let name_units: Vec<u16> = entry[56..128]
            .chunks_exact(2)
            .map(|pair| u16::from_le_bytes([pair[0], pair[1]]))
            .take_while(|&unit| unit != 0)
            .collect();
        partitions.push(Partition {
            number,
            start,
            size,
            kind: guid_text(type_guid),
            name: String::from_utf16_lossy(&name_units),
        });
    }
    Ok(partitions)
}

struct GptHeader {
    entries_lba: u64,
    count: u32,
    entry_size: u32,
}

/// The GPT header at `lba`, if its signature and CRC are right.
fn gpt_header(disk: &mut dyn DiskRead, lba: u64) -> Result<Option<GptHeader>, TableError> {
    let mut sector = [0u8; 512];
    disk.read_exact_at(&mut sector, lba * SECTOR)
        .map_err(read_error)?;
    if &sector[0..8] != GPT_SIGNATURE {
        return Ok(None);
    }
    let header_size = le32(&sector[12..16]) as usize;
    if !(92..=512).contains(&header_size) {
        return Ok(None);
    }
    let mut header = sector[..header_size].to_vec();
    let stored_crc = le32(&header[16..20]);
    header[16..20].fill(0);
    if crc32(&header) != stored_crc {
        return Ok(None);
    }
    Ok(Some(GptHeader {
        entries_lba: le64(&sector[72..80]),
        count: le32(&sector[80..84]),
        entry_size: le32(&sector[84..88]),
    }))
}

/// GUIDs are stored with their first three fields little-endian.
pub fn guid_text(bytes: &[u8]) -> String {
    format!(
        "{:08X}-{:04X}-{:04X}-{:02X}{:02X}-{}",
        le32(&bytes[0..4]),
        u16::from_le_bytes([bytes[4], bytes[5]]),
        u16::from_le_bytes([bytes[6], bytes[7]]),
        bytes[8],
        bytes[9],
        bytes[10..16]
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<String>()
    )
}

/// CRC-32 (IEEE 802.3, reflected), as the GPT header checksum uses.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn le32(bytes: &[u8]) -> u32 {
    u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

fn le64(bytes: &[u8]) -> u64 {
    let mut array = [0u8; 8];
    array.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(array)
}

/// Well-known partition types, for people reading `inspect-disk`.
pub fn describe_kind(kind: &str) -> &'static str {
    match kind {
        "0FC63DAF-8483-4772-8E79-3D69D8477DE4" | "0x83" => "Linux file system",
        "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709" => "Linux root (x86-64)",
        "BC13C2FF-59E6-4262-A352-B275FD6F7172" | "0xea" => "Linux extended boot (/boot)",
        "C12A7328-F81F-11D2-BA4B-00A0C93EC93B" | "0xef" => "EFI system partition",
        "21686148-6449-6E6F-744E-656564454649" => "BIOS boot",
        "E6D6D379-F507-44C2-A23C-238F2A3DF928" | "0x8e" => "Linux LVM",
        "CA7D7CCB-63ED-4C53-861C-1742536059CC" => "Linux LUKS",
        "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F" | "0x82" => "Linux swap",
        "A19D880F-05FC-4D3B-A006-743F0F84911E" | "0xfd" => "Linux RAID",
        "0x0b" | "0x0c" | "0x0e" | "0x06" => "FAT",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }
}
