//! Tests of definitions read against a context: instancetypes and
//! preferences (bundled, from a cluster, unknown) and replica identities.

use super::instancetype::{Found, Kind, Lookup};
use super::*;
use std::collections::HashSet;

const WITH_INSTANCETYPE: &str = "
apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata: {name: web, namespace: shop}
spec:
  instancetype: {name: u1.medium}
  preference: {name: fedora}
  template:
    spec:
      domain:
        devices:
          disks: [{name: root, disk: {}}]
          interfaces: [{name: default, masquerade: {}}]
      networks: [{name: default, pod: {}}]
      volumes: [{name: root, containerDisk: {image: example/fedora}}]
";

fn read(text: &str, context: &Context) -> Result<Valid, Vec<Problem>> {
    let value: serde_norway::Value = serde_norway::from_str(text).expect("test input is YAML");
    parse_vm_in(&value, context)
}

fn valid(text: &str, context: &Context) -> VmConfig {
    match read(text, context) {
        Ok(valid) => valid.config,
        Err(problems) => panic!("unexpected problems: {problems:?}"),
    }
}

/// A cluster that serves one instancetype and one namespaced preference,
/// and the bundled copy behind it (as vmpod composes them).
struct FakeCluster;

impl Lookup for FakeCluster {
    fn find(&self, kind: Kind, namespace: &str, name: &str) -> Result<Option<Found>, String> {
        let spec = match (kind, namespace, name) {
            (Kind::ClusterInstancetype, _, "u1.medium") => {
                "{cpu: {guest: 3}, memory: {guest: 3Gi}}"
            }
            (Kind::Preference, "shop", "mine") => {
                "{cpu: {preferredCPUTopology: preferCores}, devices: {preferredRng: {}}}"
            }
            (Kind::ClusterInstancetype, _, "broken") => return Err("HTTP 500".into()),
            _ => return instancetype::Bundled.find(kind, namespace, name),
        };
        Ok(Some(Found {
            spec: serde_norway::from_str(spec).expect("fake spec"),
            from: "the cluster".into(),
        }))
    }
}

#[test]
fn bundled_instancetype_and_preference_size_and_equip_the_vm() {
    let config = valid(WITH_INSTANCETYPE, &Context::offline());
    assert_eq!(config.cpu.vcpus(), 1);
    assert_eq!(config.memory_bytes, 4 << 30);
    assert!(config.rng, "the fedora preference asks for an RNG");
}

#[test]
fn the_cluster_answers_before_the_bundled_copy() {
    let context = Context {
        instancetypes: &FakeCluster,
        replica_in_pod: None,
    };
    let config = valid(
        WITH_INSTANCETYPE
            .replace(
                "{name: fedora}",
                "{name: mine, kind: VirtualMachinePreference}",
            )
            .as_str(),
        &context,
    );
    assert_eq!(config.memory_bytes, 3 << 30);
    assert_eq!(
        (config.cpu.sockets, config.cpu.cores, config.cpu.threads),
        (1, 3, 1)
    );
    assert!(config.rng);
    let error = read(&WITH_INSTANCETYPE.replace("u1.medium", "broken"), &context)
        .expect_err("lookup failed");
    assert_eq!(
        error[0].to_string(),
        "spec.instancetype.name: cannot look up VirtualMachineClusterInstancetype \"broken\": HTTP 500"
    );
}

#[test]
fn unknown_names_are_errors_that_list_what_exists() {
    let error = read(
        &WITH_INSTANCETYPE.replace("u1.medium", "u1.giant"),
        &Context::offline(),
    )
    .expect_err("unknown");
    assert!(error[0]
        .message
        .contains("no VirtualMachineClusterInstancetype named \"u1.giant\""));
    assert!(
        error[0].message.contains("u1.nano, u1.micro"),
        "{}",
        error[0]
    );
    let namespaced = WITH_INSTANCETYPE.replace(
        "{name: fedora}",
        "{name: fedora, kind: VirtualMachinePreference}",
    );
    let error = read(&namespaced, &Context::offline()).expect_err("not bundled");
    assert_eq!(
        error[0].to_string(),
        "spec.preference.name: no VirtualMachinePreference named \"fedora\" in namespace shop"
    );
}

fn replica(pod: &str) -> VmConfig {
    valid(
        WITH_INSTANCETYPE,
        &Context {
            instancetypes: &instancetype::Bundled,
            replica_in_pod: Some(pod),
        },
    )
}

#[test]
fn replicas_of_one_deployment_never_share_an_identity() {
    let pods = ["web-7d9f8c6b5-x2k4p", "web-7d9f8c6b5-q8zzn", "other-pod"];
    let configs: Vec<VmConfig> = pods.iter().map(|pod| replica(pod)).collect();
    assert_eq!(configs[0].identity.name, "web-7d9f8c6b5-x2k4p");
    assert_eq!(configs[2].identity.name, "web-other-pod");
    let distinct = |f: &dyn Fn(&VmConfig) -> String| {
        configs.iter().map(f).collect::<HashSet<_>>().len() == configs.len()
    };
    assert!(distinct(&|c| c.identity.name.clone()));
    assert!(distinct(&|c| c.identity.uuid.to_string()));
    assert!(distinct(&|c| c.identity.hostname.clone()));
    assert!(distinct(&|c| c.nics[0].mac.clone()));
    let single = valid(WITH_INSTANCETYPE, &Context::offline());
    assert!(configs
        .iter()
        .all(|c| c.identity.uuid != single.identity.uuid));
}

#[test]
fn a_statefulset_member_keeps_its_identity_across_restarts() {
    let first = replica("web-0");
    let again = replica("web-0");
    assert_eq!(first.identity, again.identity);
    assert_eq!(first.nics[0].mac, again.nics[0].mac);
    assert_ne!(first.identity.uuid, replica("web-1").identity.uuid);
}

#[test]
fn replicas_do_not_keep_a_shared_uuid_mac_or_hostname() {
    let text = WITH_INSTANCETYPE
        .replace(
            "devices:\n",
            "firmware: {uuid: 5e8bbd3a-7d56-4b4e-8f0e-6f1d2c3b4a59}\n        devices:\n",
        )
        .replace(
            "masquerade: {}",
            "masquerade: {}, macAddress: '02:00:00:00:00:01'",
        )
        .replace("      domain:\n", "      hostname: shared\n      domain:\n");
    let single = valid(&text, &Context::offline());
    assert_eq!(single.nics[0].mac, "02:00:00:00:00:01");
    let context = |pod| Context {
        instancetypes: &instancetype::Bundled,
        replica_in_pod: Some(pod),
    };
    let a = valid(&text, &context("web-a"));
    let b = valid(&text, &context("web-b"));
    assert_ne!(a.identity.uuid, b.identity.uuid);
    assert_ne!(a.identity.uuid, single.identity.uuid);
    assert_ne!(a.nics[0].mac, b.nics[0].mac);
    assert_eq!(
        (a.identity.hostname.as_str(), b.identity.hostname.as_str()),
        ("web-a", "web-b")
    );
    let notes = read(&text, &context("web-a")).expect("valid").ignored;
    assert!(notes.iter().any(|n| n.path.ends_with("macAddress")));
}
