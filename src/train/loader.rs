//! Minibatches from a count matrix, gathered on a prefetch thread while the engine computes: the
//! thread checks the next minibatch's sparse rows ([`SparseRows::check_row`]: gene indices in
//! range and increasing, values counts, so that a corrupt store is an error naming its file and the
//! row, never an out-of-range index in an engine) and copies them (from memory or a memory-mapped
//! store, where the check is also the page-in) into a buffer taken from a small recycled pool, so a
//! warmed-up epoch allocates nothing.

use crate::batch::Minibatch;
use crate::data::SparseRows;
use crate::error::{Error, Result};
use std::sync::mpsc::sync_channel;

/// Cell codes that go with every minibatch.
pub struct Covariates<'a> {
    pub batch: &'a [u32],
    pub labels: &'a [u32],
}

/// Check that cell `c` is a row of `x` and that the row holds counts.
pub fn check_cell(x: &dyn SparseRows, c: usize) -> Result<()> {
    if c >= x.n_rows() {
        return Err(Error::Data(format!(
            "cell index {c} is beyond the {} cells of the data",
            x.n_rows()
        )));
    }
    x.check_row(c)
}

/// Call `f` on consecutive minibatches of `order` (cells in the order given), `batch_size` at a time,
/// the last one possibly smaller. `f` runs on the calling thread; gathering runs one minibatch ahead.
/// A row that fails [`SparseRows::check_row`] ends the pass with its error.
pub fn for_each_minibatch(
    x: &dyn SparseRows,
    cov: &Covariates,
    order: &[usize],
    batch_size: usize,
    mut f: impl FnMut(&Minibatch) -> Result<()>,
) -> Result<()> {
    if batch_size == 0 {
        return Err(Error::Config(
            "the minibatch size must be at least 1".into(),
        ));
    }
    const DEPTH: usize = 2;
    let (full_tx, full_rx) = sync_channel::<Result<Minibatch>>(DEPTH);
    let (empty_tx, empty_rx) = sync_channel::<Minibatch>(DEPTH + 1);
    for _ in 0..=DEPTH {
        empty_tx.send(Minibatch::default()).expect("pool");
    }
    std::thread::scope(|scope| {
        scope.spawn(move || {
            for cells in order.chunks(batch_size) {
                let Ok(mut mb) = empty_rx.recv() else { return };
                let item = cells.iter().try_for_each(|&c| check_cell(x, c)).map(|()| {
                    mb.gather(x, cells, cov.batch, cov.labels);
                    mb
                });
                let failed = item.is_err();
                // The gathered minibatch is a copy: the mapped rows can go, after every
                // minibatch. A row read from a memory-mapped store maps the pages around it too
                // (fault-around; on 6.x kernels the whole large folio of page cache it lies in, up
                // to ~1 MB a row once a sequential pass has read the file). Measured on a 100k-cell
                // store (kernel 6.18, 300 steps): released every 8 minibatches, the mapped pages
                // reached the whole matrix (480 MB peak); after every one they sit at ~6 MB and
                // peak at ~280 MB (one minibatch's folios), at no measured cost. The pages stay in
                // the page cache, so reading them again is cheap.
                x.release();
                if full_tx.send(item).is_err() || failed {
                    return;
                }
            }
        });
        let mut result = Ok(());
        for item in full_rx.iter() {
            let mb = match item {
                Ok(mb) => mb,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            };
            if result.is_ok() {
                result = f(&mb);
            }
            // Return the buffer; after an error the producer is drained and stops.
            let _ = empty_tx.send(mb);
            if result.is_err() {
                break;
            }
        }
        drop(full_rx);
        result
    })
}
