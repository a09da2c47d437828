//! The decoder output heads' three products with bf16 operands and f32 accumulation (the
//! `--precision bf16` mode), for a head `y = x W^T` with x `[B, H]` (the decoder's last hidden
//! layer), W `[G, H]` (the head's f32 master weight) and the upstream gradient d `[B, G]`:
//!
//! ```text
//! forward   y  [B, G]  = x W^T        A = x (A tiles)     B = W^T (VNNI, from W by 16x16 pair transposes)
//! weight    dW [G, H] += d^T x        A = d^T (A tiles, by pair transposes of d)   B = x (VNNI)
//! input     dx [B, H] (+)= d W        A = d (A tiles)     B = W (VNNI, row pairs)
//! ```
//!
//! Every operand is rounded once to bf16 (`bf16::to_bf16`: nearest, ties to even); the products
//! of bf16 pairs are exact in f32 and the sums are f32 (AMX) or f32 FMA chains (the portable
//! path), so each output carries `|err| <= (2u + u^2) sum_k |a_k b_k| + (f32 accumulation)`,
//! `u = 2^-8` (tests/bf16.rs derives and checks it). Everything else in the step (the biases,
//! the likelihood and its gradient, the other layers, Adam, the master weights) stays f32.
//!
//! When operands are converted: the weights once per step, as the forward pass starts (after the
//! previous step's Adam update) into both of their layouts; x once per forward pass into both of
//! its layouts; d once per head as its backward starts. No allocation once the buffers have grown
//! to the largest minibatch.
//!
//! Two backends, picked once: **AMX** (`amx::available()`: tile products on 16 x 16 f32 blocks,
//! the packing in AVX-512 with AVX512-BF16 conversions), and **portable** (everywhere else: the
//! operands rounded to bf16 values kept as f32, then the f32 tiles of `gemm`). They round the same
//! operands; only the order of the f32 additions differs, so they agree to f32 accumulation error,
//! not bit for bit. Both are tiled by the shapes alone (gene chunks of [`CHUNK`], 32 x 32 output
//! blocks, k in order), never by the thread count, so a run is reproducible bit for bit on the
//! same CPU at any number of threads.

use super::bf16::{pack, round_into, Packing, Src, TILE_ELEMS};
use super::gemm::{linear_dgrad, linear_fwd, linear_wgrad, SendPtr};
use crate::model::layout::LinearShape;
use half::bf16;
use rayon::prelude::*;
use std::ops::Range;

/// Genes per parallel task: `CHUNK / 16` tiles of 16 outputs, `CHUNK / 32` tiles of 32 along k.
pub const CHUNK: usize = 128;
/// 16-wide tiles and 32-wide k-tiles per gene chunk.
const TPC: usize = CHUNK / 16;
const KPC: usize = CHUNK / 32;

/// Which machinery runs the products.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// AMX-BF16 tiles.
    Amx,
    /// bf16-rounded operands through the f32 GEMM (no AMX on this CPU, or capped by
    /// `SCVI_RS_ISA`).
    Portable,
}

impl Backend {
    /// AMX where this process can use it, else the portable path.
    pub fn detect() -> Backend {
        if super::amx::available() {
            Backend::Amx
        } else {
            Backend::Portable
        }
    }

    /// For the engine's name and the log.
    pub fn describe(self) -> String {
        match self {
            Backend::Amx => "bf16 head products on AMX".into(),
            Backend::Portable => format!(
                "bf16 head products emulated at f32 speed ({})",
                super::amx::unavailable_reason().unwrap_or_else(|| "AMX not selected".into())
            ),
        }
    }
}

/// Tile counts of the shapes `B, H, G` (16-row tiles rounded up to an even count, so that every
/// output block is 2 x 2 tiles; 32-wide k-tiles).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Tiling {
    b: usize,
    h: usize,
    g: usize,
    /// k-tiles of 32 along B, H, G; the 16-wide tiles are twice as many.
    kb: usize,
    kh: usize,
    kg: usize,
}

impl Tiling {
    fn new(b: usize, h: usize, g: usize) -> Tiling {
        Tiling {
            b,
            h,
            g,
            kb: b.div_ceil(32),
            kh: h.div_ceil(32),
            kg: g.div_ceil(32),
        }
    }
}

/// A head's weight in its two layouts (AMX) or rounded (portable).
#[derive(Default)]
struct HeadWeights {
    /// VNNI B tiles of W^T (K = H, N = G), tile (j, t) at `j kh + t`.
    wf: Vec<bf16>,
    /// VNNI B tiles of W (K = G, N = H), tile (t, j) at `t 2kh + j` (k-major: a gene chunk's
    /// tiles are contiguous).
    wb: Vec<bf16>,
    /// Portable: W rounded to bf16 values.
    rounded: Vec<f32>,
}

/// The bf16 products of up to three heads (slots 0, 1, 2: scale, dropout, per-cell dispersion)
/// and their buffers.
pub struct HeadsBf16 {
    backend: Backend,
    tiling: Tiling,
    /// A tiles of x (M = B, K = H), tile (i, t) at `i kh + t`.
    xa: Vec<bf16>,
    /// VNNI B tiles of x (K = B, N = H), tile (t, j) at `j kb + t`.
    xv: Vec<bf16>,
    /// A tiles of d^T (M = G, K = B), tile (i, t) at `i kb + t`.
    dt: Vec<bf16>,
    /// A tiles of d (M = B, K = G), tile (i, t) at `t 2kb + i` (k-major).
    da: Vec<bf16>,
    heads: [HeadWeights; 3],
    /// Portable: x and d rounded.
    x_rounded: Vec<f32>,
    d_rounded: Vec<f32>,
}

fn grow<T: Clone + Default>(v: &mut Vec<T>, n: usize) {
    if v.len() < n {
        v.resize(n, T::default());
    }
}

impl HeadsBf16 {
    /// Buffers for `backend` (`Backend::Amx` only where [`Backend::detect`] picks it).
    pub fn new(backend: Backend) -> HeadsBf16 {
        assert!(
            backend == Backend::Portable || super::amx::available(),
            "the AMX backend asked for where AMX is not available"
        );
        HeadsBf16 {
            backend,
            tiling: Tiling::default(),
            xa: Vec::new(),
            xv: Vec::new(),
            dt: Vec::new(),
            da: Vec::new(),
            heads: Default::default(),
            x_rounded: Vec::new(),
            d_rounded: Vec::new(),
        }
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Start a pass: convert x (`[b, h]`, the heads' shared input) for the forward products and,
    /// with `grads`, for the weight gradients.
    pub fn begin(&mut self, x: &[f32], b: usize, h: usize, g: usize, grads: bool) {
        let t = Tiling::new(b, h, g);
        self.tiling = t;
        let src = Src {
            data: x,
            rows: b,
            cols: h,
            ld: h,
        };
        match self.backend {
            Backend::Amx => {
                let (mb, nh) = (2 * t.kb, 2 * t.kh);
                grow(&mut self.xa, mb * t.kh * TILE_ELEMS);
                pack(
                    &mut self.xa,
                    true,
                    src,
                    Packing::A,
                    (0..mb, 0..t.kh),
                    |i, k| i * t.kh + k,
                );
                if grads {
                    grow(&mut self.xv, t.kb * nh * TILE_ELEMS);
                    let (ks, js) = (0..t.kb, 0..nh);
                    pack(&mut self.xv, true, src, Packing::BRows, (ks, js), |k, j| {
                        j * t.kb + k
                    });
                }
            }
            Backend::Portable => {
                grow(&mut self.x_rounded, b * h);
                round_into(&mut self.x_rounded[..b * h], &x[..b * h]);
            }
        }
    }

    /// `y = x W^T` (`y` `[b, g]`, overwritten) for head `slot`, converting W (`[g, h]`) first: for
    /// the forward product, and with `grads` (as given to [`begin`](Self::begin)) for `dx` too.
    pub fn forward(&mut self, slot: usize, y: &mut [f32], w: &[f32], grads: bool) {
        let t = self.tiling;
        let (b, h, g) = (t.b, t.h, t.g);
        assert!(
            y.len() >= b * g && w.len() >= g * h,
            "bf16 head: buffers too small"
        );
        let wsrc = Src {
            data: w,
            rows: g,
            cols: h,
            ld: h,
        };
        let hw = &mut self.heads[slot];
        match self.backend {
            Backend::Portable => {
                grow(&mut hw.rounded, g * h);
                round_parallel(&mut hw.rounded[..g * h], &w[..g * h]);
                let s = LinearShape {
                    b,
                    n_in: h,
                    ldw: h,
                    n_out: g,
                };
                linear_fwd(y, &self.x_rounded, &hw.rounded, s, 0.0);
            }
            Backend::Amx => {
                let nh = 2 * t.kh;
                let yp = SendPtr(y.as_mut_ptr());
                // Per gene chunk: W^T's B tiles (packed by `per_gene_chunk`), W's rows for dx,
                // then y's columns of these genes.
                per_gene_chunk(
                    ((wsrc, false, t.kh), &mut hw.wf),
                    (&mut hw.wb, nh),
                    t.kg,
                    |tiles, ks, wf, wb| {
                        if grads {
                            let k0 = ks.start;
                            let w_rows = Packing::BRows;
                            pack(wb, true, wsrc, w_rows, (ks, 0..nh), |k, j| {
                                (k - k0) * nh + j
                            });
                        }
                        // y[:, genes of this chunk]: output blocks (i, j) of 2 x 2 tiles.
                        let j0 = tiles.start;
                        let jp = (tiles.end - j0) / 2;
                        let ops = BlockOps::k_contiguous(self.xa.as_ptr(), wf.as_ptr(), t.kh);
                        run_blocks(&ops, t.kb, jp, |bi, bj| Block {
                            a_off: 2 * bi * t.kh * TILE_ELEMS,
                            b_off: 2 * bj * t.kh * TILE_ELEMS,
                            c: yp,
                            row0: 32 * bi,
                            col0: 16 * j0 + 32 * bj,
                            rows: b,
                            cols: g,
                            ld: g,
                            load_c: false,
                        });
                    },
                );
            }
        }
    }

    /// Head `slot`'s backward: `dW += d^T x` (`dw` `[g, h]`) and `dx = d W` (`accumulate`:
    /// `dx += d W`; `dx` `[b, h]`), with `d` `[b, g]` the gradient of the head's output. The
    /// head's forward must have run in this pass with `grads`.
    pub fn backward(
        &mut self,
        slot: usize,
        dw: &mut [f32],
        dx: &mut [f32],
        d: &[f32],
        accumulate: bool,
    ) {
        let t = self.tiling;
        let (b, h, g) = (t.b, t.h, t.g);
        assert!(
            dw.len() >= g * h && dx.len() >= b * h && d.len() >= b * g,
            "bf16 head: buffers too small"
        );
        let hw = &self.heads[slot];
        let s = LinearShape {
            b,
            n_in: h,
            ldw: h,
            n_out: g,
        };
        match self.backend {
            Backend::Portable => {
                grow(&mut self.d_rounded, b * g);
                round_parallel(&mut self.d_rounded[..b * g], &d[..b * g]);
                linear_wgrad(dw, &self.d_rounded, &self.x_rounded, s);
                let beta = if accumulate { 1.0 } else { 0.0 };
                linear_dgrad(dx, &self.d_rounded, &hw.rounded, s, beta);
            }
            Backend::Amx => {
                let (mb, nh) = (2 * t.kb, 2 * t.kh);
                let dsrc = Src {
                    data: d,
                    rows: b,
                    cols: g,
                    ld: g,
                };
                let dwp = SendPtr(dw.as_mut_ptr());
                let xv = &self.xv;
                // Phase 1, per gene chunk: both layouts of d (d^T's A tiles packed by
                // `per_gene_chunk`), then dW's rows of these genes.
                per_gene_chunk(
                    ((dsrc, true, t.kb), &mut self.dt),
                    (&mut self.da, mb),
                    t.kg,
                    |tiles, ks, dt, da| {
                        let i0 = tiles.start;
                        let k0 = ks.start;
                        pack(da, true, dsrc, Packing::A, (0..mb, ks), |i, k| {
                            (k - k0) * mb + i
                        });
                        let ip = (tiles.end - i0) / 2;
                        let ops = BlockOps::k_contiguous(dt.as_ptr(), xv.as_ptr(), t.kb);
                        run_blocks(&ops, ip, t.kh, |bi, bj| Block {
                            a_off: 2 * bi * t.kb * TILE_ELEMS,
                            b_off: 2 * bj * t.kb * TILE_ELEMS,
                            c: dwp,
                            row0: 16 * i0 + 32 * bi,
                            col0: 32 * bj,
                            rows: g,
                            cols: h,
                            ld: h,
                            load_c: true,
                        });
                    },
                );
                // Phase 2: dx, one task per 32 x 32 block, k over every gene in order.
                let ops = BlockOps {
                    a: self.da.as_ptr(),
                    a_step: mb * TILE_ELEMS,
                    a_next: TILE_ELEMS,
                    b: hw.wb.as_ptr(),
                    b_step: nh * TILE_ELEMS,
                    b_next: TILE_ELEMS,
                    k_tiles: t.kg,
                };
                let dxp = SendPtr(dx.as_mut_ptr());
                (0..t.kb * t.kh).into_par_iter().for_each(|blk| {
                    let (bi, bj) = (blk / t.kh, blk % t.kh);
                    run_blocks(&ops, 1, 1, |_, _| Block {
                        a_off: 2 * bi * TILE_ELEMS,
                        b_off: 2 * bj * TILE_ELEMS,
                        c: dxp,
                        row0: 32 * bi,
                        col0: 32 * bj,
                        rows: b,
                        cols: h,
                        ld: h,
                        load_c: accumulate,
                    });
                });
            }
        }
    }
}

/// `x` as f32: the bf16 products exist for the f32 engine only (`CpuEngine::with_precision`
/// refuses the others), and the engine is generic over its float type.
pub(super) fn as_f32<T: 'static>(x: &[T]) -> &[f32] {
    assert_eq!(
        std::any::TypeId::of::<T>(),
        std::any::TypeId::of::<f32>(),
        "bf16 products on a non-f32 engine"
    );
    // SAFETY: T is f32 (asserted).
    unsafe { std::slice::from_raw_parts(x.as_ptr() as *const f32, x.len()) }
}

/// [`as_f32`] for a mutable slice.
pub(super) fn as_f32_mut<T: 'static>(x: &mut [T]) -> &mut [f32] {
    assert_eq!(
        std::any::TypeId::of::<T>(),
        std::any::TypeId::of::<f32>(),
        "bf16 products on a non-f32 engine"
    );
    // SAFETY: T is f32 (asserted).
    unsafe { std::slice::from_raw_parts_mut(x.as_mut_ptr() as *mut f32, x.len()) }
}

/// For every gene chunk in parallel, with the chunk's 16-wide gene tiles `tiles` and 32-wide gene
/// k-tiles `k_tiles` (of `kg` k-tiles in all): pack the transpose of `src` (whose genes run along
/// its columns, `pairs_along_rows` as in [`Packing::Transposed`], `kt` k-tiles along its other
/// side) for these genes into the chunk's part of `first` (tile `(i, k)` at tile
/// `(i - tiles.start) kt + k` of the part), then run `f(tiles, k_tiles, first part, second part)`.
/// `second` is a buffer of `n` tiles per gene k-tile (k-tile-major). Both buffers grow to their
/// size first. Fixed by the shapes, never by the thread count.
fn per_gene_chunk(
    ((src, pairs_along_rows, kt), first): ((Src, bool, usize), &mut Vec<bf16>),
    (second, n): (&mut Vec<bf16>, usize),
    kg: usize,
    f: impl Fn(Range<usize>, Range<usize>, &mut [bf16], &mut [bf16]) + Send + Sync,
) {
    let (n1, chunk1) = (2 * kg * kt, TPC * kt);
    let (n2, chunk2) = (kg * n, KPC * n);
    grow(first, n1 * TILE_ELEMS);
    grow(second, n2 * TILE_ELEMS);
    first[..n1 * TILE_ELEMS]
        .par_chunks_mut(chunk1 * TILE_ELEMS)
        .zip(second[..n2 * TILE_ELEMS].par_chunks_mut(chunk2 * TILE_ELEMS))
        .enumerate()
        .for_each(|(q, (a, b))| {
            let tiles = TPC * q..(TPC * q + TPC).min(2 * kg);
            let k_tiles = KPC * q..(KPC * q + KPC).min(kg);
            let t0 = tiles.start;
            let packing = Packing::Transposed { pairs_along_rows };
            pack(a, true, src, packing, (tiles.clone(), 0..kt), |i, k| {
                (i - t0) * kt + k
            });
            f(tiles, k_tiles, a, b)
        });
}

/// `dst = round(src)` elementwise, parallel in fixed chunks.
fn round_parallel(dst: &mut [f32], src: &[f32]) {
    const N: usize = 1 << 14;
    dst.par_chunks_mut(N)
        .zip(src.par_chunks(N))
        .for_each(|(d, s)| round_into(d, s));
}

/// The operands shared by a task's output blocks: A and B tile bases and strides, in elements
/// (`*_step`: from one k-tile to the next; `*_next`: from a block's first row / column tile to its
/// second), and the number of k-tiles.
struct BlockOps {
    a: *const bf16,
    a_step: usize,
    a_next: usize,
    b: *const bf16,
    b_step: usize,
    b_next: usize,
    k_tiles: usize,
}

impl BlockOps {
    /// A and B both laid out k-contiguous: tile (row or column tile r, k-tile k) at
    /// `r k_tiles + k` tiles from the base.
    fn k_contiguous(a: *const bf16, b: *const bf16, k_tiles: usize) -> BlockOps {
        BlockOps {
            a,
            a_step: TILE_ELEMS,
            a_next: k_tiles * TILE_ELEMS,
            b,
            b_step: TILE_ELEMS,
            b_next: k_tiles * TILE_ELEMS,
            k_tiles,
        }
    }
}

// SAFETY: the pointers address packed operands that no task writes while blocks run (they are
// packed before, or by the same task before, its products read them).
unsafe impl Sync for BlockOps {}

/// One 32 x 32 output block: where its tiles start (elements from the bases) and where it lands
/// in C (`rows x cols` row-major with leading dimension `ld`; only the part inside is written).
struct Block {
    a_off: usize,
    b_off: usize,
    c: SendPtr<f32>,
    row0: usize,
    col0: usize,
    rows: usize,
    cols: usize,
    ld: usize,
    load_c: bool,
}

/// Run the `ni x nj` output blocks `blocks(bi, bj)` on this thread (j outer: one B pair reused
/// across the A pairs), configuring the tiles once.
fn run_blocks(ops: &BlockOps, ni: usize, nj: usize, blocks: impl Fn(usize, usize) -> Block) {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: the AMX backend is chosen only when `amx::available()`.
        let tiles = unsafe { super::amx::Tiles::configure() };
        #[repr(align(64))]
        struct Scratch([f32; 1024]);
        let mut scratch = Scratch([0.0; 1024]);
        for bj in 0..nj {
            for bi in 0..ni {
                let blk = blocks(bi, bj);
                let vr = blk.rows.saturating_sub(blk.row0).min(32);
                let vc = blk.cols.saturating_sub(blk.col0).min(32);
                if vr == 0 || vc == 0 {
                    continue;
                }
                // SAFETY: the packed operands hold `k_tiles` tiles from each offset (sized from
                // the same tiling); the block lies in C (full blocks) or goes through the scratch
                // (edges); tasks write disjoint blocks of C.
                unsafe {
                    let a = ops.a.add(blk.a_off) as *const u16;
                    let b = ops.b.add(blk.b_off) as *const u16;
                    let (ab, bb) = (2 * ops.a_step, 2 * ops.b_step);
                    let (an, bn) = (2 * ops.a_next, 2 * ops.b_next);
                    let c = blk.c.get().add(blk.row0 * blk.ld + blk.col0);
                    if vr == 32 && vc == 32 {
                        tiles.block_2x2(
                            a,
                            ab,
                            an,
                            b,
                            bb,
                            bn,
                            ops.k_tiles,
                            c,
                            4 * blk.ld,
                            blk.load_c,
                        );
                    } else {
                        let s = scratch.0.as_mut_ptr();
                        if blk.load_c {
                            scratch.0.fill(0.0);
                            for r in 0..vr {
                                std::ptr::copy_nonoverlapping(c.add(r * blk.ld), s.add(32 * r), vc);
                            }
                        }
                        tiles.block_2x2(a, ab, an, b, bb, bn, ops.k_tiles, s, 128, blk.load_c);
                        for r in 0..vr {
                            std::ptr::copy_nonoverlapping(s.add(32 * r), c.add(r * blk.ld), vc);
                        }
                    }
                }
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (ops, ni, nj, blocks);
        unreachable!("the AMX backend exists on x86-64 only");
    }
}
