"""Simulated AnnData for the tests (no pytest here: scvi-tools' Python imports it too)."""

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp


def simulated(n_cells=400, n_genes=60, n_batches=2, seed=0, dtype=np.float32):
    """Negative-binomial counts with batches and two cell types, as float32 CSR."""
    rng = np.random.default_rng(seed)
    types = rng.integers(0, 2, n_cells)
    batch = rng.integers(0, n_batches, n_cells)
    mu = rng.gamma(2.0, 1.0, (2, n_genes))[types] * (1.0 + 0.3 * batch[:, None])
    x = rng.negative_binomial(5, 5 / (5 + mu)).astype(dtype)
    x[:, 0] += 1  # no empty cell
    adata = ad.AnnData(
        X=sp.csr_matrix(x, dtype=dtype),
        obs=pd.DataFrame(
            {
                "batch": pd.Categorical([f"b{b}" for b in batch]),
                "cell_type": pd.Categorical([f"t{t}" for t in types]),
            },
            index=[f"cell_{i}" for i in range(n_cells)],
        ),
        var=pd.DataFrame(index=[f"gene_{j}" for j in range(n_genes)]),
    )
    return adata
