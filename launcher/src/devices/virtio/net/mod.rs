//! virtio-net (virtio 1.2, section 5.1): a receive and a transmit queue,
//! the MAC address, the link status and the MTU in the configuration
//! space; no offloads (the guest sends whole, checksummed frames), so any
//! backend that moves Ethernet frames fits: passt's stream, a tap.
//!
//! When the backend dies (passt exits), the link goes down (a
//! configuration-change interrupt), the device keeps serving the guest
//! (frames sent meanwhile are dropped, as on an unplugged cable), and it
//! reconnects after a delay that doubles, up to half a minute, while the
//! backend keeps dying young; the link comes up again when it did.
//!
//! Activated on a vCPU thread; queue notifications and backend events are
//! served on the VMM thread. Through the transport's mutex.

pub mod backend;

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use virtio_queue::{Queue, QueueT, Reader, Writer};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::timerfd::TimerFd;

use super::{
    device_type, log_bad_request, ActivateError, Activation, BackendEvent, InterruptCause,
    VirtioDevice, VirtioInterrupt,
};
use backend::{NetBackend, MAX_FRAME};

/// Feature bits (virtio 1.2, section 5.1.3).
const F_MTU: u64 = 1 << 3;
const F_MAC: u64 = 1 << 5;
const F_STATUS: u64 = 1 << 16;
/// The link-up bit of the status field.
const LINK_UP: u16 = 1;
/// virtio_net_hdr as a VERSION_1 device sees it (num_buffers included).
pub const HEADER_BYTES: usize = 12;

const RX: u16 = 0;
const TX: u16 = 1;
const QUEUE_SIZES: &[u16] = &[256, 256];

/// Backend event sources.
const BACKEND: u32 = 0;
const RECONNECT_TIMER: u32 = 1;

/// How long after the backend died vmpod tries again, at first and at most.
const FIRST_RETRY: Duration = Duration::from_secs(1);
const LAST_RETRY: Duration = Duration::from_secs(30);

/// Makes (or remakes) the backend: starts passt, opens the tap.
pub trait Connect: Send {
    fn connect(&mut self) -> std::io::Result<Box<dyn NetBackend>>;
}

struct Queues {
    rx: Queue,
    tx: Queue,
    memory: Arc<GuestMemoryMmap>,
    interrupt: Arc<dyn VirtioInterrupt>,
}

pub struct Net {
    name: String,
    mac: [u8; 6],
    mtu: u16,
    backend: Option<Box<dyn NetBackend>>,
    connect: Box<dyn Connect>,
    timer: TimerFd,
    retry: Duration,
    /// When the backend last came up: one that dies young is restarted
    /// later each time, one that lived long at once.
    connected_at: std::time::Instant,
    active: Option<Queues>,
    /// A frame from the backend waiting for a receive buffer.
    pending: Option<Vec<u8>>,
    bad_requests: u64,
    dropped: u64,
    /// The interrupt of the last activation, kept for link changes.
    interrupt: Option<Arc<dyn VirtioInterrupt>>,
}

impl Net {
    /// A NIC on `backend`; `connect` remakes it when it dies.
    pub fn new(
        name: &str,
        mac: [u8; 6],
        mtu: u16,
        backend: Box<dyn NetBackend>,
        connect: Box<dyn Connect>,
    ) -> std::io::Result<Self> {
        Ok(Net {
            name: name.to_owned(),
            mac,
            mtu,
            backend: Some(backend),
            connect,
            timer: TimerFd::new()?,
            retry: FIRST_RETRY,
            connected_at: std::time::Instant::now(),
            active: None,
            pending: None,
            bad_requests: 0,
            dropped: 0,
            interrupt: None,
        })
    }

    fn config(&self) -> [u8; 12] {
        let mut config = [0u8; 12];
        config[..6].copy_from_slice(&self.mac);
        let status = if self.backend.is_some() { LINK_UP } else { 0 };
        config[6..8].copy_from_slice(&status.to_le_bytes());
        config[8..10].copy_from_slice(&1u16.to_le_bytes()); // max_virtqueue_pairs
        config[10..12].copy_from_slice(&self.mtu.to_le_bytes());
        config
    }

    fn link_changed(&self) {
        if let Some(interrupt) = &self.interrupt {
            if let Err(error) = interrupt.trigger(InterruptCause::ConfigChange) {
                log::warn!(
                    "NIC {}: cannot tell the guest the link changed: {error}",
                    self.name
                );
            }
        }
    }

    /// The backend failed: link down, and try again later.
    fn lost_backend(&mut self, error: &std::io::Error) {
        if self.backend.take().is_none() {
            return;
        }
        self.pending = None;
        if self.connected_at.elapsed() > LAST_RETRY {
            self.retry = FIRST_RETRY;
        }
        log::error!(
            "NIC {}: the network backend stopped ({error}); the guest sees its link down; restarting it in {} s",
            self.name,
            self.retry.as_secs()
        );
        self.link_changed();
        if let Err(error) = self.timer.reset(self.retry, None) {
            log::error!("NIC {}: cannot schedule the restart: {error}", self.name);
        }
    }

    fn reconnect(&mut self) {
        let _ = self.timer.wait();
        match self.connect.connect() {
            Ok(backend) => {
                log::info!("NIC {}: the network backend is back; link up", self.name);
                self.backend = Some(backend);
                self.connected_at = std::time::Instant::now();
                self.retry = (self.retry * 2).min(LAST_RETRY);
                self.link_changed();
                self.receive();
            }
            Err(error) => {
                self.retry = (self.retry * 2).min(LAST_RETRY);
                log::error!(
                    "NIC {}: cannot restart the network backend ({error}); trying again in {} s",
                    self.name,
                    self.retry.as_secs()
                );
                if let Err(error) = self.timer.reset(self.retry, None) {
                    log::error!("NIC {}: cannot schedule the restart: {error}", self.name);
                }
            }
        }
    }

    /// Frames from the backend into the guest's receive buffers, until
    /// either runs out. Frames that arrive before the driver is ready are
    /// dropped, as a NIC that is down drops them.
    fn receive(&mut self) {
        let device = self.device_name();
        let mut used = false;
        loop {
            let frame = match self.pending.take() {
                Some(frame) => frame,
                None => match self.backend.as_mut().map(|backend| backend.recv()) {
                    Some(Ok(Some(frame))) => frame,
                    Some(Ok(None)) | None => break,
                    Some(Err(error)) => {
                        self.lost_backend(&error);
                        break;
                    }
                },
            };
            let Some(queues) = self.active.as_mut() else {
                continue;
            };
            let memory = queues.memory.clone();
            let Some(chain) = queues.rx.pop_descriptor_chain(&*memory) else {
                self.pending = Some(frame);
                break;
            };
            let head = chain.head_index();
            let written = match Writer::new(&*memory, chain) {
                Ok(mut writer) if writer.available_bytes() >= HEADER_BYTES + frame.len() => {
                    let mut header = [0u8; HEADER_BYTES];
                    header[10..].copy_from_slice(&1u16.to_le_bytes()); // num_buffers
                    use std::io::Write;
                    match writer
                        .write_all(&header)
                        .and_then(|()| writer.write_all(&frame))
                    {
                        Ok(()) => (HEADER_BYTES + frame.len()) as u32,
                        Err(error) => {
                            log_bad_request(&mut self.bad_requests, &device, error);
                            0
                        }
                    }
                }
                Ok(writer) => {
                    self.dropped += 1;
                    if self.dropped <= 4 || self.dropped.is_power_of_two() {
                        log::warn!(
                            "NIC {}: dropped a {}-byte frame: the guest's receive buffer holds {} bytes (frames dropped so far: {})",
                            self.name,
                            frame.len(),
                            writer.available_bytes(),
                            self.dropped
                        );
                    }
                    0
                }
                Err(error) => {
                    log_bad_request(&mut self.bad_requests, &device, error);
                    0
                }
            };
            if let Err(error) = queues.rx.add_used(&*memory, head, written) {
                log_bad_request(&mut self.bad_requests, &device, error);
            }
            used = true;
        }
        self.interrupt(RX, used);
    }

    /// Frames the guest sent, to the backend, until the guest has no more
    /// or the backend is backed up. Without a backend (it died), they are
    /// dropped, as on an unplugged cable.
    fn transmit(&mut self) {
        let device = self.device_name();
        let mut used = false;
        let mut failure = None;
        if let Some(queues) = self.active.as_mut() {
            let memory = queues.memory.clone();
            while failure.is_none() && !self.backend.as_ref().is_some_and(|b| b.backed_up()) {
                let Some(chain) = queues.tx.pop_descriptor_chain(&*memory) else {
                    break;
                };
                let head = chain.head_index();
                match read_frame(&memory, chain) {
                    Ok(frame) => {
                        if let Some(backend) = self.backend.as_mut() {
                            failure = backend.send(&frame).err();
                        }
                    }
                    Err(why) => log_bad_request(&mut self.bad_requests, &device, why),
                }
                if let Err(error) = queues.tx.add_used(&*memory, head, 0) {
                    log_bad_request(&mut self.bad_requests, &device, error);
                }
                used = true;
            }
        }
        self.interrupt(TX, used);
        if let Some(error) = failure {
            self.lost_backend(&error);
        }
    }

    fn device_name(&self) -> String {
        format!("virtio-net {}", self.name)
    }

    fn interrupt(&mut self, index: u16, used: bool) {
        let Some(queues) = self.active.as_mut() else {
            return;
        };
        let queue = if index == RX {
            &mut queues.rx
        } else {
            &mut queues.tx
        };
        let wanted = queue.needs_notification(&*queues.memory).unwrap_or(true);
        if used && wanted {
            if let Err(error) = queues.interrupt.trigger(InterruptCause::Queue(index)) {
                log::warn!("NIC {}: cannot interrupt the guest: {error}", self.name);
            }
        }
    }
}

/// One frame the guest sent: the chain's device-readable bytes after the
/// virtio-net header.
fn read_frame(
    memory: &GuestMemoryMmap,
    chain: virtio_queue::DescriptorChain<&GuestMemoryMmap>,
) -> Result<Vec<u8>, String> {
    let mut reader =
        Reader::new(memory, chain).map_err(|error| format!("an unusable chain: {error}"))?;
    let len = reader.available_bytes();
    if len < HEADER_BYTES || len - HEADER_BYTES > MAX_FRAME {
        return Err(format!(
            "a {len}-byte transmit buffer (a {HEADER_BYTES}-byte header and at most {MAX_FRAME} bytes of frame)"
        ));
    }
    let mut bytes = vec![0u8; len];
    std::io::Read::read_exact(&mut reader, &mut bytes)
        .map_err(|error| format!("an unreadable transmit buffer: {error}"))?;
    bytes.drain(..HEADER_BYTES);
    Ok(bytes)
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        device_type::NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        F_MAC | F_STATUS | F_MTU
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.config(), offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {} // the MAC is the definition's

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        let given = activation.queues.len();
        let mut rx = None;
        let mut tx = None;
        for queue in activation.queues {
            match queue.index {
                RX => rx = Some(queue.queue),
                TX => tx = Some(queue.queue),
                _ => {}
            }
        }
        let (Some(rx), Some(tx)) = (rx, tx) else {
            return Err(ActivateError::Queues { given, needed: 2 });
        };
        self.interrupt = Some(activation.interrupt.clone());
        self.active = Some(Queues {
            rx,
            tx,
            memory: activation.memory,
            interrupt: activation.interrupt,
        });
        self.transmit();
        self.receive();
        Ok(())
    }

    fn queue_notified(&mut self, index: u16) {
        match index {
            RX => self.receive(),
            TX => self.transmit(),
            _ => {}
        }
    }

    fn reset(&mut self) {
        self.active = None;
        self.pending = None;
    }

    fn backend_events(&self) -> Vec<BackendEvent> {
        match &self.backend {
            Some(backend) => vec![BackendEvent {
                source: BACKEND,
                fd: backend.fd(),
                // A frame waiting for a receive buffer: read no more until
                // the driver gives buffers (its notification resumes).
                readable: self.pending.is_none(),
                writable: backend.has_unsent(),
            }],
            None => vec![BackendEvent {
                source: RECONNECT_TIMER,
                fd: self.timer.as_raw_fd(),
                readable: true,
                writable: false,
            }],
        }
    }

    fn backend_ready(&mut self, source: u32) {
        match source {
            BACKEND => {
                if let Some(backend) = self.backend.as_mut() {
                    if let Err(error) = backend.flush() {
                        self.lost_backend(&error);
                        return;
                    }
                }
                self.receive();
                self.transmit();
            }
            RECONNECT_TIMER if self.backend.is_none() => self.reconnect(),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests;
