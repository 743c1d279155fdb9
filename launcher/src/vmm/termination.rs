//! Pod deletion, as a VM should feel it: the first SIGTERM (or SIGINT)
//! presses the ACPI power button and gives the guest the pod's grace period
//! (less a margin, so vmpod still exits cleanly before the kubelet kills
//! it) to power off. A second signal, or the end of that time, stops the VM.
//!
//! Runs on the `signals` thread; reaches the VM through the request channel.

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;

use crate::devices::{RequestSender, VmRequest};
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

pub struct TerminationWatcher {
    stop: EventFd,
    thread: JoinHandle<()>,
}

impl TerminationWatcher {
    pub fn start(
        signals: SignalFd,
        requests: RequestSender,
        grace_seconds: u64,
    ) -> std::io::Result<Self> {
        let stop = EventFd::new(libc::EFD_NONBLOCK)?;
        let thread_stop = stop.try_clone()?;
        let thread = std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                watch(
                    &signals,
                    &thread_stop,
                    &requests,
                    guest_deadline(grace_seconds),
                )
            })?;
        Ok(TerminationWatcher { stop, thread })
    }

    pub fn stop(self) {
        let _ = self.stop.write(1);
        if self.thread.join().is_err() {
            log::error!("the signals thread panicked");
        }
    }
}

fn watch(signals: &SignalFd, stop: &EventFd, requests: &RequestSender, allowed: Duration) {
    let mut first: Option<(u32, Instant)> = None;
    loop {
        let timeout = first.map_or(-1, |(_, pressed)| {
            allowed
                .saturating_sub(pressed.elapsed())
                .as_millis()
                .min(i32::MAX as u128) as i32
        });
        let mut fds = [
            libc::pollfd {
                fd: signals.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: std::os::fd::AsRawFd::as_raw_fd(stop),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` holds two valid pollfd entries for the call.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if fds[1].revents != 0 {
            return;
        }
        if ready == 0 {
            if let Some((signal, _)) = first {
                log::warn!(
                    "the guest did not power off within {} s of the power button: stopping it",
                    allowed.as_secs()
                );
                let _ = requests.send(VmRequest::ForcedStop(signal));
            }
            return;
        }
        let Some(signal) = signals.read() else {
            continue;
        };
        match first {
            None => {
                log::info!(
                    "{}: pressing the ACPI power button; the guest has {} s to power off",
                    signal_name(signal),
                    allowed.as_secs()
                );
                let _ = requests.send(VmRequest::Powerdown);
                first = Some((signal, Instant::now()));
            }
            Some((first_signal, _)) => {
                log::warn!("a second {}: stopping the VM now", signal_name(signal));
                let _ = requests.send(VmRequest::ForcedStop(first_signal));
                return;
            }
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
}
