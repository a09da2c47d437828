//! A minimal HDF5 writer, just enough to write an AnnData `.h5ad` that anndata, scanpy and our own
//! reader read: a CSR `X`, `obs` and `var` dataframes (string index, categorical / numeric / string
//! / boolean columns), `layers` and `obsm` (CSR or dense f32 matrices, streamed beside `X`) and
//! empty `varm`, `obsp`, `varp`, `uns`.
//!
//! There is no pure-Rust HDF5 writer among our dependencies, and the subset anndata needs is small,
//! so it is written here from the HDF5 file format specification, using its oldest and most widely
//! read structures: superblock version 0, version-1 object headers, groups as symbol tables (a
//! version-1 B-tree with one leaf holding every member, and a local heap of names), contiguous
//! datasets, fixed-length strings (anndata reads them: `asstr()` for arrays, and it decodes
//! fixed-length string attributes, as written by Julia's HDF5.jl). No compression.
//!
//! Rows stream in: `X/data` goes straight into the file, `X/indices` to a side file appended at the
//! end (its position is unknown until the number of non-zeros is); memory is one chunk plus the
//! row pointers (8 bytes per cell) and the annotations. The file is written under a temporary name
//! and renamed when complete (`crate::atomic`).

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::atomic::{AtomicFile, TempFile};

use super::writer::StoreMeta;
use crate::data::validate::CountChecks;
use crate::data::{CsrMatrix, ObsColumn};
use crate::error::{Error, Result};

const UNDEF: u64 = u64::MAX;
/// Symbol-table leaf capacity is 2K entries: one leaf holds every member of a group.
const LEAF_K: u16 = 256;
const INTERNAL_K: u16 = 16;
const SUPERBLOCK_SIZE: u64 = 96;

/// An HDF5 datatype this writer knows.
#[derive(Clone, Copy)]
enum Dt {
    I8,
    I32,
    I64,
    F32,
    F64,
    /// Fixed-length UTF-8 string, null-padded, of this many bytes.
    Str(u32),
}

impl Dt {
    fn size(self) -> u64 {
        match self {
            Dt::I8 => 1,
            Dt::I32 | Dt::F32 => 4,
            Dt::I64 | Dt::F64 => 8,
            Dt::Str(n) => n as u64,
        }
    }

    /// The datatype message body (unpadded).
    fn encode(self) -> Vec<u8> {
        let mut b = Vec::new();
        let fixed = |b: &mut Vec<u8>, size: u32| {
            b.extend_from_slice(&[0x10, 0x08, 0, 0]); // class 0, version 1; LE, signed
            b.extend_from_slice(&size.to_le_bytes());
            b.extend_from_slice(&0u16.to_le_bytes()); // bit offset
            b.extend_from_slice(&((size * 8) as u16).to_le_bytes()); // precision
        };
        let float = |b: &mut Vec<u8>, size: u32| {
            let (sign, exp_loc, exp_size, man_size, bias) = if size == 4 {
                (31u8, 23u8, 8u8, 23u8, 127u32)
            } else {
                (63, 52, 11, 52, 1023)
            };
            b.extend_from_slice(&[0x11, 0x20, sign, 0]); // class 1, version 1; LE, implied msb
            b.extend_from_slice(&size.to_le_bytes());
            b.extend_from_slice(&0u16.to_le_bytes());
            b.extend_from_slice(&((size * 8) as u16).to_le_bytes());
            b.extend_from_slice(&[exp_loc, exp_size, 0, man_size]);
            b.extend_from_slice(&bias.to_le_bytes());
        };
        match self {
            Dt::I8 => fixed(&mut b, 1),
            Dt::I32 => fixed(&mut b, 4),
            Dt::I64 => fixed(&mut b, 8),
            Dt::F32 => float(&mut b, 4),
            Dt::F64 => float(&mut b, 8),
            Dt::Str(n) => {
                // class 3, version 1; null-padded (1), UTF-8 (1 << 4).
                b.extend_from_slice(&[0x13, 0x11, 0, 0]);
                b.extend_from_slice(&n.to_le_bytes());
            }
        }
        b
    }
}

/// Dataspace message body (version 1); `None` is a scalar.
fn dataspace(dims: Option<&[u64]>) -> Vec<u8> {
    let dims = dims.unwrap_or(&[]);
    let mut b = vec![1, dims.len() as u8, 0, 0, 0, 0, 0, 0];
    for d in dims {
        b.extend_from_slice(&d.to_le_bytes());
    }
    b
}

fn pad8(b: &mut Vec<u8>) {
    while !b.len().is_multiple_of(8) {
        b.push(0);
    }
}

/// An attribute value.
enum Attr {
    Str(String),
    Strs(Vec<String>),
    I64s(Vec<i64>),
    I8(i8),
    /// An empty float64 array (what h5py writes for an empty list).
    EmptyF64,
}

fn attribute_message(name: &str, value: &Attr) -> Vec<u8> {
    let (dt, space, data): (Dt, Vec<u8>, Vec<u8>) = match value {
        Attr::Str(s) => {
            let n = s.len().max(1) as u32;
            let mut d = s.as_bytes().to_vec();
            d.resize(n as usize, 0);
            (Dt::Str(n), dataspace(None), d)
        }
        Attr::Strs(v) => {
            let n = v.iter().map(|s| s.len()).max().unwrap_or(1).max(1) as u32;
            let mut d = Vec::new();
            for s in v {
                let mut x = s.as_bytes().to_vec();
                x.resize(n as usize, 0);
                d.extend(x);
            }
            (Dt::Str(n), dataspace(Some(&[v.len() as u64])), d)
        }
        Attr::I64s(v) => (
            Dt::I64,
            dataspace(Some(&[v.len() as u64])),
            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ),
        Attr::I8(x) => (Dt::I8, dataspace(None), vec![*x as u8]),
        Attr::EmptyF64 => (Dt::F64, dataspace(Some(&[0])), Vec::new()),
    };
    let dtb = dt.encode();
    let mut b = vec![1, 0];
    b.extend_from_slice(&((name.len() + 1) as u16).to_le_bytes());
    b.extend_from_slice(&(dtb.len() as u16).to_le_bytes());
    b.extend_from_slice(&(space.len() as u16).to_le_bytes());
    b.extend_from_slice(name.as_bytes());
    b.push(0);
    pad8(&mut b);
    b.extend_from_slice(&dtb);
    pad8(&mut b);
    b.extend_from_slice(&space);
    pad8(&mut b);
    b.extend_from_slice(&data);
    b
}

/// One member of a group: its name and where its object header is; groups also give their
/// B-tree and heap (the symbol table entry's scratch pad).
struct Member {
    name: String,
    header: u64,
    group: Option<(u64, u64)>,
}

/// Where a group went: its object header, B-tree and local heap.
#[derive(Clone, Copy)]
struct GroupAt {
    header: u64,
    btree: u64,
    heap: u64,
}

impl Member {
    fn dataset(name: &str, header: u64) -> Member {
        Member {
            name: name.into(),
            header,
            group: None,
        }
    }

    fn group(name: &str, g: GroupAt) -> Member {
        Member {
            name: name.into(),
            header: g.header,
            group: Some((g.btree, g.heap)),
        }
    }
}

/// The file being written: appends at the end, remembers where things went.
struct Out {
    path: PathBuf,
    w: BufWriter<File>,
    pos: u64,
}

impl Out {
    fn write(&mut self, b: &[u8]) -> Result<u64> {
        let at = self.pos;
        self.w.write_all(b).map_err(|e| Error::io(&self.path, e))?;
        self.pos += b.len() as u64;
        Ok(at)
    }

    fn align8(&mut self) -> Result<()> {
        let pad = (8 - self.pos % 8) % 8;
        self.write(&[0u8; 8][..pad as usize]).map(|_| ())
    }

    /// An object header (version 1) with these messages (type, body); returns its address.
    fn object_header(&mut self, messages: &[(u16, Vec<u8>)]) -> Result<u64> {
        self.align8()?;
        let mut body = Vec::new();
        for (ty, m) in messages {
            let mut m = m.clone();
            pad8(&mut m);
            body.extend_from_slice(&ty.to_le_bytes());
            body.extend_from_slice(&(m.len() as u16).to_le_bytes());
            body.extend_from_slice(&[0, 0, 0, 0]); // flags, reserved
            body.extend_from_slice(&m);
        }
        let mut h = vec![1, 0];
        h.extend_from_slice(&(messages.len() as u16).to_le_bytes());
        h.extend_from_slice(&1u32.to_le_bytes()); // reference count
        h.extend_from_slice(&(body.len() as u32).to_le_bytes());
        h.extend_from_slice(&[0, 0, 0, 0]); // align the messages to 8
        h.extend_from_slice(&body);
        self.write(&h)
    }

    /// A dataset whose raw data is already in the file at `addr`.
    fn dataset_at(
        &mut self,
        dt: Dt,
        dims: &[u64],
        addr: u64,
        attrs: &[(&str, Attr)],
    ) -> Result<u64> {
        let size: u64 = dims.iter().product::<u64>() * dt.size();
        let mut layout = vec![3, 1];
        layout.extend_from_slice(&(if size == 0 { UNDEF } else { addr }).to_le_bytes());
        layout.extend_from_slice(&size.to_le_bytes());
        let mut msgs = vec![
            (0x0001, dataspace(Some(dims))),
            (0x0003, dt.encode()),
            (0x0005, vec![2, 1, 2, 0]), // fill value v2: early alloc, write if set, none defined
            (0x0008, layout),
        ];
        for (n, a) in attrs {
            msgs.push((0x000C, attribute_message(n, a)));
        }
        self.object_header(&msgs)
    }

    /// A dataset with its raw data written now.
    fn dataset(&mut self, dt: Dt, dims: &[u64], raw: &[u8], attrs: &[(&str, Attr)]) -> Result<u64> {
        self.align8()?;
        let addr = self.write(raw)?;
        self.dataset_at(dt, dims, addr, attrs)
    }

    fn strings(&mut self, v: &[String], attrs: &[(&str, Attr)]) -> Result<u64> {
        let n = v.iter().map(|s| s.len()).max().unwrap_or(1).max(1);
        let mut raw = Vec::with_capacity(n * v.len());
        for s in v {
            raw.extend_from_slice(s.as_bytes());
            raw.resize(raw.len() + n - s.len(), 0);
        }
        self.dataset(Dt::Str(n as u32), &[v.len() as u64], &raw, attrs)
    }

    /// A group holding `members`: local heap, symbol table node, B-tree, object header.
    fn group(&mut self, mut members: Vec<Member>, attrs: &[(&str, Attr)]) -> Result<GroupAt> {
        if members.len() > 2 * LEAF_K as usize {
            return Err(Error::Data(format!(
                "h5ad writer: more than {} members in a group",
                2 * LEAF_K
            )));
        }
        // HDF5 looks names up by binary search: the leaf is sorted by name (byte order).
        members.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
        // Local heap data: "" at 0, then the names, then one free block (16 bytes).
        let mut data = vec![0u8; 8];
        let mut offsets = Vec::new();
        for m in &members {
            offsets.push(data.len() as u64);
            data.extend_from_slice(m.name.as_bytes());
            data.push(0);
            pad8(&mut data);
        }
        let free_at = data.len() as u64;
        data.extend_from_slice(&1u64.to_le_bytes()); // next free block: none (H5HL_FREE_NULL)
        data.extend_from_slice(&16u64.to_le_bytes()); // this block's size
        self.align8()?;
        let data_addr = self.write(&data)?;
        let mut heap = b"HEAP".to_vec();
        heap.extend_from_slice(&[0, 0, 0, 0]);
        heap.extend_from_slice(&(data.len() as u64).to_le_bytes());
        heap.extend_from_slice(&free_at.to_le_bytes());
        heap.extend_from_slice(&data_addr.to_le_bytes());
        let heap_addr = self.write(&heap)?;
        // Symbol table node with every member (room for 2 * LEAF_K entries).
        let mut snod = b"SNOD".to_vec();
        snod.extend_from_slice(&[1, 0]);
        snod.extend_from_slice(&(members.len() as u16).to_le_bytes());
        for (m, &off) in members.iter().zip(&offsets) {
            snod.extend_from_slice(&off.to_le_bytes());
            snod.extend_from_slice(&m.header.to_le_bytes());
            match m.group {
                Some((bt, hp)) => {
                    snod.extend_from_slice(&1u32.to_le_bytes());
                    snod.extend_from_slice(&0u32.to_le_bytes());
                    snod.extend_from_slice(&bt.to_le_bytes());
                    snod.extend_from_slice(&hp.to_le_bytes());
                }
                None => snod.extend_from_slice(&[0u8; 24]),
            }
        }
        snod.resize(8 + 2 * LEAF_K as usize * 40, 0);
        let snod_addr = self.write(&snod)?;
        // B-tree (group node, level 0) with one child: keys "" and the last name.
        let mut bt = b"TREE".to_vec();
        bt.extend_from_slice(&[0, 0]);
        let used: u16 = if members.is_empty() { 0 } else { 1 };
        bt.extend_from_slice(&used.to_le_bytes());
        bt.extend_from_slice(&UNDEF.to_le_bytes());
        bt.extend_from_slice(&UNDEF.to_le_bytes());
        if used == 1 {
            bt.extend_from_slice(&0u64.to_le_bytes());
            bt.extend_from_slice(&snod_addr.to_le_bytes());
            bt.extend_from_slice(&offsets.last().copied().unwrap_or(0).to_le_bytes());
        }
        let k2 = 2 * INTERNAL_K as usize;
        bt.resize(24 + (k2 + 1) * 8 + k2 * 8, 0);
        let bt_addr = self.write(&bt)?;
        let mut stab = bt_addr.to_le_bytes().to_vec();
        stab.extend_from_slice(&heap_addr.to_le_bytes());
        let mut msgs = vec![(0x0011u16, stab)];
        for (n, a) in attrs {
            msgs.push((0x000C, attribute_message(n, a)));
        }
        Ok(GroupAt {
            header: self.object_header(&msgs)?,
            btree: bt_addr,
            heap: heap_addr,
        })
    }
}

fn enc(t: &str, v: &str) -> [(&'static str, Attr); 2] {
    [
        ("encoding-type", Attr::Str(t.into())),
        ("encoding-version", Attr::Str(v.into())),
    ]
}

/// Bytes streamed beside the output while rows come in, copied into it when it is finished.
struct Side {
    tmp: TempFile,
    w: BufWriter<File>,
}

impl Side {
    fn beside(target: &Path) -> Result<Side> {
        let (tmp, f) = TempFile::beside(target, "")?;
        Ok(Side {
            tmp,
            w: BufWriter::with_capacity(1 << 20, f),
        })
    }

    fn write(&mut self, b: &[u8]) -> Result<()> {
        self.w
            .write_all(b)
            .map_err(|e| Error::io(self.tmp.path(), e))
    }

    /// Copy everything written into `out` at an 8-aligned address, returned.
    fn copy_into(self, out: &mut Out) -> Result<u64> {
        let Side { tmp, w } = self;
        drop(
            w.into_inner()
                .map_err(|e| Error::io(tmp.path(), e.into_error()))?,
        );
        out.align8()?;
        let at = out.pos;
        let mut r = File::open(tmp.path()).map_err(|e| Error::io(tmp.path(), e))?;
        out.w.flush().map_err(|e| Error::io(&out.path, e))?;
        let n = std::io::copy(&mut r, &mut out.w).map_err(|e| Error::io(&out.path, e))?;
        out.pos += n;
        Ok(at)
    }
}

/// Where an extra matrix goes in the AnnData.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// `layers/NAME`: cells x genes.
    Layers,
    /// `obsm/NAME`: cells x any number of columns.
    Obsm,
}

/// An extra matrix streamed row by row beside `X`.
enum Extra {
    /// A CSR matrix over the genes (f32 values, int32 indices).
    Sparse {
        data: Side,
        indices: Side,
        indptr: Vec<i64>,
    },
    /// A dense f32 matrix, row-major.
    Dense {
        values: Side,
        n_cols: usize,
        n_rows: usize,
    },
}

/// A CSR matrix's group (`X` or a layer) from its three arrays' object headers.
fn csr_group(out: &mut Out, arrays: [u64; 3], n_rows: usize, n_cols: usize) -> Result<GroupAt> {
    let [e0, e1] = enc("csr_matrix", "0.1.0");
    out.group(
        vec![
            Member::dataset("data", arrays[0]),
            Member::dataset("indices", arrays[1]),
            Member::dataset("indptr", arrays[2]),
        ],
        &[
            e0,
            e1,
            ("shape", Attr::I64s(vec![n_rows as i64, n_cols as i64])),
        ],
    )
}

/// The value and index bytes of a CSR chunk's rows.
fn csr_bytes(chunk: &CsrMatrix) -> (Vec<u8>, Vec<u8>) {
    let (a, b) = (
        chunk.indptr[0] as usize,
        *chunk.indptr.last().unwrap_or(&0) as usize,
    );
    let data = chunk.data[a..b]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let idx = chunk.indices[a..b]
        .iter()
        .flat_map(|&j| (j as i32).to_le_bytes())
        .collect();
    (data, idx)
}

/// Extend a row-pointer array with a chunk's rows.
fn extend_indptr(indptr: &mut Vec<i64>, chunk: &CsrMatrix) {
    let a = chunk.indptr[0] as i64;
    let base = *indptr.last().unwrap_or(&0);
    indptr.extend(chunk.indptr[1..].iter().map(|&p| base + (p as i64 - a)));
}

/// Streams rows into an `.h5ad`; [`finish`](Self::finish) writes the annotations and renames the
/// file into place. Dropping it unfinished removes the temporary files. Besides `X`, layers and
/// `obsm` matrices stream in beside it ([`add_sparse`](Self::add_sparse),
/// [`add_dense`](Self::add_dense)), each to its own side file, copied in at the end.
pub struct H5adWriter {
    target: Option<AtomicFile>,
    side: TempFile,
    out: Option<Out>,
    indices: Option<BufWriter<File>>,
    data_addr: u64,
    indptr: Vec<i64>,
    n_genes: usize,
    source: String,
    checks: CountChecks,
    target_path: PathBuf,
    extras: Vec<(Place, String, Extra)>,
}

impl H5adWriter {
    /// Start an `.h5ad` of `n_genes` genes at `path`. An existing `path` is refused unless
    /// `force` (see `crate::atomic`); it is replaced only by [`finish`](Self::finish).
    pub fn create(path: &Path, n_genes: usize, source: &str, force: bool) -> Result<H5adWriter> {
        if n_genes > i32::MAX as usize {
            return Err(Error::Config(format!(
                "{n_genes} genes: too many for int32 indices"
            )));
        }
        let mut target = AtomicFile::create(path, force, "")?;
        let tmp = target.path().to_path_buf();
        let f = target.file().try_clone().map_err(|e| Error::io(&tmp, e))?;
        let mut out = Out {
            path: tmp,
            w: BufWriter::with_capacity(1 << 20, f),
            pos: 0,
        };
        out.write(&[0u8; SUPERBLOCK_SIZE as usize])?;
        let data_addr = out.pos;
        let (side, sf) = TempFile::beside(path, "")?;
        Ok(H5adWriter {
            target: Some(target),
            side,
            out: Some(out),
            indices: Some(BufWriter::with_capacity(1 << 20, sf)),
            data_addr,
            indptr: vec![0],
            n_genes,
            source: source.to_string(),
            checks: CountChecks::new(source, "X"),
            target_path: path.to_path_buf(),
            extras: Vec::new(),
        })
    }

    fn new_extra(&mut self, place: Place, name: &str, extra: Extra) -> Result<usize> {
        if name.is_empty() || name.contains('/') {
            return Err(Error::Config(format!(
                "{}: '{name}' cannot name an .h5ad matrix",
                self.source
            )));
        }
        if self.extras.iter().any(|(p, n, _)| *p == place && n == name) {
            return Err(Error::Config(format!(
                "{}: two matrices named '{name}'",
                self.source
            )));
        }
        self.extras.push((place, name.to_string(), extra));
        Ok(self.extras.len() - 1)
    }

    /// Start a CSR matrix over the genes at `place/name`; its rows follow by
    /// [`append_sparse`](Self::append_sparse). Returns its id.
    pub fn add_sparse(&mut self, place: Place, name: &str) -> Result<usize> {
        let extra = Extra::Sparse {
            data: Side::beside(&self.target_path)?,
            indices: Side::beside(&self.target_path)?,
            indptr: vec![0],
        };
        self.new_extra(place, name, extra)
    }

    /// Start a dense f32 matrix of `n_cols` columns at `place/name`; its rows follow by
    /// [`append_dense`](Self::append_dense). Returns its id.
    pub fn add_dense(&mut self, place: Place, name: &str, n_cols: usize) -> Result<usize> {
        let extra = Extra::Dense {
            values: Side::beside(&self.target_path)?,
            n_cols,
            n_rows: 0,
        };
        self.new_extra(place, name, extra)
    }

    /// Append rows to the sparse matrix `id` (structure and gene count checked).
    pub fn append_sparse(&mut self, id: usize, chunk: &CsrMatrix) -> Result<()> {
        let g = self.n_genes;
        let (_, name, extra) = &mut self.extras[id];
        let Extra::Sparse {
            data,
            indices,
            indptr,
        } = extra
        else {
            return Err(Error::Config(format!("'{name}' is not a sparse matrix")));
        };
        if chunk.n_cols != g {
            return Err(Error::Shape(format!(
                "'{name}': rows of {} genes for a file of {g}",
                chunk.n_cols
            )));
        }
        chunk.validate_structure()?;
        let (d, i) = csr_bytes(chunk);
        data.write(&d)?;
        indices.write(&i)?;
        extend_indptr(indptr, chunk);
        Ok(())
    }

    /// Append rows (`[n, n_cols]`, row-major) to the dense matrix `id`.
    pub fn append_dense(&mut self, id: usize, rows: &[f32]) -> Result<()> {
        let (_, name, extra) = &mut self.extras[id];
        let Extra::Dense {
            values,
            n_cols,
            n_rows,
        } = extra
        else {
            return Err(Error::Config(format!("'{name}' is not a dense matrix")));
        };
        if *n_cols == 0 || !rows.len().is_multiple_of(*n_cols) {
            return Err(Error::Shape(format!(
                "'{name}': {} values are not rows of {n_cols}",
                rows.len()
            )));
        }
        *n_rows += rows.len() / *n_cols;
        let b: Vec<u8> = rows.iter().flat_map(|v| v.to_le_bytes()).collect();
        values.write(&b)
    }

    /// Rows appended so far.
    pub fn n_rows(&self) -> usize {
        self.indptr.len() - 1
    }

    /// Values appended so far.
    pub fn nnz(&self) -> u64 {
        *self.indptr.last().unwrap_or(&0) as u64
    }

    /// Append rows (checked like the store's: structure, gene count, values).
    pub fn append_owned(&mut self, chunk: CsrMatrix) -> Result<()> {
        if chunk.n_cols != self.n_genes {
            return Err(Error::Shape(format!(
                "{}: rows have {} genes, the file has {}",
                self.source, chunk.n_cols, self.n_genes
            )));
        }
        chunk.validate_structure()?;
        self.checks.check_chunk(self.indptr.len() - 1, &chunk)?;
        extend_indptr(&mut self.indptr, &chunk);
        let (data, idx) = csr_bytes(&chunk);
        self.out.as_mut().unwrap().write(&data)?;
        self.indices
            .as_mut()
            .unwrap()
            .write_all(&idx)
            .map_err(|e| Error::io(self.side.path(), e))?;
        Ok(())
    }

    /// Write `X`'s remaining arrays, `obs`, `var` and the empty groups, then the superblock;
    /// sync and rename into place. `meta.var` columns become string columns of `var`.
    pub fn finish(mut self, meta: StoreMeta) -> Result<()> {
        let n_cells = self.indptr.len() - 1;
        let nnz = *self.indptr.last().unwrap() as u64;
        if n_cells == 0 || self.n_genes == 0 {
            return Err(Error::Data(format!(
                "{}: empty matrix; nothing to write",
                self.source
            )));
        }
        if meta.gene_names.len() != self.n_genes || meta.cell_names.len() != n_cells {
            return Err(Error::Shape(format!(
                "{}: {} gene names and {} cell names for a {n_cells} x {} matrix",
                self.source,
                meta.gene_names.len(),
                meta.cell_names.len(),
                self.n_genes
            )));
        }
        if let Some(w) = self.checks.clone().finish()?.warning(&self.source, "X") {
            eprintln!("warning: {w}");
        }
        let mut out = self.out.take().unwrap();
        // X/indices: copy the side file after X/data.
        let mut side = self.indices.take().unwrap();
        side.flush().map_err(|e| Error::io(self.side.path(), e))?;
        drop(side);
        out.align8()?;
        let indices_addr = out.pos;
        {
            let side = self.side.path();
            let mut r = File::open(side).map_err(|e| Error::io(side, e))?;
            out.w.flush().map_err(|e| Error::io(&out.path, e))?;
            let n = std::io::copy(&mut r, &mut out.w).map_err(|e| Error::io(&out.path, e))?;
            out.pos += n;
        }
        let g = self.n_genes as u64;
        let data_oh = out.dataset_at(Dt::F32, &[nnz], self.data_addr, &[])?;
        let indices_oh = out.dataset_at(Dt::I32, &[nnz], indices_addr, &[])?;
        let raw: Vec<u8> = self.indptr.iter().flat_map(|p| p.to_le_bytes()).collect();
        let indptr_oh = out.dataset(Dt::I64, &[n_cells as u64 + 1], &raw, &[])?;
        let x = csr_group(
            &mut out,
            [data_oh, indices_oh, indptr_oh],
            n_cells,
            g as usize,
        )?;
        let mut layers = Vec::new();
        let mut obsm = Vec::new();
        for (place, name, extra) in std::mem::take(&mut self.extras) {
            let member = match extra {
                Extra::Sparse {
                    data,
                    indices,
                    indptr,
                } => {
                    if indptr.len() - 1 != n_cells {
                        return Err(Error::Shape(format!(
                            "{}: '{name}' has {} rows, X {n_cells}",
                            self.source,
                            indptr.len() - 1
                        )));
                    }
                    let nnz = *indptr.last().unwrap() as u64;
                    let d = data.copy_into(&mut out)?;
                    let i = indices.copy_into(&mut out)?;
                    let d = out.dataset_at(Dt::F32, &[nnz], d, &[])?;
                    let i = out.dataset_at(Dt::I32, &[nnz], i, &[])?;
                    let raw: Vec<u8> = indptr.iter().flat_map(|p| p.to_le_bytes()).collect();
                    let p = out.dataset(Dt::I64, &[n_cells as u64 + 1], &raw, &[])?;
                    Member::group(&name, csr_group(&mut out, [d, i, p], n_cells, g as usize)?)
                }
                Extra::Dense {
                    values,
                    n_cols,
                    n_rows,
                } => {
                    if n_rows != n_cells {
                        return Err(Error::Shape(format!(
                            "{}: '{name}' has {n_rows} rows, X {n_cells}",
                            self.source
                        )));
                    }
                    let at = values.copy_into(&mut out)?;
                    let [e0, e1] = enc("array", "0.2.0");
                    let dims = [n_rows as u64, n_cols as u64];
                    Member::dataset(&name, out.dataset_at(Dt::F32, &dims, at, &[e0, e1])?)
                }
            };
            match place {
                Place::Layers => layers.push(member),
                Place::Obsm => obsm.push(member),
            }
        }
        let obs = dataframe(&mut out, &meta.cell_names, &meta.obs)?;
        let var_columns: Vec<(String, ObsColumn)> = meta
            .var
            .into_iter()
            .map(|(name, v)| (name, ObsColumn::Strings(v)))
            .collect();
        let var = dataframe(&mut out, &meta.gene_names, &var_columns)?;
        let mut root = vec![
            Member::group("X", x),
            Member::group("obs", obs),
            Member::group("var", var),
        ];
        for (name, members) in [
            ("layers", layers),
            ("obsm", obsm),
            ("obsp", Vec::new()),
            ("uns", Vec::new()),
            ("varm", Vec::new()),
            ("varp", Vec::new()),
        ] {
            let [e0, e1] = enc("dict", "0.1.0");
            root.push(Member::group(name, out.group(members, &[e0, e1])?));
        }
        let [e0, e1] = enc("anndata", "0.1.0");
        let top = out.group(root, &[e0, e1])?;
        let eof = out.pos;

        // Superblock version 0.
        let mut sb = b"\x89HDF\r\n\x1a\n".to_vec();
        sb.extend_from_slice(&[0, 0, 0, 0, 0, 8, 8, 0]);
        sb.extend_from_slice(&LEAF_K.to_le_bytes());
        sb.extend_from_slice(&INTERNAL_K.to_le_bytes());
        sb.extend_from_slice(&0u32.to_le_bytes());
        sb.extend_from_slice(&0u64.to_le_bytes()); // base address
        sb.extend_from_slice(&UNDEF.to_le_bytes()); // free-space info
        sb.extend_from_slice(&eof.to_le_bytes());
        sb.extend_from_slice(&UNDEF.to_le_bytes()); // driver info
        sb.extend_from_slice(&0u64.to_le_bytes()); // root entry: name offset
        sb.extend_from_slice(&top.header.to_le_bytes());
        sb.extend_from_slice(&1u32.to_le_bytes());
        sb.extend_from_slice(&0u32.to_le_bytes());
        sb.extend_from_slice(&top.btree.to_le_bytes());
        sb.extend_from_slice(&top.heap.to_le_bytes());
        debug_assert_eq!(sb.len() as u64, SUPERBLOCK_SIZE);
        let path = out.path.clone();
        let mut f = out
            .w
            .into_inner()
            .map_err(|e| Error::io(&path, e.into_error()))?;
        f.seek(SeekFrom::Start(0))
            .map_err(|e| Error::io(&path, e))?;
        f.write_all(&sb).map_err(|e| Error::io(&path, e))?;
        drop(f);
        self.target
            .take()
            .expect("an .h5ad writer holds its target until it finishes")
            .commit()
    }
}

/// A dataframe as anndata writes it: the string index `_index`, then the columns in their order.
fn dataframe(out: &mut Out, index: &[String], columns: &[(String, ObsColumn)]) -> Result<GroupAt> {
    let [e0, e1] = enc("string-array", "0.2.0");
    let mut members = vec![Member::dataset("_index", out.strings(index, &[e0, e1])?)];
    let mut order = Vec::new();
    for (name, col) in columns {
        if name == "_index" {
            continue;
        }
        order.push(name.clone());
        members.push(column(out, name, col)?);
    }
    let [e0, e1] = enc("dataframe", "0.2.0");
    let column_order = if order.is_empty() {
        Attr::EmptyF64
    } else {
        Attr::Strs(order)
    };
    out.group(
        members,
        &[
            e0,
            e1,
            ("_index", Attr::Str("_index".into())),
            ("column-order", column_order),
        ],
    )
}

/// A column as anndata writes it.
fn column(out: &mut Out, name: &str, col: &ObsColumn) -> Result<Member> {
    let [e0, e1] = enc("array", "0.2.0");
    let (dt, raw): (Dt, Vec<u8>) = match col {
        ObsColumn::Categorical { codes, categories } => {
            let (dt, raw): (Dt, Vec<u8>) = if categories.len() <= i8::MAX as usize {
                (Dt::I8, codes.iter().map(|&c| c as i8 as u8).collect())
            } else {
                (
                    Dt::I32,
                    codes.iter().flat_map(|c| c.to_le_bytes()).collect(),
                )
            };
            let codes_oh = out.dataset(dt, &[codes.len() as u64], &raw, &[e0, e1])?;
            let [s0, s1] = enc("string-array", "0.2.0");
            let cats_oh = out.strings(categories, &[s0, s1])?;
            let [c0, c1] = enc("categorical", "0.2.0");
            let g = out.group(
                vec![
                    Member::dataset("categories", cats_oh),
                    Member::dataset("codes", codes_oh),
                ],
                &[c0, c1, ("ordered", Attr::I8(0))],
            )?;
            return Ok(Member::group(name, g));
        }
        ObsColumn::Strings(v) => {
            let [s0, s1] = enc("string-array", "0.2.0");
            return Ok(Member::dataset(name, out.strings(v, &[s0, s1])?));
        }
        ObsColumn::Integers(v) => (Dt::I64, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        ObsColumn::Floats(v) => (Dt::F64, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        // As int8 0/1 (anndata reads it as an integer column).
        ObsColumn::Bools(v) => (Dt::I8, v.iter().map(|&b| b as u8).collect()),
    };
    let header = out.dataset(dt, &[col.len() as u64], &raw, &[e0, e1])?;
    Ok(Member::dataset(name, header))
}

impl Drop for H5adWriter {
    fn drop(&mut self) {
        // Close the files; the temporaries' own drops remove them when unfinished.
        self.out.take();
        self.indices.take();
    }
}
