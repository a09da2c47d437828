// common.cuh: what every kernel file of scvi-rs shares.
//
// - SCVI_KERNEL: how an entry point is declared. Every kernel takes exactly one argument, a
//   #[repr(C)] struct of the same name in src/cuda/kernels.rs (`FcPostArgs` <-> `FcPostArgs`), passed
//   by value. In CUDA it expands to `extern "C" __global__ void name(const Args a)`.
// - Philox4x32-10 and the stream / index scheme of src/rng.rs, so the GPU draws exactly the numbers
//   the CPU draws (dropout masks bit for bit; normals up to the last bit of f64 cos / sin, which
//   vanishes in the cast to f32).
// - block reductions through shared memory (no warp shuffles, so the host emulation below can run
//   every kernel), special functions and the count likelihoods in f64, written as
//   src/math/likelihood.rs writes them.
// - SCVI_EMU: a host emulation of the CUDA execution model (blocks run one after another, the
//   threads of a block as cooperative fibers switched at __syncthreads), used only by the tests so
//   that the kernels and the engine's orchestration can be checked against the CPU reference on a
//   machine without a GPU. It is never used to train.
//
// - the constants shared with Rust are not written in any kernel file: src/cuda/kernels.rs
//   `defines()` passes them to NVRTC and to the emulation's compiler as -D defines (the model's
//   SCVI_VAR_EPS, SCVI_BN_EPS, SCVI_BN_MOMENTUM, SCVI_LN_EPS, the likelihood's SCVI_LIK_EPS, the
//   argument structs' flags and the block shapes the launches use).
//
// Shapes: B cells (rows), G genes, H hidden units, L latent dimensions, K categories.
// Buffers are row-major; [B, n] means element (b, j) at b * n + j.
#ifndef SCVI_COMMON_CUH
#define SCVI_COMMON_CUH

#ifndef SCVI_VAR_EPS
#error "compile the kernels through scvi-rs: src/cuda/kernels.rs passes the shared constants as -D defines"
#endif

typedef unsigned int u32;
typedef unsigned long long u64;
typedef unsigned char u8;

#ifdef SCVI_EMU
// ------------------------------------------------------------------------------------------------
// Host emulation (tests only). Compiled with a host C++ compiler: g++ -DSCVI_EMU -shared.
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <ucontext.h>
#include <vector>

struct scvi_dim3 {
    unsigned x, y, z;
};
namespace scvi_emu {
struct State {
    scvi_dim3 thread_idx, block_idx, block_dim, grid_dim;
    unsigned char* dyn_smem;
};
State& state();
void barrier();
}  // namespace scvi_emu
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__
#define __shared__ static
#define threadIdx (scvi_emu::state().thread_idx)
#define blockIdx (scvi_emu::state().block_idx)
#define blockDim (scvi_emu::state().block_dim)
#define gridDim (scvi_emu::state().grid_dim)
inline void __syncthreads() { scvi_emu::barrier(); }
#define SCVI_DYN_SMEM(T, name) T* name = reinterpret_cast<T*>(scvi_emu::state().dyn_smem)
#define SCVI_KERNEL(name, Args)                                    \
    static void name##_body(const Args a);                         \
    extern "C" void name(const void* p) {                          \
        name##_body(*static_cast<const Args*>(p));                 \
    }                                                              \
    static void name##_body(const Args a)

#ifdef SCVI_EMU_IMPL
// The scheduler: blocks one after another; in a block, each thread is a fiber (ucontext) that
// runs until it reaches __syncthreads or returns; a round resumes every live fiber once, so after
// a round all of them stand at the same barrier (CUDA requires barriers in uniform control flow).
namespace scvi_emu {
static State g_state;
State& state() { return g_state; }
struct Fiber {
    ucontext_t ctx;
    bool done;
    scvi_dim3 tid;
    char* stack;
};
static const size_t STACK_BYTES = 128 * 1024;
static std::vector<Fiber> g_fibers;
static ucontext_t g_sched;
static unsigned g_cur;
static void (*g_kernel)(const void*);
static const void* g_args;
static std::vector<unsigned char> g_dyn;
static void trampoline() {
    g_kernel(g_args);
    g_fibers[g_cur].done = true;
}
void barrier() { swapcontext(&g_fibers[g_cur].ctx, &g_sched); }
}  // namespace scvi_emu

extern "C" int scvi_emu_launch(void (*kernel)(const void*), const void* args, unsigned gx,
                               unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                               unsigned long long dyn_smem) {
    using namespace scvi_emu;
    const unsigned n = bx * by * bz;
    if (n == 0 || n > 1024 || gx == 0 || gy == 0 || gz == 0) return 1;
    while (g_fibers.size() < n) {
        Fiber f;
        f.stack = static_cast<char*>(std::malloc(STACK_BYTES));
        if (!f.stack) return 2;
        g_fibers.push_back(f);
    }
    // Dynamic shared memory starts as garbage, as on a GPU.
    g_dyn.assign(dyn_smem + 16, 0xA5);
    g_kernel = kernel;
    g_args = args;
    g_state.grid_dim = {gx, gy, gz};
    g_state.block_dim = {bx, by, bz};
    g_state.dyn_smem = g_dyn.data();
    for (unsigned z = 0; z < gz; ++z)
        for (unsigned y = 0; y < gy; ++y)
            for (unsigned x = 0; x < gx; ++x) {
                g_state.block_idx = {x, y, z};
                for (unsigned t = 0; t < n; ++t) {
                    Fiber& f = g_fibers[t];
                    f.done = false;
                    f.tid = {t % bx, (t / bx) % by, t / (bx * by)};
                    getcontext(&f.ctx);
                    f.ctx.uc_stack.ss_sp = f.stack;
                    f.ctx.uc_stack.ss_size = STACK_BYTES;
                    f.ctx.uc_link = &g_sched;
                    makecontext(&f.ctx, trampoline, 0);
                }
                for (;;) {
                    bool all_done = true;
                    for (unsigned t = 0; t < n; ++t) {
                        Fiber& f = g_fibers[t];
                        if (f.done) continue;
                        g_cur = t;
                        g_state.thread_idx = f.tid;
                        swapcontext(&g_sched, &f.ctx);
                        if (!f.done) all_done = false;
                    }
                    if (all_done) break;
                }
            }
    return 0;
}
#endif  // SCVI_EMU_IMPL
#else
// ------------------------------------------------------------------------------------------------
// CUDA (NVRTC).
#define SCVI_DYN_SMEM(T, name) extern __shared__ T name[]
#define SCVI_KERNEL(name, Args) extern "C" __global__ void name(const Args a)
#endif

// ------------------------------------------------------------------------------------------------
// Random numbers: Philox4x32-10 (Salmon et al. 2011), exactly src/rng.rs.
//
// Element i of stream (purpose s, index n) under key (seed) is word i % 4 of the block
// philox(counter = [blk, blk >> 32, n, (n >> 32) ^ (s << 24)], key = [seed, seed >> 32]), blk = i / 4.
// Normals (fill_normal): element i is z0 (i even) or z1 (i odd) of Box-Muller on words 0 and 1 of
// block i / 2, computed in f64.

// The purpose s (src/rng.rs `Stream`) comes in the key, set by Rust (`PhiloxKey::new`).

struct Philox4 {
    u32 v[4];
};

__device__ __forceinline__ Philox4 philox4x32_10(Philox4 c, u32 k0, u32 k1) {
    const u32 M0 = 0xD2511F53u, M1 = 0xCD9E8D57u, W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
    for (int r = 0; r < 10; ++r) {
        const u64 p0 = (u64)M0 * (u64)c.v[0];
        const u64 p1 = (u64)M1 * (u64)c.v[2];
        Philox4 n;
        n.v[0] = (u32)(p1 >> 32) ^ c.v[1] ^ k0;
        n.v[1] = (u32)p1;
        n.v[2] = (u32)(p0 >> 32) ^ c.v[3] ^ k1;
        n.v[3] = (u32)p0;
        c = n;
        k0 += W0;
        k1 += W1;
    }
    return c;
}

// The generator key and one stream of it, as passed from Rust (`PhiloxKey` in src/cuda/kernels.rs).
struct PhiloxKey {
    u32 key0, key1;
    u32 stream;
    u32 pad;
    u64 index;
};

__device__ __forceinline__ Philox4 philox_block(const PhiloxKey k, u64 blk) {
    Philox4 c;
    c.v[0] = (u32)blk;
    c.v[1] = (u32)(blk >> 32);
    c.v[2] = (u32)k.index;
    c.v[3] = (u32)(k.index >> 32) ^ (k.stream << 24);
    return philox4x32_10(c, k.key0, k.key1);
}

// rng.rs `uniform_open`: ((w >> 8) + 0.5) / 2^24, exact in f64.
__device__ __forceinline__ double uniform_open(u32 w) {
    return ((double)(w >> 8) + 0.5) / 16777216.0;
}

// rng.rs `u32_at` then `uniform_open`: the uniform that decides dropout element i.
__device__ __forceinline__ double uniform_at(const PhiloxKey k, u64 i) {
    const Philox4 b = philox_block(k, i / 4);
    return uniform_open(b.v[i % 4]);
}

// Element i of rng.rs `fill_normal` (Box-Muller on words 0 and 1 of block i / 2).
__device__ __forceinline__ double normal_at(const PhiloxKey k, u64 i) {
    const Philox4 b = philox_block(k, i / 2);
    const double u1 = uniform_open(b.v[0]);
    const double u2 = uniform_open(b.v[1]);
    const double r = sqrt(-2.0 * log(u1));
    const double t = 6.283185307179586 * u2;  // 2 * PI, as (2.0 * PI) * u2 in Rust
    return (i % 2 == 0) ? r * cos(t) : r * sin(t);
}

// ------------------------------------------------------------------------------------------------
// Block reductions through shared memory. `buf` holds blockDim.x * blockDim.y * blockDim.z values;
// every thread of the block must call, and each gets the total.

__device__ __forceinline__ unsigned flat_tid() {
    return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
}
__device__ __forceinline__ unsigned flat_block_threads() {
    return blockDim.x * blockDim.y * blockDim.z;
}

// `op(acc, v)` over the block's values, in a fixed order: the non-power-of-two tail folded first,
// then halving.
template <typename T, typename Op>
__device__ __forceinline__ T block_reduce(T v, T* buf, Op op) {
    const unsigned t = flat_tid(), n = flat_block_threads();
    buf[t] = v;
    __syncthreads();
    unsigned p = 1;
    while (p * 2 <= n) p *= 2;
    if (t >= p) buf[t - p] = op(buf[t - p], buf[t]);
    __syncthreads();
    for (unsigned s = p / 2; s > 0; s /= 2) {
        if (t < s) buf[t] = op(buf[t], buf[t + s]);
        __syncthreads();
    }
    const T r = buf[0];
    __syncthreads();
    return r;
}

struct SumF64 {
    __device__ __forceinline__ double operator()(double a, double b) const { return a + b; }
};
struct MaxF32 {
    __device__ __forceinline__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

__device__ __forceinline__ double block_sum_f64(double v, double* buf) {
    return block_reduce(v, buf, SumF64());
}

__device__ __forceinline__ float block_max_f32(float v, float* buf) {
    return block_reduce(v, buf, MaxF32());
}

// ------------------------------------------------------------------------------------------------
// Special functions (src/math/special.rs), f64.

// psi(x) for x > 0: recurrence up to x >= 10, then the asymptotic series (as PyTorch's calc_digamma).
__device__ __forceinline__ double digamma_f64(double x) {
    if (x == 0.0) return log(0.0);  // -inf
    double result = 0.0;
    if (x < 0.0) {
        // Reflection: psi(1 - x) - psi(x) = pi cot(pi x). Unused by the likelihoods (x > 0).
        const double PI = 3.141592653589793;
        result = -PI / tan(PI * x);
        x = 1.0 - x;
    }
    while (x < 10.0) {
        result -= 1.0 / x;
        x += 1.0;
    }
    const double B[7] = {8.333333333333333e-2, -8.333333333333333e-3, 3.968253968253968e-3,
                         -4.166666666666667e-3, 7.575757575757576e-3, -2.109279609279609e-2,
                         8.333333333333333e-2};
    const double z = 1.0 / (x * x);
    double poly = 0.0;
    for (int i = 6; i >= 0; --i) poly = poly * z + B[i];
    return result + log(x) - 0.5 / x - poly * z;
}

// torch's softplus (beta 1, threshold 20) and its derivative.
__device__ __forceinline__ double sigmoid_f64(double x) {
    if (x >= 0.0) return 1.0 / (1.0 + exp(-x));
    const double e = exp(x);
    return e / (1.0 + e);
}
__device__ __forceinline__ double softplus_f64(double x) { return x > 20.0 ? x : log1p(exp(x)); }
__device__ __forceinline__ double softplus_grad_f64(double x) {
    return x > 20.0 ? 1.0 : sigmoid_f64(x);
}

// ------------------------------------------------------------------------------------------------
// Count log-likelihoods and their derivatives (src/math/likelihood.rs), f64, eps = SCVI_LIK_EPS.
//
// NB:   theta (log(theta+eps) - log(theta+mu+eps)) + x (log(mu+eps) - log(theta+mu+eps))
//       + lgamma(x+theta) - lgamma(theta) - lgamma(x+1)
// ZINB: pt = -pi + theta (log(theta+eps) - log(theta+mu+eps))
//       x < eps: softplus(pt) - softplus(-pi)
//       x > eps: -softplus(-pi) + pt + x (log(mu+eps) - log(theta+mu+eps)) + lgamma terms
// Poisson: x log(mu) - mu - lgamma(x+1)   (x log mu read as 0 at x = 0)

// The likelihood codes SCVI_LIK_ZINB, SCVI_LIK_NB, SCVI_LIK_POISSON come from Rust.

struct LogLik {
    double value, d_mu, d_theta, d_pi;
};

__device__ __forceinline__ LogLik loglik_eval(int kind, double x, double mu, double theta,
                                              double pi) {
    const double EPS = SCVI_LIK_EPS;
    LogLik o;
    o.value = 0.0;
    o.d_mu = 0.0;
    o.d_theta = 0.0;
    o.d_pi = 0.0;
    if (kind == SCVI_LIK_POISSON) {
        double xlogmu = 0.0, d = 0.0;
        if (x != 0.0) {
            xlogmu = x * log(mu);
            d = x / mu;
        }
        o.value = xlogmu - mu - lgamma(x + 1.0);
        o.d_mu = d - 1.0;
        return o;
    }
    const double log_theta_eps = log(theta + EPS);
    const double tme = theta + mu + EPS;
    const double log_tme = log(tme);
    const double dpt_dtheta = log_theta_eps - log_tme + theta * (1.0 / (theta + EPS) - 1.0 / tme);
    if (kind == SCVI_LIK_NB) {
        const double log_mu = log(mu + EPS);
        double lg = 0.0, dg = 0.0;
        if (x != 0.0) {
            lg = lgamma(x + theta) - lgamma(theta) - lgamma(x + 1.0);
            dg = digamma_f64(x + theta) - digamma_f64(theta);
        }
        o.value = theta * (log_theta_eps - log_tme) + x * (log_mu - log_tme) + lg;
        o.d_mu = -theta / tme + x * (1.0 / (mu + EPS) - 1.0 / tme);
        o.d_theta = dpt_dtheta - x / tme + dg;
        return o;
    }
    // ZINB
    const double pt = -pi + theta * (log_theta_eps - log_tme);
    const double sp_neg_pi = softplus_f64(-pi);
    const double dpt_dmu = -theta / tme;
    if (x < EPS) {
        const double s = softplus_grad_f64(pt);
        o.value = softplus_f64(pt) - sp_neg_pi;
        o.d_pi = -s + softplus_grad_f64(-pi);
        o.d_mu = s * dpt_dmu;
        o.d_theta = s * dpt_dtheta;
    }
    if (x > EPS) {
        const double log_mu = log(mu + EPS);
        o.value = -sp_neg_pi + pt + x * (log_mu - log_tme) + lgamma(x + theta) - lgamma(theta) -
                  lgamma(x + 1.0);
        o.d_pi = softplus_grad_f64(-pi) - 1.0;
        o.d_mu = dpt_dmu + x * (1.0 / (mu + EPS) - 1.0 / tme);
        o.d_theta = dpt_dtheta - x / tme + digamma_f64(x + theta) - digamma_f64(theta);
    }
    return o;
}

// First index k in [lo, hi) with idx[k] >= g (idx sorted increasing), or hi.
__device__ __forceinline__ u32 lower_bound_u32(const u32* idx, u32 lo, u32 hi, u32 g) {
    while (lo < hi) {
        const u32 mid = lo + (hi - lo) / 2;
        if (idx[mid] < g)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

#endif  // SCVI_COMMON_CUH
