//! Adam exactly as `torch.optim.Adam(params, lr, eps, weight_decay)` under scvi-tools' `TrainingPlan`
//! ([`AdamConfig`], the contract's), over the flat parameter buffer. CPU twin of kernels/adam.cu
//! (`adam_step`), which tests/cuda_kernels.rs (`adam_*`) checks against [`Adam::update`]:
//!
//! ```text
//! g = grad + wd p;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
//! p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
//! ```
//! Tensors without a gradient in this configuration are skipped entirely, as torch skips parameters
//! whose `.grad` is None (no weight decay either).

use crate::engine::{AdamConfig, OptimizerState};
use crate::float::Float;
use crate::model::layout::Layout;
use rayon::prelude::*;

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

    /// The update count and the moments, in f32 (exact for the f32 engine; the f64 test engine's
    /// moments are rounded).
    pub fn export(&self) -> OptimizerState {
        let f32s = |x: &[T]| x.iter().map(|v| v.to_f64() as f32).collect();
        OptimizerState {
            step: self.step,
            m: f32s(&self.m),
            v: f32s(&self.v),
        }
    }

    /// Continue from a saved state (lengths checked by the caller against the layout).
    pub fn restore(&mut self, s: &OptimizerState) {
        self.step = s.step;
        let put = |dst: &mut Vec<T>, src: &[f32]| {
            dst.clear();
            dst.extend(src.iter().map(|&v| T::from_f64(v as f64)));
        };
        put(&mut self.m, &s.m);
        put(&mut self.v, &s.v);
    }

    /// One update of `params` with `grads` (same layout).
    pub fn update(&mut self, params: &mut [T], grads: &[T]) {
        self.step += 1;
        let c = self.config;
        let (step_size, bc2_sqrt) = c.step_constants(self.step);
        let (step_size, bc2_sqrt) = (T::from_f64(step_size), T::from_f64(bc2_sqrt));
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
