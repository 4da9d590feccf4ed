//! Choosing the next token from logits: greedy, temperature, top-k and top-p, seeded.

pub use qkv_rng::SplitMix64;

/// How the next token is chosen.
#[derive(Debug, Clone, PartialEq)]
pub enum Sampling {
    /// The most likely token (the first, on ties).
    Greedy,
    /// A random draw from the softmax of `logits / temperature`, optionally restricted to
    /// the `top_k` most likely tokens and then to the smallest set whose probability reaches
    /// `top_p` (nucleus sampling).
    Random {
        /// Above 0; below 1 sharpens, above 1 flattens.
        temperature: f64,
        /// Keep only this many of the most likely tokens.
        top_k: Option<usize>,
        /// Keep the most likely tokens until their probability reaches this, in `(0, 1]`.
        top_p: Option<f64>,
        /// Seed of the draw: the same seed, model and prompt give the same text.
        seed: u64,
    },
}

impl Sampling {
    /// Checks the parameters.
    pub fn validate(&self) -> Result<(), String> {
        if let Sampling::Random {
            temperature,
            top_k,
            top_p,
            ..
        } = self
        {
            if !(*temperature > 0.0 && temperature.is_finite()) {
                return Err(format!(
                    "temperature must be a positive number, got {temperature} (use greedy decoding for 0)"
                ));
            }
            if *top_k == Some(0) {
                return Err("top_k must be at least 1".into());
            }
            if let Some(p) = top_p
                && !(*p > 0.0 && *p <= 1.0)
            {
                return Err(format!("top_p must be in (0, 1], got {p}"));
            }
        }
        Ok(())
    }
}

/// Picks the next token from one row of logits.
pub fn sample(logits: &[f32], sampling: &Sampling, rng: &mut SplitMix64) -> u32 {
    match sampling {
        Sampling::Greedy => argmax(logits),
        Sampling::Random {
            temperature,
            top_k,
            top_p,
            ..
        } => {
            let probs = filtered_probs(logits, *temperature, *top_k, *top_p);
            let mut u = rng.next_f64();
            for (token, p) in probs.iter().enumerate() {
                if u < *p {
                    return token as u32;
                }
                u -= p;
            }
            // Rounding left a sliver of mass: take the last token still allowed.
            probs.iter().rposition(|&p| p > 0.0).unwrap_or(0) as u32
        }
    }
}

/// The index of the largest logit (the first, on ties).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in logits.iter().enumerate() {
        if *v > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// The probabilities after temperature, top-k and top-p; filtered tokens get exactly 0.
pub fn filtered_probs(
    logits: &[f32],
    temperature: f64,
    top_k: Option<usize>,
    top_p: Option<f64>,
) -> Vec<f64> {
    // The largest logit is subtracted before dividing: with a tiny temperature, l / T
    // overflows to infinity and inf - inf is NaN, while (l - max) / T is 0 for the largest
    // and -inf for the rest, the greedy limit that the temperature tends to.
    let top = logits
        .iter()
        .fold(f64::NEG_INFINITY, |m, &l| m.max(l as f64));
    let scaled: Vec<f64> = logits
        .iter()
        .map(|&l| (l as f64 - top) / temperature)
        .collect();
    let mut order: Vec<usize> = (0..scaled.len()).collect();
    order.sort_by(|&a, &b| scaled[b].total_cmp(&scaled[a]));
    let mut keep = vec![true; scaled.len()];
    if let Some(k) = top_k {
        for &i in order.iter().skip(k) {
            keep[i] = false;
        }
    }
    let max = scaled[order[0]];
    let mut probs: Vec<f64> = scaled
        .iter()
        .zip(&keep)
        .map(|(&s, &k)| if k { (s - max).exp() } else { 0.0 })
        .collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    if let Some(p) = top_p {
        let mut mass = 0.0;
        let mut reached = false;
        for &i in &order {
            if reached {
                probs[i] = 0.0;
            } else {
                mass += probs[i];
                reached = mass >= p;
            }
        }
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|q| *q /= total);
    }
    probs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vanishing_temperature_tends_to_greedy_not_to_token_zero() {
        let logits = [0.5f32, 3.0, -1.0, 2.9];
        for temperature in [1e-310, 1e-300, 1e-30] {
            let p = filtered_probs(&logits, temperature, None, None);
            assert_eq!(p, vec![0.0, 1.0, 0.0, 0.0], "temperature {temperature}");
        }
        let sampling = Sampling::Random {
            temperature: 1e-310,
            top_k: None,
            top_p: None,
            seed: 7,
        };
        let mut rng = SplitMix64::new(7);
        for _ in 0..20 {
            assert_eq!(sample(&logits, &sampling, &mut rng), 1);
        }
    }

    #[test]
    fn greedy_takes_the_first_maximum() {
        assert_eq!(argmax(&[0.1, 3.0, -1.0, 3.0]), 1);
    }

    #[test]
    fn top_k_and_top_p_cut_the_tail() {
        let logits = [2.0f32, 1.0, 0.0, -1.0];
        let p = filtered_probs(&logits, 1.0, Some(2), None);
        assert!(p[2] == 0.0 && p[3] == 0.0);
        let e = 1f64.exp();
        assert!((p[0] - e / (1.0 + e)).abs() < 1e-12);
        // Full softmax mass: 0.644, 0.237, 0.087, 0.032. top_p 0.8 keeps the first two.
        let p = filtered_probs(&logits, 1.0, None, Some(0.8));
        assert!(p[0] > 0.0 && p[1] > 0.0 && p[2] == 0.0 && p[3] == 0.0);
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn sampling_is_seeded_and_follows_the_distribution() {
        let logits = [1.0f32, 0.0, 2.0];
        let sampling = Sampling::Random {
            temperature: 1.0,
            top_k: None,
            top_p: None,
            seed: 0,
        };
        let draw = |seed| {
            let mut rng = SplitMix64::new(seed);
            (0..2000)
                .map(|_| sample(&logits, &sampling, &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(5), draw(5));
        assert_ne!(draw(5), draw(6));
        let counts = draw(9).iter().fold([0usize; 3], |mut c, &t| {
            c[t as usize] += 1;
            c
        });
        let want = filtered_probs(&logits, 1.0, None, None);
        for t in 0..3 {
            let got = counts[t] as f64 / 2000.0;
            assert!(
                (got - want[t]).abs() < 0.04,
                "token {t}: {got} vs {}",
                want[t]
            );
        }
    }

    #[test]
    fn bad_parameters_are_named() {
        let bad = Sampling::Random {
            temperature: 0.0,
            top_k: None,
            top_p: None,
            seed: 0,
        };
        assert!(bad.validate().unwrap_err().contains("temperature"));
        let bad = Sampling::Random {
            temperature: 1.0,
            top_k: Some(0),
            top_p: None,
            seed: 0,
        };
        assert!(bad.validate().unwrap_err().contains("top_k"));
        let bad = Sampling::Random {
            temperature: 1.0,
            top_k: None,
            top_p: Some(1.5),
            seed: 0,
        };
        assert!(bad.validate().unwrap_err().contains("top_p"));
    }
}
