//! The VNC server on `vnc.sock`: RFB sessions (see [`session`]) on the
//! control thread's epoll, no thread per viewer. While any viewer waits
//! for an update, a timer looks at the framebuffer every
//! [`FRAME_INTERVAL`]; an idle screen sends nothing. A viewer with more
//! than [`BACKLOG`] unsent gets no new update until it has read, and then
//! the latest screen (updates coalesce, the queue stays bounded); one that
//! reads nothing for [`STALL_LIMIT`], or breaks the protocol, is closed
//! with a log line. Control thread.

pub mod encode;
pub mod rfb;
pub mod session;
#[cfg(test)]
mod test_viewer;
#[cfg(test)]
mod tests;

use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::timerfd::TimerFd;

use crate::api::display::Framebuffer;
use crate::api::CommandSender;

use super::outbox::{self, Outbox};
use encode::Frame;
use session::Session;

/// How often the screen is looked at while a viewer waits (25 per second).
pub const FRAME_INTERVAL: Duration = Duration::from_millis(40);
/// Unsent bytes above which a viewer gets no new update.
pub const BACKLOG: usize = 1 << 20;
/// How long a viewer may leave its socket full before it is closed.
pub const STALL_LIMIT: Duration = Duration::from_secs(30);
/// At most this many viewers at once.
pub const MAX_VIEWERS: usize = 16;

/// Epoll tokens: the listener, the frame timer, then one per viewer.
pub const LISTENER: u64 = 1 << 48;
pub const TIMER: u64 = LISTENER + 1;
const FIRST_VIEWER: u64 = LISTENER + 2;

struct Viewer {
    token: u64,
    outbox: Outbox,
    session: Session,
    /// Since when its socket has refused bytes.
    stalled_since: Option<Instant>,
}

pub struct VncServer {
    listener: UnixListener,
    timer: TimerFd,
    timer_armed: bool,
    framebuffer: Arc<Framebuffer>,
    name: String,
    viewers: Vec<Viewer>,
    next_token: u64,
    /// The screen as last looked at.
    frame: Vec<u32>,
}

/// The frame timer, whose read never blocks: a viewer served earlier in
/// the same batch of events may have disarmed it after epoll saw it
/// expire, and a blocking read of a disarmed timer would stop the whole
/// control thread (console, QMP, every viewer) for good.
fn frame_timer() -> std::io::Result<TimerFd> {
    let timer = TimerFd::new()?;
    // SAFETY: F_SETFL changes only the flags of the timer's own descriptor.
    if unsafe { libc::fcntl(timer.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(timer)
}

impl VncServer {
    pub fn new(
        listener: UnixListener,
        framebuffer: Arc<Framebuffer>,
        name: &str,
    ) -> std::io::Result<Self> {
        listener.set_nonblocking(true)?;
        Ok(VncServer {
            listener,
            timer: frame_timer()?,
            timer_armed: false,
            framebuffer,
            name: name.to_owned(),
            viewers: Vec::new(),
            next_token: FIRST_VIEWER,
            frame: Vec::new(),
        })
    }

    pub fn register(&self, epoll: &Epoll) -> std::io::Result<()> {
        for (fd, token) in [
            (self.listener.as_raw_fd(), LISTENER),
            (self.timer.as_raw_fd(), TIMER),
        ] {
            epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )?;
        }
        Ok(())
    }

    /// Whether `token` is one of the VNC server's.
    pub fn owns(token: u64) -> bool {
        token >= LISTENER
    }

    pub fn handle(&mut self, token: u64, epoll: &Epoll, commands: &CommandSender) {
        match token {
            LISTENER => self.accept(epoll),
            TIMER => {
                let _ = self.timer.wait();
                self.look(epoll);
            }
            token => self.serve(token, epoll, commands),
        }
        self.arm_timer();
    }

    fn accept(&mut self, epoll: &Epoll) {
        loop {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(error) if error.kind() == ErrorKind::WouldBlock => return,
                Err(error) => {
                    log::warn!("VNC: accepting a viewer failed: {error}");
                    return;
                }
            };
            if self.viewers.len() >= MAX_VIEWERS {
                log::warn!("VNC: refused a viewer: {MAX_VIEWERS} are connected already");
                continue;
            }
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let token = self.next_token;
            self.next_token += 1;
            let interest = EpollEvent::new(EventSet::IN | EventSet::READ_HANG_UP, token);
            if epoll
                .ctl(ControlOperation::Add, stream.as_raw_fd(), interest)
                .is_err()
            {
                continue;
            }
            let size = self.framebuffer.size();
            let mut greeting = Vec::new();
            let session = Session::new(
                size.width as usize,
                size.height as usize,
                &self.name,
                &mut greeting,
            );
            let mut outbox = Outbox::new(stream, usize::MAX);
            outbox.queue(&greeting);
            log::info!("VNC: a viewer connected ({} now)", self.viewers.len() + 1);
            self.viewers.push(Viewer {
                token,
                outbox,
                session,
                stalled_since: None,
            });
            self.flush(token, epoll);
        }
    }

    fn serve(&mut self, token: u64, epoll: &Epoll, commands: &CommandSender) {
        let Some(viewer) = self.viewers.iter_mut().find(|v| v.token == token) else {
            return;
        };
        // Only a request that arrives now is answered now; one that was
        // already waiting is the timer's (a viewer moving its pointer must
        // not make every event a look at the whole screen).
        let waited = viewer.session.wants_update();
        let mut buffer = [0u8; 16384];
        let mut budget = outbox::READ_BUDGET;
        let mut ended = None;
        let mut said = Vec::new();
        let mut asked = Vec::new();
        while budget > 0 {
            match std::io::Read::read(&mut viewer.outbox.stream, &mut buffer) {
                Ok(0) => {
                    ended = Some(("it disconnected".to_owned(), true));
                    break;
                }
                Ok(read) => {
                    budget = budget.saturating_sub(read);
                    if let Err(refusal) =
                        viewer
                            .session
                            .receive(&buffer[..read], &mut said, &mut asked)
                    {
                        ended = Some((refusal, false));
                        break;
                    }
                }
                Err(error) if error.kind() == ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == ErrorKind::Interrupted => continue,
                Err(error) => {
                    ended = Some((format!("its connection failed: {error}"), false));
                    break;
                }
            }
        }
        viewer.outbox.queue(&said);
        for command in asked {
            commands.send(command);
        }
        if let Some((why, polite)) = ended {
            self.close(token, epoll, &why, polite);
            return;
        }
        if !waited && viewer_wants(viewer) {
            self.framebuffer.snapshot(&mut self.frame);
            self.answer(token);
        }
        self.flush(token, epoll);
    }

    /// Looks at the screen and answers every viewer that waits for it.
    fn look(&mut self, epoll: &Epoll) {
        if self.viewers.iter().any(viewer_wants) {
            self.framebuffer.snapshot(&mut self.frame);
        }
        let tokens: Vec<u64> = self.viewers.iter().map(|v| v.token).collect();
        for token in tokens {
            self.answer(token);
            self.flush(token, epoll);
        }
    }

    /// Sends the viewer an update from the last look, if it waits for
    /// one and has read what it was sent before.
    fn answer(&mut self, token: u64) {
        let size = self.framebuffer.size();
        let Some(viewer) = self.viewers.iter_mut().find(|v| v.token == token) else {
            return;
        };
        if !viewer_wants(viewer) || self.frame.len() != size.pixels() {
            return;
        }
        let frame = Frame {
            pixels: &self.frame,
            width: size.width as usize,
            height: size.height as usize,
        };
        let mut update = Vec::new();
        if viewer.session.update(frame, &mut update) {
            viewer.outbox.queue(&update);
        }
    }

    /// Writes what the viewer's socket takes; closes a viewer that is
    /// gone or has not read for [`STALL_LIMIT`].
    fn flush(&mut self, token: u64, epoll: &Epoll) {
        let Some(viewer) = self.viewers.iter_mut().find(|v| v.token == token) else {
            return;
        };
        let before = viewer.outbox.pending();
        if !viewer.outbox.flush() {
            self.close(token, epoll, "its connection closed", true);
            return;
        }
        let after = viewer.outbox.pending();
        let stalled = after > 0 && after == before;
        match (stalled, viewer.stalled_since) {
            (false, _) => viewer.stalled_since = None,
            (true, None) => viewer.stalled_since = Some(Instant::now()),
            (true, Some(since)) if since.elapsed() > STALL_LIMIT => {
                let why = format!(
                    "it read nothing for {} s with {after} bytes waiting",
                    STALL_LIMIT.as_secs()
                );
                self.close(token, epoll, &why, false);
                return;
            }
            (true, Some(_)) => {}
        }
        let mut interest = EventSet::IN | EventSet::READ_HANG_UP;
        if after > 0 {
            interest |= EventSet::OUT;
        }
        let fd = viewer.outbox.stream.as_raw_fd();
        let _ = epoll.ctl(
            ControlOperation::Modify,
            fd,
            EpollEvent::new(interest, token),
        );
    }

    fn close(&mut self, token: u64, epoll: &Epoll, why: &str, polite: bool) {
        let Some(index) = self.viewers.iter().position(|v| v.token == token) else {
            return;
        };
        let viewer = self.viewers.remove(index);
        let fd = viewer.outbox.stream.as_raw_fd();
        let _ = epoll.ctl(ControlOperation::Delete, fd, EpollEvent::default());
        if polite {
            log::info!("VNC: a viewer left ({why}); {} remain", self.viewers.len());
        } else {
            log::warn!("VNC: closed a viewer: {why}; {} remain", self.viewers.len());
        }
    }

    /// Runs the frame timer while a viewer waits or a socket is stalled.
    fn arm_timer(&mut self) {
        let needed = self
            .viewers
            .iter()
            .any(|v| v.session.wants_update() || v.outbox.pending() > 0);
        if needed != self.timer_armed {
            let result = if needed {
                self.timer.reset(FRAME_INTERVAL, Some(FRAME_INTERVAL))
            } else {
                self.timer.clear()
            };
            if let Err(error) = result {
                log::warn!("VNC: cannot set the frame timer: {error}");
            }
            self.timer_armed = needed;
        }
    }
}

/// Whether the viewer waits for an update and may be sent one now.
fn viewer_wants(viewer: &Viewer) -> bool {
    viewer.session.wants_update() && viewer.outbox.pending() <= BACKLOG
}
