//! Booting a disk as its own bootloader would, without firmware or real
//! mode (the idea of Xen's pygrub): read the partition table, open the
//! file systems that may hold `/boot`, and choose the kernel, initrd and
//! command line from the image's own configuration — Boot Loader
//! Specification entries, extlinux/syslinux, GRUB's `grub.cfg` (or GRUB
//! Legacy's `menu.lst`), and last the `/vmlinuz` + `/initrd.img` links.
//!
//! The disk is hostile input: every size and count is bounded, and every
//! failure is an error naming the disk and what was wrong. May import
//! `images` only. Runs on the VMM thread before each boot, and on the main
//! thread for `vmpod inspect-disk`.

mod bls;
mod choose;
mod extlinux;
pub mod filesystems;
mod grub;
pub mod partitions;
#[cfg(test)]
mod tests;

use std::io;

use crate::images::{DiskImage, Shared};
use filesystems::{FsKind, Mounted};

pub use choose::{BootEntry, Chosen, FsSel, Location};

/// A kernel larger than this is not a kernel (Debian's is 8–15 MiB).
pub const MAX_KERNEL: u64 = 256 << 20;
/// The largest initrd vmpod loads (it must fit in guest memory too).
pub const MAX_INITRD: u64 = 2 << 30;
/// Configuration files (grub.cfg, entries, grubenv) larger than this are
/// refused; the largest real grub.cfg is a few hundred KiB.
pub const MAX_CONFIG: u64 = 1 << 20;

/// Reads bytes of a disk, or of a range of it.
pub trait DiskRead {
    fn size(&self) -> u64;
    fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

/// How many bytes one file-system operation may still read. A hostile
/// file system can make its metadata loop (a FAT cluster chain pointing
/// back at itself, full of deleted entries), and a reader following it
/// would never return; with a budget it fails instead.
#[derive(Clone, Debug, Default)]
pub struct ReadBudget(std::rc::Rc<std::cell::Cell<u64>>);

impl ReadBudget {
    pub fn set(&self, bytes: u64) {
        self.0.set(bytes);
    }

    fn spend(&self, bytes: usize) -> io::Result<()> {
        let left = self.0.get();
        match left.checked_sub(bytes as u64) {
            Some(left) => {
                self.0.set(left);
                Ok(())
            }
            None => Err(io::Error::other(
                "one lookup read more than vmpod allows: the file system's metadata loops or is damaged",
            )),
        }
    }
}

/// A partition (or the whole disk) of a shared image, readable in bounds.
#[derive(Clone, Debug)]
pub struct PartitionReader {
    disk: Shared,
    start: u64,
    size: u64,
    budget: Option<ReadBudget>,
}

impl PartitionReader {
    pub fn whole(disk: Shared) -> Self {
        let size = disk.size();
        Self {
            disk,
            start: 0,
            size,
            budget: None,
        }
    }

    fn part(&self, start: u64, size: u64) -> Self {
        Self {
            disk: self.disk.clone(),
            start: self.start + start,
            size,
            budget: None,
        }
    }

    /// The same range, with every read charged to `budget`.
    pub fn with_budget(mut self, budget: ReadBudget) -> Self {
        self.budget = Some(budget);
        self
    }
}

impl DiskRead for PartitionReader {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let end = offset.checked_add(buf.len() as u64);
        if end.is_none_or(|end| end > self.size) {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "a read of {} bytes at {offset} goes past the end ({} bytes)",
                    buf.len(),
                    self.size
                ),
            ));
        }
        if let Some(budget) = &self.budget {
            budget.spend(buf.len())?;
        }
        self.disk.read_at(buf, self.start + offset)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DiskBootError {
    #[error("boot disk {disk}: {source}")]
    Table {
        disk: String,
        #[source]
        source: partitions::TableError,
    },
    #[error("boot disk {disk}: {what}: {source}")]
    File {
        disk: String,
        what: String,
        #[source]
        source: filesystems::FsError,
    },
    #[error("boot disk {disk}: {config}: {problem}")]
    Config {
        disk: String,
        config: String,
        problem: String,
    },
    #[error("boot disk {disk}: {entry} names {path}, which is not on the disk")]
    Missing {
        disk: String,
        entry: String,
        path: String,
    },
    #[error("boot disk {disk}: no Linux kernel vmpod can boot: {}", reasons.join("; "))]
    NothingToBoot { disk: String, reasons: Vec<String> },
    #[error("boot disk {disk}: the kernel {version} is built without virtio-mmio ({config} has no CONFIG_VIRTIO_MMIO=y or =m), so it would not find its disks; vmpod has no PCI transport yet (CentOS Stream 9 and RHEL 9 kernels are like this)")]
    NoVirtioMmio {
        disk: String,
        version: String,
        config: String,
    },
    #[error("boot disk {disk}: cannot stage the {what} for loading")]
    Stage {
        disk: String,
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

/// One file system found on the disk.
#[derive(Debug, Clone)]
pub struct FoundFs {
    /// The partition number, or `None` for a disk without a table.
    pub partition: Option<u32>,
    pub kind: FsKind,
    pub uuid: String,
    pub label: String,
    /// Why it could not be opened, for a damaged one.
    pub problem: Option<String>,
}

/// What `vmpod inspect-disk` prints, and what a boot is chosen from.
pub struct Inspection {
    pub table: partitions::Table,
    pub partitions: Vec<partitions::Partition>,
    pub filesystems: Vec<FoundFs>,
    /// The configuration the entries came from, or why there is none.
    pub outcome: Result<Chosen, DiskBootError>,
    disk: Disk,
}

/// The open file systems of a disk, by position in `found`.
pub(crate) struct Disk {
    pub name: String,
    pub found: Vec<FoundFs>,
    pub mounted: Vec<Option<Mounted>>,
}

/// Reads a disk's partitions and file systems and chooses what to boot.
pub fn inspect_disk(image: Shared, disk_name: &str) -> Inspection {
    let whole = PartitionReader::whole(image);
    let mut reader = whole.clone();
    let mut disk = Disk {
        name: disk_name.to_owned(),
        found: Vec::new(),
        mounted: Vec::new(),
    };
    let (table, parts) = match partitions::read(&mut reader) {
        Ok(read) => read,
        Err(source) => {
            return Inspection {
                table: partitions::Table::None,
                partitions: Vec::new(),
                filesystems: Vec::new(),
                outcome: Err(DiskBootError::Table {
                    disk: disk_name.to_owned(),
                    source,
                }),
                disk,
            }
        }
    };
    let readers: Vec<(Option<u32>, PartitionReader)> = if table == partitions::Table::None {
        vec![(None, whole)]
    } else {
        parts
            .iter()
            .map(|part| (Some(part.number), whole.part(part.start, part.size)))
            .collect()
    };
    for (partition, mut reader) in readers {
        let kind = filesystems::probe(&mut reader);
        let (mounted, problem) = match Mounted::open(kind, reader) {
            Some(Ok(mounted)) => (Some(mounted), None),
            Some(Err(problem)) => (None, Some(problem)),
            None => (None, None),
        };
        disk.found.push(FoundFs {
            partition,
            kind,
            uuid: mounted.as_ref().map(Mounted::uuid).unwrap_or_default(),
            label: mounted.as_ref().map(Mounted::label).unwrap_or_default(),
            problem,
        });
        disk.mounted.push(mounted);
    }
    let outcome = choose::choose(&disk);
    Inspection {
        table,
        partitions: parts,
        filesystems: disk.found.clone(),
        outcome,
        disk,
    }
}

/// What was staged for a boot: the kernel and initrd went to the sinks.
#[derive(Debug)]
pub struct Staged {
    pub cmdline: String,
    /// Bytes written to the initrd sink (0: no initrd).
    pub initrd_bytes: u64,
    /// `/boot/vmlinuz-… from partition 1 (/boot/grub/grub.cfg on partition 1: "Debian GNU/Linux")`.
    pub description: String,
}

/// Where staged files go, and how much they may hold.
pub struct Sinks<'a> {
    pub kernel: &'a mut dyn io::Write,
    pub initrd: &'a mut dyn io::Write,
    /// The initrds' total may not exceed this (nor [`MAX_INITRD`]): more
    /// could not fit in guest memory anyway.
    pub initrd_limit: u64,
}

/// Chooses the boot entry of `image` and copies its kernel and its
/// initrds (concatenated, as Linux accepts them) into the sinks.
pub fn stage(image: Shared, disk_name: &str, sinks: Sinks) -> Result<Staged, DiskBootError> {
    let inspection = inspect_disk(image, disk_name);
    let chosen = inspection.outcome?;
    choose::stage(&inspection.disk, &chosen, sinks)
}
