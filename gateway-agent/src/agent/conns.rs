//! Counting a gateway's client connections from the kernel's TCP tables, so a gateway in
//! any language needs no cooperation: ESTABLISHED sockets whose *local* port is the
//! gateway's listening port.

use std::io;

/// The kernel's state code for ESTABLISHED in `/proc/net/tcp{,6}`.
const ESTABLISHED: &str = "01";

/// Counts ESTABLISHED sockets with local port `port` in the text of `/proc/net/tcp` or
/// `/proc/net/tcp6`. Lines that do not parse (the header, truncated lines) are skipped.
pub(crate) fn count_established(table: &str, port: u16) -> u64 {
    table
        .lines()
        .filter(|line| {
            let mut fields = line.split_whitespace();
            // sl, local_address, rem_address, st, …
            let (Some(_), Some(local), Some(_), Some(state)) =
                (fields.next(), fields.next(), fields.next(), fields.next())
            else {
                return false;
            };
            state == ESTABLISHED && local_port(local) == Some(port)
        })
        .count() as u64
}

/// The port of a `HEXADDR:HEXPORT` address field.
fn local_port(field: &str) -> Option<u16> {
    let (_, port) = field.rsplit_once(':')?;
    u16::from_str_radix(port, 16).ok()
}

/// Reads both tables and counts; a missing `tcp6` (IPv6 disabled) counts as empty.
pub(crate) fn count_on_port(port: u16) -> io::Result<u64> {
    let v4 = std::fs::read_to_string("/proc/net/tcp")?;
    let v6 = match std::fs::read_to_string("/proc/net/tcp6") {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    Ok(count_established(&v4, port) + count_established(&v6, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Port 7200 = 0x1C20. Listening (0A), two established inbound, one TIME_WAIT (06), one
    // outbound connection *to* 7200 (remote port, must not count), one on another port.
    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1C20 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 1 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1C20 0100007F:D431 01 00000000:00000000 00:00000000 00000000  1000        0 2 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:1C20 0100007F:D433 01 00000000:00000000 00:00000000 00000000  1000        0 3 1 0000000000000000 20 4 30 10 -1
   3: 0100007F:1C20 0100007F:D435 06 00000000:00000000 03:00001580 00000000     0        0 0 3 0000000000000000
   4: 0100007F:D431 0100007F:1C20 01 00000000:00000000 00:00000000 00000000  1000        0 4 1 0000000000000000 20 4 30 10 -1
   5: 0100007F:0050 0100007F:D437 01 00000000:00000000 00:00000000 00000000  1000        0 5 1 0000000000000000 20 4 30 10 -1
   6: garbage
";

    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:1C20 00000000000000000000000001000000:E001 01 00000000:00000000 00:00000000 00000000  1000        0 9 1 0000000000000000 20 4 30 10 -1
";

    #[test]
    fn counts_established_on_the_local_port_only() {
        assert_eq!(count_established(TCP, 7200), 2);
        assert_eq!(count_established(TCP, 80), 1);
        assert_eq!(count_established(TCP, 9999), 0);
        assert_eq!(count_established(TCP6, 7200), 1);
        assert_eq!(count_established("", 7200), 0);
    }

    #[test]
    fn reads_the_real_tables() {
        // Whatever the host has, reading must work on Linux.
        assert!(count_on_port(1).is_ok());
    }
}
