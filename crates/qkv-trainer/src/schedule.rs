//! The learning-rate schedule: linear warm-up, then cosine decay to a floor (nanoGPT's).

/// Linear warm-up for `warmup_iters`, cosine decay from `lr` to `min_lr` until
/// `decay_iters`, then `min_lr`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WarmupCosine {
    /// Peak learning rate.
    pub lr: f64,
    /// Floor reached at `decay_iters`.
    pub min_lr: f64,
    /// Steps of linear warm-up.
    pub warmup_iters: usize,
    /// Step at which the cosine reaches `min_lr`.
    pub decay_iters: usize,
}

impl WarmupCosine {
    /// The learning rate at step `it` (0-based).
    pub fn at(&self, it: usize) -> f64 {
        if it < self.warmup_iters {
            return self.lr * (it + 1) as f64 / (self.warmup_iters + 1) as f64;
        }
        if it >= self.decay_iters {
            return self.min_lr;
        }
        let span = (self.decay_iters - self.warmup_iters).max(1) as f64;
        let ratio = (it - self.warmup_iters) as f64 / span;
        let coeff = 0.5 * (1.0 + (std::f64::consts::PI * ratio).cos());
        self.min_lr + coeff * (self.lr - self.min_lr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warms_up_then_decays_to_the_floor() {
        let s = WarmupCosine {
            lr: 1e-3,
            min_lr: 1e-4,
            warmup_iters: 100,
            decay_iters: 2000,
        };
        assert!((s.at(0) - 1e-3 / 101.0).abs() < 1e-15);
        assert!((s.at(99) - 1e-3 * 100.0 / 101.0).abs() < 1e-15);
        assert!((s.at(100) - 1e-3).abs() < 1e-15);
        assert!(
            (s.at(1050) - 5.5e-4).abs() < 1e-12,
            "halfway: {}",
            s.at(1050)
        );
        assert_eq!(s.at(2000), 1e-4);
        assert_eq!(s.at(5000), 1e-4);
        assert!((1..2000).all(|i| i <= 100 || s.at(i) <= s.at(i - 1)));
    }
}
