//! Internet checksum arithmetic (RFC 1071), and incremental updates (RFC 1624).
//!
//! One's-complement sums do not depend on byte order as long as every 16-bit
//! word is read the same way, so these functions work on the raw values loaded
//! from the packet (`u16`/`u32` read in native order from network-order bytes)
//! and the result is stored back the same way.

/// Folds a 32-bit one's-complement accumulator to 16 bits.
#[inline(always)]
pub const fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// New checksum after one 16-bit word of the covered data changed from `old`
/// to `new` (RFC 1624, eqn. 3: HC' = ~(~HC + ~m + m')).
#[inline(always)]
pub const fn replace16(csum: u16, old: u16, new: u16) -> u16 {
    !fold(!csum as u32 + !old as u32 + new as u32)
}

/// New checksum after a 16-bit field changed that may start at an odd
/// offset of the covered data (a TCP option can sit anywhere). `old` and
/// `new` are the field's two bytes as loaded from the packet; at an odd
/// offset they straddle two checksum words, and their contribution to the
/// sum is the byte-swapped value.
#[inline(always)]
pub const fn replace16_at(csum: u16, old: u16, new: u16, odd: bool) -> u16 {
    if odd {
        replace16(csum, old.swap_bytes(), new.swap_bytes())
    } else {
        replace16(csum, old, new)
    }
}

/// New checksum after a 32-bit field (two words) changed.
#[inline(always)]
pub const fn replace32(csum: u16, old: u32, new: u32) -> u16 {
    let sum = !csum as u32 + (!old & 0xffff) + (!old >> 16) + (new & 0xffff) + (new >> 16);
    !fold(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Straightforward RFC 1071 checksum over bytes, as an independent reference.
    fn reference(bytes: &[u8]) -> u16 {
        let mut sum = 0u32;
        for chunk in bytes.chunks(2) {
            let word = if chunk.len() == 2 {
                u16::from_ne_bytes([chunk[0], chunk[1]])
            } else {
                u16::from_ne_bytes([chunk[0], 0])
            };
            sum += word as u32;
        }
        !fold(sum)
    }

    fn pseudo_random(seed: &mut u32) -> u32 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 17;
        *seed ^= *seed << 5;
        *seed
    }

    #[test]
    fn incremental_updates_match_a_full_recompute() {
        let mut seed = 0x1234_5678;
        for _ in 0..10_000 {
            let mut data = [0u8; 24];
            for b in data.iter_mut() {
                *b = pseudo_random(&mut seed) as u8;
            }
            let before = reference(&data);
            // Change a 32-bit word at an even offset, then a 16-bit one.
            let off = (pseudo_random(&mut seed) % 5) as usize * 4;
            let old32 = u32::from_ne_bytes(data[off..off + 4].try_into().unwrap());
            let new32 = pseudo_random(&mut seed);
            data[off..off + 4].copy_from_slice(&new32.to_ne_bytes());
            let mid = replace32(before, old32, new32);
            assert_eq!(mid, reference(&data), "replace32");
            let off = (pseudo_random(&mut seed) % 12) as usize * 2;
            let old16 = u16::from_ne_bytes([data[off], data[off + 1]]);
            let new16 = pseudo_random(&mut seed) as u16;
            data[off..off + 2].copy_from_slice(&new16.to_ne_bytes());
            let after = replace16(mid, old16, new16);
            // 0x0000 and 0xffff are the same value in one's complement.
            let want = reference(&data);
            assert!(
                after == want || (after ^ want) == 0xffff && (want == 0 || want == 0xffff),
                "replace16 {after:#x} != {want:#x}"
            );
        }
    }

    #[test]
    fn a_field_at_any_offset_is_updated_like_a_full_recompute() {
        let mut seed = 0x9e37_79b9;
        for _ in 0..10_000 {
            let mut data = [0u8; 23];
            for b in data.iter_mut() {
                *b = pseudo_random(&mut seed) as u8;
            }
            let before = reference(&data);
            let off = (pseudo_random(&mut seed) % 21) as usize;
            let old = u16::from_ne_bytes([data[off], data[off + 1]]);
            let new = pseudo_random(&mut seed) as u16;
            data[off..off + 2].copy_from_slice(&new.to_ne_bytes());
            let after = replace16_at(before, old, new, off % 2 == 1);
            let want = reference(&data);
            assert!(
                after == want || (after ^ want) == 0xffff && (want == 0 || want == 0xffff),
                "offset {off}: {after:#x} != {want:#x}"
            );
        }
    }

    #[test]
    fn fold_carries_twice() {
        assert_eq!(fold(0xffff_ffff), 0xffff);
        assert_eq!(fold(0x0001_fffe), 0xffff);
        assert_eq!(fold(0x0002_0000), 0x0002);
    }
}
