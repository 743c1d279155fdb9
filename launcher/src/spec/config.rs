//! `VmConfig`: the one plain, validated description of a VM.
//!
//! Produced only by the spec readers (or by reading a rendered config back);
//! everything after this point trusts it. Plain data, serde both ways, so
//! `vmpod render` output round-trips.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Everything vmpod needs to build and run one VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VmConfig {
    pub identity: Identity,
    pub run_strategy: RunStrategy,
    pub termination_grace_period_seconds: u64,
    pub cpu: CpuTopology,
    /// Guest RAM in bytes (a multiple of 4 KiB).
    pub memory_bytes: u64,
    /// The container memory limit the definition asks for, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit_bytes: Option<u64>,
    pub boot: KernelBoot,
    #[serde(default)]
    pub disks: Vec<Disk>,
    #[serde(default)]
    pub nics: Vec<Nic>,
    #[serde(default)]
    pub rng: bool,
    #[serde(default)]
    pub inputs: Vec<Input>,
    /// A framebuffer and VNC display (KubeVirt's autoattachGraphicsDevice).
    pub graphics: bool,
    /// A serial console (KubeVirt's autoattachSerialConsole).
    pub serial_console: bool,
    /// `vmpod.io/*` annotations that tune vmpod itself.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// Who the VM is: stable across restarts and rescheduling.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Identity {
    pub name: String,
    pub namespace: String,
    /// Firmware (SMBIOS/DMI) UUID the guest sees.
    pub uuid: uuid::Uuid,
    pub uuid_source: UuidSource,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware_serial: Option<String>,
    pub hostname: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum UuidSource {
    /// `spec.domain.firmware.uuid` in the definition.
    Definition,
    /// Derived from namespace and name (UUIDv5), the same on every start.
    Derived,
}

/// KubeVirt's run strategies, as far as one pod can honour them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunStrategy {
    Always,
    RerunOnFailure,
    Manual,
    Halted,
    Once,
}

impl RunStrategy {
    pub fn from_kubevirt(name: &str) -> Option<Self> {
        Some(match name {
            "Always" => Self::Always,
            "RerunOnFailure" => Self::RerunOnFailure,
            "Manual" => Self::Manual,
            "Halted" => Self::Halted,
            "Once" => Self::Once,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuTopology {
    pub sockets: u32,
    pub cores: u32,
    pub threads: u32,
}

impl CpuTopology {
    pub fn vcpus(&self) -> u32 {
        self.sockets * self.cores * self.threads
    }
}

/// A Linux kernel booted directly (KubeVirt's firmware.kernelBoot).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KernelBoot {
    /// bzImage or ELF (PVH) kernel, a path inside the pod.
    pub kernel: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Disk {
    pub name: String,
    pub source: DiskSource,
    pub readonly: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_order: Option<u32>,
}

/// Where a disk's bytes come from, inside the pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase", deny_unknown_fields)]
pub enum DiskSource {
    /// A disk image shipped in a container image and mounted into the pod;
    /// written through a copy-on-write overlay, never in place.
    #[serde(rename_all = "camelCase")]
    ContainerDisk { path: PathBuf },
    /// A PersistentVolumeClaim mounted into the pod (file, directory holding
    /// `disk.img`, or block device).
    #[serde(rename_all = "camelCase")]
    PersistentVolumeClaim { claim_name: String, path: PathBuf },
    /// A file on the node (through a hostPath volume), created if asked.
    #[serde(rename_all = "camelCase")]
    HostDisk {
        path: PathBuf,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        create_with_capacity: Option<u64>,
    },
    /// A blank sparse disk that lives as long as the pod.
    #[serde(rename_all = "camelCase")]
    EmptyDisk { capacity_bytes: u64 },
    /// A NoCloud seed disk (label `cidata`) that vmpod builds.
    #[serde(rename_all = "camelCase")]
    CloudInitNoCloud {
        user_data: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        network_data: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Nic {
    pub name: String,
    pub binding: NicBinding,
    /// `02:…` locally administered, derived from the identity when not given.
    pub mac: String,
    /// Ports forwarded from the pod to the guest; empty means all of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Port>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Port {
    pub port: u16,
    pub protocol: Protocol,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
}

/// How a NIC reaches the pod network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum NicBinding {
    /// User-mode networking through passt (KubeVirt's masquerade and passt).
    Passt,
    /// The pod's interface handed over through a tap device (needs NET_ADMIN).
    Bridge,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Input {
    pub name: String,
    pub kind: InputKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum InputKind {
    Tablet,
    Keyboard,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_strategies_use_kubevirt_spelling() {
        assert_eq!(
            RunStrategy::from_kubevirt("RerunOnFailure"),
            Some(RunStrategy::RerunOnFailure)
        );
        assert_eq!(RunStrategy::from_kubevirt("always"), None);
    }

    #[test]
    fn vcpus_multiply_the_topology() {
        let topology = CpuTopology {
            sockets: 2,
            cores: 3,
            threads: 2,
        };
        assert_eq!(topology.vcpus(), 12);
    }
}
