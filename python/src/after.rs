//! The after-training methods of the core (`Scvi::elbo`, `marginal_ll`, `normalized_expression`,
//! `differential_expression`, `posterior_predictive_sample`) in the shapes the Python side turns
//! into scvi-tools' return values; each runs through `run::run` (GIL released, Ctrl-C watched).

use crate::errors::to_py;
use crate::run::run;
use numpy::{PyArray1, PyArray2, PyArrayMethods};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use scvi_rs::data::Dataset;
use scvi_rs::infer::de::{DeColumn, DeOptions};
use scvi_rs::infer::normalize::NormalizeOptions;
use scvi_rs::scvi::DeGroups;
use scvi_rs::{Device, Scvi};

/// The cells asked for (all when None), checked in range.
pub fn cells_of(data: &Dataset, cells: Option<Vec<usize>>) -> PyResult<Vec<usize>> {
    let n = data.n_cells();
    let cells = cells.unwrap_or_else(|| (0..n).collect());
    if let Some(&bad) = cells.iter().find(|&&c| c >= n) {
        return Err(pyo3::exceptions::PyIndexError::new_err(format!(
            "cell index {bad} is out of range for {n} cells"
        )));
    }
    Ok(cells)
}

/// Where and how an after-training call runs.
pub struct RunOn {
    pub device: Device,
    pub threads: usize,
    pub seed: u64,
}

/// `get_elbo` / `get_reconstruction_error`: (elbo, reconstruction error, kl_local).
pub fn elbo(
    py: Python<'_>,
    model: &Scvi,
    data: &Dataset,
    cells: &[usize],
    r: RunOn,
) -> PyResult<(f64, f64, f64)> {
    let (e, _) = run(py, r.threads, false, || {
        model.elbo(data, cells, r.device, r.seed)
    })?;
    Ok((e.elbo, e.reconstruction_loss, e.kl_local))
}

/// `get_marginal_ll(return_mean=False)`: each cell's estimate.
pub fn marginal_ll(
    py: Python<'_>,
    model: &Scvi,
    data: &Dataset,
    cells: &[usize],
    n_mc_samples: usize,
    r: RunOn,
) -> PyResult<Vec<f64>> {
    let (ll, _) = run(py, r.threads, false, || {
        model.marginal_ll(data, cells, n_mc_samples, r.device, r.seed, &mut |_| {})
    })?;
    Ok(ll)
}

/// `get_normalized_expression(return_mean=True)`: `[cells, genes]` float32, and the genes' names.
pub fn normalized<'py>(
    py: Python<'py>,
    model: &Scvi,
    data: &Dataset,
    cells: &[usize],
    opts: &NormalizeOptions,
    r: RunOn,
) -> PyResult<(Bound<'py, PyArray2<f32>>, Vec<String>)> {
    let names: Vec<String> = match &opts.genes {
        Some(idx) => idx.iter().map(|&i| model.meta.genes[i].clone()).collect(),
        None => model.meta.genes.clone(),
    };
    let (out, _) = run(py, r.threads, false, || {
        let mut out = Vec::with_capacity(cells.len() * names.len());
        model.normalized_expression(data, cells, opts, r.device, r.seed, &mut |_, rows| {
            out.extend_from_slice(rows);
            Ok(())
        })?;
        Ok(out)
    })?;
    let arr = PyArray1::from_vec(py, out).reshape([cells.len(), names.len()])?;
    Ok((arr, names))
}

/// `differential_expression`: per comparison a dict with `group1`, `group2`, `order` (row order,
/// gene indices) and `columns` (name, per-gene array or a constant string).
pub fn differential_expression<'py>(
    py: Python<'py>,
    model: &Scvi,
    data: &Dataset,
    groups: DeGroups,
    opts: &DeOptions,
    r: RunOn,
) -> PyResult<Bound<'py, PyList>> {
    let names: Vec<(String, String)> = model
        .comparisons(data, &groups)
        .map_err(to_py)?
        .into_iter()
        .map(|c| (c.group1, c.group2))
        .collect();
    let (results, _) = run(py, r.threads, false, || {
        model.differential_expression(data, &groups, opts, r.device, r.seed, &mut |_, _| {})
    })?;
    let out = PyList::empty(py);
    for ((g1, g2), res) in names.into_iter().zip(results) {
        let d = PyDict::new(py);
        d.set_item("group1", g1)?;
        d.set_item("group2", g2)?;
        d.set_item("order", res.order)?;
        let cols = PyList::empty(py);
        for (name, col) in res.columns {
            let v: Bound<'py, PyAny> = match col {
                DeColumn::Numbers(v) => PyArray1::from_vec(py, v).into_any(),
                DeColumn::Flags(v) => PyArray1::from_vec(py, v).into_any(),
                DeColumn::Text(s) => s.into_pyobject(py)?.into_any(),
            };
            cols.append((name, v))?;
        }
        d.set_item("columns", cols)?;
        out.append(d)?;
    }
    Ok(out)
}

/// `posterior_predictive_sample`: per draw, the CSR parts (indptr, indices, data) over the cells.
pub fn predictive<'py>(
    py: Python<'py>,
    model: &Scvi,
    data: &Dataset,
    cells: &[usize],
    n_samples: usize,
    r: RunOn,
) -> PyResult<Bound<'py, PyList>> {
    type Parts = (Vec<u64>, Vec<u32>, Vec<f32>);
    let (draws, _) = run(py, r.threads, false, || {
        let mut draws: Vec<Parts> = (0..n_samples)
            .map(|_| (vec![0u64], Vec::new(), Vec::new()))
            .collect();
        model.posterior_predictive_sample(
            data,
            cells,
            n_samples,
            r.device,
            r.seed,
            &mut |s, _, rows| {
                // Chunks of a draw arrive in cell order: append their rows.
                let (ptr, idx, val) = &mut draws[s];
                let base = *ptr.last().unwrap_or(&0);
                ptr.extend(rows.indptr[1..].iter().map(|p| p + base));
                idx.extend_from_slice(&rows.indices);
                val.extend_from_slice(&rows.data);
                Ok(())
            },
        )?;
        Ok(draws)
    })?;
    let out = PyList::empty(py);
    for (ptr, idx, val) in draws {
        out.append((
            PyArray1::from_vec(py, ptr),
            PyArray1::from_vec(py, idx),
            PyArray1::from_vec(py, val),
        ))?;
    }
    Ok(out)
}
