//! virtio-rng (virtio 1.2, section 5.4): one queue of device-writable
//! buffers, each filled with bytes from the host's getrandom.
//!
//! Activated on a vCPU thread; requests are served on the VMM thread when
//! the queue's notifier fires. Through the transport's mutex.

use virtio_queue::QueueT;
use vm_memory::Bytes;

use super::{device_type, log_bad_request, ActivateError, Activation, SingleQueue, VirtioDevice};

const QUEUE_SIZES: &[u16] = &[256];
/// The most entropy one request gets; a driver asks again for more.
const MAX_REQUEST: usize = 64 * 1024;

#[derive(Default)]
pub struct Rng {
    active: Option<SingleQueue>,
    bad_requests: u64,
}

/// Fills `buffer` from the kernel's random source.
fn fill_random(buffer: &mut [u8]) -> std::io::Result<()> {
    let mut filled = 0;
    while filled < buffer.len() {
        let rest = &mut buffer[filled..];
        // SAFETY: getrandom writes at most `rest.len()` bytes into `rest`.
        let got = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if got < 0 {
            let error = std::io::Error::last_os_error();
            if error.kind() != std::io::ErrorKind::Interrupted {
                return Err(error);
            }
            continue;
        }
        filled += got as usize;
    }
    Ok(())
}

impl Rng {
    /// Serves every request the driver has made available.
    fn serve(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let memory = active.memory.clone();
        let memory = &*memory;
        let mut served = false;
        while let Some(chain) = active.queue.pop_descriptor_chain(memory) {
            let head = chain.head_index();
            let mut written = 0usize;
            let mut failure = None;
            for descriptor in chain {
                if !descriptor.is_write_only() {
                    failure = Some("a buffer the device cannot write");
                    break;
                }
                let len = (descriptor.len() as usize).min(MAX_REQUEST - written);
                let mut random = vec![0u8; len];
                if fill_random(&mut random).is_err() {
                    failure = Some("the host's random source failed");
                    break;
                }
                if memory.write_slice(&random, descriptor.addr()).is_err() {
                    failure = Some("a buffer outside guest memory");
                    break;
                }
                written += len;
                if written == MAX_REQUEST {
                    break;
                }
            }
            if let Some(what) = failure {
                log_bad_request(&mut self.bad_requests, "virtio-rng", what);
                written = 0;
            }
            if let Err(error) = active.queue.add_used(memory, head, written as u32) {
                log_bad_request(&mut self.bad_requests, "virtio-rng", error);
            }
            served = true;
        }
        active.interrupt_if_needed(served, "virtio-rng");
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        device_type::ENTROPY
    }

    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        0
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0); // virtio-rng has no configuration space
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        self.active = Some(SingleQueue::take(activation)?);
        // Requests made before the notifier was wired are served now.
        self.serve();
        Ok(())
    }

    fn queue_notified(&mut self, index: u16) {
        if index == 0 {
            self.serve();
        }
    }

    fn reset(&mut self) {
        self.active = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_support::{memory, Counted, WRITE};
    use std::sync::Arc;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::Queue;
    use vm_memory::{GuestAddress, GuestMemoryMmap};

    fn descriptor(addr: u64, len: u32, flags: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
    }

    /// An activated rng on a mock queue holding the chain `descriptors`;
    /// returns the used length the device reported and the interrupts.
    fn serve(descriptors: &[RawDescriptor]) -> (u32, u32, Arc<GuestMemoryMmap>) {
        let memory = memory();
        let mock = MockSplitQueue::new(&*memory, 16);
        mock.build_desc_chain(descriptors).expect("chain");
        let queue: Queue = mock.create_queue().expect("queue");
        let interrupt = Arc::new(Counted::default());
        let mut rng = Rng::default();
        rng.activate(Activation {
            memory: memory.clone(),
            features: super::super::VIRTIO_F_VERSION_1,
            queues: vec![super::super::ActiveQueue { index: 0, queue }],
            interrupt: interrupt.clone(),
        })
        .expect("activates");
        let used = mock.used().ring().ref_at(0).expect("used entry").load();
        (used.len(), interrupt.count(), memory)
    }

    #[test]
    fn writable_buffers_are_filled_with_entropy() {
        let (used, interrupts, memory) = serve(&[
            descriptor(0x8000, 512, WRITE),
            descriptor(0x9000, 512, WRITE),
        ]);
        assert_eq!(used, 1024);
        assert_eq!(interrupts, 1);
        let mut filled = [0u8; 1024];
        memory
            .read_slice(&mut filled[..512], GuestAddress(0x8000))
            .expect("read");
        memory
            .read_slice(&mut filled[512..], GuestAddress(0x9000))
            .expect("read");
        assert!(
            filled.iter().filter(|b| **b != 0).count() > 900,
            "random, not zeros"
        );
    }

    #[test]
    fn a_read_only_buffer_fails_the_request() {
        let (used, interrupts, _) = serve(&[descriptor(0x8000, 64, 0)]);
        assert_eq!((used, interrupts), (0, 1), "answered, with nothing written");
    }

    #[test]
    fn a_buffer_outside_guest_memory_fails_the_request() {
        let (used, _, _) = serve(&[descriptor(0xf_ff00, 0x1000, WRITE)]);
        assert_eq!(used, 0);
        let (used, _, _) = serve(&[descriptor(u64::MAX - 8, 64, WRITE)]);
        assert_eq!(used, 0);
    }

    #[test]
    fn a_huge_request_gets_at_most_the_limit() {
        let (used, _, _) = serve(&[descriptor(0x1_0000, 0xf_0000, WRITE)]);
        assert_eq!(used as usize, MAX_REQUEST);
    }

    #[test]
    fn a_zero_length_buffer_is_answered_empty() {
        let (used, interrupts, _) = serve(&[descriptor(0x8000, 0, WRITE)]);
        assert_eq!((used, interrupts), (0, 1));
    }
}
