//! The definition's NICs as backends: passt (the default binding: user-mode
//! networking, no NET_ADMIN needed), started by vmpod as a child per NIC
//! over a socketpair it hands to passt with `--fd`, and restarted by the
//! device when it dies; or a tap device (the `bridge` binding, for pods
//! with NET_ADMIN), which the pod's own set-up bridges to its interface.
//!
//! VMM thread: started before the first boot, restarted from the event loop.

use std::ffi::OsString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::devices::virtio::net::backend::{NetBackend, StreamBackend, TapBackend};
use crate::devices::virtio::net::Connect;
use crate::spec::config::{Nic, NicBinding, Protocol};

/// The MTU the guest is offered (by passt's DHCP and the device's config):
/// what a guest without mergeable receive buffers can take in one buffer.
pub const MTU: u16 = 1500;
/// Overrides where passt is looked for (else `passt` on PATH).
pub const PASST_ENV: &str = "VMPOD_PASST";

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("NIC {nic}: passt is not installed (looked for {looked}); install Debian's passt package, or set {PASST_ENV} to its path")]
    NoPasst { nic: String, looked: String },
    #[error("NIC {nic}: cannot start {}: {source}", passt.display())]
    Start {
        nic: String,
        passt: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("NIC {nic}: the MAC address {mac} is not six colon-separated hex bytes")]
    Mac { nic: String, mac: String },
    #[error("NIC {nic}: cannot open the tap device {tap}: {source}; the bridge binding needs NET_ADMIN in the pod (or use the default passt binding)")]
    Tap {
        nic: String,
        tap: String,
        #[source]
        source: std::io::Error,
    },
}

/// `02:00:00:aa:bb:cc` as bytes.
pub fn parse_mac(nic: &str, mac: &str) -> Result<[u8; 6], NetworkError> {
    let bad = || NetworkError::Mac {
        nic: nic.to_owned(),
        mac: mac.to_owned(),
    };
    let mut bytes = [0u8; 6];
    let mut parts = mac.split(':');
    for byte in &mut bytes {
        let part = parts.next().ok_or_else(bad)?;
        if part.len() != 2 {
            return Err(bad());
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    Ok(bytes)
}

/// A NIC's first backend, and what remakes it when it dies.
pub struct Started {
    pub backend: Box<dyn NetBackend>,
    pub connect: Box<dyn Connect>,
}

/// Starts the backend of `nic`.
pub fn start(nic: &Nic, forwards_all: bool) -> Result<Started, NetworkError> {
    match nic.binding {
        NicBinding::Passt => {
            let mut passt = Passt::new(nic, forwards_all)?;
            let backend = passt.spawn().map_err(|source| NetworkError::Start {
                nic: nic.name.clone(),
                passt: passt.binary.clone(),
                source,
            })?;
            Ok(Started {
                backend,
                connect: Box::new(passt),
            })
        }
        NicBinding::Bridge => {
            let name = tap_name(&nic.name);
            let mut tap = Tap { name: name.clone() };
            let backend = tap.connect().map_err(|source| NetworkError::Tap {
                nic: nic.name.clone(),
                tap: name,
                source,
            })?;
            Ok(Started {
                backend,
                connect: Box::new(tap),
            })
        }
    }
}

/// One passt process per NIC, a child of vmpod.
struct Passt {
    nic: String,
    binary: PathBuf,
    arguments: Vec<OsString>,
    child: Option<Child>,
}

fn find_passt() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(PASST_ENV) {
        return Some(PathBuf::from(path)).filter(|path| path.is_file());
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|dir| dir.join("passt"))
        .find(|candidate| candidate.is_file())
}

/// passt's `-t`/`-u` argument for one protocol: the listed ports, all
/// ports when the NIC lists none (and it is the one that forwards all),
/// or `none`.
fn port_spec(nic: &Nic, protocol: Protocol, forwards_all: bool) -> String {
    if nic.ports.is_empty() {
        return if forwards_all { "all" } else { "none" }.into();
    }
    let ports: Vec<String> = nic
        .ports
        .iter()
        .filter(|port| port.protocol == protocol)
        .map(|port| port.port.to_string())
        .collect();
    if ports.is_empty() {
        "none".into()
    } else {
        ports.join(",")
    }
}

impl Passt {
    fn new(nic: &Nic, forwards_all: bool) -> Result<Self, NetworkError> {
        let forwards_all =
            forwards_all && nic.ports.is_empty() && can_forward_all(&nic.name, raise_file_limit());
        let binary = find_passt().ok_or_else(|| NetworkError::NoPasst {
            nic: nic.name.clone(),
            looked: match std::env::var_os(PASST_ENV) {
                Some(path) => format!("{PASST_ENV}={}", Path::new(&path).display()),
                None => "passt on PATH".into(),
            },
        })?;
        let arguments = [
            "--foreground",
            "--quiet",
            "--one-off",
            "--mtu",
            &MTU.to_string(),
            "--tcp-ports",
            &port_spec(nic, Protocol::Tcp, forwards_all),
            "--udp-ports",
            &port_spec(nic, Protocol::Udp, forwards_all),
            "--fd",
            "3",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        Ok(Passt {
            nic: nic.name.clone(),
            binary,
            arguments,
            child: None,
        })
    }

    /// Stops the old passt (its ports must be free) and starts a new one
    /// on a fresh socketpair.
    fn spawn(&mut self) -> std::io::Result<Box<dyn NetBackend>> {
        self.stop();
        let (ours, theirs) = UnixStream::pair()?;
        let theirs = OwnedFd::from(theirs);
        let theirs_fd = theirs.as_raw_fd();
        let mut command = Command::new(&self.binary);
        command
            .args(&self.arguments)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // Between fork and exec: dup2 puts passt's end at descriptor 3
        // without close-on-exec (fcntl clears it when it is there already),
        // prctl makes passt die with vmpod.
        // SAFETY: the closure makes only async-signal-safe calls.
        unsafe {
            command.pre_exec(move || {
                let placed = if theirs_fd == 3 {
                    libc::fcntl(3, libc::F_SETFD, 0)
                } else {
                    libc::dup2(theirs_fd, 3)
                };
                if placed < 0 || libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command.spawn()?;
        drop(theirs);
        if let Some(stderr) = child.stderr.take() {
            relay_log(&self.nic, stderr);
        }
        log::info!(
            "NIC {}: passt started (pid {}): {} {}",
            self.nic,
            child.id(),
            self.binary.display(),
            self.arguments
                .iter()
                .map(|argument| argument.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" ")
        );
        self.child = Some(child);
        Ok(Box::new(StreamBackend::new(ours)?))
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            match child.wait() {
                Ok(status) => log::debug!("NIC {}: passt ended: {status}", self.nic),
                Err(error) => log::warn!("NIC {}: cannot reap passt: {error}", self.nic),
            }
        }
    }
}

/// Forwarding every port takes passt a socket per port and protocol
/// (about 37,000 each outside the ephemeral range): this many descriptors.
const ALL_PORTS_FILES: u64 = 80_000;

/// The open-file limit vmpod (and so passt) runs with, raised first as far
/// as it may be: to the hard limit, and past it where vmpod may (root).
fn raise_file_limit() -> u64 {
    const WANTED: libc::rlim_t = 1 << 18;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write `limit`.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        let raised = libc::rlimit {
            rlim_cur: WANTED.max(limit.rlim_max),
            rlim_max: WANTED.max(limit.rlim_max),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
            return raised.rlim_cur;
        }
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
            return limit.rlim_cur;
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur
    }
}

/// Whether a NIC that lists no ports can have them all, given the
/// open-file limit; says what to do when it cannot.
fn can_forward_all(nic: &str, file_limit: u64) -> bool {
    if file_limit >= ALL_PORTS_FILES {
        return true;
    }
    log::warn!(
        "NIC {nic}: the pod's open-file limit ({file_limit}) is too low for passt to forward every port (it needs about {ALL_PORTS_FILES}), so none are forwarded: list the guest's ports in interfaces[].ports, or raise the limit"
    );
    false
}

/// passt's messages into vmpod's log, under the NIC's name (without its
/// complaints that the pod has no syslog). One small thread per passt:
/// it only ever blocks on that pipe.
fn relay_log(nic: &str, stderr: std::process::ChildStderr) {
    let name = nic.to_owned();
    let relay = std::thread::Builder::new()
        .name(format!("passt-log-{nic}"))
        .spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if !line.contains("to syslog") {
                    log::warn!("NIC {name}: passt: {line}");
                }
            }
        });
    if let Err(error) = relay {
        log::warn!("NIC {nic}: passt's messages are lost: {error}");
    }
}

impl Connect for Passt {
    fn connect(&mut self) -> std::io::Result<Box<dyn NetBackend>> {
        self.spawn()
    }
}

impl Drop for Passt {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The tap device of a bridge-bound NIC: `tap-NAME`, cut to the kernel's
/// 15-byte limit.
fn tap_name(nic: &str) -> String {
    let mut name = format!("tap-{nic}");
    name.truncate(15);
    name
}

struct Tap {
    name: String,
}

impl Connect for Tap {
    fn connect(&mut self) -> std::io::Result<Box<dyn NetBackend>> {
        Ok(Box::new(TapBackend::new(open_tap(&self.name)?)))
    }
}

/// Opens (creating it if need be) the tap device `name`: no packet
/// information, non-blocking.
fn open_tap(name: &str) -> std::io::Result<OwnedFd> {
    const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
    const IFF_TAP: libc::c_short = 0x0002;
    const IFF_NO_PI: libc::c_short = 0x1000;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")?;
    // struct ifreq: the name (16 bytes), then the flags.
    let mut request = [0u8; 40];
    request[..name.len()].copy_from_slice(name.as_bytes());
    request[16..18].copy_from_slice(&(IFF_TAP | IFF_NO_PI).to_ne_bytes());
    // SAFETY: TUNSETIFF reads and writes an ifreq, which `request` is big
    // enough to hold; the descriptor is ours.
    let result = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, request.as_mut_ptr()) };
    if result < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: into_raw_fd hands over sole ownership of the descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(file)) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_are_six_hex_bytes() {
        assert_eq!(
            parse_mac("n", "02:00:0a:FF:10:01").expect("valid"),
            [2, 0, 0x0a, 0xff, 0x10, 1]
        );
        for bad in [
            "02:00:0a:ff:10",
            "02:00:0a:ff:10:01:02",
            "02:00:0a:ff:10:1",
            "zz:00:0a:ff:10:01",
        ] {
            let error = parse_mac("default", bad).expect_err(bad);
            assert!(
                error
                    .to_string()
                    .starts_with("NIC default: the MAC address"),
                "{error}"
            );
        }
    }

    #[test]
    fn ports_listed_are_forwarded_else_all_for_the_first_nic() {
        let mut nic = Nic {
            name: "default".into(),
            binding: NicBinding::Passt,
            mac: "02:00:00:00:00:01".into(),
            ports: Vec::new(),
        };
        assert_eq!(port_spec(&nic, Protocol::Tcp, true), "all");
        assert_eq!(port_spec(&nic, Protocol::Udp, false), "none");
        nic.ports = vec![
            crate::spec::config::Port {
                port: 80,
                protocol: Protocol::Tcp,
            },
            crate::spec::config::Port {
                port: 443,
                protocol: Protocol::Tcp,
            },
            crate::spec::config::Port {
                port: 53,
                protocol: Protocol::Udp,
            },
        ];
        assert_eq!(port_spec(&nic, Protocol::Tcp, true), "80,443");
        assert_eq!(port_spec(&nic, Protocol::Udp, true), "53");
    }

    #[test]
    fn all_ports_only_where_the_file_limit_allows() {
        assert!(can_forward_all("default", ALL_PORTS_FILES));
        assert!(!can_forward_all("default", 20_000));
    }

    #[test]
    fn tap_names_fit_the_kernels_limit() {
        assert_eq!(tap_name("default"), "tap-default");
        assert_eq!(tap_name("a-very-long-interface-name").len(), 15);
    }
}
