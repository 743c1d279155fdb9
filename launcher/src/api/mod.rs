//! Plain data between the VMM and the control plane, and nothing else:
//! commands (control plane, devices and vCPUs → VMM), events (VMM →
//! control plane), the VM's status, the socket names of the run directory,
//! and a channel whose receiving end is an eventfd an epoll loop can wait on.
//!
//! Imports nothing of the crate, so that `vmm`, `devices`, `control` and
//! `helpers` can all depend on it without depending on each other. Any
//! thread may use it.

pub mod display;
pub mod keys;

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{mpsc, Arc};
use std::time::SystemTime;

use vmm_sys_util::eventfd::EventFd;

pub use keys::{Key, KeyEvent};

/// Where the control sockets go by default (in a pod).
pub const DEFAULT_RUN_DIR: &str = "/vm/run";
pub const SERIAL_SOCKET: &str = "serial.sock";
pub const QMP_SOCKET: &str = "qmp.sock";
pub const MONITOR_SOCKET: &str = "monitor.sock";
pub const READY_SOCKET: &str = "ready.sock";
pub const VNC_SOCKET: &str = "vnc.sock";

/// What the VMM is asked to do. Control commands come from QMP, the human
/// monitor and signals; guest requests come from devices and vCPU threads.
#[derive(Debug)]
pub enum Command {
    /// Park the vCPUs (QMP `stop`).
    Pause,
    /// Run them again (QMP `cont`).
    Resume,
    /// Reset the VM; it boots again in the same process (QMP `system_reset`).
    Reset,
    /// Press the ACPI power button.
    Powerdown,
    /// Stop the VM and end vmpod with exit status 0 (QMP `quit`).
    Quit,
    /// Stop the VM now, as the answer to this signal (the guest did not
    /// power off in time, or a second signal came).
    ForcedStop(u32),
    /// Keys pressed and released, in order, on the VM's keyboard.
    Keys(Vec<KeyEvent>),
    /// The pointer moved or its buttons changed (a VNC viewer, QMP
    /// `input-send-event`).
    Pointer(display::PointerEvent),
    /// The guest powered off (ACPI S5).
    GuestPoweroff,
    /// The guest reset itself; the reason is for the log.
    GuestReset(&'static str),
    /// A vCPU or device failed in a way that stops the VM.
    GuestFailed(Box<dyn std::error::Error + Send + Sync>),
}

impl Command {
    /// Whether the guest's current boot sent this. Such requests die with
    /// the boot: after a reset, a poweroff or reset that another vCPU of
    /// the old boot asked for means nothing any more.
    pub fn is_from_guest(&self) -> bool {
        matches!(
            self,
            Command::GuestPoweroff | Command::GuestReset(_) | Command::GuestFailed(_)
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    Starting = 0,
    Running = 1,
    Paused = 2,
    Shutdown = 3,
}

impl Status {
    /// QEMU's name for it (`query-status`, `info status`).
    pub fn qemu_name(self) -> &'static str {
        match self {
            Status::Starting => "prelaunch",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Shutdown => "shutdown",
        }
    }
}

/// A disk the guest has, as the VMM attached it (QMP `query-block`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockDevice {
    /// The disk's name in the definition.
    pub name: String,
    /// The file or device behind it.
    pub file: String,
    /// The read-only image under the file's copy-on-write overlay.
    pub backing_file: Option<String>,
    /// The image format ("raw", "qcow2").
    pub format: &'static str,
    pub readonly: bool,
    pub size_bytes: u64,
}

/// The disks the guest has, set by the VMM once it attached them and
/// readable from any thread.
#[derive(Clone, Default)]
pub struct SharedBlockDevices(Arc<std::sync::Mutex<Vec<BlockDevice>>>);

impl SharedBlockDevices {
    pub fn get(&self) -> Vec<BlockDevice> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set(&self, devices: Vec<BlockDevice>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = devices;
    }
}

/// The status, set by the VMM and readable from any thread.
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Stop,
    Resume,
    Reset,
    Powerdown,
    Shutdown,
    /// A disk's backend failed a guest request (the guest saw an I/O error).
    BlockIoError(BlockIoError),
}

/// What QMP's BLOCK_IO_ERROR says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockIoError {
    /// The disk's name in the definition.
    pub device: String,
    /// "read" or "write" (flushes, discards and zeroing count as writes).
    pub operation: &'static str,
    /// Whether the backend ran out of space.
    pub nospace: bool,
    pub reason: String,
}

impl Event {
    pub fn qmp_name(&self) -> &'static str {
        match self {
            Event::Stop => "STOP",
            Event::Resume => "RESUME",
            Event::Reset => "RESET",
            Event::Powerdown => "POWERDOWN",
            Event::Shutdown => "SHUTDOWN",
            Event::BlockIoError(_) => "BLOCK_IO_ERROR",
        }
    }

    /// The status this event says the VM has just reached, if any.
    pub fn status_reached(&self) -> Option<Status> {
        match self {
            Event::Stop => Some(Status::Paused),
            Event::Resume => Some(Status::Running),
            Event::Shutdown => Some(Status::Shutdown),
            Event::Reset | Event::Powerdown | Event::BlockIoError(_) => None,
        }
    }
}

/// Something that hears every event the VM reports, on the control thread.
pub type Observer = Box<dyn Fn(&Event) + Send>;

/// An event and when it happened.
#[derive(Debug, Clone)]
pub struct Timed {
    pub event: Event,
    pub at: SystemTime,
}

impl Timed {
    pub fn now(event: Event) -> Self {
        Timed {
            event,
            at: SystemTime::now(),
        }
    }
}

/// The sending end of a [`channel`]: queues, then wakes the receiver's epoll.
pub struct Sender<T> {
    queue: mpsc::Sender<T>,
    wake: Arc<EventFd>,
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        Sender {
            queue: self.queue.clone(),
            wake: self.wake.clone(),
        }
    }
}

impl<T> Sender<T> {
    /// Sends `message`; false when the receiver is gone (the VM has ended,
    /// so there is nobody left to tell).
    pub fn send(&self, message: T) -> bool {
        if self.queue.send(message).is_err() {
            return false;
        }
        // A full counter (2^64 - 2 wake-ups) still wakes the receiver.
        let _ = self.wake.write(1);
        true
    }
}

/// The receiving end: a descriptor to wait on, and the messages.
pub struct Receiver<T> {
    queue: mpsc::Receiver<T>,
    wake: Arc<EventFd>,
}

impl<T> Receiver<T> {
    /// Everything sent so far, oldest first; clears the wake-up.
    pub fn drain(&self) -> Vec<T> {
        let _ = self.wake.read();
        self.queue.try_iter().collect()
    }
}

impl<T> AsRawFd for Receiver<T> {
    fn as_raw_fd(&self) -> RawFd {
        self.wake.as_raw_fd()
    }
}

/// A channel whose receiver is readable (for epoll) while messages wait.
pub fn channel<T>() -> std::io::Result<(Sender<T>, Receiver<T>)> {
    let (queue_sender, queue_receiver) = mpsc::channel();
    let wake = Arc::new(EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?);
    Ok((
        Sender {
            queue: queue_sender,
            wake: wake.clone(),
        },
        Receiver {
            queue: queue_receiver,
            wake,
        },
    ))
}

pub type CommandSender = Sender<Command>;
pub type CommandReceiver = Receiver<Command>;
pub type EventSender = Sender<Timed>;
pub type EventReceiver = Receiver<Timed>;

#[cfg(test)]
mod tests {
    use super::*;

    fn readable(fd: RawFd) -> bool {
        let mut poll = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        unsafe { libc::poll(&mut poll, 1, 0) == 1 }
    }

    #[test]
    fn the_receiver_is_readable_exactly_while_messages_wait() {
        let (sender, receiver) = channel::<u32>().expect("channel");
        assert!(!readable(receiver.as_raw_fd()));
        assert!(sender.send(1));
        assert!(sender.clone().send(2));
        assert!(readable(receiver.as_raw_fd()));
        assert_eq!(receiver.drain(), [1, 2]);
        assert!(!readable(receiver.as_raw_fd()));
        drop(receiver);
        assert!(!sender.send(3), "nobody is listening any more");
    }

    #[test]
    fn guest_requests_are_told_apart_from_commands() {
        assert!(Command::GuestReset("triple fault").is_from_guest());
        assert!(Command::GuestPoweroff.is_from_guest());
        assert!(!Command::Quit.is_from_guest());
        assert!(!Command::ForcedStop(15).is_from_guest());
        assert!(!Command::Reset.is_from_guest());
    }

    #[test]
    fn status_round_trips_through_the_shared_cell() {
        let status = SharedStatus::default();
        assert_eq!(status.get(), Status::Starting);
        for each in [Status::Running, Status::Paused, Status::Shutdown] {
            status.set(each);
            assert_eq!(status.get(), each);
        }
        assert_eq!(Event::Stop.status_reached(), Some(Status::Paused));
        assert_eq!(Event::Reset.status_reached(), None);
    }
}
