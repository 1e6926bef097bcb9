//! Loopback ports for child processes, picked so that nothing else takes them between the
//! moment the harness chooses one and the moment the child binds it.
//!
//! A port found by binding port 0 and closing the socket comes from the kernel's ephemeral
//! range, and goes straight back to it: any `bind(0)` or outgoing connection in any process
//! on the machine (the other test thread, another test binary, another developer's suite)
//! may take it before the child binds it, and an etcd member's ports are unguarded while
//! it is down between a kill and a restart. Ports here come from outside that range, which
//! the kernel never hands out on its own, in blocks that one process claims with a lock
//! file, so two harness processes never share a port either; within the process a port is
//! handed out once.

use std::fs::{File, OpenOptions};
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

/// The lowest port handed out: below it live the well-known and commonly configured
/// services (etcd's 2379/2380, 8080, 9090…) that a developer machine may run.
const FLOOR: u16 = 10_000;

/// Ports per claimed block: few lock files for a whole test binary, while a claimed block
/// left half-used by a short test costs the machine little.
const BLOCK: u16 = 32;

/// Where the kernel's ephemeral ports come from; [`ephemeral_range`] reads it.
const EPHEMERAL_RANGE_FILE: &str = "/proc/sys/net/ipv4/ip_local_port_range";

/// One loopback port no other process binds by chance and this process never hands out
/// again. Free (bindable on 127.0.0.1) when returned.
pub fn reserve() -> u16 {
    reserve_n::<1>()[0]
}

/// `N` distinct ports, as [`reserve`].
pub fn reserve_n<const N: usize>() -> [u16; N] {
    let mut alloc = allocator()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    std::array::from_fn(|_| alloc.next_port())
}

/// True when nothing holds `port` on 127.0.0.1 right now (a bind succeeds). The listener
/// sets `SO_REUSEADDR`, as the children's listeners do, so a port whose last connections
/// linger in `TIME_WAIT` counts as free, as it is for them.
pub fn is_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// The kernel's ephemeral range, inclusive: `ip_local_port_range`, or Linux's default
/// widened to IANA's dynamic range when it cannot be read, so a guess errs on the safe side.
pub fn ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string(EPHEMERAL_RANGE_FILE)
        .ok()
        .and_then(|text| {
            let mut it = text.split_whitespace().map(str::parse::<u16>);
            match (it.next(), it.next()) {
                (Some(Ok(lo)), Some(Ok(hi))) if lo <= hi => Some((lo, hi)),
                _ => None,
            }
        })
        .unwrap_or((32_768, 65_535))
}

/// The ports the allocator hands out from, inclusive: the wider stretch of
/// `FLOOR..=65535` below or above the ephemeral range.
pub fn range() -> (u16, u16) {
    let (lo, hi) = ephemeral_range();
    let below = (lo > FLOOR).then(|| (FLOOR, lo - 1));
    let above = (hi < u16::MAX).then(|| (hi.saturating_add(1).max(FLOOR), u16::MAX));
    let width = |r: Option<(u16, u16)>| r.map_or(0, |(a, b)| u32::from(b) - u32::from(a) + 1);
    let best = if width(below) >= width(above) {
        below
    } else {
        above
    };
    match best {
        Some(r) if width(best) >= u32::from(BLOCK) * 8 => r,
        _ => panic!(
            "the ephemeral port range {lo}-{hi} ({EPHEMERAL_RANGE_FILE}) leaves no room for test \
             ports above {FLOOR}: narrow it"
        ),
    }
}

fn allocator() -> &'static Mutex<Allocator> {
    static ALLOC: OnceLock<Mutex<Allocator>> = OnceLock::new();
    ALLOC.get_or_init(|| Mutex::new(Allocator::new()))
}

/// Hands out ports from the blocks this process has claimed, in order, never twice.
#[derive(Debug)]
struct Allocator {
    /// First port of the range blocks are cut from: every harness process computes the
    /// same range, so the same block has the same lock file in all of them.
    first: u16,
    /// How many blocks the range holds; claiming wraps around at it.
    blocks: u32,
    /// Index of the next block to try to claim. Starts at a random block so processes that
    /// start together do not all contend for the first one.
    next_block: u32,
    /// Blocks tried so far: once every block was tried, the machine has none left.
    tried: u32,
    /// Next port of the current block to hand out, and the end (exclusive) of that block;
    /// equal when no block is claimed yet or it is used up.
    cursor: u32,
    /// See `cursor`.
    end: u32,
    /// The lock files of the claimed blocks: the locks last as long as the files stay open,
    /// that is until the process exits, and the kernel drops them even when it crashes.
    held: Vec<File>,
}

impl Allocator {
    fn new() -> Self {
        let (first, last) = range();
        let blocks = (u32::from(last) - u32::from(first) + 1) / u32::from(BLOCK);
        Self {
            first,
            blocks,
            next_block: rand::random::<u32>() % blocks,
            tried: 0,
            cursor: 0,
            end: 0,
            held: Vec::new(),
        }
    }

    /// The next port of a claimed block that is free now; claims a new block when the
    /// current one is used up. At most one pass over every block of the range.
    fn next_port(&mut self) -> u16 {
        loop {
            while self.cursor < self.end {
                let port = u16::try_from(self.cursor).expect("ports fit u16");
                self.cursor += 1;
                // Something outside the harness (a service, a process with a fixed port)
                // may sit on it: skip it rather than hand it to a child that would fail.
                if is_free(port) {
                    return port;
                }
            }
            self.claim_block();
        }
    }

    /// Claims the next block no other harness process holds.
    fn claim_block(&mut self) {
        while self.tried < self.blocks {
            let index = self.next_block;
            self.next_block = (self.next_block + 1) % self.blocks;
            self.tried += 1;
            let start = u32::from(self.first) + index * u32::from(BLOCK);
            let start_port = u16::try_from(start).expect("ports fit u16");
            if let Some(lock) = try_lock_block(start_port) {
                self.held.push(lock);
                self.cursor = start;
                self.end = start + u32::from(BLOCK);
                return;
            }
        }
        panic!(
            "no free block of test ports left in {}-{}: {} blocks held by this process, the \
             rest by other harness processes ({})",
            self.first,
            u32::from(self.first) + self.blocks * u32::from(BLOCK) - 1,
            self.held.len(),
            lock_dir().display()
        );
    }
}

/// The directory of the block lock files, one per user (a lock file another user created
/// may not be writable for this one).
fn lock_dir() -> PathBuf {
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata("/proc/self").map_or(0, |m| m.uid());
    std::env::temp_dir().join(format!("switchyard-test-ports-{uid}"))
}

/// The lock on the block starting at `start`, or `None` when another process holds it.
/// Panics when the lock file cannot be used at all: a silent fallback would bring back
/// the races this module exists to prevent.
pub(crate) fn try_lock_block(start: u16) -> Option<File> {
    let dir = lock_dir();
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    let path = dir.join(format!("{start}.lock"));
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
    // flock, not fcntl: the lock belongs to this open file, so even a second open in the
    // same process is refused, and closing another descriptor of the file never drops it.
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Some(file),
        Err(rustix::io::Errno::WOULDBLOCK) => None,
        Err(e) => panic!("cannot lock {}: {e}", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn ports_are_unique_across_threads_and_outside_the_ephemeral_range() {
        let (eph_lo, eph_hi) = ephemeral_range();
        let per_thread = 150;
        let threads: Vec<_> = (0..8)
            .map(|_| {
                std::thread::spawn(move || {
                    (0..per_thread)
                        .map(|i| {
                            // Both entry points share one allocator.
                            if i % 2 == 0 {
                                vec![reserve()]
                            } else {
                                reserve_n::<3>().to_vec()
                            }
                        })
                        .collect::<Vec<_>>()
                        .concat()
                })
            })
            .collect();
        let all: Vec<u16> = threads
            .into_iter()
            .flat_map(|t| t.join().expect("allocating thread"))
            .collect();
        assert_eq!(all.len(), 8 * per_thread / 2 * 4);
        let unique: HashSet<u16> = all.iter().copied().collect();
        assert_eq!(unique.len(), all.len(), "a port was handed out twice");
        for p in &all {
            assert!(
                *p >= FLOOR && !(eph_lo..=eph_hi).contains(p),
                "port {p} is below {FLOOR} or in the ephemeral range {eph_lo}-{eph_hi}"
            );
        }
    }

    #[test]
    fn a_port_held_by_someone_else_is_skipped() {
        // Hold the port the allocator would hand out next: it must move past it.
        let mut alloc = allocator()
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if alloc.cursor >= alloc.end {
            alloc.claim_block();
        }
        let next = u16::try_from(alloc.cursor).expect("ports fit u16");
        // Fails only when something else already holds it, which serves as well.
        let _squatter = std::net::TcpListener::bind(("127.0.0.1", next)).ok();
        let got = alloc.next_port();
        assert_ne!(got, next);
        assert!(is_free(got));
    }

    #[test]
    fn a_block_is_claimed_by_one_holder_at_a_time() {
        // Any block nobody holds, from the top of the range down (the lock is per open
        // file, so a second open here stands for a second process).
        let (first, last) = range();
        let top = last - BLOCK + 1 - (last - first + 1) % BLOCK;
        let (start, held) = (0..100)
            .map(|i| top - i * BLOCK)
            .find_map(|start| try_lock_block(start).map(|f| (start, f)))
            .expect("a free block among the top 100");
        assert!(try_lock_block(start).is_none(), "claimed twice");
        drop(held);
        assert!(try_lock_block(start).is_some(), "free again once released");
    }
}
