//! The CPU engine against scvi-tools' own PyTorch module (`scvi.module.VAE`, 1.4.2, run in f64 with
//! the same weights, minibatch and noise; dropout 0, BatchNorm in training mode). The fixture and the
//! script that regenerates it are in `tests/fixtures/parity` and `scripts/parity`.
//!
//! f64 engine: every loss part, the posterior, every gradient and every BatchNorm running-statistics
//! update equal to ~1e-9 (formula identity). f32 engine: within f32 rounding, 1e-4 relative to each
//! tensor's norm (DESIGN.md explains why f32 cannot promise more). Also one Adam step against
//! `torch.optim.Adam` with scvi-tools' settings.

use safetensors::SafeTensors;
use scvi_rs::batch::Minibatch;
use scvi_rs::cpu::adam::Adam;
use scvi_rs::cpu::{CpuEngine, StepNoise};
use scvi_rs::engine::{AdamConfig, Mode};
use scvi_rs::float::Float;
use scvi_rs::model::init::ModelState;
use scvi_rs::model::layout::Layout;
use scvi_rs::model::ModelConfig;
use std::collections::HashMap;
use std::path::PathBuf;

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity")
}

struct Fixture {
    tensors: HashMap<String, (Vec<usize>, Vec<f64>)>,
}

impl Fixture {
    fn load(name: &str) -> Fixture {
        let bytes = std::fs::read(fixture_dir().join(format!("{name}.safetensors"))).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let tensors = st
            .tensors()
            .into_iter()
            .map(|(k, v)| {
                assert_eq!(v.dtype(), safetensors::Dtype::F64, "{k}");
                let vals = v
                    .data()
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                    .collect();
                (k, (v.shape().to_vec(), vals))
            })
            .collect();
        Fixture { tensors }
    }
    fn get(&self, k: &str) -> &[f64] {
        &self
            .tensors
            .get(k)
            .unwrap_or_else(|| panic!("fixture has no '{k}'"))
            .1
    }
    fn has(&self, k: &str) -> bool {
        self.tensors.contains_key(k)
    }
}

fn config_of(v: &serde_json::Value) -> ModelConfig {
    let kw = &v["vae_kwargs"];
    let mut m = serde_json::Map::new();
    for k in [
        "n_input",
        "n_batch",
        "n_labels",
        "n_hidden",
        "n_latent",
        "n_layers",
        "dropout_rate",
        "dispersion",
        "gene_likelihood",
        "latent_distribution",
        "encode_covariates",
        "deeply_inject_covariates",
        "use_batch_norm",
        "use_layer_norm",
        "use_observed_lib_size",
    ] {
        m.insert(k.to_string(), kw[k].clone());
    }
    serde_json::from_value(serde_json::Value::Object(m)).expect("config")
}

/// Compare per tensor: max |a - b| <= rtol * max |b| + atol (relative to the tensor's scale).
fn assert_close(what: &str, a: &[f64], b: &[f64], rtol: f64, atol: f64, errors: &mut Vec<String>) {
    assert_eq!(a.len(), b.len(), "{what}: length");
    let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let (i, worst) = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .enumerate()
        .fold(
            (0, 0.0),
            |(bi, bv), (i, v)| if v > bv { (i, v) } else { (bi, bv) },
        );
    if worst > rtol * scale + atol || a.iter().any(|v| !v.is_finite()) {
        errors.push(format!(
            "{what}: max |diff| {worst:.3e} at [{i}] (ours {}, scvi-tools {}), tensor scale {scale:.3e}",
            a[i], b[i]
        ));
    }
}

/// `atol` is scaled by the loss: a gradient that is exactly zero (a Linear bias feeding a BatchNorm)
/// is computed as pure rounding, of the order of the precision times the loss's terms.
fn run_config<T: Float>(
    cfg_json: &serde_json::Value,
    rtol: f64,
    atol_per_loss: f64,
) -> Vec<String> {
    let name = cfg_json["name"].as_str().unwrap();
    let fx = Fixture::load(name);
    let atol = atol_per_loss * fx.get("out.loss")[0].abs().max(1.0);
    let cfg = config_of(cfg_json);
    let layout = Layout::new(&cfg);
    let mut state = ModelState::<T>::zeros(layout.clone());
    // The fixture stores parameters and buffers alike as `param.<name>`.
    for (tensors, values) in [
        (&layout.params, &mut state.params),
        (&layout.buffers, &mut state.buffers),
    ] {
        for t in tensors {
            let v = fx.get(&format!("param.{}", t.name));
            values[t.range()]
                .iter_mut()
                .zip(v)
                .for_each(|(o, &x)| *o = T::from_f64(x));
        }
    }
    let (b, g) = (
        cfg_json["batch_size"].as_u64().unwrap() as usize,
        cfg.n_input,
    );
    let codes = |k: &str| fx.get(k).iter().map(|&v| v as u32).collect::<Vec<_>>();
    let batch = Minibatch::from_dense(
        fx.get("input.x"),
        g,
        codes("input.batch"),
        codes("input.labels"),
    );
    assert_eq!(batch.len(), b);
    let to_t = |v: &[f64]| v.iter().map(|&x| T::from_f64(x)).collect::<Vec<T>>();
    let eps_z = to_t(fx.get("input.eps_z"));
    let eps_l = if fx.has("input.eps_l") {
        to_t(fx.get("input.eps_l"))
    } else {
        vec![T::ZERO; b]
    };
    let noise = StepNoise {
        eps_z: &eps_z,
        eps_l: &eps_l,
        dropout: None,
    };
    let kl_weight = fx.get("input.kl_weight")[0];
    let mut engine = CpuEngine::<T>::new(layout.clone());
    let mut grads = vec![T::ZERO; layout.n_param_elems];
    let parts = engine
        .forward_backward(
            &mut state,
            Some(&mut grads),
            &batch,
            &noise,
            kl_weight,
            Mode::Train,
        )
        .unwrap();

    let mut errors = Vec::new();
    let f = |v: &[T]| v.iter().map(|x| x.to_f64()).collect::<Vec<f64>>();
    assert_close(
        "out.loss",
        &[parts.loss],
        fx.get("out.loss"),
        rtol,
        atol,
        &mut errors,
    );
    let (rec, klz, kll) = engine.per_cell(b);
    assert_close(
        "out.reconstruction_loss",
        rec,
        fx.get("out.reconstruction_loss"),
        rtol,
        atol,
        &mut errors,
    );
    assert_close("out.kl_z", klz, fx.get("out.kl_z"), rtol, atol, &mut errors);
    assert_close("out.kl_l", kll, fx.get("out.kl_l"), rtol, atol, &mut errors);
    let (qm, _) = engine.posterior(b);
    assert_close(
        "out.qz_m",
        &f(qm),
        fx.get("out.qz_m"),
        rtol,
        atol,
        &mut errors,
    );
    let (z, _) = engine.z_and_scale(b);
    assert_close("out.z", &f(z), fx.get("out.z"), rtol, atol, &mut errors);
    for t in &layout.params {
        let key = format!("grad.{}", t.name);
        match (fx.has(&key), t.trainable) {
            (true, true) => assert_close(
                &key,
                &f(&grads[t.range()]),
                fx.get(&key),
                rtol,
                atol,
                &mut errors,
            ),
            (false, false) => {}
            (has, trainable) => errors.push(format!(
                "{}: scvi-tools has a gradient: {has}, scvi-rs trains it: {trainable}",
                t.name
            )),
        }
    }
    for t in &layout.buffers {
        let key = format!("after.{}", t.name);
        if fx.has(&key) {
            assert_close(
                &key,
                &f(&state.buffers[t.range()]),
                fx.get(&key),
                rtol,
                atol,
                &mut errors,
            );
        }
    }
    errors
        .iter_mut()
        .for_each(|e| *e = format!("[{name}, {}] {e}", T::NAME));
    errors
}

fn configs() -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(fixture_dir().join("configs.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Every fixture configuration through the engine in `T`, every tensor within `rtol`, `atol`.
fn all_configs_match<T: Float>(rtol: f64, atol: f64) {
    let cfgs = configs();
    assert!(cfgs.len() >= 8);
    let errors: Vec<String> = cfgs
        .iter()
        .flat_map(|c| run_config::<T>(c, rtol, atol))
        .collect();
    assert!(
        errors.is_empty(),
        "{} mismatches:\n{}",
        errors.len(),
        errors.join("\n")
    );
}

#[test]
fn f64_engine_equals_scvi_tools_to_1e9() {
    all_configs_match::<f64>(1e-9, 1e-12);
}

#[test]
fn f32_engine_equals_scvi_tools_within_f32_rounding() {
    all_configs_match::<f32>(1e-4, 1e-6);
}

#[test]
fn adam_equals_torch_adam_with_scvi_tools_settings() {
    let fx = Fixture::load("adam");
    let cfg = AdamConfig {
        lr: fx.get("hparam.lr")[0],
        beta1: fx.get("hparam.beta1")[0],
        beta2: fx.get("hparam.beta2")[0],
        eps: fx.get("hparam.eps")[0],
        weight_decay: fx.get("hparam.weight_decay")[0],
    };
    assert_eq!(cfg, AdamConfig::default(), "scvi-tools' Adam settings");
    // Parameters 0..=2 get gradients; parameter 3 never does (torch: grad None) and must not move.
    let model = ModelConfig {
        n_input: 1,
        ..ModelConfig::default()
    };
    let mut layout = Layout::new(&model);
    let shapes: Vec<Vec<usize>> = (0..4)
        .map(|i| fx.tensors[&format!("init.param.{i}")].0.clone())
        .collect();
    let mut offset = 0;
    layout.params = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let len = s.iter().product();
            let t = scvi_rs::model::Tensor {
                name: format!("p{i}"),
                shape: s.clone(),
                offset,
                len,
                trainable: i < 3,
            };
            offset += len;
            t
        })
        .collect();
    layout.n_param_elems = offset;
    let mut params: Vec<f64> = (0..4)
        .flat_map(|i| fx.get(&format!("init.param.{i}")).to_vec())
        .collect();
    let mut adam = Adam::<f64>::new(cfg, &layout);
    for step in 1..=3 {
        let grads: Vec<f64> = (0..4)
            .flat_map(|i| {
                let k = format!("step{step}.grad.{i}");
                if fx.has(&k) {
                    fx.get(&k).to_vec()
                } else {
                    vec![0.0; layout.params[i].len]
                }
            })
            .collect();
        adam.update(&mut params, &grads);
        let mut errors = Vec::new();
        for (i, t) in layout.params.iter().enumerate() {
            assert_close(
                &format!("step{step}.param.{i}"),
                &params[t.range()],
                fx.get(&format!("step{step}.param.{i}")),
                1e-12,
                1e-15,
                &mut errors,
            );
        }
        assert!(errors.is_empty(), "{}", errors.join("\n"));
    }
}
