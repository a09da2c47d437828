"""An scvi-rs model directory as one that scvi-tools' `SCVI.load` reads (needs torch).

The weights already carry scvi-tools' state_dict names; this writes them into `model.pt` with the
registry and init parameters SCVI.load needs (batch and label categories, gene names, setup keys).
Only the options SCVI's constructor takes as arguments are carried over; `adata` must have the same
genes in the same order and the obs columns named at training. Imported by `SCVI.to_scvi_tools`
(it imports nothing else from the package); `scvi-rs export` is the Rust twin of this conversion.
"""
import json
import os
import uuid

import numpy as np
import torch
from safetensors.numpy import load_file


def convert(src, dst, layer=None):
    """Write `dst/model.pt` for scvi-tools from the scvi-rs model directory `src` (`layer`: the
    AnnData layer the counts are in, for the registry)."""
    meta = json.load(open(os.path.join(src, "model.json")))
    cfg, setup = meta["model"], meta["setup"]
    state = {k: torch.from_numpy(np.array(v)) for k, v in load_file(os.path.join(src, "model.safetensors")).items()}
    genes = meta["genes"]
    n_cells = meta.get("n_cells_trained", 0)
    norm = {"both": "both", "encoder": "encoder", "decoder": "decoder", "none": "none"}
    non_kwargs = dict(
        n_hidden=cfg["n_hidden"], n_latent=cfg["n_latent"], n_layers=cfg["n_layers"],
        dropout_rate=cfg["dropout_rate"], dispersion=cfg["dispersion"],
        gene_likelihood=cfg["gene_likelihood"], use_observed_lib_size=cfg["use_observed_lib_size"],
        latent_distribution=cfg["latent_distribution"],
    )
    kwargs = dict(
        encode_covariates=cfg["encode_covariates"], deeply_inject_covariates=cfg["deeply_inject_covariates"],
        use_batch_norm=norm[cfg["use_batch_norm"]], use_layer_norm=norm[cfg["use_layer_norm"]],
    )
    batch_key, labels_key = setup.get("batch_key"), setup.get("labels_key")
    cat = lambda key, internal, cats, stat: {
        "data_registry": {"attr_name": "obs", "attr_key": internal},
        "state_registry": {"categorical_mapping": np.array(cats if key else [0], dtype=object),
                           "original_key": key or internal},
        "summary_stats": {stat: len(cats) if key else 1},
    }
    empty = lambda stat: {"data_registry": {}, "state_registry": {}, "summary_stats": {stat: 0}}
    registry = {
        "scvi_version": "1.4.2", "model_name": "SCVI", "setup_method_name": "setup_anndata",
        "setup_args": {"layer": layer, "batch_key": batch_key, "labels_key": labels_key,
                       "size_factor_key": None, "categorical_covariate_keys": None,
                       "continuous_covariate_keys": None},
        "field_registries": {
            "X": {"data_registry": {"attr_name": "layers" if layer else "X", "attr_key": layer},
                  "state_registry": {"n_obs": n_cells, "n_vars": len(genes), "column_names": np.array(genes, dtype=object)},
                  "summary_stats": {"n_vars": len(genes), "n_cells": n_cells}},
            "batch": cat(batch_key, "_scvi_batch", meta["batch_categories"], "n_batch"),
            "labels": cat(labels_key, "_scvi_labels", meta["label_categories"], "n_labels"),
            "size_factor": {"data_registry": {}, "state_registry": {}, "summary_stats": {}},
            "extra_categorical_covs": empty("n_extra_categorical_covs"),
            "extra_continuous_covs": empty("n_extra_continuous_covs"),
        },
        "_scvi_uuid": str(uuid.uuid4()),
    }
    attr = {"init_params_": {"kwargs": {"kwargs": kwargs}, "non_kwargs": non_kwargs},
            "registry_": registry, "is_trained_": True,
            "get_normalized_function_name_": "get_normalized_expression"}
    split = os.path.join(src, "split.json")
    if os.path.exists(split):
        s = json.load(open(split))
        attr["train_indices_"] = np.array(s["train_indices"], dtype=np.int64)
        attr["validation_indices_"] = np.array(s["validation_indices"], dtype=np.int64)
    os.makedirs(dst, exist_ok=True)
    torch.save({"model_state_dict": state, "var_names": np.array(genes, dtype=object), "attr_dict": attr},
               os.path.join(dst, "model.pt"))
    return os.path.join(dst, "model.pt")
