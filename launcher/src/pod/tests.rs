use std::path::{Path, PathBuf};

use serde_json::json;

use super::render::{render, PodOptions};
use super::*;
use crate::spec::config::{DiskSource, VmConfig};

fn config(yaml: &str) -> VmConfig {
    let documents = crate::spec::parse_documents(yaml.as_bytes()).expect("parses");
    match documents.into_iter().next().expect("one document") {
        crate::spec::Document::Vm(definition) => definition.outcome.expect("valid").config,
        crate::spec::Document::Skipped { .. } => panic!("not a VM"),
    }
}

const CLOUD: &str = "
apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata: {name: cloud, namespace: vms, labels: {team: a}}
spec:
  runStrategy: Always
  template:
    spec:
      terminationGracePeriodSeconds: 60
      domain:
        cpu: {cores: 2}
        memory: {guest: 1Gi}
        devices:
          interfaces: [{name: default, masquerade: {}}]
      networks: [{name: default, pod: {}}]
      volumes:
      - {name: root, containerDisk: {image: quay.io/containerdisks/debian:12}}
      - {name: data, persistentVolumeClaim: {claimName: data}}
";

const KERNEL: &str = "
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {name: k}
spec:
  domain:
    memory: {guest: 64Mi}
    devices: {autoattachPodInterface: false}
    firmware:
      kernelBoot:
        container: {image: example/kernels:6.1, kernelPath: /boot/vmlinuz, initrdPath: /boot/initrd.img}
";

fn options() -> PodOptions {
    PodOptions {
        image: "localhost/vmpod:latest".into(),
        replicas: None,
        copy_images: false,
        from_api: false,
    }
}

#[test]
fn files_in_mounted_images_are_found_below_their_mounts() {
    let mounted = |path: &Path| path == Path::new("/vm/images/root");
    let (located, notes) =
        in_image_mounts(&config(CLOUD), Path::new("/vm/images"), mounted).unwrap();
    assert_eq!(
        located.disks[0].source,
        DiskSource::ContainerDisk {
            path: "/vm/images/root/disk".into(),
            image: Some("quay.io/containerdisks/debian:12".into())
        }
    );
    assert_eq!(notes.len(), 1, "{notes:?}");
    // Nothing mounted: the paths are the pod's own.
    assert!(in_image_mounts(&config(CLOUD), Path::new("/vm/images"), |_| false).is_none());

    let mounted = |path: &Path| path == Path::new("/i/kernelBoot");
    let (located, _) = in_image_mounts(&config(KERNEL), Path::new("/i"), mounted).unwrap();
    let Boot::Kernel(kernel) = located.boot else {
        panic!("kernel boot")
    };
    assert_eq!(kernel.kernel, PathBuf::from("/i/kernelBoot/boot/vmlinuz"));
    assert_eq!(kernel.initrd, Some("/i/kernelBoot/boot/initrd.img".into()));
}

#[test]
fn a_pod_mounts_kvm_the_definition_and_each_image() {
    let documents = render(&config(CLOUD), "the file", &options());
    let [configmap, pod] = documents.as_slice() else {
        panic!("{documents:?}")
    };
    assert_eq!(configmap["metadata"]["name"], "cloud-definition");
    assert_eq!(configmap["metadata"]["namespace"], "vms");
    assert_eq!(configmap["data"]["vm.yaml"], "the file");
    assert_eq!(pod["kind"], "Pod");
    assert_eq!(
        pod["metadata"]["labels"],
        json!({"team": "a", "vmpod.io/vm": "cloud"})
    );
    let spec = &pod["spec"];
    assert_eq!(spec["terminationGracePeriodSeconds"], 70);
    assert_eq!(spec["automountServiceAccountToken"], false);
    assert_eq!(spec["restartPolicy"], "Always"); // runStrategy: Always
    assert_eq!(
        spec["securityContext"]["sysctls"][0]["name"],
        "net.ipv4.ip_unprivileged_port_start"
    );
    let container = &spec["containers"][0];
    assert_eq!(container["args"], json!(["launch"]));
    assert_eq!(
        container["env"][0],
        json!({"name": "VM_NAME", "value": "cloud"})
    );
    assert_eq!(
        container["readinessProbe"]["exec"]["command"],
        json!(["/vm/ready"])
    );
    // 1 GiB guest + 32 MiB for vmpod + 8 MiB for passt + 12 MiB for the
    // 1024x768 display (four screens: the framebuffer, the VNC server's
    // copy, two viewers').
    assert_eq!(
        container["resources"]["limits"],
        json!({"memory": "1076Mi", "cpu": "2"})
    );
    let mounts: Vec<_> = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["mountPath"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        mounts,
        [
            "/dev/kvm",
            "/etc/vmpod",
            "/vm/volumes/data",
            "/vm/images/root"
        ]
    );
    let volumes = spec["volumes"].as_array().unwrap();
    assert_eq!(
        volumes[0]["hostPath"],
        json!({"path": "/dev/kvm", "type": "CharDevice"})
    );
    assert_eq!(
        volumes[2]["persistentVolumeClaim"],
        json!({"claimName": "data", "readOnly": false})
    );
    assert_eq!(
        volumes[3]["image"],
        json!({"reference": "quay.io/containerdisks/debian:12", "pullPolicy": "IfNotPresent"})
    );
    assert!(spec.get("initContainers").is_none());
}

#[test]
fn copied_images_come_from_init_containers_that_run_vmpod_in_the_image() {
    let copying = PodOptions {
        copy_images: true,
        ..options()
    };
    let documents = render(&config(KERNEL), "f", &copying);
    let spec = &documents[1]["spec"];
    let init = spec["initContainers"].as_array().unwrap();
    assert_eq!(init[0]["args"], json!(["stage-tools", "/vm/tools"]));
    assert_eq!(init[1]["image"], "example/kernels:6.1");
    assert_eq!(
        init[1]["command"],
        json!([
            "/vm/tools/ld.so",
            "--library-path",
            "/vm/tools",
            "/vm/tools/vmpod",
            "copy-files",
            "/vm/images/kernelBoot",
            "/boot/vmlinuz",
            "/boot/initrd.img"
        ])
    );
    let volumes: Vec<_> = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].clone())
        .collect();
    assert!(volumes.contains(&json!("images")) && volumes.contains(&json!("tools")));
    assert!(!spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|v| v.get("image").is_some()));
    // A VirtualMachineInstance runs once; no NIC: no sysctls.
    assert_eq!(spec["restartPolicy"], "Never");
    assert!(spec["securityContext"].get("sysctls").is_none());
}

#[test]
fn a_deployment_from_the_api_tells_replicas_apart() {
    let options = PodOptions {
        replicas: Some(3),
        from_api: true,
        ..options()
    };
    let documents = render(&config(CLOUD), "f", &options);
    let [deployment] = documents.as_slice() else {
        panic!("no ConfigMap from the API: {documents:?}")
    };
    assert_eq!(deployment["kind"], "Deployment");
    assert_eq!(deployment["spec"]["replicas"], 3);
    assert_eq!(
        deployment["spec"]["selector"]["matchLabels"],
        json!({"vmpod.io/vm": "cloud"})
    );
    let spec = &deployment["spec"]["template"]["spec"];
    assert_eq!(spec["serviceAccountName"], "vmpod");
    assert_eq!(spec["containers"][0]["env"][2]["name"], "POD_TEMPLATE_HASH");
    // The status helper's 8 MiB as well.
    assert_eq!(
        spec["containers"][0]["resources"]["limits"]["memory"],
        "1084Mi"
    );
}
