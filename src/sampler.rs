//! Choosing the next token from logits. Every stage is a pure function over a candidate list;
//! `Sampler` chains them in llama.cpp's order: repetition penalty, top-k, top-p, min-p,
//! temperature, then a seeded draw. Temperature 0 is greedy (the evaluation convention).

use std::collections::VecDeque;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{Error, Result, Setting};

/// Sampling settings.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplerParams {
    /// 0 picks the most likely token.
    pub temperature: f32,
    /// Keep the k most likely tokens (0: all).
    pub top_k: usize,
    /// Keep the fewest tokens whose probabilities sum to at least p (1: all).
    pub top_p: f32,
    /// Drop tokens less likely than min_p times the most likely one (0: none).
    pub min_p: f32,
    /// Divide positive (multiply negative) logits of recent tokens by this (1: off).
    pub repeat_penalty: f32,
    /// How many recent tokens the penalty looks at.
    pub repeat_last_n: usize,
    /// Seed of the random draw (None: from the clock).
    pub seed: Option<u64>,
}

impl Default for SamplerParams {
    fn default() -> SamplerParams {
        SamplerParams { temperature: 0.0, top_k: 40, top_p: 0.95, min_p: 0.05, repeat_penalty: 1.0, repeat_last_n: 64, seed: None }
    }
}

impl SamplerParams {
    /// Checks every setting's range.
    pub fn validate(&self) -> Result<()> {
        let bad = |setting: Setting, v: String, range: &str| Err(Error::setting(setting, format!("{v} is outside {range}")));
        if !(self.temperature.is_finite() && self.temperature >= 0.0 && self.temperature <= 100.0) {
            return bad(Setting::Temperature, self.temperature.to_string(), "0..=100");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(Setting::TopP, self.top_p.to_string(), "(0, 1]");
        }
        if !(self.min_p >= 0.0 && self.min_p <= 1.0) {
            return bad(Setting::MinP, self.min_p.to_string(), "[0, 1]");
        }
        if !(self.repeat_penalty.is_finite() && self.repeat_penalty > 0.0 && self.repeat_penalty <= 10.0) {
            return bad(Setting::RepeatPenalty, self.repeat_penalty.to_string(), "(0, 10]");
        }
        if self.repeat_last_n > 1 << 20 {
            return bad(Setting::RepeatLastN, self.repeat_last_n.to_string(), "0..=1048576");
        }
        Ok(())
    }
}

/// A token and its logit (later its probability).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Candidate {
    pub id: u32,
    pub logit: f32,
}

/// The index of the largest logit (the first one on ties).
pub fn greedy(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in logits.iter().enumerate() {
        if x > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// llama.cpp's repetition penalty: each distinct recent token's logit is divided by `penalty` when
/// positive and multiplied by it when negative.
pub fn apply_repetition_penalty(logits: &mut [f32], recent: &[u32], penalty: f32) {
    if penalty == 1.0 {
        return;
    }
    let mut seen = std::collections::HashSet::new();
    for &t in recent {
        if let Some(l) = logits.get_mut(t as usize) {
            if seen.insert(t) {
                *l = if *l > 0.0 { *l / penalty } else { *l * penalty };
            }
        }
    }
}

/// Keeps the `k` highest candidates, sorted by logit, highest first (k = 0 keeps all, sorted).
pub fn top_k(mut cands: Vec<Candidate>, k: usize) -> Vec<Candidate> {
    let by_logit = |a: &Candidate, b: &Candidate| b.logit.total_cmp(&a.logit).then(a.id.cmp(&b.id));
    if k > 0 && k < cands.len() {
        cands.select_nth_unstable_by(k - 1, by_logit);
        cands.truncate(k);
    }
    cands.sort_by(by_logit);
    cands
}

/// Probabilities of candidates (softmax of their logits), in their order.
pub fn softmax(cands: &[Candidate]) -> Vec<f32> {
    let max = cands.iter().map(|c| c.logit).fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = cands.iter().map(|c| (c.logit - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// Keeps the shortest prefix (of candidates sorted highest first) whose probability reaches `p`.
pub fn top_p(cands: Vec<Candidate>, p: f32) -> Vec<Candidate> {
    let max = cands.iter().map(|c| c.logit).fold(f32::NEG_INFINITY, f32::max);
    let total = mass(cands.iter().map(|c| c.logit), max);
    top_p_of_mass(cands, p, max, total)
}

/// Sum of exp(logit - max), in f64 so that the order of summation does not show.
fn mass(logits: impl Iterator<Item = f32>, max: f32) -> f64 {
    logits.map(|l| f64::from((l - max).exp())).sum()
}

/// `top_p` where probabilities are `exp(logit - max) / mass`, `mass` possibly including
/// candidates already dropped (so that an earlier cut does not change the sums).
fn top_p_of_mass(mut cands: Vec<Candidate>, p: f32, max: f32, mass: f64) -> Vec<Candidate> {
    if p >= 1.0 || cands.is_empty() {
        return cands;
    }
    let mut sum = 0.0f64;
    let mut keep = cands.len();
    for (i, c) in cands.iter().enumerate() {
        sum += f64::from((c.logit - max).exp()) / mass;
        if sum >= f64::from(p) {
            keep = i + 1;
            break;
        }
    }
    cands.truncate(keep);
    cands
}

/// Drops candidates whose probability is below `p` times the highest one.
pub fn min_p(cands: Vec<Candidate>, p: f32) -> Vec<Candidate> {
    if p <= 0.0 || cands.is_empty() {
        return cands;
    }
    let max = cands.iter().map(|c| c.logit).fold(f32::NEG_INFINITY, f32::max);
    let threshold = max + p.ln();
    let kept: Vec<Candidate> = cands.iter().copied().filter(|c| c.logit >= threshold).collect();
    if kept.is_empty() {
        cands
    } else {
        kept
    }
}

/// Divides logits by the temperature.
pub fn temperature(mut cands: Vec<Candidate>, t: f32) -> Vec<Candidate> {
    for c in &mut cands {
        c.logit /= t;
    }
    cands
}

/// Draws one candidate with probability proportional to exp(logit); `u` is uniform in [0, 1).
pub fn draw(cands: &[Candidate], u: f32) -> u32 {
    let probs = softmax(cands);
    let mut acc = 0.0;
    for (c, p) in cands.iter().zip(&probs) {
        acc += p;
        if u < acc {
            return c.id;
        }
    }
    cands.last().map_or(0, |c| c.id)
}

/// The sampling chain with its random state and the recent tokens for the penalty.
pub struct Sampler {
    params: SamplerParams,
    rng: ChaCha8Rng,
    recent: VecDeque<u32>,
    scratch: Vec<f32>,
}

impl Sampler {
    pub fn new(params: SamplerParams) -> Result<Sampler> {
        params.validate()?;
        let seed = params.seed.unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
        });
        Ok(Sampler { params, rng: ChaCha8Rng::seed_from_u64(seed), recent: VecDeque::new(), scratch: Vec::new() })
    }

    pub fn params(&self) -> &SamplerParams {
        &self.params
    }

    /// Picks the next token.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let p = &self.params;
        let penalised = p.repeat_penalty != 1.0 && !self.recent.is_empty();
        let logits: &[f32] = if penalised {
            self.scratch.clear();
            self.scratch.extend_from_slice(logits);
            let recent: Vec<u32> = self.recent.iter().copied().collect();
            apply_repetition_penalty(&mut self.scratch, &recent, p.repeat_penalty);
            &self.scratch
        } else {
            logits
        };
        if p.temperature <= 0.0 {
            return greedy(logits);
        }
        let cands: Vec<Candidate> = logits.iter().enumerate().map(|(i, &l)| Candidate { id: i as u32, logit: l }).collect();
        let cands = if p.top_k == 0 && p.min_p > 0.0 {
            // Sorting 150k candidates per token is slow. Min-p's cut depends only on the best
            // logit, so it may shrink the list first, provided top-p still sums probabilities
            // over the whole vocabulary.
            let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let total = mass(logits.iter().copied(), max);
            top_p_of_mass(top_k(min_p(cands, p.min_p), 0), p.top_p, max, total)
        } else {
            top_p(top_k(cands, p.top_k), p.top_p)
        };
        let cands = min_p(cands, p.min_p);
        let cands = temperature(cands, p.temperature);
        let u: f32 = self.rng.random();
        draw(&cands, u)
    }

    /// Records a token (generated or from the prompt) for the repetition penalty.
    pub fn accept(&mut self, token: u32) {
        if self.params.repeat_last_n == 0 {
            return;
        }
        self.recent.push_back(token);
        while self.recent.len() > self.params.repeat_last_n {
            self.recent.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cands(logits: &[f32]) -> Vec<Candidate> {
        logits.iter().enumerate().map(|(i, &l)| Candidate { id: i as u32, logit: l }).collect()
    }

    #[test]
    fn greedy_takes_the_first_maximum() {
        assert_eq!(greedy(&[0.1, 3.0, -1.0, 3.0]), 1);
        assert_eq!(greedy(&[f32::NEG_INFINITY, -5.0]), 1);
    }

    #[test]
    fn top_k_keeps_the_k_best_sorted() {
        let c = top_k(cands(&[0.0, 5.0, 1.0, 4.0, 2.0]), 3);
        assert_eq!(c.iter().map(|c| c.id).collect::<Vec<_>>(), [1, 3, 4]);
        assert_eq!(top_k(cands(&[1.0, 2.0]), 0).len(), 2);
    }

    #[test]
    fn top_p_keeps_the_shortest_sufficient_prefix() {
        // Probabilities: 0.5, 0.25, 0.125, 0.125.
        let l = [2f32.ln() * 2.0, 2f32.ln(), 0.0, 0.0];
        let sorted = top_k(cands(&l), 0);
        assert_eq!(top_p(sorted.clone(), 0.5).len(), 1);
        assert_eq!(top_p(sorted.clone(), 0.6).len(), 2);
        assert_eq!(top_p(sorted.clone(), 0.8).len(), 3);
        assert_eq!(top_p(sorted, 1.0).len(), 4);
    }

    #[test]
    fn min_p_is_relative_to_the_best() {
        let l = [0.0, -1.0, -3.0];
        // exp(-1) = 0.37 >= 0.3, exp(-3) = 0.05 < 0.3
        assert_eq!(min_p(cands(&l), 0.3).len(), 2);
        assert_eq!(min_p(cands(&l), 0.0).len(), 3);
    }

    #[test]
    fn repetition_penalty_pushes_recent_tokens_down() {
        let mut l = [2.0, -2.0, 1.0];
        apply_repetition_penalty(&mut l, &[0, 1, 0], 2.0);
        assert_eq!(l, [1.0, -4.0, 1.0]);
    }

    #[test]
    fn zero_temperature_is_greedy_and_seeds_repeat() {
        let logits: Vec<f32> = (0..1000).map(|i| ((i * 7919) % 1000) as f32 / 100.0).collect();
        let mut g = Sampler::new(SamplerParams::default()).unwrap();
        assert_eq!(g.sample(&logits), greedy(&logits));
        let hot = SamplerParams { temperature: 1.5, top_k: 0, top_p: 1.0, min_p: 0.0, seed: Some(9), ..SamplerParams::default() };
        let run = || {
            let mut s = Sampler::new(hot.clone()).unwrap();
            (0..if cfg!(miri) { 5 } else { 50 }).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(run(), run());
        assert!(run().iter().collect::<std::collections::HashSet<_>>().len() > 1, "a hot sampler varies");
    }

    #[test]
    fn draws_follow_the_distribution() {
        // p = 0.7, 0.2, 0.1
        let l = [0.7f32.ln(), 0.2f32.ln(), 0.1f32.ln()];
        let params = SamplerParams { temperature: 1.0, top_k: 0, top_p: 1.0, min_p: 0.0, seed: Some(1), ..SamplerParams::default() };
        let mut s = Sampler::new(params).unwrap();
        let mut counts = [0usize; 3];
        let n = 20_000;
        for _ in 0..n {
            counts[s.sample(&l) as usize] += 1;
        }
        for (c, p) in counts.iter().zip([0.7, 0.2, 0.1]) {
            let f = *c as f64 / n as f64;
            assert!((f - p).abs() < 0.015, "frequency {f} for probability {p}");
        }
    }

    #[test]
    fn fast_min_p_path_equals_the_plain_chain() {
        let logits: Vec<f32> = (0..5000).map(|i| ((i * 104729) % 5000) as f32 / 400.0).collect();
        let params = SamplerParams { temperature: 0.9, top_k: 0, top_p: 0.9, min_p: 0.1, seed: Some(3), ..SamplerParams::default() };
        let mut s = Sampler::new(params.clone()).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        // Fewer draws under Miri (scripts/sanitize), which interprets every instruction.
        for _ in 0..if cfg!(miri) { 3 } else { 200 } {
            let plain = {
                let c = top_k(cands(&logits), 0);
                let c = top_p(c, params.top_p);
                let c = min_p(c, params.min_p);
                let c = temperature(c, params.temperature);
                let u: f32 = rng.random();
                draw(&c, u)
            };
            assert_eq!(s.sample(&logits), plain);
        }
    }

    #[test]
    fn invalid_settings_are_rejected() {
        let bad = [
            SamplerParams { temperature: -1.0, ..SamplerParams::default() },
            SamplerParams { temperature: f32::NAN, ..SamplerParams::default() },
            SamplerParams { top_p: 0.0, ..SamplerParams::default() },
            SamplerParams { top_p: 1.5, ..SamplerParams::default() },
            SamplerParams { min_p: -0.1, ..SamplerParams::default() },
            SamplerParams { repeat_penalty: 0.0, ..SamplerParams::default() },
        ];
        for p in bad {
            assert!(Sampler::new(p.clone()).is_err(), "{p:?}");
        }
    }
}
