// adam.cu: one torch.optim.Adam step over the flat parameter buffer. CPU twin: src/cpu/adam.rs
// `Adam::update`. Test: tests/cuda_kernels.rs `adam_*`. With scvi-tools' settings passed in (lr 1e-3, betas (0.9, 0.999), eps 0.01, weight decay 1e-6 added to
// the gradient, no amsgrad). Elements of tensors without a gradient in this configuration
// (`Tensor::trainable` false, mask 0) are left alone, weight decay included, as torch skips
// parameters whose .grad is None.
//
//   g = grad + wd p;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
//   p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
//
// The step constants (lr / (1 - b1^t), sqrt(1 - b2^t)) are computed on the host in f64 and rounded
// to f32, as the CPU engine does (`AdamConfig::step_constants`, src/engine.rs). Grid: one thread per element, blocks of 256.
#include "common.cuh"

// Mirrors `AdamArgs` in src/cuda/kernels.rs.
struct AdamArgs {
    float* params;
    const float* grads;
    float* m;
    float* v;
    const u8* mask;  // 1 where the element is trained
    u64 n;
    float step_size;
    float bc2_sqrt;
    float beta1;
    float beta2;
    float one_minus_beta1;
    float one_minus_beta2;
    float weight_decay;
    float eps;
};

SCVI_KERNEL(adam_step, AdamArgs) {
    const u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= a.n || a.mask[i] == 0) return;
    const float p = a.params[i];
    const float g = a.grads[i] + a.weight_decay * p;
    const float m = a.beta1 * a.m[i] + a.one_minus_beta1 * g;
    const float v = a.beta2 * a.v[i] + a.one_minus_beta2 * g * g;
    a.m[i] = m;
    a.v[i] = v;
    a.params[i] = p - a.step_size * m / (sqrtf(v) / a.bc2_sqrt + a.eps);
}
