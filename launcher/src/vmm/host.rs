//! What the host and the container must provide before a VM can start:
//! a usable /dev/kvm, and room for guest memory under the container's
//! memory limit and on the host. Every failure says what to do.
//!
//! VMM thread, before anything is built.

use std::path::{Path, PathBuf};

use kvm_ioctls::Kvm;

use crate::spec::quantity::format_bytes;

pub const KVM_PATH: &std::ffi::CStr = c"/dev/kvm";
/// What vmpod itself needs beside guest RAM (binary, threads, page tables,
/// device buffers, a passt per NIC), rounded up generously: measured idle
/// at about 4.5 MiB.
pub const VMM_OVERHEAD_BYTES: u64 = 16 << 20;
/// What the `vmpod-cluster` helper needs while it reports the VM's status
/// (measured at about 7.5 MiB resident).
pub const STATUS_HELPER_BYTES: u64 = 8 << 20;
const KVM_API_VERSION: i32 = 12;

/// What a display adds to vmpod's memory: the framebuffer the guest
/// draws on, the VNC server's copy of it, and the frames two viewers have
/// (more viewers take a frame each).
pub fn display_bytes(display: Option<crate::spec::config::Display>) -> u64 {
    display.map_or(0, |size| {
        4 * u64::from(size.width) * u64::from(size.height) * 4
    })
}

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("/dev/kvm does not exist: this node has no KVM, or the pod does not pass the device in. In a pod, mount /dev/kvm with a hostPath volume of type CharDevice (see manifests/), on a node with hardware virtualisation")]
    KvmMissing,
    #[error("permission denied on /dev/kvm ({device}; vmpod runs as uid {uid}, groups {groups}): in a pod, add the device's group to securityContext.supplementalGroups, make /dev/kvm 0666 on the node (as systemd's udev rule does), or run as root; elsewhere, run vmpod as a user in the device's group (often `kvm`)")]
    KvmDenied {
        device: String,
        uid: u32,
        groups: String,
    },
    #[error("cannot open /dev/kvm")]
    KvmOpen(#[source] kvm_ioctls::Error),
    #[error("/dev/kvm speaks KVM API version {0}, vmpod needs version 12")]
    KvmApiVersion(i32),
    #[error("guest memory ({}) plus vmpod's overhead ({}) does not fit the container's memory limit ({}, from {}): raise the pod's resources.limits.memory or lower domain.memory.guest", format_bytes(*guest), format_bytes(*overhead), format_bytes(*limit), source_file.display())]
    ContainerLimit {
        guest: u64,
        overhead: u64,
        limit: u64,
        source_file: PathBuf,
    },
    #[error("guest memory ({}) is more than this host has ({}): lower domain.memory.guest", format_bytes(*guest), format_bytes(*host_total))]
    HostMemory { guest: u64, host_total: u64 },
    #[error("the VM has {vcpus} vCPUs but the container's CPU limit allows {} (from {}): raise the pod's resources.limits.cpu to {vcpus} or lower the VM's vCPUs (domain.cpu)", format_cpus(*quota), source_file.display())]
    ContainerCpus {
        vcpus: u32,
        /// CPUs' worth of time the quota gives per period.
        quota: f64,
        source_file: PathBuf,
    },
}

fn format_cpus(cpus: f64) -> String {
    let text = format!("{cpus:.2}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text} CPU{}", if cpus == 1.0 { "" } else { "s" })
}

/// Opens /dev/kvm, turning the usual failures into advice.
pub fn open_kvm() -> Result<Kvm, HostError> {
    let kvm = Kvm::new_with_path(KVM_PATH).map_err(|error| match error.errno() {
        libc::ENOENT => HostError::KvmMissing,
        libc::EACCES | libc::EPERM => kvm_denied(),
        _ => HostError::KvmOpen(error),
    })?;
    match kvm.get_api_version() {
        KVM_API_VERSION => Ok(kvm),
        other => Err(HostError::KvmApiVersion(other)),
    }
}

/// Who vmpod is and what /dev/kvm allows, for the error that names them.
fn kvm_denied() -> HostError {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    let device = match std::fs::metadata(OsStr::from_bytes(KVM_PATH.to_bytes())) {
        Ok(meta) => format!(
            "mode {:04o}, owner {}:{}",
            meta.mode() & 0o7777,
            meta.uid(),
            meta.gid()
        ),
        Err(error) => format!("cannot stat it: {error}"),
    };
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .map(|rest| rest.split_whitespace().collect::<Vec<_>>())
            .unwrap_or_default()
    };
    let uid = field("Uid:")
        .first()
        .and_then(|uid| uid.parse().ok())
        .unwrap_or(u32::MAX);
    let mut groups = field("Gid:").into_iter().take(1).collect::<Vec<_>>();
    groups.extend(field("Groups:"));
    HostError::KvmDenied {
        device,
        uid,
        groups: groups.join(","),
    }
}

/// Says once that this host's KVM is the PVM flavour, and what that means.
pub fn warn_if_pvm() {
    if Path::new("/sys/module/kvm_pvm").exists() {
        log::warn!(
            "this host's KVM is PVM: only PVM-enabled guest kernels run at native speed; \
             other guest code goes through KVM's instruction emulator (about a million \
             instructions per second), so a stock Linux kernel takes minutes to boot here"
        );
    }
}

/// Reads a cgroup memory limit: v2 `memory.max` ("max" = none) or v1
/// `memory.limit_in_bytes` (a huge number = none).
pub fn parse_memory_limit(text: &str) -> Option<u64> {
    let limit: u64 = text.trim().parse().ok()?;
    (limit < 1 << 60).then_some(limit)
}

/// The container's memory limit and where it was read from.
pub fn container_memory_limit() -> Option<(u64, PathBuf)> {
    [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .find_map(|file| {
        let text = std::fs::read_to_string(file).ok()?;
        Some((parse_memory_limit(&text)?, PathBuf::from(file)))
    })
}

/// Reads a cgroup CPU quota as CPUs: v2 `cpu.max` ("QUOTA PERIOD", "max"
/// = none), or v1's quota and period files' contents (-1 = none).
pub fn parse_cpu_quota(quota: &str, period: Option<&str>) -> Option<f64> {
    let mut words = quota.split_whitespace();
    let quota: f64 = words.next()?.parse().ok().filter(|q: &f64| *q > 0.0)?;
    let period: f64 = match period {
        Some(text) => text.trim().parse().ok()?,
        None => words.next()?.parse().ok()?,
    };
    (period > 0.0).then(|| quota / period)
}

/// The container's CPU limit in CPUs and where it was read from.
pub fn container_cpu_limit() -> Option<(f64, PathBuf)> {
    let read = |file: &str| std::fs::read_to_string(file).ok();
    if let Some(text) = read("/sys/fs/cgroup/cpu.max") {
        return Some((
            parse_cpu_quota(&text, None)?,
            "/sys/fs/cgroup/cpu.max".into(),
        ));
    }
    let quota = read("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")?;
    let period = read("/sys/fs/cgroup/cpu/cpu.cfs_period_us")?;
    Some((
        parse_cpu_quota(&quota, Some(&period))?,
        "/sys/fs/cgroup/cpu/cpu.cfs_quota_us".into(),
    ))
}

/// The VM's vCPUs must fit the container's CPU quota: more vCPUs than the
/// quota pays for would stall the guest under throttling (a vCPU that
/// misses its time slice looks hung to the other vCPUs).
pub fn check_cpus(vcpus: u32, container_limit: Option<(f64, PathBuf)>) -> Result<(), HostError> {
    match container_limit {
        Some((quota, source_file)) if f64::from(vcpus) > quota.ceil() => {
            Err(HostError::ContainerCpus {
                vcpus,
                quota,
                source_file,
            })
        }
        _ => Ok(()),
    }
}

/// `MemTotal` from /proc/meminfo, in bytes.
pub fn host_memory_total() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Checks that guest memory fits before anything is mapped.
pub fn check_memory(
    guest: u64,
    overhead: u64,
    container_limit: Option<(u64, PathBuf)>,
    host_total: Option<u64>,
) -> Result<(), HostError> {
    if let Some((limit, source_file)) = container_limit {
        if guest.saturating_add(overhead) > limit {
            return Err(HostError::ContainerLimit {
                guest,
                overhead,
                limit,
                source_file,
            });
        }
    }
    if let Some(host_total) = host_total {
        if guest > host_total {
            return Err(HostError::HostMemory { guest, host_total });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_limits_v1_and_v2() {
        assert_eq!(parse_memory_limit("max\n"), None);
        assert_eq!(parse_memory_limit("536870912\n"), Some(512 << 20));
        assert_eq!(parse_memory_limit("9223372036854771712\n"), None);
    }

    #[test]
    fn guest_must_fit_the_container_limit_with_overhead() {
        let limit = Some((512 << 20, PathBuf::from("/sys/fs/cgroup/memory.max")));
        assert!(check_memory(256 << 20, VMM_OVERHEAD_BYTES, limit.clone(), None).is_ok());
        let error =
            check_memory(500 << 20, VMM_OVERHEAD_BYTES, limit, None).expect_err("does not fit");
        assert_eq!(
            error.to_string(),
            "guest memory (500Mi) plus vmpod's overhead (16Mi) does not fit the container's memory limit \
             (512Mi, from /sys/fs/cgroup/memory.max): raise the pod's resources.limits.memory or lower domain.memory.guest"
        );
    }

    #[test]
    fn vcpus_must_fit_the_cpu_quota() {
        assert_eq!(parse_cpu_quota("max 100000\n", None), None);
        assert_eq!(parse_cpu_quota("150000 100000\n", None), Some(1.5));
        assert_eq!(parse_cpu_quota("-1\n", Some("100000\n")), None);
        assert_eq!(parse_cpu_quota("200000\n", Some("100000\n")), Some(2.0));
        let file = PathBuf::from("/sys/fs/cgroup/cpu.max");
        assert!(check_cpus(2, Some((1.5, file.clone()))).is_ok());
        assert!(check_cpus(8, None).is_ok());
        let error = check_cpus(4, Some((1.5, file))).expect_err("too many vCPUs");
        assert_eq!(
            error.to_string(),
            "the VM has 4 vCPUs but the container's CPU limit allows 1.5 CPUs (from /sys/fs/cgroup/cpu.max): \
             raise the pod's resources.limits.cpu to 4 or lower the VM's vCPUs (domain.cpu)"
        );
    }

    #[test]
    fn guest_must_fit_the_host() {
        assert!(check_memory(1 << 30, VMM_OVERHEAD_BYTES, None, Some(2 << 30)).is_ok());
        assert!(matches!(
            check_memory(4 << 30, VMM_OVERHEAD_BYTES, None, Some(2 << 30)),
            Err(HostError::HostMemory { .. })
        ));
    }
}
