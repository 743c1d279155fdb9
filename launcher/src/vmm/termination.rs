//! Pod deletion, as a VM should feel it: the first SIGTERM (or SIGINT)
//! presses the ACPI power button and gives the guest the pod's grace period
//! (less a margin, so vmpod still exits cleanly before the kubelet kills
//! it) to power off. A second signal, or the end of that time, stops the VM.
//!
//! An event handler on the VMM thread's loop: the signals arrive through a
//! signalfd, the deadline through a timerfd. Nothing sleeps or polls.

use std::os::fd::AsRawFd;
use std::time::Duration;

use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::timerfd::TimerFd;

use super::event_loop::{EventHandler, Registrar};
use crate::api::Command;
use crate::signals::SignalFd;

/// The signals that ask vmpod to end the VM.
pub const TERMINATION_SIGNALS: [libc::c_int; 2] = [libc::SIGTERM, libc::SIGINT];

/// Time the guest gets after the power button: the grace period less a
/// tenth of it (at least 1 s, at most 10 s) for vmpod's own exit.
pub fn guest_deadline(grace_seconds: u64) -> Duration {
    let margin = (grace_seconds / 10).clamp(1, 10);
    Duration::from_secs(grace_seconds.saturating_sub(margin).max(1))
}

pub fn signal_name(signal: u32) -> &'static str {
    match signal as libc::c_int {
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        _ => "a signal",
    }
}

const SIGNAL: u32 = 0;
const DEADLINE: u32 = 1;

pub struct Termination {
    signals: SignalFd,
    deadline: TimerFd,
    allowed: Duration,
    /// The first signal, once one came.
    first: Option<u32>,
}

impl Termination {
    pub fn new(signals: SignalFd, grace_seconds: u64) -> std::io::Result<Self> {
        Ok(Termination {
            signals,
            deadline: TimerFd::new().map_err(std::io::Error::from)?,
            allowed: guest_deadline(grace_seconds),
            first: None,
        })
    }

    /// What a signal means now: the power button the first time, a stop
    /// the second.
    fn on_signal(&mut self, signal: u32) -> Command {
        match self.first {
            None => {
                log::info!(
                    "{}: pressing the ACPI power button; the guest has {} s to power off",
                    signal_name(signal),
                    self.allowed.as_secs()
                );
                self.first = Some(signal);
                if let Err(error) = self.deadline.reset(self.allowed, None) {
                    log::error!("cannot set the power-off deadline ({error}): stopping the VM now");
                    return Command::ForcedStop(signal);
                }
                Command::Powerdown
            }
            Some(first) => {
                log::warn!("a second {}: stopping the VM now", signal_name(signal));
                Command::ForcedStop(first)
            }
        }
    }
}

impl EventHandler for Termination {
    fn register(&mut self, events: &Registrar<'_>) -> std::io::Result<()> {
        events.add(self.signals.as_raw_fd(), SIGNAL, EventSet::IN)?;
        events.add(self.deadline.as_raw_fd(), DEADLINE, EventSet::IN)
    }

    fn handle(&mut self, source: u32, _: EventSet, _: &Registrar<'_>) -> Option<Command> {
        match source {
            SIGNAL => self.signals.read().map(|signal| self.on_signal(signal)),
            DEADLINE => {
                let _ = self.deadline.wait();
                let signal = self.first?;
                log::warn!(
                    "the guest did not power off within {} s of the power button: stopping it",
                    self.allowed.as_secs()
                );
                Some(Command::ForcedStop(signal))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guest_gets_the_grace_period_less_a_margin() {
        assert_eq!(guest_deadline(180), Duration::from_secs(170));
        assert_eq!(guest_deadline(30), Duration::from_secs(27));
        assert_eq!(guest_deadline(3), Duration::from_secs(2));
        assert_eq!(guest_deadline(0), Duration::from_secs(1));
    }

    #[test]
    fn the_first_signal_presses_the_button_and_the_second_stops() {
        // SIGUSR2 is never sent to the test process; only its number matters here.
        let signals = SignalFd::take(&[libc::SIGUSR2]).expect("signalfd");
        let mut termination = Termination::new(signals, 30).expect("timerfd");
        assert!(matches!(
            termination.on_signal(libc::SIGTERM as u32),
            Command::Powerdown
        ));
        assert!(termination.deadline.is_armed().expect("armed"));
        assert!(matches!(
            termination.on_signal(libc::SIGINT as u32),
            Command::ForcedStop(signal) if signal == libc::SIGTERM as u32
        ));
    }
}
