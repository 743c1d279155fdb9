//! `spec.instancetype` and `spec.preference`: resolves them (through a
//! [`Lookup`]: the cluster's objects, or the bundled copy of KubeVirt's
//! common ones) and writes what they say into the VM's template, as
//! KubeVirt's controller does when it creates the instance. The result is
//! an ordinary definition the readers check.
//!
//! Pure apart from the lookup the caller hands in. Any thread.

use serde_norway::{Mapping, Value};

use super::doc::{quote, Diagnostics};
use super::quantity::{format_bytes, Quantity};

/// Which kind of object a reference names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    ClusterInstancetype,
    Instancetype,
    ClusterPreference,
    Preference,
}

impl Kind {
    pub fn kubevirt_kind(self) -> &'static str {
        match self {
            Kind::ClusterInstancetype => "VirtualMachineClusterInstancetype",
            Kind::Instancetype => "VirtualMachineInstancetype",
            Kind::ClusterPreference => "VirtualMachineClusterPreference",
            Kind::Preference => "VirtualMachinePreference",
        }
    }

    /// The resource name in `instancetype.kubevirt.io` URLs.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::ClusterInstancetype => "virtualmachineclusterinstancetypes",
            Kind::Instancetype => "virtualmachineinstancetypes",
            Kind::ClusterPreference => "virtualmachineclusterpreferences",
            Kind::Preference => "virtualmachinepreferences",
        }
    }

    pub fn is_cluster_wide(self) -> bool {
        matches!(self, Kind::ClusterInstancetype | Kind::ClusterPreference)
    }

    fn parse(text: &str, preference: bool) -> Option<Kind> {
        let lower = text.to_ascii_lowercase();
        let kind = match (lower.as_str(), preference) {
            ("virtualmachineclusterinstancetype" | "virtualmachineclusterinstancetypes", false) => {
                Kind::ClusterInstancetype
            }
            ("virtualmachineinstancetype" | "virtualmachineinstancetypes", false) => {
                Kind::Instancetype
            }
            ("virtualmachineclusterpreference" | "virtualmachineclusterpreferences", true) => {
                Kind::ClusterPreference
            }
            ("virtualmachinepreference" | "virtualmachinepreferences", true) => Kind::Preference,
            _ => return None,
        };
        Some(kind)
    }
}

/// An instancetype or preference found by a [`Lookup`].
#[derive(Debug, Clone)]
pub struct Found {
    /// The object's `spec`.
    pub spec: Value,
    /// Where it came from, for the log: `the cluster`, `vmpod's bundled copy`.
    pub from: String,
}

/// Finds instancetypes and preferences. `Ok(None)`: there is no such object.
pub trait Lookup {
    fn find(&self, kind: Kind, namespace: &str, name: &str) -> Result<Option<Found>, String>;
}

/// The common instancetypes and preferences vmpod carries.
pub struct Bundled;

const BUNDLED: &str = include_str!("bundled-instancetypes.txt");

impl Lookup for Bundled {
    fn find(&self, kind: Kind, _namespace: &str, name: &str) -> Result<Option<Found>, String> {
        if !kind.is_cluster_wide() {
            // The common set is cluster-wide; a namespaced one is the user's own.
            return Ok(None);
        }
        let wanted = if kind == Kind::ClusterInstancetype {
            "instancetype"
        } else {
            "preference"
        };
        let line = BUNDLED
            .lines()
            .filter(|line| !line.starts_with('#'))
            .map(|line| line.split_whitespace().collect::<Vec<_>>())
            .find(|words| words.len() >= 4 && words[0] == wanted && words[1] == name);
        Ok(line.map(|words| Found {
            spec: bundled_spec(kind, &words[2..]),
            from: "vmpod's bundled copy of KubeVirt's common-instancetypes".to_owned(),
        }))
    }
}

/// The bundled names an unknown `name` was probably meant to be: those of
/// its series (`u1.huge` → every `u1.` size), else every series or preference.
pub fn bundled_names(kind: Kind, name: &str) -> Vec<String> {
    let wanted = if kind == Kind::ClusterPreference {
        "preference"
    } else {
        "instancetype"
    };
    let names: Vec<&str> = BUNDLED
        .lines()
        .filter_map(|line| line.strip_prefix(wanted)?.split_whitespace().next())
        .collect();
    let series = |name: &str| name.split_once('.').map(|(series, _)| format!("{series}."));
    let same_series: Vec<String> = names
        .iter()
        .filter(|known| kind != Kind::ClusterPreference && series(known) == series(name))
        .map(|known| known.to_string())
        .collect();
    if !same_series.is_empty() {
        return same_series;
    }
    if kind == Kind::ClusterPreference {
        return names.iter().map(|known| known.to_string()).collect();
    }
    let mut all_series: Vec<String> = names
        .iter()
        .filter_map(|known| series(known).map(|s| format!("{s}*")))
        .collect();
    all_series.dedup();
    all_series
}

fn bundled_spec(kind: Kind, words: &[&str]) -> Value {
    let guest = |key: &str, value: Value| {
        let mut inner = Mapping::new();
        inner.insert(key.into(), value);
        Value::Mapping(inner)
    };
    let cpus: u64 = words[0].parse().unwrap_or(1);
    let mut spec = Mapping::new();
    if kind == Kind::ClusterPreference {
        let mut requirements = Mapping::new();
        requirements.insert("cpu".into(), guest("guest", cpus.into()));
        requirements.insert("memory".into(), guest("guest", words[1].into()));
        spec.insert("requirements".into(), Value::Mapping(requirements));
        let mut devices = Mapping::new();
        devices.insert("preferredDiskBus".into(), "virtio".into());
        devices.insert("preferredInterfaceModel".into(), "virtio".into());
        devices.insert("preferredRng".into(), Value::Mapping(Mapping::new()));
        spec.insert("devices".into(), Value::Mapping(devices));
        return Value::Mapping(spec);
    }
    let mut cpu = Mapping::new();
    cpu.insert("guest".into(), cpus.into());
    let mut memory = Mapping::new();
    memory.insert("guest".into(), words[1].into());
    for trait_word in &words[2..] {
        match trait_word.split_once('=') {
            Some(("overcommitPercent", percent)) => {
                memory.insert(
                    "overcommitPercent".into(),
                    percent.parse::<u64>().unwrap_or(0).into(),
                );
            }
            Some(("hugepages", size)) => {
                memory.insert("hugepages".into(), guest("pageSize", size.into()));
            }
            _ => {
                cpu.insert((*trait_word).into(), true.into());
            }
        }
    }
    spec.insert("cpu".into(), Value::Mapping(cpu));
    spec.insert("memory".into(), Value::Mapping(memory));
    Value::Mapping(spec)
}

/// What the VM's domain ends up with, for the preference's requirements.
struct Sizes {
    vcpus: Option<u64>,
    memory: Option<u64>,
}

/// Resolves and applies `spec.instancetype` and `spec.preference` of a
/// VirtualMachine `vm` in place; removes both references. False when a
/// reference could not be resolved (reading on would only add the
/// problems of the missing sizes).
pub fn expand(vm: &mut Value, lookup: &dyn Lookup, diag: &mut Diagnostics) -> bool {
    let namespace = vm
        .get("metadata")
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
        .unwrap_or("default")
        .to_owned();
    let Some(spec) = vm.get_mut("spec").and_then(Value::as_mapping_mut) else {
        return true;
    };
    let instancetype = spec.remove("instancetype");
    let preference = spec.remove("preference");
    if instancetype.is_none() && preference.is_none() {
        return true;
    }
    let wanted_preference = preference.is_some();
    let Some(domain) = spec
        .get_mut("template")
        .and_then(|t| t.get_mut("spec"))
        .and_then(|s| s.get_mut("domain"))
        .and_then(Value::as_mapping_mut)
    else {
        // The readers report the missing template.
        return true;
    };
    let preference = preference.and_then(|reference| {
        resolve(&reference, true, &namespace, lookup, diag).map(|found| (reference, found))
    });
    let mut resolved = preference.is_some() || !wanted_preference;
    let mut sizes = Sizes {
        vcpus: None,
        memory: None,
    };
    if let Some(reference) = instancetype {
        let found = resolve(&reference, false, &namespace, lookup, diag);
        resolved &= found.is_some();
        if let Some((name, found)) = found {
            let topology = preference
                .as_ref()
                .and_then(|(_, (_, p))| text(&p.spec, &["cpu", "preferredCPUTopology"]))
                .unwrap_or("preferSockets")
                .to_owned();
            sizes = apply_instancetype(domain, &name, &found, &topology, diag);
        }
    }
    if sizes.vcpus.is_none() {
        sizes.vcpus = own_vcpus(domain);
    }
    if sizes.memory.is_none() {
        sizes.memory = text(&Value::Mapping(domain.clone()), &["memory", "guest"])
            .and_then(|q| Quantity::parse(q).ok()?.to_u64_ceil().ok());
    }
    if let Some((_, (name, found))) = preference {
        apply_preference(domain, &name, &found, &sizes, diag);
    }
    resolved
}

fn text<'v>(value: &'v Value, path: &[&str]) -> Option<&'v str> {
    path.iter()
        .try_fold(value, |value, key| value.get(*key))?
        .as_str()
}

/// Finds what `spec.instancetype`/`spec.preference` names.
fn resolve(
    reference: &Value,
    preference: bool,
    namespace: &str,
    lookup: &dyn Lookup,
    diag: &mut Diagnostics,
) -> Option<(String, Found)> {
    let path = if preference {
        "spec.preference"
    } else {
        "spec.instancetype"
    };
    let Some(name) = reference.get("name").and_then(Value::as_str) else {
        diag.problem(
            &format!("{path}.name"),
            "required: the name of the instancetype or preference",
        );
        return None;
    };
    let default_kind = if preference {
        Kind::ClusterPreference
    } else {
        Kind::ClusterInstancetype
    };
    let kind = match reference.get("kind").and_then(Value::as_str) {
        None => default_kind,
        Some(text) => match Kind::parse(text, preference) {
            Some(kind) => kind,
            None => {
                let expected = if preference {
                    "VirtualMachineClusterPreference or VirtualMachinePreference"
                } else {
                    "VirtualMachineClusterInstancetype or VirtualMachineInstancetype"
                };
                diag.problem(
                    &format!("{path}.kind"),
                    format!("{} is not {expected}", quote(text)),
                );
                return None;
            }
        },
    };
    for key in [
        "revisionName",
        "inferFromVolume",
        "inferFromVolumeFailurePolicy",
    ] {
        if reference.get(key).is_some() {
            diag.ignore(
                &format!("{path}.{key}"),
                "vmpod resolves the reference by name at every start",
            );
        }
    }
    match lookup.find(kind, namespace, name) {
        Ok(Some(found)) => Some((name.to_owned(), found)),
        Ok(None) => {
            let known = if kind.is_cluster_wide() {
                format!(
                    "; vmpod's bundled copy has {}",
                    bundled_names(kind, name).join(", ")
                )
            } else {
                String::new()
            };
            let place = if kind.is_cluster_wide() {
                String::new()
            } else {
                format!(" in namespace {namespace}")
            };
            diag.problem(
                &format!("{path}.name"),
                format!(
                    "no {} named {}{place}{known}",
                    kind.kubevirt_kind(),
                    quote(name)
                ),
            );
            None
        }
        Err(why) => {
            diag.problem(
                &format!("{path}.name"),
                format!(
                    "cannot look up {} {}: {why}",
                    kind.kubevirt_kind(),
                    quote(name)
                ),
            );
            None
        }
    }
}

/// Fields of an instancetype that place the VM on a node: the pod's business.
const PLACEMENT_TRAITS: &[(&str, &str)] = &[
    ("dedicatedCPUPlacement", "cpu"),
    ("isolateEmulatorThread", "cpu"),
    ("numa", "cpu"),
    ("realtime", "cpu"),
    ("maxSockets", "cpu"),
    ("hugepages", "memory"),
    ("overcommitPercent", "memory"),
    ("maxGuest", "memory"),
];

fn apply_instancetype(
    domain: &mut Mapping,
    name: &str,
    found: &Found,
    topology: &str,
    diag: &mut Diagnostics,
) -> Sizes {
    let spec = &found.spec;
    let vcpus = spec
        .get("cpu")
        .and_then(|c| c.get("guest"))
        .and_then(Value::as_u64);
    let memory_text = text(spec, &["memory", "guest"]);
    let memory = memory_text.and_then(|q| Quantity::parse(q).ok()?.to_u64_ceil().ok());
    let (Some(vcpus), Some(memory), Some(memory_text)) = (vcpus, memory, memory_text) else {
        diag.problem(
            "spec.instancetype.name",
            format!(
                "instancetype {} has no cpu.guest or memory.guest",
                quote(name)
            ),
        );
        return Sizes {
            vcpus: None,
            memory: None,
        };
    };
    let cpu = entry_mapping(domain, "cpu");
    for key in ["sockets", "cores", "threads"] {
        if cpu.contains_key(key) {
            diag.problem(
                &format!("spec.template.spec.domain.cpu.{key}"),
                format!("conflicts with instancetype {}, which sets the vCPUs (remove one, as KubeVirt requires)", quote(name)),
            );
        }
    }
    let (sockets, cores, threads) = match topology {
        "preferCores" | "cores" => (1, vcpus, 1),
        "preferThreads" | "threads" => (1, 1, vcpus),
        _ => (vcpus, 1, 1),
    };
    cpu.insert("sockets".into(), sockets.into());
    cpu.insert("cores".into(), cores.into());
    cpu.insert("threads".into(), threads.into());
    if let Some(model) = text(spec, &["cpu", "model"]) {
        cpu.entry("model".into()).or_insert_with(|| model.into());
    }
    let memory_map = entry_mapping(domain, "memory");
    if memory_map.contains_key("guest") {
        diag.problem(
            "spec.template.spec.domain.memory.guest",
            format!("conflicts with instancetype {}, which sets the guest memory (remove one, as KubeVirt requires)", quote(name)),
        );
    }
    memory_map.insert("guest".into(), memory_text.into());
    for (key, section) in PLACEMENT_TRAITS {
        if spec.get(*section).and_then(|s| s.get(*key)).is_some() {
            diag.ignore(
                &format!("spec.instancetype ({name}).{section}.{key}"),
                "placement on the node: give the pod guaranteed resources (and hugepages) instead",
            );
        }
    }
    diag.ignore(
        "spec.instancetype",
        format!(
            "{name} from {}: {vcpus} vCPU{}, {} memory",
            found.from,
            if vcpus == 1 { "" } else { "s" },
            format_bytes(memory)
        ),
    );
    Sizes {
        vcpus: Some(vcpus),
        memory: Some(memory),
    }
}

fn own_vcpus(domain: &Mapping) -> Option<u64> {
    let cpu = domain.get("cpu")?;
    let count = |key: &str| cpu.get(key).and_then(Value::as_u64).unwrap_or(1);
    Some(count("sockets") * count("cores") * count("threads"))
}

fn entry_mapping<'m>(map: &'m mut Mapping, key: &str) -> &'m mut Mapping {
    let entry = map
        .entry(key.into())
        .or_insert_with(|| Value::Mapping(Mapping::new()));
    if !entry.is_mapping() {
        *entry = Value::Mapping(Mapping::new());
    }
    entry.as_mapping_mut().expect("just made a mapping")
}

fn apply_preference(
    domain: &mut Mapping,
    name: &str,
    found: &Found,
    sizes: &Sizes,
    diag: &mut Diagnostics,
) {
    let spec = &found.spec;
    let required_vcpus = spec
        .get("requirements")
        .and_then(|r| r.get("cpu"))
        .and_then(|c| c.get("guest"))
        .and_then(Value::as_u64);
    if let (Some(required), Some(have)) = (required_vcpus, sizes.vcpus) {
        if have < required {
            diag.problem(
                "spec.preference.name",
                format!(
                    "preference {} requires at least {required} vCPUs; the VM has {have}",
                    quote(name)
                ),
            );
        }
    }
    let required_memory = text(spec, &["requirements", "memory", "guest"])
        .and_then(|q| Quantity::parse(q).ok()?.to_u64_ceil().ok());
    if let (Some(required), Some(have)) = (required_memory, sizes.memory) {
        if have < required {
            diag.problem(
                "spec.preference.name",
                format!(
                    "preference {} requires at least {} of memory; the VM has {}",
                    quote(name),
                    format_bytes(required),
                    format_bytes(have)
                ),
            );
        }
    }
    let devices_preferred = spec.get("devices");
    let devices = entry_mapping(domain, "devices");
    if devices_preferred
        .and_then(|d| d.get("preferredRng"))
        .is_some()
    {
        devices
            .entry("rng".into())
            .or_insert_with(|| Value::Mapping(Mapping::new()));
    }
    for (preferred, field) in [
        (
            "preferredAutoattachSerialConsole",
            "autoattachSerialConsole",
        ),
        (
            "preferredAutoattachGraphicsDevice",
            "autoattachGraphicsDevice",
        ),
    ] {
        if let Some(value) = devices_preferred.and_then(|d| d.get(preferred)) {
            devices.entry(field.into()).or_insert_with(|| value.clone());
        }
    }
    if let Some(bus) = devices_preferred
        .and_then(|d| d.get("preferredDiskBus"))
        .cloned()
    {
        for disk in sequence_mut(devices, "disks") {
            if let Some(target) = disk.get_mut("disk").and_then(Value::as_mapping_mut) {
                target.entry("bus".into()).or_insert_with(|| bus.clone());
            }
        }
    }
    if let Some(model) = devices_preferred
        .and_then(|d| d.get("preferredInterfaceModel"))
        .cloned()
    {
        for interface in sequence_mut(devices, "interfaces") {
            if let Some(interface) = interface.as_mapping_mut() {
                interface
                    .entry("model".into())
                    .or_insert_with(|| model.clone());
            }
        }
    }
    diag.ignore(
        "spec.preference",
        format!(
            "{name} from {}: applied where the VM sets nothing",
            found.from
        ),
    );
}

fn sequence_mut<'m>(map: &'m mut Mapping, key: &str) -> impl Iterator<Item = &'m mut Value> {
    map.get_mut(key)
        .and_then(Value::as_sequence_mut)
        .into_iter()
        .flatten()
}
