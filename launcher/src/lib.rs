//! vmpod: a VM in a pod. The container entrypoint reads a VM definition,
//! builds a KVM microVM in its own process and serves the VM's consoles as
//! Unix sockets that the `/vm/*` helpers relay to stdio.
//!
//! Imports point one way (checked by `tests/architecture.rs`):
//! `launch` → `control`, `vmm` → `devices` → `api`; `spec` feeds `vmm`,
//! `control` and `launch`; `helpers` need only `api` and `signals`.
//! `vmm` and `control` never import each other: they talk through `api`.

pub mod api;
pub mod cluster;
pub mod control;
pub mod devices;
pub mod diskboot;
pub mod helpers;
pub mod hooks;
pub mod images;
pub mod launch;
pub mod logging;
pub mod pod;
pub mod signals;
pub mod source;
pub mod spec;
pub mod vmm;
