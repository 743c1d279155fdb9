//! `VmConfig`: the one plain, validated description of a VM.
//!
//! Produced only by the spec readers (or by reading a rendered config back);
//! everything after this point trusts it. Plain data, serde both ways, so
//! `vmpod render` output round-trips. Pure; any thread.

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
    pub boot: Boot,
    #[serde(default)]
    pub disks: Vec<Disk>,
    #[serde(default)]
    pub nics: Vec<Nic>,
    #[serde(default)]
    pub rng: bool,
    #[serde(default)]
    pub inputs: Vec<Input>,
    /// A framebuffer and VNC display (KubeVirt's autoattachGraphicsDevice),
    /// its size from the annotation `vmpod.io/display-size`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display: Option<Display>,
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

/// The most vCPUs vmpod runs: xAPIC ids are 8 bits and 0xff is broadcast.
pub const MAX_VCPUS: u32 = 254;
/// CPUID leaf 4 EAX[31:26] counts cores per package less one in 6 bits.
const MAX_CORES_PER_SOCKET: u32 = 64;
/// CPUID leaf 1 EBX[23:16] holds the per-package APIC id space (a power
/// of two) in 8 bits: at most 2^7.
const MAX_PACKAGE_ID_BITS: u32 = 7;

/// Bits needed to number `count` things.
fn bits_for(count: u32) -> u32 {
    32 - count.saturating_sub(1).leading_zeros()
}

impl CpuTopology {
    pub fn vcpus(&self) -> u32 {
        self.sockets
            .saturating_mul(self.cores)
            .saturating_mul(self.threads)
    }

    /// Width of the thread field of an APIC id (CPUID leaf 0xB, level 0).
    pub fn thread_bits(&self) -> u32 {
        bits_for(self.threads)
    }

    /// Width of the core field of an APIC id (CPUID leaf 0xB, level 1).
    pub fn core_bits(&self) -> u32 {
        bits_for(self.cores)
    }

    /// The APIC id of each vCPU: socket, core and thread fields as CPUID
    /// leaf 0xB describes them.
    pub fn apic_ids(&self) -> Vec<u32> {
        let (thread_bits, core_bits) = (self.thread_bits(), self.core_bits());
        (0..self.vcpus())
            .map(|index| {
                let thread = index % self.threads;
                let core = (index / self.threads) % self.cores;
                let socket = index / (self.threads * self.cores);
                (socket << (core_bits + thread_bits)) | (core << thread_bits) | thread
            })
            .collect()
    }

    /// What the MADT and CPUID cannot express about this topology.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if [self.sockets, self.cores, self.threads].contains(&0) {
            return vec!["sockets, cores and threads must each be at least 1".into()];
        }
        if self.vcpus() > MAX_VCPUS {
            return vec![format!(
                "sockets × cores × threads = {} vCPUs; vmpod supports at most {MAX_VCPUS}",
                self.vcpus()
            )];
        }
        if self.cores > MAX_CORES_PER_SOCKET {
            problems.push(format!(
                "{} cores per socket: CPUID describes at most {MAX_CORES_PER_SOCKET}; use more sockets",
                self.cores
            ));
        } else if self.core_bits() + self.thread_bits() > MAX_PACKAGE_ID_BITS {
            problems.push(format!(
                "{} cores × {} threads per socket need {} APIC id bits; CPUID describes at most {MAX_PACKAGE_ID_BITS}: use more sockets",
                self.cores,
                self.threads,
                self.core_bits() + self.thread_bits()
            ));
        }
        let highest = self.apic_ids().into_iter().max().unwrap_or(0);
        if highest > MAX_VCPUS {
            problems.push(format!(
                "this topology numbers its vCPUs' APIC ids up to {highest}, beyond the {MAX_VCPUS} the MADT can list (ids round each field up to a power of two): use powers of two for cores and threads, or fewer sockets"
            ));
        }
        problems
    }
}

/// A problem with a `VmConfig`, at a path of its own fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub path: &'static str,
    pub message: String,
}

impl std::fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

impl VmConfig {
    /// Checks what the types alone do not: the spec readers run this on
    /// what they produce, and it runs again on a rendered config read back.
    pub fn validate(&self) -> Result<(), Vec<ConfigProblem>> {
        let mut problems: Vec<ConfigProblem> = self
            .cpu
            .problems()
            .into_iter()
            .map(|message| ConfigProblem {
                path: "cpu",
                message,
            })
            .collect();
        if self.memory_bytes == 0 || !self.memory_bytes.is_multiple_of(4096) {
            problems.push(ConfigProblem {
                path: "memoryBytes",
                message: format!("{} is not a positive multiple of 4 KiB", self.memory_bytes),
            });
        }
        if let Some(display) = self.display {
            if let Err(message) = display.check() {
                problems.push(ConfigProblem {
                    path: "display",
                    message,
                });
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

/// The VM's screen: width and height in pixels of a 32-bit framebuffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Display {
    pub width: u32,
    pub height: u32,
}

impl Display {
    /// The size unless the definition names another.
    pub const DEFAULT: Display = Display {
        width: 1024,
        height: 768,
    };
    /// The sizes vmpod offers, up to 4K UHD (32 MiB of pixels).
    pub const MIN: Display = Display {
        width: 320,
        height: 200,
    };
    pub const MAX: Display = Display {
        width: 3840,
        height: 2160,
    };

    /// Reads `WIDTHxHEIGHT` (the annotation's value).
    pub fn parse(text: &str) -> Result<Self, String> {
        let shape = || {
            format!(
                "{text:?} is not a display size; write WIDTHxHEIGHT, e.g. {}",
                Display::DEFAULT
            )
        };
        let (width, height) = text.trim().split_once(['x', 'X']).ok_or_else(shape)?;
        let display = Display {
            width: width.trim().parse().map_err(|_| shape())?,
            height: height.trim().parse().map_err(|_| shape())?,
        };
        display.check()?;
        Ok(display)
    }

    fn check(&self) -> Result<(), String> {
        let (min, max) = (Display::MIN, Display::MAX);
        if (min.width..=max.width).contains(&self.width)
            && (min.height..=max.height).contains(&self.height)
        {
            Ok(())
        } else {
            Err(format!(
                "{self} is outside the display sizes vmpod offers ({min} to {max})"
            ))
        }
    }
}

impl std::fmt::Display for Display {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}", self.width, self.height)
    }
}

/// What the VM boots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "from", rename_all = "camelCase")]
pub enum Boot {
    /// A kernel file in the pod (KubeVirt's firmware.kernelBoot).
    Kernel(KernelBoot),
    /// The kernel, initrd and command line the boot disk's own
    /// configuration names, read by vmpod before every boot.
    Disk(DiskBoot),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DiskBoot {
    /// The name of the disk booted from.
    pub disk: String,
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
    /// `kernelBoot.container.image`: where the pod finds the files when
    /// that image is mounted at `pod::KERNEL_BOOT_MOUNT` (`vmpod render --pod`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
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
    /// `image` is where it comes from: mounted at `/vm/images/<volume>`
    /// (`vmpod render --pod`), `path` is inside that mount; else `path` is
    /// in the pod itself (the image baked or mounted there).
    #[serde(rename_all = "camelCase")]
    ContainerDisk {
        path: PathBuf,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        image: Option<String>,
    },
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
    /// An OpenStack config drive (label `config-2`) that vmpod builds;
    /// `network_data` is OpenStack's network_data.json.
    #[serde(rename_all = "camelCase")]
    CloudInitConfigDrive {
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
    fn display_sizes_are_read_and_bounded() {
        assert_eq!(
            Display::parse(" 1280 X 720 "),
            Ok(Display {
                width: 1280,
                height: 720
            })
        );
        for bad in ["1280", "x", "axb", "1280x-1", "", "99999999999x2"] {
            let error = Display::parse(bad).expect_err(bad);
            assert!(error.contains("WIDTHxHEIGHT, e.g. 1024x768"), "{error}");
        }
        let error = Display::parse("8000x8000").expect_err("too big");
        assert_eq!(
            error,
            "8000x8000 is outside the display sizes vmpod offers (320x200 to 3840x2160)"
        );
        assert!(Display::parse("100x100").is_err());
    }

    #[test]
    fn run_strategies_use_kubevirt_spelling() {
        assert_eq!(
            RunStrategy::from_kubevirt("RerunOnFailure"),
            Some(RunStrategy::RerunOnFailure)
        );
        assert_eq!(RunStrategy::from_kubevirt("always"), None);
    }

    fn topology(sockets: u32, cores: u32, threads: u32) -> CpuTopology {
        CpuTopology {
            sockets,
            cores,
            threads,
        }
    }

    #[test]
    fn apic_ids_follow_the_topology_fields() {
        assert_eq!(topology(1, 4, 1).apic_ids(), [0, 1, 2, 3]);
        assert_eq!(topology(2, 2, 2).apic_ids(), [0, 1, 2, 3, 4, 5, 6, 7]);
        // Three cores need two bits, so the second socket starts at 4.
        assert_eq!(topology(2, 3, 1).apic_ids(), [0, 1, 2, 4, 5, 6]);
    }

    #[test]
    fn topologies_the_madt_and_cpuid_cannot_express_are_refused() {
        assert!(topology(1, 4, 2).problems().is_empty());
        assert!(topology(2, 64, 1).problems().is_empty());
        assert!(topology(1, 64, 2).problems().is_empty());
        // APIC ids up to 2 << 7 | 64 = 320, and 65 cores need 7 bits.
        let wide = topology(3, 65, 1).problems();
        assert_eq!(wide.len(), 2, "{wide:?}");
        assert!(wide[0].starts_with("65 cores per socket"), "{wide:?}");
        assert!(wide[1].contains("APIC ids up to 320"), "{wide:?}");
        // 200 cores would overflow CPUID.1:EBX[23:16] into the APIC id.
        assert!(topology(1, 200, 1).problems()[0].starts_with("200 cores per socket"));
        assert!(topology(1, 33, 3).problems()[0].contains("need 8 APIC id bits"));
        // 5 sockets × 33 cores: 165 vCPUs, but ids up to 4 << 6 | 32 = 288.
        assert!(topology(5, 33, 1).problems()[0].contains("APIC ids up to 288"));
        assert!(topology(1, 255, 1).problems()[0].contains("at most 254"));
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
