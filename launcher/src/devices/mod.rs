//! Emulated devices. Each device owns its register logic; the VMM's device
//! manager places it on a bus, wires its interrupt and relays guest
//! accesses from the vCPU threads. Devices ask the VMM for lifecycle
//! changes (poweroff, reset) through `api` commands; they never reach into
//! the VMM or the control plane.

pub mod bus;
pub mod ged;
pub mod legacy;
pub mod virtio;
