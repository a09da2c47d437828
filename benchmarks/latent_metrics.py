"""Latent-space quality on the held-out cells, one function for both tools' latents.

- kNN cell-type purity: the fraction of each cell's k = 15 nearest neighbours (Euclidean, itself
  excluded) that share its label, averaged over cells. 1 = every neighbourhood is one cell type.
- Batch-mixing entropy: the entropy of the batch labels among each cell's k = 50 nearest
  neighbours, divided by log(number of batches) and averaged over cells (the scVI paper's measure,
  normalised): 1 = neighbourhoods as mixed as they can be, 0 = each neighbourhood from one batch.
- Cell-type silhouette: scikit-learn's silhouette score of the labels in the latent space,
  in [-1, 1] (on at most 10,000 cells, drawn with a fixed seed, as it is quadratic in the cells).
- Leiden NMI / ARI: Leiden clusters of the 15-neighbour graph (scanpy, igraph flavour, fixed
  seed) at resolutions 0.1, 0.2, ..., 2.0, compared with the labels; the resolution with the highest
  NMI is kept for both figures, as scib's NMI / ARI do, so that no latent is judged by a resolution
  chosen for the other.
"""

import numpy as np

K_PURITY = 15
K_MIXING = 50
K_GRAPH = 15
SILHOUETTE_MAX_CELLS = 10_000
RESOLUTIONS = [round(0.1 * i, 1) for i in range(1, 21)]
SEED = 0


def _neighbours(z, k):
    from sklearn.neighbors import NearestNeighbors
    k = min(k, len(z) - 1)
    idx = NearestNeighbors(n_neighbors=k + 1).fit(z).kneighbors(z, return_distance=False)
    return idx[:, 1:]


def knn_purity(z, labels, k=K_PURITY):
    nb = _neighbours(z, k)
    return float(np.mean(labels[nb] == labels[:, None]))


def batch_entropy(z, batches, k=K_MIXING):
    cats, codes = np.unique(batches, return_inverse=True)
    if len(cats) < 2:
        return None
    nb = _neighbours(z, k)
    counts = np.stack([(codes[nb] == c).sum(axis=1) for c in range(len(cats))], axis=1)
    p = counts / counts.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(p > 0, p * np.log(p), 0.0).sum(axis=1)
    return float(np.mean(h) / np.log(len(cats)))


def silhouette(z, labels):
    from sklearn.metrics import silhouette_score
    if len(np.unique(labels)) < 2:
        return None
    n = min(len(z), SILHOUETTE_MAX_CELLS)
    return float(silhouette_score(z, labels, sample_size=n if n < len(z) else None, random_state=SEED))


def _graph(z, seed=SEED):
    """An AnnData holding only the latent and scanpy's 15-neighbour graph on it."""
    import anndata
    import pandas as pd
    import scanpy as sc
    a = anndata.AnnData(obs=pd.DataFrame(index=[str(i) for i in range(len(z))]),
                        obsm={"z": np.asarray(z, dtype=np.float32)})
    sc.pp.neighbors(a, use_rep="z", n_neighbors=K_GRAPH, random_state=seed)
    return a


def leiden_agreement(z, labels):
    import scanpy as sc
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    a = _graph(z)
    best = None
    for res in RESOLUTIONS:
        sc.tl.leiden(a, resolution=res, flavor="igraph", n_iterations=2, directed=False,
                     random_state=SEED, key_added="leiden")
        clusters = a.obs["leiden"].to_numpy()
        nmi = normalized_mutual_info_score(labels, clusters)
        if best is None or nmi > best["nmi"]:
            best = {"nmi": float(nmi), "ari": float(adjusted_rand_score(labels, clusters)),
                    "leiden_resolution": res, "leiden_clusters": int(len(np.unique(clusters)))}
    return best


def all_metrics(z, labels, batches):
    labels = np.asarray(labels).astype(str)
    batches = np.asarray(batches).astype(str)
    out = {
        "knn_purity": knn_purity(z, labels),
        "batch_entropy": batch_entropy(z, batches),
        "silhouette": silhouette(z, labels),
    }
    out.update(leiden_agreement(z, labels))
    return out


def umap_coords(z, seed=SEED):
    """2-D UMAP of a latent (scanpy's, on the same 15-neighbour graph), for the side-by-side plot."""
    import scanpy as sc
    a = _graph(z, seed)
    sc.tl.umap(a, random_state=seed)
    return a.obsm["X_umap"]
