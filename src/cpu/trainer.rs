//! [`CpuTrainer`]: the CPU engine behind the [`Engine`] contract, with its parameters, gradients,
//! Adam state and the step's noise.

use super::adam::Adam;
use super::engine::{CpuEngine, NoiseBuffers};
use crate::batch::Minibatch;
use crate::engine::{AdamConfig, Engine, LossParts, OptimizerState, Pass};
use crate::error::Result;
use crate::float::Float;
use crate::model::init::ModelState;
use crate::rng::Philox;

/// The CPU engine with its parameters, gradients and Adam state.
pub struct CpuTrainer<T: Float> {
    pub state: ModelState<T>,
    engine: CpuEngine<T>,
    grads: Vec<T>,
    adam: Adam<T>,
    noise: NoiseBuffers<T>,
    rng: Philox,
}

impl<T: Float> CpuTrainer<T> {
    pub fn new(state: ModelState<T>, adam: AdamConfig, seed: u64) -> Self {
        let layout = state.layout.clone();
        CpuTrainer {
            engine: CpuEngine::new(layout.clone()),
            grads: vec![T::ZERO; layout.n_param_elems],
            adam: Adam::new(adam, &layout),
            noise: NoiseBuffers::default(),
            rng: Philox::new(seed),
            state,
        }
    }
}

impl<T: Float> Engine for CpuTrainer<T> {
    fn forward_backward(&mut self, batch: &Minibatch, pass: Pass) -> Result<LossParts> {
        let l = self.state.layout.config.n_latent;
        self.noise.draw(&self.rng, pass.step, batch.len(), l);
        let noise = self.noise.as_step(Some((self.rng, pass.step)));
        let g = if pass.grads {
            self.grads.iter_mut().for_each(|g| *g = T::ZERO);
            Some(&mut self.grads[..])
        } else {
            None
        };
        self.engine
            .forward_backward(&mut self.state, g, batch, &noise, pass.kl_weight, pass.mode)
    }

    fn adam_update(&mut self) -> Result<()> {
        self.adam.update(&mut self.state.params, &self.grads);
        Ok(())
    }

    fn per_cell_losses(&self, n: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let (r, z, l) = self.engine.per_cell(n);
        (r.to_vec(), z.to_vec(), l.to_vec())
    }

    fn encode(&mut self, batch: &Minibatch) -> Result<(Vec<f32>, Vec<f32>)> {
        self.engine.encode(&mut self.state, batch)?;
        let (m, v) = self.engine.posterior(batch.len());
        Ok((
            m.iter().map(|x| x.to_f64() as f32).collect(),
            v.iter().map(|x| x.to_f64() as f32).collect(),
        ))
    }

    fn state(&self) -> ModelState<f32> {
        self.state.cast()
    }

    fn read_state(&self) -> Result<ModelState<f32>> {
        Ok(self.state.cast())
    }

    fn optimizer_state(&self) -> Result<OptimizerState> {
        Ok(self.adam.export())
    }

    fn set_optimizer_state(&mut self, state: &OptimizerState) -> Result<()> {
        state.check(&self.state.layout)?;
        self.adam.restore(state);
        Ok(())
    }

    fn name(&self) -> String {
        format!(
            "cpu ({} threads, {})",
            rayon::current_num_threads(),
            T::NAME.to_lowercase()
        )
    }
}
