//! Whole-document tests of the spec reader: defaults, cross-checks, and
//! inputs that must fail cleanly. Per-file corpora live in `launcher/tests/`.

use super::config::{DiskSource, NicBinding, RunStrategy, UuidSource};
use super::*;
use crate::spec::config::Boot;

const MINIMAL: &str = "
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {name: tiny}
spec:
  domain:
    memory: {guest: 64Mi}
    firmware: {kernelBoot: {container: {kernelPath: /vm/guest/kernel}}}
";

fn only_definition(text: &str) -> Result<Valid, Vec<Problem>> {
    let mut documents = parse_documents(text.as_bytes()).expect("test input is YAML");
    assert_eq!(documents.len(), 1, "one document expected");
    match documents.remove(0) {
        Document::Vm(definition) => definition.outcome,
        Document::Skipped { origin } => panic!("skipped {origin}"),
    }
}

fn config(text: &str) -> VmConfig {
    match only_definition(text) {
        Ok(valid) => valid.config,
        Err(problems) => panic!("unexpected problems: {problems:?}"),
    }
}

fn problems(text: &str) -> Vec<String> {
    match only_definition(text) {
        Ok(valid) => panic!("accepted: {:?}", valid.config),
        Err(problems) => problems.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn minimal_instance_gets_kubevirt_defaults() {
    let config = config(MINIMAL);
    assert_eq!(config.identity.name, "tiny");
    assert_eq!(config.identity.namespace, "default");
    assert_eq!(config.identity.hostname, "tiny");
    assert_eq!(config.identity.uuid_source, UuidSource::Derived);
    assert_eq!(
        config.identity.uuid,
        identity::derived_uuid("default", "tiny")
    );
    assert_eq!(config.run_strategy, RunStrategy::Once);
    assert_eq!(config.cpu.vcpus(), 1);
    assert_eq!(config.memory_bytes, 64 << 20);
    let Boot::Kernel(kernel) = &config.boot else {
        panic!("a kernel boot: {:?}", config.boot)
    };
    assert_eq!(kernel.cmdline, "console=ttyS0");
    assert_eq!(config.termination_grace_period_seconds, 180);
    assert!(config.serial_console && !config.rng);
    assert_eq!(config.display, Some(crate::spec::config::Display::DEFAULT));
    assert_eq!(
        config.nics.len(),
        1,
        "KubeVirt attaches the pod network by default"
    );
    assert_eq!(config.nics[0].binding, NicBinding::Passt);
}

#[test]
fn derived_uuid_is_pinned() {
    // Changing this value changes the firmware UUID of every deployed VM.
    assert_eq!(
        identity::derived_uuid("default", "tiny").to_string(),
        "505b062c-8277-5039-8ac8-e5af533dfff2"
    );
}

#[test]
fn explicit_firmware_uuid_wins() {
    let text = MINIMAL.replace(
        "firmware: {",
        "firmware: {uuid: 5d4ec7a5-8e0a-4f5e-9f0a-000000000001, ",
    );
    let config = config(&text);
    assert_eq!(config.identity.uuid_source, UuidSource::Definition);
    assert_eq!(
        config.identity.uuid.to_string(),
        "5d4ec7a5-8e0a-4f5e-9f0a-000000000001"
    );
}

#[test]
fn json_and_v1alpha3_are_accepted() {
    let json = r#"{"apiVersion": "kubevirt.io/v1alpha3", "kind": "VirtualMachineInstance",
        "metadata": {"name": "j", "namespace": "lab"},
        "spec": {"domain": {"resources": {"requests": {"memory": "128Mi"}},
                 "firmware": {"kernelBoot": {"container": {"kernelPath": "/k"}}}}}}"#;
    let config = config(json);
    assert_eq!(config.identity.namespace, "lab");
    assert_eq!(config.memory_bytes, 128 << 20);
}

#[test]
fn memory_falls_back_to_requests_then_limits_and_is_checked_against_the_limit() {
    let limits_only = MINIMAL.replace(
        "memory: {guest: 64Mi}",
        "resources: {limits: {memory: 32Mi}}",
    );
    let config = config(&limits_only);
    assert_eq!(config.memory_bytes, 32 << 20);
    assert_eq!(config.memory_limit_bytes, Some(32 << 20));
    let too_big = MINIMAL.replace(
        "memory: {guest: 64Mi}",
        "memory: {guest: 64Mi}\n    resources: {limits: {memory: 32Mi}}",
    );
    assert_eq!(
        problems(&too_big),
        ["spec.domain.memory.guest: guest memory (67108864 bytes) is larger than resources.limits.memory (33554432 bytes)"]
    );
    let none = MINIMAL.replace("memory: {guest: 64Mi}", "cpu: {cores: 1}");
    assert_eq!(
        problems(&none),
        ["spec.domain.memory.guest: required: set domain.memory.guest or domain.resources.requests.memory"]
    );
}

#[test]
fn memory_is_rounded_up_to_whole_pages() {
    let config = config(&MINIMAL.replace("64Mi", "1G"));
    assert_eq!(config.memory_bytes, 1_000_001_536);
}

#[test]
fn vcpus_come_from_topology_or_cpu_limit() {
    let topology = MINIMAL.replace(
        "memory:",
        "cpu: {sockets: 2, cores: 2, threads: 2}\n    memory:",
    );
    assert_eq!(config(&topology).cpu.vcpus(), 8);
    let limit = MINIMAL.replace("memory:", "resources: {limits: {cpu: 1500m}}\n    memory:");
    assert_eq!(config(&limit).cpu.vcpus(), 2);
    let too_many = MINIMAL.replace("memory:", "cpu: {sockets: 16, cores: 16}\n    memory:");
    assert_eq!(
        problems(&too_many),
        ["spec.domain.cpu: sockets × cores × threads = 256 vCPUs; vmpod supports at most 254"]
    );
}

#[test]
fn every_problem_in_a_file_is_reported() {
    let text = "
apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata: {name: Bad_Name}
spec:
  running: true
  runStrategy: Always
  template:
    spec:
      domain:
        cpu: {cores: 0}
        memory: {guest: 12Q}
        devices: {gpus: []}
        firmware: {bootloader: {efi: {secureBoot: true}}}
";
    let found = problems(text);
    let expected = [
        "metadata.name: \"Bad_Name\" must consist of lower case letters",
        "spec.runStrategy: set either spec.running or spec.runStrategy, not both",
        "spec.template.spec.domain.cpu.cores: must be at least 1",
        "spec.template.spec.domain.memory.guest: \"12Q\" is not a Kubernetes quantity",
        "spec.template.spec.domain.devices.gpus: not supported by vmpod",
        "spec.template.spec.domain.firmware.bootloader.efi.secureBoot: not supported by vmpod",
        "spec.template.spec.domain.firmware.kernelBoot: required when the VM has no disk to boot from",
    ];
    for want in expected {
        assert!(
            found.iter().any(|p| p.starts_with(want)),
            "missing {want:?} in {found:#?}"
        );
    }
    assert_eq!(found.len(), expected.len(), "{found:#?}");
}

#[test]
fn running_maps_to_run_strategies() {
    let vm = |run: &str| {
        format!(
            "apiVersion: kubevirt.io/v1\nkind: VirtualMachine\nmetadata: {{name: v}}\nspec:\n  {run}\n  template:\n    spec:\n      domain:\n        memory: {{guest: 8Mi}}\n        firmware: {{kernelBoot: {{container: {{kernelPath: /k}}}}}}\n"
        )
    };
    assert_eq!(
        config(&vm("running: false")).run_strategy,
        RunStrategy::Halted
    );
    assert_eq!(
        config(&vm("running: true")).run_strategy,
        RunStrategy::Always
    );
    assert_eq!(
        config(&vm("runStrategy: Manual")).run_strategy,
        RunStrategy::Manual
    );
    let unset = only_definition(&vm("")).expect("valid");
    assert_eq!(unset.config.run_strategy, RunStrategy::Always);
    assert!(unset
        .ignored
        .iter()
        .any(|i| i.reason.contains("runStrategy Always")));
}

#[test]
fn disks_join_volumes_by_name() {
    let text = MINIMAL.to_owned()
        + "    devices:
      disks:
      - {name: root, disk: {bus: virtio, readonly: true}, serial: ROOT-1, bootOrder: 1}
      - {name: data}
      - {name: seed}
  volumes:
  - {name: root, containerDisk: {image: x, path: /disk/root.qcow2}}
  - {name: data, persistentVolumeClaim: {claimName: data-pvc, readOnly: true}}
  - name: seed
    cloudInitNoCloud: {userDataBase64: I2Nsb3VkLWNvbmZpZwo=}
";
    let config = config(&text);
    let names: Vec<_> = config.disks.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["root", "data", "seed"]);
    assert!(config.disks[0].readonly && config.disks[1].readonly && !config.disks[2].readonly);
    assert_eq!(config.disks[0].serial.as_deref(), Some("ROOT-1"));
    assert_eq!(
        config.disks[1].source,
        DiskSource::PersistentVolumeClaim {
            claim_name: "data-pvc".into(),
            path: "/vm/volumes/data".into()
        }
    );
    assert_eq!(
        config.disks[2].source,
        DiskSource::CloudInitNoCloud {
            user_data: "#cloud-config\n".into(),
            network_data: None
        }
    );
}

#[test]
fn volumes_no_disk_names_get_a_disk_each_after_the_listed_ones() {
    let text = MINIMAL.to_owned()
        + "    devices:
      disks: [{name: data}]
  volumes:
  - {name: seed, cloudInitNoCloud: {userData: x}}
  - {name: data, emptyDisk: {capacity: 1Gi}}
  - {name: shared, persistentVolumeClaim: {claimName: c, readOnly: true}}
";
    let config = config(&text);
    let names: Vec<_> = config.disks.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["data", "seed", "shared"]);
    assert!(config.disks[2].readonly && config.disks[2].boot_order.is_none());
}

#[test]
fn a_config_drive_carries_user_and_network_data() {
    let text = MINIMAL.to_owned()
        + r##"    devices:
      disks: [{name: seed}]
  volumes:
  - name: seed
    cloudInitConfigDrive:
      userData: "#cloud-config\n"
      networkData: '{"links": []}'
"##;
    assert_eq!(
        config(&text).disks[0].source,
        DiskSource::CloudInitConfigDrive {
            user_data: "#cloud-config\n".into(),
            network_data: Some(r#"{"links": []}"#.into())
        }
    );
}

#[test]
fn unmatched_disks_volumes_interfaces_and_networks_are_named() {
    let text = MINIMAL.to_owned()
        + "    devices:
      disks: [{name: a}]
      interfaces: [{name: lan, masquerade: {}}]
  volumes: [{name: b, emptyDisk: {capacity: 1Gi}}]
  networks: [{name: wan, pod: {}}]
";
    assert_eq!(
        problems(&text),
        [
            "spec.domain.devices.disks[0].name: no volume named \"a\" in volumes",
            "spec.networks[0].name: network \"wan\" has no interface in domain.devices.interfaces",
            "spec.domain.devices.interfaces[0].name: no network named \"lan\" in networks",
        ]
    );
}

#[test]
fn render_round_trips_through_yaml_and_json() {
    let text = MINIMAL.to_owned()
        + "    devices:
      disks: [{name: d, bootOrder: 2}]
      interfaces: [{name: default, bridge: {}, macAddress: 02:00:00:00:00:07, ports: [{port: 22}, {port: 53, protocol: UDP}]}]
      rng: {}
      inputs: [{name: t, type: tablet, bus: virtio}]
  networks: [{name: default, pod: {}}]
  volumes: [{name: d, hostDisk: {path: /data/d.img, type: DiskOrCreate, capacity: 1Gi}}]
";
    let original = config(&text);
    let yaml = serde_norway::to_string(&original).expect("serialises");
    let from_yaml: VmConfig = serde_norway::from_str(&yaml).expect("rendered YAML reads back");
    assert_eq!(from_yaml, original);
    let json = serde_json::to_string(&original).expect("serialises");
    let from_json: VmConfig = serde_json::from_str(&json).expect("rendered JSON reads back");
    assert_eq!(from_json, original);
}

#[test]
fn other_kinds_are_skipped_and_lists_and_config_maps_are_searched() {
    let text = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: p}}\n---\n---\napiVersion: v1\nkind: List\nitems:\n- {}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cm}}\ndata:\n  vm.yaml: |\n{}",
        serde_json::to_string(&serde_norway::from_str::<serde_json::Value>(MINIMAL).expect("yaml"))
            .expect("json"),
        MINIMAL.lines().map(|line| format!("    {line}\n")).collect::<String>(),
    );
    let documents = parse_documents(text.as_bytes()).expect("parses");
    let shapes: Vec<String> = documents
        .iter()
        .map(|d| match d {
            Document::Skipped { origin } => format!("skip {origin}"),
            Document::Vm(def) => format!("vm {} {}", def.origin, def.outcome.is_ok()),
        })
        .collect();
    assert_eq!(
        shapes,
        [
            "skip Pod p",
            "vm VirtualMachineInstance tiny true",
            "vm ConfigMap cm data[\"vm.yaml\"]: VirtualMachineInstance tiny true"
        ]
    );
}

#[test]
fn wrong_api_version_and_unknown_kubevirt_kinds_are_errors() {
    assert_eq!(
        problems(&MINIMAL.replace("kubevirt.io/v1", "kubevirt.io/v2")),
        ["apiVersion: \"kubevirt.io/v2\" is not supported by vmpod (use kubevirt.io/v1)"]
    );
    assert_eq!(
        problems(&MINIMAL.replace("VirtualMachineInstance", "VirtualMachinePool")),
        ["kind: \"VirtualMachinePool\" is not a kind vmpod runs (VirtualMachine or VirtualMachineInstance)"]
    );
}

#[test]
fn malformed_input_is_an_error_not_a_panic() {
    for bad in [
        &b"\xff\xfe\x00binary"[..],
        b"a: [1, 2",
        b"a: 1\na: 2\n",
        b"{\"a\": 1, \"a\": 2}",
        b"- &x [*x]",
        b"key: value\n\tbad-indent: 1",
    ] {
        assert!(
            parse_documents(bad).is_err(),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn deep_nesting_is_refused_cleanly() {
    let deep = "[".repeat(100_000) + &"]".repeat(100_000);
    assert!(parse_documents(deep.as_bytes()).is_err());
    let deep_map = "a: ".repeat(20_000) + "1";
    assert!(parse_documents(deep_map.as_bytes()).is_err());
}

#[test]
fn alias_bombs_are_refused() {
    let mut bomb = String::from("a: &a [x,x,x,x,x,x,x,x,x,x]\n");
    for level in 1..12 {
        let previous = (b'a' + level - 1) as char;
        let this = (b'a' + level) as char;
        bomb += &format!("{this}: &{this} [*{previous},*{previous},*{previous},*{previous},*{previous},*{previous},*{previous},*{previous},*{previous},*{previous}]\n");
    }
    assert!(parse_documents(bomb.as_bytes()).is_err());
}

#[test]
fn displays_take_their_size_from_the_annotation_and_inputs_any_bus_but_nonsense() {
    let sized = MINIMAL.replace(
        "metadata: {name: tiny}",
        "metadata: {name: tiny, annotations: {vmpod.io/display-size: 1280x720}}",
    );
    let display = config(&sized).display.expect("a display");
    assert_eq!((display.width, display.height), (1280, 720));
    let off = MINIMAL.to_owned() + "    devices: {autoattachGraphicsDevice: false}\n";
    assert_eq!(config(&off).display, None);
    let huge = MINIMAL.replace(
        "metadata: {name: tiny}",
        "metadata: {name: tiny, annotations: {vmpod.io/display-size: 9000x9000}}",
    );
    assert_eq!(
        problems(&huge),
        ["metadata.annotations[\"vmpod.io/display-size\"]: 9000x9000 is outside the display sizes vmpod offers (320x200 to 3840x2160)"]
    );
    let usb = MINIMAL.to_owned()
        + "    devices: {inputs: [{name: t, type: tablet, bus: usb}, {name: k, type: keyboard}]}\n";
    let valid = only_definition(&usb).expect("usb is accepted");
    assert_eq!(valid.config.inputs.len(), 2);
    assert!(
        valid
            .ignored
            .iter()
            .any(|note| note.reason.contains("this usb one is a virtio device")),
        "{:?}",
        valid.ignored
    );
    let bogus =
        MINIMAL.to_owned() + "    devices: {inputs: [{name: t, type: tablet, bus: serial}]}\n";
    assert_eq!(
        problems(&bogus),
        ["spec.domain.devices.inputs[0].bus: \"serial\" is not an input bus (virtio, usb or ps2)"]
    );
}
