//! The virtio-mmio transport driven the way a driver drives it (virtio 1.2,
//! section 4.2.3): probe, negotiate, set up queues, go, notify, reset.

use std::sync::Mutex;

use vm_memory::GuestAddress;

use super::*;
use crate::devices::virtio::ActivateError;

/// A device that records what the transport hands it.
#[derive(Default)]
struct Probe {
    log: Arc<Mutex<Vec<String>>>,
}

impl VirtioDevice for Probe {
    fn device_type(&self) -> u32 {
        super::super::device_type::ENTROPY
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[64, 32]
    }
    fn features(&self) -> u64 {
        1 << 5
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        data.fill(0x40 + offset as u8);
    }
    fn write_config(&mut self, offset: u64, _: &[u8]) {
        self.log
            .lock()
            .expect("log")
            .push(format!("config {offset}"));
    }
    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        let queues: Vec<String> = activation
            .queues
            .iter()
            .map(|q| format!("{}:{}@{:#x}", q.index, q.queue.size(), q.queue.desc_table()))
            .collect();
        self.log.lock().expect("log").push(format!(
            "activate features {:#x} queues {}",
            activation.features,
            queues.join(",")
        ));
        activation
            .interrupt
            .trigger(InterruptCause::Queue(0))
            .map_err(ActivateError::Backend)
    }
    fn queue_notified(&mut self, index: u16) {
        self.log
            .lock()
            .expect("log")
            .push(format!("notified {index}"));
    }
    fn reset(&mut self) {
        self.log.lock().expect("log").push("reset".into());
    }
}

struct Fixture {
    transport: MmioTransport,
    log: Arc<Mutex<Vec<String>>>,
    irqfd: EventFd,
}

fn fixture() -> Fixture {
    let memory =
        Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).expect("memory"));
    let probe = Probe::default();
    let log = probe.log.clone();
    let irqfd = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
    let transport = MmioTransport::new(Box::new(probe), memory, irqfd.try_clone().expect("clone"));
    Fixture {
        transport,
        log,
        irqfd,
    }
}

impl Fixture {
    fn read(&mut self, offset: u64) -> u32 {
        let mut bytes = [0u8; 4];
        self.transport.read(offset, &mut bytes);
        u32::from_le_bytes(bytes)
    }

    fn write(&mut self, offset: u64, value: u32) {
        self.transport.write(offset, &value.to_le_bytes());
    }

    fn log(&self) -> Vec<String> {
        self.log.lock().expect("log").clone()
    }

    /// Status, features and queue 0 as Linux's virtio_mmio sets them up.
    fn set_up(&mut self, driver_features: u64) {
        self.write(STATUS, status::ACKNOWLEDGE);
        self.write(STATUS, status::ACKNOWLEDGE | status::DRIVER);
        self.write(DRIVER_FEATURES_SEL, 0);
        self.write(DRIVER_FEATURES, driver_features as u32);
        self.write(DRIVER_FEATURES_SEL, 1);
        self.write(DRIVER_FEATURES, (driver_features >> 32) as u32);
        self.write(
            STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        self.write(QUEUE_SEL, 0);
        self.write(QUEUE_NUM, 16);
        self.write(QUEUE_DESC_LOW, 0x1000);
        self.write(QUEUE_DESC_HIGH, 0);
        self.write(QUEUE_DRIVER_LOW, 0x2000);
        self.write(QUEUE_DEVICE_LOW, 0x3000);
        self.write(QUEUE_READY, 1);
    }
}

const DRIVER_READY: u32 =
    status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;

#[test]
fn a_driver_probes_the_modern_register_layout() {
    let mut f = fixture();
    assert_eq!(f.read(MAGIC_VALUE), 0x7472_6976);
    assert_eq!(f.read(VERSION), 2);
    assert_eq!(f.read(DEVICE_ID), 4);
    assert_eq!(f.read(DEVICE_FEATURES), 1 << 5);
    f.write(DEVICE_FEATURES_SEL, 1);
    assert_eq!(f.read(DEVICE_FEATURES), 1, "VIRTIO_F_VERSION_1 is offered");
    f.write(QUEUE_SEL, 1);
    assert_eq!(f.read(QUEUE_NUM_MAX), 32);
    f.write(QUEUE_SEL, 7);
    assert_eq!(f.read(QUEUE_NUM_MAX), 0, "no such queue");
    let mut config = [0u8; 2];
    f.transport.read(CONFIG + 2, &mut config);
    assert_eq!(config, [0x42, 0x42]);
}

#[test]
fn driver_ok_activates_with_the_negotiated_features_and_ready_queues() {
    let mut f = fixture();
    f.set_up(VIRTIO_F_VERSION_1 | (1 << 5));
    assert_eq!(f.read(STATUS) & status::FEATURES_OK, status::FEATURES_OK);
    f.write(STATUS, DRIVER_READY);
    assert_eq!(
        f.log(),
        ["activate features 0x100000020 queues 0:16@0x1000"]
    );
    assert_eq!(f.read(INTERRUPT_STATUS), 1, "used-buffer interrupt");
    assert_eq!(f.irqfd.read().ok(), Some(1));
    f.write(INTERRUPT_ACK, 1);
    assert_eq!(f.read(INTERRUPT_STATUS), 0);
    f.transport.notify(0);
    f.write(QUEUE_NOTIFY, 1);
    assert_eq!(f.log()[1..], ["notified 0", "notified 1"]);
}

#[test]
fn features_the_device_did_not_offer_or_a_legacy_driver_are_refused() {
    let mut f = fixture();
    f.set_up(VIRTIO_F_VERSION_1 | (1 << 6));
    assert_eq!(
        f.read(STATUS) & status::FEATURES_OK,
        0,
        "an unoffered feature"
    );
    let mut legacy = fixture();
    legacy.set_up(1 << 5);
    assert_eq!(legacy.read(STATUS) & status::FEATURES_OK, 0, "no VERSION_1");
    legacy.write(STATUS, DRIVER_READY & !status::FEATURES_OK);
    assert!(legacy.log().is_empty(), "never activated");
}

#[test]
fn a_queue_outside_guest_memory_fails_the_device_not_the_vmm() {
    let mut f = fixture();
    f.set_up(VIRTIO_F_VERSION_1);
    f.write(QUEUE_DESC_LOW, 0xffff_0000);
    f.write(QUEUE_DESC_HIGH, 0xffff_ffff);
    f.write(STATUS, DRIVER_READY);
    assert_ne!(f.read(STATUS) & status::FAILED, 0);
    assert!(f.log().is_empty());
    f.transport.notify(0);
    assert!(f.log().is_empty(), "an inactive device hears nothing");
}

#[test]
fn writing_status_zero_resets_device_and_queues() {
    let mut f = fixture();
    f.set_up(VIRTIO_F_VERSION_1);
    f.write(STATUS, DRIVER_READY);
    f.write(STATUS, 0);
    assert_eq!(f.log().last().map(String::as_str), Some("reset"));
    assert_eq!(f.read(STATUS), 0);
    assert_eq!(f.read(QUEUE_READY), 0);
    assert_eq!(f.read(INTERRUPT_STATUS), 0);
}

#[test]
fn odd_widths_and_offsets_are_harmless() {
    let mut f = fixture();
    let mut byte = [0xffu8];
    f.transport.read(MAGIC_VALUE, &mut byte);
    assert_eq!(byte, [0]);
    f.transport.write(STATUS + 1, &[1, 2, 3, 4]);
    f.transport.write(STATUS, &[7]);
    assert_eq!(f.read(STATUS), 0);
    f.write(0x0f8, 1234); // no register there
    f.write(CONFIG + 8, 9);
    assert_eq!(f.log(), ["config 8"]);
}

#[test]
fn a_driver_stopping_a_live_queue_reads_zero_back_and_the_device_stops() {
    // virtio-drivers does this before a reset and spins until it reads 0.
    let mut f = fixture();
    f.set_up(VIRTIO_F_VERSION_1);
    f.write(STATUS, DRIVER_READY);
    f.write(QUEUE_SEL, 0);
    f.write(QUEUE_READY, 0);
    assert_eq!(f.read(QUEUE_READY), 0);
    assert_eq!(f.log().last().map(String::as_str), Some("reset"));
    f.transport.notify(0);
    assert_eq!(
        f.log().last().map(String::as_str),
        Some("reset"),
        "no more notifications"
    );
    // Re-enabling a queue while live is still ignored (section 4.2.3.2).
    f.write(QUEUE_READY, 1);
    assert_eq!(f.read(QUEUE_READY), 0);
}
