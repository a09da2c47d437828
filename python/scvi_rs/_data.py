"""AnnData to the engine's data (``_core.Data``) without copying what need not be copied.

* a float32 CSR matrix with int32 (or int64) ``indptr`` and int32 ``indices`` in canonical order:
  its three buffers are read in place (the Rust side keeps the arrays alive);
* any other matrix (CSC, dense, another dtype, unsorted indices): converted to float32 CSR a
  chunk of ``CHUNK_ROWS`` rows at a time, so a dense matrix never exists twice;
* a backed AnnData (``read_h5ad(..., backed="r")``): the Rust reader opens ``adata.filename``
  (with ``layer``), as ``scvi-rs train`` does; nothing is loaded into Python.
"""

import numpy as np
import pandas as pd
import scipy.sparse as sp

from . import _core

CHUNK_ROWS = 8192


def _missing_key(source, key, columns, purpose=""):
    """The command line's message for an obs column that is not there."""
    names = ", ".join(map(str, columns)) or "none"
    return KeyError(f"{source}: obs has no column '{key}'{purpose} (columns: {names})")


def source_of(adata):
    return str(adata.filename) if getattr(adata, "isbacked", False) else "AnnData"


def check_keys(adata, layer, keys):
    """Raise ``KeyError`` (the command line's message) for a layer or obs column not in adata."""
    src = source_of(adata)
    if layer is not None and layer not in adata.layers:
        there = ", ".join(adata.layers.keys()) or "none"
        raise KeyError(f"{src}: no layer '{layer}' in the AnnData (layers: {there})")
    for key in keys:
        if key is not None and key not in adata.obs.columns:
            raise _missing_key(src, key, adata.obs.columns)


def _obs_column(name, col):
    """One obs column as ``_core.Data`` takes it: (name, kind, values, categories)."""
    if isinstance(col.dtype, pd.CategoricalDtype):
        cats = [str(c) for c in col.cat.categories]
        return (name, "categorical", col.cat.codes.to_numpy(np.int32).tolist(), cats)
    if pd.api.types.is_bool_dtype(col.dtype):
        return (name, "bools", col.to_numpy(bool).tolist(), None)
    if pd.api.types.is_integer_dtype(col.dtype):
        return (name, "integers", col.to_numpy(np.int64).tolist(), None)
    if pd.api.types.is_float_dtype(col.dtype):
        return (name, "floats", col.to_numpy(np.float64).tolist(), None)
    return (name, "strings", [str(v) for v in col.to_numpy()], None)


def _borrowable(x):
    return (
        sp.issparse(x)
        and x.format == "csr"
        and x.dtype == np.float32
        and x.indices.dtype == np.int32
        and x.indptr.dtype in (np.int32, np.int64)
        and x.has_canonical_format
    )


def to_csr32(x):
    """Float32 CSR with int32 indices, converted a chunk of rows at a time."""
    n = x.shape[0]
    if sp.issparse(x) and x.format != "csr":
        # Row slices of CSC are slow; one conversion of the sparse matrix is no worse than a chunk
        # of a dense one.
        x = x.tocsr()
    parts_ptr, parts_idx, parts_val, nnz = [np.zeros(1, np.int64)], [], [], 0
    for a in range(0, n, CHUNK_ROWS):
        block = x[a : min(a + CHUNK_ROWS, n)]
        block = sp.csr_matrix(block, dtype=np.float32)
        block.sum_duplicates()
        parts_ptr.append(block.indptr[1:].astype(np.int64) + nnz)
        parts_idx.append(block.indices.astype(np.int32, copy=False))
        parts_val.append(block.data)
        nnz += block.nnz
    indptr = np.concatenate(parts_ptr)
    indices = np.concatenate(parts_idx) if parts_idx else np.zeros(0, np.int32)
    data = np.concatenate(parts_val) if parts_val else np.zeros(0, np.float32)
    return sp.csr_matrix((data, indices, indptr), shape=x.shape, copy=False)


def to_data(adata, layer, keys):
    """The engine's view of ``adata`` (its ``layer``, or X) with the obs columns ``keys``."""
    keys = [k for k in keys if k is not None]
    check_keys(adata, layer, keys)
    if getattr(adata, "isbacked", False):
        if adata.is_view:
            raise ValueError(
                f"{adata.filename}: a view of a backed AnnData cannot be read from its file; "
                "load the subset into memory (adata[...].to_memory()) or write it out first"
            )
        return _core.Data.from_file(str(adata.filename), layer)
    x = adata.layers[layer] if layer is not None else adata.X
    field = f"layers/{layer}" if layer is not None else "X"
    if x is None:
        raise ValueError(f"AnnData: {field} is empty")
    if not _borrowable(x):
        x = to_csr32(x)
    obs = [_obs_column(k, adata.obs[k]) for k in keys]
    return _core.Data.from_csr(
        x.indptr,
        x.indices,
        x.data,
        int(x.shape[1]),
        [str(g) for g in adata.var_names],
        [str(c) for c in adata.obs_names],
        obs,
        "AnnData",
        field,
    )
