//! Another process's memory and CPU time from `/proc`, for the density driver (the CPU
//! reading is the agent's own, which the reference gateway reports of itself).
//!
//! Memory is the private part of the process's mappings (`smaps_rollup`: `Private_Clean` +
//! `Private_Dirty`): what the process itself holds in user space, without shared library
//! pages, and without kernel socket buffers (which live outside every process's mappings).

use std::io;

/// Value of a `Name:   123 kB` line (as in `smaps_rollup` and `status`), in bytes.
pub fn kb_field(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?.strip_prefix(':')?;
        let mut parts = rest.split_whitespace();
        let kb: u64 = parts.next()?.parse().ok()?;
        (parts.next() == Some("kB")).then_some(kb * 1024)
    })
}

/// Private bytes from the text of `/proc/<pid>/smaps_rollup`.
pub fn private_bytes(smaps_rollup: &str) -> Option<u64> {
    Some(kb_field(smaps_rollup, "Private_Clean")? + kb_field(smaps_rollup, "Private_Dirty")?)
}

/// Private user-space bytes of process `pid` now.
pub fn private_memory(pid: u32) -> io::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
    private_bytes(&text).ok_or_else(|| io::Error::other("no Private_* lines in smaps_rollup"))
}

/// CPU time (user + system, every thread) process `pid` has used so far.
pub use switchyard_gateway_agent::agent::process_cpu_time as cpu_time;

#[cfg(test)]
mod tests {
    use super::*;

    const ROLLUP: &str = "55d0c0a00000-7ffd1a7f2000 ---p 00000000 00:00 0          [rollup]
Rss:               11264 kB
Pss:                9034 kB
Shared_Clean:       2560 kB
Shared_Dirty:          0 kB
Private_Clean:      1024 kB
Private_Dirty:      7680 kB
Referenced:        11264 kB
Anonymous:          7680 kB
";

    #[test]
    fn private_memory_is_clean_plus_dirty() {
        assert_eq!(kb_field(ROLLUP, "Rss"), Some(11264 * 1024));
        assert_eq!(private_bytes(ROLLUP), Some((1024 + 7680) * 1024));
        // A prefix of another name is not that name.
        assert_eq!(kb_field(ROLLUP, "Private"), None);
        assert_eq!(private_bytes("Rss: 1 kB\n"), None);
    }

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        assert!(private_memory(me).unwrap() > 0);
        assert!(cpu_time(me).is_ok());
    }
}
