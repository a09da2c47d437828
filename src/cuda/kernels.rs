//! The kernels as Rust sees them, each thing defined once: the sources (kernels/*.cu, embedded at
//! build time) with their entry points, the constants Rust and the kernels share, and the
//! `#[repr(C)]` argument structs.
//!
//! - Entry points: one `&str` constant per kernel, used by the loading table [`KERNEL_FILES`] (NVRTC
//!   and the host emulation load exactly these) and by the launches in `ops`.
//! - Constants: [`defines`] turns the Rust definitions (the model's `VAR_EPS`, `BN_EPS`,
//!   `BN_MOMENTUM`, `LN_EPS`, the likelihood's `EPS`, the flags and the block shapes below) into
//!   `-D NAME=VALUE` options for NVRTC and for the emulation's C++ compiler; no `.cu` file spells
//!   one of them (common.cuh stops the compile when they are missing).
//! - Argument structs: each mirrors the struct of the same name in a `.cu` file field for field;
//!   [`struct_sizes`] lists them for the check against the C++ compiler's sizes
//!   (tests/cuda_kernels.rs `argument_structs_match_the_kernels`).
//!
//! Pointers in the structs are raw device addresses ([`DevPtr`]); 0 stands for "absent" where a
//! kernel allows it.

use crate::math::likelihood;
use crate::model::config::{BN_EPS, BN_MOMENTUM, LN_EPS, VAR_EPS};
use crate::rng::Stream;
use cudarc::driver::DeviceRepr;

/// A device address (a host address under emulation).
pub type DevPtr = u64;

/// The shared header.
pub const COMMON_CUH: &str = include_str!("../../kernels/common.cuh");

// Entry points, by kernel file.
pub const SPARSE_LOG1P_LINEAR_FWD: &str = "sparse_log1p_linear_fwd";
pub const SPARSE_LOG1P_LINEAR_BWD: &str = "sparse_log1p_linear_bwd";
pub const TRANSPOSE_FWD: &str = "transpose_fwd";
pub const FC_POST_FWD: &str = "fc_post_fwd";
pub const FC_POST_BWD: &str = "fc_post_bwd";
pub const LAYER_NORM_FWD: &str = "layer_norm_fwd";
pub const LAYER_NORM_BWD: &str = "layer_norm_bwd";
pub const REPARAM_KL_FWD: &str = "reparam_kl_fwd";
pub const REPARAM_KL_BWD: &str = "reparam_kl_bwd";
pub const LIBRARY_FWD: &str = "library_fwd";
pub const LIBRARY_BWD: &str = "library_bwd";
pub const DECODER_OUTPUT_FWD: &str = "decoder_output_fwd";
pub const DECODER_OUTPUT_BWD: &str = "decoder_output_bwd";
pub const COLUMN_SUM_BWD: &str = "column_sum_bwd";
pub const ADAM_STEP: &str = "adam_step";
pub const GATHER_OFFSETS_FWD: &str = "gather_offsets_fwd";
pub const GATHER_ROWS_FWD: &str = "gather_rows_fwd";

/// One kernel file, its entry points and the CPU module that is its twin.
#[derive(Clone, Copy, Debug)]
pub struct KernelFile {
    pub name: &'static str,
    pub source: &'static str,
    pub entries: &'static [&'static str],
    pub cpu_twin: &'static str,
}

/// Every kernel file, with the entry points the engine loads from it.
pub const KERNEL_FILES: &[KernelFile] = &[
    KernelFile {
        name: "sparse.cu",
        source: include_str!("../../kernels/sparse.cu"),
        entries: &[
            SPARSE_LOG1P_LINEAR_FWD,
            SPARSE_LOG1P_LINEAR_BWD,
            TRANSPOSE_FWD,
        ],
        cpu_twin: "src/cpu/sparse.rs",
    },
    KernelFile {
        name: "fc.cu",
        source: include_str!("../../kernels/fc.cu"),
        entries: &[FC_POST_FWD, FC_POST_BWD, LAYER_NORM_FWD, LAYER_NORM_BWD],
        cpu_twin: "src/cpu/fc.rs",
    },
    KernelFile {
        name: "latent.cu",
        source: include_str!("../../kernels/latent.cu"),
        entries: &[REPARAM_KL_FWD, REPARAM_KL_BWD, LIBRARY_FWD, LIBRARY_BWD],
        cpu_twin: "src/cpu/latent.rs",
    },
    KernelFile {
        name: "output.cu",
        source: include_str!("../../kernels/output.cu"),
        entries: &[DECODER_OUTPUT_FWD, DECODER_OUTPUT_BWD, COLUMN_SUM_BWD],
        cpu_twin: "src/cpu/output.rs",
    },
    KernelFile {
        name: "adam.cu",
        source: include_str!("../../kernels/adam.cu"),
        entries: &[ADAM_STEP],
        cpu_twin: "src/cpu/adam.rs",
    },
    KernelFile {
        name: "gather.cu",
        source: include_str!("../../kernels/gather.cu"),
        entries: &[GATHER_OFFSETS_FWD, GATHER_ROWS_FWD],
        cpu_twin: "src/batch.rs",
    },
];

// Flags and block shapes (passed to the kernels by `defines`).

/// fc.cu: the layer has a BatchNorm; training mode; apply ReLU and dropout here (off when a
/// LayerNorm follows); dropout active (training and p > 0).
pub const FC_HAS_BN: u32 = 1;
pub const FC_TRAIN: u32 = 2;
pub const FC_ACT: u32 = 4;
pub const FC_DROPOUT: u32 = 8;
/// fc.cu: fc_post_* blocks are `FC_TX x FC_TY` threads over 32 columns; layer_norm_* blocks have
/// `LN_THREADS` threads over one row.
pub const FC_TX: u32 = 32;
pub const FC_TY: u32 = 8;
pub const LN_THREADS: u32 = 128;
/// sparse.cu: threads per block of the sparse layer; transpose tiles of `TR_TILE` squared, blocks of
/// `TR_TILE x TR_ROWS` threads.
pub const SP_THREADS: u32 = 128;
pub const TR_TILE: u32 = 32;
pub const TR_ROWS: u32 = 8;
/// latent.cu: the logistic-normal latent (softmax); the observed library (library kernels).
pub const LAT_LN: u32 = 1;
pub const LAT_OBSERVED: u32 = 2;
/// output.cu: the likelihood (`GeneLikelihood`), where theta comes from, threads per cell.
pub const LIK_ZINB: u32 = 0;
pub const LIK_NB: u32 = 1;
pub const LIK_POISSON: u32 = 2;
pub const THETA_NONE: u32 = 0;
pub const THETA_GENE: u32 = 1;
pub const THETA_CATEGORY: u32 = 2;
pub const THETA_CELL: u32 = 3;
pub const OUT_THREADS: u32 = 256;
/// gather.cu: threads of the one offsets block (its scan's width) and of each row block.
pub const GATHER_THREADS: u32 = 256;

/// The constants the kernels take from Rust, as `(name, C literal)`: passed as `-DNAME=VALUE` to
/// NVRTC and to the emulation's C++ compiler. Floating-point values are written in the shortest
/// form that reads back to the same f64.
pub fn defines() -> Vec<(&'static str, String)> {
    let f = |v: f64| format!("{v:e}");
    let u = |v: u32| format!("{v}u");
    vec![
        ("SCVI_VAR_EPS", f(VAR_EPS)),
        ("SCVI_BN_EPS", f(BN_EPS)),
        ("SCVI_BN_MOMENTUM", f(BN_MOMENTUM)),
        ("SCVI_LN_EPS", f(LN_EPS)),
        ("SCVI_LIK_EPS", f(likelihood::EPS)),
        ("FC_HAS_BN", u(FC_HAS_BN)),
        ("FC_TRAIN", u(FC_TRAIN)),
        ("FC_ACT", u(FC_ACT)),
        ("FC_DROPOUT", u(FC_DROPOUT)),
        ("FC_TX", u(FC_TX)),
        ("FC_TY", u(FC_TY)),
        ("LN_THREADS", u(LN_THREADS)),
        ("SP_THREADS", u(SP_THREADS)),
        ("TR_TILE", u(TR_TILE)),
        ("TR_ROWS", u(TR_ROWS)),
        ("LAT_LN", u(LAT_LN)),
        ("LAT_OBSERVED", u(LAT_OBSERVED)),
        ("SCVI_LIK_ZINB", u(LIK_ZINB)),
        ("SCVI_LIK_NB", u(LIK_NB)),
        ("SCVI_LIK_POISSON", u(LIK_POISSON)),
        ("THETA_NONE", u(THETA_NONE)),
        ("THETA_GENE", u(THETA_GENE)),
        ("THETA_CATEGORY", u(THETA_CATEGORY)),
        ("THETA_CELL", u(THETA_CELL)),
        ("OUT_THREADS", u(OUT_THREADS)),
        ("GATHER_THREADS", u(GATHER_THREADS)),
    ]
}

/// The defines as compiler options (`-DNAME=VALUE`).
pub fn define_options() -> Vec<String> {
    defines()
        .into_iter()
        .map(|(n, v)| format!("-D{n}={v}"))
        .collect()
}

/// The likelihood's code in `OutputArgs`.
pub fn likelihood_code(lik: likelihood::GeneLikelihood) -> u32 {
    match lik {
        likelihood::GeneLikelihood::Zinb => LIK_ZINB,
        likelihood::GeneLikelihood::Nb => LIK_NB,
        likelihood::GeneLikelihood::Poisson => LIK_POISSON,
    }
}

/// 64-bit FNV-1a (the caches' key; not cryptographic, only change detection).
pub fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in *p {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Philox key and stream (`PhiloxKey` in common.cuh): element `i` of stream (`stream`, `index`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PhiloxKey {
    pub key0: u32,
    pub key1: u32,
    pub stream: u32,
    pub pad: u32,
    pub index: u64,
}

impl PhiloxKey {
    /// The same key as `Philox::new(seed)` in src/rng.rs, for one stream.
    pub fn new(seed: u64, stream: Stream, index: u64) -> Self {
        PhiloxKey {
            key0: seed as u32,
            key1: (seed >> 32) as u32,
            stream: stream as u32,
            pad: 0,
            index,
        }
    }
}

/// fc.cu `FcPass`: what both kernels of a layer read besides their buffers: the dropout (Philox
/// key, p, scale), the flags (`FC_*`; the LayerNorm reads `FC_DROPOUT` only) and the shape
/// `[rows, n]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FcPass {
    pub key: PhiloxKey,
    pub dropout_p: f64,
    pub dropout_scale: f32,
    pub flags: u32,
    pub rows: u32,
    pub n: u32,
}

impl FcPass {
    /// The flags of a layer: BatchNorm, training, ReLU here (no LayerNorm after), dropout.
    pub fn flags(has_bn: bool, train: bool, layer_norm: bool, dropout: bool) -> u32 {
        let mut flags = 0;
        if has_bn {
            flags |= FC_HAS_BN;
        }
        if train {
            flags |= FC_TRAIN;
        }
        if !layer_norm {
            flags |= FC_ACT;
        }
        if dropout {
            flags |= FC_DROPOUT;
        }
        flags
    }
}

/// fc.cu `FcPostArgs`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FcPostArgs {
    pub lin: DevPtr,
    pub bias: DevPtr,
    pub weight: DevPtr,
    pub dweight: DevPtr,
    pub dbias: DevPtr,
    pub cats: DevPtr,
    pub gamma: DevPtr,
    pub beta: DevPtr,
    pub dgamma: DevPtr,
    pub dbeta: DevPtr,
    pub running_mean: DevPtr,
    pub running_var: DevPtr,
    pub num_batches_tracked: DevPtr,
    pub xhat: DevPtr,
    pub inv_std: DevPtr,
    pub pre: DevPtr,
    pub out: DevPtr,
    pub pass: FcPass,
    pub n_in: u32,
    pub n_cat: u32,
    pub ldw: u32,
    pub pad: u32,
}

impl FcPostArgs {
    /// The arguments of the LayerNorm that follows this layer, on its `pre` and `out`, with the
    /// upstream gradient `d` (backward; 0 forward) and `ln_inv` (`[B]`).
    pub fn layer_norm(&self, d: DevPtr, ln_inv: DevPtr) -> LayerNormArgs {
        LayerNormArgs {
            pre: self.pre,
            out: self.out,
            d,
            ln_inv,
            pass: FcPass {
                flags: self.pass.flags & FC_DROPOUT,
                ..self.pass
            },
        }
    }
}

/// fc.cu `LayerNormArgs`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct LayerNormArgs {
    pub pre: DevPtr,
    pub out: DevPtr,
    pub d: DevPtr,
    pub ln_inv: DevPtr,
    pub pass: FcPass,
}

/// sparse.cu `SparseLinearArgs`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SparseLinearArgs {
    pub lin: DevPtr,
    pub d: DevPtr,
    pub wt: DevPtr,
    pub dweight: DevPtr,
    pub indptr: DevPtr,
    pub indices: DevPtr,
    pub values: DevPtr,
    pub rows: u32,
    pub h: u32,
    pub genes: u32,
    pub ldw: u32,
    pub tile: u32,
    pub pad: u32,
}

/// sparse.cu `TransposeArgs`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TransposeArgs {
    pub src: DevPtr,
    pub dst: DevPtr,
    pub rows_src: u32,
    pub cols_src: u32,
    pub ld_src: u32,
    pub pad: u32,
}

/// latent.cu `LatentArgs`, for one latent of `n` dimensions over `rows` cells (z: `n = L`; the
/// library: `n = 1`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct LatentArgs {
    /// In: the mean head's product without its bias; out: `q_m` (`[B, n]`).
    pub q_m: DevPtr,
    pub b_m: DevPtr,
    /// In: the variance head's product without its bias; out: `u`, with it.
    pub u: DevPtr,
    pub b_v: DevPtr,
    /// Out: `q_v = exp(u) + VAR_EPS`, the sample (z, softmaxed for `LAT_LN`, or the library), the
    /// standard normals drawn, the KL per cell (f64, `[B]`).
    pub q_v: DevPtr,
    pub z: DevPtr,
    pub eps: DevPtr,
    pub kl: DevPtr,
    /// Backward: in, dloss/dz (or dloss/dlibrary); out, dloss/dq_m and dloss/du.
    pub dz: DevPtr,
    pub d_q_m: DevPtr,
    pub d_u: DevPtr,
    /// The observed log library (`LAT_OBSERVED`); the latent library's prior per batch and the
    /// cells' batch codes.
    pub log_library: DevPtr,
    pub prior_means: DevPtr,
    pub prior_vars: DevPtr,
    pub codes: DevPtr,
    pub key: PhiloxKey,
    /// Backward: `kl_weight / B` (z) or `1 / B` (library).
    pub kl_w: f32,
    pub flags: u32,
    pub rows: u32,
    pub n: u32,
}

/// output.cu `OutputArgs`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct OutputArgs {
    pub rho: DevPtr,
    pub b_rho: DevPtr,
    pub d_rho: DevPtr,
    pub pi: DevPtr,
    pub b_pi: DevPtr,
    pub r: DevPtr,
    pub b_r: DevPtr,
    pub px_r: DevPtr,
    pub codes: DevPtr,
    pub library: DevPtr,
    pub indptr: DevPtr,
    pub indices: DevPtr,
    pub values: DevPtr,
    pub rec: DevPtr,
    pub d_library: DevPtr,
    pub grad_scale: f64,
    pub likelihood: u32,
    pub theta_mode: u32,
    pub n_cat: u32,
    pub rows: u32,
    pub genes: u32,
    pub pad: u32,
}

/// output.cu `ColumnArgs`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ColumnArgs {
    pub d: DevPtr,
    pub out: DevPtr,
    pub codes: DevPtr,
    pub rows: u32,
    pub n: u32,
    pub n_cat: u32,
    pub pad: u32,
}

/// adam.cu `AdamArgs`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct AdamArgs {
    pub params: DevPtr,
    pub grads: DevPtr,
    pub m: DevPtr,
    pub v: DevPtr,
    pub mask: DevPtr,
    pub n: u64,
    pub step_size: f32,
    pub bc2_sqrt: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub one_minus_beta1: f32,
    pub one_minus_beta2: f32,
    pub weight_decay: f32,
    pub eps: f32,
}

impl AdamArgs {
    /// Update `t` (1-based) of `n` elements under `config`: the step constants computed on the
    /// host in f64 (`AdamConfig::step_constants`, as the CPU engine does) and rounded to f32; the
    /// buffers (params, grads, m, v, the trainable mask) are left for the caller to set.
    pub fn new(config: &crate::engine::AdamConfig, t: u64, n: usize) -> Self {
        let (step_size, bc2_sqrt) = config.step_constants(t);
        AdamArgs {
            n: n as u64,
            step_size: step_size as f32,
            bc2_sqrt: bc2_sqrt as f32,
            beta1: config.beta1 as f32,
            beta2: config.beta2 as f32,
            one_minus_beta1: 1.0f32 - config.beta1 as f32,
            one_minus_beta2: 1.0f32 - config.beta2 as f32,
            weight_decay: config.weight_decay as f32,
            eps: config.eps as f32,
            ..Default::default()
        }
    }
}

/// gather.cu `GatherArgs`: the data set held on the device (`src_*`), the B cell ids, and where
/// the minibatch goes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct GatherArgs {
    pub src_indptr: DevPtr,
    pub src_indices: DevPtr,
    pub src_values: DevPtr,
    pub src_batch: DevPtr,
    pub src_labels: DevPtr,
    pub src_log_library: DevPtr,
    pub cells: DevPtr,
    pub indptr: DevPtr,
    pub indices: DevPtr,
    pub values: DevPtr,
    pub batch: DevPtr,
    pub labels: DevPtr,
    pub log_library: DevPtr,
    pub rows: u32,
    pub pad: u32,
}

// SAFETY: each is #[repr(C)], made of integers, floats and device addresses, and mirrors the
// kernel-side struct of the same name field for field (tests/cuda_kernels.rs checks the sizes
// against the C++ compiler's).
unsafe impl DeviceRepr for PhiloxKey {}
unsafe impl DeviceRepr for FcPostArgs {}
unsafe impl DeviceRepr for LayerNormArgs {}
unsafe impl DeviceRepr for SparseLinearArgs {}
unsafe impl DeviceRepr for TransposeArgs {}
unsafe impl DeviceRepr for LatentArgs {}
unsafe impl DeviceRepr for OutputArgs {}
unsafe impl DeviceRepr for ColumnArgs {}
unsafe impl DeviceRepr for AdamArgs {}
unsafe impl DeviceRepr for GatherArgs {}

/// The structs' names and sizes, for the layout check against the C++ compiler's.
pub fn struct_sizes() -> Vec<(&'static str, usize)> {
    use std::mem::size_of;
    vec![
        ("PhiloxKey", size_of::<PhiloxKey>()),
        ("FcPass", size_of::<FcPass>()),
        ("FcPostArgs", size_of::<FcPostArgs>()),
        ("LayerNormArgs", size_of::<LayerNormArgs>()),
        ("SparseLinearArgs", size_of::<SparseLinearArgs>()),
        ("TransposeArgs", size_of::<TransposeArgs>()),
        ("LatentArgs", size_of::<LatentArgs>()),
        ("OutputArgs", size_of::<OutputArgs>()),
        ("ColumnArgs", size_of::<ColumnArgs>()),
        ("AdamArgs", size_of::<AdamArgs>()),
        ("GatherArgs", size_of::<GatherArgs>()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every entry point named here is an `SCVI_KERNEL` of its file, and every `SCVI_KERNEL` of a
    /// file is named here: the names cannot drift apart.
    #[test]
    fn entry_points_match_the_sources() {
        for f in KERNEL_FILES {
            let mut in_source: Vec<&str> = f
                .source
                .match_indices("SCVI_KERNEL(")
                .map(|(i, m)| {
                    let rest = &f.source[i + m.len()..];
                    rest[..rest.find(',').expect("SCVI_KERNEL(name, Args)")].trim()
                })
                .collect();
            let mut listed = f.entries.to_vec();
            in_source.sort_unstable();
            listed.sort_unstable();
            assert_eq!(in_source, listed, "{}", f.name);
        }
    }

    /// No kernel file defines a constant that Rust passes in.
    #[test]
    fn shared_constants_are_not_redefined() {
        for (name, _) in defines() {
            let def = format!("#define {name} ");
            for (file, src) in KERNEL_FILES
                .iter()
                .map(|f| (f.name, f.source))
                .chain([("common.cuh", COMMON_CUH)])
            {
                assert!(!src.contains(&def), "{file} defines {name}");
            }
        }
    }

    /// The floating-point defines read back to exactly the Rust values.
    #[test]
    fn float_defines_read_back_exactly() {
        let d = defines();
        for (name, want) in [
            ("SCVI_VAR_EPS", VAR_EPS),
            ("SCVI_BN_EPS", BN_EPS),
            ("SCVI_BN_MOMENTUM", BN_MOMENTUM),
            ("SCVI_LN_EPS", LN_EPS),
            ("SCVI_LIK_EPS", likelihood::EPS),
        ] {
            let v = &d.iter().find(|(n, _)| *n == name).expect(name).1;
            assert_eq!(v.parse::<f64>().ok(), Some(want), "{name} = {v}");
        }
    }

    /// Each kernel file's header names its CPU twin, and the twin's documentation names the
    /// kernel file: a newcomer finds one from the other.
    #[test]
    fn kernels_and_cpu_twins_name_each_other() {
        for f in KERNEL_FILES {
            assert!(
                f.source.contains(f.cpu_twin),
                "{} does not name {}",
                f.name,
                f.cpu_twin
            );
            let twin = std::fs::read_to_string(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(f.cpu_twin),
            )
            .expect(f.cpu_twin);
            let kernel = format!("kernels/{}", f.name);
            assert!(
                twin.contains(&kernel),
                "{} does not name {kernel}",
                f.cpu_twin
            );
        }
    }
}
