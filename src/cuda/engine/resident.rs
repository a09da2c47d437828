//! The data set held on the device (issue 14's device-resident data): the CSR counts of every cell,
//! their batch and label codes and log library sizes uploaded once, checked once; then a training
//! step sends only its B cell ids, and kernels/gather.cu builds the minibatch on the device into
//! the buffer `launch_pass` reads. The minibatch is the one `Minibatch::gather` builds on the host,
//! bit for bit, so a step on held data computes exactly what the same step on an uploaded minibatch
//! computes (tests/cuda_step.rs `device_data_*`).
//!
//! Not done here (docs/cuda.md, "What remains of issue 14"): a memory budget and the trainer's use
//! of it (an entry point of the engine contract that takes cell ids), and the sync-free loop.

use super::{ops, BatchPtrs, CudaEngine, DevBuf};
use crate::batch::Minibatch;
use crate::cuda::device::as_bytes;
use crate::cuda::kernels::GatherArgs;
use crate::data::SparseRows;
use crate::engine::{validate_minibatch, LossParts, Mode, Pass};
use crate::error::{Error, Result};

/// Rows checked and uploaded per round while the data set goes up.
const CHUNK_ROWS: usize = 4096;

/// The data set on the device, and the row offsets kept on the host to size each minibatch.
pub(super) struct DeviceData {
    indptr: DevBuf,
    indices: DevBuf,
    values: DevBuf,
    batch: DevBuf,
    labels: DevBuf,
    log_library: DevBuf,
    host_indptr: Vec<u64>,
}

impl DeviceData {
    fn n_cells(&self) -> usize {
        self.host_indptr.len() - 1
    }
}

impl CudaEngine {
    /// Hold the data set `x` (its rows' batch and label codes; a cell without one gets 0, as
    /// `Minibatch::gather` gives it) on the device, replacing any held before; returns the device
    /// bytes it takes. Every row is checked once here, with the checks each uploaded minibatch
    /// gets (`validate_minibatch`), so steps on held data check only their cell ids.
    pub fn hold_data(
        &mut self,
        x: &dyn SparseRows,
        batch_codes: &[u32],
        label_codes: &[u32],
    ) -> Result<usize> {
        self.gpu.bind()?;
        self.data = None;
        let n = x.n_rows();
        let mut host_indptr = Vec::with_capacity(n + 1);
        host_indptr.push(0u64);
        for i in 0..n {
            let nnz = host_indptr[i] + x.row(i).0.len() as u64;
            host_indptr.push(nnz);
        }
        let nnz = host_indptr[n] as usize;
        let gpu = &self.gpu;
        let what = "the data set held on the device";
        let d = DeviceData {
            indptr: gpu.alloc(8 * (n + 1), what)?,
            indices: gpu.alloc(4 * nnz, what)?,
            values: gpu.alloc(4 * nnz, what)?,
            batch: gpu.alloc(4 * n, what)?,
            labels: gpu.alloc(4 * n, what)?,
            log_library: gpu.alloc(4 * n, what)?,
            host_indptr,
        };
        gpu.upload(d.indptr.ptr(), as_bytes(&d.host_indptr))?;
        let mut mb = Minibatch::default();
        let rows: Vec<usize> = (0..n).collect();
        for chunk in rows.chunks(CHUNK_ROWS) {
            mb.gather(x, chunk, batch_codes, label_codes);
            validate_minibatch(&mb, &self.layout, Mode::Train)?;
            let (r0, at) = (chunk[0], d.host_indptr[chunk[0]] as usize);
            // Pageable copies: each returns once its source has been read, so `mb` may be refilled.
            gpu.upload(d.indices.at::<u32>(at), as_bytes(&mb.indices))?;
            gpu.upload(d.values.at::<f32>(at), as_bytes(&mb.values))?;
            gpu.upload(d.batch.at::<u32>(r0), as_bytes(&mb.batch))?;
            gpu.upload(d.labels.at::<u32>(r0), as_bytes(&mb.labels))?;
            // As `upload` rounds the host's f64 log library for each minibatch.
            let loglib: Vec<f32> = mb.log_library.iter().map(|&v| v as f32).collect();
            gpu.upload(d.log_library.at::<f32>(r0), as_bytes(&loglib))?;
        }
        gpu.sync()?;
        let bytes = d.indptr.bytes() + d.indices.bytes() + d.values.bytes() + 3 * d.batch.bytes();
        self.data = Some(d);
        Ok(bytes)
    }

    /// As `train_step` on the minibatch of the held data set's rows `cells` (forward, backward,
    /// Adam), with only the cell ids sent to the device.
    pub fn train_step_cells(
        &mut self,
        cells: &[u32],
        step: u64,
        kl_weight: f64,
    ) -> Result<LossParts> {
        self.gpu.bind()?;
        let d = self.data.as_ref().ok_or_else(|| {
            Error::Cuda("no data set is held on the device (hold_data comes first)".into())
        })?;
        let n = d.n_cells();
        if let Some(&c) = cells.iter().find(|&&c| c as usize >= n) {
            return Err(Error::Shape(format!(
                "cell {c} asked of a data set of {n} cells held on the device"
            )));
        }
        let b = cells.len();
        if b < 2 {
            return Err(Error::Shape(format!(
                "a training minibatch needs at least 2 cells (BatchNorm), got {b}"
            )));
        }
        let nnz: u64 = cells
            .iter()
            .map(|&c| d.host_indptr[c as usize + 1] - d.host_indptr[c as usize])
            .sum();
        let nnz = nnz as usize;
        // The minibatch's sections as `upload` lays them out, then the cell ids.
        let (_, o_cells) = BatchPtrs::laid_out(0, b, nnz);
        self.reserve(b)?;
        self.reserve_batch(o_cells + 4 * b)?;
        let st = self.staging.as_mut().expect("staging").as_mut_slice();
        st[..4 * b].copy_from_slice(as_bytes(cells));
        let base = self.batch_dev.as_ref().expect("batch buffer").ptr();
        let cells_dev = base + o_cells as u64;
        self.gpu.upload(cells_dev, &st[..4 * b])?;
        self.bp = BatchPtrs::laid_out(base, b, nnz).0;
        let d = self.data.as_ref().expect("held data");
        ops::gather(
            &self.gpu,
            &GatherArgs {
                src_indptr: d.indptr.ptr(),
                src_indices: d.indices.ptr(),
                src_values: d.values.ptr(),
                src_batch: d.batch.ptr(),
                src_labels: d.labels.ptr(),
                src_log_library: d.log_library.ptr(),
                cells: cells_dev,
                indptr: self.bp.indptr,
                indices: self.bp.indices,
                values: self.bp.values,
                batch: self.bp.batch,
                labels: self.bp.labels,
                log_library: self.bp.log_library,
                rows: b as u32,
                pad: 0,
            },
        )?;
        self.launch_pass(b, Pass::train(step, kl_weight))?;
        let parts = self.read_losses(b, kl_weight)?;
        crate::engine::Engine::adam_update(self)?;
        Ok(parts)
    }
}
