//! One virtio-blk request (virtio 1.2, section 5.2.6): a 16-byte header
//! the device reads, data, and a status byte the device writes last. The
//! layout is read as two streams (device-readable, device-writable) over
//! the chain, so any framing a VERSION_1 driver chooses works; every
//! length, sector and guest address is checked before it is used.
//!
//! Runs on the VMM thread (queue notifications), through the device's mutex.

use std::io::{Read, Write};

use virtio_queue::{DescriptorChain, Reader, Writer};
use vm_memory::GuestMemoryMmap;

use crate::images::DiskImage;

/// Request types.
const IN: u32 = 0;
const OUT: u32 = 1;
const FLUSH: u32 = 4;
const GET_ID: u32 = 8;
const DISCARD: u32 = 11;
const WRITE_ZEROES: u32 = 13;
/// Status values.
pub const OK: u8 = 0;
pub const IOERR: u8 = 1;
pub const UNSUPP: u8 = 2;

pub const SECTOR: u64 = 512;
/// The serial number's size in a GET_ID answer.
pub const ID_BYTES: usize = 20;
/// Data is copied between the file and guest memory in pieces this big.
const CHUNK: usize = 256 * 1024;
/// The most segments one discard or write-zeroes request may carry.
pub const MAX_SEGMENTS: usize = 32;
/// A discard or write-zeroes segment: sector, sector count, flags.
const SEGMENT_BYTES: usize = 16;
/// The size limit of one segment (1 GiB), as advertised (`max_*_sectors`).
pub const MAX_SEGMENT_SECTORS: u32 = 1 << 21;

/// What a request needs of the disk.
pub struct Disk<'a> {
    pub image: &'a mut dyn DiskImage,
    pub capacity_bytes: u64,
    pub readonly: bool,
    pub id: &'a [u8; ID_BYTES],
}

/// How a request went, for the used ring and the log.
pub struct Outcome {
    /// Bytes the device wrote into the chain (data and status).
    pub written: u32,
    /// Why it failed, when the guest sent something malformed.
    pub malformed: Option<String>,
    /// Why it failed, when the backend failed.
    pub io_error: Option<std::io::Error>,
    /// "read" for reads, "write" for everything that changes the disk.
    pub operation: &'static str,
}

fn done(written: usize) -> Outcome {
    Outcome {
        written: written as u32,
        malformed: None,
        io_error: None,
        operation: "read",
    }
}

/// Serves one request.
pub fn serve(
    chain: DescriptorChain<&GuestMemoryMmap>,
    memory: &GuestMemoryMmap,
    disk: &mut Disk<'_>,
) -> Outcome {
    let malformed = |why: String| Outcome {
        written: 0,
        malformed: Some(why),
        io_error: None,
        operation: "read",
    };
    let (mut reader, mut writer) = match (
        Reader::new(memory, chain.clone()),
        Writer::new(memory, chain),
    ) {
        (Ok(reader), Ok(writer)) => (reader, writer),
        (Err(error), _) | (_, Err(error)) => {
            return malformed(format!("an unusable chain: {error}"))
        }
    };
    let Some(data_len) = writer.available_bytes().checked_sub(1) else {
        return malformed("no byte for the status".into());
    };
    let mut status = match writer.split_at(data_len) {
        Ok(status) => status,
        Err(error) => return malformed(format!("an unusable status byte: {error}")),
    };
    let mut header = [0u8; 16];
    let (status_byte, outcome) = if reader.read_exact(&mut header).is_err() {
        (IOERR, malformed("a header shorter than 16 bytes".into()))
    } else {
        let kind = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let mut sector = [0u8; 8];
        sector.copy_from_slice(&header[8..]);
        let (status, outcome) = execute(
            kind,
            u64::from_le_bytes(sector),
            &mut reader,
            &mut writer,
            disk,
        );
        let operation = if kind == IN || kind == GET_ID {
            "read"
        } else {
            "write"
        };
        (
            status,
            Outcome {
                operation,
                ..outcome
            },
        )
    };
    if status.write_all(&[status_byte]).is_err() {
        return malformed("a status byte the device cannot write".into());
    }
    Outcome {
        written: outcome.written + 1,
        ..outcome
    }
}

/// The byte range a request touches, if the disk has it.
fn range(sector: u64, len: usize, capacity: u64) -> Result<u64, String> {
    if !(len as u64).is_multiple_of(SECTOR) {
        return Err(format!("{len} bytes of data, not whole sectors"));
    }
    let start = sector.checked_mul(SECTOR).filter(|start| {
        start
            .checked_add(len as u64)
            .is_some_and(|end| end <= capacity)
    });
    start
        .ok_or_else(|| format!("sector {sector} + {len} bytes, beyond the disk's {capacity} bytes"))
}

fn execute(
    kind: u32,
    sector: u64,
    reader: &mut Reader<'_>,
    writer: &mut Writer<'_>,
    disk: &mut Disk<'_>,
) -> (u8, Outcome) {
    let failed = |status: u8, why: String| {
        (
            status,
            Outcome {
                written: 0,
                malformed: Some(why),
                io_error: None,
                operation: "read",
            },
        )
    };
    let io_failed = |error: std::io::Error| {
        (
            IOERR,
            Outcome {
                written: 0,
                malformed: None,
                io_error: Some(error),
                operation: "read",
            },
        )
    };
    match kind {
        IN => {
            let len = writer.available_bytes();
            let start = match range(sector, len, disk.capacity_bytes) {
                Ok(start) => start,
                Err(why) => return failed(IOERR, why),
            };
            match copy_to_guest(disk.image, start, len, writer) {
                Ok(()) => (OK, done(len)),
                Err(error) => io_failed(error),
            }
        }
        OUT if disk.readonly => failed(IOERR, "a write to a read-only disk".into()),
        OUT => {
            let len = reader.available_bytes();
            let start = match range(sector, len, disk.capacity_bytes) {
                Ok(start) => start,
                Err(why) => return failed(IOERR, why),
            };
            match copy_to_disk(reader, disk.image, start, len) {
                Ok(()) => (OK, done(0)),
                Err(error) => io_failed(error),
            }
        }
        FLUSH => match disk.image.flush() {
            Ok(()) => (OK, done(0)),
            Err(error) => io_failed(error),
        },
        GET_ID => {
            let len = writer.available_bytes().min(ID_BYTES);
            match writer.write_all(&disk.id[..len]) {
                Ok(()) => (OK, done(len)),
                Err(error) => failed(IOERR, format!("an unwritable ID buffer: {error}")),
            }
        }
        DISCARD | WRITE_ZEROES if disk.readonly => failed(
            IOERR,
            "a discard or write-zeroes on a read-only disk".into(),
        ),
        DISCARD | WRITE_ZEROES => {
            let segments = match read_segments(reader, disk.capacity_bytes) {
                Ok(segments) => segments,
                Err(why) => return failed(IOERR, why),
            };
            for (start, len, unmap) in segments {
                let result = if kind == DISCARD {
                    disk.image.discard(start, len)
                } else if unmap {
                    disk.image.write_zeroes(start, len)
                } else {
                    write_zero_bytes(disk.image, start, len)
                };
                if let Err(error) = result {
                    return io_failed(error);
                }
            }
            (OK, done(0))
        }
        other => failed(
            UNSUPP,
            format!("request type {other}, which vmpod does not offer"),
        ),
    }
}

/// The byte ranges (start, length, unmap allowed) of a discard or
/// write-zeroes request, all checked before any is carried out.
fn read_segments(reader: &mut Reader<'_>, capacity: u64) -> Result<Vec<(u64, u64, bool)>, String> {
    let bytes = reader.available_bytes();
    let count = bytes / SEGMENT_BYTES;
    if count == 0 || !bytes.is_multiple_of(SEGMENT_BYTES) || count > MAX_SEGMENTS {
        return Err(format!(
            "{bytes} bytes of segments (whole 16-byte segments, 1 to {MAX_SEGMENTS})"
        ));
    }
    let mut segments = Vec::with_capacity(count);
    for _ in 0..count {
        let mut segment = [0u8; SEGMENT_BYTES];
        reader
            .read_exact(&mut segment)
            .map_err(|error| format!("an unreadable segment: {error}"))?;
        let field = |at: usize| {
            u32::from_le_bytes([
                segment[at],
                segment[at + 1],
                segment[at + 2],
                segment[at + 3],
            ])
        };
        let mut sector = [0u8; 8];
        sector.copy_from_slice(&segment[..8]);
        let (sector, sectors, flags) = (u64::from_le_bytes(sector), field(8), field(12));
        if sectors > MAX_SEGMENT_SECTORS || flags & !1 != 0 {
            return Err(format!(
                "a segment of {sectors} sectors with flags {flags:#x}"
            ));
        }
        let len = u64::from(sectors) * SECTOR;
        let start = range(sector, len as usize, capacity)?;
        segments.push((start, len, flags & 1 != 0));
    }
    Ok(segments)
}

/// Write-zeroes without the unmap flag: the zeroes must be allocated.
fn write_zero_bytes(image: &mut dyn DiskImage, start: u64, len: u64) -> std::io::Result<()> {
    let zeroes = vec![0u8; len.min(CHUNK as u64) as usize];
    let mut done = 0;
    while done < len {
        let piece = (len - done).min(zeroes.len() as u64) as usize;
        image.write_at(&zeroes[..piece], start + done)?;
        done += piece as u64;
    }
    Ok(())
}

fn copy_to_guest(
    image: &mut dyn DiskImage,
    start: u64,
    len: usize,
    writer: &mut Writer<'_>,
) -> std::io::Result<()> {
    let mut buffer = vec![0u8; len.min(CHUNK)];
    let mut done = 0;
    while done < len {
        let piece = &mut buffer[..(len - done).min(CHUNK)];
        image.read_at(piece, start + done as u64)?;
        writer.write_all(piece)?;
        done += piece.len();
    }
    Ok(())
}

fn copy_to_disk(
    reader: &mut Reader<'_>,
    image: &mut dyn DiskImage,
    start: u64,
    len: usize,
) -> std::io::Result<()> {
    let mut buffer = vec![0u8; len.min(CHUNK)];
    let mut done = 0;
    while done < len {
        let piece = &mut buffer[..(len - done).min(CHUNK)];
        reader.read_exact(piece)?;
        image.write_at(piece, start + done as u64)?;
        done += piece.len();
    }
    Ok(())
}
