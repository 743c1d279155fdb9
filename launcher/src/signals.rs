//! Signals as file descriptors: the chosen signals are blocked in the
//! calling thread (and every thread it starts afterwards) and read through a
//! signalfd, so they arrive as events in a poll loop instead of
//! interrupting whatever happens to run.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

pub struct SignalFd {
    fd: OwnedFd,
}

impl SignalFd {
    /// Blocks `signals` in this thread and returns a descriptor to read them.
    pub fn take(signals: &[libc::c_int]) -> std::io::Result<Self> {
        // SAFETY: an empty sigset is filled by sigemptyset before use.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // Blocking the signals only makes them readable through the signalfd.
        // SAFETY: `set` is a valid sigset for these calls.
        let fd = unsafe {
            libc::sigemptyset(&mut set);
            for signal in signals {
                libc::sigaddset(&mut set, *signal);
            }
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK)
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(SignalFd { fd })
    }

    pub fn as_raw_fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    /// The next pending signal's number, if one is pending.
    pub fn read(&self) -> Option<u32> {
        // SAFETY: signalfd_siginfo is plain data; all-zero is valid.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: reads at most `size` bytes into `info`.
        let read = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                std::ptr::addr_of_mut!(info).cast(),
                size,
            )
        };
        (read == size as isize).then_some(info.ssi_signo)
    }
}
