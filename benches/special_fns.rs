//! Throughput of the vectorised f32 special functions and of the per-element likelihood terms, in
//! ns per element over 256k-element arrays (one step's `B x G`), with the widest instruction set.

mod common;

use common::time;
use scvi_rs::cpu::simd::{dispatch, Kernel};
use scvi_rs::math::likelihood::{nb_zero, zinb_zero, zinb_zero_fast};
use scvi_rs::math::special::{
    exp_f32, exp_f32_fast, lgamma_digamma_f32, ln_1p_f32, ln_f32, ln_f32_fast,
};

/// A kernel applying `$f` element-wise; a macro rather than a closure so that the body is inlined
/// into each instruction-set version (a closure or `fn` item passed as a value is not).
macro_rules! bench_fn {
    ($name:expr, $x:expr, $y:expr, $f:ident) => {{
        struct K<'a> {
            x: &'a [f32],
            y: &'a [f32],
            out: &'a mut [f32],
        }
        impl Kernel for K<'_> {
            type Output = ();
            #[inline(always)]
            fn run(self) {
                let n = self.out.len();
                let (x, y) = (&self.x[..n], &self.y[..n]);
                for i in 0..n {
                    self.out[i] = $f(x[i], y[i]);
                }
            }
        }
        let (x, y): (&[f32], &[f32]) = ($x, $y);
        let mut out = vec![0.0f32; x.len()];
        let (min, med) = time(20, 4, || {
            dispatch(K {
                x,
                y,
                out: &mut out,
            })
        });
        println!(
            "| {} | {:.3} | {:.3} |",
            $name,
            min / x.len() as f64 * 1e9,
            med / x.len() as f64 * 1e9
        );
    }};
}

/// One table row per `"name" => function`.
macro_rules! bench_fns {
    ($x:expr, $y:expr; $($name:expr => $f:ident,)*) => {
        $(bench_fn!($name, $x, $y, $f);)*
    };
}

#[inline(always)]
fn copy(a: f32, _: f32) -> f32 {
    a
}
#[inline(always)]
fn div(a: f32, b: f32) -> f32 {
    a / (b + 1.0)
}
#[inline(always)]
fn exp(a: f32, b: f32) -> f32 {
    exp_f32(a * 10.0 - b * 20.0)
}
#[inline(always)]
fn exp_fast(a: f32, b: f32) -> f32 {
    exp_f32_fast(a * 10.0 - b * 20.0)
}
#[inline(always)]
fn ln_fast(a: f32, b: f32) -> f32 {
    ln_f32_fast(a * 10.0 + b)
}
#[inline(always)]
fn ln(a: f32, b: f32) -> f32 {
    ln_f32(a * 10.0 + b)
}
#[inline(always)]
fn ln_1p(a: f32, b: f32) -> f32 {
    ln_1p_f32(a * 10.0 + b)
}
#[inline(always)]
fn lgdg(a: f32, b: f32) -> f32 {
    let (l, d) = lgamma_digamma_f32(a * 30.0 + b);
    l + d
}
#[inline(always)]
fn std_exp(a: f32, b: f32) -> f32 {
    (a * 10.0 - b * 20.0).exp()
}
#[inline(always)]
fn nb0(a: f32, b: f32) -> f32 {
    let t = nb_zero(a * 3.0, b * 5.0 + 0.1, 1.0 / (b * 5.0 + 0.1));
    t.ll + t.d_mu + t.d_theta
}
#[inline(always)]
fn zinb0_value(a: f32, b: f32) -> f32 {
    zinb_zero(a * 3.0, b * 5.0 + 0.1, 1.0 / (b * 5.0 + 0.1), a - b).ll
}
#[inline(always)]
fn zinb0(a: f32, b: f32) -> f32 {
    let t = zinb_zero(a * 3.0, b * 5.0 + 0.1, 1.0 / (b * 5.0 + 0.1), a - b);
    t.ll + t.d_mu + t.d_theta + t.d_pi
}

#[inline(always)]
fn zinb0_fast(a: f32, b: f32) -> f32 {
    let t = zinb_zero_fast(a * 3.0, b * 5.0 + 0.1, 1.0 / (b * 5.0 + 0.1), a - b);
    t.ll + t.d_mu + t.d_theta + t.d_pi
}
#[inline(always)]
fn zinb0_fast_value(a: f32, b: f32) -> f32 {
    zinb_zero_fast(a * 3.0, b * 5.0 + 0.1, 1.0 / (b * 5.0 + 0.1), a - b).ll
}

fn main() {
    let n = 128 * 2000;
    let x: Vec<f32> = (0..n)
        .map(|i| ((i * 7919) % 10007) as f32 / 10007.0)
        .collect();
    let y: Vec<f32> = (0..n)
        .map(|i| ((i * 104729) % 9973) as f32 / 9973.0)
        .collect();
    println!("instruction set {:?}\n", scvi_rs::cpu::simd::isa());
    println!("| function (f32, per element) | min ns | median ns |");
    println!("|---|---:|---:|");
    bench_fns!(&x, &y;
        "copy" => copy,
        "a / b" => div,
        "exp_f32" => exp,
        "ln_f32" => ln,
        "exp_f32_fast (bounded)" => exp_fast,
        "ln_f32_fast (positive normal)" => ln_fast,
        "ln_1p_f32" => ln_1p,
        "lgamma_digamma_f32 (both)" => lgdg,
        "std f32::exp (not vectorised)" => std_exp,
        "NB at x = 0 (value + 3 derivatives)" => nb0,
        "ZINB at x = 0 (value only)" => zinb0_value,
        "ZINB at x = 0 (value + 4 derivatives)" => zinb0,
        "ZINB at x = 0, fast form (value only)" => zinb0_fast_value,
        "ZINB at x = 0, fast form (value + 4 derivatives)" => zinb0_fast,
    );
}
