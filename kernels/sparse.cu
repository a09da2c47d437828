// sparse.cu: the encoders' first layer on the sparse counts, never densified. CPU twin:
// src/cpu/sparse.rs, `sparse_log1p_linear_forward` (without the bias and one-hot column, which
// fc_post_fwd adds) and `sparse_log1p_linear_backward` (its gene columns), and the transposition of
// `simd::transpose` for transpose_fwd. Test: tests/cuda_kernels.rs `sparse_*`.
//
// sparse_log1p_linear_fwd: lin[b, h] = sum_{g in nz(b)} W[h, g] log1p(x_bg), reading the weight
// through its transpose wt [G, H] (transpose_fwd) so a warp reads 32 consecutive h of one gene.
// The bias and the one-hot column are added by fc_post_fwd, as for every Linear.
// Grid: one block per cell; block SP_THREADS threads over h.
//
// sparse_log1p_linear_bwd: dW[h, g] += sum_b d[b, h] log1p(x_bg) over the non-zeros only.
// Grid: one block per tile of `tile` genes; the block keeps a [tile, H] accumulator in shared
// memory and walks the cells in order, finding each row's non-zeros in the tile by binary search
// (rows are sorted, strictly increasing), so every sum has a fixed order: deterministic, no atomics.
// Block SP_THREADS threads over h.
//
// transpose_fwd: wt[g, h] = W[h, g] for g < G (the weight's first G columns; ldw = G + n_cat).
// Grid (ceil(G / TR_TILE), ceil(H / TR_TILE)), block (TR_TILE, TR_ROWS), a TR_TILE x (TR_TILE + 1)
// tile in shared memory. SP_THREADS, TR_TILE and TR_ROWS come from Rust (src/cuda/kernels.rs).
//
// Shapes: lin, d: [B, H]; W, dW: [H, ldw]; wt: [G, H]; CSR indptr [B + 1], indices / values [nnz].
#include "common.cuh"

// Mirrors `SparseLinearArgs` in src/cuda/kernels.rs.
struct SparseLinearArgs {
    float* lin;         // forward output [B, H]
    const float* d;     // backward input [B, H]
    const float* wt;    // forward: transposed gene weights [G, H]
    float* dweight;     // backward: weight gradient [H, ldw]
    const u32* indptr;  // [B + 1]
    const u32* indices;
    const float* values;
    u32 rows;
    u32 h;
    u32 genes;
    u32 ldw;
    u32 tile;  // genes per block (backward); dynamic shared memory is tile * H floats
    u32 pad;
};

SCVI_KERNEL(sparse_log1p_linear_fwd, SparseLinearArgs) {
    const u32 b = blockIdx.x;
    const u32 k0 = a.indptr[b], k1 = a.indptr[b + 1];
    for (u32 h = threadIdx.x; h < a.h; h += SP_THREADS) {
        float acc = 0.0f;
        for (u32 k = k0; k < k1; ++k) acc += a.wt[(u64)a.indices[k] * a.h + h] * log1pf(a.values[k]);
        a.lin[(u64)b * a.h + h] = acc;
    }
}

SCVI_KERNEL(sparse_log1p_linear_bwd, SparseLinearArgs) {
    SCVI_DYN_SMEM(float, acc);
    const u32 H = a.h, tile = a.tile;
    const u32 g0 = blockIdx.x * tile;
    const u32 g1 = g0 + tile < a.genes ? g0 + tile : a.genes;
    for (u32 e = threadIdx.x; e < tile * H; e += SP_THREADS) acc[e] = 0.0f;
    __syncthreads();
    // Each thread owns columns h of the accumulator: no two threads touch one element.
    for (u32 b = 0; b < a.rows; ++b) {
        const u32 k1 = a.indptr[b + 1];
        u32 k = lower_bound_u32(a.indices, a.indptr[b], k1, g0);
        for (; k < k1 && a.indices[k] < g1; ++k) {
            const u32 gl = a.indices[k] - g0;
            const float lv = log1pf(a.values[k]);
            for (u32 h = threadIdx.x; h < H; h += SP_THREADS)
                acc[gl * H + h] += a.d[(u64)b * H + h] * lv;
        }
    }
    for (u32 g = g0; g < g1; ++g)
        for (u32 h = threadIdx.x; h < H; h += SP_THREADS)
            a.dweight[(u64)h * a.ldw + g] += acc[(g - g0) * H + h];
}

// Mirrors `TransposeArgs` in src/cuda/kernels.rs.
struct TransposeArgs {
    const float* src;  // [rows_src, ld_src], transposing its first cols_src columns
    float* dst;        // [cols_src, rows_src]
    u32 rows_src;
    u32 cols_src;
    u32 ld_src;
    u32 pad;
};

SCVI_KERNEL(transpose_fwd, TransposeArgs) {
    __shared__ float t[TR_TILE][TR_TILE + 1];
    const u32 c0 = blockIdx.x * TR_TILE, r0 = blockIdx.y * TR_TILE;
    for (u32 i = threadIdx.y; i < TR_TILE; i += TR_ROWS) {
        const u32 r = r0 + i, c = c0 + threadIdx.x;
        if (r < a.rows_src && c < a.cols_src) t[i][threadIdx.x] = a.src[(u64)r * a.ld_src + c];
    }
    __syncthreads();
    for (u32 i = threadIdx.y; i < TR_TILE; i += TR_ROWS) {
        const u32 c = c0 + i, r = r0 + threadIdx.x;
        if (r < a.rows_src && c < a.cols_src) a.dst[(u64)c * a.rows_src + r] = t[threadIdx.x][i];
    }
}
