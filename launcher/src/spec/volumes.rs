//! Reads `volumes` (where disk bytes come from inside the pod) and joins
//! each disk of `domain.devices.disks` to the volume of the same name.
//!
//! Pure: called by the `kubevirt` reader on the same document, on any thread.

use base64::Engine;
use std::collections::BTreeSet;

use super::config::{Disk, DiskSource};
use super::devices::{check_unique, read_name, DiskRef};
use super::doc::{join, quote, Diagnostics, Field, Object};
use super::domain::{absolute_path, read_image_fields};

/// Where a persistentVolumeClaim volume must be mounted in the pod.
pub const PVC_MOUNT_ROOT: &str = "/vm/volumes";
/// KubeVirt's default containerDisk location.
const CONTAINER_DISK_DEFAULT: &str = "/disk";
/// A volume, read but not yet joined to its disk.
pub struct Volume {
    name: String,
    path: String,
    /// `None` when the source had problems (already reported): the name
    /// still matches its disk, so no second, misleading problem follows.
    source: Option<DiskSource>,
    /// A persistentVolumeClaim's own `readOnly`.
    readonly: bool,
}

pub fn read_volumes(spec: &mut Object, diag: &mut Diagnostics) -> Vec<Volume> {
    let volumes: Vec<Volume> = spec
        .list("volumes", diag)
        .iter()
        .filter_map(|f| read_volume(f, diag))
        .collect();
    check_unique(volumes.iter().map(|v| (&v.name, &v.path)), "volume", diag);
    volumes
}

fn read_volume(field: &Field, diag: &mut Diagnostics) -> Option<Volume> {
    let mut volume = field.object(diag)?;
    let name = read_name(&mut volume, diag);
    let mut sources = Vec::new();
    let mut readonly = false;
    if let Some(object) = volume.object("containerDisk", diag) {
        sources.push(read_container_disk(object, diag));
    }
    if let Some(mut object) = volume.object("persistentVolumeClaim", diag) {
        let claim_name = object
            .required("claimName", diag)
            .and_then(|f| f.string(diag));
        readonly = object.bool("readOnly", diag).unwrap_or(false);
        object.reject("hotpluggable", "vmpod has no hotplug", diag);
        object.finish(diag);
        let path = format!("{PVC_MOUNT_ROOT}/{}", name.as_deref().unwrap_or_default()).into();
        sources.push(
            claim_name.map(|claim_name| DiskSource::PersistentVolumeClaim { claim_name, path }),
        );
    }
    if let Some(object) = volume.object("hostDisk", diag) {
        sources.push(read_host_disk(object, diag));
    }
    if let Some(mut object) = volume.object("emptyDisk", diag) {
        let capacity = object
            .required("capacity", diag)
            .and_then(|f| f.quantity(diag));
        object.finish(diag);
        sources.push(capacity.map(|capacity_bytes| DiskSource::EmptyDisk { capacity_bytes }));
    }
    if let Some(object) = volume.object("cloudInitNoCloud", diag) {
        sources.push(
            read_cloud_init(object, diag).map(|(user_data, network_data)| {
                DiskSource::CloudInitNoCloud {
                    user_data,
                    network_data,
                }
            }),
        );
    }
    if let Some(object) = volume.object("cloudInitConfigDrive", diag) {
        sources.push(
            read_cloud_init(object, diag).map(|(user_data, network_data)| {
                DiskSource::CloudInitConfigDrive {
                    user_data,
                    network_data,
                }
            }),
        );
    }
    for key in [
        "dataVolume",
        "configMap",
        "secret",
        "serviceAccount",
        "downwardAPI",
        "downwardMetrics",
        "ephemeral",
        "sysprep",
        "memoryDump",
    ] {
        volume.reject(
            key,
            "use containerDisk, persistentVolumeClaim, hostDisk, emptyDisk, cloudInitNoCloud or cloudInitConfigDrive",
            diag,
        );
    }
    volume.finish(diag);
    let source = match sources.len() {
        1 => sources.pop().flatten(),
        0 => {
            let already_reported = diag
                .problems
                .iter()
                .any(|p| p.path.starts_with(&field.path));
            if !already_reported {
                diag.problem(&field.path, "needs a source: containerDisk, persistentVolumeClaim, hostDisk, emptyDisk, cloudInitNoCloud or cloudInitConfigDrive");
            }
            None
        }
        _ => {
            diag.problem(&field.path, "a volume has exactly one source");
            None
        }
    };
    Some(Volume {
        name: name?,
        path: field.path.clone(),
        source,
        readonly,
    })
}

fn read_container_disk(mut object: Object, diag: &mut Diagnostics) -> Option<DiskSource> {
    let image = read_image_fields(&mut object, diag);
    let path = match object.field("path") {
        Some(f) => absolute_path(&f, diag),
        None => Some(CONTAINER_DISK_DEFAULT.into()),
    };
    object.finish(diag);
    Some(DiskSource::ContainerDisk { path: path?, image })
}

fn read_host_disk(mut object: Object, diag: &mut Diagnostics) -> Option<DiskSource> {
    let path = object
        .required("path", diag)
        .and_then(|f| absolute_path(&f, diag));
    let capacity = object.quantity("capacity", diag);
    let create = match object.required("type", diag) {
        None => None,
        Some(f) => match f.string(diag)?.as_str() {
            "Disk" => Some(false),
            "DiskOrCreate" => Some(true),
            other => {
                diag.problem(
                    &f.path,
                    format!(
                        "{} is not a hostDisk type (Disk or DiskOrCreate)",
                        quote(other)
                    ),
                );
                None
            }
        },
    };
    if create == Some(true) && capacity.is_none() && !object.has("capacity") {
        diag.problem(
            &join(object.path(), "capacity"),
            "required when type is DiskOrCreate",
        );
    }
    object.ignore(
        "shared",
        "vmpod does not coordinate access between nodes",
        diag,
    );
    object.finish(diag);
    let create_with_capacity = if create? { Some(capacity?) } else { None };
    Some(DiskSource::HostDisk {
        path: path?,
        create_with_capacity,
    })
}

/// User data and network data of a cloud-init volume (either kind).
fn read_cloud_init(mut object: Object, diag: &mut Diagnostics) -> Option<(String, Option<String>)> {
    let user_data = read_text_or_base64(&mut object, "userData", "userDataBase64", diag);
    let network_data = read_text_or_base64(&mut object, "networkData", "networkDataBase64", diag);
    for key in ["secretRef", "networkDataSecretRef"] {
        object.reject(
            key,
            "put the data inline (userData or userDataBase64)",
            diag,
        );
    }
    let path = object.path().to_owned();
    object.finish(diag);
    if user_data.is_none()
        && network_data.is_none()
        && !diag.problems.iter().any(|p| p.path.starts_with(&path))
    {
        diag.problem(&path, "needs userData or userDataBase64");
        return None;
    }
    Some((user_data.unwrap_or_default(), network_data))
}

fn read_text_or_base64(
    object: &mut Object,
    text_key: &str,
    base64_key: &str,
    diag: &mut Diagnostics,
) -> Option<String> {
    let both = object.has(text_key) && object.has(base64_key);
    let text = object.string(text_key, diag);
    let encoded = object.field(base64_key);
    if both {
        diag.problem(
            &join(object.path(), base64_key),
            format!("set {text_key} or {base64_key}, not both"),
        );
        return None;
    }
    if text.is_some() {
        return text;
    }
    let field = encoded?;
    let encoded_text = field.string(diag)?;
    let compact: String = encoded_text.split_whitespace().collect();
    let decoded = match base64::engine::general_purpose::STANDARD.decode(compact) {
        Ok(bytes) => bytes,
        Err(error) => {
            diag.problem(&field.path, format!("is not valid base64 ({error})"));
            return None;
        }
    };
    match String::from_utf8(decoded) {
        Ok(text) => Some(text),
        Err(_) => {
            diag.problem(
                &field.path,
                "decodes to bytes that are not UTF-8 text; vmpod passes cloud-init data as text",
            );
            None
        }
    }
}

/// Joins each disk to the volume of the same name.
pub fn attach_volumes(
    disks: &[DiskRef],
    volumes: Vec<Volume>,
    diag: &mut Diagnostics,
) -> Vec<Disk> {
    let mut used = vec![false; volumes.len()];
    let mut attached = Vec::new();
    for disk in disks {
        let Some(index) = volumes.iter().position(|v| v.name == disk.name) else {
            diag.problem(
                &join(&disk.path, "name"),
                format!("no volume named {} in volumes", quote(&disk.name)),
            );
            continue;
        };
        used[index] = true;
        let volume = &volumes[index];
        let Some(source) = volume.source.clone() else {
            continue;
        };
        attached.push(Disk {
            name: disk.name.clone(),
            readonly: disk.readonly || volume.readonly,
            source,
            serial: disk.serial.clone(),
            boot_order: disk.boot_order,
        });
    }
    // As KubeVirt's admission webhook does: a volume no disk names gets a
    // virtio disk of its own, after the listed ones.
    for (volume, used) in volumes.iter().zip(used) {
        if let (false, Some(source)) = (used, &volume.source) {
            attached.push(Disk {
                name: volume.name.clone(),
                readonly: volume.readonly,
                source: source.clone(),
                serial: None,
                boot_order: None,
            });
        }
    }
    let mut orders = BTreeSet::new();
    for disk in disks {
        if let Some(order) = disk.boot_order {
            if !orders.insert(order) {
                diag.problem(
                    &join(&disk.path, "bootOrder"),
                    format!("boot order {order} is used by another disk"),
                );
            }
        }
    }
    attached
}
