//! A raw image: a file or block device whose bytes are the disk's.
//! Zeroing and discarding punch holes with fallocate where the file system
//! or device supports it; zeroing falls back to writing zeroes.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::{DiskImage, Format, ImageError};

pub(super) fn open_file(path: &Path, writable: bool) -> Result<File, ImageError> {
    OpenOptions::new()
        .read(true)
        .write(writable)
        .open(path)
        .map_err(|source| ImageError::Open {
            path: path.to_owned(),
            source,
        })
}

#[derive(Debug)]
pub struct Raw {
    file: File,
    size: u64,
    /// Whether fallocate's hole punching works here; learnt on first use.
    punches: bool,
}

impl Raw {
    pub fn new(path: &Path, mut file: File) -> Result<Self, ImageError> {
        // Block devices report no length in their metadata; seeking finds it.
        let size = file
            .seek(SeekFrom::End(0))
            .map_err(|source| ImageError::Open {
                path: path.to_owned(),
                source,
            })?;
        Ok(Raw {
            file,
            size,
            punches: true,
        })
    }

    fn fallocate(&self, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
        let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        };
        // SAFETY: fallocate changes only the file behind our descriptor.
        let result = unsafe { libc::fallocate(self.file.as_raw_fd(), mode, offset, len) };
        if result == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

/// Errors that mean "this file cannot do that", not "that failed".
fn unsupported(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EOPNOTSUPP | libc::ENOSYS | libc::EINVAL | libc::ENODEV)
    )
}

impl DiskImage for Raw {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn write_zeroes(&mut self, offset: u64, len: u64) -> io::Result<()> {
        if self.punches {
            match self.fallocate(
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset,
                len,
            ) {
                Ok(()) => return Ok(()),
                Err(error) if unsupported(&error) => self.punches = false,
                Err(error) => return Err(error),
            }
        }
        let zeroes = vec![0u8; len.min(1 << 20) as usize];
        let mut done = 0;
        while done < len {
            let piece = (len - done).min(zeroes.len() as u64) as usize;
            self.file.write_all_at(&zeroes[..piece], offset + done)?;
            done += piece as u64;
        }
        Ok(())
    }

    fn discard(&mut self, offset: u64, len: u64) -> io::Result<()> {
        if !self.punches {
            return Ok(()); // advisory: nothing to give back here
        }
        match self.fallocate(
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        ) {
            Err(error) if unsupported(&error) => {
                self.punches = false;
                Ok(())
            }
            other => other,
        }
    }

    fn format(&self) -> Format {
        Format::Raw
    }
}
