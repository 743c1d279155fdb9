//! virtio-input's configuration answers, events and queues.

use super::*;
use crate::devices::virtio::test_support::{memory, Counted, WRITE};
use crate::devices::virtio::ActiveQueue;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::GuestAddress;

fn config(device: &mut Input, select: u8, subsel: u8) -> Vec<u8> {
    device.write_config(0, &[select, subsel]);
    let mut size = [0u8];
    device.read_config(2, &mut size);
    let mut data = vec![0u8; usize::from(size[0])];
    device.read_config(CONFIG_DATA as u64, &mut data);
    data
}

fn has_bit(bitmap: &[u8], bit: u16) -> bool {
    bitmap
        .get(usize::from(bit / 8))
        .is_some_and(|byte| byte >> (bit % 8) & 1 == 1)
}

#[test]
fn the_configuration_answers_what_linux_asks() {
    let (mut keyboard, _) = Input::new(InputKind::Keyboard, "vmpod virtio keyboard");
    assert_eq!(
        config(&mut keyboard, CFG_ID_NAME, 0),
        b"vmpod virtio keyboard"
    );
    let keys = config(&mut keyboard, CFG_EV_BITS, EV_KEY as u8);
    assert!(has_bit(&keys, 30) && has_bit(&keys, 1), "KEY_A and KEY_ESC");
    assert!(config(&mut keyboard, CFG_EV_BITS, EV_ABS as u8).is_empty());
    assert_eq!(
        config(&mut keyboard, CFG_ID_DEVIDS, 0),
        [6, 0, 0xf4, 0x1a, 1, 0, 1, 0]
    );
    let (mut tablet, _) = Input::new(InputKind::Tablet, "vmpod virtio tablet");
    let buttons = config(&mut tablet, CFG_EV_BITS, EV_KEY as u8);
    assert!(has_bit(&buttons, BTN_LEFT) && has_bit(&buttons, BTN_RIGHT) && !has_bit(&buttons, 30));
    let axes = config(&mut tablet, CFG_EV_BITS, EV_ABS as u8);
    assert!(has_bit(&axes, ABS_X) && has_bit(&axes, ABS_Y));
    let range = config(&mut tablet, CFG_ABS_INFO, ABS_Y as u8);
    assert_eq!(&range[..8], [0, 0, 0, 0, 0xff, 0x7f, 0, 0], "0..=32767");
    assert!(config(&mut tablet, CFG_ABS_INFO, 5).is_empty());
    assert!(
        config(&mut tablet, 0x7f, 0).is_empty(),
        "an unknown select has size 0"
    );
}

#[test]
fn pointer_events_carry_position_changed_buttons_and_wheel_steps() {
    let moved = pointer_events(
        0,
        PointerEvent {
            x: 5,
            y: 6,
            buttons: 0,
        },
    );
    assert_eq!(moved.len(), 3);
    let pressed = pointer_events(
        0,
        PointerEvent {
            x: 5,
            y: 6,
            buttons: 1 | WHEEL_UP,
        },
    );
    assert!(pressed.contains(&InputEvent {
        kind: EV_KEY,
        code: BTN_LEFT,
        value: 1
    }));
    assert!(pressed.contains(&InputEvent {
        kind: EV_REL,
        code: REL_WHEEL,
        value: 1
    }));
    let held = pointer_events(
        1,
        PointerEvent {
            x: 7,
            y: 6,
            buttons: 1,
        },
    );
    assert!(
        !held.iter().any(|event| event.kind == EV_KEY),
        "no change, no button event"
    );
    let down = pointer_events(
        0,
        PointerEvent {
            x: 0,
            y: 0,
            buttons: WHEEL_DOWN,
        },
    );
    assert!(down.contains(&InputEvent {
        kind: EV_REL,
        code: REL_WHEEL,
        value: u32::MAX
    }));
    assert_eq!(*down.last().expect("events"), SYN);
}

#[test]
fn queued_events_reach_the_drivers_buffers_once_it_has_some() {
    let memory = memory();
    let mock = MockSplitQueue::new(&*memory, 16);
    let buffers: Vec<RawDescriptor> = (0..3)
        .map(|index| RawDescriptor::from(SplitDescriptor::new(0x8000 + index * 0x100, 8, WRITE, 0)))
        .collect();
    mock.add_desc_chains(&buffers, 0).expect("buffers");
    let status = MockSplitQueue::create(&*memory, GuestAddress(0x4_0000), 16);
    let interrupt = Arc::new(Counted::default());
    let (mut device, handle) = Input::new(InputKind::Keyboard, "k");
    let a = crate::api::keys::Key::by_qcode("a").expect("a");
    handle.queue(key_events(&[KeyEvent {
        key: a,
        pressed: true,
    }]));
    assert!(!handle.is_active());
    device
        .activate(Activation {
            memory: memory.clone(),
            features: super::super::VIRTIO_F_VERSION_1,
            queues: vec![
                ActiveQueue {
                    index: 0,
                    queue: mock.create_queue().expect("queue"),
                },
                ActiveQueue {
                    index: 1,
                    queue: status.create_queue().expect("queue"),
                },
            ],
            interrupt: interrupt.clone(),
        })
        .expect("activates");
    assert!(handle.is_active());
    let mut event = [0u8; 8];
    memory
        .read_slice(&mut event, GuestAddress(0x8000))
        .expect("read");
    assert_eq!(event, [1, 0, 30, 0, 1, 0, 0, 0], "EV_KEY KEY_A down");
    memory
        .read_slice(&mut event, GuestAddress(0x8100))
        .expect("read");
    assert_eq!(event, [0; 8], "then SYN_REPORT");
    assert_eq!(mock.used().idx().load(), 2);
    assert!(interrupt.count() >= 1);
    device.reset();
    assert!(!handle.is_active());
}

#[test]
fn a_driver_that_takes_nothing_gets_no_more_than_the_limit() {
    let (device, handle) = Input::new(InputKind::Tablet, "t");
    for _ in 0..PENDING_LIMIT {
        handle.queue(vec![SYN]);
    }
    handle.queue(vec![SYN, SYN]);
    assert_eq!(
        device.shared.pending.lock().expect("lock").len(),
        PENDING_LIMIT
    );
}
