//! Each kernel of kernels/*.cu against a host reference of the CPU engine's maths (f64, written
//! here from src/cpu/*.rs, src/math/likelihood.rs, src/rng.rs and src/train/adam.rs), on fresh
//! random inputs, with a named tolerance per tensor; a failure prints the first mismatches.
//! Dropout masks and Philox normals must match exactly.
//!
//! Every check runs on the GPU when there is one (else it prints why it skips) and on the host
//! emulation of the kernels. Seeds are fresh and printed; `SCVI_RS_TEST_SEED` repeats one.

use scvi_rs::cuda::device::{DevBuf, Gpu};
use scvi_rs::cuda::harness::{emulated_or_skip, gpu_or_skip, Checker, Tol};
use scvi_rs::cuda::ops::{self, *};
use scvi_rs::math::likelihood::GeneLikelihood;
use scvi_rs::model::layout::Layout;
use scvi_rs::model::ModelConfig;
use scvi_rs::rng::{Philox, Stream};
use scvi_rs::train::adam::{Adam, AdamConfig};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f64 {
        ((self.next() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    fn below(&mut self, n: usize) -> usize {
        (self.uniform() * n as f64) as usize % n.max(1)
    }
    /// `n` values uniform in [lo, hi).
    fn vec(&mut self, n: usize, lo: f64, hi: f64) -> Vec<f32> {
        (0..n)
            .map(|_| (lo + (hi - lo) * self.uniform()) as f32)
            .collect()
    }
}

fn test_seed() -> u64 {
    std::env::var("SCVI_RS_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
}

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
fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}
fn out_buf(gpu: &Gpu, n: usize) -> DevBuf {
    gpu.alloc(n * 4, "test output").expect("alloc")
}

/// A random sparse count matrix as CSR (sorted rows, every row non-empty).
struct Csr {
    indptr: Vec<u32>,
    indices: Vec<u32>,
    values: Vec<f32>,
    dense: Vec<f64>,
}

fn random_csr(rng: &mut Rng, b: usize, g: usize) -> Csr {
    let mut c = Csr {
        indptr: vec![0],
        indices: vec![],
        values: vec![],
        dense: vec![0.0; b * g],
    };
    for i in 0..b {
        let density = 0.05 + 0.5 * rng.uniform();
        let forced = rng.below(g);
        for j in 0..g {
            if j == forced || rng.uniform() < density {
                let v = (1.0 + (-rng.uniform().ln() * 5.0)).floor() as f32;
                c.indices.push(j as u32);
                c.values.push(v);
                c.dense[i * g + j] = v as f64;
            }
        }
        c.indptr.push(c.indices.len() as u32);
    }
    c
}

const F32: Tol = Tol::new(1e-5, 1e-6, 1e-5);

fn check_transpose_and_sparse(gpu: &Gpu, rng: &mut Rng, c: &mut Checker) {
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
    let want_t: Vec<f32> = (0..g * h).map(|e| w[(e % h) * ldw + e / h]).collect();
    c.check_exact("transpose_fwd", &down(gpu, &wt, g * h), &want_t);

    let csr = random_csr(rng, b, g);
    let (ip, ix, vals) = (
        up_u32(gpu, &csr.indptr),
        up_u32(gpu, &csr.indices),
        up(gpu, &csr.values),
    );
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
    let mut want = vec![0f64; b * h];
    for i in 0..b {
        for o in 0..h {
            want[i * h + o] = (0..g)
                .map(|j| w[o * ldw + j] as f64 * csr.dense[i * g + j].ln_1p())
                .sum();
        }
    }
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
    let mut want = f64s(&dw0);
    for o in 0..h {
        for j in 0..g {
            want[o * ldw + j] += (0..b)
                .map(|i| d[i * h + o] as f64 * csr.dense[i * g + j].ln_1p())
                .sum::<f64>();
        }
    }
    c.check(
        "sparse_log1p_linear_bwd dW (+=, one-hot columns untouched)",
        &f64s(&down(gpu, &dw, h * ldw)),
        &want,
        Tol::new(1e-5, 1e-5, 1e-6),
    );
}

/// The FCLayers post-product part, forward then backward, for one flag combination.
fn check_fc(
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
    let (lin, biasd, wd, catsd, gd, bd, rmd, rvd) = (
        up(gpu, &lin0),
        up(gpu, &bias),
        up(gpu, &w),
        up_u32(gpu, &cats),
        up(gpu, &gamma),
        up(gpu, &beta),
        up(gpu, &rmean),
        up(gpu, &rvar),
    );
    let nbt = up(gpu, &[5.0]);
    let (xhat, inv_std, pre, out, ln_inv) = (
        out_buf(gpu, b * n),
        out_buf(gpu, n),
        out_buf(gpu, b * n),
        out_buf(gpu, b * n),
        out_buf(gpu, b),
    );
    let use_drop = train && p > 0.0;
    let mut flags = 0;
    if has_bn {
        flags |= FC_HAS_BN;
    }
    if train {
        flags |= FC_TRAIN;
    }
    if !ln {
        flags |= FC_ACT;
    }
    if use_drop {
        flags |= FC_DROPOUT;
    }
    let scale = (1.0 / (1.0 - p)) as f32;
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
        key,
        dropout_p: p,
        dropout_scale: scale,
        flags,
        rows: b as u32,
        n: n as u32,
        n_in: n_in as u32,
        n_cat: ncat as u32,
        ldw: ldw as u32,
        ..Default::default()
    };
    ops::fc_post(gpu, &a, false).unwrap();
    let lna = LayerNormArgs {
        pre: pre.ptr(),
        out: out.ptr(),
        d: 0,
        ln_inv: ln_inv.ptr(),
        key,
        dropout_p: p,
        dropout_scale: scale,
        flags: flags & FC_DROPOUT,
        rows: b as u32,
        n: n as u32,
    };
    if ln {
        ops::layer_norm(gpu, &lna, false).unwrap();
    }

    // Reference forward (f64).
    let philox = Philox::new(seed);
    let mask = |e: usize| -> f64 {
        if !use_drop {
            1.0
        } else if philox.uniform_at(Stream::EncoderDropout, key.index, e as u64) >= p {
            scale as f64
        } else {
            0.0
        }
    };
    let mut v: Vec<f64> = (0..b * n)
        .map(|e| {
            let (r, j) = (e / n, e % n);
            let cat = if ncat > 0 {
                w[j * ldw + n_in + cats[r] as usize] as f64
            } else {
                0.0
            };
            lin0[e] as f64 + bias[j] as f64 + cat
        })
        .collect();
    let mut want_xhat = vec![0f64; b * n];
    let mut want_inv = vec![0f64; n];
    let mut want_rm = f64s(&rmean);
    let mut want_rv = f64s(&rvar);
    if has_bn {
        for j in 0..n {
            let (mean, var) = if train {
                let m = (0..b).map(|r| v[r * n + j]).sum::<f64>() / b as f64;
                let q = (0..b).map(|r| (v[r * n + j] - m).powi(2)).sum::<f64>() / b as f64;
                let unb = if b > 1 {
                    b as f64 / (b as f64 - 1.0)
                } else {
                    1.0
                };
                want_rm[j] = 0.99 * rmean[j] as f64 + 0.01 * m;
                want_rv[j] = 0.99 * rvar[j] as f64 + 0.01 * q * unb;
                (m, q)
            } else {
                (rmean[j] as f64, rvar[j] as f64)
            };
            want_inv[j] = 1.0 / (var + 1e-3).sqrt();
            for r in 0..b {
                let e = r * n + j;
                want_xhat[e] = (v[e] - mean) * want_inv[j];
                v[e] = gamma[j] as f64 * want_xhat[e] + beta[j] as f64;
            }
        }
    }
    let mut want_ln_inv = vec![0f64; b];
    if ln {
        for r in 0..b {
            let row = &mut v[r * n..(r + 1) * n];
            let m = row.iter().sum::<f64>() / n as f64;
            let q = row.iter().map(|x| (x - m).powi(2)).sum::<f64>() / n as f64;
            want_ln_inv[r] = 1.0 / (q + 1e-5).sqrt();
            row.iter_mut().for_each(|x| *x = (*x - m) * want_ln_inv[r]);
        }
    }
    let want_pre = v.clone();
    let want_out: Vec<f64> = (0..b * n).map(|e| v[e].max(0.0) * mask(e)).collect();
    let tol = Tol::new(1e-4, 1e-5, 1e-5);
    c.check(
        &format!("{tag}: fwd out"),
        &f64s(&down(gpu, &out, b * n)),
        &want_out,
        tol,
    );
    c.check(
        &format!("{tag}: fwd pre-activation"),
        &f64s(&down(gpu, &pre, b * n)),
        &want_pre,
        tol,
    );
    if has_bn {
        c.check(
            &format!("{tag}: fwd xhat"),
            &f64s(&down(gpu, &xhat, b * n)),
            &want_xhat,
            tol,
        );
        c.check(
            &format!("{tag}: fwd inv_std"),
            &f64s(&down(gpu, &inv_std, n)),
            &want_inv,
            F32,
        );
        c.check(
            &format!("{tag}: running_mean"),
            &f64s(&down(gpu, &rmd, n)),
            &want_rm,
            F32,
        );
        c.check(
            &format!("{tag}: running_var"),
            &f64s(&down(gpu, &rvd, n)),
            &want_rv,
            F32,
        );
        c.check(
            &format!("{tag}: num_batches_tracked"),
            &f64s(&down(gpu, &nbt, 1)),
            &[if train { 6.0 } else { 5.0 }],
            F32,
        );
    }
    if ln {
        c.check(
            &format!("{tag}: fwd ln_inv"),
            &f64s(&down(gpu, &ln_inv, b)),
            &want_ln_inv,
            F32,
        );
    }

    // Backward, on the saved tensors the forward pass produced.
    let dout = rng.vec(b * n, -1.0, 1.0);
    let d = up(gpu, &dout);
    let dgamma0 = rng.vec(n, -0.1, 0.1);
    let dbeta0 = rng.vec(n, -0.1, 0.1);
    let dbias0 = rng.vec(n, -0.1, 0.1);
    let dw0 = rng.vec(n * ldw, -0.1, 0.1);
    let (dgd, dbd, dbiasd, dwd) = (
        up(gpu, &dgamma0),
        up(gpu, &dbeta0),
        up(gpu, &dbias0),
        up(gpu, &dw0),
    );
    let pre_h = f64s(&down(gpu, &pre, b * n));
    let xhat_h = f64s(&down(gpu, &xhat, b * n));
    let inv_h = f64s(&down(gpu, &inv_std, n));
    let ln_inv_h = f64s(&down(gpu, &ln_inv, b));
    if ln {
        ops::layer_norm(gpu, &LayerNormArgs { d: d.ptr(), ..lna }, true).unwrap();
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
    let mut g: Vec<f64> = (0..b * n)
        .map(|e| {
            if pre_h[e] > 0.0 {
                dout[e] as f64 * mask(e)
            } else {
                0.0
            }
        })
        .collect();
    if ln {
        for r in 0..b {
            let (s, sy): (f64, f64) = (0..n).fold((0.0, 0.0), |(s, sy), j| {
                (s + g[r * n + j], sy + g[r * n + j] * pre_h[r * n + j])
            });
            for j in 0..n {
                let e = r * n + j;
                g[e] = ln_inv_h[r] / n as f64 * (n as f64 * g[e] - s - pre_h[e] * sy);
            }
        }
    }
    let mut want_dgamma = f64s(&dgamma0);
    let mut want_dbeta = f64s(&dbeta0);
    if has_bn {
        for j in 0..n {
            let dg: f64 = (0..b).map(|r| g[r * n + j] * xhat_h[r * n + j]).sum();
            let db: f64 = (0..b).map(|r| g[r * n + j]).sum();
            want_dgamma[j] += dg;
            want_dbeta[j] += db;
            let gm = gamma[j] as f64;
            for r in 0..b {
                let e = r * n + j;
                g[e] = if train {
                    inv_h[j] / b as f64 * (b as f64 * g[e] * gm - gm * db - xhat_h[e] * gm * dg)
                } else {
                    g[e] * gm * inv_h[j]
                };
            }
        }
    }
    let mut want_dbias = f64s(&dbias0);
    let mut want_dw = f64s(&dw0);
    for r in 0..b {
        for j in 0..n {
            want_dbias[j] += g[r * n + j];
            if ncat > 0 {
                want_dw[j * ldw + n_in + cats[r] as usize] += g[r * n + j];
            }
        }
    }
    let gscale = g.iter().fold(0.0f64, |m, x| m.max(x.abs())).max(1e-3);
    let gtol = Tol::new(1e-3, 1e-5 * gscale, 1e-4);
    c.check(
        &format!("{tag}: bwd dlin"),
        &f64s(&down(gpu, &d, b * n)),
        &g,
        gtol,
    );
    c.check(
        &format!("{tag}: bwd dbias (+=)"),
        &f64s(&down(gpu, &dbiasd, n)),
        &want_dbias,
        gtol,
    );
    c.check(
        &format!("{tag}: bwd dW one-hot columns (+=)"),
        &f64s(&down(gpu, &dwd, n * ldw)),
        &want_dw,
        gtol,
    );
    if has_bn {
        c.check(
            &format!("{tag}: bwd dgamma (+=)"),
            &f64s(&down(gpu, &dgd, n)),
            &want_dgamma,
            gtol,
        );
        c.check(
            &format!("{tag}: bwd dbeta (+=)"),
            &f64s(&down(gpu, &dbd, n)),
            &want_dbeta,
            gtol,
        );
    }
}

fn check_latent(gpu: &Gpu, rng: &mut Rng, c: &mut Checker, ln: bool) {
    let (b, l) = (1 + rng.below(50), 1 + rng.below(12));
    let seed = rng.next();
    let step = rng.next() % 100_000;
    let qm0 = rng.vec(b * l, -2.0, 2.0);
    let u0 = rng.vec(b * l, -3.0, 1.0);
    let bm = rng.vec(l, -0.5, 0.5);
    let bv = rng.vec(l, -0.5, 0.5);
    let (qm, u, bmd, bvd) = (up(gpu, &qm0), up(gpu, &u0), up(gpu, &bm), up(gpu, &bv));
    let (qv, z, eps, dqm, du) = (
        out_buf(gpu, b * l),
        out_buf(gpu, b * l),
        out_buf(gpu, b * l),
        out_buf(gpu, b * l),
        out_buf(gpu, b * l),
    );
    let kl = gpu.alloc(b * 8, "kl").unwrap();
    let dz0 = rng.vec(b * l, -1.0, 1.0);
    let dz = up(gpu, &dz0);
    let kl_w = rng.uniform() as f32 / b as f32;
    let a = LatentArgs {
        q_m: qm.ptr(),
        b_m: bmd.ptr(),
        u: u.ptr(),
        b_v: bvd.ptr(),
        q_v: qv.ptr(),
        z: z.ptr(),
        eps: eps.ptr(),
        kl: kl.ptr(),
        dz: dz.ptr(),
        d_q_m: dqm.ptr(),
        d_u: du.ptr(),
        key: PhiloxKey::new(seed, Stream::LatentNoise, step),
        kl_w,
        flags: if ln { LAT_LN } else { 0 },
        rows: b as u32,
        n: l as u32,
        ..Default::default()
    };
    ops::latent(gpu, "reparam_kl_fwd", &a).unwrap();
    ops::latent(gpu, "reparam_kl_bwd", &a).unwrap();
    let mut normals = vec![0f64; b * l];
    Philox::new(seed).fill_normal(Stream::LatentNoise, step, &mut normals);
    let want_eps: Vec<f32> = normals.iter().map(|&v| v as f32).collect();
    let tag = format!("latent ln={ln}");
    c.check_exact(
        &format!("{tag}: eps (Philox normals)"),
        &down(gpu, &eps, b * l),
        &want_eps,
    );
    let mut wz = vec![0f64; b * l];
    let mut wkl = vec![0f64; b];
    let (mut wqm, mut wqv, mut wdqm, mut wdu) = (
        vec![0f64; b * l],
        vec![0f64; b * l],
        vec![0f64; b * l],
        vec![0f64; b * l],
    );
    for i in 0..b {
        for k in 0..l {
            let e = i * l + k;
            let m = qm0[e] as f64 + bm[k] as f64;
            let uu = u0[e] as f64 + bv[k] as f64;
            let v = uu.exp() + 1e-4;
            wqm[e] = m;
            wqv[e] = v;
            wz[e] = m + v.sqrt() * want_eps[e] as f64;
            wkl[i] += 0.5 * (v + m * m - 1.0 - v.ln());
        }
        if ln {
            let row = &mut wz[i * l..(i + 1) * l];
            let mx = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let s: f64 = row.iter().map(|x| (x - mx).exp()).sum();
            row.iter_mut().for_each(|x| *x = (*x - mx).exp() / s);
        }
        let dot: f64 = (0..l).map(|k| wz[i * l + k] * dz0[i * l + k] as f64).sum();
        for (k, &bvk) in bv.iter().enumerate() {
            let e = i * l + k;
            let mut g = dz0[e] as f64;
            if ln {
                g = wz[e] * (g - dot);
            }
            let (m, v) = (wqm[e], wqv[e]);
            let w = kl_w as f64;
            wdqm[e] = g + w * m;
            wdu[e] = (g * want_eps[e] as f64 * 0.5 / v.sqrt() + w * 0.5 * (1.0 - 1.0 / v))
                * (u0[e] as f64 + bvk as f64).exp();
        }
    }
    let tol = Tol::new(1e-4, 1e-6, 1e-5);
    c.check(
        &format!("{tag}: fwd q_m"),
        &f64s(&down(gpu, &qm, b * l)),
        &wqm,
        tol,
    );
    c.check(
        &format!("{tag}: fwd q_v"),
        &f64s(&down(gpu, &qv, b * l)),
        &wqv,
        tol,
    );
    c.check(
        &format!("{tag}: fwd z"),
        &f64s(&down(gpu, &z, b * l)),
        &wz,
        tol,
    );
    c.check(
        &format!("{tag}: fwd KL_z per cell"),
        &down64(gpu, &kl, b),
        &wkl,
        tol,
    );
    c.check(
        &format!("{tag}: bwd d q_m"),
        &f64s(&down(gpu, &dqm, b * l)),
        &wdqm,
        Tol::new(1e-3, 1e-5, 1e-4),
    );
    c.check(
        &format!("{tag}: bwd d u"),
        &f64s(&down(gpu, &du, b * l)),
        &wdu,
        Tol::new(1e-3, 1e-5, 1e-4),
    );
}

fn check_library(gpu: &Gpu, rng: &mut Rng, c: &mut Checker, observed: bool) {
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
    let (qm, u, bmd, bvd, ll, pmd, pvd, cd, dl) = (
        up(gpu, &qm0),
        up(gpu, &u0),
        up(gpu, &bm),
        up(gpu, &bv),
        up(gpu, &loglib),
        up(gpu, &pm),
        up(gpu, &pv),
        up_u32(gpu, &codes),
        up(gpu, &dlib0),
    );
    let (qv, z, eps, dqm, du) = (
        out_buf(gpu, b),
        out_buf(gpu, b),
        out_buf(gpu, b),
        out_buf(gpu, b),
        out_buf(gpu, b),
    );
    let kl = gpu.alloc(b * 8, "kl").unwrap();
    let a = LatentArgs {
        q_m: qm.ptr(),
        b_m: bmd.ptr(),
        u: u.ptr(),
        b_v: bvd.ptr(),
        q_v: qv.ptr(),
        z: z.ptr(),
        eps: eps.ptr(),
        kl: kl.ptr(),
        dz: dl.ptr(),
        d_q_m: dqm.ptr(),
        d_u: du.ptr(),
        log_library: ll.ptr(),
        prior_means: pmd.ptr(),
        prior_vars: pvd.ptr(),
        codes: cd.ptr(),
        key: PhiloxKey::new(seed, Stream::LibraryNoise, step),
        kl_w: 1.0 / b as f32,
        flags: if observed { LAT_OBSERVED } else { 0 },
        rows: b as u32,
        n: 1,
    };
    ops::latent(gpu, "library_fwd", &a).unwrap();
    let tag = format!("library observed={observed}");
    if observed {
        c.check_exact(
            &format!("{tag}: library = log library"),
            &down(gpu, &z, b),
            &loglib,
        );
        c.check(
            &format!("{tag}: KL_l = 0"),
            &down64(gpu, &kl, b),
            &vec![0.0; b],
            F32,
        );
        return;
    }
    ops::latent(gpu, "library_bwd", &a).unwrap();
    let mut normals = vec![0f64; b];
    Philox::new(seed).fill_normal(Stream::LibraryNoise, step, &mut normals);
    let want_eps: Vec<f32> = normals.iter().map(|&v| v as f32).collect();
    c.check_exact(
        &format!("{tag}: eps_l (Philox normals)"),
        &down(gpu, &eps, b),
        &want_eps,
    );
    let (mut wz, mut wkl, mut wdqm, mut wdu) =
        (vec![0f64; b], vec![0f64; b], vec![0f64; b], vec![0f64; b]);
    for i in 0..b {
        let m = qm0[i] as f64 + bm[0] as f64;
        let uu = u0[i] as f64 + bv[0] as f64;
        let v = uu.exp() + 1e-4;
        let sd = v.sqrt();
        wz[i] = m + sd * want_eps[i] as f64;
        let s = codes[i] as usize;
        let (pmv, pvv) = (pm[s] as f64, pv[s] as f64);
        let vr = (sd / pvv.sqrt()).powi(2);
        wkl[i] = 0.5 * (vr + ((m - pmv) / pvv.sqrt()).powi(2) - 1.0 - vr.ln());
        let dlib = dlib0[i] as f64;
        let inv_b = 1.0 / b as f64;
        wdqm[i] = dlib + (m - pmv) / pvv * inv_b;
        wdu[i] =
            (dlib * want_eps[i] as f64 * 0.5 / sd + 0.5 * (1.0 / pvv - 1.0 / v) * inv_b) * uu.exp();
    }
    let tol = Tol::new(1e-4, 1e-6, 1e-5);
    c.check(
        &format!("{tag}: fwd library"),
        &f64s(&down(gpu, &z, b)),
        &wz,
        tol,
    );
    c.check(
        &format!("{tag}: fwd KL_l per cell"),
        &down64(gpu, &kl, b),
        &wkl,
        Tol::new(1e-4, 1e-5, 1e-5),
    );
    c.check(
        &format!("{tag}: bwd d q_m"),
        &f64s(&down(gpu, &dqm, b)),
        &wdqm,
        Tol::new(1e-3, 1e-5, 1e-4),
    );
    c.check(
        &format!("{tag}: bwd d u"),
        &f64s(&down(gpu, &du, b)),
        &wdu,
        Tol::new(1e-3, 1e-5, 1e-4),
    );
}

fn check_output(gpu: &Gpu, rng: &mut Rng, c: &mut Checker, lik: GeneLikelihood, theta_mode: u32) {
    let wide = rng.uniform() < 0.3;
    let (b, g) = (
        1 + rng.below(12),
        5 + rng.below(if wide { 5000 } else { 400 }),
    );
    let k = 1 + rng.below(4);
    let csr = random_csr(rng, b, g);
    let rho0 = rng.vec(b * g, -3.0, 3.0);
    let brho = rng.vec(g, -1.0, 1.0);
    let pi0 = rng.vec(b * g, -3.0, 3.0);
    let bpi = rng.vec(g, -1.0, 1.0);
    let r0 = rng.vec(b * g, -1.0, 2.0);
    let br = rng.vec(g, -0.5, 0.5);
    let pxr = rng.vec(g * k, -1.0, 2.0);
    let codes: Vec<u32> = (0..b).map(|_| rng.below(k) as u32).collect();
    let lib = rng.vec(b, 5.0, 9.0);
    let (rho, brhod, pi, bpid, r, brd, pxrd, cd, libd) = (
        up(gpu, &rho0),
        up(gpu, &brho),
        up(gpu, &pi0),
        up(gpu, &bpi),
        up(gpu, &r0),
        up(gpu, &br),
        up(gpu, &pxr),
        up_u32(gpu, &codes),
        up(gpu, &lib),
    );
    let (ip, ix, vals) = (
        up_u32(gpu, &csr.indptr),
        up_u32(gpu, &csr.indices),
        up(gpu, &csr.values),
    );
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
        likelihood: match lik {
            GeneLikelihood::Zinb => LIK_ZINB,
            GeneLikelihood::Nb => LIK_NB,
            GeneLikelihood::Poisson => LIK_POISSON,
        },
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
    let gs = 1.0 / b as f64;
    let (mut wrec, mut wdrho, mut wdpi, mut wdr, mut wdlib) = (
        vec![0f64; b],
        vec![0f64; b * g],
        vec![0f64; b * g],
        vec![0f64; b * g],
        vec![0f64; b],
    );
    for i in 0..b {
        let row: Vec<f64> = (0..g)
            .map(|j| rho0[i * g + j] as f64 + brho[j] as f64)
            .collect();
        let mx = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = row.iter().map(|v| (v - mx).exp()).sum();
        let s: Vec<f64> = row.iter().map(|v| (v - mx).exp() / sum).collect();
        let l = (lib[i] as f64).exp();
        let mut sa = 0.0;
        for j in 0..g {
            let e = i * g + j;
            let mu = l * s[j];
            let th = match theta_mode {
                THETA_GENE => (pxr[j] as f64).exp(),
                THETA_CATEGORY => (pxr[j * k + codes[i] as usize] as f64).exp(),
                THETA_CELL => (r0[e] as f64 + br[j] as f64).exp(),
                _ => 1.0,
            };
            let p = pi0[e] as f64 + bpi[j] as f64;
            let ll = lik.eval(csr.dense[e], mu, th, if lik.has_pi() { p } else { 0.0 });
            wrec[i] -= ll.value;
            let av = -ll.d_mu * mu;
            sa += av;
            wdrho[e] = av;
            wdpi[e] = -ll.d_pi * gs;
            wdr[e] = -ll.d_theta * th * gs;
        }
        for j in 0..g {
            wdrho[i * g + j] = (wdrho[i * g + j] - s[j] * sa) * gs;
        }
        wdlib[i] = sa * gs;
    }
    let tag = format!("decoder_output {lik:?} theta_mode={theta_mode} B={b} G={g}");
    let rec_tol = Tol::new(1e-5, 1e-4, 1e-5);
    c.check(
        &format!("{tag}: fwd reconstruction loss"),
        &rec_fwd,
        &wrec,
        rec_tol,
    );
    c.check(
        &format!("{tag}: bwd reconstruction loss"),
        &down64(gpu, &rec, b),
        &wrec,
        rec_tol,
    );
    let scale = |v: &[f64]| v.iter().fold(0.0f64, |m, x| m.max(x.abs())).max(1e-12);
    let gt = |v: &[f64]| Tol::new(1e-3, 1e-5 * scale(v), 1e-4);
    c.check(
        &format!("{tag}: d rho"),
        &f64s(&down(gpu, &drho, b * g)),
        &wdrho,
        gt(&wdrho),
    );
    c.check(
        &format!("{tag}: d library"),
        &f64s(&down(gpu, &dlib, b)),
        &wdlib,
        gt(&wdlib),
    );
    if lik.has_pi() {
        c.check(
            &format!("{tag}: d pi"),
            &f64s(&down(gpu, &pi, b * g)),
            &wdpi,
            gt(&wdpi),
        );
    }
    if theta_mode != THETA_NONE {
        c.check(
            &format!("{tag}: d r"),
            &f64s(&down(gpu, &r, b * g)),
            &wdr,
            gt(&wdr),
        );
    }
}

fn check_columns(gpu: &Gpu, rng: &mut Rng, c: &mut Checker) {
    let (b, n, k) = (1 + rng.below(200), 1 + rng.below(3000), 2 + rng.below(4));
    let d = rng.vec(b * n, -1.0, 1.0);
    let codes: Vec<u32> = (0..b).map(|_| rng.below(k) as u32).collect();
    let o0 = rng.vec(n * k, -1.0, 1.0);
    let (dd, cd) = (up(gpu, &d), up_u32(gpu, &codes));
    for cats in [0, k] {
        let out = up(gpu, &o0[..n * cats.max(1)]);
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
        let mut want = f64s(&o0[..n * cats.max(1)]);
        for r in 0..b {
            for j in 0..n {
                let at = if cats == 0 {
                    j
                } else {
                    j * cats + codes[r] as usize
                };
                want[at] += d[r * n + j] as f64;
            }
        }
        c.check(
            &format!("column_sum_bwd categories={cats}"),
            &f64s(&down(gpu, &out, n * cats.max(1))),
            &want,
            Tol::new(1e-4, 1e-5, 1e-5),
        );
    }
}

fn check_adam(gpu: &Gpu, rng: &mut Rng, c: &mut Checker) {
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
    let mut adam = Adam::<f32>::new(config, &layout);
    let mask: Vec<u8> = {
        let mut m = vec![0u8; n];
        for t in layout.params.iter().filter(|t| t.trainable) {
            m[t.range()].iter_mut().for_each(|v| *v = 1);
        }
        m
    };
    let pd = up(gpu, &p);
    let (md, vd) = (up(gpu, &vec![0.0; n]), up(gpu, &vec![0.0; n]));
    let maskd = gpu.alloc(n, "mask").unwrap();
    gpu.upload(maskd.ptr(), &mask).unwrap();
    for t in 1..=3 {
        let g = rng.vec(n, -1.0, 1.0);
        let gd = up(gpu, &g);
        adam.update(&mut p, &g);
        ops::adam(
            gpu,
            &AdamArgs {
                params: pd.ptr(),
                grads: gd.ptr(),
                m: md.ptr(),
                v: vd.ptr(),
                mask: maskd.ptr(),
                n: n as u64,
                step_size: (config.lr / (1.0 - config.beta1.powi(t))) as f32,
                bc2_sqrt: (1.0 - config.beta2.powi(t)).sqrt() as f32,
                beta1: config.beta1 as f32,
                beta2: config.beta2 as f32,
                one_minus_beta1: 1.0 - config.beta1 as f32,
                one_minus_beta2: 1.0 - config.beta2 as f32,
                weight_decay: config.weight_decay as f32,
                eps: config.eps as f32,
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

fn check_gemms(gpu: &Gpu, rng: &mut Rng, c: &mut Checker) {
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
    let (xd, wd, dd, dwd, dxd) = (
        up(gpu, &x),
        up(gpu, &w),
        up(gpu, &d),
        up(gpu, &dw0),
        up(gpu, &dx0),
    );
    let y = out_buf(gpu, b * n_out);
    ops::linear_fwd(gpu, y.ptr(), xd.ptr(), wd.ptr(), b, n_in, ldw, n_out).unwrap();
    ops::linear_wgrad(gpu, dwd.ptr(), dd.ptr(), xd.ptr(), b, n_in, ldw, n_out).unwrap();
    ops::linear_dgrad(
        gpu,
        dxd.ptr(),
        dd.ptr(),
        wd.ptr(),
        b,
        n_in,
        ldw,
        n_out,
        true,
    )
    .unwrap();
    let mut wy = vec![0f64; b * n_out];
    let mut wdw = f64s(&dw0);
    let mut wdx = f64s(&dx0);
    for r in 0..b {
        for o in 0..n_out {
            for i in 0..n_in {
                wy[r * n_out + o] += x[r * n_in + i] as f64 * w[o * ldw + i] as f64;
                wdw[o * ldw + i] += d[r * n_out + o] as f64 * x[r * n_in + i] as f64;
                wdx[r * n_in + i] += d[r * n_out + o] as f64 * w[o * ldw + i] as f64;
            }
        }
    }
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

fn all_kernels(gpu: &Gpu, what: &str) {
    let seed = test_seed();
    println!("{what}: seed {seed} (SCVI_RS_TEST_SEED={seed} repeats it)");
    let mut rng = Rng(seed);
    let mut c = Checker::new(format!("{what} kernels (seed {seed})"));
    check_transpose_and_sparse(gpu, &mut rng, &mut c);
    for (bn, train, ln, p) in [
        (true, true, false, 0.1),
        (true, false, false, 0.1),
        (false, true, false, 0.25),
        (true, true, true, 0.1),
        (false, true, true, 0.0),
        (true, false, true, 0.0),
    ] {
        check_fc(gpu, &mut rng, &mut c, bn, train, ln, p);
    }
    check_latent(gpu, &mut rng, &mut c, false);
    check_latent(gpu, &mut rng, &mut c, true);
    check_library(gpu, &mut rng, &mut c, true);
    check_library(gpu, &mut rng, &mut c, false);
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
            check_output(gpu, &mut rng, &mut c, lik, m);
        }
    }
    check_columns(gpu, &mut rng, &mut c);
    check_adam(gpu, &mut rng, &mut c);
    check_gemms(gpu, &mut rng, &mut c);
    c.finish();
}

#[test]
fn kernels_match_reference_on_gpu() {
    if let Some(gpu) = gpu_or_skip("kernels_match_reference_on_gpu") {
        all_kernels(&gpu, &format!("gpu {}", gpu.info));
    }
}

#[test]
fn kernels_match_reference_emulated() {
    if let Some(gpu) = emulated_or_skip("kernels_match_reference_emulated") {
        all_kernels(&gpu, "emulated");
    }
}

/// The `#[repr(C)]` argument structs have the C++ compiler's sizes for their kernel twins.
#[test]
fn argument_structs_match_the_kernels() {
    if emulated_or_skip("argument_structs_match_the_kernels").is_none() {
        return;
    }
    for (name, size) in ops::struct_sizes() {
        let c = scvi_rs::cuda::emu::c_struct_size(name).expect("emulation library");
        assert_eq!(size, c, "{name}: Rust {size} bytes, C++ {c} bytes");
    }
}
