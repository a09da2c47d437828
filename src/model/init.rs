//! Parameters and buffers of a model, and PyTorch's default initialisation of them.
//!
//! `Linear`: weights and biases uniform in `+-1/sqrt(fan_in)` (Kaiming-uniform with a = sqrt(5));
//! BatchNorm: weight 1, bias 0, running mean 0, running variance 1; `px_r`: standard normal.
//! The draws come from the Philox `Init` stream keyed by the seed, one stream index per tensor.

use super::layout::Layout;
use crate::float::Float;
use crate::rng::{Philox, Stream};

/// The values of a model: parameters and buffers in the flat layout.
#[derive(Clone, Debug)]
pub struct ModelState<T> {
    pub layout: Layout,
    pub params: Vec<T>,
    pub buffers: Vec<T>,
}

impl<T: Float> ModelState<T> {
    /// Zeros everywhere (for tests and loading).
    pub fn zeros(layout: Layout) -> Self {
        let params = vec![T::ZERO; layout.n_param_elems];
        let buffers = vec![T::ZERO; layout.n_buffer_elems];
        ModelState {
            layout,
            params,
            buffers,
        }
    }

    /// PyTorch's default initialisation, seeded.
    pub fn init(layout: Layout, seed: u64) -> Self {
        let mut s = Self::zeros(layout);
        let rng = Philox::new(seed);
        let mut scratch = Vec::new();
        for (id, t) in s.layout.params.iter().enumerate() {
            let out = &mut s.params[t.range()];
            scratch.resize(t.len, 0.0);
            let leaf = t.name.rsplit('.').next().unwrap_or("");
            let is_bn = t.name.contains(".fc_layers.") && t.name.contains(".1.");
            if t.name == "px_r" {
                rng.fill_normal(Stream::Init, id as u64, &mut scratch);
                out.iter_mut()
                    .zip(&scratch)
                    .for_each(|(o, &v)| *o = T::from_f64(v));
            } else if is_bn {
                let v = if leaf == "weight" { T::ONE } else { T::ZERO };
                out.iter_mut().for_each(|o| *o = v);
            } else {
                // A Linear weight [out, in] or bias [out]: fan_in is the weight's second dim.
                let fan_in = if leaf == "weight" {
                    t.shape[1]
                } else {
                    let w = t.name.trim_end_matches("bias").to_string() + "weight";
                    s.layout.param(&w).map(|w| w.shape[1]).unwrap_or(1)
                };
                let bound = 1.0 / (fan_in as f64).sqrt();
                rng.fill_uniform(Stream::Init, id as u64, &mut scratch);
                out.iter_mut()
                    .zip(&scratch)
                    .for_each(|(o, &u)| *o = T::from_f64((2.0 * u - 1.0) * bound));
            }
        }
        for t in &s.layout.buffers {
            if t.name.ends_with("running_var") {
                s.buffers[t.range()].iter_mut().for_each(|v| *v = T::ONE);
            }
        }
        s
    }

    pub fn param(&self, id: usize) -> &[T] {
        &self.params[self.layout.params[id].range()]
    }
    pub fn buffer(&self, id: usize) -> &[T] {
        &self.buffers[self.layout.buffers[id].range()]
    }

    /// Convert to another precision (f64 checks of an f32 model and back).
    pub fn cast<U: Float>(&self) -> ModelState<U> {
        ModelState {
            layout: self.layout.clone(),
            params: self
                .params
                .iter()
                .map(|v| U::from_f64(v.to_f64()))
                .collect(),
            buffers: self
                .buffers
                .iter()
                .map(|v| U::from_f64(v.to_f64()))
                .collect(),
        }
    }
}
