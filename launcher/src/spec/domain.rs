//! Reads the domain's CPU, memory, resources, firmware and the machine-level
//! fields (`machine`, `features`, `clock`) of a KubeVirt definition.
//!
//! Pure: called by the `kubevirt` reader on the same document, on any thread.

use std::path::PathBuf;

use super::config::{CpuTopology, KernelBoot};
use super::doc::{join, quote, Diagnostics, Field, Object};

const DEFAULT_CMDLINE: &str = "console=ttyS0";
const MAX_VCPUS: u64 = 254;
const MIN_MEMORY: u64 = 1 << 20;
const MAX_MEMORY: u64 = 1 << 40;
const MAX_CMDLINE: usize = 2047;
const PAGE_SIZE: u64 = 4096;

/// `domain.resources`: what the pod is asked for.
#[derive(Default)]
pub(super) struct Resources {
    /// Whether requests.memory or limits.memory was written at all.
    memory_given: bool,
    memory_request: Option<u64>,
    pub(super) memory_limit: Option<u64>,
    cpu_limit: Option<u64>,
}

pub(super) fn read_resources(domain: &mut Object, diag: &mut Diagnostics) -> Resources {
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

/// `vcpus` as one socket where the MADT and CPUID allow it, else as the
/// fewest equal sockets they can describe (one core each always works).
fn topology_for(vcpus: u32) -> CpuTopology {
    let with_sockets = |sockets| CpuTopology {
        sockets,
        cores: vcpus / sockets,
        threads: 1,
    };
    (1..=vcpus)
        .filter(|sockets| vcpus.is_multiple_of(*sockets))
        .map(with_sockets)
        .find(|topology| topology.problems().is_empty())
        .unwrap_or_else(|| with_sockets(vcpus))
}

pub(super) fn read_cpu(
    domain: &mut Object,
    resources: &Resources,
    diag: &mut Diagnostics,
) -> Option<CpuTopology> {
    let Some(mut cpu) = domain.object("cpu", diag) else {
        // KubeVirt sizes a VM without a topology from its CPU limit.
        let vcpus = resources.cpu_limit.unwrap_or(1).clamp(1, MAX_VCPUS) as u32;
        return Some(topology_for(vcpus));
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
    let problems = topology.problems();
    for problem in &problems {
        diag.problem(&cpu_path, problem.clone());
    }
    problems.is_empty().then_some(topology)
}

pub(super) fn read_memory(
    domain: &mut Object,
    resources: &Resources,
    diag: &mut Diagnostics,
) -> Option<u64> {
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

/// Firmware: (UUID if given, serial, kernel boot if given).
pub(super) type Firmware = (Option<uuid::Uuid>, Option<String>, Option<KernelBoot>);

pub(super) fn read_firmware(domain: &mut Object, diag: &mut Diagnostics) -> Option<Firmware> {
    let mut firmware = domain.object("firmware", diag);
    let mut uuid = None;
    let mut serial = None;
    let mut boot = None;
    let mut valid = true;
    if let Some(firmware) = firmware.as_mut() {
        if let Some(field) = firmware.field("uuid") {
            let text = field.string(diag).unwrap_or_default();
            match uuid::Uuid::parse_str(&text) {
                Ok(parsed) => uuid = Some(parsed),
                Err(_) => diag.problem(&field.path, format!("{} is not a UUID", quote(&text))),
            }
        }
        serial = read_firmware_serial(firmware, diag);
        if let Some(kernel_boot) = firmware.object("kernelBoot", diag) {
            boot = read_kernel_boot(kernel_boot, diag);
            valid = boot.is_some();
        }
        if let Some(bootloader) = firmware.object("bootloader", diag) {
            read_bootloader(bootloader, boot.is_some(), diag);
        }
        firmware.reject("acpi", "vmpod writes its own ACPI tables", diag);
    }
    if let Some(firmware) = firmware {
        firmware.finish(diag);
    }
    valid.then_some((uuid, serial, boot))
}

/// `bootloader.bios` or `.efi`: vmpod runs no firmware, but boots the
/// disk's kernel as the firmware's bootloader would; Secure Boot, which
/// it cannot enforce, is refused when asked for.
fn read_bootloader(mut bootloader: Object, kernel_boot: bool, diag: &mut Diagnostics) {
    let note = if kernel_boot {
        "kernelBoot takes precedence: vmpod boots that kernel and runs no firmware"
    } else {
        "vmpod runs no firmware: it boots the kernel that the boot disk's own configuration names (BLS, extlinux, grub.cfg), directly"
    };
    bootloader.ignore("bios", note, diag);
    if let Some(mut efi) = bootloader.object("efi", diag) {
        diag.ignore(efi.path(), note);
        if let Some(field) = efi.field("secureBoot") {
            if field.bool(diag) == Some(true) {
                diag.problem(
                    &field.path,
                    "not supported by vmpod (it boots the disk's kernel directly and cannot verify signatures); set secureBoot: false",
                );
            }
        } else if !kernel_boot {
            diag.ignore(
                &join(efi.path(), "secureBoot"),
                "KubeVirt enables Secure Boot by default for efi, but vmpod cannot verify signatures: the kernel boots unverified (set secureBoot: false to say so)",
            );
        }
        efi.ignore("persistent", "vmpod keeps no EFI variables", diag);
        efi.finish(diag);
    }
    bootloader.finish(diag);
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
    let mut image = None;
    if let Some(mut container) = kernel_boot
        .required("container", diag)
        .and_then(|f| f.object(diag))
    {
        image = read_image_fields(&mut container, diag);
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
        image,
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

/// `image` (kept: `vmpod render --pod` mounts it, and `launch` finds the
/// files in that mount) and its pull settings, which are the pod's business.
pub fn read_image_fields(object: &mut Object, diag: &mut Diagnostics) -> Option<String> {
    object.ignore("imagePullPolicy", "images are pulled by the pod", diag);
    object.ignore("imagePullSecret", "images are pulled by the pod", diag);
    object.field("image").and_then(|field| field.string(diag))
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

pub(super) fn read_domain_extras(domain: &mut Object, diag: &mut Diagnostics) {
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

#[cfg(test)]
mod topology_tests {
    use super::*;

    #[test]
    fn a_cpu_limit_becomes_a_topology_cpuid_can_describe() {
        for vcpus in 1..=MAX_VCPUS as u32 {
            let topology = topology_for(vcpus);
            assert_eq!(topology.vcpus(), vcpus);
            assert!(topology.problems().is_empty(), "{vcpus}: {topology:?}");
        }
        assert_eq!(topology_for(100).sockets, 2);
    }
}
