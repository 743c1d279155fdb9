//! Reads one KubeVirt `VirtualMachine` or `VirtualMachineInstance` document
//! into a [`VmConfig`]: metadata, run strategy and the instance spec. The
//! domain is read by `domain`, devices by `devices`, volumes by `volumes`.
//!
//! Pure: the document in, a config or every problem out. Any thread.

use serde_norway::Value;
use std::collections::BTreeMap;

use super::config::{
    Boot, Disk, DiskBoot, DiskSource, Display, Identity, KernelBoot, RunStrategy, UuidSource,
    VmConfig,
};
use super::doc::{join, quote, Diagnostics, Field, Object};
use super::domain::{read_cpu, read_domain_extras, read_firmware, read_memory, read_resources};
use super::identity;
use super::{devices, volumes};

/// vmpod's own annotations; any other `vmpod.io/` key is a typo.
pub const VMPOD_ANNOTATIONS: &[&str] = &["vmpod.io/ready-serial-pattern", DISPLAY_SIZE_ANNOTATION];
/// The display's size, `WIDTHxHEIGHT` (1024x768 unless it says otherwise).
pub const DISPLAY_SIZE_ANNOTATION: &str = "vmpod.io/display-size";

const DEFAULT_GRACE_SECONDS: u64 = 180;

/// Reads a whole VM document. `Some` only when there were no problems.
pub fn read_vm(value: &Value, diag: &mut Diagnostics) -> Option<VmConfig> {
    let mut root = Object::new(value, "", diag)?;
    root.skip("apiVersion");
    let is_instance = root.string("kind", diag).as_deref() == Some("VirtualMachineInstance");
    let mut meta = match root.required("metadata", diag) {
        Some(field) => read_metadata(&field, diag),
        None => Metadata::default(),
    };
    root.ignore(
        "status",
        "written by KubeVirt's controllers, not read by vmpod",
        diag,
    );
    let (run_strategy, vmi_spec) = if is_instance {
        (Some(RunStrategy::Once), root.required("spec", diag))
    } else {
        match root.required("spec", diag).and_then(|f| f.object(diag)) {
            Some(spec) => read_vm_spec(spec, &mut meta, diag),
            None => (None, None),
        }
    };
    root.finish(diag);
    let mut config = read_instance_spec(vmi_spec?.object(diag)?, meta, diag)?;
    config.run_strategy = run_strategy?;
    diag.problems.is_empty().then_some(config)
}

/// What `metadata` (and the template's metadata) tell vmpod.
#[derive(Default)]
struct Metadata {
    name: Option<String>,
    namespace: Option<String>,
    labels: BTreeMap<String, String>,
    vmpod_annotations: BTreeMap<String, String>,
}

const METADATA_BOOKKEEPING: &[&str] = &[
    "uid",
    "creationTimestamp",
    "resourceVersion",
    "generation",
    "managedFields",
    "selfLink",
    "ownerReferences",
    "finalizers",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
];

fn read_metadata(field: &Field, diag: &mut Diagnostics) -> Metadata {
    let mut meta = Metadata::default();
    let Some(mut object) = field.object(diag) else {
        return meta;
    };
    if let Some(name_field) = object.required("name", diag) {
        meta.name = name_field.string(diag);
        check_name(
            &name_field,
            meta.name.as_deref(),
            identity::check_dns_subdomain,
            diag,
        );
    }
    if let Some(namespace_field) = object.field("namespace") {
        meta.namespace = namespace_field.string(diag);
        check_name(
            &namespace_field,
            meta.namespace.as_deref(),
            identity::check_dns_label,
            diag,
        );
    }
    object.reject(
        "generateName",
        "vmpod needs a fixed name: set metadata.name",
        diag,
    );
    read_labels_and_annotations(&mut object, &mut meta, diag);
    for key in METADATA_BOOKKEEPING {
        object.skip(key);
    }
    object.finish(diag);
    meta
}

fn read_labels_and_annotations(object: &mut Object, meta: &mut Metadata, diag: &mut Diagnostics) {
    if let Some(labels) = object.field("labels") {
        meta.labels.extend(labels.string_map(diag));
    }
    let Some(annotations) = object.field("annotations") else {
        return;
    };
    for (key, value) in annotations.string_map(diag) {
        if !key.starts_with("vmpod.io/") {
            continue;
        }
        if key == DISPLAY_SIZE_ANNOTATION {
            if let Err(why) = Display::parse(&value) {
                diag.problem(&format!("{}[{key:?}]", annotations.path), why);
            }
        }
        if VMPOD_ANNOTATIONS.contains(&key.as_str()) {
            meta.vmpod_annotations.insert(key, value);
        } else {
            diag.problem(
                &format!("{}[{key:?}]", annotations.path),
                format!(
                    "unknown vmpod annotation (known: {})",
                    VMPOD_ANNOTATIONS.join(", ")
                ),
            );
        }
    }
}

fn check_name(
    field: &Field,
    name: Option<&str>,
    rule: fn(&str) -> Result<(), String>,
    diag: &mut Diagnostics,
) {
    if let Some(Err(why)) = name.map(rule) {
        diag.problem(
            &field.path,
            format!("{} {why}", quote(name.unwrap_or_default())),
        );
    }
}

/// `VirtualMachine.spec`: the run strategy and the template.
fn read_vm_spec<'v>(
    mut spec: Object<'v>,
    meta: &mut Metadata,
    diag: &mut Diagnostics,
) -> (Option<RunStrategy>, Option<Field<'v>>) {
    let run_strategy = read_run_strategy(&mut spec, diag);
    spec.reject(
        "dataVolumeTemplates",
        "CDI does not run in a pod; use a persistentVolumeClaim or containerDisk volume",
        diag,
    );
    let mut instance_spec = None;
    if let Some(mut template) = spec.required("template", diag).and_then(|f| f.object(diag)) {
        if let Some(template_meta) = template.object("metadata", diag) {
            read_template_metadata(template_meta, meta, diag);
        }
        instance_spec = template.required("spec", diag);
        template.finish(diag);
    }
    spec.finish(diag);
    (run_strategy, instance_spec)
}

fn read_template_metadata(mut object: Object, meta: &mut Metadata, diag: &mut Diagnostics) {
    read_labels_and_annotations(&mut object, meta, diag);
    for key in ["name", "namespace", "generateName"] {
        object.ignore(
            key,
            "KubeVirt names the instance after the VirtualMachine",
            diag,
        );
    }
    for key in METADATA_BOOKKEEPING {
        object.skip(key);
    }
    object.finish(diag);
}

fn read_run_strategy(spec: &mut Object, diag: &mut Diagnostics) -> Option<RunStrategy> {
    let both = spec.has("running") && spec.has("runStrategy");
    let running = spec.bool("running", diag);
    let strategy_field = spec.field("runStrategy");
    if both {
        diag.problem(
            &join(spec.path(), "runStrategy"),
            "set either spec.running or spec.runStrategy, not both (as KubeVirt requires)",
        );
        return None;
    }
    if let Some(field) = strategy_field {
        let name = field.string(diag)?;
        let strategy = RunStrategy::from_kubevirt(&name);
        if strategy.is_none() {
            diag.problem(
                &field.path,
                format!(
                    "{} is not a run strategy (Always, RerunOnFailure, Manual, Halted, Once)",
                    quote(&name)
                ),
            );
        }
        return strategy;
    }
    match running {
        Some(false) => Some(RunStrategy::Halted),
        Some(true) => Some(RunStrategy::Always),
        None => {
            diag.ignore(
                spec.path(),
                "neither running nor runStrategy is set: vmpod runs the VM (runStrategy Always)",
            );
            Some(RunStrategy::Always)
        }
    }
}

const SCHEDULING_FIELDS: &[&str] = &[
    "nodeSelector",
    "affinity",
    "tolerations",
    "topologySpreadConstraints",
    "schedulerName",
    "priorityClassName",
    "evictionStrategy",
];

/// `VirtualMachineInstance.spec` (directly, or a VM's `spec.template.spec`).
fn read_instance_spec(
    mut spec: Object,
    meta: Metadata,
    diag: &mut Diagnostics,
) -> Option<VmConfig> {
    let name = meta.name.clone().unwrap_or_default();
    let spec_path = spec.path().to_owned();
    let namespace = meta
        .namespace
        .clone()
        .unwrap_or_else(|| "default".to_owned());

    let mut domain = spec.required("domain", diag).and_then(|f| f.object(diag));
    let resources = domain
        .as_mut()
        .map(|d| read_resources(d, diag))
        .unwrap_or_default();
    let cpu = domain.as_mut().and_then(|d| read_cpu(d, &resources, diag));
    let memory_bytes = domain
        .as_mut()
        .and_then(|d| read_memory(d, &resources, diag));
    let firmware = domain.as_mut().and_then(|d| read_firmware(d, diag));
    let device_refs = domain
        .as_mut()
        .map(|d| devices::read_devices(d, diag))
        .unwrap_or_default();
    if let Some(mut domain) = domain {
        read_domain_extras(&mut domain, diag);
        domain.finish(diag);
    }

    let volumes = volumes::read_volumes(&mut spec, diag);
    let networks = devices::read_networks(&mut spec, diag);
    let grace = spec
        .integer("terminationGracePeriodSeconds", 31_536_000, diag)
        .unwrap_or(DEFAULT_GRACE_SECONDS);
    let hostname = read_hostname(&mut spec, &name, diag);
    read_instance_extras(&mut spec, diag);
    spec.finish(diag);

    let (firmware_uuid, firmware_serial, boot) = firmware?;
    let (uuid, uuid_source) = match firmware_uuid {
        Some(uuid) => (uuid, UuidSource::Definition),
        None => (
            identity::derived_uuid(&namespace, &name),
            UuidSource::Derived,
        ),
    };
    let disks = volumes::attach_volumes(&device_refs.disks, volumes, diag);
    let domain_path = join(&spec_path, "domain");
    let boot = choose_boot(boot, &disks, &domain_path, diag);
    let nics = devices::attach_networks(&device_refs, networks, &uuid, diag);
    let config = VmConfig {
        identity: Identity {
            name,
            namespace,
            uuid,
            uuid_source,
            firmware_serial,
            hostname,
            labels: meta.labels,
        },
        run_strategy: RunStrategy::Once,
        termination_grace_period_seconds: grace,
        cpu: cpu?,
        memory_bytes: memory_bytes?,
        memory_limit_bytes: resources.memory_limit,
        boot: boot?,
        disks,
        nics,
        rng: device_refs.rng,
        inputs: device_refs.inputs,
        display: device_refs.graphics.then(|| {
            meta.vmpod_annotations
                .get(DISPLAY_SIZE_ANNOTATION)
                .and_then(|size| Display::parse(size).ok())
                .unwrap_or(Display::DEFAULT)
        }),
        serial_console: device_refs.serial_console,
        annotations: meta.vmpod_annotations,
    };
    // The readers check each field where it is; this is the last word.
    if let Err(problems) = config.validate() {
        for problem in problems {
            diag.problem(&spec_path, format!("the resulting VM's {problem}"));
        }
        return None;
    }
    Some(config)
}

/// `kernelBoot` when given; otherwise the disk with the lowest
/// `bootOrder`, else the first disk that is not a cloud-init seed.
fn choose_boot(
    kernel: Option<KernelBoot>,
    disks: &[Disk],
    domain_path: &str,
    diag: &mut Diagnostics,
) -> Option<Boot> {
    if let Some(kernel) = kernel {
        return Some(Boot::Kernel(kernel));
    }
    let seed = |disk: &&Disk| {
        matches!(
            disk.source,
            DiskSource::CloudInitNoCloud { .. } | DiskSource::CloudInitConfigDrive { .. }
        )
    };
    let chosen = disks
        .iter()
        .filter(|disk| disk.boot_order.is_some())
        .min_by_key(|disk| disk.boot_order)
        .or_else(|| disks.iter().find(|disk| !seed(disk)));
    match chosen {
        Some(disk) => Some(Boot::Disk(DiskBoot {
            disk: disk.name.clone(),
        })),
        None => {
            diag.problem(
                &join(domain_path, "firmware.kernelBoot"),
                "required when the VM has no disk to boot from: give it a disk holding a Linux image (a containerDisk or PVC), or set kernelBoot.container.kernelPath",
            );
            None
        }
    }
}

fn read_hostname(spec: &mut Object, vm_name: &str, diag: &mut Diagnostics) -> String {
    let Some(field) = spec.field("hostname") else {
        return identity::default_hostname(vm_name);
    };
    let hostname = field.string(diag).unwrap_or_default();
    check_name(&field, Some(&hostname), identity::check_dns_label, diag);
    hostname
}

fn read_instance_extras(spec: &mut Object, diag: &mut Diagnostics) {
    for key in SCHEDULING_FIELDS {
        spec.ignore(
            key,
            "scheduling belongs to the pod that runs vmpod: set it on the pod",
            diag,
        );
    }
    spec.ignore("subdomain", "the pod's DNS name is set on the pod", diag);
    for key in ["livenessProbe", "readinessProbe"] {
        spec.reject(
            key,
            "put probes on the pod; `/vm/ready` works as an exec readinessProbe",
            diag,
        );
    }
    for key in ["dnsConfig", "dnsPolicy"] {
        spec.reject(
            key,
            "set DNS on the pod; the guest gets it through DHCP",
            diag,
        );
    }
    spec.reject(
        "accessCredentials",
        "put SSH keys into cloud-init user data",
        diag,
    );
    spec.reject("startStrategy", "vmpod always starts the VM running", diag);
    if let Some(field) = spec.field("architecture") {
        if let Some(arch) = field.string(diag) {
            if arch != "amd64" {
                diag.problem(
                    &field.path,
                    format!("{} is not supported by vmpod (only amd64)", quote(&arch)),
                );
            }
        }
    }
}
