//! NIC backends against the real thing: Debian's passt started as vmpod
//! starts it, and a tap device in the host's kernel. Each test asks an
//! ARP question as a guest would and expects the answer back through the
//! backend, so frames go both ways.

mod common;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use common::not_here;
use vmpod::devices::virtio::net::backend::NetBackend;
use vmpod::spec::config::{Nic, NicBinding};
use vmpod::vmm::network;

const GUEST_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x12, 0x34, 0x56];

fn nic(name: &str, binding: NicBinding) -> Nic {
    Nic {
        name: name.into(),
        binding,
        mac: "02:00:00:12:34:56".into(),
        ports: Vec::new(),
    }
}

/// An Ethernet broadcast ARP request: who has `target`? tell `sender`.
fn arp_request(sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut frame = vec![0xff; 6];
    frame.extend_from_slice(&GUEST_MAC);
    frame.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    frame.extend_from_slice(&GUEST_MAC);
    frame.extend_from_slice(&sender.octets());
    frame.extend_from_slice(&[0; 6]);
    frame.extend_from_slice(&target.octets());
    frame
}

/// The first ARP reply to the guest about `target` within 5 s.
fn arp_reply(backend: &mut dyn NetBackend, target: Ipv4Addr) -> Option<Vec<u8>> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match backend.recv().expect("the backend is up") {
            Some(frame)
                if frame.len() >= 42
                    && frame[..6] == GUEST_MAC
                    && frame[12..14] == [0x08, 0x06]
                    && frame[20..22] == [0, 2]
                    && frame[28..32] == target.octets() =>
            {
                return Some(frame)
            }
            Some(_) => {}
            None => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    None
}

#[test]
fn passt_answers_the_guests_arp_through_the_stream() {
    let test = "passt_answers_the_guests_arp_through_the_stream";
    let started = match network::start(&nic("default", NicBinding::Passt), false) {
        Ok(started) => started,
        Err(error) => return not_here(test, &error.to_string()),
    };
    let mut backend = started.backend;
    // passt answers for any address but the guest's own (its gateway,
    // say); the guest's address is the host's, which passt took.
    let target = Ipv4Addr::new(10, 254, 0, 1);
    backend
        .send(&arp_request(Ipv4Addr::new(10, 254, 0, 2), target))
        .expect("send");
    let reply = arp_reply(&mut *backend, target);
    assert!(reply.is_some(), "passt did not answer the ARP request");
}

#[test]
fn a_tap_moves_frames_between_the_guest_and_the_hosts_kernel() {
    let test = "a_tap_moves_frames_between_the_guest_and_the_hosts_kernel";
    let started = match network::start(&nic("vmpodt", NicBinding::Bridge), false) {
        Ok(started) => started,
        Err(error) => return not_here(test, &error.to_string()),
    };
    let mut backend = started.backend;
    // The kernel's side of the tap gets an address and answers ARP for it.
    for args in [
        &["addr", "add", "10.253.0.1/24", "dev", "tap-vmpodt"][..],
        &["link", "set", "tap-vmpodt", "up"][..],
    ] {
        let status = std::process::Command::new("ip").args(args).status();
        if !status.is_ok_and(|status| status.success()) {
            return not_here(test, &format!("ip {args:?} failed"));
        }
    }
    let target = Ipv4Addr::new(10, 253, 0, 1);
    backend
        .send(&arp_request(Ipv4Addr::new(10, 253, 0, 2), target))
        .expect("send");
    let reply = arp_reply(&mut *backend, target);
    drop(backend);
    let _ = std::process::Command::new("ip")
        .args(["link", "del", "tap-vmpodt"])
        .status();
    assert!(reply.is_some(), "the kernel did not answer through the tap");
}
