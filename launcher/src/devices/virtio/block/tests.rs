//! virtio-blk requests on virtio-queue's mock queues, against a real file.

use std::io::{Read, Seek, Write};
use std::sync::Arc;

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

/// A disk file of 8 sectors, sector N filled with byte N.
fn disk_file() -> File {
    let mut file = tempfile();
    for sector in 0..SECTORS {
        file.write_all(&[sector as u8; 512]).expect("fill");
    }
    file
}

fn tempfile() -> File {
    let path = std::env::temp_dir().join(format!(
        "vmpod-blk-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .expect("temp file");
    std::fs::remove_file(&path).expect("unlink");
    file
}

struct Served {
    status: u8,
    used: u32,
    memory: Arc<GuestMemoryMmap>,
    file: File,
}

/// Writes a request header, runs the chain `descriptors` through a block
/// device on `file`, and returns what the guest would see.
fn request(
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
    let file = disk_file();
    let mut block = Block::new(
        "root",
        file.try_clone().expect("clone"),
        SECTORS * 512,
        readonly,
        Some("vmpod-serial-0123456789"),
    );
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
        file,
    }
}

fn standard(data: RawDescriptor) -> Vec<RawDescriptor> {
    vec![
        descriptor(HEADER, 16, 0),
        data,
        descriptor(STATUS, 1, WRITE),
    ]
}

fn file_bytes(file: &mut File) -> Vec<u8> {
    let mut bytes = Vec::new();
    file.rewind().expect("rewind");
    file.read_to_end(&mut bytes).expect("read");
    bytes
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
    let mut served = request(
        1,
        5,
        &standard(descriptor(DATA, 512, 0)),
        &[0xab; 512],
        false,
    );
    assert_eq!((served.status, served.used), (OK, 1));
    let bytes = file_bytes(&mut served.file);
    assert!(bytes[5 * 512..6 * 512].iter().all(|b| *b == 0xab));
    assert!(
        bytes[4 * 512..5 * 512].iter().all(|b| *b == 4),
        "its neighbours are intact"
    );
}

#[test]
fn a_read_only_disk_refuses_writes_and_says_so() {
    let mut served = request(
        1,
        0,
        &standard(descriptor(DATA, 512, 0)),
        &[0xab; 512],
        true,
    );
    assert_eq!(served.status, IOERR);
    assert!(file_bytes(&mut served.file)[..512].iter().all(|b| *b == 0));
    let block = Block::new("ro", disk_file(), 4096, true, None);
    assert_ne!(block.features() & F_RO, 0);
    assert_eq!(
        Block::new("rw", disk_file(), 4096, false, None).features() & F_RO,
        0
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
        request(11, 0, &standard(descriptor(DATA, 512, 0)), &[0; 512], false).status,
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
    let block = Block::new("cfg", disk_file(), 10 * 512 + 100, false, None);
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
