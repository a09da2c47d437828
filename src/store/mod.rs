//! The store: scvi-rs' own on-disk form of a count matrix, memory-mapped so that data far larger
//! than memory trains at the speed of the page cache.
//!
//! A store is a directory (`atlas.store/`) of five files (format version 1, little-endian, described
//! fully in `docs/store-format.md`):
//!
//! ```text
//! header.json   sizes, the table of arrays, checksums, the source; self-checksummed
//! indptr.u64    n_cells + 1 row pointers (u64, so more than 2^31 non-zeros work)
//! indices.u32   nnz gene indices, strictly increasing within a row
//! data.f32      nnz counts
//! meta.bin      gene names, cell names, var and obs columns (8-byte-aligned arrays)
//! ```
//!
//! Everything is validated once, when the store is written ([`StoreWriter`]: sizes agree, row
//! pointers never decrease, gene indices in range and increasing, values finite and non-negative).
//! Opening ([`Store::open`]) maps the three matrix files (no read of the matrix) and runs a cheap
//! integrity check: the header's own checksum, the file sizes against the header, the checksum of
//! `meta.bin` and of `indptr.u64` (O(n_cells)), and the row pointers' monotonicity, so that a
//! truncated or corrupt store is an error and a row slice can never fall outside the mapped files.
//! The O(nnz) checksums of `indices` and `data` are checked by [`Store::verify`] on demand.
//!
//! A store is written under a temporary name next to its final path and renamed at the end, so an
//! interrupted conversion never leaves a half-written store behind.
//!
//! This module is also where every command gets its data and where the data commands' work is done:
//!
//! ```text
//! format.rs       header.json and meta.bin (format version 1)
//! hash.rs         the wfnv64 checksum
//! mapped.rs       an opened store: Store, MappedCsr (the mapped matrix), is_store, STORE_DIR
//! writer.rs       StoreWriter: rows in, checked, written by a background thread
//! h5ad_writer.rs  H5adWriter: the same rows as an AnnData .h5ad
//! input.rs        the one input opener, by content: store, .h5ad, 10x .h5, 10x MTX folder
//! output.rs       MatrixWriter (a store, or an .h5ad by the name), write_simulated
//! convert.rs      convert: gene list, highly variable genes, writing
//! info.rs         info: what an input holds, as JSON
//! ```

pub mod convert;
mod format;
pub mod h5ad_writer;
mod hash;
pub mod info;
pub mod input;
mod mapped;
pub mod output;
mod writer;

pub use convert::{convert, ConvertOptions};
pub use format::{Header, ValueSummary, FORMAT_NAME, FORMAT_VERSION};
pub use hash::{wfnv64, Hasher64};
pub use info::info_json;
pub use input::{
    detect_format, load_dataset, load_dataset_with, open_input, open_input_with, Input,
    InputFormat, InputMeta, InputOptions,
};
pub use mapped::{is_store, MappedCsr, Store, STORE_DIR};
pub use output::{output_kind, write_simulated, MatrixWriter, Written};
pub use writer::{StoreMeta, StoreWriter};
