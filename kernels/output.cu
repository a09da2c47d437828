// output.cu: the decoder's output, fused. CPU twin: src/cpu/output.rs, `decoder_output` for
// decoder_output_fwd / decoder_output_bwd; `dispersion_category_backward` and the column sums of
// src/cpu/gemm.rs `add_column_sums` for column_sum_bwd. Test: tests/cuda_kernels.rs `output_*`.
//
// decoder_output_fwd / decoder_output_bwd, one block per cell, over its G genes:
//   rho = rho_lin + b_rho, s = softmax(rho) (torch's: exp(rho - max) / sum), mu = exp(library) s,
//   theta = exp(px_r[g]) (gene), exp(px_r[g, code_b]) (gene-batch, gene-label), exp(r_lin + b_r)
//   (gene-cell), pi = pi_lin + b_pi, and per gene the ZINB / NB / Poisson log-likelihood of the
//   count (f64, src/math/likelihood.rs), summed into the cell's reconstruction loss.
//   The _bwd entry also writes, in the same pass, dloss/dpi = -dl/dpi / B, dloss/dr = -theta dl/dtheta / B
//   (per cell and gene; the per-gene dispersions are its sums, dispersion_grad_bwd) and
//   a_g = -(dl/dmu_g) mu_g; a second light pass applies the softmax Jacobian
//   dloss/drho_k = (a_k - s_k sum_g a_g) / B, recomputing s_k from rho: the B x G probabilities and
//   means are never written to device memory. dloss/dlibrary = sum_g a_g / B.
// The counts are read once: each chunk of genes is zeroed in shared memory and the row's non-zeros
// in the chunk (found by binary search, rows sorted) are scattered into it.
//
// column_sum_bwd: db[j] += sum_b d[b, j] (a head's bias gradient, the per-gene dispersion's
// gradient from dr), or per category dpx_r[j, code_b] += d[b, j] (gene-batch, gene-label
// dispersions); one thread per column walks the cells in order (deterministic, no atomics).
//
// Grid: decoder_output_*: one block per cell, 256 threads; column_sum_bwd: one thread per column.
// Shapes: rho_lin, pi_lin, r_lin, d_rho: [B, G]; px_r: [G] or [G, K]; library: [B].
#include "common.cuh"

// OUT_THREADS (threads per cell) and the THETA_* modes come from Rust (src/cuda/kernels.rs).
#define OUT_CHUNK 2048

// Mirrors `OutputArgs` in src/cuda/kernels.rs.
struct OutputArgs {
    const float* rho;  // scale head product without bias [B, G]
    const float* b_rho;
    float* d_rho;  // out [B, G]
    float* pi;     // in: dropout head product without bias; out (bwd): dloss/dpi [B, G]
    const float* b_pi;
    float* r;  // in (gene-cell): r head product without bias; out (bwd): dloss/dr [B, G]
    const float* b_r;
    const float* px_r;   // [G] or [G, K] (log theta)
    const u32* codes;    // the codes that pick a column of px_r [B]
    const float* library;  // log library size [B]
    const u32* indptr;
    const u32* indices;
    const float* values;
    double* rec;       // out: -sum_g log p(x_g) per cell [B]
    float* d_library;  // out (bwd): dloss/dlibrary [B]
    double grad_scale;  // 1 / B
    u32 likelihood;     // SCVI_LIK_*
    u32 theta_mode;     // THETA_*
    u32 n_cat;          // K for THETA_CATEGORY
    u32 rows;
    u32 genes;
    u32 pad;
};

template <bool GRAD>
__device__ __forceinline__ void decoder_output_body(const OutputArgs& a) {
    __shared__ float fbuf[OUT_THREADS];
    __shared__ double dbuf[OUT_THREADS];
    __shared__ float xs[OUT_CHUNK];
    const u32 b = blockIdx.x, G = a.genes, t = threadIdx.x;
    const u64 row0 = (u64)b * G;
    const float* rho = a.rho + row0;

    float mx = -3.402823466e+38f;  // -FLT_MAX
    for (u32 g = t; g < G; g += OUT_THREADS) mx = fmaxf(mx, rho[g] + a.b_rho[g]);
    mx = block_max_f32(mx, fbuf);
    double se = 0.0;
    for (u32 g = t; g < G; g += OUT_THREADS) se += (double)expf(rho[g] + a.b_rho[g] - mx);
    const float inv = 1.0f / (float)block_sum_f64(se, dbuf);

    const float lib = expf(a.library[b]);
    const bool has_pi = a.likelihood == SCVI_LIK_ZINB;
    const float gs = (float)a.grad_scale;
    const u32 k0 = a.indptr[b], k1 = a.indptr[b + 1];
    const u32 code = a.theta_mode == THETA_CATEGORY ? a.codes[b] : 0u;
    double rec = 0.0, sum_a = 0.0;
    for (u32 c0 = 0; c0 < G; c0 += OUT_CHUNK) {
        const u32 c1 = c0 + OUT_CHUNK < G ? c0 + OUT_CHUNK : G;
        for (u32 g = c0 + t; g < c1; g += OUT_THREADS) xs[g - c0] = 0.0f;
        __syncthreads();
        const u32 lo = lower_bound_u32(a.indices, k0, k1, c0);
        const u32 hi = lower_bound_u32(a.indices, lo, k1, c1);
        for (u32 k = lo + t; k < hi; k += OUT_THREADS) xs[a.indices[k] - c0] = a.values[k];
        __syncthreads();
        for (u32 g = c0 + t; g < c1; g += OUT_THREADS) {
            const u64 e = row0 + g;
            const float s = expf(rho[g] + a.b_rho[g] - mx) * inv;
            const float mu = lib * s;
            float theta = 1.0f;
            if (a.theta_mode == THETA_GENE)
                theta = expf(a.px_r[g]);
            else if (a.theta_mode == THETA_CATEGORY)
                theta = expf(a.px_r[(u64)g * a.n_cat + code]);
            else if (a.theta_mode == THETA_CELL)
                theta = expf(a.r[e] + a.b_r[g]);
            const double p = has_pi ? (double)(a.pi[e] + a.b_pi[g]) : 0.0;
            const LogLik ll =
                loglik_eval((int)a.likelihood, (double)xs[g - c0], (double)mu, (double)theta, p);
            rec -= ll.value;
            if (GRAD) {
                const double av = -ll.d_mu * (double)mu;
                sum_a += av;
                a.d_rho[e] = (float)av;
                if (has_pi) a.pi[e] = (float)(-ll.d_pi * a.grad_scale);
                if (a.theta_mode != THETA_NONE)
                    a.r[e] = (float)(-ll.d_theta * (double)theta * a.grad_scale);
            }
        }
        __syncthreads();
    }
    rec = block_sum_f64(rec, dbuf);
    if (t == 0) a.rec[b] = rec;
    if (GRAD) {
        sum_a = block_sum_f64(sum_a, dbuf);
        const float sa = (float)sum_a;
        for (u32 g = t; g < G; g += OUT_THREADS) {
            const u64 e = row0 + g;
            const float s = expf(rho[g] + a.b_rho[g] - mx) * inv;
            a.d_rho[e] = (a.d_rho[e] - s * sa) * gs;
        }
        if (t == 0) a.d_library[b] = (float)(sum_a * a.grad_scale);
    }
}

SCVI_KERNEL(decoder_output_fwd, OutputArgs) { decoder_output_body<false>(a); }
SCVI_KERNEL(decoder_output_bwd, OutputArgs) { decoder_output_body<true>(a); }

// Mirrors `ColumnArgs` in src/cuda/kernels.rs.
struct ColumnArgs {
    const float* d;     // [B, n]
    float* out;         // [n], or [n, K] with categories
    const u32* codes;   // with categories: [B]
    u32 rows;
    u32 n;
    u32 n_cat;  // 0: plain column sums; K: per-category sums into out[j * K + code_b]
    u32 pad;
};

SCVI_KERNEL(column_sum_bwd, ColumnArgs) {
    const u32 j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= a.n) return;
    if (a.n_cat == 0) {
        float s = 0.0f;
        for (u32 r = 0; r < a.rows; ++r) s += a.d[(u64)r * a.n + j];
        a.out[j] += s;
    } else {
        for (u32 r = 0; r < a.rows; ++r) a.out[(u64)j * a.n_cat + a.codes[r]] += a.d[(u64)r * a.n + j];
    }
}
