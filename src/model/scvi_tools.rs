//! scvi-tools' model directory, as `SCVI.save(dir)` writes it and `SCVI.load(dir, adata)` reads
//! it: one file, `model.pt`, a `torch.save` archive (`torch_file`) of
//!
//! ```text
//! {"model_state_dict": {state_dict name: tensor},
//!  "var_names": ndarray of the genes,
//!  "attr_dict": {"init_params_": {"non_kwargs": {n_hidden, ...}, "kwargs": {"kwargs": {...}}},
//!                "registry_": {"model_name": "SCVI", "setup_args": {...},
//!                              "field_registries": {"X", "batch", "labels", ...}, ...},
//!                "train_indices_", "validation_indices_", "test_indices_": int64 ndarrays,
//!                "history_": {column: pandas DataFrame indexed by "epoch"}, "is_trained_", ...}}
//! ```
//!
//! Read ([`read`]) and written ([`write`]) here without Python. Reading maps every option scvi-rs
//! implements onto [`ModelConfig`] and refuses, naming it, what it does not: another model class
//! (SCANVI, TOTALVI, ...), a setup other than `setup_anndata`, extra categorical or continuous
//! covariates, a size-factor key, `gene_likelihood="normal"`, a batch embedding, a variance
//! activation, extra encoder / decoder arguments, `log_variational=False`, minified data, and any
//! option or tensor it does not know. Writing gives what `SCVI.load` needs, the history as pandas
//! frames built by plain calls (`DataFrame({column: values}, Index(epochs, None, False,
//! "epoch"))`), and signs the archive (its zip comment) so that `--force` replaces only an export.

use super::config::{Dispersion, LatentDistribution, ModelConfig, NormPlacement};
use super::init::ModelState;
use super::layout::Layout;
use super::pickle::{Pickle, Value};
use super::torch_file::{numpy_array, numpy_i64, numpy_strings, DType, TorchFile, TorchWriter};
use crate::atomic::{only_files, AtomicDir, OutputKind};
use crate::error::{Error, Result};
use crate::math::likelihood::GeneLikelihood;
use crate::store::wfnv64;
use std::path::{Path, PathBuf};

/// The file of a scvi-tools model directory.
pub const MODEL_PT: &str = "model.pt";
/// The scvi-tools version whose format is written (and checked live by the tests).
pub const SCVI_TOOLS_VERSION: &str = "1.4.2";
/// How an export signs its archive.
const SIGNATURE: &str = "written by scvi-rs export";

/// A scvi-tools model directory as an output: replaced (with `--force`) only when it holds just
/// a `model.pt` that `scvi-rs export` wrote.
pub const EXPORT_DIR: OutputKind = OutputKind {
    what: "a scvi-tools model directory written by scvi-rs export",
    dir: true,
    is_ours: is_export,
};

fn is_export(dir: &Path) -> std::result::Result<(), String> {
    only_files(dir, &[MODEL_PT])?;
    let signed = TorchFile::read(&dir.join(MODEL_PT))
        .map(|f| f.comment.starts_with(SIGNATURE.as_bytes()))
        .unwrap_or(false);
    if signed {
        Ok(())
    } else {
        Err(format!("its {MODEL_PT} was not written by scvi-rs export"))
    }
}

/// One column of the training history, per epoch.
#[derive(Clone, Debug, PartialEq)]
pub struct HistoryColumn {
    pub name: String,
    pub epochs: Vec<i64>,
    pub values: Vec<f64>,
}

/// A categorical covariate of `SCVI.setup_anndata`: its obs column and categories, in code
/// order (no column: scvi-rs' single category "0").
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Covariate {
    pub key: Option<String>,
    pub categories: Vec<String>,
}

/// `SCVI.setup_anndata`'s choices: the AnnData layer of the counts (None: X), the batch and
/// the labels.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AnnDataSetup {
    pub layer: Option<String>,
    pub batch: Covariate,
    pub labels: Covariate,
}

/// A SCVI model in scvi-tools' terms: what its directory holds.
#[derive(Clone, Debug)]
pub struct ScviToolsModel {
    pub config: ModelConfig,
    pub state: ModelState<f32>,
    /// The train and validation cells (`train_indices_`, `validation_indices_`), when saved.
    pub split: Option<(Vec<usize>, Vec<usize>)>,
    pub genes: Vec<String>,
    pub setup: AnnDataSetup,
    /// The cells the model was set up on.
    pub n_cells: usize,
    /// Written on export; not read on import (scvi-tools pickles its frames as pandas internals).
    pub history: Vec<HistoryColumn>,
    /// The scvi-tools version that wrote the model (read) or whose format is written.
    pub scvi_version: String,
}

// ------------------------------------------------------------------------------------------------
// Writing.

fn s(v: &str) -> Pickle {
    Pickle::str(v)
}

fn opt_str(v: &Option<String>) -> Pickle {
    v.as_ref().map_or(Pickle::None, |k| s(k))
}

fn idx(v: &[usize]) -> Pickle {
    numpy_i64(&v.iter().map(|&i| i as i64).collect::<Vec<_>>())
}

fn dispersion_name(d: Dispersion) -> &'static str {
    match d {
        Dispersion::Gene => "gene",
        Dispersion::GeneBatch => "gene-batch",
        Dispersion::GeneLabel => "gene-label",
        Dispersion::GeneCell => "gene-cell",
    }
}

fn likelihood_name(g: GeneLikelihood) -> &'static str {
    match g {
        GeneLikelihood::Zinb => "zinb",
        GeneLikelihood::Nb => "nb",
        GeneLikelihood::Poisson => "poisson",
    }
}

fn norm_name(n: NormPlacement) -> &'static str {
    match n {
        NormPlacement::Encoder => "encoder",
        NormPlacement::Decoder => "decoder",
        NormPlacement::Both => "both",
        NormPlacement::None => "none",
    }
}

/// A categorical field's registry: the categories under the key, or scvi-tools' single code 0
/// (an int array, as scvi-tools makes it) when there is no key.
fn categorical(c: &Covariate, internal: &str, stat: &str) -> Pickle {
    let key = &c.key;
    let (mapping, n) = match key {
        Some(_) => (numpy_strings(&c.categories), c.categories.len()),
        None => (numpy_i64(&[0]), 1),
    };
    Pickle::dict([
        (
            "data_registry",
            Pickle::dict([("attr_name", s("obs")), ("attr_key", s(internal))]),
        ),
        (
            "state_registry",
            Pickle::dict([
                ("categorical_mapping", mapping),
                ("original_key", key.as_deref().map_or(s(internal), s)),
            ]),
        ),
        (
            "summary_stats",
            Pickle::dict([(stat, Pickle::Int(n as i64))]),
        ),
    ])
}

fn empty_field(stat: Option<&str>) -> Pickle {
    let stats = stat.map_or(Pickle::dict::<&str>([]), |st| {
        Pickle::dict([(st, Pickle::Int(0))])
    });
    Pickle::dict([
        ("data_registry", Pickle::dict::<&str>([])),
        ("state_registry", Pickle::dict::<&str>([])),
        ("summary_stats", stats),
    ])
}

/// A uuid (version 4 layout) derived from the model's bytes, so that an export is reproducible.
fn uuid_of(m: &ScviToolsModel) -> String {
    let mut bytes: Vec<u8> = m
        .state
        .params
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    bytes.extend(m.genes.iter().flat_map(|g| g.bytes()));
    let (a, b) = (wfnv64(&bytes), wfnv64(&[&bytes[..], b"2"].concat()));
    let h = format!("{a:016x}{b:016x}");
    format!(
        "{}-{}-4{}-8{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

/// `pandas.DataFrame({name: values}, index=pandas.Index(epochs, None, False, "epoch"))`.
fn frame(c: &HistoryColumn) -> Pickle {
    let index = Pickle::call(
        Pickle::global("pandas", "Index"),
        vec![
            Pickle::List(c.epochs.iter().map(|&e| Pickle::Int(e)).collect()),
            Pickle::None,
            Pickle::Bool(false),
            s("epoch"),
        ],
    );
    let data = Pickle::dict([(
        c.name.clone(),
        Pickle::List(c.values.iter().map(|&v| Pickle::Float(v)).collect()),
    )]);
    Pickle::call(Pickle::global("pandas", "DataFrame"), vec![data, index])
}

/// Write `m` as a scvi-tools model directory at `dir` (refused if it exists, unless `force` and
/// it is an export scvi-rs wrote).
pub fn write(m: &ScviToolsModel, dir: &Path, force: bool, flag: &str) -> Result<()> {
    let staged = AtomicDir::create(dir, &EXPORT_DIR, force, flag)?;
    let mut w = TorchWriter::default();
    w.comment = format!("{SIGNATURE} {}", env!("CARGO_PKG_VERSION"));
    let layout = &m.state.layout;
    let mut tensors = Vec::new();
    for t in &layout.params {
        tensors.push((
            s(&t.name),
            w.f32_tensor(&t.shape, &m.state.params[t.range()]),
        ));
    }
    for t in &layout.buffers {
        let vals = &m.state.buffers[t.range()];
        let tensor = if t.name.ends_with("num_batches_tracked") {
            let raw = (vals[0].round() as i64).to_le_bytes().to_vec();
            w.tensor(DType::I64, &[], raw)
        } else {
            w.f32_tensor(&t.shape, vals)
        };
        tensors.push((s(&t.name), tensor));
    }
    let c = &m.config;
    let non_kwargs = Pickle::dict([
        ("n_hidden", Pickle::Int(c.n_hidden as i64)),
        ("n_latent", Pickle::Int(c.n_latent as i64)),
        ("n_layers", Pickle::Int(c.n_layers as i64)),
        ("dropout_rate", Pickle::Float(c.dropout_rate)),
        ("dispersion", s(dispersion_name(c.dispersion))),
        ("gene_likelihood", s(likelihood_name(c.gene_likelihood))),
        (
            "use_observed_lib_size",
            Pickle::Bool(c.use_observed_lib_size),
        ),
        (
            "latent_distribution",
            s(match c.latent_distribution {
                LatentDistribution::Normal => "normal",
                LatentDistribution::Ln => "ln",
            }),
        ),
    ]);
    let kwargs = Pickle::dict([
        ("encode_covariates", Pickle::Bool(c.encode_covariates)),
        (
            "deeply_inject_covariates",
            Pickle::Bool(c.deeply_inject_covariates),
        ),
        ("use_batch_norm", s(norm_name(c.use_batch_norm))),
        ("use_layer_norm", s(norm_name(c.use_layer_norm))),
    ]);
    let setup_args = Pickle::dict([
        ("layer", opt_str(&m.setup.layer)),
        ("batch_key", opt_str(&m.setup.batch.key)),
        ("labels_key", opt_str(&m.setup.labels.key)),
        ("size_factor_key", Pickle::None),
        ("categorical_covariate_keys", Pickle::None),
        ("continuous_covariate_keys", Pickle::None),
    ]);
    let x_field = Pickle::dict([
        (
            "data_registry",
            Pickle::dict([
                (
                    "attr_name",
                    s(if m.setup.layer.is_some() {
                        "layers"
                    } else {
                        "X"
                    }),
                ),
                ("attr_key", opt_str(&m.setup.layer)),
            ]),
        ),
        (
            "state_registry",
            Pickle::dict([
                ("n_obs", Pickle::Int(m.n_cells as i64)),
                ("n_vars", Pickle::Int(m.genes.len() as i64)),
                ("column_names", numpy_strings(&m.genes)),
            ]),
        ),
        (
            "summary_stats",
            Pickle::dict([
                ("n_vars", Pickle::Int(m.genes.len() as i64)),
                ("n_cells", Pickle::Int(m.n_cells as i64)),
            ]),
        ),
    ]);
    let registry = Pickle::dict([
        ("scvi_version", s(&m.scvi_version)),
        ("model_name", s("SCVI")),
        ("setup_args", setup_args),
        (
            "field_registries",
            Pickle::dict([
                ("X", x_field),
                (
                    "batch",
                    categorical(&m.setup.batch, "_scvi_batch", "n_batch"),
                ),
                (
                    "labels",
                    categorical(&m.setup.labels, "_scvi_labels", "n_labels"),
                ),
                ("size_factor", empty_field(None)),
                (
                    "extra_categorical_covs",
                    empty_field(Some("n_extra_categorical_covs")),
                ),
                (
                    "extra_continuous_covs",
                    empty_field(Some("n_extra_continuous_covs")),
                ),
            ]),
        ),
        ("setup_method_name", s("setup_anndata")),
        ("_scvi_uuid", s(&uuid_of(m))),
    ]);
    let mut attr = vec![
        (
            "init_params_",
            Pickle::dict([
                ("kwargs", Pickle::dict([("kwargs", kwargs)])),
                ("non_kwargs", non_kwargs),
            ]),
        ),
        ("registry_", registry),
        ("is_trained_", Pickle::Bool(true)),
        ("test_indices_", idx(&[])),
        (
            "get_normalized_function_name_",
            s("get_normalized_expression"),
        ),
    ];
    if let Some((t, v)) = &m.split {
        attr.push(("train_indices_", idx(t)));
        attr.push(("validation_indices_", idx(v)));
    }
    if !m.history.is_empty() {
        let frames = m.history.iter().map(|c| (c.name.clone(), frame(c)));
        attr.push(("history_", Pickle::dict(frames)));
    }
    let root = Pickle::dict([
        ("model_state_dict", Pickle::Dict(tensors)),
        ("var_names", numpy_strings(&m.genes)),
        ("attr_dict", Pickle::dict(attr)),
    ]);
    w.finish(&root, &staged.path().join(MODEL_PT), false)?;
    staged.commit()
}

// ------------------------------------------------------------------------------------------------
// Reading.

/// Reads the pickle tree with errors that name the file and the field.
struct Reader<'a> {
    path: &'a Path,
}

impl Reader<'_> {
    fn err(&self, msg: impl Into<String>) -> Error {
        Error::format(self.path, msg)
    }

    /// A refusal: scvi-tools has it, scvi-rs does not implement it.
    fn unsupported(&self, what: impl std::fmt::Display) -> Error {
        self.err(format!(
            "{what}: scvi-rs does not implement this, so it cannot import the model"
        ))
    }

    fn get(&self, v: &Value, key: &str, at: &str) -> Result<Value> {
        v.get(key)
            .ok_or_else(|| self.err(format!("{at} has no '{key}' (not a scvi-tools SCVI model)")))
    }

    fn opt_str(&self, v: Option<Value>, name: &str) -> Result<Option<String>> {
        match v {
            None | Some(Value::None) => Ok(None),
            Some(Value::Str(s)) => Ok(Some(s)),
            Some(other) => Err(self.err(format!("{name} is a {}, expected text", other.kind()))),
        }
    }

    fn strings(&self, v: &Value, name: &str) -> Result<Vec<String>> {
        numpy_array(v)
            .map(|a| a.labels())
            .or_else(|| {
                v.items().map(|xs| {
                    xs.iter()
                        .map(|x| x.as_str().unwrap_or("").to_string())
                        .collect()
                })
            })
            .ok_or_else(|| self.err(format!("{name} is a {}, expected an array", v.kind())))
    }

    fn indices(&self, v: Option<Value>, name: &str) -> Result<Option<Vec<usize>>> {
        let Some(v) = v else { return Ok(None) };
        match numpy_array(&v) {
            Some(super::torch_file::NdArray::Ints(ix)) => ix
                .iter()
                .map(|&i| usize::try_from(i).map_err(|_| self.err(format!("{name}: index {i}"))))
                .collect::<Result<Vec<_>>>()
                .map(Some),
            _ => Err(self.err(format!("{name} is a {}, expected an int array", v.kind()))),
        }
    }
}

/// The options scvi-rs reads from `init_params_`, by name. Each is checked and mapped onto
/// `cfg`; an option not listed here is refused.
fn apply_option(r: &Reader, cfg: &mut ModelConfig, name: &str, v: &Value) -> Result<()> {
    let bad = || {
        r.err(format!(
            "option {name} = {} (a {}) is not understood",
            show(v),
            v.kind()
        ))
    };
    let uint = || {
        v.as_int()
            .filter(|&i| i >= 1 && !matches!(v, Value::Bool(_)))
            .map(|i| i as usize)
            .ok_or_else(bad)
    };
    let boolean = || v.as_bool().ok_or_else(bad);
    let text = || v.as_str().ok_or_else(bad);
    let norm = |t: &str| -> Result<NormPlacement> {
        Ok(match t {
            "encoder" => NormPlacement::Encoder,
            "decoder" => NormPlacement::Decoder,
            "both" => NormPlacement::Both,
            "none" => NormPlacement::None,
            _ => return Err(bad()),
        })
    };
    let empty = matches!(v, Value::None) || v.entries().is_some_and(|e| e.is_empty());
    match name {
        "n_hidden" => cfg.n_hidden = uint()?,
        "n_latent" => cfg.n_latent = uint()?,
        "n_layers" => cfg.n_layers = uint()?,
        "dropout_rate" => cfg.dropout_rate = v.as_float().ok_or_else(bad)?,
        "dispersion" => {
            cfg.dispersion = match text()? {
                "gene" => Dispersion::Gene,
                "gene-batch" => Dispersion::GeneBatch,
                "gene-label" => Dispersion::GeneLabel,
                "gene-cell" => Dispersion::GeneCell,
                _ => return Err(bad()),
            }
        }
        "gene_likelihood" => {
            cfg.gene_likelihood = match text()? {
                "zinb" => GeneLikelihood::Zinb,
                "nb" => GeneLikelihood::Nb,
                "poisson" => GeneLikelihood::Poisson,
                "normal" => return Err(r.unsupported("gene_likelihood 'normal'")),
                _ => return Err(bad()),
            }
        }
        "latent_distribution" => {
            cfg.latent_distribution = match text()? {
                "normal" => LatentDistribution::Normal,
                "ln" => LatentDistribution::Ln,
                _ => return Err(bad()),
            }
        }
        "use_observed_lib_size" => cfg.use_observed_lib_size = boolean()?,
        "encode_covariates" => cfg.encode_covariates = boolean()?,
        "deeply_inject_covariates" => cfg.deeply_inject_covariates = boolean()?,
        "use_batch_norm" => cfg.use_batch_norm = norm(text()?)?,
        "use_layer_norm" => cfg.use_layer_norm = norm(text()?)?,
        // Options whose default is what scvi-rs computes: accepted at the default only.
        "log_variational" if v.as_bool() == Some(true) => {}
        "batch_representation" if v.as_str() == Some("one-hot") => {}
        "var_activation"
        | "extra_encoder_kwargs"
        | "extra_decoder_kwargs"
        | "batch_embedding_kwargs"
            if empty => {}
        // Only tunes scvi-tools' hyper-parameter search; no effect on the model.
        "extra_payload_autotune" => {}
        _ => return Err(r.unsupported(format!("option {name} = {}", show(v)))),
    }
    Ok(())
}

/// A short rendering of a pickled value for messages.
fn show(v: &Value) -> String {
    match v {
        Value::Str(s) => format!("'{s}'"),
        Value::Int(i) => i.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Bool(b) => if *b { "True" } else { "False" }.into(),
        Value::None => "None".into(),
        other => other.kind(),
    }
}

/// The model directory (or `model.pt` file) at `path`.
pub fn model_pt(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join(MODEL_PT)
    } else {
        path.to_path_buf()
    }
}

/// Read a scvi-tools SCVI model directory (see the module documentation for what is refused).
pub fn read(dir: &Path) -> Result<ScviToolsModel> {
    let path = model_pt(dir);
    let file = TorchFile::read(&path)?;
    let r = Reader { path: &path };
    let root = &file.root;
    let attr = r.get(root, "attr_dict", "the file")?;
    let registry = r.get(&attr, "registry_", "attr_dict")?;
    let class = registry
        .get("model_name")
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| "?".into());
    if class != "SCVI" {
        return Err(r.err(format!(
            "a scvi-tools {class} model; scvi-rs imports SCVI models only (the VAE of \
             scvi.model.SCVI)"
        )));
    }
    let method = r.opt_str(registry.get("setup_method_name"), "setup_method_name")?;
    if let Some(m) = method.filter(|m| m != "setup_anndata") {
        return Err(r.unsupported(format!("a model set up with {m}")));
    }
    let scvi_version = r
        .opt_str(registry.get("scvi_version"), "scvi_version")?
        .unwrap_or_else(|| "?".into());

    let setup = r.get(&registry, "setup_args", "registry_")?;
    let mut keys = (None, None, None);
    for (k, v) in setup.entries().unwrap_or_default() {
        let k = k.as_str().unwrap_or("").to_string();
        let none_or_empty = matches!(v, Value::None) || v.items().is_some_and(|i| i.is_empty());
        match k.as_str() {
            "layer" => keys.0 = r.opt_str(Some(v), "setup_args.layer")?,
            "batch_key" => keys.1 = r.opt_str(Some(v), "setup_args.batch_key")?,
            "labels_key" => keys.2 = r.opt_str(Some(v), "setup_args.labels_key")?,
            "size_factor_key" | "categorical_covariate_keys" | "continuous_covariate_keys"
                if none_or_empty => {}
            "size_factor_key" => return Err(r.unsupported(format!("size_factor_key {}", show(&v)))),
            "categorical_covariate_keys" => {
                return Err(
                    r.unsupported("extra categorical covariates (categorical_covariate_keys)")
                )
            }
            "continuous_covariate_keys" => {
                return Err(r.unsupported("continuous covariates (continuous_covariate_keys)"))
            }
            other => return Err(r.unsupported(format!("setup argument {other} = {}", show(&v)))),
        }
    }
    let (layer, batch_key, labels_key) = keys;

    let fields = r.get(&registry, "field_registries", "registry_")?;
    for (k, _) in fields.entries().unwrap_or_default() {
        let k = k.as_str().unwrap_or("?");
        if !matches!(
            k,
            "X" | "batch"
                | "labels"
                | "size_factor"
                | "extra_categorical_covs"
                | "extra_continuous_covs"
        ) {
            return Err(r.unsupported(format!(
                "the data field '{k}' (minified data, or a setup beyond SCVI.setup_anndata)"
            )));
        }
    }
    let mapping = |field: &str| -> Result<Vec<String>> {
        let f = r.get(&fields, field, "field_registries")?;
        let st = r.get(&f, "state_registry", field)?;
        r.strings(
            &r.get(&st, "categorical_mapping", field)?,
            &format!("{field} categories"),
        )
    };
    let batch_mapping = mapping("batch")?;
    let label_mapping = mapping("labels")?;
    let x_state = r.get(
        &r.get(&fields, "X", "field_registries")?,
        "state_registry",
        "X",
    )?;
    let genes = match root.get("var_names") {
        Some(v) => r.strings(&v, "var_names")?,
        None => r.strings(&r.get(&x_state, "column_names", "X")?, "X column_names")?,
    };
    let n_cells = x_state
        .get("n_obs")
        .and_then(|v| v.as_int())
        .unwrap_or(0)
        .max(0) as usize;

    // The options, as scvi-tools' `_initialize_model` gathers them: `non_kwargs`, and every
    // group of `kwargs` (`{"kwargs": {option: value}}`); older saves keep the options flat, the
    // groups as the dict values.
    let init = r.get(&attr, "init_params_", "attr_dict")?;
    let named = |d: &Value| -> Vec<(String, Value)> {
        d.entries()
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k.as_str().unwrap_or("?").to_string(), v))
            .collect()
    };
    let mut options = Vec::new();
    match init.get("non_kwargs") {
        Some(nk) => {
            options.extend(named(&nk));
            for (_, group) in named(&init.get("kwargs").unwrap_or(Value::None)) {
                options.extend(named(&group));
            }
        }
        None => {
            for (k, v) in named(&init) {
                match v.entries() {
                    Some(_) => options.extend(named(&v)),
                    None => options.push((k, v)),
                }
            }
        }
    }
    let mut config = ModelConfig {
        n_input: genes.len(),
        n_batch: if batch_key.is_some() {
            batch_mapping.len()
        } else {
            1
        },
        n_labels: if labels_key.is_some() {
            label_mapping.len()
        } else {
            1
        },
        ..ModelConfig::default()
    };
    for (name, v) in &options {
        if name == "use_cuda" {
            continue; // pre-0.9 saves; a device choice, not the model.
        }
        apply_option(&r, &mut config, name, v)?;
    }
    config.validate()?;

    let state = read_state(&r, &file, root, Layout::new(&config))?;
    let train = r.indices(attr.get("train_indices_"), "train_indices_")?;
    let validation = r.indices(attr.get("validation_indices_"), "validation_indices_")?;
    let or_single = |key: &Option<String>, mapping| match key {
        Some(_) => mapping,
        None => vec!["0".to_string()],
    };
    Ok(ScviToolsModel {
        config,
        state,
        genes,
        setup: AnnDataSetup {
            layer,
            batch: Covariate {
                categories: or_single(&batch_key, batch_mapping),
                key: batch_key,
            },
            labels: Covariate {
                categories: or_single(&labels_key, label_mapping),
                key: labels_key,
            },
        },
        n_cells,
        split: train.zip(validation),
        history: Vec::new(),
        scvi_version,
    })
}

/// Every tensor of `layout` from `model_state_dict`, shapes checked; a tensor scvi-rs does not
/// know is refused (it means a module scvi-rs does not implement).
fn read_state(
    r: &Reader,
    file: &TorchFile,
    root: &Value,
    layout: Layout,
) -> Result<ModelState<f32>> {
    let sd = r.get(root, "model_state_dict", "the file")?;
    let entries = sd.entries().ok_or_else(|| {
        r.err(format!(
            "model_state_dict is a {}, expected a dict",
            sd.kind()
        ))
    })?;
    let mut state = ModelState::<f32>::zeros(layout);
    let layout = state.layout.clone();
    let mut seen = 0usize;
    for (k, v) in &entries {
        let name = k.as_str().unwrap_or("?");
        if !TorchFile::is_tensor(v) {
            continue; // pyro_param_store and the like: not weights.
        }
        let (dst, t) = match (layout.param(name), layout.buffer(name)) {
            (Some(t), _) => (&mut state.params[t.range()], t),
            (None, Some(t)) => (&mut state.buffers[t.range()], t),
            (None, None) => {
                return Err(r.unsupported(format!(
                    "tensor '{name}' (not part of scvi-rs' SCVI with this model's options)"
                )))
            }
        };
        let tensor = file.tensor(v, name)?;
        if tensor.shape != t.shape && !(t.shape.is_empty() && tensor.values.len() == 1) {
            return Err(r.err(format!(
                "tensor '{name}' has shape {:?}; the model's options give {:?}",
                tensor.shape, t.shape
            )));
        }
        dst.iter_mut()
            .zip(&tensor.values)
            .for_each(|(d, &x)| *d = x as f32);
        seen += 1;
    }
    let all = layout.params.len() + layout.buffers.len();
    if seen != all {
        let missing = layout
            .params
            .iter()
            .chain(&layout.buffers)
            .find(|t| !entries.iter().any(|(k, _)| k.as_str() == Some(&t.name)))
            .map_or("?", |t| t.name.as_str());
        return Err(r.err(format!(
            "model_state_dict lacks tensor '{missing}' ({seen} of the {all} the options give)"
        )));
    }
    Ok(state)
}
