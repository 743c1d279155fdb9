//! The control plane: Unix sockets in the run directory through which the
//! `/vm/*` helpers reach the VM. Runs on its own thread (`control`), an
//! epoll loop; it reaches devices only through their public methods.

pub mod rundir;
pub mod serial;
