//! Reads one KubeVirt `VirtualMachine` or `VirtualMachineInstance` document
//! into a [`VmConfig`]: metadata, run strategy, and the domain's CPU, memory
//! and firmware. Devices and volumes are read by `devices`.
//!
//! Pure: the document in, a config or every problem out. Any thread.

use serde_norway::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;

use super::config::{CpuTopology, Identity, KernelBoot, RunStrategy, UuidSource, VmConfig};
use super::devices;
use super::doc::{join, quote, Diagnostics, Field, Object};
use super::identity;

/// vmpod's own annotations; any other `vmpod.io/` key is a typo.
pub const VMPOD_ANNOTATIONS: &[&str] = &["vmpod.io/ready-serial-pattern"];

const DEFAULT_CMDLINE: &str = "console=ttyS0";
const DEFAULT_GRACE_SECONDS: u64 = 180;
const MAX_VCPUS: u64 = 254;
const MIN_MEMORY: u64 = 1 << 20;
const MAX_MEMORY: u64 = 1 << 40;
const MAX_CMDLINE: usize = 2047;
const PAGE_SIZE: u64 = 4096;

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
    spec.reject(
        "instancetype",
        "write CPU and memory into the template's domain",
        diag,
    );
    spec.reject(
        "preference",
        "write the preferred devices into the template's domain",
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

    let volumes = devices::read_volumes(&mut spec, diag);
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
    let disks = devices::attach_volumes(&device_refs.disks, volumes, diag);
    let nics = devices::attach_networks(&device_refs, networks, &uuid, diag);
    Some(VmConfig {
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
        boot,
        disks,
        nics,
        rng: device_refs.rng,
        inputs: device_refs.inputs,
        graphics: device_refs.graphics,
        serial_console: device_refs.serial_console,
        annotations: meta.vmpod_annotations,
    })
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

/// `domain.resources`: what the pod is asked for.
#[derive(Default)]
struct Resources {
    /// Whether requests.memory or limits.memory was written at all.
    memory_given: bool,
    memory_request: Option<u64>,
    memory_limit: Option<u64>,
    cpu_limit: Option<u64>,
}

fn read_resources(domain: &mut Object, diag: &mut Diagnostics) -> Resources {
    let mut resources = Resources::default();
    let Some(mut object) = domain.object("resources", diag) else {
        return resources;
    };
    for (key, is_limit) in [("requests", false), ("limits", true)] {
        let Some(mut list) = object.object(key, diag) else {
            continue;
        };
        resources.memory_given |= list.has("memory");
        let memory = list.quantity("memory", diag);
        let cpu = list.quantity("cpu", diag);
        if is_limit {
            resources.memory_limit = memory;
            resources.cpu_limit = cpu;
        } else {
            resources.memory_request = memory;
        }
        let others: Vec<String> = list
            .keys()
            .filter(|k| !["memory", "cpu"].contains(k))
            .map(str::to_owned)
            .collect();
        for other in others {
            list.ignore(&other, "a pod resource: request it on the pod", diag);
        }
        list.finish(diag);
    }
    object.ignore(
        "overcommitGuestOverhead",
        "vmpod's overhead is small and fixed",
        diag,
    );
    object.finish(diag);
    resources
}

fn read_cpu(
    domain: &mut Object,
    resources: &Resources,
    diag: &mut Diagnostics,
) -> Option<CpuTopology> {
    let Some(mut cpu) = domain.object("cpu", diag) else {
        // KubeVirt sizes a VM without a topology from its CPU limit.
        let cores = resources.cpu_limit.unwrap_or(1).clamp(1, MAX_VCPUS);
        return Some(CpuTopology {
            sockets: 1,
            cores: cores as u32,
            threads: 1,
        });
    };
    let mut part = |key: &str, diag: &mut Diagnostics| match cpu.field(key) {
        None => Some(1),
        Some(field) => match field.integer(MAX_VCPUS, diag)? {
            0 => {
                diag.problem(
                    &field.path,
                    format!("must be at least 1 (at most {MAX_VCPUS})"),
                );
                None
            }
            count => Some(count as u32),
        },
    };
    let (sockets, cores, threads) = (
        part("sockets", diag),
        part("cores", diag),
        part("threads", diag),
    );
    if let Some(field) = cpu.field("model") {
        if let Some(model) = field.string(diag) {
            if model != "host-passthrough" && model != "host-model" {
                diag.problem(
                    &field.path,
                    format!("{} is not supported by vmpod (it passes the host CPU through: use host-passthrough or leave it unset)", quote(&model)),
                );
            }
        }
    }
    cpu.reject(
        "features",
        "vmpod passes the host CPU's features through",
        diag,
    );
    cpu.reject(
        "dedicatedCpuPlacement",
        "use the pod's Guaranteed QoS class and the kubelet CPU manager",
        diag,
    );
    cpu.reject(
        "isolateEmulatorThread",
        "use the pod's Guaranteed QoS class and the kubelet CPU manager",
        diag,
    );
    cpu.reject("numa", "vmpod presents one NUMA node", diag);
    cpu.reject("realtime", "vmpod has no realtime tuning", diag);
    cpu.reject("maxSockets", "vmpod has no CPU hotplug", diag);
    let cpu_path = cpu.path().to_owned();
    cpu.finish(diag);
    let topology = CpuTopology {
        sockets: sockets?,
        cores: cores?,
        threads: threads?,
    };
    if u64::from(topology.vcpus()) > MAX_VCPUS {
        diag.problem(
            &cpu_path,
            format!(
                "sockets × cores × threads = {} vCPUs; vmpod supports at most {MAX_VCPUS}",
                topology.vcpus()
            ),
        );
        return None;
    }
    Some(topology)
}

fn read_memory(domain: &mut Object, resources: &Resources, diag: &mut Diagnostics) -> Option<u64> {
    let memory_path = join(domain.path(), "memory");
    let mut guest = None;
    let mut guest_given = resources.memory_given;
    if let Some(mut memory) = domain.object("memory", diag) {
        guest_given |= memory.has("guest");
        guest = memory.quantity("guest", diag);
        memory.reject(
            "hugepages",
            "vmpod backs guest memory with ordinary pages",
            diag,
        );
        memory.reject("maxGuest", "vmpod has no memory hotplug", diag);
        memory.finish(diag);
    }
    let guest_path = join(&memory_path, "guest");
    let Some(bytes) = guest
        .or(resources.memory_request)
        .or(resources.memory_limit)
    else {
        if !guest_given {
            diag.problem(
                &guest_path,
                "required: set domain.memory.guest or domain.resources.requests.memory",
            );
        }
        return None;
    };
    if !(MIN_MEMORY..=MAX_MEMORY).contains(&bytes) {
        diag.problem(
            &guest_path,
            format!("{bytes} bytes is outside vmpod's range of 1Mi to 1Ti"),
        );
        return None;
    }
    if let Some(limit) = resources.memory_limit {
        if bytes > limit {
            diag.problem(
                &guest_path,
                format!("guest memory ({bytes} bytes) is larger than resources.limits.memory ({limit} bytes)"),
            );
            return None;
        }
    }
    Some(bytes.div_ceil(PAGE_SIZE) * PAGE_SIZE)
}

/// Firmware: (UUID if given, serial, kernel boot).
type Firmware = (Option<uuid::Uuid>, Option<String>, KernelBoot);

fn read_firmware(domain: &mut Object, diag: &mut Diagnostics) -> Option<Firmware> {
    let firmware_path = join(domain.path(), "firmware");
    let mut firmware = domain.object("firmware", diag);
    let mut uuid = None;
    let mut serial = None;
    let mut boot = None;
    if let Some(firmware) = firmware.as_mut() {
        if let Some(field) = firmware.field("uuid") {
            let text = field.string(diag).unwrap_or_default();
            match uuid::Uuid::parse_str(&text) {
                Ok(parsed) => uuid = Some(parsed),
                Err(_) => diag.problem(&field.path, format!("{} is not a UUID", quote(&text))),
            }
        }
        serial = read_firmware_serial(firmware, diag);
        boot = firmware
            .object("kernelBoot", diag)
            .map(|kernel_boot| read_kernel_boot(kernel_boot, diag));
        firmware.reject(
            "bootloader",
            "vmpod has no BIOS or UEFI firmware; boot a kernel with firmware.kernelBoot",
            diag,
        );
        firmware.reject("acpi", "vmpod writes its own ACPI tables", diag);
    }
    if let Some(firmware) = firmware {
        firmware.finish(diag);
    }
    match boot {
        Some(boot) => Some((uuid, serial, boot?)),
        None => {
            diag.problem(
                &join(&firmware_path, "kernelBoot"),
                "required: vmpod boots a Linux kernel directly (it has no BIOS or UEFI firmware); set kernelBoot.container.kernelPath",
            );
            None
        }
    }
}

fn read_firmware_serial(firmware: &mut Object, diag: &mut Diagnostics) -> Option<String> {
    let field = firmware.field("serial")?;
    let serial = field.string(diag)?;
    if serial.is_empty()
        || serial.len() > 64
        || !serial.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
    {
        diag.problem(
            &field.path,
            format!(
                "{} must be 1 to 64 printable ASCII characters",
                quote(&serial)
            ),
        );
        return None;
    }
    Some(serial)
}

fn read_kernel_boot(mut kernel_boot: Object, diag: &mut Diagnostics) -> Option<KernelBoot> {
    let cmdline = match kernel_boot.field("kernelArgs") {
        Some(field) => read_cmdline(&field, diag),
        None => Some(DEFAULT_CMDLINE.to_owned()),
    };
    let mut kernel = None;
    let mut initrd = None;
    if let Some(mut container) = kernel_boot
        .required("container", diag)
        .and_then(|f| f.object(diag))
    {
        container.ignore(
            "image",
            "vmpod reads kernelPath and initrdPath inside its own pod: mount or bake the image's files there",
            diag,
        );
        container.ignore("imagePullPolicy", "images are pulled by the pod", diag);
        container.ignore("imagePullSecret", "images are pulled by the pod", diag);
        kernel = container
            .required("kernelPath", diag)
            .and_then(|f| absolute_path(&f, diag));
        initrd = container
            .field("initrdPath")
            .and_then(|f| absolute_path(&f, diag));
        container.finish(diag);
    }
    kernel_boot.finish(diag);
    Some(KernelBoot {
        kernel: kernel?,
        initrd,
        cmdline: cmdline?,
    })
}

fn read_cmdline(field: &Field, diag: &mut Diagnostics) -> Option<String> {
    let raw = field.string(diag)?;
    let cmdline = raw.replace(['\n', '\t', '\r'], " ").trim().to_owned();
    if cmdline.bytes().any(|b| b.is_ascii_control()) {
        diag.problem(&field.path, "must not contain control characters");
        return None;
    }
    if cmdline.len() > MAX_CMDLINE {
        diag.problem(
            &field.path,
            format!(
                "is {} bytes; the kernel command line holds at most {MAX_CMDLINE}",
                cmdline.len()
            ),
        );
        return None;
    }
    Some(cmdline)
}

/// A path inside the pod; relative paths would depend on the working directory.
pub fn absolute_path(field: &Field, diag: &mut Diagnostics) -> Option<PathBuf> {
    let text = field.string(diag)?;
    if !text.starts_with('/') || text.contains('\0') {
        diag.problem(
            &field.path,
            format!("{} must be an absolute path inside the pod", quote(&text)),
        );
        return None;
    }
    Some(PathBuf::from(text))
}

fn read_domain_extras(domain: &mut Object, diag: &mut Diagnostics) {
    domain.ignore("machine", "vmpod has one machine type, a KVM microVM", diag);
    domain.ignore("ioThreadsPolicy", "vmpod's device loop is one thread", diag);
    domain.ignore("ioThreads", "vmpod's device loop is one thread", diag);
    domain.reject(
        "chassis",
        "vmpod writes no SMBIOS chassis information",
        diag,
    );
    domain.reject("launchSecurity", "no confidential computing in vmpod", diag);
    if let Some(mut features) = domain.object("features", diag) {
        features.skip("acpi");
        features.skip("apic");
        features.ignore("pvspinlock", "the guest chooses its spinlocks", diag);
        features.ignore("smm", "vmpod has no firmware that uses SMM", diag);
        features.reject("hyperv", "no Hyper-V enlightenments", diag);
        features.reject("kvm", "vmpod does not hide KVM from the guest", diag);
        features.finish(diag);
    }
    if let Some(mut clock) = domain.object("clock", diag) {
        if let Some(mut utc) = clock.object("utc", diag) {
            if utc
                .integer("offsetSeconds", u64::MAX, diag)
                .is_some_and(|s| s != 0)
            {
                diag.problem(
                    &join(utc.path(), "offsetSeconds"),
                    "not supported by vmpod (the guest clock is UTC)",
                );
            }
            utc.finish(diag);
        }
        clock.reject("timezone", "the guest clock is UTC", diag);
        clock.ignore("timer", "vmpod provides kvmclock and the LAPIC timer", diag);
        clock.finish(diag);
    }
}
