//! Reads `domain.devices` and `networks`, and joins interfaces to networks
//! by name, as KubeVirt does (volumes and disks: see `volumes`).
//!
//! Pure: called by the `kubevirt` reader on the same document, on any thread.

use std::collections::BTreeSet;

use super::config::{Input, InputKind, Nic, NicBinding, Port, Protocol};
use super::doc::{join, quote, Diagnostics, Field, Object};
use super::identity;

const MAX_DISK_SERIAL: usize = 20;

/// What `domain.devices` asks for, before volumes and networks are joined.
pub struct DeviceRefs {
    pub disks: Vec<DiskRef>,
    /// `None` when `interfaces` was not written at all.
    pub interfaces: Option<Vec<InterfaceRef>>,
    pub autoattach_pod_interface: bool,
    pub rng: bool,
    pub inputs: Vec<Input>,
    pub graphics: bool,
    pub serial_console: bool,
}

impl Default for DeviceRefs {
    fn default() -> Self {
        DeviceRefs {
            disks: Vec::new(),
            interfaces: None,
            autoattach_pod_interface: true,
            rng: false,
            inputs: Vec::new(),
            graphics: true,
            serial_console: true,
        }
    }
}

pub struct DiskRef {
    pub(super) name: String,
    pub(super) path: String,
    pub(super) readonly: bool,
    pub(super) serial: Option<String>,
    pub(super) boot_order: Option<u32>,
}

pub struct InterfaceRef {
    name: String,
    path: String,
    /// `None` when the binding had problems (already reported).
    binding: Option<NicBinding>,
    mac: Option<String>,
    ports: Vec<Port>,
}

pub fn read_devices(domain: &mut Object, diag: &mut Diagnostics) -> DeviceRefs {
    let mut refs = DeviceRefs::default();
    let Some(mut devices) = domain.object("devices", diag) else {
        return refs;
    };
    refs.disks = devices
        .list("disks", diag)
        .iter()
        .filter_map(|f| read_disk(f, diag))
        .collect();
    if let Some(field) = devices.field("interfaces") {
        refs.interfaces = Some(
            field
                .list(diag)
                .iter()
                .filter_map(|f| read_interface(f, diag))
                .collect(),
        );
    }
    refs.inputs = devices
        .list("inputs", diag)
        .iter()
        .filter_map(|f| read_input(f, diag))
        .collect();
    if let Some(rng) = devices.object("rng", diag) {
        rng.finish(diag);
        refs.rng = true;
    }
    read_autoattach(&mut devices, &mut refs, diag);
    for key in ["networkInterfaceMultiqueue", "blockMultiQueue"] {
        devices.ignore(key, "vmpod's virtio devices use one queue each", diag);
    }
    devices.ignore(
        "useVirtioTransitional",
        "vmpod's virtio devices are virtio-mmio",
        diag,
    );
    devices.ignore("disableHotplug", "vmpod has no hotplug", diag);
    devices.ignore(
        "logSerialConsole",
        "vmpod always copies the serial console to the container log",
        diag,
    );
    for key in [
        "gpus",
        "hostDevices",
        "filesystems",
        "watchdog",
        "sound",
        "tpm",
        "clientPassthrough",
        "downwardMetrics",
        "panicDevices",
        "video",
    ] {
        devices.reject(key, "vmpod has no such device", diag);
    }
    check_unique(refs.disks.iter().map(|d| (&d.name, &d.path)), "disk", diag);
    let inputs_path = join(devices.path(), "inputs");
    check_unique(
        refs.inputs.iter().map(|i| (&i.name, &inputs_path)),
        "input",
        diag,
    );
    devices.finish(diag);
    refs
}

fn read_autoattach(devices: &mut Object, refs: &mut DeviceRefs, diag: &mut Diagnostics) {
    if let Some(flag) = devices.bool("autoattachGraphicsDevice", diag) {
        refs.graphics = flag;
    }
    if let Some(flag) = devices.bool("autoattachSerialConsole", diag) {
        refs.serial_console = flag;
    }
    if let Some(flag) = devices.bool("autoattachPodInterface", diag) {
        refs.autoattach_pod_interface = flag;
    }
    if devices.bool("autoattachInputDevice", diag) == Some(true) && refs.inputs.is_empty() {
        refs.inputs.push(Input {
            name: "default-tablet".into(),
            kind: InputKind::Tablet,
        });
    }
    devices.ignore("autoattachMemBalloon", "vmpod has no memory balloon", diag);
    devices.reject("autoattachVSOCK", "vmpod has no vsock device", diag);
}

pub(super) fn check_unique<'a>(
    names: impl Iterator<Item = (&'a String, &'a String)>,
    what: &str,
    diag: &mut Diagnostics,
) {
    let mut seen = BTreeSet::new();
    for (name, path) in names {
        if !seen.insert(name.clone()) {
            diag.problem(path, format!("{what} name {} is used twice", quote(name)));
        }
    }
}

pub(super) fn read_name(object: &mut Object, diag: &mut Diagnostics) -> Option<String> {
    let field = object.required("name", diag)?;
    let name = field.string(diag)?;
    if let Err(why) = identity::check_dns_label(&name) {
        diag.problem(&field.path, format!("{} {why}", quote(&name)));
        return None;
    }
    Some(name)
}

fn read_disk(field: &Field, diag: &mut Diagnostics) -> Option<DiskRef> {
    let mut disk = field.object(diag)?;
    let name = read_name(&mut disk, diag);
    let mut readonly = false;
    if let Some(mut target) = disk.object("disk", diag) {
        check_virtio_bus(&mut target, diag);
        readonly = target.bool("readonly", diag).unwrap_or(false);
        target.reject(
            "pciAddress",
            "vmpod's devices are virtio-mmio, not PCI",
            diag,
        );
        target.finish(diag);
    }
    for key in ["cdrom", "lun", "floppy"] {
        disk.reject(
            key,
            "vmpod's disks are virtio block devices: use `disk: {bus: virtio}`",
            diag,
        );
    }
    let serial = disk
        .field("serial")
        .and_then(|f| read_disk_serial(&f, diag));
    let boot_order = match disk.field("bootOrder") {
        Some(f) => match f.integer(u64::from(u32::MAX), diag)? {
            0 => {
                diag.problem(&f.path, "must be 1 or more");
                None
            }
            order => Some(order as u32),
        },
        None => None,
    };
    for key in ["cache", "io", "dedicatedIOThread", "tag"] {
        disk.ignore(
            key,
            "vmpod's block device has one I/O path (writes reach the file before completion)",
            diag,
        );
    }
    for key in ["shareable", "errorPolicy", "blockSize"] {
        disk.reject(key, "vmpod's block device does not offer it", diag);
    }
    disk.finish(diag);
    Some(DiskRef {
        name: name?,
        path: field.path.clone(),
        readonly,
        serial,
        boot_order,
    })
}

fn check_virtio_bus(target: &mut Object, diag: &mut Diagnostics) {
    let Some(field) = target.field("bus") else {
        return;
    };
    if let Some(bus) = field.string(diag) {
        if bus != "virtio" {
            diag.problem(
                &field.path,
                format!("{} is not supported by vmpod (only virtio)", quote(&bus)),
            );
        }
    }
}

fn read_disk_serial(field: &Field, diag: &mut Diagnostics) -> Option<String> {
    let serial = field.string(diag)?;
    let valid = !serial.is_empty()
        && serial.len() <= MAX_DISK_SERIAL
        && serial
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !valid {
        diag.problem(
            &field.path,
            format!("{} must be 1 to {MAX_DISK_SERIAL} letters, digits, '-', '_' or '.' (virtio-blk's limit)", quote(&serial)),
        );
        return None;
    }
    Some(serial)
}

fn read_interface(field: &Field, diag: &mut Diagnostics) -> Option<InterfaceRef> {
    let mut interface = field.object(diag)?;
    let name = read_name(&mut interface, diag);
    let binding = read_binding(&mut interface, diag);
    let mac = interface.field("macAddress").and_then(|f| {
        let text = f.string(diag)?;
        match identity::parse_mac(&text) {
            Ok(octets) => Some(identity::format_mac(&octets)),
            Err(why) => {
                diag.problem(&f.path, format!("{} {why}", quote(&text)));
                None
            }
        }
    });
    if let Some(model) = interface.field("model") {
        if model.string(diag).is_some_and(|m| m != "virtio") {
            diag.problem(
                &model.path,
                "not supported by vmpod (its NICs are virtio-net: use virtio or leave it unset)",
            );
        }
    }
    let ports = interface
        .list("ports", diag)
        .iter()
        .filter_map(|f| read_port(f, diag))
        .collect();
    for key in [
        "pciAddress",
        "bootOrder",
        "dhcpOptions",
        "acpiIndex",
        "state",
    ] {
        interface.reject(key, "vmpod's NICs are plain virtio-mmio devices", diag);
    }
    interface.ignore("tag", "device role tags are not passed to the guest", diag);
    interface.finish(diag);
    Some(InterfaceRef {
        name: name?,
        path: field.path.clone(),
        binding,
        mac,
        ports,
    })
}

fn read_binding(interface: &mut Object, diag: &mut Diagnostics) -> Option<NicBinding> {
    let mut bindings = Vec::new();
    for (key, binding) in [
        ("masquerade", NicBinding::Passt),
        ("passt", NicBinding::Passt),
        ("bridge", NicBinding::Bridge),
    ] {
        if let Some(object) = interface.object(key, diag) {
            object.finish(diag);
            bindings.push(binding);
        }
    }
    if let Some(mut plugin) = interface.object("binding", diag) {
        match plugin
            .required("name", diag)
            .and_then(|f| f.string(diag).map(|n| (n, f.path)))
        {
            Some((name, _)) if name == "passt" => bindings.push(NicBinding::Passt),
            Some((name, path)) => diag.problem(
                &path,
                format!(
                    "{} is not supported by vmpod (only the passt binding plugin)",
                    quote(&name)
                ),
            ),
            None => {}
        }
        plugin.finish(diag);
    }
    for key in ["sriov", "slirp", "macvtap"] {
        interface.reject(key, "use masquerade, passt or bridge", diag);
    }
    match bindings.as_slice() {
        [binding] => Some(*binding),
        [] => Some(NicBinding::Passt),
        _ => {
            diag.problem(
                interface.path(),
                "choose one of masquerade, passt, bridge or binding",
            );
            None
        }
    }
}

fn read_port(field: &Field, diag: &mut Diagnostics) -> Option<Port> {
    let mut port = field.object(diag)?;
    let number = port
        .required("port", diag)
        .and_then(|f| match f.integer(65535, diag)? {
            0 => {
                diag.problem(&f.path, "must be 1 to 65535");
                None
            }
            n => Some(n as u16),
        });
    let protocol = match port.field("protocol") {
        None => Some(Protocol::Tcp),
        Some(f) => match f.string(diag)?.as_str() {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            other => {
                diag.problem(&f.path, format!("{} is not TCP or UDP", quote(other)));
                None
            }
        },
    };
    port.skip("name");
    port.finish(diag);
    Some(Port {
        port: number?,
        protocol: protocol?,
    })
}

fn read_input(field: &Field, diag: &mut Diagnostics) -> Option<Input> {
    let mut input = field.object(diag)?;
    let name = read_name(&mut input, diag);
    let kind = input
        .required("type", diag)
        .and_then(|f| match f.string(diag)?.as_str() {
            "tablet" => Some(InputKind::Tablet),
            "keyboard" => Some(InputKind::Keyboard),
            other => {
                diag.problem(
                    &f.path,
                    format!("{} is not an input type (tablet or keyboard)", quote(other)),
                );
                None
            }
        });
    if let Some(bus) = input.field("bus") {
        match bus.string(diag).as_deref() {
            Some("virtio") | None => {}
            Some(other @ ("usb" | "ps2")) => diag.ignore(
                &bus.path,
                format!("vmpod's input devices are virtio, so this {other} one is a virtio device (Linux has the driver, Windows needs virtio-win's vioinput)"),
            ),
            Some(other) => diag.problem(
                &bus.path,
                format!("{} is not an input bus (virtio, usb or ps2)", quote(other)),
            ),
        }
    }
    input.finish(diag);
    Some(Input {
        name: name?,
        kind: kind?,
    })
}

/// A network, read but not yet joined to its interface.
pub struct Network {
    name: String,
    path: String,
}

pub fn read_networks(spec: &mut Object, diag: &mut Diagnostics) -> Vec<Network> {
    let networks: Vec<Network> = spec
        .list("networks", diag)
        .iter()
        .filter_map(|f| read_network(f, diag))
        .collect();
    check_unique(networks.iter().map(|n| (&n.name, &n.path)), "network", diag);
    if let Some(second) = networks.get(1) {
        diag.problem(
            &second.path,
            "not supported by vmpod (a pod has one network, the pod network)",
        );
    }
    networks
}

fn read_network(field: &Field, diag: &mut Diagnostics) -> Option<Network> {
    let mut network = field.object(diag)?;
    let name = read_name(&mut network, diag);
    match network.object("pod", diag) {
        Some(mut pod) => {
            pod.reject(
                "vmNetworkCIDR",
                "passt gives the guest the pod's own address",
                diag,
            );
            pod.reject(
                "vmIPv6NetworkCIDR",
                "passt gives the guest the pod's own address",
                diag,
            );
            pod.finish(diag);
        }
        None if !network.has("multus") => diag.problem(
            &join(&field.path, "pod"),
            "required: vmpod attaches the pod network (`pod: {}`)",
        ),
        None => {}
    }
    network.reject("multus", "vmpod attaches only the pod network", diag);
    network.finish(diag);
    Some(Network {
        name: name?,
        path: field.path.clone(),
    })
}

/// Joins each interface to its network; adds KubeVirt's default interface.
pub fn attach_networks(
    refs: &DeviceRefs,
    networks: Vec<Network>,
    vm_uuid: &uuid::Uuid,
    diag: &mut Diagnostics,
) -> Vec<Nic> {
    let nic = |name: &str, binding, mac: Option<String>, ports| Nic {
        name: name.to_owned(),
        binding,
        mac: mac.unwrap_or_else(|| identity::derived_mac(vm_uuid, name)),
        ports,
    };
    let Some(interfaces) = &refs.interfaces else {
        if networks.is_empty() && refs.autoattach_pod_interface {
            return vec![nic("default", NicBinding::Passt, None, Vec::new())];
        }
        for network in &networks {
            diag.problem(
                &join(&network.path, "name"),
                format!(
                    "network {} has no interface in domain.devices.interfaces",
                    quote(&network.name)
                ),
            );
        }
        return Vec::new();
    };
    check_unique(
        interfaces.iter().map(|i| (&i.name, &i.path)),
        "interface",
        diag,
    );
    for network in &networks {
        if !interfaces.iter().any(|i| i.name == network.name) {
            diag.problem(
                &join(&network.path, "name"),
                format!(
                    "network {} has no interface in domain.devices.interfaces",
                    quote(&network.name)
                ),
            );
        }
    }
    let mut nics = Vec::new();
    for interface in interfaces {
        if !networks.iter().any(|n| n.name == interface.name) {
            diag.problem(
                &join(&interface.path, "name"),
                format!("no network named {} in networks", quote(&interface.name)),
            );
            continue;
        }
        let Some(binding) = interface.binding else {
            continue;
        };
        nics.push(nic(
            &interface.name,
            binding,
            interface.mac.clone(),
            interface.ports.clone(),
        ));
    }
    nics
}
