//! What it costs to check a store's rows as they are read (the loader's `check_row` before each
//! gather) against checking the whole store once at open, on a store of any size:
//!
//! ```sh
//! scvi-rs simulate --cells 1000000 --genes 2000 --out /tmp/big.store
//! cargo run --release --example row_check_cost -- /tmp/big.store [MINIBATCHES] [CELLS]
//! ```
//!
//! Minibatches of 128 random cells (among the first CELLS) are gathered as the loader gathers them,
//! alternately with and without the check, so that both halves see the same machine load and page
//! cache; then one parallel pass checks every row, which is what validating at open would cost.

use rayon::prelude::*;
use scvi_rs::batch::Minibatch;
use scvi_rs::data::validate::row_fault;
use scvi_rs::data::SparseRows;
use scvi_rs::rng::{Philox, Stream};
use scvi_rs::store::Store;
use std::path::Path;
use std::time::Instant;

fn main() -> scvi_rs::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let Some(path) = args.get(1) else {
        eprintln!("usage: row_check_cost STORE [MINIBATCHES] [CELLS]");
        std::process::exit(2);
    };
    let store = Store::open(Path::new(path))?;
    let m = store.matrix();
    let n = m.n_rows();
    let steps: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(4000);
    let cells: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(n).min(n);

    let perm = Philox::new(0).permutation(Stream::Shuffle, 0, cells);
    let mut mb = Minibatch::default();
    m.advise(true);
    let (mut with, mut without, mut entries) = (0f64, 0f64, 0usize);
    for (k, batch) in perm.chunks(128).take(steps).enumerate() {
        let t = Instant::now();
        let check = k % 2 == 0;
        if check {
            for &c in batch {
                m.check_row(c)?;
            }
        }
        mb.gather(m, batch, &[], &[]);
        let dt = t.elapsed().as_secs_f64();
        if check {
            with += dt;
            entries += mb.indices.len();
        } else {
            without += dt;
        }
        // Give the mapped pages back every 8 minibatches (as the loader did when README's figure
        // was measured; it now does so after every minibatch).
        if (k + 1) % 8 == 0 {
            m.release_all();
        }
    }
    let half = (steps / 2).max(1) as f64;
    println!(
        "per minibatch of 128 cells: check + gather {:.1} us, gather alone {:.1} us: the check \
         adds {:.1} us ({:.2} ns per stored value)",
        with * 1e6 / half,
        without * 1e6 / half,
        (with - without) * 1e6 / half,
        (with - without) * 1e9 / entries.max(1) as f64
    );

    let t = Instant::now();
    let g = m.n_cols();
    let mut bad = 0usize;
    let mut r0 = 0;
    while r0 < n {
        let r1 = (r0 + (1 << 16)).min(n);
        bad += (r0..r1)
            .into_par_iter()
            .filter(|&i| {
                let (idx, val) = m.row(i);
                row_fault(idx, val, g).is_some()
            })
            .count();
        m.release_rows(r0, r1);
        r0 = r1;
    }
    let secs = t.elapsed().as_secs_f64();
    let gb = (m.nnz() as f64 * 8.0 + (n as f64 + 1.0) * 8.0) / 1e9;
    println!(
        "checking every row once ({n} cells, {gb:.2} GB, {} threads): {secs:.2} s, {:.2} s per GB \
         ({bad} bad rows)",
        rayon::current_num_threads(),
        secs / gb
    );
    Ok(())
}
