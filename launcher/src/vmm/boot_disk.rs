//! Booting from a disk: before every boot, `diskboot` chooses the kernel,
//! initrd and command line from the boot disk's own configuration, read
//! through the same image the guest's virtio-blk serves (a containerDisk's
//! overlay included, so a kernel the guest installed boots next), and the
//! files are staged in memory files for the kernel loader.
//!
//! VMM thread, at the start of each boot.

use std::fs::File;
use std::io;
use std::os::fd::FromRawFd;
use std::path::PathBuf;

use crate::diskboot::{self, DiskBootError};
use crate::images::Shared;

/// The kernel and initrd of one boot, in memory files freed when dropped.
pub struct StagedBoot {
    pub kernel: File,
    pub kernel_name: PathBuf,
    pub initrd: Option<File>,
    pub initrd_name: PathBuf,
    pub cmdline: String,
}

#[derive(Debug, thiserror::Error)]
pub enum BootDiskError {
    #[error(transparent)]
    Choose(#[from] DiskBootError),
    #[error("cannot create a memory file to stage the boot disk's kernel")]
    MemoryFile(#[source] io::Error),
    #[error("the boot disk {0} is not among the VM's disks")]
    NotAttached(String),
}

/// Chooses and stages what `disk` boots in a guest of `memory_bytes`.
pub fn stage(
    disk: Option<&Shared>,
    disk_name: &str,
    memory_bytes: u64,
) -> Result<StagedBoot, BootDiskError> {
    let disk = disk.ok_or_else(|| BootDiskError::NotAttached(disk_name.to_owned()))?;
    let mut kernel = memory_file(c"vmpod-kernel").map_err(BootDiskError::MemoryFile)?;
    let mut initrd = memory_file(c"vmpod-initrd").map_err(BootDiskError::MemoryFile)?;
    let sinks = diskboot::Sinks {
        kernel: &mut kernel,
        initrd: &mut initrd,
        initrd_limit: memory_bytes,
    };
    let staged = diskboot::stage(disk.clone(), disk_name, sinks)?;
    log::info!("disk {disk_name}: booting {}", staged.description);
    log::info!("kernel command line: {}", staged.cmdline);
    Ok(StagedBoot {
        kernel,
        kernel_name: PathBuf::from(format!("the kernel of disk {disk_name}")),
        initrd: (staged.initrd_bytes > 0).then_some(initrd),
        initrd_name: PathBuf::from(format!("the initrd of disk {disk_name}")),
        cmdline: staged.cmdline,
    })
}

/// An anonymous file in memory, gone when closed.
fn memory_file(name: &std::ffi::CStr) -> io::Result<File> {
    // SAFETY: memfd_create only reads the NUL-terminated name; it returns
    // a new descriptor or -1.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the descriptor was just created and nothing else owns it.
    Ok(unsafe { File::from_raw_fd(fd) })
}
