//! A fast hash for song names (mostly 5 to 40 bytes): overlapping 8-byte loads mixed by
//! folded 64x64->128 multiplications, in the style of wyhash. Not DoS-resistant, which an
//! offline aggregation does not need; tables stay correct whatever the collisions.

const K0: u64 = 0xa076_1d64_78bd_642f;
const K1: u64 = 0xe703_7ed1_a0b4_28db;
const K2: u64 = 0x8ebc_6af0_9c88_c6e3;

#[inline]
fn mix(a: u64, b: u64) -> u64 {
    let product = u128::from(a) * u128::from(b);
    (product as u64) ^ ((product >> 64) as u64)
}

/// The little-endian u64 at `bytes[at..at + 8]`.
#[inline]
pub(crate) fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(w)
}

/// The little-endian u32 at `bytes[at..at + 4]`.
#[inline]
pub(crate) fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(w)
}

/// Hashes a byte string.
#[inline]
pub(crate) fn hash_bytes(bytes: &[u8]) -> u64 {
    let len = bytes.len();
    let (a, b) = if len >= 8 {
        let mut acc = K2;
        let mut at = 8;
        while at + 8 < len {
            acc = mix(acc ^ u64_at(bytes, at), K1);
            at += 8;
        }
        (u64_at(bytes, 0) ^ acc, u64_at(bytes, len - 8))
    } else if len >= 4 {
        (
            u64::from(u32_at(bytes, 0)),
            u64::from(u32_at(bytes, len - 4)),
        )
    } else if len > 0 {
        let first = u64::from(bytes[0]);
        let mid = u64::from(bytes[len / 2]);
        let last = u64::from(bytes[len - 1]);
        (first << 16 | mid << 8 | last, 0)
    } else {
        (0, 0)
    };
    mix(a ^ K0 ^ len as u64, b ^ K1) ^ (len as u64).wrapping_mul(K2)
}

#[cfg(test)]
mod tests {
    use super::hash_bytes;
    use std::collections::HashSet;

    #[test]
    fn distinct_names_get_distinct_hashes() {
        let mut seen = HashSet::new();
        for i in 0..200_000u32 {
            for name in [
                format!("Song {i}"),
                format!("A much longer song title number {i}"),
            ] {
                assert!(
                    seen.insert(hash_bytes(name.as_bytes())),
                    "collision on {name}"
                );
            }
        }
        assert_ne!(hash_bytes(b"ab"), hash_bytes(b"ba"));
        assert_ne!(hash_bytes(b""), hash_bytes(b"\\0"));
        // High bits (the song tables' tags) vary too.
        let tops: HashSet<u64> = (0..1000u32)
            .map(|i| hash_bytes(&i.to_le_bytes()) >> 57)
            .collect();
        assert!(tops.len() > 100);
    }
}
