//! vmpod: a VM in a pod. The container entrypoint reads a VM definition,
//! builds a KVM microVM in its own process and serves the VM's consoles as
//! Unix sockets that the `/vm/*` helpers relay to stdio.
//!
//! Data flows one way: `spec` (definitions → `VmConfig`) → `vmm` → `devices`.

pub mod control;
pub mod devices;
pub mod helpers;
pub mod lifecycle;
pub mod logging;
pub mod signals;
pub mod spec;
pub mod vmm;
