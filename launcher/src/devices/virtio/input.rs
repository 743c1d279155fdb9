//! virtio-input (virtio 1.2, section 5.8): a keyboard and an absolute
//! tablet, so that a VNC viewer's keys and pointer reach the guest (the
//! tablet's position lines up with the viewer's). The configuration space
//! answers the driver's select/subsel questions (name, IDs, which event
//! types and codes exist, the axes' ranges); events go to the guest in the
//! driver's buffers on the event queue; what the driver sends on the
//! status queue (LEDs) is taken and dropped.
//!
//! Events are queued by the VMM thread through an [`InputHandle`] and
//! delivered when the driver has buffers; the device itself runs where
//! every virtio device does (the transport's mutex).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};

use super::{
    device_type, log_bad_request, ActivateError, Activation, InterruptCause, VirtioDevice,
};
use crate::api::display::{PointerEvent, POINTER_MAX};
use crate::api::{keys, KeyEvent};

const QUEUE_SIZES: &[u16] = &[64, 64];
const EVENT_QUEUE: u16 = 0;
const STATUS_QUEUE: u16 = 1;
/// Events held while the driver has no buffers; more are dropped.
const PENDING_LIMIT: usize = 1024;

/// Configuration selectors (virtio 1.2, 5.8.5).
const CFG_ID_NAME: u8 = 0x01;
const CFG_ID_SERIAL: u8 = 0x02;
const CFG_ID_DEVIDS: u8 = 0x03;
const CFG_PROP_BITS: u8 = 0x10;
const CFG_EV_BITS: u8 = 0x11;
const CFG_ABS_INFO: u8 = 0x12;
/// Where the union starts in the configuration space.
const CONFIG_DATA: usize = 8;

/// Linux input event types and codes (include/uapi/linux/input-event-codes.h).
const EV_SYN: u16 = 0x00;
const EV_KEY: u16 = 0x01;
const EV_REL: u16 = 0x02;
const EV_ABS: u16 = 0x03;
const SYN_REPORT: u16 = 0;
const ABS_X: u16 = 0x00;
const ABS_Y: u16 = 0x01;
const REL_WHEEL: u16 = 0x08;
const BTN_LEFT: u16 = 0x110;
const BTN_RIGHT: u16 = 0x111;
const BTN_MIDDLE: u16 = 0x112;
/// Pointer button bits (RFB's order) and their codes.
const BUTTONS: [(u8, u16); 3] = [
    (1 << 0, BTN_LEFT),
    (1 << 1, BTN_MIDDLE),
    (1 << 2, BTN_RIGHT),
];
const WHEEL_UP: u8 = 1 << 3;
const WHEEL_DOWN: u8 = 1 << 4;
/// BUS_VIRTUAL, and virtio's PCI vendor id.
const BUS_VIRTUAL: u16 = 0x06;
const VENDOR: u16 = 0x1af4;

/// Which input device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    Keyboard,
    Tablet,
}

/// One `virtio_input_event`: type, code, value, little-endian.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputEvent {
    pub kind: u16,
    pub code: u16,
    pub value: u32,
}

impl InputEvent {
    fn bytes(&self) -> [u8; 8] {
        let mut bytes = [0u8; 8];
        bytes[..2].copy_from_slice(&self.kind.to_le_bytes());
        bytes[2..4].copy_from_slice(&self.code.to_le_bytes());
        bytes[4..].copy_from_slice(&self.value.to_le_bytes());
        bytes
    }
}

const SYN: InputEvent = InputEvent {
    kind: EV_SYN,
    code: SYN_REPORT,
    value: 0,
};

/// Keys as evdev events, each followed by a report.
pub fn key_events(keys: &[KeyEvent]) -> Vec<InputEvent> {
    keys.iter()
        .flat_map(|event| {
            [
                InputEvent {
                    kind: EV_KEY,
                    code: event.key.evdev,
                    value: u32::from(event.pressed),
                },
                SYN,
            ]
        })
        .collect()
}

/// A pointer event as the tablet reports it, given the buttons that were
/// down before: the position, buttons that changed, a wheel step.
pub fn pointer_events(before: u8, pointer: PointerEvent) -> Vec<InputEvent> {
    let mut events = vec![
        InputEvent {
            kind: EV_ABS,
            code: ABS_X,
            value: u32::from(pointer.x),
        },
        InputEvent {
            kind: EV_ABS,
            code: ABS_Y,
            value: u32::from(pointer.y),
        },
    ];
    for (bit, code) in BUTTONS {
        if (before ^ pointer.buttons) & bit != 0 {
            events.push(InputEvent {
                kind: EV_KEY,
                code,
                value: u32::from(pointer.buttons & bit != 0),
            });
        }
    }
    // A wheel "button" going down is one step.
    for (bit, step) in [(WHEEL_UP, 1i32), (WHEEL_DOWN, -1)] {
        if pointer.buttons & bit != 0 && before & bit == 0 {
            events.push(InputEvent {
                kind: EV_REL,
                code: REL_WHEEL,
                value: step as u32,
            });
        }
    }
    events.push(SYN);
    events
}

/// What the VMM keeps of an input device: whether its driver is running,
/// and the queue its events go through.
#[derive(Clone)]
pub struct InputHandle {
    pub kind: InputKind,
    shared: Arc<Shared>,
}

struct Shared {
    active: AtomicBool,
    pending: Mutex<VecDeque<InputEvent>>,
    dropped: AtomicBool,
}

impl InputHandle {
    /// Whether a driver has set the device up (and not reset it since).
    pub fn is_active(&self) -> bool {
        self.shared.active.load(Ordering::SeqCst)
    }

    /// Queues events; the device delivers them when notified. Past the
    /// limit they are dropped (said once).
    pub fn queue(&self, events: Vec<InputEvent>) {
        let mut pending = self
            .shared
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if pending.len() + events.len() > PENDING_LIMIT {
            if !self.shared.dropped.swap(true, Ordering::SeqCst) {
                log::warn!(
                    "virtio-input {:?}: the guest takes no events; dropping new ones",
                    self.kind
                );
            }
            return;
        }
        pending.extend(events);
    }
}

struct Active {
    memory: Arc<GuestMemoryMmap>,
    events: Queue,
    status: Queue,
    interrupt: Arc<dyn super::VirtioInterrupt>,
}

pub struct Input {
    kind: InputKind,
    name: String,
    select: u8,
    subsel: u8,
    active: Option<Active>,
    shared: Arc<Shared>,
    bad_requests: u64,
}

impl Input {
    pub fn new(kind: InputKind, name: &str) -> (Self, InputHandle) {
        let shared = Arc::new(Shared {
            active: AtomicBool::new(false),
            pending: Mutex::new(VecDeque::new()),
            dropped: AtomicBool::new(false),
        });
        let device = Input {
            kind,
            name: name.to_owned(),
            select: 0,
            subsel: 0,
            active: None,
            shared: shared.clone(),
            bad_requests: 0,
        };
        (device, InputHandle { kind, shared })
    }

    /// The union's contents for the current select/subsel.
    fn config_data(&self) -> Vec<u8> {
        let bitmap = |codes: &[u16]| {
            let Some(&last) = codes.iter().max() else {
                return Vec::new();
            };
            let mut bits = vec![0u8; usize::from(last) / 8 + 1];
            for &code in codes {
                bits[usize::from(code / 8)] |= 1 << (code % 8);
            }
            bits
        };
        match (self.select, self.subsel) {
            (CFG_ID_NAME, 0) => self.name.as_bytes().iter().take(127).copied().collect(),
            (CFG_ID_SERIAL, 0) => b"vmpod".to_vec(),
            (CFG_ID_DEVIDS, 0) => {
                let product: u16 = match self.kind {
                    InputKind::Keyboard => 1,
                    InputKind::Tablet => 2,
                };
                [BUS_VIRTUAL, VENDOR, product, 1]
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect()
            }
            (CFG_PROP_BITS, 0) => Vec::new(),
            (CFG_EV_BITS, subsel) => match (self.kind, u16::from(subsel)) {
                (InputKind::Keyboard, EV_KEY) => {
                    bitmap(&keys::KEYS.iter().map(|key| key.evdev).collect::<Vec<_>>())
                }
                (InputKind::Tablet, EV_KEY) => bitmap(&[BTN_LEFT, BTN_RIGHT, BTN_MIDDLE]),
                (InputKind::Tablet, EV_ABS) => bitmap(&[ABS_X, ABS_Y]),
                (InputKind::Tablet, EV_REL) => bitmap(&[REL_WHEEL]),
                _ => Vec::new(),
            },
            (CFG_ABS_INFO, axis) if self.kind == InputKind::Tablet && u16::from(axis) <= ABS_Y => {
                // min, max, fuzz, flat, resolution
                [0u32, u32::from(POINTER_MAX), 0, 0, 0]
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect()
            }
            _ => Vec::new(),
        }
    }

    /// Hands queued events to the driver's buffers, as far as they go.
    fn deliver(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let memory = &*active.memory;
        let mut pending = self
            .shared
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut delivered = false;
        while let Some(event) = pending.front().copied() {
            let Some(chain) = active.events.pop_descriptor_chain(memory) else {
                break;
            };
            let head = chain.head_index();
            let mut written = 0;
            if let Some(buffer) = chain
                .into_iter()
                .find(|d| d.is_write_only() && d.len() >= 8)
            {
                if memory.write_slice(&event.bytes(), buffer.addr()).is_ok() {
                    written = 8;
                }
            }
            if written == 0 {
                log_bad_request(
                    &mut self.bad_requests,
                    "virtio-input",
                    "an event buffer the device cannot write 8 bytes to",
                );
            } else {
                pending.pop_front();
            }
            if let Err(error) = active.events.add_used(memory, head, written) {
                log_bad_request(&mut self.bad_requests, "virtio-input", error);
            }
            delivered = true;
        }
        if pending.is_empty() {
            self.shared.dropped.store(false, Ordering::SeqCst);
        }
        drop(pending);
        if delivered && active.events.needs_notification(memory).unwrap_or(true) {
            if let Err(error) = active.interrupt.trigger(InterruptCause::Queue(EVENT_QUEUE)) {
                log::warn!("virtio-input: cannot interrupt the guest: {error}");
            }
        }
    }

    /// Takes the driver's status messages (LEDs) and gives the buffers back.
    fn drain_status(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let memory = &*active.memory;
        let mut taken = false;
        while let Some(chain) = active.status.pop_descriptor_chain(memory) {
            if let Err(error) = active.status.add_used(memory, chain.head_index(), 0) {
                log_bad_request(&mut self.bad_requests, "virtio-input", error);
            }
            taken = true;
        }
        if taken && active.status.needs_notification(memory).unwrap_or(true) {
            let _ = active
                .interrupt
                .trigger(InterruptCause::Queue(STATUS_QUEUE));
        }
    }
}

impl VirtioDevice for Input {
    fn device_type(&self) -> u32 {
        device_type::INPUT
    }

    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        0
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let union = self.config_data();
        let mut config = vec![
            self.select,
            self.subsel,
            union.len().min(128) as u8,
            0,
            0,
            0,
            0,
            0,
        ];
        config.extend(union.iter().take(128));
        config.resize(CONFIG_DATA + 128, 0);
        super::read_config_bytes(&config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        for (index, &byte) in data.iter().enumerate() {
            match offset + index as u64 {
                0 => self.select = byte,
                1 => self.subsel = byte,
                _ => {} // size and the union are read-only
            }
        }
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        let given = activation.queues.len();
        let mut events = None;
        let mut status = None;
        for queue in activation.queues {
            match queue.index {
                EVENT_QUEUE => events = Some(queue.queue),
                STATUS_QUEUE => status = Some(queue.queue),
                _ => {}
            }
        }
        let (Some(events), Some(status)) = (events, status) else {
            return Err(ActivateError::Queues { given, needed: 2 });
        };
        self.active = Some(Active {
            memory: activation.memory,
            events,
            status,
            interrupt: activation.interrupt,
        });
        self.shared.active.store(true, Ordering::SeqCst);
        self.deliver();
        Ok(())
    }

    fn queue_notified(&mut self, index: u16) {
        match index {
            EVENT_QUEUE => self.deliver(),
            STATUS_QUEUE => self.drain_status(),
            _ => {}
        }
    }

    fn reset(&mut self) {
        self.active = None;
        self.shared.active.store(false, Ordering::SeqCst);
        self.shared
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}

#[cfg(test)]
#[path = "input_tests.rs"]
mod tests;
