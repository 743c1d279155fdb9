//! qcow2 images through `imago` (synchronous build: no async runtime):
//! backing chains, compressed clusters, zero clusters, refcounts on write.
//! Backing files are opened read-only through `ChainGate`, which refuses a
//! chain that loops or is longer than `MAX_CHAIN`, before imago would
//! recurse forever.

use std::io;
use std::path::{Path, PathBuf};

use imago::file::File as ImagoFile;
use imago::format::gate::ImplicitOpenGate;
use imago::{FormatAccess, FormatCreateBuilder, FormatDriverBuilder, Storage, StorageOpenOptions};

use super::{DiskImage, Format, ImageError};

/// The most images one chain may hold (the top one included).
pub const MAX_CHAIN: usize = 16;

type Image = imago::qcow2::Qcow2<ImagoFile>;

#[derive(Debug)]
pub struct Qcow2 {
    access: FormatAccess<ImagoFile>,
}

/// Lets imago open the files a chain names, remembering each so that a
/// chain that comes back to one of them is refused.
#[derive(Clone, Debug, Default)]
struct ChainGate {
    opened: Vec<PathBuf>,
}

impl ImplicitOpenGate<ImagoFile> for ChainGate {
    fn open_format<F: FormatDriverBuilder<ImagoFile>>(
        &mut self,
        builder: F,
    ) -> io::Result<FormatAccess<ImagoFile>> {
        // The nested image's own backing files go through a gate that
        // knows everything opened above it.
        Ok(FormatAccess::new(builder.open(self.clone())?))
    }

    fn open_storage(&mut self, options: StorageOpenOptions) -> io::Result<ImagoFile> {
        let named = options.get_filename().map(Path::to_owned);
        if let Some(path) = &named {
            let canonical = path.canonicalize().unwrap_or_else(|_| path.clone());
            if self.opened.contains(&canonical) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "the backing chain loops: {} is its own backing file, through {}",
                        canonical.display(),
                        chain_text(&self.opened)
                    ),
                ));
            }
            if self.opened.len() >= MAX_CHAIN {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "the backing chain is longer than {MAX_CHAIN} images: {} …",
                        chain_text(&self.opened)
                    ),
                ));
            }
            self.opened.push(canonical);
        }
        ImagoFile::open(options)
    }
}

fn chain_text(chain: &[PathBuf]) -> String {
    chain
        .iter()
        .map(|path| path.display().to_string())
        .collect::<Vec<_>>()
        .join(" → ")
}

/// imago's errors carry their context in the message; keep all of it.
fn reason(error: &io::Error) -> String {
    error.to_string()
}

impl Qcow2 {
    pub fn open(path: &Path, writable: bool) -> Result<Self, ImageError> {
        let image = Image::builder_path(path)
            .write(writable)
            .open(ChainGate::default())
            .map_err(|error| ImageError::Qcow2 {
                path: path.to_owned(),
                reason: reason(&error),
            })?;
        Ok(Qcow2 {
            access: FormatAccess::new(image),
        })
    }

    /// Formats `overlay` as a qcow2 image of `size` bytes over `base`
    /// (an absolute path, opened read-only) and opens it for writing.
    pub fn create_overlay(
        base: &Path,
        base_format: Format,
        size: u64,
        overlay: &Path,
    ) -> Result<Self, ImageError> {
        let failed = |source: io::Error| ImageError::Overlay {
            path: overlay.to_owned(),
            source,
        };
        if let Some(parent) = overlay.parent() {
            std::fs::create_dir_all(parent).map_err(failed)?;
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(overlay)
            .map_err(failed)?;
        let options = StorageOpenOptions::new().write(true).filename(overlay);
        let storage = ImagoFile::from_open_file(file, options).map_err(failed)?;
        let base_name = base.to_str().ok_or_else(|| {
            failed(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("the base image's path {} is not UTF-8", base.display()),
            ))
        })?;
        let image = Image::create_builder(storage)
            .size(size)
            .backing(base_name.to_owned(), base_format.name().to_owned())
            .create_open(ChainGate::default(), |storage| {
                Ok(Image::builder(storage).write(true))
            })
            .map_err(failed)?;
        Ok(Qcow2 {
            access: FormatAccess::new(image),
        })
    }
}

impl DiskImage for Qcow2 {
    fn size(&self) -> u64 {
        self.access.size()
    }

    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.access.read(buf, offset)
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.access.write(buf, offset)
    }

    fn flush(&mut self) -> io::Result<()> {
        // Metadata caches to the file, then the file to the disk.
        self.access.flush()?;
        self.access.sync()
    }

    fn write_zeroes(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.access.write_zeroes(offset, len)
    }

    fn discard(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.access.discard_to_any(offset, len)
    }

    fn format(&self) -> Format {
        Format::Qcow2
    }
}
