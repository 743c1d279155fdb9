//! The `/vm/*` helpers: small clients that connect to vmpod's sockets in the
//! run directory and relay them to stdio, for `kubectl exec`. They share
//! nothing with the VMM but the socket names. Each runs in its own short
//! process (`kubectl exec`), on its main thread; the VNC WebSocket server
//! (`vmpod vnc --websocket`) runs until stopped, a thread per viewer.

pub mod ready;
pub mod serial;
pub mod terminal;
pub mod websocket;
