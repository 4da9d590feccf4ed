//! The one seedable random number generator of the qkv crates (SplitMix64).
//!
//! Training batches (`qkv-trainer`), token sampling (`qkv-transformer`), the recall task's
//! split estimate (`qkv-data`) and every test input draw from [`SplitMix64`]. Its state is a
//! single public `u64`: saving it and building a generator from it again resumes the very
//! same stream, which is what exact resumption of a training run needs.
#![doc = include_str!("../README.md")]

/// SplitMix64: a counter advanced by the golden-ratio constant, then mixed (Steele, Lea and
/// Flood, "Fast splittable pseudorandom number generators", 2014). Not for cryptography.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitMix64 {
    /// The whole state; a generator built from a saved state continues its stream.
    pub state: u64,
}

impl SplitMix64 {
    /// A generator seeded with `seed` (any value, zero included).
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A float uniform in `[0, 1)`, from the top 53 bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A float uniform in `[low, high)`, from the top 24 bits (every value exact in `f32`).
    pub fn uniform_f32(&mut self, low: f32, high: f32) -> f32 {
        let unit = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        low + unit * (high - low)
    }

    /// An integer uniform in `0..n`; `0` when `n` is `0`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_f64() * n as f64) as usize % n.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::SplitMix64;

    #[test]
    fn the_stream_matches_the_published_reference_values() {
        // The first outputs for seed 1234567 of the reference C implementation
        // (splitmix64.c by Sebastiano Vigna, public domain).
        let mut rng = SplitMix64::new(1234567);
        let want = [
            6457827717110365317u64,
            3203168211198807973,
            9817491932198370423,
            4593380528125082431,
            16408922859458223821,
        ];
        for w in want {
            assert_eq!(rng.next_u64(), w);
        }
    }

    #[test]
    fn draws_stay_in_range_and_cover_it() {
        let mut rng = SplitMix64::new(9);
        let mut seen = [0usize; 7];
        for _ in 0..7000 {
            seen[rng.below(7)] += 1;
        }
        // Each of 7 buckets expects 1000; 800 is more than six standard deviations below.
        assert!(seen.iter().all(|&c| c > 800), "{seen:?}");
        assert_eq!(rng.below(0), 0);
        for _ in 0..1000 {
            let x = rng.uniform_f32(-2.0, 3.0);
            assert!((-2.0..3.0).contains(&x));
            let f = rng.next_f64();
            assert!((0.0..1.0).contains(&f));
        }
    }

    #[test]
    fn a_saved_state_resumes_the_stream() {
        let mut a = SplitMix64::new(77);
        a.next_u64();
        let mut b = SplitMix64 { state: a.state };
        for _ in 0..10 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
    }
}
