//! Writing a store: rows are appended chunk by chunk (validated as they come, streamed to disk),
//! the metadata is written at the end, and the directory is renamed into place only when all of it
//! is on disk. Memory: the write buffers plus the metadata (O(n_cells + n_genes)).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::format::{self, FileEntry, Files, Header, MetaBuilder, ValueSummary};
use super::hash::{hex, Hasher64};
use super::mapped::STORE_DIR;
use crate::atomic::AtomicDir;
use crate::data::validate::CountChecks;
use crate::data::{CsrMatrix, ObsColumn};
use crate::error::{Error, Result};

/// The annotations of a store, given to [`StoreWriter::finish`].
#[derive(Clone, Debug, Default)]
pub struct StoreMeta {
    pub gene_names: Vec<String>,
    pub cell_names: Vec<String>,
    pub obs: Vec<(String, ObsColumn)>,
    /// Per-gene string columns (`gene_ids`, `gene_names_original`, `feature_types`, ...).
    pub var: Vec<(String, Vec<String>)>,
    /// Lines describing what conversion did, kept in the header.
    pub notes: Vec<String>,
}

/// A binary file being written, with its running checksum.
struct Out {
    path: PathBuf,
    w: BufWriter<File>,
    hash: Hasher64,
    bytes: u64,
}

impl Out {
    fn create(path: PathBuf) -> Result<Out> {
        let f = File::create(&path).map_err(|e| Error::io(&path, e))?;
        Ok(Out {
            w: BufWriter::with_capacity(1 << 20, f),
            path,
            hash: Hasher64::new(),
            bytes: 0,
        })
    }

    fn write(&mut self, b: &[u8]) -> Result<()> {
        self.hash.update(b);
        self.bytes += b.len() as u64;
        self.w.write_all(b).map_err(|e| Error::io(&self.path, e))
    }

    /// Flush and sync; returns the checksum.
    fn close(self) -> Result<String> {
        let f = self
            .w
            .into_inner()
            .map_err(|e| Error::io(&self.path, e.into_error()))?;
        f.sync_all().map_err(|e| Error::io(&self.path, e))?;
        Ok(hex(self.hash.finish()))
    }
}

/// The bytes of a slice of plain little-endian numbers, as they lie in memory.
fn le_bytes<T: Copy>(s: &[T]) -> &[u8] {
    // SAFETY: used only with u32, u64 and f32 (no padding, every byte initialised); the host is
    // little-endian (enforced at compile time in `mapped.rs`), so memory order is file order.
    unsafe { std::slice::from_raw_parts(s.as_ptr() as *const u8, std::mem::size_of_val(s)) }
}

/// Rows on their way to the disk: row end offsets (global), gene indices, values.
type Batch = (Vec<u64>, Vec<u32>, Vec<f32>);

/// The three matrix files, written by a background thread so that reading or generating the next
/// chunk overlaps with writing this one.
struct Sink {
    indptr: Out,
    indices: Out,
    data: Out,
}

impl Sink {
    fn write(&mut self, (ptrs, idx, val): &Batch) -> Result<()> {
        self.indptr.write(le_bytes(ptrs))?;
        self.indices.write(le_bytes(idx))?;
        self.data.write(le_bytes(val))
    }

    /// Flush, sync; the checksums of indptr, indices, data.
    fn close(self) -> Result<[String; 3]> {
        Ok([
            self.indptr.close()?,
            self.indices.close()?,
            self.data.close()?,
        ])
    }
}

/// Chunks in flight between the caller and the writing thread (bounds the extra memory).
const IN_FLIGHT: usize = 2;

/// Writes a store under a temporary name; [`StoreWriter::finish`] renames it into place. Dropping
/// the writer without finishing removes the temporary directory.
///
/// Rows are checked in [`append`](Self::append) (errors come back at once, naming the cell and
/// gene) and written by a background thread with at most two chunks in flight.
pub struct StoreWriter {
    staged: Option<AtomicDir>,
    tmp: PathBuf,
    source: String,
    n_genes: usize,
    n_rows: usize,
    nnz: u64,
    tx: Option<std::sync::mpsc::SyncSender<Batch>>,
    thread: Option<std::thread::JoinHandle<Result<[String; 3]>>>,
    checks: Option<CountChecks>,
    values: ValueSummary,
}

impl StoreWriter {
    /// Start a store of `n_genes` genes at `path`. `source` names the input, for messages and the
    /// header. An existing `path` is refused unless `force`, and even then only a store that
    /// scvi-rs wrote is replaced, at [`finish`](Self::finish) (see `crate::atomic`).
    pub fn create(path: &Path, n_genes: usize, source: &str, force: bool) -> Result<StoreWriter> {
        if n_genes > u32::MAX as usize + 1 {
            return Err(Error::Config(format!(
                "{n_genes} genes: at most 2^32 fit a store"
            )));
        }
        let staged = AtomicDir::create(path, &STORE_DIR, force, "")?;
        let tmp = staged.path().to_path_buf();
        let mut w = StoreWriter {
            staged: Some(staged),
            tmp: tmp.clone(),
            source: source.to_string(),
            n_genes,
            n_rows: 0,
            nnz: 0,
            tx: None,
            thread: None,
            checks: Some(CountChecks::new(source, "counts")),
            values: ValueSummary::default(),
        };
        let mut sink = Sink {
            indptr: Out::create(tmp.join(format::INDPTR_FILE))?,
            indices: Out::create(tmp.join(format::INDICES_FILE))?,
            data: Out::create(tmp.join(format::DATA_FILE))?,
        };
        sink.indptr.write(&0u64.to_le_bytes())?;
        let (tx, rx) = std::sync::mpsc::sync_channel::<Batch>(IN_FLIGHT);
        w.thread = Some(std::thread::spawn(move || {
            for batch in rx {
                sink.write(&batch)?;
            }
            sink.close()
        }));
        w.tx = Some(tx);
        Ok(w)
    }

    /// Use `field` (e.g. `X`, `layers/counts`, `matrix.mtx`) in value error messages.
    pub fn set_field(&mut self, field: &str) {
        self.checks = Some(CountChecks::new(&self.source, field));
    }

    pub fn n_rows(&self) -> usize {
        self.n_rows
    }
    pub fn nnz(&self) -> u64 {
        self.nnz
    }

    /// Append the rows of `chunk` (copied; see [`append_owned`](Self::append_owned)).
    pub fn append(&mut self, chunk: &CsrMatrix) -> Result<()> {
        self.append_owned(chunk.clone())
    }

    /// Append the rows of `chunk`: checked (structure, gene count, values), explicit zeros
    /// dropped, then handed to the writing thread.
    pub fn append_owned(&mut self, chunk: CsrMatrix) -> Result<()> {
        if chunk.n_cols != self.n_genes {
            return Err(Error::Shape(format!(
                "{}: rows from {} have {} genes, the store has {}",
                self.source, self.n_rows, chunk.n_cols, self.n_genes
            )));
        }
        chunk.validate_structure().map_err(|e| {
            Error::Data(format!(
                "{}: rows {}..{}: {e}",
                self.source,
                self.n_rows,
                self.n_rows + chunk.n_rows
            ))
        })?;
        if let Some(c) = self.checks.as_mut() {
            c.check_chunk(self.n_rows, &chunk)?;
        }
        let chunk = chunk.without_zeros();
        let base = self.nnz;
        let (p0, p1) = (chunk.indptr[0], chunk.indptr[chunk.n_rows]);
        let ptrs: Vec<u64> = chunk.indptr[1..].iter().map(|&p| base + p - p0).collect();
        let (mut idx, mut val) = (chunk.indices, chunk.data);
        if p0 != 0 || p1 as usize != idx.len() {
            idx = idx[p0 as usize..p1 as usize].to_vec();
            val = val[p0 as usize..p1 as usize].to_vec();
        }
        let mut prev = self.nnz;
        for &p in &ptrs {
            self.values.n_empty_cells += (p == prev) as u64;
            prev = p;
        }
        let (mut total, mut max) = (0f64, self.values.max);
        for &v in &val {
            total += v as f64;
            max = max.max(v as f64);
        }
        self.values.total += total;
        self.values.max = max;
        self.n_rows += ptrs.len();
        self.nnz += idx.len() as u64;
        let sent = self
            .tx
            .as_ref()
            .map(|tx| tx.send((ptrs, idx, val)).is_ok())
            .unwrap_or(false);
        if !sent {
            // The writing thread stopped: its error says why.
            return Err(self.join().err().unwrap_or_else(|| {
                Error::Data(format!("{}: the store writer stopped", self.source))
            }));
        }
        Ok(())
    }

    /// Stop the writing thread and collect the checksums of the matrix files.
    fn join(&mut self) -> Result<[String; 3]> {
        self.tx.take();
        match self.thread.take() {
            Some(h) => h.join().unwrap_or_else(|_| {
                Err(Error::Data(format!(
                    "{}: the store writing thread panicked",
                    self.source
                )))
            }),
            None => Err(Error::Data(format!(
                "{}: the store writer already stopped",
                self.source
            ))),
        }
    }

    /// Write the metadata and the header, sync, and rename the store into place. Errors if the
    /// matrix is empty or the annotations do not match its sizes.
    pub fn finish(mut self, meta: StoreMeta) -> Result<Header> {
        let src = self.source.clone();
        if self.n_rows == 0 || self.n_genes == 0 {
            return Err(Error::Data(format!(
                "{src}: empty matrix ({} cells x {} genes); nothing to store",
                self.n_rows, self.n_genes
            )));
        }
        if self.nnz == 0 {
            return Err(Error::Data(format!(
                "{src}: every count is zero ({} cells x {} genes); nothing to train on",
                self.n_rows, self.n_genes
            )));
        }
        let shape = |what: &str, got: usize, want: usize| {
            if got != want {
                Err(Error::Shape(format!(
                    "{src}: {got} {what}, expected {want}"
                )))
            } else {
                Ok(())
            }
        };
        shape("gene names", meta.gene_names.len(), self.n_genes)?;
        shape("cell names", meta.cell_names.len(), self.n_rows)?;
        for (name, col) in &meta.obs {
            shape(
                &format!("values in obs column '{name}'"),
                col.len(),
                self.n_rows,
            )?;
        }
        for (name, col) in &meta.var {
            shape(
                &format!("values in var column '{name}'"),
                col.len(),
                self.n_genes,
            )?;
        }
        if let Some(c) = self.checks.take() {
            let (field, summary) = (c.field().to_string(), c.finish()?);
            for w in summary.warnings(&src, &field) {
                eprintln!("warning: {w}");
            }
            self.values.n_non_integer = summary.n_non_integer;
        }

        let [indptr_sum, indices_sum, data_sum] = self.join()?;

        let mut mb = MetaBuilder::default();
        let gene_names = mb.strings(&meta.gene_names);
        let cell_names = mb.strings(&meta.cell_names);
        let var = meta
            .var
            .iter()
            .map(|(n, v)| format::VarEntry {
                name: n.clone(),
                values: mb.strings(v),
            })
            .collect();
        let obs = meta.obs.iter().map(|(n, c)| mb.obs(n, c)).collect();
        let mut meta_out = Out::create(self.tmp.join(format::META_FILE))?;
        meta_out.write(&mb.buf)?;
        let meta_len = meta_out.bytes;
        let meta_sum = meta_out.close()?;

        let entry = |file: &str, dtype: &str, len: u64, checksum: String| FileEntry {
            file: file.to_string(),
            dtype: dtype.to_string(),
            len,
            checksum,
        };
        let header = Header {
            format: format::FORMAT_NAME.to_string(),
            version: format::FORMAT_VERSION,
            n_cells: self.n_rows as u64,
            n_genes: self.n_genes as u64,
            nnz: self.nnz,
            source: src.clone(),
            created_by: format!("scvi-rs {}", env!("CARGO_PKG_VERSION")),
            values: self.values.clone(),
            files: Files {
                indptr: entry(
                    format::INDPTR_FILE,
                    "u64",
                    self.n_rows as u64 + 1,
                    indptr_sum,
                ),
                indices: entry(format::INDICES_FILE, "u32", self.nnz, indices_sum),
                data: entry(format::DATA_FILE, "f32", self.nnz, data_sum),
                meta: entry(format::META_FILE, "u8", meta_len, meta_sum),
            },
            gene_names,
            cell_names,
            var,
            obs,
            notes: meta.notes,
            header_checksum: String::new(),
        };
        let bytes = header.to_bytes()?;
        let hpath = self.tmp.join(format::HEADER_FILE);
        let mut hf = Out::create(hpath)?;
        hf.write(&bytes)?;
        hf.close()?;

        // Into place (replacing an older store of ours) only now that the new one is complete.
        self.staged
            .take()
            .expect("a store writer is staged until it finishes")
            .commit()?;
        Ok(header)
    }
}

impl Drop for StoreWriter {
    fn drop(&mut self) {
        if self.staged.is_some() {
            // Stop the writing thread (closing the files) before the staged directory's own
            // drop removes the half-written store; errors are moot here.
            let _ = self.join();
        }
    }
}
