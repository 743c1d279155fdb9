//! virtio-net on virtio-queue's mock queues, with a real socketpair as the
//! passt side: frames both ways in passt's framing, a guest without
//! receive buffers, malformed chains, and a backend that dies and comes
//! back.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::sync::Arc;

use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::backend::StreamBackend;
use super::*;
use crate::devices::virtio::test_support::{memory, Counted, WRITE};
use crate::devices::virtio::ActiveQueue;

const RX_RING: u64 = 0x0;
const TX_RING: u64 = 0x4000;
const RX_BUFFER: u64 = 0x8000;
const TX_BUFFER: u64 = 0x2_0000;
const MAC: [u8; 6] = [2, 0, 0, 0xaa, 0xbb, 0xcc];

/// Hands out the backends the test queued, as passt restarts would.
struct Backends(mpsc::Receiver<UnixStream>);

impl Connect for Backends {
    fn connect(&mut self) -> std::io::Result<Box<dyn NetBackend>> {
        let stream = self
            .0
            .try_recv()
            .map_err(|_| std::io::Error::other("passt cannot start"))?;
        Ok(Box::new(StreamBackend::new(stream)?))
    }
}

struct Rig {
    net: Net,
    memory: Arc<GuestMemoryMmap>,
    interrupt: Arc<Counted>,
    /// passt's end.
    peer: UnixStream,
    restarts: mpsc::Sender<UnixStream>,
    rx_used: GuestAddress,
    tx_used: GuestAddress,
}

fn descriptor(addr: u64, len: u32, flags: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
}

/// A device activated on two mock queues; `rx_buffers` receive buffers of
/// `rx_len` bytes each, and one transmit chain per frame in `tx`.
fn rig(rx_buffers: u16, rx_len: u32, tx: &[&[u8]]) -> Rig {
    let memory = memory();
    let rx_mock = MockSplitQueue::create(&*memory, GuestAddress(RX_RING), 16);
    let rx_chains: Vec<RawDescriptor> = (0..rx_buffers)
        .map(|index| descriptor(RX_BUFFER + u64::from(index) * 0x1000, rx_len, WRITE))
        .collect();
    rx_mock.add_desc_chains(&rx_chains, 0).expect("rx chains");
    let tx_mock = MockSplitQueue::create(&*memory, GuestAddress(TX_RING), 16);
    let mut tx_chains = Vec::new();
    for (index, frame) in tx.iter().enumerate() {
        let at = TX_BUFFER + index as u64 * 0x1000;
        memory
            .write_slice(&[0u8; HEADER_BYTES], GuestAddress(at))
            .expect("header");
        memory
            .write_slice(frame, GuestAddress(at + HEADER_BYTES as u64))
            .expect("frame");
        tx_chains.push(descriptor(at, (HEADER_BYTES + frame.len()) as u32, 0));
    }
    tx_mock.add_desc_chains(&tx_chains, 0).expect("tx chains");
    let (rx_used, tx_used) = (rx_mock.used_addr(), tx_mock.used_addr());
    let rx: Queue = rx_mock.create_queue().expect("rx queue");
    let tx: Queue = tx_mock.create_queue().expect("tx queue");
    let (ours, peer) = UnixStream::pair().expect("socketpair");
    let (restarts, queued) = mpsc::channel();
    let mut net = Net::new(
        "default",
        MAC,
        1500,
        Box::new(StreamBackend::new(ours).expect("backend")),
        Box::new(Backends(queued)),
    )
    .expect("net");
    let interrupt = Arc::new(Counted::default());
    net.activate(Activation {
        memory: memory.clone(),
        features: crate::devices::virtio::VIRTIO_F_VERSION_1,
        queues: vec![
            ActiveQueue {
                index: 0,
                queue: rx,
            },
            ActiveQueue {
                index: 1,
                queue: tx,
            },
        ],
        interrupt: interrupt.clone(),
    })
    .expect("activates");
    peer.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .expect("timeout");
    Rig {
        net,
        memory,
        interrupt,
        peer,
        restarts,
        rx_used,
        tx_used,
    }
}

fn framed(frame: &[u8]) -> Vec<u8> {
    let mut bytes = (frame.len() as u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(frame);
    bytes
}

/// The length the device reported for used entry `index` of the used
/// ring at `used` (flags, idx, then {id, len} entries).
fn used_len(memory: &GuestMemoryMmap, used: GuestAddress, index: usize) -> u32 {
    let entry = used.0 + 4 + 8 * index as u64;
    memory
        .read_obj(GuestAddress(entry + 4))
        .expect("used entry")
}

/// How many buffers the device returned on the used ring at `used`.
fn used_count(memory: &GuestMemoryMmap, used: GuestAddress) -> u16 {
    memory.read_obj(GuestAddress(used.0 + 2)).expect("used idx")
}

#[test]
fn frames_the_guest_sends_reach_passt_length_prefixed() {
    let mut rig = rig(0, 0, &[b"first frame", b"second"]);
    let mut got = vec![0u8; 4 + 11 + 4 + 6];
    rig.peer.read_exact(&mut got).expect("passt reads");
    assert_eq!(got, [framed(b"first frame"), framed(b"second")].concat());
    assert_eq!(used_count(&rig.memory, rig.tx_used), 2);
    assert!(rig.interrupt.count() >= 1);
    let _ = &mut rig;
}

#[test]
fn frames_from_passt_land_in_receive_buffers_after_a_header() {
    let mut rig = rig(2, 2048, &[]);
    rig.peer
        .write_all(&[framed(b"hello guest"), framed(&[7u8; 1500])].concat())
        .expect("passt writes");
    rig.net.backend_ready(BACKEND);
    assert_eq!(used_count(&rig.memory, rig.rx_used), 2);
    assert_eq!(
        used_len(&rig.memory, rig.rx_used, 0),
        (HEADER_BYTES + 11) as u32
    );
    assert_eq!(
        used_len(&rig.memory, rig.rx_used, 1),
        (HEADER_BYTES + 1500) as u32
    );
    let mut header = [0xffu8; HEADER_BYTES];
    rig.memory
        .read_slice(&mut header, GuestAddress(RX_BUFFER))
        .expect("header");
    assert_eq!(
        header,
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0],
        "num_buffers 1, no offloads"
    );
    let mut frame = [0u8; 11];
    rig.memory
        .read_slice(&mut frame, GuestAddress(RX_BUFFER + HEADER_BYTES as u64))
        .expect("frame");
    assert_eq!(&frame, b"hello guest");
}

#[test]
fn a_frame_waits_for_a_receive_buffer_and_passt_is_not_read_meanwhile() {
    let mut rig = rig(0, 0, &[]);
    rig.peer
        .write_all(&[framed(b"one"), framed(b"two")].concat())
        .expect("passt writes");
    rig.net.backend_ready(BACKEND);
    let events = rig.net.backend_events();
    assert!(
        !events[0].readable,
        "no reading while a frame waits: {events:?}"
    );
    assert_eq!(used_count(&rig.memory, rig.rx_used), 0);
}

#[test]
fn a_frame_too_big_for_the_buffer_is_dropped_and_the_next_delivered() {
    let mut rig = rig(2, 256, &[]);
    rig.peer
        .write_all(&[framed(&[1u8; 1000]), framed(b"small")].concat())
        .expect("passt writes");
    rig.net.backend_ready(BACKEND);
    assert_eq!(used_len(&rig.memory, rig.rx_used, 0), 0, "dropped");
    assert_eq!(
        used_len(&rig.memory, rig.rx_used, 1),
        (HEADER_BYTES + 5) as u32
    );
}

#[test]
fn a_transmit_buffer_without_a_whole_header_fails_alone() {
    // A chain of 4 bytes (shorter than the header), then a good frame.
    let mut rig = rig(0, 0, &[]);
    let tx_mock = MockSplitQueue::create(&*rig.memory, GuestAddress(TX_RING), 16);
    rig.memory
        .write_slice(&[0u8; HEADER_BYTES + 2], GuestAddress(TX_BUFFER))
        .expect("frame");
    rig.memory
        .write_slice(b"ok", GuestAddress(TX_BUFFER + HEADER_BYTES as u64))
        .expect("frame");
    tx_mock
        .add_desc_chains(
            &[
                descriptor(TX_BUFFER, 4, 0),
                descriptor(TX_BUFFER, (HEADER_BYTES + 2) as u32, 0),
            ],
            0,
        )
        .expect("chains");
    rig.net.queue_notified(TX);
    let mut got = [0u8; 6];
    rig.peer.read_exact(&mut got).expect("the good frame");
    assert_eq!(got.to_vec(), framed(b"ok"));
    assert_eq!(
        used_count(&rig.memory, rig.tx_used),
        2,
        "both returned to the guest"
    );
}

#[test]
fn the_config_space_has_the_mac_link_status_and_mtu() {
    let rig = rig(0, 0, &[]);
    let mut config = [0u8; 12];
    rig.net.read_config(0, &mut config);
    assert_eq!(&config[..6], &MAC);
    assert_eq!(u16::from_le_bytes([config[6], config[7]]), LINK_UP);
    assert_eq!(u16::from_le_bytes([config[10], config[11]]), 1500);
    assert_eq!(rig.net.features(), F_MAC | F_STATUS | F_MTU);
}

#[test]
fn when_passt_dies_the_link_goes_down_and_comes_back_with_a_new_one() {
    let mut rig = rig(1, 2048, &[]);
    let before = rig.interrupt.count();
    drop(std::mem::replace(
        &mut rig.peer,
        UnixStream::pair().expect("pair").0,
    ));
    rig.net.backend_ready(BACKEND);
    let mut status = [0u8; 2];
    rig.net.read_config(6, &mut status);
    assert_eq!(u16::from_le_bytes(status), 0, "link down");
    assert_eq!(
        rig.interrupt.count(),
        before + 1,
        "a config-change interrupt"
    );
    let events = rig.net.backend_events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].source, RECONNECT_TIMER);
    // The restart: a new passt end.
    let (ours, peer) = UnixStream::pair().expect("pair");
    rig.restarts.send(ours).expect("queue");
    rig.net.backend_ready(RECONNECT_TIMER); // waits for the 1 s timer
    rig.net.read_config(6, &mut status);
    assert_eq!(u16::from_le_bytes(status), LINK_UP, "link up again");
    assert_eq!(rig.interrupt.count(), before + 2);
    assert_eq!(rig.net.backend_events()[0].source, BACKEND);
    let mut peer = peer;
    peer.write_all(&framed(b"after restart")).expect("write");
    rig.net.backend_ready(BACKEND);
    assert_eq!(
        used_len(&rig.memory, rig.rx_used, 0),
        (HEADER_BYTES + 13) as u32
    );
}
