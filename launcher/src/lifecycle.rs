//! The VM's lifecycle as plain data shared between the VMM (which changes
//! it) and the control plane (which reports it): the current status, and
//! the events QMP clients hear about, with their time.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::time::SystemTime;

use vmm_sys_util::eventfd::EventFd;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    Starting = 0,
    Running = 1,
    Paused = 2,
    Shutdown = 3,
}

/// The status, readable from any thread.
#[derive(Clone, Default)]
pub struct SharedStatus(Arc<AtomicU8>);

impl SharedStatus {
    pub fn get(&self) -> Status {
        match self.0.load(Ordering::SeqCst) {
            1 => Status::Running,
            2 => Status::Paused,
            3 => Status::Shutdown,
            _ => Status::Starting,
        }
    }

    pub fn set(&self, status: Status) {
        self.0.store(status as u8, Ordering::SeqCst);
    }
}

/// What happened to the VM, in QMP's event names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Stop,
    Resume,
    Reset,
    Powerdown,
    Shutdown,
}

impl Event {
    pub fn qmp_name(self) -> &'static str {
        match self {
            Event::Stop => "STOP",
            Event::Resume => "RESUME",
            Event::Reset => "RESET",
            Event::Powerdown => "POWERDOWN",
            Event::Shutdown => "SHUTDOWN",
        }
    }
}

/// An event and when it happened.
#[derive(Debug, Clone, Copy)]
pub struct Timed {
    pub event: Event,
    pub at: SystemTime,
}

/// The VMM's end of the event stream: sends, then wakes the control thread.
#[derive(Clone)]
pub struct EventSender {
    sender: Sender<Timed>,
    wake: Arc<EventFd>,
}

/// The control thread's end: an eventfd to poll, and the events.
pub struct EventReceiver {
    pub receiver: Receiver<Timed>,
    pub wake: Arc<EventFd>,
}

pub fn event_channel() -> std::io::Result<(EventSender, EventReceiver)> {
    let (sender, receiver) = std::sync::mpsc::channel();
    let wake = Arc::new(EventFd::new(libc::EFD_NONBLOCK)?);
    Ok((
        EventSender {
            sender,
            wake: wake.clone(),
        },
        EventReceiver { receiver, wake },
    ))
}

impl EventSender {
    pub fn send(&self, event: Event) {
        // With nobody listening any more there is nobody to tell.
        if self
            .sender
            .send(Timed {
                event,
                at: SystemTime::now(),
            })
            .is_ok()
        {
            let _ = self.wake.write(1);
        }
    }
}
