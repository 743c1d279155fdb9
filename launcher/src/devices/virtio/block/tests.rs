//! virtio-blk requests on virtio-queue's mock queues, against a real file.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::request::{IOERR, OK, UNSUPP};
use super::*;
use crate::devices::virtio::test_support::{memory, Counted, WRITE};
use crate::devices::virtio::ActiveQueue;
const HEADER: u64 = 0x8000;
const DATA: u64 = 0x9000;
const STATUS: u64 = 0xa000;
const SECTORS: u64 = 8;

fn descriptor(addr: u64, len: u32, flags: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
}

/// An in-memory disk whose bytes the test can see, and which can be told
/// to fail writes as a full file system does.
#[derive(Debug, Clone)]
struct MemoryDisk {
    bytes: Arc<Mutex<Vec<u8>>>,
    full: Arc<AtomicBool>,
    zeroed: Arc<Mutex<Vec<(u64, u64)>>>,
}

impl MemoryDisk {
    /// `size` bytes, sector N filled with byte N.
    fn new(size: u64) -> Self {
        let bytes = (0..size).map(|at| (at / 512) as u8).collect();
        MemoryDisk {
            bytes: Arc::new(Mutex::new(bytes)),
            full: Arc::default(),
            zeroed: Arc::default(),
        }
    }

    fn bytes(&self) -> Vec<u8> {
        self.bytes.lock().expect("bytes").clone()
    }

    fn range(&self, offset: u64, len: usize) -> std::io::Result<std::ops::Range<usize>> {
        let start = offset as usize;
        (start + len <= self.bytes.lock().expect("bytes").len())
            .then_some(start..start + len)
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))
    }
}

impl DiskImage for MemoryDisk {
    fn size(&self) -> u64 {
        self.bytes.lock().expect("bytes").len() as u64
    }
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let range = self.range(offset, buf.len())?;
        buf.copy_from_slice(&self.bytes.lock().expect("bytes")[range]);
        Ok(())
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        if self.full.load(Ordering::Relaxed) {
            return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
        }
        let range = self.range(offset, buf.len())?;
        self.bytes.lock().expect("bytes")[range].copy_from_slice(buf);
        Ok(())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
    fn write_zeroes(&mut self, offset: u64, len: u64) -> std::io::Result<()> {
        let range = self.range(offset, len as usize)?;
        self.bytes.lock().expect("bytes")[range].fill(0);
        self.zeroed.lock().expect("zeroed").push((offset, len));
        Ok(())
    }
    fn discard(&mut self, offset: u64, len: u64) -> std::io::Result<()> {
        self.write_zeroes(offset, len)
    }
    fn format(&self) -> crate::images::Format {
        crate::images::Format::Raw
    }
}

fn disk_of(size: u64) -> Box<dyn DiskImage> {
    Box::new(MemoryDisk::new(size))
}

struct Served {
    status: u8,
    used: u32,
    memory: Arc<GuestMemoryMmap>,
    disk: MemoryDisk,
    /// What the device reported (QMP events).
    events: Vec<crate::api::Event>,
}

/// Writes a request header, runs the chain `descriptors` through a block
/// device on an 8-sector disk, and returns what the guest would see.
fn request(
    kind: u32,
    sector: u64,
    descriptors: &[RawDescriptor],
    guest_data: &[u8],
    readonly: bool,
) -> Served {
    request_on(
        MemoryDisk::new(SECTORS * 512),
        kind,
        sector,
        descriptors,
        guest_data,
        readonly,
    )
}

fn request_on(
    disk: MemoryDisk,
    kind: u32,
    sector: u64,
    descriptors: &[RawDescriptor],
    guest_data: &[u8],
    readonly: bool,
) -> Served {
    let memory = memory();
    let mut header = [0u8; 16];
    header[..4].copy_from_slice(&kind.to_le_bytes());
    header[8..].copy_from_slice(&sector.to_le_bytes());
    memory
        .write_slice(&header, GuestAddress(HEADER))
        .expect("header");
    memory
        .write_slice(guest_data, GuestAddress(DATA))
        .expect("data");
    memory
        .write_obj(0xffu8, GuestAddress(STATUS))
        .expect("status");
    let mock = MockSplitQueue::new(&*memory, 16);
    mock.build_desc_chain(descriptors).expect("chain");
    let queue: Queue = mock.create_queue().expect("queue");
    let (events, reported) = crate::api::channel().expect("event channel");
    let mut block = Block::new(
        "root",
        Box::new(disk.clone()),
        readonly,
        Some("vmpod-serial-0123456789"),
    )
    .with_events(events);
    let interrupt = Arc::new(Counted::default());
    block
        .activate(Activation {
            memory: memory.clone(),
            features: crate::devices::virtio::VIRTIO_F_VERSION_1,
            queues: vec![ActiveQueue { index: 0, queue }],
            interrupt: interrupt.clone(),
        })
        .expect("activates");
    assert_eq!(interrupt.count(), 1, "the guest is told");
    let used = mock.used().ring().ref_at(0).expect("used").load().len();
    let status = memory.read_obj::<u8>(GuestAddress(STATUS)).expect("status");
    Served {
        status,
        used,
        memory,
        disk,
        events: reported
            .drain()
            .into_iter()
            .map(|timed| timed.event)
            .collect(),
    }
}

fn standard(data: RawDescriptor) -> Vec<RawDescriptor> {
    vec![
        descriptor(HEADER, 16, 0),
        data,
        descriptor(STATUS, 1, WRITE),
    ]
}

#[test]
fn a_read_copies_sectors_into_the_guest() {
    let served = request(0, 2, &standard(descriptor(DATA, 1024, WRITE)), &[], false);
    assert_eq!((served.status, served.used), (OK, 1025));
    let mut data = [0u8; 1024];
    served
        .memory
        .read_slice(&mut data, GuestAddress(DATA))
        .expect("read");
    assert!(data[..512].iter().all(|b| *b == 2) && data[512..].iter().all(|b| *b == 3));
}

#[test]
fn a_write_lands_in_the_file() {
    let served = request(
        1,
        5,
        &standard(descriptor(DATA, 512, 0)),
        &[0xab; 512],
        false,
    );
    assert_eq!((served.status, served.used), (OK, 1));
    let bytes = served.disk.bytes();
    assert!(bytes[5 * 512..6 * 512].iter().all(|b| *b == 0xab));
    assert!(
        bytes[4 * 512..5 * 512].iter().all(|b| *b == 4),
        "its neighbours are intact"
    );
}

#[test]
fn a_read_only_disk_refuses_writes_and_says_so() {
    let served = request(
        1,
        0,
        &standard(descriptor(DATA, 512, 0)),
        &[0xab; 512],
        true,
    );
    assert_eq!(served.status, IOERR);
    assert!(served.disk.bytes()[..512].iter().all(|b| *b == 0));
    let block = Block::new("ro", disk_of(4096), true, None);
    assert_eq!(block.features() & (F_RO | F_DISCARD | F_WRITE_ZEROES), F_RO);
    assert_eq!(
        Block::new("rw", disk_of(4096), false, None).features()
            & (F_RO | F_DISCARD | F_WRITE_ZEROES),
        F_DISCARD | F_WRITE_ZEROES
    );
}

#[test]
fn requests_beyond_the_disk_or_not_in_sectors_fail() {
    assert_eq!(
        request(0, 7, &standard(descriptor(DATA, 1024, WRITE)), &[], false).status,
        IOERR
    );
    assert_eq!(
        request(
            0,
            u64::MAX,
            &standard(descriptor(DATA, 512, WRITE)),
            &[],
            false
        )
        .status,
        IOERR
    );
    assert_eq!(
        request(0, 0, &standard(descriptor(DATA, 100, WRITE)), &[], false).status,
        IOERR
    );
    assert_eq!(
        request(1, 0, &standard(descriptor(DATA, 511, 0)), &[0; 511], false).status,
        IOERR
    );
}

#[test]
fn get_id_answers_the_serial_flush_syncs_and_others_are_unsupported() {
    let served = request(8, 0, &standard(descriptor(DATA, 20, WRITE)), &[], false);
    assert_eq!((served.status, served.used), (OK, 21));
    let mut id = [0u8; 20];
    served
        .memory
        .read_slice(&mut id, GuestAddress(DATA))
        .expect("read");
    assert_eq!(
        &id, b"vmpod-serial-0123456",
        "the first 20 bytes, as QEMU keeps"
    );
    let flush = request(
        4,
        0,
        &[descriptor(HEADER, 16, 0), descriptor(STATUS, 1, WRITE)],
        &[],
        false,
    );
    assert_eq!((flush.status, flush.used), (OK, 1));
    assert_eq!(
        request(7, 0, &standard(descriptor(DATA, 512, 0)), &[0; 512], false).status,
        UNSUPP
    );
}

#[test]
fn any_layout_works_a_header_split_in_two_and_status_with_the_data() {
    let descriptors = [
        descriptor(HEADER, 8, 0),
        descriptor(HEADER + 8, 8, 0),
        descriptor(DATA, 512, WRITE),
        descriptor(STATUS, 1, WRITE),
    ];
    let served = request(0, 1, &descriptors, &[], false);
    assert_eq!((served.status, served.used), (OK, 513));
}

#[test]
fn malformed_chains_fail_the_request_not_the_vmm() {
    // No writable byte for the status.
    let no_status = request(
        0,
        0,
        &[descriptor(HEADER, 16, 0), descriptor(DATA, 512, 0)],
        &[0; 512],
        false,
    );
    assert_eq!(
        (no_status.status, no_status.used),
        (0xff, 0),
        "nothing written"
    );
    // A data buffer outside guest memory.
    let outside = request(
        0,
        0,
        &standard(descriptor(0xff_f000, 0x2000, WRITE)),
        &[],
        false,
    );
    assert_eq!((outside.status, outside.used), (0xff, 0));
    // A header too short.
    let short = request(
        0,
        0,
        &[descriptor(HEADER, 8, 0), descriptor(STATUS, 1, WRITE)],
        &[],
        false,
    );
    assert_eq!((short.status, short.used), (IOERR, 1));
}

#[test]
fn the_config_space_gives_capacity_in_sectors_and_the_block_size() {
    let block = Block::new("cfg", disk_of(10 * 512 + 100), false, None);
    let mut capacity = [0u8; 8];
    block.read_config(0, &mut capacity);
    assert_eq!(
        u64::from_le_bytes(capacity),
        10,
        "rounded down to whole sectors"
    );
    let mut block_size = [0u8; 4];
    block.read_config(20, &mut block_size);
    assert_eq!(u32::from_le_bytes(block_size), 512);
    let mut beyond = [0xffu8; 4];
    block.read_config(u64::MAX - 1, &mut beyond);
    assert_eq!(beyond, [0; 4]);
}

/// Discard and write-zeroes segments: sector, sector count, flags.
fn segments(list: &[(u64, u32, u32)]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for (sector, count, flags) in list {
        bytes.extend_from_slice(&sector.to_le_bytes());
        bytes.extend_from_slice(&count.to_le_bytes());
        bytes.extend_from_slice(&flags.to_le_bytes());
    }
    bytes
}

#[test]
fn discard_and_write_zeroes_clear_each_segment() {
    let list = segments(&[(1, 1, 0), (4, 2, 1)]);
    let len = list.len() as u32;
    let zeroes = request(13, 0, &standard(descriptor(DATA, len, 0)), &list, false);
    assert_eq!((zeroes.status, zeroes.used), (OK, 1));
    let bytes = zeroes.disk.bytes();
    for (sector, expected) in [(0, 0u8), (1, 0), (2, 2), (4, 0), (5, 0), (6, 6)] {
        assert!(
            bytes[sector * 512..(sector + 1) * 512]
                .iter()
                .all(|b| *b == expected),
            "sector {sector}"
        );
    }
    // Only the segment that allowed unmapping went to the backend's zeroing.
    assert_eq!(*zeroes.disk.zeroed.lock().expect("zeroed"), [(2048, 1024)]);
    let discard = request(
        11,
        0,
        &standard(descriptor(DATA, 16, 0)),
        &segments(&[(3, 2, 0)]),
        false,
    );
    assert_eq!(discard.status, OK);
    assert_eq!(*discard.disk.zeroed.lock().expect("zeroed"), [(1536, 1024)]);
}

#[test]
fn bad_segments_and_read_only_disks_fail_discard_and_write_zeroes() {
    let bad = [
        segments(&[(7, 2, 0)]),                // past the end
        segments(&[(0, 1, 2)]),                // an unknown flag
        segments(&[(0, 1, 0)])[..10].to_vec(), // not whole segments
        segments(&vec![(0, 1, 0); 33]),        // more than advertised
    ];
    for (index, list) in bad.iter().enumerate() {
        let len = list.len() as u32;
        let served = request(13, 0, &standard(descriptor(DATA, len, 0)), list, false);
        assert_eq!(served.status, IOERR, "case {index}");
        assert_eq!(
            served.disk.bytes(),
            MemoryDisk::new(SECTORS * 512).bytes(),
            "case {index}"
        );
    }
    let list = segments(&[(0, 1, 1)]);
    let read_only = request(11, 0, &standard(descriptor(DATA, 16, 0)), &list, true);
    assert_eq!(read_only.status, IOERR);
    assert!(read_only.disk.zeroed.lock().expect("zeroed").is_empty());
}

#[test]
fn a_full_disk_gives_the_guest_an_io_error_and_the_device_goes_on() {
    let disk = MemoryDisk::new(SECTORS * 512);
    disk.full.store(true, Ordering::Relaxed);
    let full = request_on(
        disk.clone(),
        1,
        0,
        &standard(descriptor(DATA, 512, 0)),
        &[9; 512],
        false,
    );
    assert_eq!((full.status, full.used), (IOERR, 1));
    assert_eq!(
        full.events,
        [crate::api::Event::BlockIoError(crate::api::BlockIoError {
            device: "root".into(),
            operation: "write",
            nospace: true,
            reason: std::io::Error::from_raw_os_error(libc::ENOSPC).to_string(),
        })],
        "QMP hears of it"
    );
    disk.full.store(false, Ordering::Relaxed);
    let after = request_on(
        disk,
        1,
        0,
        &standard(descriptor(DATA, 512, 0)),
        &[9; 512],
        false,
    );
    assert_eq!(after.status, OK);
    assert!(after.events.is_empty(), "{:?}", after.events);
    assert!(after.disk.bytes()[..512].iter().all(|b| *b == 9));
}
