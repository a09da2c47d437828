// gather.cu: a minibatch gathered on the device from the data set held there (docs/cuda.md, issue
// 14's device-resident data), so a training step uploads B cell ids instead of B rows. CPU twin:
// src/batch.rs `Minibatch::gather`. Test: tests/cuda_step.rs `device_data_*`.
//
// gather_offsets_fwd, one block of GATHER_THREADS threads: the B cells' row lengths, read from the
// data set's indptr (u64: more than 2^32 non-zeros fit), scanned into the minibatch's indptr
// [B + 1] (u32, exclusive, in chunks of GATHER_THREADS with a shared-memory Hillis-Steele scan
// and a carry between chunks); each cell's batch code, label code and log library copied.
// gather_rows_fwd, one block per cell, GATHER_THREADS threads over its non-zeros: the column
// indices and values copied to the offsets the first kernel wrote. The result is the minibatch
// `Minibatch::gather` builds on the host, bit for bit (the log library is computed once, on the
// host, as the host path computes it).
#include "common.cuh"

// Mirrors `GatherArgs` in src/cuda/kernels.rs.
struct GatherArgs {
    const u64* src_indptr;  // [N + 1]
    const u32* src_indices;
    const float* src_values;
    const u32* src_batch;        // [N]
    const u32* src_labels;       // [N]
    const float* src_log_library;  // [N]
    const u32* cells;  // [B]
    u32* indptr;       // out [B + 1]
    u32* indices;      // out
    float* values;     // out
    u32* batch;        // out [B]
    u32* labels;       // out [B]
    float* log_library;  // out [B]
    u32 rows;            // B
    u32 pad;
};

SCVI_KERNEL(gather_offsets_fwd, GatherArgs) {
    __shared__ u32 s[GATHER_THREADS];
    __shared__ u32 carry;
    const u32 t = threadIdx.x;
    if (t == 0) {
        carry = 0;
        a.indptr[0] = 0;
    }
    __syncthreads();
    for (u32 c0 = 0; c0 < a.rows; c0 += GATHER_THREADS) {
        const u32 i = c0 + t;
        u32 len = 0;
        if (i < a.rows) {
            const u32 c = a.cells[i];
            len = (u32)(a.src_indptr[c + 1] - a.src_indptr[c]);
            a.batch[i] = a.src_batch[c];
            a.labels[i] = a.src_labels[c];
            a.log_library[i] = a.src_log_library[c];
        }
        s[t] = len;
        __syncthreads();
        for (u32 off = 1; off < GATHER_THREADS; off <<= 1) {
            const u32 v = t >= off ? s[t - off] : 0u;
            __syncthreads();
            s[t] += v;
            __syncthreads();
        }
        if (i < a.rows) a.indptr[i + 1] = carry + s[t];
        __syncthreads();
        if (t == GATHER_THREADS - 1) carry += s[t];
        __syncthreads();
    }
}

SCVI_KERNEL(gather_rows_fwd, GatherArgs) {
    const u32 b = blockIdx.x;
    const u32 c = a.cells[b];
    const u64 s0 = a.src_indptr[c];
    const u32 n = (u32)(a.src_indptr[c + 1] - s0);
    const u32 d0 = a.indptr[b];
    for (u32 k = threadIdx.x; k < n; k += blockDim.x) {
        a.indices[d0 + k] = a.src_indices[s0 + k];
        a.values[d0 + k] = a.src_values[s0 + k];
    }
}
