//! The definition's disks as images vmpod can serve: a PVC (a file, a
//! directory holding `disk.img`, or a block device), a hostDisk (created
//! sparse with its capacity for DiskOrCreate), an emptyDisk (created
//! sparse in the scratch directory), a containerDisk (its image read-only
//! under a fresh copy-on-write overlay in the scratch directory, so guest
//! writes vanish with the pod, as in KubeVirt), a cloud-init NoCloud seed
//! or config drive (built in the scratch directory, read-only). Every failure names the
//! disk, the file and what to do.
//!
//! VMM thread, before the first boot.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

use super::cloud_init;
use crate::images::{self, DiskImage, ImageError};
use crate::spec::config::{Disk, DiskSource, Identity};
use crate::spec::quantity::format_bytes;

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("disk {disk}: {source}{}", advice(source, *writable))]
    Image {
        disk: String,
        writable: bool,
        #[source]
        source: ImageError,
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
    #[error("disk {disk}: the containerDisk directory {} {problem}; set containerDisk.path to the image file", path.display())]
    ContainerDisk {
        disk: String,
        path: PathBuf,
        problem: String,
    },
}

/// What to do about a file that would not open (other image errors say
/// what to do themselves).
fn advice(error: &ImageError, writable: bool) -> &'static str {
    match (error, writable) {
        (ImageError::Open { .. }, true) => "; check that the volume is mounted there and readable and writable (or mark the disk readonly)",
        (ImageError::Open { .. }, false) => "; check that the volume is mounted there and readable",
        _ => "",
    }
}

/// A disk's image, ready for virtio-blk.
#[derive(Debug)]
pub struct OpenedDisk {
    pub name: String,
    /// The file the guest's writes go to (or the only file, read-only).
    pub path: PathBuf,
    /// The read-only image under an overlay, for a containerDisk.
    pub base: Option<PathBuf>,
    pub image: Box<dyn DiskImage>,
    pub readonly: bool,
    pub serial: Option<String>,
}

/// Opens (or creates) the image behind `disk`. EmptyDisks, seeds and
/// overlays go into `scratch`.
pub fn open(disk: &Disk, scratch: &Path, identity: &Identity) -> Result<OpenedDisk, DiskError> {
    let image_error = |writable: bool| {
        move |source| DiskError::Image {
            disk: disk.name.clone(),
            writable,
            source,
        }
    };
    let file = |path: PathBuf, readonly: bool| {
        let image = images::open(&path, !readonly).map_err(image_error(!readonly))?;
        Ok::<_, DiskError>((path, None, image, readonly))
    };
    let (path, base, image, readonly) = match &disk.source {
        DiskSource::PersistentVolumeClaim { path, .. } if path.is_dir() => {
            file(path.join("disk.img"), disk.readonly)?
        }
        DiskSource::PersistentVolumeClaim { path, .. } => file(path.clone(), disk.readonly)?,
        DiskSource::HostDisk {
            path,
            create_with_capacity,
        } => {
            if let (Some(capacity), false) = (create_with_capacity, path.exists()) {
                create_sparse(&disk.name, path, *capacity, false)?;
            }
            file(path.clone(), disk.readonly)?
        }
        DiskSource::EmptyDisk { capacity_bytes } => {
            let path = scratch.join(format!("{}.img", disk.name));
            create_sparse(&disk.name, &path, *capacity_bytes, true)?;
            file(path, disk.readonly)?
        }
        DiskSource::CloudInitNoCloud {
            user_data,
            network_data,
        }
        | DiskSource::CloudInitConfigDrive {
            user_data,
            network_data,
        } => {
            let (kind, suffix) = match disk.source {
                DiskSource::CloudInitConfigDrive { .. } => {
                    (cloud_init::Kind::ConfigDrive, "config-2")
                }
                _ => (cloud_init::Kind::NoCloud, "cidata"),
            };
            let path = scratch.join(format!("{}.{suffix}.img", disk.name));
            let seed = cloud_init::Seed {
                kind,
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
            file(path, true)? // read-only, as KubeVirt attaches it
        }
        DiskSource::ContainerDisk { path, .. } => {
            let base = container_disk_file(&disk.name, path)?;
            if disk.readonly {
                let (image, _) = images::open_base(&base).map_err(image_error(false))?;
                (base, None, image, true)
            } else {
                let overlay = scratch.join(format!("{}.overlay.qcow2", disk.name));
                let image = images::create_overlay(&base, &overlay).map_err(image_error(false))?;
                log::info!(
                    "disk {}: guest writes go to {}, the image {} stays unchanged",
                    disk.name,
                    overlay.display(),
                    base.display()
                );
                (overlay, Some(base), image, false)
            }
        }
    };
    if image.size() < 512 {
        return Err(DiskError::Empty {
            disk: disk.name.clone(),
            path,
        });
    }
    Ok(OpenedDisk {
        name: disk.name.clone(),
        path,
        base,
        image,
        readonly,
        serial: disk.serial.clone(),
    })
}

/// The image a boot disk's kernel would be read from, opened read-only
/// (for `vmpod validate`); `None` when the disk's file is not on this
/// machine, or is made only at launch (an emptyDisk, a seed).
pub fn open_for_inspection(disk: &Disk) -> Option<Result<Box<dyn DiskImage>, DiskError>> {
    let image_error = |source| DiskError::Image {
        disk: disk.name.clone(),
        writable: false,
        source,
    };
    let opened = match &disk.source {
        DiskSource::ContainerDisk { path, .. } if path.exists() => {
            container_disk_file(&disk.name, path).and_then(|file| {
                images::open_base(&file)
                    .map(|(image, _)| image)
                    .map_err(image_error)
            })
        }
        DiskSource::PersistentVolumeClaim { path, .. }
            if path.is_dir() && path.join("disk.img").exists() =>
        {
            images::open(&path.join("disk.img"), false).map_err(image_error)
        }
        DiskSource::PersistentVolumeClaim { path, .. } | DiskSource::HostDisk { path, .. }
            if path.is_file() =>
        {
            images::open(path, false).map_err(image_error)
        }
        _ => return None,
    };
    Some(opened)
}

/// A containerDisk's image file, found as KubeVirt finds it: `path` when
/// it is a file, else the single file in that directory (`/disk` unless
/// the definition says otherwise).
fn container_disk_file(disk: &str, path: &Path) -> Result<PathBuf, DiskError> {
    if !path.is_dir() {
        return Ok(path.to_owned()); // opening it names what is wrong
    }
    let problem = |problem: String| DiskError::ContainerDisk {
        disk: disk.to_owned(),
        path: path.to_owned(),
        problem,
    };
    let entries =
        std::fs::read_dir(path).map_err(|error| problem(format!("cannot be listed: {error}")))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|entry| entry.is_file())
        .collect();
    files.sort();
    match files.as_slice() {
        [only] => Ok(only.clone()),
        [] => Err(problem("holds no file".into())),
        many => Err(problem(format!(
            "holds {} files ({}), so which is the disk is unclear",
            many.len(),
            many.iter()
                .map(|file| file.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
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

    fn open(disk: &Disk, scratch: &Path) -> Result<OpenedDisk, DiskError> {
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
        .expect("opens");
        assert_eq!(empty.image.size(), 1 << 30);
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
                .image
                .size(),
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
        let opened = open(&disk("pvc", claim(dir.clone()), true), &dir).expect("opens");
        assert_eq!((opened.image.size(), opened.readonly), (4096, true));
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
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_container_disk_is_the_single_file_in_its_directory_under_an_overlay() {
        let dir = scratch("container");
        let image_dir = dir.join("disk");
        std::fs::create_dir(&image_dir).expect("mkdir");
        std::fs::write(image_dir.join("root.img"), vec![7u8; 8192]).expect("image");
        let container = |path: PathBuf| DiskSource::ContainerDisk { path, image: None };
        let scratch_dir = dir.join("scratch");
        let mut opened = open(
            &disk("root", container(image_dir.clone()), false),
            &scratch_dir,
        )
        .expect("opens");
        assert_eq!(opened.base.as_deref(), Some(&*image_dir.join("root.img")));
        assert_eq!(opened.path, scratch_dir.join("root.overlay.qcow2"));
        assert_eq!((opened.image.size(), opened.readonly), (8192, false));
        opened.image.write_at(&[1; 512], 0).expect("write");
        opened.image.flush().expect("flush");
        assert_eq!(
            std::fs::read(image_dir.join("root.img")).expect("base"),
            vec![7u8; 8192],
            "the image is unchanged"
        );
        // Read-only: the image itself, no overlay.
        let readonly = open(
            &disk("ro", container(image_dir.clone()), true),
            &scratch_dir,
        )
        .expect("opens");
        assert_eq!((readonly.base, readonly.readonly), (None, true));
        std::fs::write(image_dir.join("other.img"), b"x").expect("second file");
        let many = open(
            &disk("root", container(image_dir.clone()), false),
            &scratch_dir,
        )
        .expect_err("two files");
        assert!(
            many.to_string().contains("holds 2 files")
                && many.to_string().contains("containerDisk.path"),
            "{many}"
        );
        let empty_dir = dir.join("empty");
        std::fs::create_dir(&empty_dir).expect("mkdir");
        let none =
            open(&disk("root", container(empty_dir), false), &scratch_dir).expect_err("no file");
        assert!(none.to_string().contains("holds no file"), "{none}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
