//! The simulator: deterministic, realistic in its summary statistics, cell types separable.

use scvi_rs::data::simulate::{simulate, simulate_rows, SimConfig};
use scvi_rs::data::{CsrMatrix, ObsColumn, SparseRows};

fn cfg(n_cells: usize, n_genes: usize) -> SimConfig {
    SimConfig {
        n_cells,
        n_genes,
        seed: 42,
        ..SimConfig::default()
    }
}

fn collect(cfg: &SimConfig) -> CsrMatrix {
    let mut all = CsrMatrix::with_cols(cfg.n_genes);
    simulate_rows(cfg, |first, chunk| {
        assert_eq!(first, all.n_rows);
        chunk.validate_structure().unwrap();
        for i in 0..chunk.n_rows {
            let (j, v) = chunk.row(i);
            all.push_row(j.iter().copied().zip(v.iter().copied()));
        }
        Ok(())
    })
    .unwrap();
    all
}

#[test]
fn deterministic_and_independent_of_threads() {
    let c = cfg(5000, 300);
    let a = collect(&c);
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let b = one.install(|| collect(&c));
    assert_eq!(a, b);
    // The in-memory data set is the same matrix.
    let d = simulate(&c);
    assert_eq!(d.counts.nnz(), a.nnz());
    for i in [0, 1, 4095, 4096, 4999] {
        assert_eq!(d.counts.row(i), a.row(i));
    }
    // Another seed gives other data.
    let other = collect(&SimConfig { seed: 43, ..c });
    assert_ne!(a, other);
}

#[test]
fn counts_are_realistic() {
    let c = cfg(4000, 2000);
    let d = simulate(&c);
    assert_eq!(d.n_cells(), 4000);
    assert_eq!(d.n_genes(), 2000);
    assert_eq!(d.gene_names.len(), 2000);
    assert_eq!(d.cell_names.len(), 4000);
    assert_eq!(d.gene_names[0], "gene0001");
    let mut libs: Vec<f64> = (0..d.n_cells()).map(|i| d.counts.row_sum(i)).collect();
    libs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let median = libs[libs.len() / 2];
    assert!(
        (2000.0..4500.0).contains(&median),
        "median library size {median}"
    );
    // Library sizes spread like a log-normal: the 90th percentile is well above the 10th.
    let ratio = libs[libs.len() * 9 / 10] / libs[libs.len() / 10];
    assert!(ratio > 1.8 && ratio < 6.0, "library p90/p10 {ratio}");
    assert!(libs[0] > 0.0, "a cell with no counts");
    let density = d.counts.nnz() as f64 / (4000.0 * 2000.0);
    assert!((0.1..0.6).contains(&density), "density {density}");
    // Whole, non-negative counts.
    for i in 0..100 {
        for &v in d.counts.row(i).1 {
            assert!(v > 0.0 && v.fract() == 0.0);
        }
    }
    // Overdispersion: for well-expressed genes the variance exceeds the mean (not Poisson).
    let mut sum = vec![0f64; 2000];
    let mut sq = vec![0f64; 2000];
    for i in 0..d.n_cells() {
        let (j, v) = d.counts.row(i);
        for (&g, &x) in j.iter().zip(v) {
            sum[g as usize] += x as f64;
            sq[g as usize] += (x as f64).powi(2);
        }
    }
    let n = d.n_cells() as f64;
    let overdispersed = (0..2000)
        .filter(|&g| sum[g] / n > 1.0)
        .filter(|&g| {
            let m = sum[g] / n;
            sq[g] / n - m * m > 1.5 * m
        })
        .count();
    let expressed = (0..2000).filter(|&g| sum[g] / n > 1.0).count();
    assert!(
        expressed > 100 && overdispersed * 10 > expressed * 9,
        "{overdispersed}/{expressed}"
    );
}

#[test]
fn labels_are_categorical_and_cell_types_separable() {
    let c = SimConfig {
        n_batches: 3,
        n_cell_types: 6,
        ..cfg(3000, 500)
    };
    let d = simulate(&c);
    let (batch, nb) = match d.obs_column("batch").unwrap() {
        ObsColumn::Categorical { codes, categories } => (codes.clone(), categories.len()),
        _ => panic!("batch not categorical"),
    };
    let (ctype, nt) = match d.obs_column("cell_type").unwrap() {
        ObsColumn::Categorical { codes, categories } => (codes.clone(), categories.len()),
        _ => panic!("cell_type not categorical"),
    };
    assert_eq!((nb, nt), (3, 6));
    for b in 0..3 {
        assert!(batch.iter().filter(|&&x| x == b).count() > 700);
    }
    for t in 0..6 {
        assert!(ctype.contains(&t), "type {t} never drawn");
    }
    // Nearest centroid on log1p of normalised counts, centroids from the first half, tested on the
    // second half: a crude model, so a good latent model does at least as well.
    let g_n = d.n_genes();
    let norm_row = |i: usize| {
        let mut x = vec![0f64; g_n];
        let s = d.counts.row_sum(i).max(1.0);
        let (j, v) = d.counts.row(i);
        for (&g, &val) in j.iter().zip(v) {
            x[g as usize] = (1e4 * val as f64 / s).ln_1p();
        }
        x
    };
    let half = d.n_cells() / 2;
    let mut cent = vec![vec![0f64; g_n]; 6];
    let mut cnt = [0f64; 6];
    for (i, &t) in ctype.iter().enumerate().take(half) {
        let t = t as usize;
        for (c, x) in cent[t].iter_mut().zip(norm_row(i)) {
            *c += x;
        }
        cnt[t] += 1.0;
    }
    for t in 0..6 {
        for c in cent[t].iter_mut() {
            *c /= cnt[t].max(1.0);
        }
    }
    let mut right = 0;
    for (i, &t) in ctype.iter().enumerate().skip(half) {
        let x = norm_row(i);
        let best = (0..6)
            .min_by(|&a, &b| {
                let da: f64 = x.iter().zip(&cent[a]).map(|(p, q)| (p - q).powi(2)).sum();
                let db: f64 = x.iter().zip(&cent[b]).map(|(p, q)| (p - q).powi(2)).sum();
                da.partial_cmp(&db).unwrap()
            })
            .unwrap();
        right += (best == t as usize) as usize;
    }
    let acc = right as f64 / (d.n_cells() - half) as f64;
    assert!(acc > 0.9, "nearest-centroid accuracy {acc}");
}

#[test]
fn invalid_configuration_is_an_error() {
    for bad in [
        SimConfig {
            n_cells: 0,
            ..SimConfig::default()
        },
        SimConfig {
            n_genes: 0,
            ..SimConfig::default()
        },
        SimConfig {
            n_batches: 0,
            ..SimConfig::default()
        },
        SimConfig {
            library_median: Some(-1.0),
            ..SimConfig::default()
        },
    ] {
        assert!(bad.validate().is_err());
        assert!(simulate_rows(&bad, |_, _| Ok(())).is_err());
        let d = simulate(&bad);
        assert_eq!(d.n_cells(), 0);
    }
}

/// `cargo test --release --test simulate -- --ignored --nocapture`: speed and summary numbers.
#[test]
#[ignore]
fn speed_report() {
    let c = cfg(200_000, 2000);
    let t = std::time::Instant::now();
    let mut nnz = 0u64;
    let mut libs = Vec::new();
    simulate_rows(&c, |_, chunk| {
        nnz += chunk.nnz();
        for i in 0..chunk.n_rows {
            libs.push(chunk.row_sum(i));
        }
        Ok(())
    })
    .unwrap();
    let s = t.elapsed().as_secs_f64();
    libs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "{} cells x {} genes in {s:.2} s ({:.0} rows/s), nnz/cell {:.0}, median lib {}",
        c.n_cells,
        c.n_genes,
        c.n_cells as f64 / s,
        nnz as f64 / c.n_cells as f64,
        libs[libs.len() / 2]
    );
}
