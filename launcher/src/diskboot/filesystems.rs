//! The file systems a boot disk's `/boot` may live on: ext2/3/4 (through
//! `ext4-view`, which replays the journal, so a kernel the guest just
//! installed is seen) and FAT (through `fatfs`, read-only). Others are
//! recognised by their signature so that an error can name them. Every
//! read is bounded: a file larger than its limit is an error, not a read.

use std::io::{Read, Seek, SeekFrom, Write};

use super::{DiskRead, PartitionReader, ReadBudget};

/// What one lookup or directory listing may read (metadata only): a
/// directory of 4096 FAT entries is 128 KiB.
const LOOKUP_BUDGET: u64 = 16 << 20;
/// What opening may read: ext4 replays its journal (at most 1 GiB).
const OPEN_BUDGET: u64 = 2 << 30;

/// Directory listings longer than this are cut (a hostile disk could hold
/// millions of entries in /boot/loader/entries).
const MAX_LISTED: usize = 4096;

/// What a partition holds, by its on-disk signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsKind {
    Ext,
    Fat,
    Xfs,
    Btrfs,
    Lvm,
    Luks,
    Swap,
    Squashfs,
    Iso9660,
    Unknown,
}

impl FsKind {
    pub fn name(self) -> &'static str {
        match self {
            FsKind::Ext => "ext2/3/4",
            FsKind::Fat => "FAT",
            FsKind::Xfs => "xfs",
            FsKind::Btrfs => "btrfs",
            FsKind::Lvm => "LVM physical volume",
            FsKind::Luks => "LUKS (encrypted)",
            FsKind::Swap => "swap",
            FsKind::Squashfs => "squashfs",
            FsKind::Iso9660 => "ISO 9660",
            FsKind::Unknown => "unknown contents",
        }
    }
}

/// Recognises a file system by the magic numbers at their fixed places.
pub fn probe(reader: &mut PartitionReader) -> FsKind {
    let mut head = vec![0u8; 4096];
    let mut head_len = head.len().min(reader.size() as usize);
    if reader.read_exact_at(&mut head[..head_len], 0).is_err() {
        head_len = 0;
    }
    let head = &head[..head_len];
    let at = |offset: usize, magic: &[u8]| head.get(offset..offset + magic.len()) == Some(magic);
    let mut ext_magic = [0u8; 2];
    let mut btrfs_magic = [0u8; 8];
    let mut iso_magic = [0u8; 5];
    let ext = reader.read_exact_at(&mut ext_magic, 1024 + 56).is_ok() && ext_magic == [0x53, 0xef];
    if ext {
        FsKind::Ext
    } else if at(0, b"XFSB") {
        FsKind::Xfs
    } else if reader.read_exact_at(&mut btrfs_magic, 0x10040).is_ok() && &btrfs_magic == b"_BHRfS_M"
    {
        FsKind::Btrfs
    } else if at(512, b"LABELONE") {
        FsKind::Lvm
    } else if at(0, b"LUKS\xba\xbe") {
        FsKind::Luks
    } else if at(4086, b"SWAPSPACE2") || at(4086, b"SWAP-SPACE") {
        FsKind::Swap
    } else if at(0, b"hsqs") {
        FsKind::Squashfs
    } else if reader.read_exact_at(&mut iso_magic, 0x8001).is_ok() && &iso_magic == b"CD001" {
        FsKind::Iso9660
    } else if head.len() >= 512
        && head[510..512] == [0x55, 0xaa]
        && (at(54, b"FAT") || at(82, b"FAT32"))
    {
        FsKind::Fat
    } else {
        FsKind::Unknown
    }
}

/// Why a file could not be read from a file system.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("{path} is {size} bytes, more than the {limit} bytes vmpod reads for it")]
    TooBig { path: String, size: u64, limit: u64 },
    #[error("{path}: {reason}")]
    Unreadable { path: String, reason: String },
}

/// A file system vmpod can read files from, each operation on a read
/// budget.
pub struct Mounted {
    fs: Fs,
    budget: ReadBudget,
}

enum Fs {
    Ext4(ext4_view::Ext4),
    Fat(Box<fatfs::FileSystem<ReadOnly>>),
}

/// fatfs wants storage it could write; this one refuses writes.
pub struct ReadOnly {
    reader: PartitionReader,
    position: u64,
}

impl Read for ReadOnly {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.reader.size().saturating_sub(self.position);
        let len = buf.len().min(left as usize);
        self.reader.read_exact_at(&mut buf[..len], self.position)?;
        self.position += len as u64;
        Ok(len)
    }
}

impl Write for ReadOnly {
    fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
        Err(std::io::Error::from(std::io::ErrorKind::PermissionDenied))
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Seek for ReadOnly {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let target = match to {
            SeekFrom::Start(offset) => Some(offset),
            SeekFrom::End(delta) => self.reader.size().checked_add_signed(delta),
            SeekFrom::Current(delta) => self.position.checked_add_signed(delta),
        };
        self.position =
            target.ok_or_else(|| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        Ok(self.position)
    }
}

impl ext4_view::Ext4Read for PartitionReader {
    fn read(
        &mut self,
        start_byte: u64,
        dst: &mut [u8],
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        self.read_exact_at(dst, start_byte).map_err(Into::into)
    }
}

fn ext4_error(path: &str, error: ext4_view::Ext4Error) -> FsError {
    FsError::Unreadable {
        path: path.to_owned(),
        reason: error.to_string(),
    }
}

fn fat_error(path: &str, error: std::io::Error) -> FsError {
    FsError::Unreadable {
        path: path.to_owned(),
        reason: error.to_string(),
    }
}

fn is_not_found(error: &ext4_view::Ext4Error) -> bool {
    matches!(
        error,
        ext4_view::Ext4Error::NotFound | ext4_view::Ext4Error::NotADirectory
    )
}

impl Mounted {
    /// Opens the file system of `kind` on `reader`; `None` for kinds vmpod
    /// cannot read, an error text for a damaged one.
    pub fn open(kind: FsKind, reader: PartitionReader) -> Option<Result<Mounted, String>> {
        let budget = ReadBudget::default();
        budget.set(OPEN_BUDGET);
        let reader = reader.with_budget(budget.clone());
        let fs = match kind {
            FsKind::Ext => ext4_view::Ext4::load(Box::new(reader))
                .map(Fs::Ext4)
                .map_err(|error| error.to_string()),
            FsKind::Fat => {
                let storage = ReadOnly {
                    reader,
                    position: 0,
                };
                fatfs::FileSystem::new(storage, fatfs::FsOptions::new())
                    .map(|fs| Fs::Fat(Box::new(fs)))
                    .map_err(|error| error.to_string())
            }
            _ => return None,
        };
        Some(fs.map(|fs| Mounted { fs, budget }))
    }

    /// The file system, with `bytes` to read for what comes next.
    fn budgeted(&self, bytes: u64) -> &Fs {
        self.budget.set(bytes);
        &self.fs
    }

    /// The UUID as `blkid` prints it (and `root=UUID=` expects it).
    pub fn uuid(&self) -> String {
        match self.budgeted(LOOKUP_BUDGET) {
            Fs::Ext4(fs) => fs.uuid().to_string(),
            Fs::Fat(fs) => {
                let id = fs.volume_id();
                format!("{:04X}-{:04X}", id >> 16, id & 0xffff)
            }
        }
    }

    pub fn label(&self) -> String {
        match self.budgeted(LOOKUP_BUDGET) {
            Fs::Ext4(fs) => fs.label().to_str().unwrap_or("").to_owned(),
            Fs::Fat(fs) => fs.volume_label().trim_end().to_owned(),
        }
    }

    /// The size of a regular file (following symlinks), `None` if absent.
    pub fn file_size(&self, path: &str) -> Result<Option<u64>, FsError> {
        match self.budgeted(LOOKUP_BUDGET) {
            Fs::Ext4(fs) => match fs.metadata(path) {
                Ok(metadata) if metadata.is_dir() => Ok(None),
                Ok(metadata) => Ok(Some(metadata.len())),
                Err(error) if is_not_found(&error) => Ok(None),
                Err(error) => Err(ext4_error(path, error)),
            },
            Fs::Fat(fs) => {
                let relative = path.trim_start_matches('/');
                let (parent, name) = relative.rsplit_once('/').unwrap_or(("", relative));
                let entries = match fat_dir(fs, parent).map_err(|error| fat_error(path, error))? {
                    Some(dir) => dir,
                    None => return Ok(None),
                };
                for entry in entries.iter().take(MAX_LISTED) {
                    let entry = entry.map_err(|error| fat_error(path, error))?;
                    if entry.is_file() && entry.file_name().eq_ignore_ascii_case(name) {
                        return Ok(Some(entry.len()));
                    }
                }
                Ok(None)
            }
        }
    }

    /// A whole file, at most `limit` bytes; `None` if it does not exist.
    pub fn read(&self, path: &str, limit: u64) -> Result<Option<Vec<u8>>, FsError> {
        let mut contents = Vec::new();
        match self.copy(path, limit, &mut contents)? {
            Some(_) => Ok(Some(contents)),
            None => Ok(None),
        }
    }

    /// Streams a file of at most `limit` bytes into `sink`; returns its
    /// size, or `None` if it does not exist.
    pub fn copy(
        &self,
        path: &str,
        limit: u64,
        sink: &mut dyn Write,
    ) -> Result<Option<u64>, FsError> {
        let Some(size) = self.file_size(path)? else {
            return Ok(None);
        };
        if size > limit {
            return Err(FsError::TooBig {
                path: path.to_owned(),
                size,
                limit,
            });
        }
        let copied = match self.budgeted(size.saturating_add(LOOKUP_BUDGET)) {
            Fs::Ext4(fs) => {
                let mut file = fs.open(path).map_err(|error| ext4_error(path, error))?;
                std::io::copy(&mut (&mut file).take(size), sink)
            }
            Fs::Fat(fs) => {
                let mut file = fs
                    .root_dir()
                    .open_file(path.trim_start_matches('/'))
                    .map_err(|error| fat_error(path, error))?;
                std::io::copy(&mut (&mut file).take(size), sink)
            }
        }
        .map_err(|error| fat_error(path, error))?;
        if copied != size {
            return Err(FsError::Unreadable {
                path: path.to_owned(),
                reason: format!("ends after {copied} of its {size} bytes"),
            });
        }
        Ok(Some(size))
    }

    /// The names in a directory (not `.` and `..`), at most a few
    /// thousand; empty if it does not exist.
    pub fn list(&self, dir: &str) -> Result<Vec<String>, FsError> {
        let mut names = Vec::new();
        match self.budgeted(LOOKUP_BUDGET) {
            Fs::Ext4(fs) => {
                let entries = match fs.read_dir(dir) {
                    Ok(entries) => entries,
                    Err(error) if is_not_found(&error) => return Ok(names),
                    Err(error) => return Err(ext4_error(dir, error)),
                };
                for entry in entries.take(MAX_LISTED) {
                    let entry = entry.map_err(|error| ext4_error(dir, error))?;
                    if let Ok(name) = entry.file_name().as_str() {
                        if name != "." && name != ".." {
                            names.push(name.to_owned());
                        }
                    }
                }
            }
            Fs::Fat(fs) => {
                let found = fat_dir(fs, dir.trim_start_matches('/'))
                    .map_err(|error| fat_error(dir, error))?;
                let Some(entries) = found else {
                    return Ok(names);
                };
                for entry in entries.iter().take(MAX_LISTED) {
                    let name = entry.map_err(|error| fat_error(dir, error))?.file_name();
                    if name != "." && name != ".." {
                        names.push(name);
                    }
                }
            }
        }
        names.sort();
        Ok(names)
    }
}

type FatDir<'a> = fatfs::Dir<'a, ReadOnly>;

/// A directory, `None` when it does not exist (or is not a directory).
fn fat_dir<'a>(
    fs: &'a fatfs::FileSystem<ReadOnly>,
    relative: &str,
) -> std::io::Result<Option<FatDir<'a>>> {
    let root = fs.root_dir();
    if relative.is_empty() {
        return Ok(Some(root));
    }
    match root.open_dir(relative) {
        Ok(dir) => Ok(Some(dir)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        // fatfs says InvalidInput when a path component is a file.
        Err(error) if error.kind() == std::io::ErrorKind::InvalidInput => Ok(None),
        Err(error) => Err(error),
    }
}
