//! An opened store: the header checked, the matrix memory-mapped ([`MappedCsr`]), the metadata
//! decoded ([`Store`]); and how to recognise a store on disk ([`is_store`], [`STORE_DIR`]).

use std::path::{Path, PathBuf};

use memmap2::Mmap;
use rayon::prelude::*;

use super::format::{self, dtype_size, FileEntry, Header, MetaReader};
use super::hash::{self, Hasher64};
use crate::data::validate::{row_fault, RowFault};
use crate::data::{Dataset, ObsColumn, SparseRows};
use crate::error::{Error, Result};

#[cfg(not(target_endian = "little"))]
compile_error!(
    "the scvi-rs store is little-endian and mapped as is: big-endian hosts are not supported"
);

/// Is `path` a store (a directory holding a `header.json`)?
pub fn is_store(path: &Path) -> bool {
    path.is_dir() && path.join(format::HEADER_FILE).is_file()
}

/// A store as an output: replaced (with `--force`) only when it is a complete store that scvi-rs
/// wrote, holding nothing else.
pub const STORE_DIR: crate::atomic::OutputKind = crate::atomic::OutputKind {
    what: "a scvi-rs store",
    dir: true,
    is_ours: is_our_store,
};

fn is_our_store(dir: &Path) -> std::result::Result<(), String> {
    let hpath = dir.join(format::HEADER_FILE);
    let meta = std::fs::metadata(&hpath).map_err(|_| "it has no header.json".to_string())?;
    if meta.len() > format::MAX_HEADER_BYTES {
        return Err("its header.json is not a store header".into());
    }
    let bytes = std::fs::read(&hpath).map_err(|e| e.to_string())?;
    format::Header::from_bytes(&hpath, &bytes).map_err(|e| e.to_string())?;
    crate::atomic::only_files(
        dir,
        &[
            format::HEADER_FILE,
            format::INDPTR_FILE,
            format::INDICES_FILE,
            format::DATA_FILE,
            format::META_FILE,
        ],
    )
}

/// A read-only mapped file (an empty file maps to an empty slice).
struct Mapped {
    map: Option<Mmap>,
}

impl Mapped {
    fn open(path: &Path, expected_bytes: u64) -> Result<Mapped> {
        let file = crate::limits::open_regular(path)?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        if len != expected_bytes {
            return Err(Error::format(
                path,
                format!(
                    "{len} bytes where the header says {expected_bytes}: the store is truncated \
                     or corrupt; convert it again"
                ),
            ));
        }
        if len == 0 {
            return Ok(Mapped { map: None });
        }
        // SAFETY: the map is read-only and private to this process. Another process truncating the
        // file while it is mapped would make reads fault (SIGBUS); stores are written once under a
        // temporary name and never modified in place, which is the contract documented for the
        // format.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        if !(map.as_ptr() as usize).is_multiple_of(8) {
            return Err(Error::format(path, "mapping is not 8-byte aligned"));
        }
        Ok(Mapped { map: Some(map) })
    }

    fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }
}

/// `bytes` (8-byte aligned, checked at open) as a slice of a plain little-endian number type.
fn cast<T: Plain>(bytes: &[u8]) -> &[T] {
    if bytes.is_empty() {
        return &[];
    }
    debug_assert!((bytes.as_ptr() as usize).is_multiple_of(std::mem::align_of::<T>()));
    // SAFETY: `T` is u32, u64 or f32 (sealed `Plain`): every bit pattern is a valid value, no
    // padding. The pointer is aligned (maps are page-aligned, checked at open) and the length is
    // rounded down to whole elements, within `bytes`' lifetime.
    unsafe {
        std::slice::from_raw_parts(
            bytes.as_ptr() as *const T,
            bytes.len() / std::mem::size_of::<T>(),
        )
    }
}

/// Number types that may be viewed from raw bytes.
trait Plain: Copy {}
impl Plain for u32 {}
impl Plain for u64 {}
impl Plain for f32 {}

/// The count matrix of a store: CSR whose arrays are the mapped files. Rows are slices into the
/// map, so reading a row touches only that row's pages.
///
/// The row pointers are checked at open, so every row is a slice within the files; the gene
/// indices and values are not (that is O(nnz)): [`SparseRows::check_row`] checks a row when it is
/// read, and its error names the file and the row.
pub struct MappedCsr {
    /// The store's directory, for messages.
    dir: PathBuf,
    n_rows: usize,
    n_cols: usize,
    nnz: u64,
    indptr: Mapped,
    indices: Mapped,
    data: Mapped,
}

impl MappedCsr {
    pub fn indptr(&self) -> &[u64] {
        cast(self.indptr.bytes())
    }
    pub fn indices(&self) -> &[u32] {
        cast(self.indices.bytes())
    }
    pub fn data(&self) -> &[f32] {
        cast(self.data.bytes())
    }

    /// Tell the kernel that rows will be read in random order (shuffled minibatches), so that it
    /// does not read ahead; or sequentially (conversion, a full pass). A hint: errors are ignored.
    pub fn advise(&self, random: bool) {
        let advice = if random {
            memmap2::Advice::Random
        } else {
            memmap2::Advice::Sequential
        };
        for m in [&self.indices, &self.data]
            .into_iter()
            .filter_map(|m| m.map.as_ref())
        {
            let _ = m.advise(advice);
        }
    }
}

impl MappedCsr {
    /// Drop this process's resident pages of rows `r0..r1` (gene indices and values; the row
    /// pointers stay). The pages stay in the kernel's page cache, so reading the rows again costs a
    /// minor fault, not a disk read; what shrinks is the process's resident set, which otherwise
    /// grows by every page of the matrix ever touched. Call it on rows that have been consumed
    /// (conversion does, chunk by chunk; a training loader can once per epoch). A hint: errors are
    /// ignored.
    pub fn release_rows(&self, r0: usize, r1: usize) {
        let p = self.indptr();
        if r0 >= r1 || r1 >= p.len() {
            return;
        }
        let (a, b) = (p[r0] as usize, p[r1] as usize);
        for m in [&self.indices, &self.data]
            .into_iter()
            .filter_map(|m| m.map.as_ref())
        {
            let (off, end) = (a * 4, (b * 4).min(m.len()));
            if end > off {
                // SAFETY: the map is a read-only MAP_SHARED mapping of a file (memmap2's
                // `Mmap::map`), and stores are never written after they are made. MADV_DONTNEED
                // on such a mapping only drops page-table entries: a later access faults the same
                // bytes back in from the page cache, so slices handed out by `row` stay valid and
                // keep their contents (unlike anonymous or private-written pages, which it zeroes).
                let _ = unsafe {
                    m.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, off, end - off)
                };
            }
        }
    }

    /// [`release_rows`](Self::release_rows) over the whole matrix.
    pub fn release_all(&self) {
        self.release_rows(0, self.n_rows);
    }

    /// The error for a fault in row `i`: the file it lies in, the row and what is wrong.
    fn fault_error(&self, i: usize, f: RowFault) -> Error {
        let file = if f.in_indices() {
            format::INDICES_FILE
        } else {
            format::DATA_FILE
        };
        Error::format(
            self.dir.join(file),
            format!(
                "row {i} (cell {i}): {f}; the store is corrupt (`scvi-rs info --verify` checks a \
                 whole store): convert it again"
            ),
        )
    }
}

impl SparseRows for MappedCsr {
    fn n_rows(&self) -> usize {
        self.n_rows
    }
    fn release(&self) {
        self.release_all();
    }
    fn expect_random_access(&self) {
        self.advise(true);
    }
    fn n_cols(&self) -> usize {
        self.n_cols
    }
    fn nnz(&self) -> u64 {
        self.nnz
    }
    fn row(&self, i: usize) -> (&[u32], &[f32]) {
        let p = self.indptr();
        // In range: the row pointers were checked at open to run from 0 to nnz, never decreasing,
        // and the index and value files to hold exactly nnz entries.
        let (a, b) = (p[i] as usize, p[i + 1] as usize);
        (&self.indices()[a..b], &self.data()[a..b])
    }
    fn check_row(&self, i: usize) -> Result<()> {
        let (idx, val) = self.row(i);
        match row_fault(idx, val, self.n_cols) {
            None => Ok(()),
            Some(f) => Err(self.fault_error(i, f)),
        }
    }
}

/// An opened store: its header, its mapped matrix and its decoded metadata.
pub struct Store {
    path: PathBuf,
    header: Header,
    matrix: MappedCsr,
    gene_names: Vec<String>,
    cell_names: Vec<String>,
    obs: Vec<(String, ObsColumn)>,
    var: Vec<(String, Vec<String>)>,
}

fn check_entry(path: &Path, e: &FileEntry, name: &str, dtype: &str, len: u64) -> Result<PathBuf> {
    if e.file != name || e.dtype != dtype {
        return Err(Error::format(
            path,
            format!(
                "header lists file '{}' ({}) where {name} ({dtype}) was expected",
                e.file, e.dtype
            ),
        ));
    }
    if e.len != len {
        return Err(Error::format(
            path,
            format!(
                "{name} has {} entries in the header, but the sizes imply {len}",
                e.len
            ),
        ));
    }
    Ok(path.join(name))
}

fn check_sum(path: &Path, what: &str, bytes: &[u8], expected: &str) -> Result<()> {
    let actual = hash::hex(hash::wfnv64(bytes));
    if actual != expected {
        return Err(Error::format(
            path,
            format!(
                "{what} checksum mismatch (header {expected}, file {actual}): the store is corrupt; \
                 convert it again"
            ),
        ));
    }
    Ok(())
}

impl Store {
    /// Open a store: map the matrix, check the header, the sizes and the checksums of the header,
    /// the metadata and the row pointers. Cost: O(n_cells + n_genes), independent of nnz.
    pub fn open(path: &Path) -> Result<Store> {
        if !path.is_dir() {
            return Err(if path.exists() {
                Error::format(path, "not a scvi-rs store (a store is a directory)")
            } else {
                Error::io(path, std::io::Error::from(std::io::ErrorKind::NotFound))
            });
        }
        let hpath = path.join(format::HEADER_FILE);
        let hbytes =
            crate::limits::read_regular(&hpath, format::MAX_HEADER_BYTES, "a store header")?;
        let header = Header::from_bytes(&hpath, &hbytes)?;

        let (n_cells, n_genes, nnz) = (header.n_cells, header.n_genes, header.nnz);
        if n_genes > u32::MAX as u64 + 1 || n_cells >= usize::MAX as u64 / 8 {
            return Err(Error::format(&hpath, "sizes out of range"));
        }
        let f = &header.files;
        let ip = check_entry(path, &f.indptr, format::INDPTR_FILE, "u64", n_cells + 1)?;
        let ix = check_entry(path, &f.indices, format::INDICES_FILE, "u32", nnz)?;
        let dt = check_entry(path, &f.data, format::DATA_FILE, "f32", nnz)?;
        let mt = check_entry(path, &f.meta, format::META_FILE, "u8", f.meta.len)?;
        let bytes = |e: &FileEntry| e.len.checked_mul(dtype_size(&e.dtype).unwrap_or(1));
        let too_big = || Error::format(&hpath, "sizes overflow");
        let indptr = Mapped::open(&ip, bytes(&f.indptr).ok_or_else(too_big)?)?;
        let indices = Mapped::open(&ix, bytes(&f.indices).ok_or_else(too_big)?)?;
        let data = Mapped::open(&dt, bytes(&f.data).ok_or_else(too_big)?)?;
        let meta = Mapped::open(&mt, f.meta.len)?;

        check_sum(&mt, "metadata", meta.bytes(), &f.meta.checksum)?;
        check_sum(&ip, "row pointer", indptr.bytes(), &f.indptr.checksum)?;
        let p: &[u64] = cast(indptr.bytes());
        if p.first() != Some(&0) || p.last() != Some(&nnz) {
            return Err(Error::format(
                &ip,
                format!("row pointers must run from 0 to nnz = {nnz}"),
            ));
        }
        if let Some(i) = p.windows(2).position(|w| w[1] < w[0]) {
            return Err(Error::format(
                &ip,
                format!("row pointers decrease at row {i}"),
            ));
        }

        let r = MetaReader {
            path: &mt,
            buf: meta.bytes(),
        };
        let gene_names = r.strings(&header.gene_names, Some(n_genes), "gene names")?;
        let cell_names = r.strings(&header.cell_names, Some(n_cells), "cell names")?;
        let mut obs = Vec::with_capacity(header.obs.len());
        for e in &header.obs {
            obs.push((e.name.clone(), r.obs(e, n_cells)?));
        }
        let mut var = Vec::with_capacity(header.var.len());
        for e in &header.var {
            let what = format!("var column '{}'", e.name);
            var.push((e.name.clone(), r.strings(&e.values, Some(n_genes), &what)?));
        }
        let matrix = MappedCsr {
            dir: path.to_path_buf(),
            n_rows: n_cells as usize,
            n_cols: n_genes as usize,
            nnz,
            indptr,
            indices,
            data,
        };
        Ok(Store {
            path: path.to_path_buf(),
            header,
            matrix,
            gene_names,
            cell_names,
            obs,
            var,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn header(&self) -> &Header {
        &self.header
    }
    pub fn matrix(&self) -> &MappedCsr {
        &self.matrix
    }
    pub fn n_cells(&self) -> usize {
        self.matrix.n_rows
    }
    pub fn n_genes(&self) -> usize {
        self.matrix.n_cols
    }
    pub fn nnz(&self) -> u64 {
        self.matrix.nnz
    }
    pub fn gene_names(&self) -> &[String] {
        &self.gene_names
    }
    pub fn cell_names(&self) -> &[String] {
        &self.cell_names
    }
    pub fn obs(&self) -> &[(String, ObsColumn)] {
        &self.obs
    }
    /// Per-gene string columns kept from the source (`gene_ids`, `gene_names_original`, ...).
    pub fn var(&self) -> &[(String, Vec<String>)] {
        &self.var
    }

    /// The store as a [`Dataset`] whose counts are the mapped matrix.
    pub fn into_dataset(self) -> Dataset {
        Dataset {
            counts: Box::new(self.matrix),
            gene_names: self.gene_names,
            cell_names: self.cell_names,
            obs: self.obs,
            source: self.path.display().to_string(),
        }
    }

    /// The full O(nnz) check: the checksums of `indices.u32` and `data.f32`, and every row (gene
    /// indices strictly increasing and in range, values finite and non-negative).
    pub fn verify(&self) -> Result<()> {
        let m = &self.matrix;
        let f = &self.header.files;
        let (ix, dt) = (
            self.path.join(format::INDICES_FILE),
            self.path.join(format::DATA_FILE),
        );
        // One pass in blocks of rows: hash the block's bytes, check its rows (in parallel), then
        // release its pages, so the resident set stays at a block whatever the size of the store.
        let (mut hi, mut hd) = (Hasher64::new(), Hasher64::new());
        let (ib, db) = (m.indices.bytes(), m.data.bytes());
        let p = m.indptr();
        let n_genes = m.n_cols;
        const BLOCK: usize = 1 << 16;
        let mut r0 = 0;
        while r0 < m.n_rows {
            let r1 = (r0 + BLOCK).min(m.n_rows);
            let (a, b) = (p[r0] as usize * 4, p[r1] as usize * 4);
            rayon::join(|| hi.update(&ib[a..b]), || hd.update(&db[a..b]));
            let bad = (r0..r1).into_par_iter().find_map_first(|i| {
                let (idx, val) = m.row(i);
                row_fault(idx, val, n_genes).map(|f| (i, f))
            });
            m.release_rows(r0, r1);
            if let Some((i, f)) = bad {
                return Err(m.fault_error(i, f));
            }
            r0 = r1;
        }
        if hash::hex(hi.finish()) != f.indices.checksum {
            return Err(Error::format(
                &ix,
                "checksum mismatch: the store is corrupt",
            ));
        }
        if hash::hex(hd.finish()) != f.data.checksum {
            return Err(Error::format(
                &dt,
                "checksum mismatch: the store is corrupt",
            ));
        }
        Ok(())
    }
}
