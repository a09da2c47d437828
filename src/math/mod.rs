//! The maths shared by every engine: special functions, the softmax and the count likelihoods with
//! their gradients. The CPU engine calls these per element; the CUDA kernels are checked against them.

pub mod likelihood;
pub mod softmax;
pub mod special;
