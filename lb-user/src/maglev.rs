//! Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable
//! Software Network Load Balancer", NSDI 2016): builds the lookup ring that the
//! XDP program indexes with a flow hash.
//!
//! # Algorithm
//!
//! The ring ("lookup table") has a prime size `M`. Every backend gets its own
//! permutation of the slots `0..M`, derived from two hashes of its identity:
//!
//! ```text
//! offset = h1(identity) % M
//! skip   = h2(identity) % (M - 1) + 1
//! permutation[j] = (offset + j * skip) % M
//! ```
//!
//! Because `M` is prime and `1 <= skip < M`, every permutation visits every
//! slot exactly once. The table is then filled in turns: whenever a backend
//! gets a turn, it walks its permutation from where it stopped last time (its
//! cursor) to the first slot nobody has claimed yet, and claims it. This goes
//! on until every slot is taken, so there are no holes.
//!
//! The permutations are never materialised: each backend keeps only its
//! current position, and advances by `skip` (mod `M`) per step.
//!
//! # Weights
//!
//! With equal weights every backend gets exactly one turn per round, as in the
//! paper, so every backend ends up with `floor(M/N)` or `ceil(M/N)` slots. With
//! unequal weights, backend `i` accumulates `weight_i / max_weight` credit per
//! round and takes one turn per whole unit of credit: its `k`-th turn falls in
//! round `ceil(k * max_weight / weight_i)`. Within a round, turns go in
//! identity order. The turns are scheduled with a priority queue keyed by
//! `(round, identity rank)`, so backends with small weights cost nothing in
//! the rounds in which they do not claim a slot.
//!
//! # Determinism
//!
//! The ring must be identical on every load balancer (so that a flow keeps its
//! backend when it fails over to another machine) and across restarts. So the
//! backends are ranked by identity (not by the caller's order), and the hashes
//! are a fixed, self-contained function of the identity bytes (FNV-1a 64
//! followed by a SplitMix64 finaliser, with two different seeds) rather than
//! std's randomly seeded hasher. Only the indices written into the ring refer
//! to positions in the caller's slice.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use lb_ebpf::NO_BACKEND;

/// One backend as seen by the ring builder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingBackend {
    /// Stable identity that the backend's ring slots are derived from, e.g.
    /// `"10.0.2.11:8080"`. Must be unique within one ring.
    pub identity: String,
    /// Relative share of the ring; must be at least 1.
    pub weight: u32,
}

/// Why a ring could not be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MaglevError {
    #[error("maglev ring size {0} is not a prime number")]
    RingSizeNotPrime(u32),
    #[error(
        "maglev ring size {ring_size} is too small for {backends} backends \
         (it must be greater than the number of backends)"
    )]
    RingTooSmall { ring_size: u32, backends: usize },
    #[error("backend {identity:?} has weight 0 (remove the backend instead)")]
    ZeroWeight { identity: String },
    #[error("duplicate backend identity {identity:?}")]
    DuplicateIdentity { identity: String },
}

/// Whether `n` is a prime number (deterministic trial division by 6k±1; at
/// most ~22,000 divisions for any `u32`).
pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    if n < 4 {
        return true; // 2, 3
    }
    if n.is_multiple_of(2) || n.is_multiple_of(3) {
        return false;
    }
    let n = u64::from(n);
    let mut d: u64 = 5;
    while d * d <= n {
        if n.is_multiple_of(d) || n.is_multiple_of(d + 2) {
            return false;
        }
        d += 6;
    }
    true
}

/// A digest of the ring [`build_ring`] makes of `backends` and
/// `ring_size`: 16 hex digits of FNV-1a over the ring size and the sorted
/// (identity, weight) pairs. The ring depends on exactly these (the builder
/// ranks backends by identity, so their order does not count), so two load
/// balancers show the same digest exactly when they build the same ring;
/// `lbctl vips` and `lb_vip_ring_info` show it for comparing the two hosts
/// of a pair.
pub fn ring_digest(backends: &[RingBackend], ring_size: u32) -> String {
    let mut live: Vec<(&str, u32)> = backends
        .iter()
        .map(|b| (b.identity.as_str(), b.weight))
        .collect();
    live.sort();
    let mut text = format!("{ring_size}");
    for (identity, weight) in &live {
        text.push_str(&format!(";{identity}*{weight}"));
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Builds a Maglev ring of `ring_size` entries for `backends`.
///
/// Every entry is an index into `backends` (as `u32`); if `backends` is empty,
/// every entry is [`NO_BACKEND`]. The result depends only on the set of
/// (identity, weight) pairs and on `ring_size`, not on the order of
/// `backends` nor on the machine or process.
///
/// # Errors
///
/// `ring_size` must be prime and greater than `backends.len()`; identities
/// must be unique and weights non-zero.
pub fn build_ring(backends: &[RingBackend], ring_size: u32) -> Result<Vec<u32>, MaglevError> {
    if !is_prime(ring_size) {
        return Err(MaglevError::RingSizeNotPrime(ring_size));
    }
    if backends.len() >= ring_size as usize {
        return Err(MaglevError::RingTooSmall {
            ring_size,
            backends: backends.len(),
        });
    }
    // Rank the backends by identity; a duplicate shows up as equal neighbours.
    let mut order: Vec<usize> = (0..backends.len()).collect();
    order.sort_unstable_by(|&a, &b| backends[a].identity.cmp(&backends[b].identity));
    for pair in order.windows(2) {
        if backends[pair[0]].identity == backends[pair[1]].identity {
            return Err(MaglevError::DuplicateIdentity {
                identity: backends[pair[0]].identity.clone(),
            });
        }
    }
    if let Some(&i) = order.iter().find(|&&i| backends[i].weight == 0) {
        return Err(MaglevError::ZeroWeight {
            identity: backends[i].identity.clone(),
        });
    }

    // `ring_size` is prime, hence >= 2, and NO_BACKEND (u32::MAX) can never be
    // a backend index because there are fewer backends than slots.
    let mut ring = vec![NO_BACKEND; ring_size as usize];
    if backends.is_empty() {
        return Ok(ring);
    }

    let m = u64::from(ring_size);
    // Per ranked backend: its caller index and its permutation cursor.
    let mut cursors: Vec<Cursor> = order
        .iter()
        .map(|&i| {
            let id = backends[i].identity.as_bytes();
            let offset = identity_hash(id, SEED_OFFSET) % m;
            let skip = identity_hash(id, SEED_SKIP) % (m - 1) + 1;
            Cursor {
                index: i as u32, // < ring_size, so it fits
                weight: u64::from(backends[i].weight),
                pos: offset,
                skip,
                turns: 0,
            }
        })
        .collect();
    let max_weight = cursors.iter().map(|c| c.weight).max().unwrap_or(1);

    // Pending turns, earliest first: (round, rank). Every backend has exactly
    // one pending turn; each is rescheduled after it is taken.
    let mut turns: BinaryHeap<Reverse<(u64, usize)>> = cursors
        .iter()
        .enumerate()
        .map(|(rank, c)| Reverse((c.turn_round(1, max_weight), rank)))
        .collect();

    let mut filled: u64 = 0;
    while filled < m {
        let Some(Reverse((_, rank))) = turns.pop() else {
            unreachable!("every backend always has a pending turn");
        };
        let c = &mut cursors[rank];
        // The permutation visits every slot, and at least one is still free,
        // so this terminates within `m` steps.
        while ring[c.pos as usize] != NO_BACKEND {
            c.advance(m);
        }
        ring[c.pos as usize] = c.index;
        c.advance(m);
        filled += 1;
        c.turns += 1;
        let next = c.turn_round(c.turns + 1, max_weight);
        turns.push(Reverse((next, rank)));
    }
    Ok(ring)
}

/// A backend's state while the ring is being filled.
struct Cursor {
    /// Position in the caller's slice (the value written into the ring).
    index: u32,
    weight: u64,
    /// Next slot of the backend's permutation to try.
    pos: u64,
    skip: u64,
    /// Turns taken so far.
    turns: u64,
}

impl Cursor {
    /// Moves to the next slot of the permutation: `pos = (pos + skip) % m`.
    #[inline]
    fn advance(&mut self, m: u64) {
        self.pos += self.skip; // both < m <= u32::MAX: no overflow
        if self.pos >= m {
            self.pos -= m;
        }
    }

    /// The round (1-based) of this backend's `k`-th turn: with
    /// `weight / max_weight` credit earned per round, that is the first round
    /// `r` with `r * weight / max_weight >= k`.
    #[inline]
    fn turn_round(&self, k: u64, max_weight: u64) -> u64 {
        // k <= ring_size and max_weight <= u32::MAX, so the product fits in
        // u64; saturate anyway so that no input can overflow.
        k.saturating_mul(max_weight).div_ceil(self.weight)
    }
}

/// Seeds of the two identity hashes (arbitrary, fixed forever: changing them
/// reshuffles every ring).
const SEED_OFFSET: u64 = 0x6c62_6d67_6f66_7374; // "lbmgofst"
const SEED_SKIP: u64 = 0x6c62_6d67_736b_6970; // "lbmgskip"

/// FNV-1a 64 of `bytes`.
fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes
        .iter()
        .fold(OFFSET_BASIS, |h, &b| (h ^ u64::from(b)).wrapping_mul(PRIME))
}

/// SplitMix64's output function: a bijective 64-bit mixer with good
/// avalanche, used to turn one FNV hash into two independent-looking ones.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Stable 64-bit hash of an identity under `seed`.
fn identity_hash(bytes: &[u8], seed: u64) -> u64 {
    mix64(fnv1a64(bytes) ^ seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: u32 = 65_537;

    fn backend(identity: &str, weight: u32) -> RingBackend {
        RingBackend {
            identity: identity.to_owned(),
            weight,
        }
    }

    /// `n` equally weighted backends with realistic identities.
    fn equal(n: usize) -> Vec<RingBackend> {
        (0..n)
            .map(|i| backend(&format!("10.0.{}.{}:8080", i / 250, i % 250 + 1), 1))
            .collect()
    }

    /// Entries per backend index.
    fn counts(ring: &[u32], n: usize) -> Vec<usize> {
        let mut c = vec![0usize; n];
        for &e in ring {
            c[e as usize] += 1;
        }
        c
    }

    /// The ring with indices replaced by identities.
    fn by_identity<'a>(ring: &[u32], backends: &'a [RingBackend]) -> Vec<&'a str> {
        ring.iter()
            .map(|&e| backends[e as usize].identity.as_str())
            .collect()
    }

    /// Deterministic shuffle (xorshift-driven Fisher-Yates) for tests.
    fn shuffled(v: &[RingBackend], mut state: u64) -> Vec<RingBackend> {
        let mut v = v.to_vec();
        for i in (1..v.len()).rev() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            v.swap(i, (state % (i as u64 + 1)) as usize);
        }
        v
    }

    fn assert_full(ring: &[u32], n: usize, ring_size: u32) {
        assert_eq!(ring.len(), ring_size as usize);
        for (slot, &e) in ring.iter().enumerate() {
            assert!(
                (e as usize) < n,
                "slot {slot} holds {e}, not an index below {n}"
            );
        }
    }

    /// Asserts that every backend's share is within `tolerance` (relative) of
    /// `ring_size * weight / total_weight`.
    fn assert_proportional(backends: &[RingBackend], ring_size: u32, tolerance: f64) {
        let ring = build_ring(backends, ring_size).unwrap();
        assert_full(&ring, backends.len(), ring_size);
        let total: f64 = backends.iter().map(|b| f64::from(b.weight)).sum();
        for (b, &got) in backends.iter().zip(&counts(&ring, backends.len())) {
            let fair = f64::from(ring_size) * f64::from(b.weight) / total;
            let dev = (got as f64 - fair).abs() / fair;
            assert!(
                dev <= tolerance,
                "{} (weight {}) got {got} slots, fair share {fair:.1} (off by {:.2}%)",
                b.identity,
                b.weight,
                dev * 100.0
            );
        }
    }

    // ---- is_prime ----

    #[test]
    fn is_prime_known_primes() {
        for p in [
            2,
            3,
            5,
            7,
            13,
            4099,
            65_521,
            65_537,
            65_539,
            655_373,
            2_147_483_647,
            4_294_967_279,
            4_294_967_291, // largest prime below 2^32
        ] {
            assert!(is_prime(p), "{p} is prime");
        }
    }

    #[test]
    fn is_prime_known_composites() {
        for c in [
            0,
            1,
            4,
            9,
            25,
            49,
            65_535,        // 3 * 5 * 17 * 257
            65_536,        // 2^16
            65_541,        // 3 * 7 * 3121
            655_371,       // 3^6 * 29 * 31
            4_294_836_225, // 65535^2
            4_294_967_071, // 65521 * 65551 (product of two large primes)
            4_294_967_295, // 2^32 - 1 = 3 * 5 * 17 * 257 * 65537
        ] {
            assert!(!is_prime(c), "{c} is composite");
        }
    }

    #[test]
    fn is_prime_matches_sieve() {
        const N: usize = 200_000;
        let mut sieve = vec![true; N];
        sieve[0] = false;
        sieve[1] = false;
        for i in 2..N {
            if sieve[i] {
                for j in (i * i..N).step_by(i) {
                    sieve[j] = false;
                }
            }
        }
        for (n, &p) in sieve.iter().enumerate() {
            assert_eq!(is_prime(n as u32), p, "is_prime({n})");
        }
    }

    // ---- hashing ----

    #[test]
    fn fnv1a64_reference_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn mix64_reference_vectors() {
        // SplitMix64 outputs for seed 0: its state goes 0x9e3779b97f4a7c15, ...
        assert_eq!(mix64(0x9e37_79b9_7f4a_7c15), 0xe220_a839_7b1d_cdaf);
        assert_eq!(mix64(0), 0);
    }

    #[test]
    fn two_seeds_give_different_hashes() {
        for id in ["10.0.2.11:8080", "", "a"] {
            let b = id.as_bytes();
            assert_ne!(identity_hash(b, SEED_OFFSET), identity_hash(b, SEED_SKIP));
        }
    }

    // ---- basic shape ----

    #[test]
    fn empty_set_is_all_no_backend() {
        for size in [2, 3, 4099, M] {
            let ring = build_ring(&[], size).unwrap();
            assert_eq!(ring.len(), size as usize);
            assert!(ring.iter().all(|&e| e == NO_BACKEND));
        }
    }

    #[test]
    fn one_backend_takes_every_entry() {
        for (size, weight) in [(2, 1), (4099, 1), (M, 7), (M, u32::MAX)] {
            let ring = build_ring(&[backend("10.0.2.11:8080", weight)], size).unwrap();
            assert_eq!(ring.len(), size as usize);
            assert!(ring.iter().all(|&e| e == 0));
        }
    }

    #[test]
    fn no_holes() {
        for (n, size) in [
            (2, 3),
            (6, 7), // n = M - 1: every backend gets exactly one slot
            (3, 4099),
            (10, 4099),
            (1000, 4099),
            (4098, 4099),
            (10, M),
            (1000, M),
        ] {
            let backends = equal(n);
            let ring = build_ring(&backends, size).unwrap();
            assert_full(&ring, n, size);
            assert!(counts(&ring, n).iter().all(|&c| c > 0), "n={n} M={size}");
        }
        // Weighted, including extreme ratios.
        let backends = vec![
            backend("a", 1),
            backend("b", 1000),
            backend("c", u32::MAX),
            backend("d", 3),
        ];
        let ring = build_ring(&backends, M).unwrap();
        assert_full(&ring, backends.len(), M);
    }

    #[test]
    fn ring_size_minus_one_backends_get_one_slot_each() {
        let backends = equal(12);
        let ring = build_ring(&backends, 13).unwrap();
        assert_full(&ring, 12, 13);
        let c = counts(&ring, 12);
        // 13 slots, 12 backends: one round gives each one slot, the first
        // ranked backend takes the last.
        assert_eq!(c.iter().sum::<usize>(), 13);
        assert!(c.iter().all(|&x| x == 1 || x == 2));
        assert_eq!(c.iter().filter(|&&x| x == 2).count(), 1);
    }

    // ---- determinism ----

    #[test]
    fn deterministic_across_calls() {
        let backends = equal(37);
        assert_eq!(
            build_ring(&backends, M).unwrap(),
            build_ring(&backends, M).unwrap()
        );
    }

    #[test]
    fn independent_of_input_order() {
        let mut backends = equal(50);
        for (i, b) in backends.iter_mut().enumerate() {
            b.weight = (i % 4 + 1) as u32;
        }
        let base = build_ring(&backends, M).unwrap();
        let base_ids = by_identity(&base, &backends);
        for seed in [1u64, 0xdead_beef, 42] {
            let other = shuffled(&backends, seed);
            assert_ne!(other, backends);
            let ring = build_ring(&other, M).unwrap();
            assert_eq!(by_identity(&ring, &other), base_ids, "seed {seed}");
        }
        let mut reversed = backends.clone();
        reversed.reverse();
        let ring = build_ring(&reversed, M).unwrap();
        assert_eq!(by_identity(&ring, &reversed), base_ids);
    }

    /// Pins the exact output so that an accidental change of the hash, the
    /// seeds or the fill order (which would reshuffle every flow on an upgrade
    /// and break consistency between load balancers of different versions)
    /// fails loudly.
    #[test]
    fn golden_output() {
        let backends = vec![
            backend("10.0.2.11:8080", 1),
            backend("10.0.2.12:8080", 1),
            backend("10.0.2.13:8080", 2),
        ];
        let ring = build_ring(&backends, 31).unwrap();
        assert_eq!(ring, GOLDEN_31);
        let ring = build_ring(&backends, M).unwrap();
        // FNV-1a over the little-endian entries.
        let digest = fnv1a64(
            &ring
                .iter()
                .flat_map(|e| e.to_le_bytes())
                .collect::<Vec<u8>>(),
        );
        assert_eq!(digest, GOLDEN_M_DIGEST);
    }

    // Cross-checked against an independent, naive implementation of the
    // same specification (materialised permutations, explicit credit rounds).
    const GOLDEN_31: [u32; 31] = [
        2, 1, 0, 0, 0, 2, 2, 1, 2, 0, 2, 2, 1, 2, 0, 1, 2, 2, 2, 1, 1, 0, 2, 0, 2, 1, 0, 1, 2, 2, 2,
    ];
    const GOLDEN_M_DIGEST: u64 = 0x8839_564e_94d7_9f57;

    // ---- balance ----

    #[test]
    fn equal_weights_are_balanced() {
        for n in [3, 5, 10, 100] {
            assert_proportional(&equal(n), M, 0.03);
        }
        assert_proportional(&equal(3), 4099, 0.03);
        assert_proportional(&equal(1000), 655_373, 0.03);
    }

    #[test]
    fn equal_weights_differ_by_at_most_one_slot() {
        // One turn per backend per round: shares are floor(M/N) or ceil(M/N).
        for n in [3, 7, 10, 100, 1000] {
            let ring = build_ring(&equal(n), M).unwrap();
            let c = counts(&ring, n);
            let (min, max) = (c.iter().min().unwrap(), c.iter().max().unwrap());
            assert!(max - min <= 1, "n={n}: min {min}, max {max}");
        }
    }

    #[test]
    fn weights_1_2_3_are_proportional() {
        let backends = vec![backend("a:1", 1), backend("b:1", 2), backend("c:1", 3)];
        assert_proportional(&backends, M, 0.03);
        assert_proportional(&backends, 4099, 0.03);
    }

    #[test]
    fn mixed_weights_are_proportional() {
        let backends: Vec<RingBackend> = (0..40)
            .map(|i| backend(&format!("192.168.1.{i}:443"), [1, 2, 5, 10][i % 4]))
            .collect();
        assert_proportional(&backends, M, 0.03);
        // Large weights (no overflow) with ratio 1:2.
        let backends = vec![
            backend("x", u32::MAX / 2),
            backend("y", u32::MAX - 1),
            backend("z", u32::MAX / 2),
        ];
        assert_proportional(&backends, M, 0.03);
    }

    #[test]
    fn scaling_all_weights_changes_nothing() {
        let a = vec![backend("a", 1), backend("b", 2), backend("c", 3)];
        let b = vec![backend("a", 10), backend("b", 20), backend("c", 30)];
        assert_eq!(build_ring(&a, M).unwrap(), build_ring(&b, M).unwrap());
    }

    // ---- minimal disruption ----

    /// Counts changed entries between two rings given as identities, split
    /// into those that pointed to `gone` (if any) and the others.
    fn diff(before: &[&str], after: &[&str], gone: Option<&str>) -> (usize, usize) {
        let (mut of_gone, mut others) = (0, 0);
        for (b, a) in before.iter().zip(after) {
            if b != a {
                if Some(*b) == gone {
                    of_gone += 1;
                } else {
                    others += 1;
                }
            }
        }
        (of_gone, others)
    }

    #[test]
    fn removing_a_backend_moves_little_else() {
        let all = equal(10);
        let before_ring = build_ring(&all, M).unwrap();
        let before = by_identity(&before_ring, &all);
        for removed in 0..all.len() {
            let mut rest = all.clone();
            let gone = rest.remove(removed);
            let after_ring = build_ring(&rest, M).unwrap();
            let after = by_identity(&after_ring, &rest);
            let (of_gone, others) = diff(&before, &after, Some(&gone.identity));
            // Every entry of the removed backend must move.
            assert_eq!(
                of_gone,
                before.iter().filter(|&&b| b == gone.identity).count()
            );
            assert!(
                (others as f64) < 0.03 * f64::from(M),
                "removing {}: {others} other entries changed",
                gone.identity
            );
        }
    }

    #[test]
    fn adding_a_backend_moves_about_its_share() {
        let all = equal(11);
        for added in 0..all.len() {
            let mut ten = all.clone();
            ten.remove(added);
            let before_ring = build_ring(&ten, M).unwrap();
            let before = by_identity(&before_ring, &ten);
            let after_ring = build_ring(&all, M).unwrap();
            let after = by_identity(&after_ring, &all);
            let (_, changed) = diff(&before, &after, None);
            let limit = f64::from(M) * (1.0 / 11.0 + 0.03);
            assert!(
                (changed as f64) < limit,
                "adding {}: {changed} entries changed (limit {limit:.0})",
                all[added].identity
            );
        }
    }

    #[test]
    fn reweighting_a_backend_moves_little_else() {
        let before_set = equal(10);
        let mut after_set = before_set.clone();
        after_set[4].weight = 2;
        let before_ring = build_ring(&before_set, M).unwrap();
        let after_ring = build_ring(&after_set, M).unwrap();
        let (before, after) = (
            by_identity(&before_ring, &before_set),
            by_identity(&after_ring, &after_set),
        );
        // Backend 4 goes from 1/10 to 2/11 of the ring (+~8.2%); other
        // backends should mostly only lose entries to it.
        let heavy = after_set[4].identity.as_str();
        let collateral = before
            .iter()
            .zip(&after)
            .filter(|(b, a)| b != a && **a != heavy)
            .count();
        assert!(
            (collateral as f64) < 0.03 * f64::from(M),
            "{collateral} entries moved between unchanged backends"
        );
    }

    // ---- errors ----

    #[test]
    fn ring_size_not_prime() {
        for size in [0, 1, 4, 65_535, 65_536] {
            assert_eq!(
                build_ring(&equal(1), size),
                Err(MaglevError::RingSizeNotPrime(size))
            );
            assert_eq!(
                build_ring(&[], size),
                Err(MaglevError::RingSizeNotPrime(size))
            );
        }
        let msg = MaglevError::RingSizeNotPrime(65_536).to_string();
        assert!(msg.contains("65536") && msg.contains("prime"), "{msg}");
    }

    #[test]
    fn ring_too_small() {
        assert_eq!(
            build_ring(&equal(3), 3),
            Err(MaglevError::RingTooSmall {
                ring_size: 3,
                backends: 3
            })
        );
        assert_eq!(
            build_ring(&equal(5), 2),
            Err(MaglevError::RingTooSmall {
                ring_size: 2,
                backends: 5
            })
        );
        assert!(build_ring(&equal(2), 3).is_ok());
        let msg = build_ring(&equal(7), 7).unwrap_err().to_string();
        assert!(
            msg.contains("7 backends") && msg.contains("size 7"),
            "{msg}"
        );
    }

    #[test]
    fn zero_weight() {
        let backends = vec![backend("a", 1), backend("b", 0), backend("c", 1)];
        let err = build_ring(&backends, M).unwrap_err();
        assert_eq!(
            err,
            MaglevError::ZeroWeight {
                identity: "b".into()
            }
        );
        assert!(err.to_string().contains("\"b\""), "{err}");
    }

    #[test]
    fn duplicate_identity() {
        let backends = vec![
            backend("10.0.2.11:8080", 1),
            backend("10.0.2.12:8080", 1),
            backend("10.0.2.11:8080", 3),
        ];
        let err = build_ring(&backends, M).unwrap_err();
        assert_eq!(
            err,
            MaglevError::DuplicateIdentity {
                identity: "10.0.2.11:8080".into()
            }
        );
        assert!(err.to_string().contains("10.0.2.11:8080"), "{err}");
    }
}
