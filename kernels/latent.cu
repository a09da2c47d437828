// latent.cu: the posterior variance, the reparameterisation, the KL terms and their gradients,
// between the encoders and the decoder. CPU twin: src/cpu/latent.rs, function for function:
//   reparam_kl_fwd = the heads' biases (added by `linear_forward` on the CPU), `posterior_variance`
//                    and `reparam_kl_forward`;      reparam_kl_bwd = `reparam_kl_backward`;
//   library_fwd    = `library_observed_forward`, or `posterior_variance` and `library_forward`;
//   library_bwd    = `library_backward`.
// Test: tests/cuda_kernels.rs `latent_*`.
//
// reparam_kl_fwd (z, per cell, L dims): q_m = m + b_m, u = u + b_v, q_v = exp(u) + VAR_EPS,
// eps ~ N(0, 1) from Philox (stream LatentNoise, index = step, element b * L + k, as NoiseBuffers::draw),
// z = q_m + sqrt(q_v) eps (logistic normal: z = softmax of it), and in f64
// KL_z = sum_k 0.5 (v + m^2 - 1 - log v) with v = sqrt(q_v)^2 (torch's Normal kl).
// reparam_kl_bwd: through the softmax (ln): dz <- z (dz - sum(dz z)); then with w = kl_weight / B,
// dq_m = dz + w m, du = (dz eps / (2 sd) + w (1 - 1/v) / 2) exp(u).
//
// library_fwd (per cell): observed library: lib = log(sum x) as given; latent: as for z with one dim
// (stream LibraryNoise), and KL_l of N(m, sd) against the batch's log-normal prior N(pm, sqrt(pv)):
// 0.5 (vr + ((m - pm) / ps)^2 - 1 - log vr), vr = (sd / ps)^2. library_bwd:
// dq_m = dlib + (m - pm) / pv / B, du = (dlib eps / (2 sd) + (1/pv - 1/v) / (2 B)) exp(u).
//
// Grid: one thread per cell, blocks of 128. Shapes: [B, L] for z, [B] for the library.
// VAR_EPS (src/model/config.rs) and the flags LAT_LN (logistic-normal latent, softmax) and
// LAT_OBSERVED (observed library size, library kernels) come from Rust as -D defines
// (src/cuda/kernels.rs).
#include "common.cuh"

// Mirrors `LatentArgs` in src/cuda/kernels.rs.
struct LatentArgs {
    float* q_m;  // in: the mean head's product without bias; out: q_m [B, n]
    const float* b_m;
    float* u;  // in: the variance head's product without bias; out: u = that + b_v [B, n]
    const float* b_v;
    float* q_v;   // out [B, n]
    float* z;     // out: z (softmaxed for ln) [B, n], or the log library [B]
    float* eps;   // out: the standard normals drawn [B, n]
    double* kl;   // out: per cell KL [B]
    const float* dz;  // backward in: d loss / d z (or / d library)
    float* d_q_m;     // backward out [B, n]
    float* d_u;       // backward out [B, n]
    const float* log_library;  // observed library [B]
    const float* prior_means;  // [K] (latent library)
    const float* prior_vars;   // [K]
    const u32* codes;          // batch codes [B]
    PhiloxKey key;
    float kl_w;  // backward: kl_weight / B (z) or 1 / B (library)
    u32 flags;
    u32 rows;
    u32 n;
};

// Element e (dimension k) of a posterior, stored: the heads' biases added (q_m, u), q_v = exp(u) +
// VAR_EPS, the standard normal eps (element e of the key's stream) and the sample
// z = q_m + sqrt(q_v) eps. Returns q_m and sqrt(q_v) for the KL.
struct Draw {
    float m, sd;
};
__device__ __forceinline__ Draw draw_posterior(const LatentArgs& a, u64 e, u32 k) {
    const float m = a.q_m[e] + a.b_m[k];
    const float u = a.u[e] + a.b_v[k];
    const float v = expf(u) + (float)SCVI_VAR_EPS;
    const float ep = (float)normal_at(a.key, e);
    const float sd = sqrtf(v);
    a.q_m[e] = m;
    a.u[e] = u;
    a.q_v[e] = v;
    a.eps[e] = ep;
    a.z[e] = m + sd * ep;
    return {m, sd};
}

SCVI_KERNEL(reparam_kl_fwd, LatentArgs) {
    const u32 b = blockIdx.x * blockDim.x + threadIdx.x;
    if (b >= a.rows) return;
    const u32 L = a.n;
    double kl = 0.0;
    for (u32 k = 0; k < L; ++k) {
        const Draw d = draw_posterior(a, (u64)b * L + k, k);
        const double md = (double)d.m, vr = (double)(d.sd * d.sd);
        kl += 0.5 * (vr + md * md - 1.0 - log(vr));
    }
    a.kl[b] = kl;
    if (a.flags & LAT_LN) {
        float* zr = a.z + (u64)b * L;
        float mx = -3.402823466e+38f;  // -FLT_MAX
        for (u32 k = 0; k < L; ++k) mx = fmaxf(mx, zr[k]);
        float s = 0.0f;
        for (u32 k = 0; k < L; ++k) {
            zr[k] = expf(zr[k] - mx);
            s += zr[k];
        }
        for (u32 k = 0; k < L; ++k) zr[k] /= s;
    }
}

SCVI_KERNEL(reparam_kl_bwd, LatentArgs) {
    const u32 b = blockIdx.x * blockDim.x + threadIdx.x;
    if (b >= a.rows) return;
    const u32 L = a.n;
    const float* zr = a.z + (u64)b * L;
    const float* dzr = a.dz + (u64)b * L;
    float dot = 0.0f;
    if (a.flags & LAT_LN)
        for (u32 k = 0; k < L; ++k) dot += zr[k] * dzr[k];
    const float w = a.kl_w, half = 0.5f;
    for (u32 k = 0; k < L; ++k) {
        const u64 e = (u64)b * L + k;
        float dz = dzr[k];
        if (a.flags & LAT_LN) dz = zr[k] * (dz - dot);
        const float m = a.q_m[e], v = a.q_v[e], u = a.u[e];
        const float sd = sqrtf(v);
        a.d_q_m[e] = dz + w * m;
        a.d_u[e] = (dz * a.eps[e] * half / sd + w * half * (1.0f - 1.0f / v)) * expf(u);
    }
}

SCVI_KERNEL(library_fwd, LatentArgs) {
    const u32 b = blockIdx.x * blockDim.x + threadIdx.x;
    if (b >= a.rows) return;
    if (a.flags & LAT_OBSERVED) {
        a.z[b] = a.log_library[b];
        a.kl[b] = 0.0;
        return;
    }
    const Draw d = draw_posterior(a, b, 0);
    const u32 s = a.codes[b];
    const double pm = (double)a.prior_means[s], ps = sqrt((double)a.prior_vars[s]);
    const double r = (double)d.sd / ps, vr = r * r;
    const double t = ((double)d.m - pm) / ps, t1 = t * t;
    a.kl[b] = 0.5 * (vr + t1 - 1.0 - log(vr));
}

SCVI_KERNEL(library_bwd, LatentArgs) {
    const u32 b = blockIdx.x * blockDim.x + threadIdx.x;
    if (b >= a.rows) return;
    const float m = a.q_m[b], v = a.q_v[b], u = a.u[b];
    const u32 s = a.codes[b];
    const float pm = a.prior_means[s], pv = a.prior_vars[s];
    const float dlib = a.dz[b], inv_b = a.kl_w, half = 0.5f;
    a.d_q_m[b] = dlib + (m - pm) / pv * inv_b;
    const float dv = dlib * a.eps[b] * half / sqrtf(v) + half * (1.0f / pv - 1.0f / v) * inv_b;
    a.d_u[b] = dv * expf(u);
}
