//! `vmpod render --pod`: the Pod (or Deployment) that runs a VM with
//! vmpod, from its validated configuration — /dev/kvm, the definition,
//! each image the definition names as an image volume (or copied by init
//! containers where the cluster has no image volumes), the readiness
//! probe, the grace period, resources that fit the VM, and the sysctls
//! passt wants. Pure: returns the manifests as JSON values.

use serde_json::{json, Value};

use super::{DEFAULT_IMAGES_DIR, KERNEL_BOOT_MOUNT};
use crate::source::whoami::VM_LABEL;
use crate::spec::config::{Boot, DiskSource, NicBinding, RunStrategy, VmConfig};
use crate::vmm::host;

/// The image `render --pod` puts in the pod unless told otherwise.
pub const DEFAULT_IMAGE: &str = "localhost/vmpod:latest";
/// The pod's grace period beyond the VM's: time for vmpod to stop.
const GRACE_MARGIN_SECONDS: u64 = 10;
/// Room beyond what `launch` checks (vmpod's own overhead and, with the
/// API, its status helper): device buffers and page cache.
const HEADROOM_BYTES: u64 = 16 << 20;
/// One passt process per NIC.
const PASST_BYTES: u64 = 8 << 20;
/// Where the copy init containers put vmpod, to run it in an image that
/// has no programs of its own (a containerDisk is usually FROM scratch).
pub const TOOLS_DIR: &str = "/vm/tools";

#[derive(Debug, Clone)]
pub struct PodOptions {
    /// The vmpod image.
    pub image: String,
    /// `Some(n)`: a Deployment of n replicas instead of a Pod.
    pub replicas: Option<u32>,
    /// Copy the definition's images with init containers instead of
    /// mounting them as image volumes (Kubernetes before 1.35, podman 4).
    pub copy_images: bool,
    /// Read the definition from the cluster's VirtualMachine (service
    /// account `vmpod`, manifests/rbac.yaml) instead of a ConfigMap.
    pub from_api: bool,
}

/// An image the definition names and where the pod mounts it.
struct ImageMount {
    image: String,
    mount: String,
    /// The paths inside the image vmpod reads (for the copy).
    paths: Vec<String>,
}

fn image_mounts(config: &VmConfig) -> Vec<ImageMount> {
    let mut mounts = Vec::new();
    for disk in &config.disks {
        if let DiskSource::ContainerDisk {
            path,
            image: Some(image),
        } = &disk.source
        {
            mounts.push(ImageMount {
                image: image.clone(),
                mount: format!("{DEFAULT_IMAGES_DIR}/{}", disk.name),
                paths: vec![path.display().to_string()],
            });
        }
    }
    if let Boot::Kernel(kernel) = &config.boot {
        if let Some(image) = &kernel.image {
            let mut paths = vec![kernel.kernel.display().to_string()];
            paths.extend(kernel.initrd.iter().map(|path| path.display().to_string()));
            mounts.push(ImageMount {
                image: image.clone(),
                mount: format!("{DEFAULT_IMAGES_DIR}/{KERNEL_BOOT_MOUNT}"),
                paths,
            });
        }
    }
    mounts
}

/// The memory limit: what the definition asks for, else guest memory plus
/// what vmpod, its helper and passt need, in whole MiB.
fn memory_limit(config: &VmConfig, from_api: bool) -> String {
    let needed = config.memory_limit_bytes.unwrap_or_else(|| {
        // The same figures `launch` checks the limit against.
        let helper = if from_api {
            host::STATUS_HELPER_BYTES
        } else {
            0
        };
        config.memory_bytes
            + host::VMM_OVERHEAD_BYTES
            + host::display_bytes(config.display)
            + HEADROOM_BYTES
            + helper
            + PASST_BYTES * config.nics.len() as u64
    });
    format!("{}Mi", needed.div_ceil(1 << 20))
}

fn definition_name(config: &VmConfig) -> String {
    format!("{}-definition", config.identity.name)
}

/// The manifests that run `config` (whose definition is `definition`, the
/// file's text) with vmpod: a ConfigMap holding the definition (unless it
/// comes from the API), then the Pod or Deployment.
pub fn render(config: &VmConfig, definition: &str, options: &PodOptions) -> Vec<Value> {
    let identity = &config.identity;
    let mut labels = serde_json::Map::new();
    for (key, value) in &identity.labels {
        labels.insert(key.clone(), json!(value));
    }
    labels.insert(VM_LABEL.into(), json!(identity.name));
    let mounts = image_mounts(config);
    let pod_spec = pod_spec(config, options, &mounts);
    let mut documents = Vec::new();
    if !options.from_api {
        documents.push(json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": metadata(&definition_name(config), &identity.namespace, json!({
                VM_LABEL: identity.name,
            })),
            "data": {"vm.yaml": definition},
        }));
    }
    let labels = Value::Object(labels);
    documents.push(match options.replicas {
        None => json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": metadata(&identity.name, &identity.namespace, labels),
            "spec": pod_spec,
        }),
        Some(replicas) => json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": metadata(&identity.name, &identity.namespace, labels.clone()),
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {VM_LABEL: identity.name}},
                "template": {"metadata": {"labels": labels}, "spec": pod_spec},
            },
        }),
    });
    documents
}

fn metadata(name: &str, namespace: &str, labels: Value) -> Value {
    // "default" is what the definition had when it named none: leave the
    // choice to `kubectl apply -n`.
    if namespace == "default" {
        json!({"name": name, "labels": labels})
    } else {
        json!({"name": name, "namespace": namespace, "labels": labels})
    }
}

fn pod_spec(config: &VmConfig, options: &PodOptions, mounts: &[ImageMount]) -> Value {
    let bridge = config
        .nics
        .iter()
        .any(|nic| nic.binding == NicBinding::Bridge);
    let mut env = vec![
        json!({"name": "VM_NAME", "value": config.identity.name}),
        json!({"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}),
    ];
    if options.replicas.is_some() {
        // So that each replica's VM gets its own identity (README).
        env.push(
            json!({"name": "POD_TEMPLATE_HASH", "valueFrom": {"fieldRef": {
            "fieldPath": "metadata.labels['pod-template-hash']"}}}),
        );
    }
    // /vm/run and /vm/scratch are the image's own directories.
    let mut volume_mounts = vec![json!({"name": "kvm", "mountPath": "/dev/kvm"})];
    let mut volumes =
        vec![json!({"name": "kvm", "hostPath": {"path": "/dev/kvm", "type": "CharDevice"}})];
    if !options.from_api {
        volume_mounts
            .push(json!({"name": "definition", "mountPath": "/etc/vmpod", "readOnly": true}));
        volumes.push(json!({"name": "definition", "configMap": {"name": definition_name(config)}}));
    }
    for (index, disk) in config.disks.iter().enumerate() {
        let name = format!("disk-{index}");
        match &disk.source {
            DiskSource::PersistentVolumeClaim { claim_name, path } => {
                volume_mounts
                    .push(json!({"name": name, "mountPath": path, "readOnly": disk.readonly}));
                volumes.push(json!({"name": name, "persistentVolumeClaim": {
                    "claimName": claim_name, "readOnly": disk.readonly}}));
            }
            DiskSource::HostDisk {
                path,
                create_with_capacity,
            } => {
                // The file's directory, so that DiskOrCreate can create it.
                let directory = path.parent().unwrap_or(path).display().to_string();
                let kind = if create_with_capacity.is_some() {
                    "DirectoryOrCreate"
                } else {
                    "Directory"
                };
                volume_mounts.push(json!({"name": name, "mountPath": directory}));
                volumes.push(json!({"name": name, "hostPath": {"path": directory, "type": kind}}));
            }
            _ => {}
        }
    }
    let mut init_containers = Vec::new();
    if options.copy_images && !mounts.is_empty() {
        volume_mounts
            .push(json!({"name": "images", "mountPath": DEFAULT_IMAGES_DIR, "readOnly": true}));
        volumes.push(json!({"name": "images", "emptyDir": {}}));
        volumes.push(json!({"name": "tools", "emptyDir": {}}));
        init_containers = copy_containers(options, mounts);
    } else {
        for (index, mount) in mounts.iter().enumerate() {
            let name = format!("image-{index}");
            volume_mounts.push(json!({"name": name, "mountPath": mount.mount, "readOnly": true}));
            volumes.push(json!({"name": name, "image": {
                "reference": mount.image, "pullPolicy": "IfNotPresent"}}));
        }
    }
    let vcpus = config.cpu.vcpus();
    let container_security = if bridge {
        // A tap device on the pod's interface needs NET_ADMIN, which only
        // root holds in a container.
        json!({"runAsUser": 0, "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN"]}})
    } else {
        json!({"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}})
    };
    let memory = memory_limit(config, options.from_api);
    let mut spec = json!({
        "terminationGracePeriodSeconds": config.termination_grace_period_seconds + GRACE_MARGIN_SECONDS,
        "securityContext": {"runAsUser": 107, "runAsGroup": 107, "fsGroup": 107},
        "containers": [{
            "name": "vm",
            "image": options.image,
            "args": ["launch"],
            "env": env,
            "readinessProbe": {"exec": {"command": ["/vm/ready"]}, "periodSeconds": 2},
            "resources": {
                "limits": {"memory": memory, "cpu": vcpus.to_string()},
                "requests": {"memory": memory, "cpu": "100m"},
            },
            "securityContext": container_security,
            "volumeMounts": volume_mounts,
        }],
        "volumes": volumes,
    });
    if !init_containers.is_empty() {
        spec["initContainers"] = json!(init_containers);
    }
    if options.replicas.is_none() {
        spec["restartPolicy"] = json!(restart_policy(config.run_strategy));
    }
    if options.from_api {
        spec["serviceAccountName"] = json!("vmpod");
    } else {
        spec["automountServiceAccountToken"] = json!(false);
    }
    if config
        .nics
        .iter()
        .any(|nic| nic.binding == NicBinding::Passt)
    {
        // passt binds the guest's ports in the pod (22, 80…) and answers
        // pings without privileges: both sysctls are namespaced and "safe".
        spec["securityContext"]["sysctls"] = json!([
            {"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"},
            {"name": "net.ipv4.ping_group_range", "value": "0 2147483647"},
        ]);
    }
    spec
}

/// A pod's restart policy for the VM's run strategy: vmpod exits when the
/// guest powers off (0) or fails (1), and the kubelet does what KubeVirt's
/// controller would. (A Deployment's pods always restart.)
fn restart_policy(strategy: RunStrategy) -> &'static str {
    match strategy {
        RunStrategy::Always => "Always",
        RunStrategy::RerunOnFailure => "OnFailure",
        RunStrategy::Manual | RunStrategy::Halted | RunStrategy::Once => "Never",
    }
}

/// Init containers that copy the definition's images' files into the
/// `images` emptyDir: the first puts vmpod (with its loader and libraries)
/// into `tools`; each next runs in one image and copies what vmpod reads.
fn copy_containers(options: &PodOptions, mounts: &[ImageMount]) -> Vec<Value> {
    let tools = json!({"name": "tools", "mountPath": TOOLS_DIR});
    let mut containers = vec![json!({
        "name": "vmpod-tools",
        "image": options.image,
        "args": ["stage-tools", TOOLS_DIR],
        "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": [tools],
    })];
    for (index, mount) in mounts.iter().enumerate() {
        let mut command = vec![
            format!("{TOOLS_DIR}/ld.so"),
            "--library-path".into(),
            TOOLS_DIR.into(),
            format!("{TOOLS_DIR}/vmpod"),
            "copy-files".into(),
            mount.mount.clone(),
        ];
        command.extend(mount.paths.iter().cloned());
        containers.push(json!({
            "name": format!("copy-image-{index}"),
            "image": mount.image,
            "imagePullPolicy": "IfNotPresent",
            "command": command,
            // Root without capabilities: the emptyDir is root's until fsGroup applies.
            "securityContext": {"runAsUser": 0, "allowPrivilegeEscalation": false,
                                "capabilities": {"drop": ["ALL"]}},
            "volumeMounts": [tools, {"name": "images", "mountPath": DEFAULT_IMAGES_DIR}],
        }));
    }
    containers
}
