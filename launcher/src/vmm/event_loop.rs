//! The VMM thread's one event loop (epoll): the command channel, and the
//! descriptors of every [`EventHandler`] — the console (stdin, stdout, the
//! control plane's typed input, the UART asking for more), the termination
//! signals and their deadline, and device backends and ioeventfds as
//! devices gain them. Nothing here polls or sleeps: the loop blocks in
//! `epoll_wait` until a descriptor is ready.
//!
//! VMM thread only.

use std::collections::VecDeque;
use std::io::ErrorKind;
use std::os::fd::RawFd;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use crate::api::Command;

/// Something with descriptors the VMM thread waits on.
pub trait EventHandler {
    /// Adds this handler's descriptors, each with a number of its choosing.
    fn register(&mut self, events: &Registrar<'_>) -> std::io::Result<()>;
    /// The descriptor registered as `source` is ready; the handler may ask
    /// the VMM for something in return.
    fn handle(&mut self, source: u32, ready: EventSet, events: &Registrar<'_>) -> Option<Command>;
}

/// One handler's view of the epoll: it changes only its own descriptors.
pub struct Registrar<'a> {
    epoll: &'a Epoll,
    handler: u32,
}

impl Registrar<'_> {
    fn token(&self, source: u32) -> u64 {
        (u64::from(self.handler) << 32) | u64::from(source)
    }

    pub fn add(&self, fd: RawFd, source: u32, interest: EventSet) -> std::io::Result<()> {
        let event = EpollEvent::new(interest, self.token(source));
        self.epoll.ctl(ControlOperation::Add, fd, event)
    }

    pub fn modify(&self, fd: RawFd, source: u32, interest: EventSet) -> std::io::Result<()> {
        let event = EpollEvent::new(interest, self.token(source));
        self.epoll.ctl(ControlOperation::Modify, fd, event)
    }

    pub fn remove(&self, fd: RawFd) {
        // A descriptor that was never added, or is closed, is not watched anyway.
        let _ = self
            .epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default());
    }
}

/// The handler number of the VMM's own descriptors (the command channel).
const CORE: u32 = u32::MAX;
const MAX_EVENTS: usize = 64;

pub struct EventLoop {
    epoll: Epoll,
    handlers: Vec<Box<dyn EventHandler>>,
}

impl EventLoop {
    pub fn new() -> std::io::Result<Self> {
        Ok(EventLoop {
            epoll: Epoll::new()?,
            handlers: Vec::new(),
        })
    }

    pub fn add_handler(&mut self, mut handler: Box<dyn EventHandler>) -> std::io::Result<()> {
        let registrar = Registrar {
            epoll: &self.epoll,
            handler: self.handlers.len() as u32,
        };
        handler.register(&registrar)?;
        self.handlers.push(handler);
        Ok(())
    }

    /// Watches one of the VMM's own descriptors; `wait` reports it as `source`.
    pub fn watch(&self, fd: RawFd, source: u32) -> std::io::Result<()> {
        let registrar = Registrar {
            epoll: &self.epoll,
            handler: CORE,
        };
        registrar.add(fd, source, EventSet::IN)
    }

    /// Blocks until something is ready, runs the handlers of what is, and
    /// queues what they ask for in `commands`; returns the VMM's own
    /// sources that are ready.
    pub fn wait(&mut self, commands: &mut VecDeque<Command>) -> std::io::Result<Vec<u32>> {
        let mut ready = [EpollEvent::default(); MAX_EVENTS];
        let count = loop {
            match self.epoll.wait(-1, &mut ready) {
                Ok(count) => break count,
                Err(error) if error.kind() == ErrorKind::Interrupted => continue,
                Err(error) => return Err(error),
            }
        };
        let mut core = Vec::new();
        for event in &ready[..count] {
            let handler = (event.data() >> 32) as u32;
            let source = event.data() as u32;
            if handler == CORE {
                core.push(source);
                continue;
            }
            let Some(owner) = self.handlers.get_mut(handler as usize) else {
                continue;
            };
            let registrar = Registrar {
                epoll: &self.epoll,
                handler,
            };
            if let Some(command) = owner.handle(source, event.event_set(), &registrar) {
                commands.push_back(command);
            }
        }
        Ok(core)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use vmm_sys_util::eventfd::EventFd;

    /// Turns each wake-up of its eventfd into a Powerdown command.
    struct Button(EventFd);

    impl EventHandler for Button {
        fn register(&mut self, events: &Registrar<'_>) -> std::io::Result<()> {
            events.add(self.0.as_raw_fd(), 7, EventSet::IN)
        }

        fn handle(&mut self, source: u32, _: EventSet, _: &Registrar<'_>) -> Option<Command> {
            assert_eq!(source, 7);
            self.0.read().ok().map(|_| Command::Powerdown)
        }
    }

    #[test]
    fn handlers_and_core_sources_are_told_apart() {
        let mut events = EventLoop::new().expect("epoll");
        let button = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        events
            .add_handler(Box::new(Button(button.try_clone().expect("clone"))))
            .expect("register");
        let core = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        events.watch(core.as_raw_fd(), 3).expect("watch");

        button.write(1).expect("press");
        let mut commands = VecDeque::new();
        assert!(events.wait(&mut commands).expect("wait").is_empty());
        assert!(matches!(commands.pop_front(), Some(Command::Powerdown)));

        core.write(1).expect("wake");
        assert_eq!(events.wait(&mut commands).expect("wait"), [3]);
        assert!(commands.is_empty());
    }
}
