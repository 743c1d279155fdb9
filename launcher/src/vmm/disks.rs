//! The definition's disks as files vmpod can serve: a PVC (a file, a
//! directory holding `disk.img`, or a block device), a hostDisk (created
//! sparse with its capacity for DiskOrCreate), an emptyDisk (created
//! sparse in the scratch directory), a cloud-init NoCloud seed (built in
//! the scratch directory, read-only). Every failure names the disk, the
//! file and what to do. Container disks (which need a copy-on-write
//! overlay) are not built yet: `open` returns `None` for them and
//! `launch` says so.
//!
//! VMM thread, before the first boot.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::cloud_init;
use crate::spec::config::{Disk, DiskSource, Identity};
use crate::spec::quantity::format_bytes;

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("disk {disk}: cannot open {}: check that the volume is mounted there and readable{}", path.display(), if *writable { " and writable (or mark the disk readonly)" } else { "" })]
    Open {
        disk: String,
        path: PathBuf,
        writable: bool,
        #[source]
        source: std::io::Error,
    },
    #[error("disk {disk}: cannot create {} with {}: check that its directory exists and is writable and has room", path.display(), format_bytes(*capacity))]
    Create {
        disk: String,
        path: PathBuf,
        capacity: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("disk {disk}: {} is empty: a disk needs at least one 512-byte sector", path.display())]
    Empty { disk: String, path: PathBuf },
    #[error("disk {disk}: cannot build the cloud-init seed {}: check that the scratch directory is writable and has room", path.display())]
    Seed {
        disk: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A disk's backing file, ready for virtio-blk.
#[derive(Debug)]
pub struct OpenedDisk {
    pub name: String,
    pub path: PathBuf,
    pub file: File,
    pub size_bytes: u64,
    pub readonly: bool,
    pub serial: Option<String>,
}

/// Opens (or creates) the file behind `disk`; `None` for the kinds this
/// vmpod does not build yet. EmptyDisks and seeds go into `scratch`.
pub fn open(
    disk: &Disk,
    scratch: &Path,
    identity: &Identity,
) -> Result<Option<OpenedDisk>, DiskError> {
    let mut readonly = disk.readonly;
    let path = match &disk.source {
        DiskSource::PersistentVolumeClaim { path, .. } => {
            if path.is_dir() {
                path.join("disk.img")
            } else {
                path.clone()
            }
        }
        DiskSource::HostDisk {
            path,
            create_with_capacity,
        } => {
            if let (Some(capacity), false) = (create_with_capacity, path.exists()) {
                create_sparse(&disk.name, path, *capacity, false)?;
            }
            path.clone()
        }
        DiskSource::EmptyDisk { capacity_bytes } => {
            let path = scratch.join(format!("{}.img", disk.name));
            create_sparse(&disk.name, &path, *capacity_bytes, true)?;
            path
        }
        DiskSource::CloudInitNoCloud {
            user_data,
            network_data,
        } => {
            let path = scratch.join(format!("{}.cidata.img", disk.name));
            let seed = cloud_init::Seed {
                instance_id: &identity.uuid.to_string(),
                hostname: &identity.hostname,
                user_data,
                network_data: network_data.as_deref(),
            };
            std::fs::create_dir_all(scratch)
                .and_then(|()| cloud_init::build(&path, &seed))
                .map_err(|source| DiskError::Seed {
                    disk: disk.name.clone(),
                    path: path.clone(),
                    source,
                })?;
            readonly = true; // as KubeVirt attaches it
            path
        }
        DiskSource::ContainerDisk { .. } => return Ok(None),
    };
    let open_error = |source| DiskError::Open {
        disk: disk.name.clone(),
        path: path.clone(),
        writable: !readonly,
        source,
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(!readonly)
        .open(&path)
        .map_err(open_error)?;
    // Block devices report no length in their metadata; seeking finds it.
    let size_bytes = file.seek(SeekFrom::End(0)).map_err(open_error)?;
    if size_bytes < 512 {
        return Err(DiskError::Empty {
            disk: disk.name.clone(),
            path,
        });
    }
    Ok(Some(OpenedDisk {
        name: disk.name.clone(),
        path,
        file,
        size_bytes,
        readonly,
        serial: disk.serial.clone(),
    }))
}

/// A sparse file of `capacity` bytes; `fresh` replaces what is there (an
/// emptyDisk starts blank on every start, like the pod's emptyDir).
fn create_sparse(disk: &str, path: &Path, capacity: u64, fresh: bool) -> Result<(), DiskError> {
    let create_error = |source| DiskError::Create {
        disk: disk.to_owned(),
        path: path.to_owned(),
        capacity,
        source,
    };
    if let Some(parent) = path.parent().filter(|_| fresh) {
        std::fs::create_dir_all(parent).map_err(create_error)?;
    }
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(fresh)
        .open(path)
        .map_err(create_error)?;
    file.set_len(capacity).map_err(create_error)?;
    log::info!(
        "disk {disk}: created {} ({}, sparse)",
        path.display(),
        format_bytes(capacity)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vmpod-disks-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch");
        dir
    }

    fn identity() -> Identity {
        Identity {
            name: "web".into(),
            namespace: "default".into(),
            uuid: uuid::Uuid::nil(),
            uuid_source: crate::spec::config::UuidSource::Derived,
            firmware_serial: None,
            hostname: "web-host".into(),
            labels: Default::default(),
        }
    }

    fn open(disk: &Disk, scratch: &Path) -> Result<Option<OpenedDisk>, DiskError> {
        super::open(disk, scratch, &identity())
    }

    fn disk(name: &str, source: DiskSource, readonly: bool) -> Disk {
        Disk {
            name: name.into(),
            source,
            readonly,
            serial: None,
            boot_order: None,
        }
    }

    #[test]
    fn empty_and_created_disks_are_sparse_files_of_their_capacity() {
        let dir = scratch("sparse");
        let empty = open(
            &disk(
                "scratch",
                DiskSource::EmptyDisk {
                    capacity_bytes: 1 << 30,
                },
                false,
            ),
            &dir,
        )
        .expect("opens")
        .expect("built");
        assert_eq!(empty.size_bytes, 1 << 30);
        let blocks = std::os::unix::fs::MetadataExt::blocks(
            &std::fs::metadata(dir.join("scratch.img")).expect("stat"),
        );
        assert!(blocks < 64, "sparse: {blocks} blocks");
        let host = DiskSource::HostDisk {
            path: dir.join("host/data.img"),
            create_with_capacity: Some(1 << 20),
        };
        let missing_dir = open(&disk("data", host, false), &dir).expect_err("no such directory");
        assert!(
            missing_dir
                .to_string()
                .starts_with("disk data: cannot create"),
            "{missing_dir}"
        );
        std::fs::create_dir(dir.join("host")).expect("mkdir");
        let host = DiskSource::HostDisk {
            path: dir.join("host/data.img"),
            create_with_capacity: Some(1 << 20),
        };
        assert_eq!(
            open(&disk("data", host, false), &dir)
                .expect("opens")
                .expect("built")
                .size_bytes,
            1 << 20
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_claim_directory_holds_disk_img_and_errors_name_the_disk() {
        let dir = scratch("claim");
        std::fs::write(dir.join("disk.img"), vec![0u8; 4096]).expect("image");
        let claim = |path: PathBuf| DiskSource::PersistentVolumeClaim {
            claim_name: "c".into(),
            path,
        };
        let opened = open(&disk("pvc", claim(dir.clone()), true), &dir)
            .expect("opens")
            .expect("built");
        assert_eq!((opened.size_bytes, opened.readonly), (4096, true));
        let missing =
            open(&disk("gone", claim(dir.join("nope.img")), false), &dir).expect_err("missing");
        assert!(
            missing.to_string().starts_with(&format!(
                "disk gone: cannot open {}",
                dir.join("nope.img").display()
            )),
            "{missing}"
        );
        std::fs::write(dir.join("tiny.img"), b"x").expect("tiny");
        let tiny =
            open(&disk("tiny", claim(dir.join("tiny.img")), false), &dir).expect_err("empty");
        assert!(tiny.to_string().contains("is empty"), "{tiny}");
        let container = DiskSource::ContainerDisk {
            path: "/disk/x.img".into(),
        };
        assert!(open(&disk("image", container, false), &dir)
            .expect("not an error")
            .is_none());
        std::fs::remove_dir_all(&dir).ok();
    }
}
