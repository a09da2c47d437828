//! Each kernel file of kernels/*.cu against its CPU twin (src/cpu/<same name>.rs, run in f64 on the
//! same inputs), on fresh random inputs, with a named tolerance per tensor; a failure prints the
//! first mismatches. Dropout masks and Philox normals must match exactly. No formula is written
//! here: the reference is always a function of the CPU engine.
//!
//! | kernel file        | CPU twin                 | tests                              |
//! |--------------------|--------------------------|------------------------------------|
//! | kernels/sparse.cu  | src/cpu/sparse.rs        | `sparse_emulated`, `sparse_gpu`    |
//! | kernels/fc.cu      | src/cpu/fc.rs            | `fc_emulated`, `fc_gpu`            |
//! | kernels/latent.cu  | src/cpu/latent.rs        | `latent_emulated`, `latent_gpu`    |
//! | kernels/output.cu  | src/cpu/output.rs        | `output_emulated`, `output_gpu`    |
//! | kernels/adam.cu    | src/cpu/adam.rs          | `adam_emulated`, `adam_gpu`        |
//! | cuBLAS (cuda::ops) | src/cpu/gemm.rs          | `gemm_emulated`, `gemm_gpu`        |
//!
//! Every check runs on the GPU when there is one (else it prints why it skips) and on the host
//! emulation of the kernels. Seeds are printed; the suite uses a fixed one, `SCVI_RS_TEST_SEED=N`
//! repeats a run and `SCVI_RS_TEST_SEED=random` explores fresh inputs.

mod common;

use common::gpu::{device_tests, emulated_or_skip, Checker, Target, Tol};
use common::{f64s, seeded, Rng};
use scvi_rs::batch::Minibatch;
// The CPU twins, by module: each is named here by its module, as `latent::reparam_kl_forward`.
use scvi_rs::cpu::adam::Adam;
use scvi_rs::cpu::fc::{self, BnStats, DropoutKey, FcCache, FcGrads, FcParams};
use scvi_rs::cpu::gemm;
use scvi_rs::cpu::latent::{self, LibraryPrior, Posterior, PosteriorGrads};
use scvi_rs::cpu::output::{self, HeadBiases, OutputPlanes, ThetaSource, ThetaTable};
use scvi_rs::cpu::simd::transpose;
use scvi_rs::cpu::sparse::{self, SparseInput, SparseScratch};
use scvi_rs::cuda::device::{DevBuf, Gpu};
use scvi_rs::cuda::kernels::*;
use scvi_rs::cuda::ops;
use scvi_rs::engine::{AdamConfig, Mode};
use scvi_rs::math::likelihood::GeneLikelihood;
use scvi_rs::model::layout::{BatchNormIds, FcLayerIds, Layout, LinearIds, LinearShape};
use scvi_rs::model::ModelConfig;
use scvi_rs::rng::{Philox, Stream};

fn up(gpu: &Gpu, v: &[f32]) -> DevBuf {
    gpu.alloc_f32(v, "test input").expect("upload")
}
fn up_u32(gpu: &Gpu, v: &[u32]) -> DevBuf {
    gpu.alloc_u32(v, "test input").expect("upload")
}
fn down(gpu: &Gpu, b: &DevBuf, n: usize) -> Vec<f32> {
    let mut v = vec![0f32; n];
    gpu.download_f32(&mut v, b.ptr()).expect("download");
    v
}
fn down64(gpu: &Gpu, b: &DevBuf, n: usize) -> Vec<f64> {
    let mut v = vec![0f64; n];
    gpu.download_f64(&mut v, b.ptr()).expect("download");
    v
}
fn out_buf(gpu: &Gpu, n: usize) -> DevBuf {
    gpu.alloc(n * 4, "test output").expect("alloc")
}
/// The largest magnitude of a reference tensor (at least `floor`), to scale absolute tolerances.
fn scale(v: &[f64], floor: f64) -> f64 {
    v.iter().fold(0.0f64, |m, x| m.max(x.abs())).max(floor)
}

/// A random sparse count minibatch (sorted rows, every row non-empty) with batch codes below `k`.
fn random_batch(rng: &mut Rng, b: usize, g: usize, k: usize) -> Minibatch {
    let mut x = vec![0f64; b * g];
    for row in x.chunks_mut(g) {
        let density = 0.05 + 0.5 * rng.uniform();
        let forced = rng.below(g);
        for (j, v) in row.iter_mut().enumerate() {
            if j == forced || rng.uniform() < density {
                *v = (1.0 + (-rng.uniform().ln() * 5.0)).floor();
            }
        }
    }
    let codes: Vec<u32> = (0..b).map(|_| rng.below(k) as u32).collect();
    Minibatch::from_dense(&x, g, codes.clone(), codes)
}

/// The minibatch's CSR arrays on the device: (indptr, indices, values).
fn upload_csr(gpu: &Gpu, mb: &Minibatch) -> (DevBuf, DevBuf, DevBuf) {
    let indptr: Vec<u32> = mb.indptr.iter().map(|&v| v as u32).collect();
    (
        up_u32(gpu, &indptr),
        up_u32(gpu, &mb.indices),
        up(gpu, &mb.values),
    )
}

const F32: Tol = Tol::new(1e-5, 1e-6, 1e-5);

/// sparse.cu: transpose_fwd, sparse_log1p_linear_fwd / _bwd against src/cpu/sparse.rs.
fn sparse_kernels(gpu: &Gpu, rng: &mut Rng, c: &mut Checker) {
    let (b, g, h, ncat) = (
        5 + rng.below(20),
        40 + rng.below(300),
        8 + rng.below(70),
        rng.below(3),
    );
    let ldw = g + ncat;
    let w = rng.vec(h * ldw, -1.0, 1.0);
    let wd = up(gpu, &w);
    let wt = out_buf(gpu, g * h);
    ops::transpose(
        gpu,
        &TransposeArgs {
            src: wd.ptr(),
            dst: wt.ptr(),
            rows_src: h as u32,
            cols_src: g as u32,
            ld_src: ldw as u32,
            pad: 0,
        },
    )
    .unwrap();
    let mut want_t = vec![0f32; g * h];
    transpose::<f32, false>(&w, ldw, h, g, &mut want_t, h);
    c.check_exact("transpose_fwd", &down(gpu, &wt, g * h), &want_t);

    let mb = random_batch(rng, b, g, ncat.max(1));
    let (ip, ix, vals) = upload_csr(gpu, &mb);
    let lin = out_buf(gpu, b * h);
    let args = SparseLinearArgs {
        lin: lin.ptr(),
        wt: wt.ptr(),
        indptr: ip.ptr(),
        indices: ix.ptr(),
        values: vals.ptr(),
        rows: b as u32,
        h: h as u32,
        genes: g as u32,
        ldw: ldw as u32,
        ..Default::default()
    };
    ops::sparse_linear_fwd(gpu, &args).unwrap();
    // The kernel leaves the bias and the one-hot column to fc_post_fwd: the twin gets a zero bias
    // and zero one-hot columns.
    let mut w_genes = f64s(&w);
    for row in w_genes.chunks_mut(ldw) {
        row[g..].iter_mut().for_each(|v| *v = 0.0);
    }
    let mut input = SparseInput::<f64>::default();
    input.prepare(&mb);
    let mut scratch = SparseScratch::default();
    let mut want = vec![0f64; b * h];
    let zero_bias = vec![0f64; h];
    sparse::sparse_log1p_linear_forward(
        &mut want,
        &mb,
        &input,
        &w_genes,
        &zero_bias,
        ncat,
        h,
        &mut scratch,
    );
    c.check(
        "sparse_log1p_linear_fwd lin",
        &f64s(&down(gpu, &lin, b * h)),
        &want,
        Tol::new(1e-5, 1e-5, 1e-6),
    );

    let d = rng.vec(b * h, -1.0, 1.0);
    let dd = up(gpu, &d);
    let dw0 = rng.vec(h * ldw, -0.1, 0.1);
    let dw = up(gpu, &dw0);
    ops::sparse_linear_bwd(
        gpu,
        &SparseLinearArgs {
            d: dd.ptr(),
            dweight: dw.ptr(),
            ..args
        },
    )
    .unwrap();
    // The kernel adds the gene columns of the twin's dW; its bias and one-hot parts are fc.cu's.
    let (mut twin_dw, mut twin_db) = (vec![0f64; h * ldw], vec![0f64; h]);
    sparse::sparse_log1p_linear_backward(
        &mut twin_dw,
        &mut twin_db,
        &f64s(&d),
        &mb,
        &input,
        ncat,
        h,
        &mut scratch,
    );
    let mut want = f64s(&dw0);
    for (row, twin) in want.chunks_mut(ldw).zip(twin_dw.chunks(ldw)) {
        row[..g].iter_mut().zip(twin).for_each(|(o, v)| *o += v);
    }
    c.check(
        "sparse_log1p_linear_bwd dW (+=, one-hot columns untouched)",
        &f64s(&down(gpu, &dw, h * ldw)),
        &want,
        Tol::new(1e-5, 1e-5, 1e-6),
    );
}

/// fc.cu for every flag combination: (BatchNorm, training, LayerNorm, dropout p).
fn fc_kernels(gpu: &Gpu, rng: &mut Rng, c: &mut Checker) {
    for (bn, train, ln, p) in [
        (true, true, false, 0.1),
        (true, false, false, 0.1),
        (false, true, false, 0.25),
        (true, true, true, 0.1),
        (false, true, true, 0.0),
        (true, false, true, 0.0),
    ] {
        fc_layer(gpu, rng, c, bn, train, ln, p);
    }
}

/// The FCLayers post-product part, forward then backward, for one flag combination, against
/// src/cpu/fc.rs: `add_onehot_columns` + `fc_post_forward`, `fc_post_backward` + the bias and
/// one-hot part of `linear_backward`.
fn fc_layer(
    gpu: &Gpu,
    rng: &mut Rng,
    c: &mut Checker,
    has_bn: bool,
    train: bool,
    ln: bool,
    p: f64,
) {
    let tag = format!("fc bn={has_bn} train={train} layernorm={ln} dropout={p:.2}");
    let (b, n, n_in, ncat) = (2 + rng.below(40), 1 + rng.below(80), 3, rng.below(3));
    let ldw = n_in + ncat;
    let seed = rng.next();
    let key = PhiloxKey::new(seed, Stream::EncoderDropout, rng.next() % 10_000);
    let lin0 = rng.vec(b * n, -2.0, 2.0);
    let bias = rng.vec(n, -0.5, 0.5);
    let w = rng.vec(n * ldw, -1.0, 1.0);
    let cats: Vec<u32> = (0..b).map(|_| rng.below(ncat.max(1)) as u32).collect();
    let gamma = rng.vec(n, 0.5, 1.5);
    let beta = rng.vec(n, -0.5, 0.5);
    let rmean = rng.vec(n, -0.3, 0.3);
    let rvar = rng.vec(n, 0.5, 1.5);
    let [lin, biasd, wd, gd, bd, rmd, rvd] =
        [&lin0, &bias, &w, &gamma, &beta, &rmean, &rvar].map(|v| up(gpu, v));
    let catsd = up_u32(gpu, &cats);
    let nbt = up(gpu, &[5.0]);
    let [xhat, inv_std, pre, out, ln_inv] = [b * n, n, b * n, b * n, b].map(|n| out_buf(gpu, n));
    let use_drop = train && p > 0.0;
    let a = FcPostArgs {
        lin: lin.ptr(),
        bias: biasd.ptr(),
        weight: wd.ptr(),
        cats: catsd.ptr(),
        gamma: if has_bn { gd.ptr() } else { 0 },
        beta: if has_bn { bd.ptr() } else { 0 },
        running_mean: rmd.ptr(),
        running_var: rvd.ptr(),
        num_batches_tracked: nbt.ptr(),
        xhat: xhat.ptr(),
        inv_std: inv_std.ptr(),
        pre: pre.ptr(),
        out: out.ptr(),
        pass: FcPass {
            key,
            dropout_p: p,
            dropout_scale: (1.0 / (1.0 - p)) as f32,
            flags: FcPass::flags(has_bn, train, ln, use_drop),
            rows: b as u32,
            n: n as u32,
        },
        n_in: n_in as u32,
        n_cat: ncat as u32,
        ldw: ldw as u32,
        ..Default::default()
    };
    ops::fc_post(gpu, &a, false).unwrap();
    if ln {
        ops::layer_norm(gpu, &a.layer_norm(0, ln_inv.ptr()), false).unwrap();
    }

    // The CPU twin, forward.
    let ids = FcLayerIds {
        linear: LinearIds {
            weight: 0,
            bias: 1,
            n_in,
            n_out: n,
        },
        n_cat: ncat,
        batch_norm: has_bn.then_some(BatchNormIds {
            weight: 2,
            bias: 3,
            running_mean: 0,
            running_var: 1,
            num_batches_tracked: 2,
        }),
        layer_norm: ln,
        dropout: p,
    };
    let mode = if train { Mode::Train } else { Mode::Eval };
    let (w64, bias64, gamma64, beta64) = (f64s(&w), f64s(&bias), f64s(&gamma), f64s(&beta));
    let params = FcParams {
        weight: &w64,
        bias: &bias64,
        bn_weight: Some(&gamma64),
        bn_bias: Some(&beta64),
    };
    let mut v: Vec<f64> = lin0
        .chunks(n)
        .flat_map(|row| row.iter().zip(&bias64).map(|(&x, &bi)| x as f64 + bi))
        .collect();
    if ncat > 0 {
        fc::add_onehot_columns(&mut v, &cats, &w64, n_in, ldw, n);
    }
    let mut cache = FcCache::<f64>::default();
    cache.resize(b, n);
    let (mut want_rm, mut want_rv) = (f64s(&rmean), f64s(&rvar));
    let stats = has_bn.then_some(BnStats {
        mean: &mut want_rm,
        var: &mut want_rv,
    });
    let dropout = use_drop.then_some(DropoutKey {
        rng: Philox::new(seed),
        stream: Stream::EncoderDropout,
        index: key.index,
    });
    fc::fc_post_forward(&mut cache, &mut v, &ids, &params, stats, mode, dropout, b);

    let tol = Tol::new(1e-4, 1e-5, 1e-5);
    let mut check = |what: &str, got: Vec<f32>, want: &[f64], tol: Tol| {
        c.check(&format!("{tag}: {what}"), &f64s(&got), want, tol)
    };
    check("fwd out", down(gpu, &out, b * n), &cache.out, tol);
    check(
        "fwd pre-activation",
        down(gpu, &pre, b * n),
        &cache.pre_act,
        tol,
    );
    if has_bn {
        check("fwd xhat", down(gpu, &xhat, b * n), &cache.bn_xhat, tol);
        check(
            "fwd inv_std",
            down(gpu, &inv_std, n),
            &cache.bn_inv_std,
            F32,
        );
        check("running_mean", down(gpu, &rmd, n), &want_rm, F32);
        check("running_var", down(gpu, &rvd, n), &want_rv, F32);
        // The CPU engine counts the step in its caller (`fc_post` in src/cpu/engine.rs).
        let count = if train { 6.0 } else { 5.0 };
        check("num_batches_tracked", down(gpu, &nbt, 1), &[count], F32);
    }
    if ln {
        check("fwd ln_inv", down(gpu, &ln_inv, b), &cache.ln_inv_std, F32);
    }

    // Backward, on the saved tensors the device's forward pass produced (so that a ReLU at the
    // edge of zero decides the same way on both sides).
    let dout = rng.vec(b * n, -1.0, 1.0);
    let d = up(gpu, &dout);
    let dgamma0 = rng.vec(n, -0.1, 0.1);
    let dbeta0 = rng.vec(n, -0.1, 0.1);
    let dbias0 = rng.vec(n, -0.1, 0.1);
    let dw0 = rng.vec(n * ldw, -0.1, 0.1);
    let [dgd, dbd, dbiasd, dwd] = [&dgamma0, &dbeta0, &dbias0, &dw0].map(|v| up(gpu, v));
    cache.pre_act = f64s(&down(gpu, &pre, b * n));
    cache.bn_xhat = f64s(&down(gpu, &xhat, b * n));
    cache.bn_inv_std = f64s(&down(gpu, &inv_std, n));
    cache.ln_inv_std = f64s(&down(gpu, &ln_inv, b));
    if ln {
        ops::layer_norm(gpu, &a.layer_norm(d.ptr(), ln_inv.ptr()), true).unwrap();
    }
    let ba = FcPostArgs {
        lin: d.ptr(),
        dweight: dwd.ptr(),
        dbias: dbiasd.ptr(),
        dgamma: if has_bn { dgd.ptr() } else { 0 },
        dbeta: if has_bn { dbd.ptr() } else { 0 },
        ..a
    };
    ops::fc_post(gpu, &ba, true).unwrap();

    let mut g = f64s(&dout);
    let (mut want_dw, mut want_dbias) = (f64s(&dw0), f64s(&dbias0));
    let (mut want_dgamma, mut want_dbeta) = (f64s(&dgamma0), f64s(&dbeta0));
    let mut grads = FcGrads {
        weight: &mut want_dw,
        bias: &mut want_dbias,
        bn_weight: Some(&mut want_dgamma),
        bn_bias: Some(&mut want_dbeta),
    };
    fc::fc_post_backward(&mut g, &mut cache, &ids, &params, &mut grads, mode, b);
    // The bias and one-hot part of the Linear's backward (x = 0: no product columns).
    let no_input = vec![0f64; b * n_in];
    fc::linear_backward(
        None,
        false,
        &mut want_dw,
        &mut want_dbias,
        None,
        &g,
        &no_input,
        &cats,
        &w64,
        b,
        n_in,
        ncat,
        n,
    );
    let gtol = Tol::new(1e-3, 1e-5 * scale(&g, 1e-3), 1e-4);
    check("bwd dlin", down(gpu, &d, b * n), &g, gtol);
    check("bwd dbias (+=)", down(gpu, &dbiasd, n), &want_dbias, gtol);
    check(
        "bwd dW one-hot columns (+=)",
        down(gpu, &dwd, n * ldw),
        &want_dw,
        gtol,
    );
    if has_bn {
        check("bwd dgamma (+=)", down(gpu, &dgd, n), &want_dgamma, gtol);
        check("bwd dbeta (+=)", down(gpu, &dbd, n), &want_dbeta, gtol);
    }
}

/// latent.cu: reparam_kl_* (normal and logistic-normal latent) and library_* (observed and
/// latent library) against src/cpu/latent.rs.
fn latent_kernels(gpu: &Gpu, rng: &mut Rng, c: &mut Checker) {
    reparam_kl(gpu, rng, c, false);
    reparam_kl(gpu, rng, c, true);
    library(gpu, rng, c, true);
    library(gpu, rng, c, false);
}

/// The biases the kernels add to the heads' products (the CPU's `linear_forward` adds them).
fn plus_bias(x: &[f32], bias: &[f32]) -> Vec<f64> {
    x.chunks(bias.len())
        .flat_map(|row| row.iter().zip(bias).map(|(&v, &b)| v as f64 + b as f64))
        .collect()
}

/// A latent's device buffers for `rows` cells: the heads' products (`q_m`, `u`, `[rows, n]`) and
/// biases (`b_m`, `b_v`, `[n]`) and the upstream gradient `dz` as given, and the kernels' outputs.
struct LatentBufs {
    q_m: DevBuf,
    u: DevBuf,
    b_m: DevBuf,
    b_v: DevBuf,
    dz: DevBuf,
    q_v: DevBuf,
    z: DevBuf,
    eps: DevBuf,
    kl: DevBuf,
    d_q_m: DevBuf,
    d_u: DevBuf,
}

impl LatentBufs {
    fn new(gpu: &Gpu, rows: usize, [q_m, u, b_m, b_v, dz]: [&[f32]; 5]) -> Self {
        let out = || out_buf(gpu, q_m.len());
        LatentBufs {
            q_m: up(gpu, q_m),
            u: up(gpu, u),
            b_m: up(gpu, b_m),
            b_v: up(gpu, b_v),
            dz: up(gpu, dz),
            q_v: out(),
            z: out(),
            eps: out(),
            kl: gpu.alloc(rows * 8, "kl").unwrap(),
            d_q_m: out(),
            d_u: out(),
        }
    }

    /// The kernels' arguments over these buffers, `rows` cells of `n` dimensions.
    fn args(&self, rows: usize, n: usize) -> LatentArgs {
        LatentArgs {
            q_m: self.q_m.ptr(),
            b_m: self.b_m.ptr(),
            u: self.u.ptr(),
            b_v: self.b_v.ptr(),
            q_v: self.q_v.ptr(),
            z: self.z.ptr(),
            eps: self.eps.ptr(),
            kl: self.kl.ptr(),
            dz: self.dz.ptr(),
            d_q_m: self.d_q_m.ptr(),
            d_u: self.d_u.ptr(),
            rows: rows as u32,
            n: n as u32,
            ..Default::default()
        }
    }
}

/// The CPU twin's posterior from the same inputs: the biases added (in f64), `q_v` from `u`.
struct HostPosterior {
    q_m: Vec<f64>,
    u: Vec<f64>,
    q_v: Vec<f64>,
}

impl HostPosterior {
    fn new(q_m: &[f32], u: &[f32], b_m: &[f32], b_v: &[f32]) -> Self {
        let (q_m, u) = (plus_bias(q_m, b_m), plus_bias(u, b_v));
        let mut q_v = vec![0f64; u.len()];
        latent::posterior_variance(&mut q_v, &u);
        HostPosterior { q_m, u, q_v }
    }

    fn view(&self) -> Posterior<'_, f64> {
        Posterior {
            q_m: &self.q_m,
            u: &self.u,
            q_v: &self.q_v,
        }
    }
}

/// The Philox normals of `stream` at `step`, as the kernels draw them: f64, rounded to f32.
fn normals(seed: u64, stream: Stream, step: u64, n: usize) -> Vec<f32> {
    let mut v = vec![0f64; n];
    Philox::new(seed).fill_normal(stream, step, &mut v);
    v.iter().map(|&x| x as f32).collect()
}

fn reparam_kl(gpu: &Gpu, rng: &mut Rng, c: &mut Checker, ln: bool) {
    let (b, l) = (1 + rng.below(50), 1 + rng.below(12));
    let seed = rng.next();
    let step = rng.next() % 100_000;
    let qm0 = rng.vec(b * l, -2.0, 2.0);
    let u0 = rng.vec(b * l, -3.0, 1.0);
    let bm = rng.vec(l, -0.5, 0.5);
    let bv = rng.vec(l, -0.5, 0.5);
    let dz0 = rng.vec(b * l, -1.0, 1.0);
    let kl_w = rng.uniform() as f32 / b as f32;
    let dev = LatentBufs::new(gpu, b, [&qm0, &u0, &bm, &bv, &dz0]);
    let a = LatentArgs {
        key: PhiloxKey::new(seed, Stream::LatentNoise, step),
        kl_w,
        flags: if ln { LAT_LN } else { 0 },
        ..dev.args(b, l)
    };
    ops::latent(gpu, REPARAM_KL_FWD, &a).unwrap();
    ops::latent(gpu, REPARAM_KL_BWD, &a).unwrap();
    let want_eps = normals(seed, Stream::LatentNoise, step, b * l);
    let tag = format!("latent ln={ln}");
    c.check_exact(
        &format!("{tag}: eps (Philox normals)"),
        &down(gpu, &dev.eps, b * l),
        &want_eps,
    );

    // The CPU twin.
    let host = HostPosterior::new(&qm0, &u0, &bm, &bv);
    let post = host.view();
    let eps64 = f64s(&want_eps);
    let (mut wz, mut wkl) = (vec![0f64; b * l], vec![0f64; b]);
    latent::reparam_kl_forward(&mut wz, &mut wkl, post, &eps64, l, ln);
    let (mut wdqm, mut wdu, mut d_z) = (vec![0f64; b * l], vec![0f64; b * l], f64s(&dz0));
    latent::reparam_kl_backward(
        PosteriorGrads {
            d_q_m: &mut wdqm,
            d_u: &mut wdu,
        },
        &mut d_z,
        &wz,
        post,
        &eps64,
        kl_w as f64,
        l,
        ln,
    );

    let tol = Tol::new(1e-4, 1e-6, 1e-5);
    let gtol = Tol::new(1e-3, 1e-5, 1e-4);
    let got = |buf: &DevBuf| f64s(&down(gpu, buf, b * l));
    c.check(&format!("{tag}: fwd q_m"), &got(&dev.q_m), &host.q_m, tol);
    c.check(&format!("{tag}: fwd q_v"), &got(&dev.q_v), &host.q_v, tol);
    c.check(&format!("{tag}: fwd z"), &got(&dev.z), &wz, tol);
    let kl_got = down64(gpu, &dev.kl, b);
    c.check(&format!("{tag}: fwd KL_z per cell"), &kl_got, &wkl, tol);
    c.check(&format!("{tag}: bwd d q_m"), &got(&dev.d_q_m), &wdqm, gtol);
    c.check(&format!("{tag}: bwd d u"), &got(&dev.d_u), &wdu, gtol);
}

fn library(gpu: &Gpu, rng: &mut Rng, c: &mut Checker, observed: bool) {
    let (b, k) = (1 + rng.below(60), 1 + rng.below(4));
    let seed = rng.next();
    let step = rng.next() % 100_000;
    let qm0 = rng.vec(b, 4.0, 9.0);
    let u0 = rng.vec(b, -3.0, 0.0);
    let bm = rng.vec(1, -0.5, 0.5);
    let bv = rng.vec(1, -0.5, 0.5);
    let loglib = rng.vec(b, 5.0, 10.0);
    let pm = rng.vec(k, 5.0, 9.0);
    let pv = rng.vec(k, 0.2, 1.0);
    let codes: Vec<u32> = (0..b).map(|_| rng.below(k) as u32).collect();
    let dlib0 = rng.vec(b, -1.0, 1.0);
    let dev = LatentBufs::new(gpu, b, [&qm0, &u0, &bm, &bv, &dlib0]);
    let [ll, pmd, pvd] = [&loglib, &pm, &pv].map(|v| up(gpu, v));
    let cd = up_u32(gpu, &codes);
    let a = LatentArgs {
        log_library: ll.ptr(),
        prior_means: pmd.ptr(),
        prior_vars: pvd.ptr(),
        codes: cd.ptr(),
        key: PhiloxKey::new(seed, Stream::LibraryNoise, step),
        kl_w: 1.0 / b as f32,
        flags: if observed { LAT_OBSERVED } else { 0 },
        ..dev.args(b, 1)
    };
    ops::latent(gpu, LIBRARY_FWD, &a).unwrap();
    let tag = format!("library observed={observed}");
    let (mut wlib, mut wkl) = (vec![0f64; b], vec![0f64; b]);
    if observed {
        latent::library_observed_forward(&mut wlib, &mut wkl, &f64s(&loglib));
        let want: Vec<f32> = wlib.iter().map(|&v| v as f32).collect();
        c.check_exact(
            &format!("{tag}: library = log library"),
            &down(gpu, &dev.z, b),
            &want,
        );
        c.check(
            &format!("{tag}: KL_l = 0"),
            &down64(gpu, &dev.kl, b),
            &wkl,
            F32,
        );
        return;
    }
    ops::latent(gpu, LIBRARY_BWD, &a).unwrap();
    let want_eps = normals(seed, Stream::LibraryNoise, step, b);
    c.check_exact(
        &format!("{tag}: eps_l (Philox normals)"),
        &down(gpu, &dev.eps, b),
        &want_eps,
    );

    // The CPU twin.
    let host = HostPosterior::new(&qm0, &u0, &bm, &bv);
    let post = host.view();
    let (pm64, pv64, eps64) = (f64s(&pm), f64s(&pv), f64s(&want_eps));
    let prior = LibraryPrior {
        codes: &codes,
        means: &pm64,
        vars: &pv64,
    };
    latent::library_forward(&mut wlib, &mut wkl, post, &eps64, prior);
    let (mut wdqm, mut wdu) = (vec![0f64; b], vec![0f64; b]);
    latent::library_backward(
        PosteriorGrads {
            d_q_m: &mut wdqm,
            d_u: &mut wdu,
        },
        &f64s(&dlib0),
        post,
        &eps64,
        prior,
        1.0 / b as f64,
    );
    let gtol = Tol::new(1e-3, 1e-5, 1e-4);
    let got = |buf: &DevBuf| f64s(&down(gpu, buf, b));
    c.check(
        &format!("{tag}: fwd library"),
        &got(&dev.z),
        &wlib,
        Tol::new(1e-4, 1e-6, 1e-5),
    );
    c.check(
        &format!("{tag}: fwd KL_l per cell"),
        &down64(gpu, &dev.kl, b),
        &wkl,
        Tol::new(1e-4, 1e-5, 1e-5),
    );
    c.check(&format!("{tag}: bwd d q_m"), &got(&dev.d_q_m), &wdqm, gtol);
    c.check(&format!("{tag}: bwd d u"), &got(&dev.d_u), &wdu, gtol);
}

/// output.cu: decoder_output_* for every likelihood and dispersion source, then column_sum_bwd,
/// against src/cpu/output.rs.
fn output_kernels(gpu: &Gpu, rng: &mut Rng, c: &mut Checker) {
    for (lik, modes) in [
        (
            GeneLikelihood::Zinb,
            vec![THETA_GENE, THETA_CATEGORY, THETA_CELL],
        ),
        (
            GeneLikelihood::Nb,
            vec![THETA_GENE, THETA_CATEGORY, THETA_CELL],
        ),
        (GeneLikelihood::Poisson, vec![THETA_NONE]),
    ] {
        for m in modes {
            decoder(gpu, rng, c, lik, m);
        }
    }
    columns(gpu, rng, c);
}

fn decoder(gpu: &Gpu, rng: &mut Rng, c: &mut Checker, lik: GeneLikelihood, theta_mode: u32) {
    let wide = rng.uniform() < 0.3;
    let (b, g) = (
        1 + rng.below(12),
        5 + rng.below(if wide { 5000 } else { 400 }),
    );
    let k = 1 + rng.below(4);
    let mb = random_batch(rng, b, g, k);
    let codes = mb.batch.clone();
    let rho0 = rng.vec(b * g, -3.0, 3.0);
    let brho = rng.vec(g, -1.0, 1.0);
    let pi0 = rng.vec(b * g, -3.0, 3.0);
    let bpi = rng.vec(g, -1.0, 1.0);
    let r0 = rng.vec(b * g, -1.0, 2.0);
    let br = rng.vec(g, -0.5, 0.5);
    let pxr = rng.vec(g * k, -1.0, 2.0);
    let lib = rng.vec(b, 5.0, 9.0);
    let [rho, brhod, pi, bpid, r, brd, pxrd, libd] =
        [&rho0, &brho, &pi0, &bpi, &r0, &br, &pxr, &lib].map(|v| up(gpu, v));
    let cd = up_u32(gpu, &codes);
    let (ip, ix, vals) = upload_csr(gpu, &mb);
    let drho = out_buf(gpu, b * g);
    let dlib = out_buf(gpu, b);
    let rec = gpu.alloc(b * 8, "rec").unwrap();
    let a = OutputArgs {
        rho: rho.ptr(),
        b_rho: brhod.ptr(),
        d_rho: drho.ptr(),
        pi: pi.ptr(),
        b_pi: bpid.ptr(),
        r: r.ptr(),
        b_r: brd.ptr(),
        px_r: pxrd.ptr(),
        codes: cd.ptr(),
        library: libd.ptr(),
        indptr: ip.ptr(),
        indices: ix.ptr(),
        values: vals.ptr(),
        rec: rec.ptr(),
        d_library: dlib.ptr(),
        grad_scale: 1.0 / b as f64,
        likelihood: likelihood_code(lik),
        theta_mode,
        n_cat: if theta_mode == THETA_CATEGORY {
            k as u32
        } else {
            0
        },
        rows: b as u32,
        genes: g as u32,
        pad: 0,
    };
    // Loss only, then loss and gradients.
    ops::decoder_output(gpu, &a, false).unwrap();
    let rec_fwd = down64(gpu, &rec, b);
    ops::decoder_output(gpu, &a, true).unwrap();

    // The CPU twin. The kernel writes dloss/dr per cell for every dispersion; the CPU engine does
    // so for a per-category one, so a per-gene dispersion goes in as one category.
    let mut planes = OutputPlanes::<f64>::default();
    planes.resize(b, g);
    planes.scale[..b * g].copy_from_slice(&f64s(&rho0));
    planes.pi[..b * g].copy_from_slice(&f64s(&pi0));
    planes.r[..b * g].copy_from_slice(&f64s(&r0));
    let (brho64, bpi64, br64) = (f64s(&brho), f64s(&bpi), f64s(&br));
    let biases = HeadBiases {
        rho: &brho64,
        pi: lik.has_pi().then_some(&bpi64[..]),
        r: (theta_mode == THETA_CELL).then_some(&br64[..]),
    };
    let one_category = vec![0u32; b];
    let mut table = ThetaTable::default();
    let theta = match theta_mode {
        THETA_GENE => {
            table.fill(&f64s(&pxr[..g]), g, 1);
            ThetaSource::Table {
                table: &table,
                codes: Some(&one_category),
            }
        }
        THETA_CATEGORY => {
            table.fill(&f64s(&pxr), g, k);
            ThetaSource::Table {
                table: &table,
                codes: Some(&codes),
            }
        }
        THETA_CELL => ThetaSource::Cell,
        _ => ThetaSource::None,
    };
    let lib64 = f64s(&lib);
    output::decoder_output(
        &mut planes,
        &mb,
        lik,
        theta,
        biases,
        &lib64,
        true,
        1.0 / b as f64,
    );

    let tag = format!("decoder_output {lik:?} theta_mode={theta_mode} B={b} G={g}");
    let wrec = &planes.reconstruction[..b];
    let rec_tol = Tol::new(1e-5, 1e-4, 1e-5);
    c.check(
        &format!("{tag}: fwd reconstruction loss"),
        &rec_fwd,
        wrec,
        rec_tol,
    );
    c.check(
        &format!("{tag}: bwd reconstruction loss"),
        &down64(gpu, &rec, b),
        wrec,
        rec_tol,
    );
    let gt = |v: &[f64]| Tol::new(1e-3, 1e-5 * scale(v, 1e-12), 1e-4);
    let mut check = |what: &str, buf: &DevBuf, want: &[f64]| {
        let got = f64s(&down(gpu, buf, want.len()));
        c.check(&format!("{tag}: {what}"), &got, want, gt(want))
    };
    check("d rho", &drho, &planes.d_rho[..b * g]);
    check("d library", &dlib, &planes.d_library[..b]);
    if lik.has_pi() {
        check("d pi", &pi, &planes.pi[..b * g]);
    }
    if theta_mode != THETA_NONE {
        check("d r", &r, &planes.r[..b * g]);
    }
}

/// column_sum_bwd: the bias sums (`gemm::add_column_sums`) and the per-category dispersion's
/// (`output::dispersion_category_backward`).
fn columns(gpu: &Gpu, rng: &mut Rng, c: &mut Checker) {
    let (b, n, k) = (1 + rng.below(200), 1 + rng.below(3000), 2 + rng.below(4));
    let d = rng.vec(b * n, -1.0, 1.0);
    let codes: Vec<u32> = (0..b).map(|_| rng.below(k) as u32).collect();
    let o0 = rng.vec(n * k, -1.0, 1.0);
    let (dd, cd) = (up(gpu, &d), up_u32(gpu, &codes));
    for cats in [0, k] {
        let len = n * cats.max(1);
        let out = up(gpu, &o0[..len]);
        ops::column_sum(
            gpu,
            &ColumnArgs {
                d: dd.ptr(),
                out: out.ptr(),
                codes: cd.ptr(),
                rows: b as u32,
                n: n as u32,
                n_cat: cats as u32,
                pad: 0,
            },
        )
        .unwrap();
        let mut want = f64s(&o0[..len]);
        if cats == 0 {
            gemm::add_column_sums(&mut want, &f64s(&d), b, n, n);
        } else {
            output::dispersion_category_backward(&mut want, &f64s(&d), &codes, n, cats);
        }
        c.check(
            &format!("column_sum_bwd categories={cats}"),
            &f64s(&down(gpu, &out, len)),
            &want,
            Tol::new(1e-4, 1e-5, 1e-5),
        );
    }
}

/// adam.cu: three steps against src/cpu/adam.rs (in f32, as training runs it).
fn adam_kernel(gpu: &Gpu, rng: &mut Rng, c: &mut Checker) {
    let cfg = ModelConfig {
        n_input: 30 + rng.below(50),
        n_hidden: 16,
        n_latent: 4,
        ..ModelConfig::default()
    };
    let layout = Layout::new(&cfg);
    let n = layout.n_param_elems;
    let mut p = rng.vec(n, -1.0, 1.0);
    let config = AdamConfig {
        lr: 1e-2,
        ..AdamConfig::default()
    };
    let mut twin = Adam::<f32>::new(config, &layout);
    let pd = up(gpu, &p);
    let (md, vd) = (up(gpu, &vec![0.0; n]), up(gpu, &vec![0.0; n]));
    let maskd = gpu.alloc(n, "mask").unwrap();
    gpu.upload(maskd.ptr(), &layout.trainable_mask()).unwrap();
    for t in 1..=3 {
        let g = rng.vec(n, -1.0, 1.0);
        let gd = up(gpu, &g);
        twin.update(&mut p, &g);
        ops::adam(
            gpu,
            &AdamArgs {
                params: pd.ptr(),
                grads: gd.ptr(),
                m: md.ptr(),
                v: vd.ptr(),
                mask: maskd.ptr(),
                ..AdamArgs::new(&config, t, n)
            },
        )
        .unwrap();
    }
    c.check_f32(
        "adam_step x3 params (untrained tensors untouched)",
        &down(gpu, &pd, n),
        &p,
        Tol::new(1e-6, 1e-7, 1e-6),
    );
}

/// The cuBLAS products of `cuda::ops` against their twins of the same names in src/cpu/gemm.rs.
fn gemm_products(gpu: &Gpu, rng: &mut Rng, c: &mut Checker) {
    let (b, n_in, ncat, n_out) = (
        1 + rng.below(40),
        1 + rng.below(60),
        rng.below(3),
        1 + rng.below(70),
    );
    let ldw = n_in + ncat;
    let x = rng.vec(b * n_in, -1.0, 1.0);
    let w = rng.vec(n_out * ldw, -1.0, 1.0);
    let d = rng.vec(b * n_out, -1.0, 1.0);
    let dw0 = rng.vec(n_out * ldw, -1.0, 1.0);
    let dx0 = rng.vec(b * n_in, -1.0, 1.0);
    let [xd, wd, dd, dwd, dxd] = [&x, &w, &d, &dw0, &dx0].map(|v| up(gpu, v));
    let y = out_buf(gpu, b * n_out);
    let s = LinearShape {
        b,
        n_in,
        ldw,
        n_out,
    };
    ops::linear_fwd(gpu, y.ptr(), xd.ptr(), wd.ptr(), s).unwrap();
    ops::linear_wgrad(gpu, dwd.ptr(), dd.ptr(), xd.ptr(), s).unwrap();
    ops::linear_dgrad(gpu, dxd.ptr(), dd.ptr(), wd.ptr(), s, true).unwrap();
    let (x64, w64, d64) = (f64s(&x), f64s(&w), f64s(&d));
    let (mut wy, mut wdw, mut wdx) = (vec![0f64; b * n_out], f64s(&dw0), f64s(&dx0));
    gemm::linear_fwd(&mut wy, &x64, &w64, s, 0.0);
    gemm::linear_wgrad(&mut wdw, &d64, &x64, s);
    gemm::linear_dgrad(&mut wdx, &d64, &w64, s, 1.0);
    let tol = Tol::new(1e-4, 1e-5, 1e-5);
    c.check(
        "sgemm linear_fwd y = x W^T",
        &f64s(&down(gpu, &y, b * n_out)),
        &wy,
        tol,
    );
    c.check(
        "sgemm linear_wgrad dW += d^T x (one-hot columns untouched)",
        &f64s(&down(gpu, &dwd, n_out * ldw)),
        &wdw,
        tol,
    );
    c.check(
        "sgemm linear_dgrad dx += d W",
        &f64s(&down(gpu, &dxd, b * n_in)),
        &wdx,
        tol,
    );
}

/// Run one kernel file's checks on `target`, with a fresh printed seed.
fn run(target: Target, test: &str, check: fn(&Gpu, &mut Rng, &mut Checker)) {
    let Some(gpu) = target.open(test) else {
        return;
    };
    let (seed, mut rng) = seeded(&format!("{test} on {}", gpu.info.name));
    let mut c = Checker::new(format!("{test} (seed {seed})"));
    check(&gpu, &mut rng, &mut c);
    c.finish();
}

// One test per kernel file and device: `cargo test --test cuda_kernels latent` runs latent.cu's.
device_tests! {
    sparse_emulated, sparse_gpu => |t, n| run(t, n, sparse_kernels);
    fc_emulated, fc_gpu => |t, n| run(t, n, fc_kernels);
    latent_emulated, latent_gpu => |t, n| run(t, n, latent_kernels);
    output_emulated, output_gpu => |t, n| run(t, n, output_kernels);
    adam_emulated, adam_gpu => |t, n| run(t, n, adam_kernel);
    gemm_emulated, gemm_gpu => |t, n| run(t, n, gemm_products);
}

/// The `#[repr(C)]` argument structs have the C++ compiler's sizes for their kernel twins.
#[test]
fn argument_structs_match_the_kernels() {
    if emulated_or_skip("argument_structs_match_the_kernels").is_none() {
        return;
    }
    for (name, size) in struct_sizes() {
        let c = scvi_rs::cuda::emu::c_struct_size(name).expect("emulation library");
        assert_eq!(size, c, "{name}: Rust {size} bytes, C++ {c} bytes");
    }
}
