//! [`CpuTrainer`]: the CPU engine behind the [`Engine`] contract, with its parameters, gradients,
//! Adam state and the step's noise.

use super::adam::Adam;
use super::engine::{CpuEngine, NoiseBuffers};
use crate::batch::Minibatch;
use crate::engine::{
    AdamConfig, Engine, Generative, GenerativeOutputs, LossParts, Pass, Posteriors,
};
use crate::error::Result;
use crate::float::Float;
use crate::model::config::Dispersion;
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
    /// The latents and libraries of [`Engine::generative`] in the engine's precision.
    gen_z: Vec<T>,
    gen_library: Vec<T>,
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
            gen_z: Vec::new(),
            gen_library: Vec::new(),
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

    fn posteriors(&mut self, batch: &Minibatch, out: &mut Posteriors) -> Result<()> {
        self.engine.encode_all(&mut self.state, batch)?;
        let b = batch.len();
        let (m, v) = self.engine.posterior(b);
        to_f32(&mut out.z_mean, m);
        to_f32(&mut out.z_var, v);
        if self.state.layout.config.use_observed_lib_size {
            out.library_mean.clear();
            out.library_var.clear();
        } else {
            let (m, v) = self.engine.library_posterior(b);
            to_f32(&mut out.library_mean, m);
            to_f32(&mut out.library_var, v);
        }
        Ok(())
    }

    fn generative(
        &mut self,
        rows: &Minibatch,
        z: &[f32],
        library: &[f32],
        what: GenerativeOutputs,
        out: &mut Generative,
    ) -> Result<()> {
        self.gen_z.clear();
        self.gen_z.extend(z.iter().map(|&v| T::from_f64(v as f64)));
        self.gen_library.clear();
        self.gen_library
            .extend(library.iter().map(|&v| T::from_f64(v as f64)));
        let likelihood = what != GenerativeOutputs::Scale;
        self.engine.generative(
            &mut self.state,
            rows,
            &self.gen_z,
            &self.gen_library,
            likelihood,
        )?;
        let cfg = &self.state.layout.config;
        let (r, g) = (rows.len(), cfg.n_input);
        let (planes, table) = self.engine.output();
        to_f32(&mut out.px_scale, &planes.scale[..r * g]);
        out.reconstruction.clear();
        if likelihood {
            out.reconstruction
                .extend_from_slice(&planes.reconstruction[..r]);
        }
        out.theta.clear();
        out.zi_logits.clear();
        if what != GenerativeOutputs::Parameters {
            return Ok(());
        }
        if cfg.gene_likelihood.has_pi() {
            to_f32(&mut out.zi_logits, &planes.pi[..r * g]);
        }
        if cfg.gene_likelihood.has_theta() {
            // theta = exp(px_r) from the table of the row's category, or exp(r) per cell.
            for i in 0..r {
                match cfg.dispersion {
                    Dispersion::GeneCell => out.theta.extend(
                        planes.r[i * g..(i + 1) * g]
                            .iter()
                            .map(|v| v.vexp().to_f64() as f32),
                    ),
                    d => {
                        let c = match d {
                            Dispersion::Gene => 0,
                            Dispersion::GeneBatch => rows.batch[i] as usize,
                            _ => rows.labels[i] as usize,
                        };
                        out.theta.extend(
                            table.theta[c * g..(c + 1) * g]
                                .iter()
                                .map(|v| v.to_f64() as f32),
                        );
                    }
                }
            }
        }
        Ok(())
    }

    fn state(&self) -> ModelState<f32> {
        self.state.cast()
    }

    fn name(&self) -> String {
        format!(
            "cpu ({} threads, {})",
            rayon::current_num_threads(),
            T::NAME.to_lowercase()
        )
    }
}

/// `out <- v` in f32, reusing `out`'s allocation.
fn to_f32<T: Float>(out: &mut Vec<f32>, v: &[T]) {
    out.clear();
    out.extend(v.iter().map(|x| x.to_f64() as f32));
}
