//! The numeric limits of the contracts, in one place: the router, the gateway and the
//! client check the same numbers, so a value one side accepts is never refused by another.

use std::time::Duration;

/// Longest `client_id` (Route and HELLO), in bytes.
pub const MAX_CLIENT_ID: usize = 256;
/// Candidates a Route answer may hold.
pub const MAX_ROUTE_LIMIT: u32 = 16;
/// Candidates when a Route request leaves `limit` at 0.
pub const DEFAULT_ROUTE_LIMIT: u32 = 3;
/// Entries in a Route request's `exclude` and `failures`.
pub const MAX_ROUTE_LIST: usize = 64;
/// Longest free-text field of a request (region, zone, network, drain reason, ...), in bytes.
pub const MAX_FIELD: usize = 256;
/// Largest PING/PONG payload, in bytes.
pub const MAX_PING_PAYLOAD: usize = 64;
/// Longest `session_id` a gateway hands out or takes back, in bytes.
pub const MAX_SESSION_ID: usize = 64;
/// Default largest frame (the length field's value), 64 KiB.
pub const DEFAULT_MAX_FRAME: usize = 64 * 1024;
/// Bytes of a DATA frame that are not application payload: the kind byte and the `u64`
/// sequence number.
pub const DATA_OVERHEAD: usize = 1 + 8;
/// Shortest lease TTL: etcd grants whole seconds, and a keepalive every TTL/3 needs room.
pub const MIN_TTL: Duration = Duration::from_secs(2);

/// Floors of a router's client policy: the router refuses a policy below them when it loads
/// it, and the client clamps what a router says up to them, so one typo in a policy file
/// cannot make a million phones ping every 30 ms or reconnect in a tight loop. (An app's
/// own local settings are its own choice and are not clamped.)
pub mod policy_floor {
    use std::time::Duration;
    /// Shortest heartbeat interval a router may ask for.
    pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
    /// Shortest heartbeat timeout a router may ask for.
    pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_millis(500);
    /// Smallest first backoff ceiling a router may ask for.
    pub const BACKOFF_BASE: Duration = Duration::from_millis(100);
}

/// Largest application payload one DATA frame can carry under a frame limit of `max_frame`.
pub fn max_data_payload(max_frame: usize) -> usize {
    max_frame.saturating_sub(DATA_OVERHEAD)
}

/// The TTL rule of contract 1: whole seconds, at least [`MIN_TTL`].
pub fn ttl_is_valid(ttl: Duration) -> bool {
    ttl >= MIN_TTL && ttl.subsec_nanos() == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_rule() {
        assert!(ttl_is_valid(Duration::from_secs(2)));
        assert!(ttl_is_valid(Duration::from_secs(10)));
        assert!(!ttl_is_valid(Duration::from_millis(1999)));
        assert!(!ttl_is_valid(Duration::from_millis(2500)));
    }

    #[test]
    fn data_payload_leaves_room_for_kind_and_sequence() {
        assert_eq!(max_data_payload(DEFAULT_MAX_FRAME), 64 * 1024 - 9);
        assert_eq!(max_data_payload(3), 0);
    }
}
