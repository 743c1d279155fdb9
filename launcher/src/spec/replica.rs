//! One definition, many pods: when a Deployment, ReplicaSet, StatefulSet or
//! DaemonSet runs the same VM definition, each pod's VM gets an identity of
//! its own, derived from the pod's name, so replicas never share a name,
//! firmware UUID, MAC or cloud-init instance-id, and a StatefulSet member
//! (whose pod name keeps its ordinal) looks the same to its guest after
//! rescheduling.
//!
//! Pure: rewrites the definition before the readers see it. Any thread.

use serde_norway::{Mapping, Value};

use super::doc::Diagnostics;

/// The VM name of the replica running in pod `pod`: the pod's own name when
/// it already starts with the VM's (`web-7d9f8-x2k4p` for VM `web`, as a
/// Deployment `web` names its pods; `web-0` for a StatefulSet), else
/// `<vm>-<pod>`.
pub fn replica_name(vm: &str, pod: &str) -> String {
    if pod == vm || pod.starts_with(&format!("{vm}-")) {
        pod.to_owned()
    } else {
        format!("{vm}-{pod}")
    }
}

/// Renames the VM in `definition` for the replica in `pod` and drops or
/// derives what replicas would otherwise share.
pub fn make_replica(definition: &mut Value, pod: &str, diag: &mut Diagnostics) {
    let Some(vm_name) = definition
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .map(str::to_owned)
    else {
        return;
    };
    let name = replica_name(&vm_name, pod);
    if let Some(metadata) = definition
        .get_mut("metadata")
        .and_then(Value::as_mapping_mut)
    {
        metadata.insert("name".into(), name.clone().into());
    }
    diag.ignore(
        "metadata.name",
        format!("{vm_name} runs as replica {name} (pod {pod}): its UUID, MACs, hostname and cloud-init instance-id derive from that name"),
    );
    let is_instance =
        definition.get("kind").and_then(Value::as_str) == Some("VirtualMachineInstance");
    let instance_spec = if is_instance {
        definition.get_mut("spec")
    } else {
        definition
            .get_mut("spec")
            .and_then(|s| s.get_mut("template"))
            .and_then(|t| t.get_mut("spec"))
    };
    let Some(spec) = instance_spec.and_then(Value::as_mapping_mut) else {
        return;
    };
    let spec_path = if is_instance {
        "spec"
    } else {
        "spec.template.spec"
    };
    if spec.remove("hostname").is_some() {
        diag.ignore(
            &format!("{spec_path}.hostname"),
            "replicas would share it: each replica's hostname is its VM name",
        );
    }
    let Some(domain) = spec.get_mut("domain").and_then(Value::as_mapping_mut) else {
        return;
    };
    derive_firmware_uuid(domain, &name, spec_path, diag);
    let interfaces = domain
        .get_mut("devices")
        .and_then(|d| d.get_mut("interfaces"))
        .and_then(Value::as_sequence_mut)
        .into_iter()
        .flatten()
        .filter_map(Value::as_mapping_mut);
    for (index, interface) in interfaces.enumerate() {
        if interface.remove("macAddress").is_some() {
            diag.ignore(
                &format!("{spec_path}.domain.devices.interfaces[{index}].macAddress"),
                "replicas would share it: each replica's MAC derives from its identity",
            );
        }
    }
}

/// A firmware UUID given in the definition becomes one per replica (a
/// UUIDv5 of it and the replica's name); without one, the derived UUID of
/// the replica's name already differs.
fn derive_firmware_uuid(domain: &mut Mapping, name: &str, spec_path: &str, diag: &mut Diagnostics) {
    let Some(firmware) = domain.get_mut("firmware").and_then(Value::as_mapping_mut) else {
        return;
    };
    let Some(given) = firmware
        .get("uuid")
        .and_then(Value::as_str)
        .and_then(|text| uuid::Uuid::parse_str(text).ok())
    else {
        return;
    };
    let derived = uuid::Uuid::new_v5(&given, format!("replica/{name}").as_bytes());
    firmware.insert("uuid".into(), derived.to_string().into());
    diag.ignore(
        &format!("{spec_path}.domain.firmware.uuid"),
        format!("replicas would share it: this replica's is {derived}, derived from it and {name}"),
    );
}
