//! vmpod's virtio devices driven by drivers that are not vmpod's: the
//! guest in `guests/virtio-driver` is built on the `virtio-drivers` crate.
//! It finds the devices in the device window, reads and writes blocks,
//! reads entropy, and sends an ARP request through a real passt and gets
//! the answer; it prints what it saw, and vmpod's files show the rest.

mod common;

use std::time::Duration;

use common::{guest, launch, not_here, Scratch};

const WATCHDOG: Duration = Duration::from_secs(60);

#[test]
#[cfg_attr(not(vmpod_kvm), ignore = "needs a usable /dev/kvm")]
fn an_independent_driver_uses_the_disk_the_entropy_source_and_the_nic() {
    let test = "an_independent_driver_uses_the_disk_the_entropy_source_and_the_nic";
    let kernel = guest("virtio-driver.bin");
    if !kernel.exists() {
        return not_here(
            test,
            "the virtio-driver guest was not built (rustup target add x86_64-unknown-none)",
        );
    }
    if std::process::Command::new("passt")
        .arg("--version")
        .output()
        .is_err()
    {
        return not_here(test, "passt is not installed");
    }
    let scratch = Scratch::new("virtio-driver");
    let disk = scratch.0.join("disk.img");
    let mut bytes = b"vmpod disk for the guest".to_vec();
    bytes.resize(1 << 20, 0);
    std::fs::write(&disk, &bytes).expect("disk");
    let definition = scratch.0.join("vm.yaml");
    std::fs::write(
        &definition,
        format!(
            "apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {{name: drivers}}
spec:
  domain:
    memory: {{guest: 64Mi}}
    firmware: {{kernelBoot: {{container: {{kernelPath: {}}}}}}}
    devices:
      autoattachGraphicsDevice: false
      rng: {{}}
      disks: [{{name: data, serial: driver-data}}]
      interfaces: [{{name: default, masquerade: {{}}, ports: [{{port: 18080}}]}}]
  networks: [{{name: default, pod: {{}}}}]
  volumes: [{{name: data, hostDisk: {{path: {}, type: Disk}}}}]
",
            kernel.display(),
            disk.display()
        ),
    )
    .expect("definition");
    let run = launch(&definition).finish(WATCHDOG);
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    for line in [
        "virtio: device Block at 0xd0000000",
        "blk: capacity 2048 sectors, read-only no",
        "blk: sector 0 says \"vmpod disk for the guest\"",
        "blk: wrote sector 1",
        "blk: read beyond the end: IoError",
        "virtio: device Network at 0xd0001000",
        "net: sent an ARP request",
        "net: ARP reply from 10.254.0.1",
        "virtio: device EntropySource at 0xd0002000",
        "rng: 32 bytes,",
        "done",
    ] {
        assert!(
            run.stdout.contains(line),
            "no {line:?} in:\n{}\n{}",
            run.stdout,
            run.stderr
        );
    }
    // Entropy, not a constant: 32 random bytes have many distinct values.
    let distinct: usize = run
        .stdout
        .split("rng: 32 bytes, ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|count| count.parse().ok())
        .expect("a count");
    assert!(distinct > 16, "{distinct} distinct bytes");
    let after = std::fs::read(&disk).expect("disk");
    assert_eq!(&after[512..536], b"written by virtio-driver");
    assert_eq!(&after[..24], b"vmpod disk for the guest");
}
