// fc.cu: one FCLayers layer after its matrix product, fused, forward and backward.
// CPU twin: src/cpu/fc.rs, `add_onehot_columns` (the bias and one-hot part of `linear_forward`) then
// `fc_post_forward` for fc_post_fwd and layer_norm_fwd; `fc_post_backward` then the bias and one-hot
// part of `linear_backward` for layer_norm_bwd and fc_post_bwd. Test: tests/cuda_kernels.rs `fc_*`.
//
// fc_post_fwd fuses: + bias + one-hot column W[:, n_in + cat_b] -> BatchNorm1d (training: batch
// mean and biased variance, running statistics moved by momentum BN_MOMENTUM towards the mean and
// the unbiased variance, num_batches_tracked + 1; inference: running statistics; eps BN_EPS) -> ReLU ->
// dropout (keep when uniform >= p, scale 1 / (1 - p); Philox stream index step * 16 + layer, element
// b * n + j). With a LayerNorm after the BatchNorm, fc_post_fwd stops before the ReLU and
// layer_norm_fwd does LayerNorm (eps LN_EPS, no affine) -> ReLU -> dropout.
//
// fc_post_bwd fuses: dropout mask (recomputed from Philox, never stored) -> ReLU mask -> BatchNorm
// backward dx = r / B (B dy gamma - gamma sum dy - xhat gamma sum(dy xhat)) with dgamma += sum dy xhat,
// dbeta += sum dy, and the Linear's dbias += sum_b dlin, dW[:, n_in + cat_b] += dlin. With a
// LayerNorm, layer_norm_bwd first applies dropout, ReLU and the LayerNorm backward
// dx = r / n (n dy - sum dy - y sum(dy y)) row by row.
//
// Grid and block: fc_post_*: one block per FC_TX columns, block (FC_TX, FC_TY): thread (x, y) owns
// column blockIdx.x * FC_TX + x and rows y, y + FC_TY, ...; column statistics are reduced over y in
// shared memory (f64, as the CPU reference accumulates). layer_norm_*: one block per row, LN_THREADS
// threads over its columns. The constants and flags come from Rust (src/cuda/kernels.rs, as -D
// defines; BN_EPS, BN_MOMENTUM, LN_EPS from src/model/config.rs).
//
// Shapes: lin, xhat, pre, out, d: [B, n]; bias, gamma, beta, running stats, inv_std: [n];
// weight [n, ldw] with ldw = n_in + n_cat.
#include "common.cuh"

// What both kernels of a layer read besides their buffers: the dropout (Philox key, p, scale),
// the flags (FC_*; LayerNorm reads FC_DROPOUT only) and the shape [rows, n].
// Mirrors `FcPass` in src/cuda/kernels.rs.
struct FcPass {
    PhiloxKey key;
    double dropout_p;
    float dropout_scale;
    u32 flags;
    u32 rows;
    u32 n;
};

// Dropout's factor for element e: keep (1 / (1 - p)) when its Philox uniform is >= p, else 0.
__device__ __forceinline__ float dropout_mask(const FcPass& p, u64 e) {
    return uniform_at(p.key, e) >= p.dropout_p ? p.dropout_scale : 0.0f;
}

// Mirrors `FcPostArgs` in src/cuda/kernels.rs.
struct FcPostArgs {
    // Forward: in: the matrix product x W[:, :n_in]^T; out: (unchanged).
    // Backward: in: d loss / d out; out: d loss / d (Linear output).
    float* lin;
    const float* bias;
    const float* weight;  // for the one-hot columns (forward)
    float* dweight;       // their gradient (backward)
    float* dbias;
    const u32* cats;
    const float* gamma;
    const float* beta;
    float* dgamma;
    float* dbeta;
    float* running_mean;
    float* running_var;
    float* num_batches_tracked;
    float* xhat;     // BatchNorm's normalised input [B, n]
    float* inv_std;  // BatchNorm's 1 / sqrt(var + eps) [n]
    float* pre;      // input of the ReLU [B, n] (the LayerNorm input when one follows)
    float* out;      // the layer's output [B, n]
    FcPass pass;
    u32 n_in;
    u32 n_cat;
    u32 ldw;
    u32 pad;
};

// The total over the FC_TY threads of column tx of their partial sums v, divided by B, for every
// thread of the column (through red and col in shared memory).
__device__ __forceinline__ double column_mean(double v, double (*red)[FC_TX], double* col, u32 B) {
    const u32 tx = threadIdx.x, ty = threadIdx.y;
    red[ty][tx] = v;
    __syncthreads();
    if (ty == 0) {
        double t = 0.0;
        for (int k = 0; k < FC_TY; ++k) t += red[k][tx];
        col[tx] = t / (double)B;
    }
    __syncthreads();
    return col[tx];
}

// A thread of fc_post_*: (tx, ty) in the block, its column j (live: j < n), the sizes B and n, and
// the layer's BatchNorm and training flags.
struct FcThread {
    u32 tx, ty, j, B, n;
    bool live, has_bn, train;
};
__device__ __forceinline__ FcThread fc_thread(const FcPostArgs& a) {
    const u32 tx = threadIdx.x, j = blockIdx.x * FC_TX + tx;
    const FcPass& p = a.pass;
    return {tx, threadIdx.y, j, p.rows, p.n, j < p.n, (p.flags & FC_HAS_BN) != 0,
            (p.flags & FC_TRAIN) != 0};
}

SCVI_KERNEL(fc_post_fwd, FcPostArgs) {
    __shared__ double red[FC_TY][FC_TX];
    __shared__ double col_mean[FC_TX];
    __shared__ double col_var[FC_TX];
    const auto [tx, ty, j, B, n, live, has_bn, train] = fc_thread(a);

    // Pass 1: the Linear's output, kept in `pre` until the normalisation is known.
    double s = 0.0;
    if (live) {
        for (u32 r = ty; r < B; r += FC_TY) {
            float v = a.lin[(u64)r * n + j] + a.bias[j];
            if (a.n_cat > 0) v += a.weight[(u64)j * a.ldw + a.n_in + a.cats[r]];
            a.pre[(u64)r * n + j] = v;
            s += (double)v;
        }
    }
    if (has_bn) {
        double mean, var;
        if (train) {
            mean = column_mean(s, red, col_mean, B);
            double q = 0.0;
            if (live) {
                for (u32 r = ty; r < B; r += FC_TY) {
                    const double d = (double)a.pre[(u64)r * n + j] - mean;
                    q += d * d;
                }
            }
            var = column_mean(q, red, col_var, B);
            if (ty == 0 && live) {
                const double unbias = B > 1 ? (double)B / ((double)B - 1.0) : 1.0;
                const double rm = (double)a.running_mean[j], rv = (double)a.running_var[j];
                a.running_mean[j] =
                    (float)((1.0 - SCVI_BN_MOMENTUM) * rm + SCVI_BN_MOMENTUM * mean);
                a.running_var[j] =
                    (float)((1.0 - SCVI_BN_MOMENTUM) * rv + SCVI_BN_MOMENTUM * var * unbias);
            }
            if (blockIdx.x == 0 && tx == 0 && ty == 0) a.num_batches_tracked[0] += 1.0f;
        } else {
            mean = live ? (double)a.running_mean[j] : 0.0;
            var = live ? (double)a.running_var[j] : 1.0;
        }
        if (live) {
            const float inv = (float)(1.0 / sqrt(var + SCVI_BN_EPS));
            if (ty == 0) a.inv_std[j] = inv;
            const float mean_t = (float)mean;
            const float g = a.gamma[j], be = a.beta[j];
            for (u32 r = ty; r < B; r += FC_TY) {
                const u64 e = (u64)r * n + j;
                const float xh = (a.pre[e] - mean_t) * inv;
                a.xhat[e] = xh;
                a.pre[e] = g * xh + be;
            }
        }
    }
    if ((a.pass.flags & FC_ACT) && live) {
        const bool drop = (a.pass.flags & FC_DROPOUT) != 0;
        for (u32 r = ty; r < B; r += FC_TY) {
            const u64 e = (u64)r * n + j;
            const float v = a.pre[e];
            float o = v > 0.0f ? v : 0.0f;
            if (drop) o *= dropout_mask(a.pass, e);
            a.out[e] = o;
        }
    }
}

SCVI_KERNEL(fc_post_bwd, FcPostArgs) {
    __shared__ double red_g[FC_TY][FC_TX];
    __shared__ double red_b[FC_TY][FC_TX];
    __shared__ float col_dgamma[FC_TX];
    __shared__ float col_dbeta[FC_TX];
    const auto [tx, ty, j, B, n, live, has_bn, train] = fc_thread(a);
    const bool act = (a.pass.flags & FC_ACT) != 0, drop = (a.pass.flags & FC_DROPOUT) != 0;
    float* d = a.lin;

    // Pass 1: through dropout and ReLU; BatchNorm's column sums.
    double sg = 0.0, sb = 0.0;
    if (live) {
        for (u32 r = ty; r < B; r += FC_TY) {
            const u64 e = (u64)r * n + j;
            float g = d[e];
            if (act) {
                if (drop) g *= dropout_mask(a.pass, e);
                if (a.pre[e] <= 0.0f) g = 0.0f;
                d[e] = g;
            }
            if (has_bn) {
                sg += (double)g * (double)a.xhat[e];
                sb += (double)g;
            }
        }
    }
    if (has_bn) {
        red_g[ty][tx] = sg;
        red_b[ty][tx] = sb;
        __syncthreads();
        if (ty == 0) {
            double tg = 0.0, tb = 0.0;
            for (int k = 0; k < FC_TY; ++k) {
                tg += red_g[k][tx];
                tb += red_b[k][tx];
            }
            col_dgamma[tx] = (float)tg;
            col_dbeta[tx] = (float)tb;
            if (live) {
                if (a.dgamma) a.dgamma[j] += (float)tg;
                if (a.dbeta) a.dbeta[j] += (float)tb;
            }
        }
        __syncthreads();
        if (live) {
            const float gam = a.gamma[j], inv = a.inv_std[j];
            const float dgam = col_dgamma[tx], dbet = col_dbeta[tx];
            const float fb = (float)B, inv_b = 1.0f / fb;
            for (u32 r = ty; r < B; r += FC_TY) {
                const u64 e = (u64)r * n + j;
                const float g = d[e];
                if (train) {
                    const float dx = g * gam;
                    d[e] = inv * inv_b * (fb * dx - gam * dbet - a.xhat[e] * gam * dgam);
                } else {
                    d[e] = g * (gam * inv);
                }
            }
        }
    }
    // The Linear's bias and one-hot columns: one thread per column walks the rows in order, so the
    // sums are deterministic. Writes of this block are visible after the barrier.
    __syncthreads();
    if (ty == 0 && live) {
        float sum = 0.0f;
        for (u32 r = 0; r < B; ++r) {
            const float g = d[(u64)r * n + j];
            sum += g;
            if (a.n_cat > 0) a.dweight[(u64)j * a.ldw + a.n_in + a.cats[r]] += g;
        }
        a.dbias[j] += sum;
    }
}

// Mirrors `LayerNormArgs` in src/cuda/kernels.rs.
struct LayerNormArgs {
    float* pre;     // forward: in: LayerNorm input, out: its output (the ReLU input) [B, n]
    float* out;     // forward: the layer's output [B, n]
    float* d;       // backward: in: d loss / d out; out: d loss / d (LayerNorm input) [B, n]
    float* ln_inv;  // 1 / sqrt(var + eps) per row [B]
    FcPass pass;
};

SCVI_KERNEL(layer_norm_fwd, LayerNormArgs) {
    __shared__ double buf[LN_THREADS];
    const u32 r = blockIdx.x, n = a.pass.n, t = threadIdx.x;
    float* row = a.pre + (u64)r * n;
    double s = 0.0;
    for (u32 j = t; j < n; j += LN_THREADS) s += (double)row[j];
    const double mean = block_sum_f64(s, buf) / (double)n;
    double q = 0.0;
    for (u32 j = t; j < n; j += LN_THREADS) {
        const double dv = (double)row[j] - mean;
        q += dv * dv;
    }
    const double var = block_sum_f64(q, buf) / (double)n;
    const double rr = 1.0 / sqrt(var + SCVI_LN_EPS);
    if (t == 0) a.ln_inv[r] = (float)rr;
    const float mean_t = (float)mean, r_t = (float)rr;
    const bool drop = (a.pass.flags & FC_DROPOUT) != 0;
    for (u32 j = t; j < n; j += LN_THREADS) {
        const u64 e = (u64)r * n + j;
        const float y = (row[j] - mean_t) * r_t;
        row[j] = y;
        float o = y > 0.0f ? y : 0.0f;
        if (drop) o *= dropout_mask(a.pass, e);
        a.out[e] = o;
    }
}

SCVI_KERNEL(layer_norm_bwd, LayerNormArgs) {
    __shared__ double buf[LN_THREADS];
    const u32 r = blockIdx.x, n = a.pass.n, t = threadIdx.x;
    const float* y = a.pre + (u64)r * n;
    float* d = a.d + (u64)r * n;
    const bool drop = (a.pass.flags & FC_DROPOUT) != 0;
    double s = 0.0, sy = 0.0;
    for (u32 j = t; j < n; j += LN_THREADS) {
        const u64 e = (u64)r * n + j;
        float g = d[j];
        if (drop) g *= dropout_mask(a.pass, e);
        if (y[j] <= 0.0f) g = 0.0f;
        d[j] = g;
        s += (double)g;
        sy += (double)g * (double)y[j];
    }
    const float sum = (float)block_sum_f64(s, buf);
    const float sum_y = (float)block_sum_f64(sy, buf);
    const float rr = a.ln_inv[r], dn = (float)n;
    for (u32 j = t; j < n; j += LN_THREADS) d[j] = rr / dn * (dn * d[j] - sum - y[j] * sum_y);
}
