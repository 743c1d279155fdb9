//! The serial console hub: guest output goes into a scrollback buffer and
//! to every attached client; what any client types goes to the guest
//! through the typed-input socket the VMM reads (as fast as the guest
//! takes it). The container's stdout is the VMM's business, not the hub's.
//!
//! Guest output arrives on vCPU threads and only ever appends to bounded
//! buffers, then wakes the control thread, which does all socket I/O
//! without blocking. A client that falls too far behind is detached with a
//! message, so a slow or stuck client never stalls the guest or the others.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

pub const DEFAULT_SCROLLBACK: usize = 64 * 1024;
/// How far one client may fall behind before it is detached, by default.
pub const DEFAULT_CLIENT_BACKLOG: usize = 1024 * 1024;
/// The kernel buffer of each client socket, so the backlog limit bites.
const CLIENT_SOCKET_BUFFER: libc::c_int = 32 * 1024;
/// At most this many clients at once (one thread serves them all).
pub const MAX_CLIENTS: usize = 64;
/// Typed bytes held for a guest that reads slowly; past this, clients are
/// not read until it catches up.
const TYPED_LIMIT: usize = 1024 * 1024;
const DETACH_NOTICE: &[u8] =
    b"\r\n[vmpod: this client fell too far behind the serial console and was detached]\r\n";

struct Client {
    id: u64,
    stream: UnixStream,
    /// Guest output not yet written to this client.
    backlog: VecDeque<u8>,
    lagging: bool,
    /// What epoll reports for this client now.
    interest: EventSet,
}

struct HubState {
    scrollback: VecDeque<u8>,
    scrollback_limit: usize,
    client_backlog_limit: usize,
    clients: Vec<Client>,
    next_id: u64,
}

/// Shared by the UART's output writer (vCPU threads) and the control thread.
pub struct SerialHub {
    state: Mutex<HubState>,
    wake: EventFd,
    wake_pending: AtomicBool,
    ready: Mutex<ReadyPattern>,
    ready_seen: Arc<AtomicBool>,
}

/// The text whose appearance on the console makes the VM ready.
struct ReadyPattern {
    pattern: Vec<u8>,
    /// The last bytes seen, so a pattern split across writes is found.
    recent: Vec<u8>,
}

impl SerialHub {
    /// `ready_pattern`: text that must appear before `/vm/ready` says ready.
    pub fn new(
        scrollback_limit: usize,
        client_backlog_limit: usize,
        ready_pattern: Option<&str>,
    ) -> std::io::Result<Arc<Self>> {
        Ok(Arc::new(SerialHub {
            state: Mutex::new(HubState {
                scrollback: VecDeque::new(),
                scrollback_limit,
                client_backlog_limit,
                clients: Vec::new(),
                next_id: 1,
            }),
            wake: EventFd::new(libc::EFD_NONBLOCK)?,
            wake_pending: AtomicBool::new(false),
            ready: Mutex::new(ReadyPattern {
                pattern: ready_pattern.unwrap_or_default().as_bytes().to_vec(),
                recent: Vec::new(),
            }),
            ready_seen: Arc::new(AtomicBool::new(ready_pattern.is_none_or(str::is_empty))),
        }))
    }

    /// True once the ready pattern appeared (always, without a pattern).
    pub fn ready_seen(&self) -> Arc<AtomicBool> {
        self.ready_seen.clone()
    }

    /// After a guest reset the pattern must appear again.
    pub fn forget_ready_pattern(&self) {
        let mut ready = self
            .ready
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if !ready.pattern.is_empty() {
            ready.recent.clear();
            self.ready_seen.store(false, Ordering::SeqCst);
        }
    }

    fn watch_for_ready_pattern(&self, bytes: &[u8]) {
        if self.ready_seen.load(Ordering::Relaxed) {
            return;
        }
        let mut ready = self
            .ready
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let ReadyPattern { pattern, recent } = &mut *ready;
        recent.extend_from_slice(bytes);
        if recent
            .windows(pattern.len())
            .any(|window| window == pattern.as_slice())
        {
            self.ready_seen.store(true, Ordering::SeqCst);
            log::info!("the ready pattern appeared on the serial console");
        }
        let keep = pattern.len().saturating_sub(1);
        let excess = recent.len().saturating_sub(keep);
        recent.drain(..excess);
    }

    fn state(&self) -> std::sync::MutexGuard<'_, HubState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Guest output: into the scrollback and every client's backlog.
    pub fn guest_output(&self, bytes: &[u8]) {
        self.watch_for_ready_pattern(bytes);
        let mut state = self.state();
        let limit = state.scrollback_limit;
        let backlog_limit = state.client_backlog_limit;
        state.scrollback.extend(bytes);
        let excess = state.scrollback.len().saturating_sub(limit);
        state.scrollback.drain(..excess);
        for client in &mut state.clients {
            if client.backlog.len() + bytes.len() > backlog_limit {
                client.lagging = true;
            } else {
                client.backlog.extend(bytes);
            }
        }
        let has_clients = !state.clients.is_empty();
        drop(state);
        if has_clients && !self.wake_pending.swap(true, Ordering::AcqRel) {
            // Wakes the control thread; a full counter already wakes it.
            let _ = self.wake.write(1);
        }
    }

    /// A new client: it first receives the scrollback.
    fn attach(&self, stream: UnixStream) -> Option<u64> {
        let mut state = self.state();
        if state.clients.len() >= MAX_CLIENTS {
            log::warn!("refused a serial console client: {MAX_CLIENTS} are attached already");
            return None;
        }
        let id = state.next_id;
        state.next_id += 1;
        let backlog = state.scrollback.clone();
        state.clients.push(Client {
            id,
            stream,
            backlog,
            lagging: false,
            interest: EventSet::IN | EventSet::READ_HANG_UP,
        });
        Some(id)
    }

    pub fn client_count(&self) -> usize {
        self.state().clients.len()
    }
}

/// Guest output into the hub (the VMM's console writer calls it on vCPU
/// threads); never blocks.
pub struct HubWriter(pub Arc<SerialHub>);

impl Write for HubWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.guest_output(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Serves the serial socket; driven by the control loop.
pub struct SerialServer {
    hub: Arc<SerialHub>,
    listener: UnixListener,
    epoll: Arc<Epoll>,
    /// Where typed bytes go: the VMM reads the other end.
    typed_sink: UnixStream,
    /// Typed bytes the socket has not taken yet, in the order they came.
    typed: VecDeque<u8>,
    /// Whether epoll reports the typed-input socket writable.
    watching_sink: bool,
}

/// Epoll tokens of the serial server: below [`TOKEN_LIMIT`].
const LISTENER: u64 = 0;
const WAKE: u64 = 1;
const SINK: u64 = 2;
const FIRST_CLIENT: u64 = 3;
pub const TOKEN_LIMIT: u64 = 1 << 32;

impl SerialServer {
    /// Registers the serial socket and the hub's wake-up with `epoll`;
    /// `typed_sink` carries what clients type to the VMM.
    pub fn new(
        hub: Arc<SerialHub>,
        listener: UnixListener,
        typed_sink: UnixStream,
        epoll: Arc<Epoll>,
    ) -> std::io::Result<Self> {
        let readable = |data| EpollEvent::new(EventSet::IN, data);
        epoll.ctl(
            ControlOperation::Add,
            listener.as_raw_fd(),
            readable(LISTENER),
        )?;
        epoll.ctl(ControlOperation::Add, hub.wake.as_raw_fd(), readable(WAKE))?;
        typed_sink.set_nonblocking(true)?;
        Ok(SerialServer {
            hub,
            listener,
            epoll,
            typed_sink,
            typed: VecDeque::new(),
            watching_sink: false,
        })
    }

    /// Handles one epoll event with a serial token.
    pub fn handle(&mut self, token: u64, events: EventSet) {
        match token {
            LISTENER => self.accept_all(),
            WAKE => {
                let _ = self.hub.wake.read();
                self.hub.wake_pending.store(false, Ordering::Release);
            }
            SINK => self.pass_typed_input(),
            id => self.read_client(id - FIRST_CLIENT + 1, events),
        }
    }

    /// After every round of events: pass typed input on, send output.
    pub fn after_events(&mut self) {
        self.pass_typed_input();
        self.flush_clients();
    }

    /// Whether clients' input is read now (not while the guest is behind).
    fn reading_input(&self) -> bool {
        self.typed.len() < TYPED_LIMIT
    }

    fn accept_all(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    limit_send_buffer(&stream);
                    let fd = stream.as_raw_fd();
                    if let Some(id) = self.hub.attach(stream) {
                        let event = EpollEvent::new(
                            EventSet::IN | EventSet::READ_HANG_UP,
                            id + FIRST_CLIENT - 1,
                        );
                        // Interest follows in flush_clients if input is held back.
                        if let Err(error) = self.epoll.ctl(ControlOperation::Add, fd, event) {
                            log::warn!("cannot watch a serial console client: {error}");
                            self.remove(id);
                        } else {
                            log::info!("serial console client {id} attached");
                        }
                    }
                }
                Err(error) if error.kind() == ErrorKind::WouldBlock => return,
                Err(error) => {
                    log::warn!("accepting a serial console client failed: {error}");
                    return;
                }
            }
        }
    }

    /// Reads what a client typed; its bytes go to the guest in order.
    fn read_client(&mut self, id: u64, events: EventSet) {
        let hung_up = events.contains(EventSet::READ_HANG_UP) || events.contains(EventSet::HANG_UP);
        if !hung_up && !self.reading_input() {
            return; // its interest drops IN at the end of this round
        }
        let closed = self.drain_input(id) || hung_up;
        self.pass_typed_input();
        if closed {
            self.remove(id);
        }
    }

    /// Reads everything a client has sent so far; true when it has closed.
    fn drain_input(&mut self, id: u64) -> bool {
        let mut buffer = [0u8; 4096];
        let mut state = self.hub.state();
        let Some(client) = state.clients.iter_mut().find(|c| c.id == id) else {
            return true;
        };
        loop {
            match client.stream.read(&mut buffer) {
                Ok(0) => return true,
                Ok(read) => self.typed.extend(&buffer[..read]),
                Err(error) if error.kind() == ErrorKind::WouldBlock => return false,
                Err(error) if error.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return true,
            }
        }
    }

    /// Writes typed bytes to the VMM's socket as far as it takes them; the
    /// rest waits for the socket to become writable.
    fn pass_typed_input(&mut self) {
        while !self.typed.is_empty() {
            let (front, _) = self.typed.as_slices();
            match self.typed_sink.write(front) {
                Ok(0) => break,
                Ok(written) => {
                    self.typed.drain(..written);
                }
                Err(error) if error.kind() == ErrorKind::Interrupted => continue,
                Err(error) if error.kind() == ErrorKind::WouldBlock => break,
                Err(error) => {
                    log::warn!("typed input cannot reach the VM any more ({error}); dropped");
                    self.typed.clear();
                }
            }
        }
        let waiting = !self.typed.is_empty();
        if waiting != self.watching_sink {
            let fd = self.typed_sink.as_raw_fd();
            let result = if waiting {
                self.epoll.ctl(
                    ControlOperation::Add,
                    fd,
                    EpollEvent::new(EventSet::OUT, SINK),
                )
            } else {
                self.epoll
                    .ctl(ControlOperation::Delete, fd, EpollEvent::default())
            };
            match result {
                Ok(()) => self.watching_sink = waiting,
                Err(error) => log::warn!("cannot wait for the VM to take typed input: {error}"),
            }
        }
    }

    /// Writes backlogs without blocking; detaches clients that lag.
    fn flush_clients(&mut self) {
        let mut gone = Vec::new();
        let reading_input = self.reading_input();
        {
            let mut state = self.hub.state();
            for client in &mut state.clients {
                if client.lagging {
                    let _ = client.stream.write(DETACH_NOTICE);
                    log::info!(
                        "serial console client {} fell behind and was detached",
                        client.id
                    );
                    gone.push(client.id);
                    continue;
                }
                if !write_backlog(client) {
                    gone.push(client.id);
                    continue;
                }
                // Whatever the socket did not take is sent when it can;
                // input waits while the guest is behind on typed bytes.
                let mut interest = EventSet::READ_HANG_UP;
                if reading_input {
                    interest |= EventSet::IN;
                }
                if !client.backlog.is_empty() {
                    interest |= EventSet::OUT;
                }
                if interest != client.interest {
                    let event = EpollEvent::new(interest, client.id + FIRST_CLIENT - 1);
                    if self
                        .epoll
                        .ctl(ControlOperation::Modify, client.stream.as_raw_fd(), event)
                        .is_ok()
                    {
                        client.interest = interest;
                    }
                }
            }
        }
        for id in gone {
            self.remove(id);
        }
    }

    /// Detaches a client, after taking what it typed before it went (a
    /// client may send and close before it was ever read).
    fn remove(&mut self, id: u64) {
        self.drain_input(id);
        self.pass_typed_input();
        let mut state = self.hub.state();
        if let Some(index) = state.clients.iter().position(|c| c.id == id) {
            let client = state.clients.remove(index);
            let fd: RawFd = client.stream.as_raw_fd();
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default());
            log::info!("serial console client {id} detached");
        }
    }
}

/// Caps the kernel's buffer for one client; the backlog is ours to bound.
fn limit_send_buffer(stream: &UnixStream) {
    let size = CLIENT_SOCKET_BUFFER;
    // SAFETY: SO_SNDBUF takes a c_int; `size` lives for the call.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            std::ptr::addr_of!(size).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Writes as much of the backlog as the socket takes; false when the
/// client is gone.
fn write_backlog(client: &mut Client) -> bool {
    while !client.backlog.is_empty() {
        let (front, _) = client.backlog.as_slices();
        match client.stream.write(front) {
            Ok(0) => return false,
            Ok(written) => {
                client.backlog.drain(..written);
            }
            // Full socket buffer: the rest waits for the next wake-up.
            Err(error) if error.kind() == ErrorKind::WouldBlock => return true,
            Err(error) if error.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ready_pattern_is_found_across_writes_and_forgotten_on_reset() {
        let hub = SerialHub::new(64, 1024, Some("login:")).expect("hub");
        let seen = hub.ready_seen();
        hub.guest_output(b"Debian GNU/Linux\nvm lo");
        assert!(!seen.load(Ordering::SeqCst));
        hub.guest_output(b"gin: ");
        assert!(seen.load(Ordering::SeqCst));
        hub.forget_ready_pattern();
        assert!(!seen.load(Ordering::SeqCst));
        let without = SerialHub::new(64, 1024, None).expect("hub");
        assert!(without.ready_seen().load(Ordering::SeqCst));
    }

    #[test]
    fn scrollback_keeps_the_newest_bytes() {
        let hub = SerialHub::new(8, DEFAULT_CLIENT_BACKLOG, None).expect("hub");
        hub.guest_output(b"0123456789");
        hub.guest_output(b"ab");
        let state = hub.state();
        assert_eq!(
            state.scrollback.iter().copied().collect::<Vec<u8>>(),
            b"456789ab"
        );
    }

    #[test]
    fn a_new_client_starts_with_the_scrollback_and_then_gets_live_output() {
        let hub = SerialHub::new(DEFAULT_SCROLLBACK, DEFAULT_CLIENT_BACKLOG, None).expect("hub");
        hub.guest_output(b"boot log\n");
        let (ours, _theirs) = UnixStream::pair().expect("pair");
        let id = hub.attach(ours).expect("attached");
        hub.guest_output(b"login: ");
        let state = hub.state();
        let client = state.clients.iter().find(|c| c.id == id).expect("client");
        assert_eq!(
            client.backlog.iter().copied().collect::<Vec<u8>>(),
            b"boot log\nlogin: "
        );
    }

    #[test]
    fn a_client_that_falls_behind_is_marked_but_the_others_are_not() {
        let hub = SerialHub::new(16, 1024, None).expect("hub");
        let (slow, _slow_peer) = UnixStream::pair().expect("pair");
        let (fast, _fast_peer) = UnixStream::pair().expect("pair");
        let slow_id = hub.attach(slow).expect("attached");
        hub.attach(fast).expect("attached");
        hub.guest_output(&[b'x'; 1024]);
        hub.state()
            .clients
            .iter_mut()
            .filter(|c| c.id != slow_id)
            .for_each(|c| c.backlog.clear());
        hub.guest_output(b"more");
        let state = hub.state();
        let lagging: Vec<bool> = state.clients.iter().map(|c| c.lagging).collect();
        assert_eq!(lagging, [true, false]);
    }
}
