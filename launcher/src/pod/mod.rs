//! A VM's pod: where the images a definition names are mounted in it
//! (`vmpod render --pod` mounts them, `launch` finds their files there),
//! the Pod or Deployment that runs a VM with vmpod ([`render`]), and the
//! init containers' copy of those files where a cluster cannot mount
//! images ([`copy`]). All but `copy` is pure.

pub mod copy;
pub mod render;

use std::path::{Component, Path, PathBuf};

use crate::spec::config::{Boot, DiskSource, VmConfig};

/// Where a pod mounts the images its VM's definition names: a
/// containerDisk volume's at `/vm/images/<volume>`, kernelBoot's at
/// `/vm/images/kernelBoot` (no volume can be called that: volume names
/// are lower-case DNS labels).
pub const DEFAULT_IMAGES_DIR: &str = "/vm/images";
pub const KERNEL_BOOT_MOUNT: &str = "kernelBoot";

/// KubeVirt's containerDisk `path` and kernelBoot paths are paths inside
/// the image; under its mount they are the same path below the mount.
fn below(mount: &Path, path: &Path) -> PathBuf {
    let relative: PathBuf = path
        .components()
        .filter(|part| matches!(part, Component::Normal(_)))
        .collect();
    mount.join(relative)
}

/// The config with every file that lives in a mounted image given by its
/// path in the pod, and a log line for each; `None` when no image named
/// by the definition is mounted (its paths are the pod's own: the image's
/// files were baked into the pod's image, or mounted there by hand).
pub fn in_image_mounts(
    config: &VmConfig,
    images_dir: &Path,
    is_dir: impl Fn(&Path) -> bool,
) -> Option<(VmConfig, Vec<String>)> {
    let mut changed = config.clone();
    let mut notes = Vec::new();
    for disk in &mut changed.disks {
        if let DiskSource::ContainerDisk {
            path,
            image: Some(image),
        } = &mut disk.source
        {
            let mount = images_dir.join(&disk.name);
            if is_dir(&mount) {
                *path = below(&mount, path);
                notes.push(format!(
                    "disk {}: the image {image} is mounted at {}: using {}",
                    disk.name,
                    mount.display(),
                    path.display()
                ));
            }
        }
    }
    if let Boot::Kernel(kernel) = &mut changed.boot {
        let mount = images_dir.join(KERNEL_BOOT_MOUNT);
        if let (Some(image), true) = (&kernel.image, is_dir(&mount)) {
            kernel.kernel = below(&mount, &kernel.kernel);
            kernel.initrd = kernel.initrd.as_deref().map(|initrd| below(&mount, initrd));
            notes.push(format!(
                "kernelBoot: the image {image} is mounted at {}: booting {}",
                mount.display(),
                kernel.kernel.display()
            ));
        }
    }
    (!notes.is_empty()).then_some((changed, notes))
}

#[cfg(test)]
mod tests;
