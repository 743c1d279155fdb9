//! Disk images as byte ranges: raw files and block devices (`raw`), qcow2
//! images with their backing chains (`qcow2`, through the `imago` crate),
//! and copy-on-write overlays that keep a read-only base unchanged. The
//! virtio-blk device serves a `DiskImage` without knowing its format; so
//! will the boot loader that reads a cloud image's `/boot`.
//!
//! Which format a file is: a disk the guest can write is qcow2 only when
//! its name says so (`.qcow2`), because a guest that may write a raw disk
//! could otherwise write a qcow2 header naming any host file as its
//! backing file and read that file on the next start. A read-only base
//! (a containerDisk) is probed by its magic, as KubeVirt does.
//!
//! VMM thread: opened before the first boot, served on queue notifications.

mod qcow2;
mod raw;

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub use qcow2::MAX_CHAIN;

/// A virtual disk: reads and writes at byte offsets within `size()`.
pub trait DiskImage: Send + std::fmt::Debug {
    /// The virtual size in bytes.
    fn size(&self) -> u64;
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes everything written so far durable (fdatasync or its
    /// equivalent for the format's metadata too).
    fn flush(&mut self) -> io::Result<()>;
    /// Makes the range read as zeroes, deallocating it where it can.
    fn write_zeroes(&mut self, offset: u64, len: u64) -> io::Result<()>;
    /// Tells the backend the range is unused; it may read as anything after.
    fn discard(&mut self, offset: u64, len: u64) -> io::Result<()>;
    /// The format, for `query-block`.
    fn format(&self) -> Format;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Raw,
    Qcow2,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot open {}: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is named as a qcow2 image but is not one (it does not start with the qcow2 magic QFI\\xfb); rename it if it is raw, or convert it with qemu-img convert -O qcow2", path.display())]
    NotQcow2 { path: PathBuf },
    #[error("{} is not a usable qcow2 image: {reason}", path.display())]
    Qcow2 { path: PathBuf, reason: String },
    #[error("cannot create the copy-on-write overlay {}: {source}; check that the scratch directory is writable and has room", path.display())]
    Overlay {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

const QCOW2_MAGIC: &[u8; 4] = b"QFI\xfb";

/// The format `file` starts with (qcow2 magic or not).
pub fn probe(file: &File) -> io::Result<Format> {
    let mut magic = [0u8; 4];
    match file.read_exact_at(&mut magic, 0) {
        Ok(()) if &magic == QCOW2_MAGIC => Ok(Format::Qcow2),
        Ok(()) => Ok(Format::Raw),
        Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => Ok(Format::Raw),
        Err(error) => Err(error),
    }
}

fn named_qcow2(path: &Path) -> bool {
    path.extension()
        .is_some_and(|extension| extension.eq_ignore_ascii_case("qcow2"))
}

/// Opens a disk the definition names by path: qcow2 when the name ends in
/// `.qcow2` (and then it must be one), raw otherwise. A raw-named file
/// that holds a qcow2 image is served raw, with a warning, as KubeVirt
/// serves a PVC's `disk.img`.
pub fn open(path: &Path, writable: bool) -> Result<Box<dyn DiskImage>, ImageError> {
    let file = raw::open_file(path, writable)?;
    let format = probe(&file).map_err(|source| ImageError::Open {
        path: path.to_owned(),
        source,
    })?;
    match (named_qcow2(path), format) {
        (true, Format::Qcow2) => {
            drop(file);
            Ok(Box::new(qcow2::Qcow2::open(path, writable)?))
        }
        (true, Format::Raw) => Err(ImageError::NotQcow2 {
            path: path.to_owned(),
        }),
        (false, format) => {
            if format == Format::Qcow2 {
                log::warn!(
                    "{} holds a qcow2 image but is served raw, as its name does not end in .qcow2 (a guest-writable disk's format is never guessed); rename it to use it as qcow2",
                    path.display()
                );
            }
            Ok(Box::new(raw::Raw::new(path, file)?))
        }
    }
}

/// Opens a read-only base (a containerDisk), raw or qcow2 by its magic.
pub fn open_base(path: &Path) -> Result<(Box<dyn DiskImage>, Format), ImageError> {
    let file = raw::open_file(path, false)?;
    let format = probe(&file).map_err(|source| ImageError::Open {
        path: path.to_owned(),
        source,
    })?;
    let image: Box<dyn DiskImage> = match format {
        Format::Qcow2 => Box::new(qcow2::Qcow2::open(path, false)?),
        Format::Raw => Box::new(raw::Raw::new(path, file)?),
    };
    Ok((image, format))
}

/// A fresh qcow2 overlay at `overlay` over the read-only `base`: guest
/// writes land in the overlay, the base is never opened for writing. What
/// was in `overlay` before is replaced.
pub fn create_overlay(base: &Path, overlay: &Path) -> Result<Box<dyn DiskImage>, ImageError> {
    let (image, format) = open_base(base)?;
    let size = image.size();
    drop(image);
    let base = std::path::absolute(base).map_err(|source| ImageError::Open {
        path: base.to_owned(),
        source,
    })?;
    Ok(Box::new(qcow2::Qcow2::create_overlay(
        &base, format, size, overlay,
    )?))
}

/// One image used by two owners on the VMM thread: the guest's virtio-blk
/// device, and vmpod's boot loader, which reads the boot disk's `/boot`
/// before each boot, so that a kernel the guest installed in its overlay
/// is the one that boots next.
#[derive(Clone, Debug)]
pub struct Shared(std::sync::Arc<std::sync::Mutex<Box<dyn DiskImage>>>);

impl Shared {
    pub fn new(image: Box<dyn DiskImage>) -> Self {
        Self(std::sync::Arc::new(std::sync::Mutex::new(image)))
    }

    fn image(&self) -> std::sync::MutexGuard<'_, Box<dyn DiskImage>> {
        // A panic while holding it cannot leave the image half-updated in
        // a way a later read would misreport: the format keeps its own
        // consistency, so carry on with what is there.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl DiskImage for Shared {
    fn size(&self) -> u64 {
        self.image().size()
    }
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.image().read_at(buf, offset)
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.image().write_at(buf, offset)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.image().flush()
    }
    fn write_zeroes(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.image().write_zeroes(offset, len)
    }
    fn discard(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.image().discard(offset, len)
    }
    fn format(&self) -> Format {
        self.image().format()
    }
}
