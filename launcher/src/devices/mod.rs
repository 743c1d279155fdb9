//! Emulated devices. Each device owns its register logic; the VMM places
//! it on a bus and relays guest accesses from the vCPU threads. Devices ask
//! the VMM for lifecycle changes (poweroff, reset) through [`VmRequest`]s;
//! they never reach into the VMM.

pub mod bus;
pub mod ged;
pub mod legacy;

/// What a device (or a vCPU) asks of the VMM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmRequest {
    /// The guest powered off (ACPI S5).
    Poweroff,
    /// The guest asked for a reset; the reason is for the log.
    Reset(&'static str),
    /// Stop the VM now, after this signal (the guest did not power off in time).
    ForcedStop(u32),
    /// Control commands (QMP, HMP): pause and resume the vCPUs, press the
    /// power button, or stop the VM and exit 0.
    Pause,
    Resume,
    Powerdown,
    Quit,
    /// Scancodes (set 1) to type on the PS/2 keyboard.
    SendKeys(Vec<u8>),
    /// Something went wrong that stops the VM.
    Fatal(String),
}

/// Where devices send their requests.
pub type RequestSender = std::sync::mpsc::Sender<VmRequest>;
