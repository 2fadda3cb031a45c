//! Event and table types: what arrives on the topics ([`events`]) and what the lakehouse holds
//! ([`tables`]), with their JSON and Arrow schemas.

pub mod events;
pub mod tables;

pub use events::EventKind;
pub use tables::{TableDef, catalog};

/// FNV-1a over `parts`, a zero byte between consecutive parts: stable across builds and
/// platforms (std's hasher is not promised to be). For ids derived from content or keys
/// (order and ticket ids, chunk-text hashes), not for anything an attacker may choose to collide.
pub fn stable_hash(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, part) in parts.iter().enumerate() {
        let separator = (i > 0).then_some(0u8);
        for b in separator.into_iter().chain(part.bytes()) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}
