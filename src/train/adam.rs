//! Adam exactly as `torch.optim.Adam(params, lr, eps, weight_decay)` under scvi-tools' `TrainingPlan`
//! (lr 1e-3, betas (0.9, 0.999), eps 0.01, weight_decay 1e-6 added to the gradient, no amsgrad):
//!
//! ```text
//! g = grad + wd p;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
//! p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
//! ```
//! Tensors without a gradient in this configuration are skipped entirely, as torch skips parameters
//! whose `.grad` is None (no weight decay either).

use crate::float::Float;
use crate::model::layout::Layout;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdamConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamConfig {
    fn default() -> Self {
        AdamConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 0.01,
            weight_decay: 1e-6,
        }
    }
}

/// Adam's state over the flat parameter buffer.
pub struct Adam<T> {
    pub config: AdamConfig,
    pub step: u64,
    m: Vec<T>,
    v: Vec<T>,
    /// Element ranges of the tensors that receive gradients.
    ranges: Vec<std::ops::Range<usize>>,
}

impl<T: Float> Adam<T> {
    pub fn new(config: AdamConfig, layout: &Layout) -> Self {
        let ranges = layout
            .params
            .iter()
            .filter(|t| t.trainable)
            .map(|t| t.range())
            .collect();
        Adam {
            config,
            step: 0,
            m: vec![T::ZERO; layout.n_param_elems],
            v: vec![T::ZERO; layout.n_param_elems],
            ranges,
        }
    }

    /// One update of `params` with `grads` (same layout).
    pub fn update(&mut self, params: &mut [T], grads: &[T]) {
        self.step += 1;
        let c = self.config;
        let t = self.step as i32;
        let step_size = T::from_f64(c.lr / (1.0 - c.beta1.powi(t)));
        let bc2_sqrt = T::from_f64((1.0 - c.beta2.powi(t)).sqrt());
        let (b1, b2) = (T::from_f64(c.beta1), T::from_f64(c.beta2));
        let (ob1, ob2) = (T::ONE - b1, T::ONE - b2);
        let (wd, eps) = (T::from_f64(c.weight_decay), T::from_f64(c.eps));
        for r in &self.ranges {
            const CHUNK: usize = 4096;
            params[r.clone()]
                .par_chunks_mut(CHUNK)
                .zip(grads[r.clone()].par_chunks(CHUNK))
                .zip(self.m[r.clone()].par_chunks_mut(CHUNK))
                .zip(self.v[r.clone()].par_chunks_mut(CHUNK))
                .for_each(|(((p, g), m), v)| {
                    for i in 0..p.len() {
                        let g = g[i] + wd * p[i];
                        m[i] = b1 * m[i] + ob1 * g;
                        v[i] = b2 * v[i] + ob2 * g * g;
                        p[i] -= step_size * m[i] / (v[i].sqrt() / bc2_sqrt + eps);
                    }
                });
        }
    }
}
