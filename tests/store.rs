//! The memory-mapped store: round trip, integrity checks at open, atomic writes, bad input.

mod common;

use std::path::{Path, PathBuf};

use common::data::{categorical, chosen_names};
use common::files::{fixture, listing, poke, shared_data, skip};
use scvi_rs::data::simulate::{simulate, SimConfig};
use scvi_rs::data::{CsrMatrix, ObsColumn, SparseRows};
use scvi_rs::store::{Store, StoreMeta, StoreWriter};

fn tmpdir(name: &str) -> PathBuf {
    common::files::tmpdir("store", name)
}

fn small() -> (CsrMatrix, StoreMeta) {
    let mut m = CsrMatrix::with_cols(4);
    m.push_row([(0, 1.0), (3, 2.0)]);
    m.push_row([]);
    m.push_row([(1, 5.0), (2, 1.0), (3, 7.0)]);
    let meta = StoreMeta {
        gene_names: vec!["A".into(), "B".into(), "C".into(), "D-1".into()],
        cell_names: vec!["c1".into(), "c2".into(), "c3".into()],
        obs: vec![
            (
                "batch".into(),
                ObsColumn::Categorical {
                    codes: vec![0, 1, -1],
                    categories: vec!["x".into(), "y".into()],
                },
            ),
            ("n".into(), ObsColumn::Integers(vec![3, -4, 5])),
            ("f".into(), ObsColumn::Floats(vec![0.5, f64::NAN, 2.0])),
            ("b".into(), ObsColumn::Bools(vec![true, false, true])),
            (
                "s".into(),
                ObsColumn::Strings(vec!["p".into(), "".into(), "résumé".into()]),
            ),
        ],
        var: vec![(
            "gene_ids".into(),
            vec!["E1".into(), "E2".into(), "E3".into(), "E4".into()],
        )],
        notes: vec!["hello".into()],
    };
    (m, meta)
}

fn write_small(dir: &Path) -> PathBuf {
    let (m, meta) = small();
    let p = dir.join("s.store");
    let mut w = StoreWriter::create(&p, 4, "test", false).unwrap();
    // Two chunks, the second a slice whose indptr does not start at 0 after select_rows.
    w.append(&m.select_rows(&[0])).unwrap();
    w.append(&m.select_rows(&[1, 2])).unwrap();
    w.finish(meta).unwrap();
    p
}

#[test]
fn round_trip_small() {
    let dir = tmpdir("rt");
    let p = write_small(&dir);
    let s = Store::open(&p).unwrap();
    let (m, meta) = small();
    assert_eq!((s.n_cells(), s.n_genes(), s.nnz()), (3, 4, 5));
    for i in 0..3 {
        assert_eq!(s.matrix().row(i), m.row(i));
    }
    assert_eq!(s.gene_names(), &meta.gene_names[..]);
    assert_eq!(s.cell_names(), &meta.cell_names[..]);
    assert_eq!(s.var(), &meta.var[..]);
    assert_eq!(s.obs().len(), 5);
    for ((n1, c1), (n2, c2)) in s.obs().iter().zip(&meta.obs) {
        assert_eq!(n1, n2);
        match (c1, c2) {
            (ObsColumn::Floats(a), ObsColumn::Floats(b)) => {
                assert!(a
                    .iter()
                    .zip(b)
                    .all(|(x, y)| x == y || (x.is_nan() && y.is_nan())))
            }
            _ => assert_eq!(c1, c2),
        }
    }
    let h = s.header();
    assert_eq!(h.version, 1);
    assert_eq!(h.values.n_empty_cells, 1);
    assert_eq!(h.values.total, 16.0);
    assert_eq!(h.values.max, 7.0);
    assert_eq!(h.notes, vec!["hello".to_string()]);
    s.verify().unwrap();
    let d = s.into_dataset();
    assert_eq!(d.counts.row_sum(2), 13.0);
    assert_eq!(d.n_genes(), 4);
    // No temporary directory left behind.
    let left = listing(&dir);
    assert_eq!(left.len(), 1, "{left:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn round_trip_simulated_and_explicit_zeros() {
    let dir = tmpdir("sim");
    // (2 batches and 5 cell types: the simulator's defaults.)
    let cfg = sim_config((3000, 200), 2, 5, 5);
    let d = simulate(&cfg);
    let p = dir.join("sim.store");
    let mut w = StoreWriter::create(&p, 200, "sim", false).unwrap();
    // Feed rows in uneven chunks, with an explicit zero added to each row, which the store drops.
    let all: Vec<usize> = (0..d.n_cells()).collect();
    for rows in all.chunks(777) {
        let mut c = CsrMatrix::with_cols(200);
        for &i in rows {
            let (j, v) = d.counts.row(i);
            let (mut j, mut v) = (j.to_vec(), v.to_vec());
            if j.last() != Some(&199) {
                j.push(199);
                v.push(0.0);
            }
            let row = CsrMatrix::from_parts(1, 200, vec![0, j.len() as u64], j, v).unwrap();
            c.append_rows(&row);
        }
        w.append(&c).unwrap();
    }
    w.finish(StoreMeta {
        gene_names: d.gene_names.clone(),
        cell_names: d.cell_names.clone(),
        obs: d.obs.clone(),
        ..Default::default()
    })
    .unwrap();
    let s = Store::open(&p).unwrap();
    assert_eq!(s.nnz(), d.counts.nnz());
    for i in 0..d.n_cells() {
        assert_eq!(s.matrix().row(i), d.counts.row(i), "row {i}");
    }
    assert_eq!(s.obs(), &d.obs[..]);
    s.verify().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

fn flip(path: &Path, at: usize) {
    let mut b = std::fs::read(path).unwrap();
    let at = at.min(b.len() - 1);
    b[at] ^= 0x01;
    std::fs::write(path, b).unwrap();
}

/// (what, how to damage the store, a word the error must contain).
type Damage = (&'static str, Box<dyn Fn(&Path)>, &'static str);

#[test]
fn corrupt_or_truncated_store_is_an_error() {
    let dir = tmpdir("corrupt");
    let cases: Vec<Damage> = vec![
        (
            "truncated data",
            Box::new(|p| {
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(p.join("data.f32"))
                    .unwrap();
                f.set_len(8).unwrap();
            }),
            "truncated",
        ),
        (
            "header edited",
            Box::new(|p| {
                let h = std::fs::read_to_string(p.join("header.json")).unwrap();
                std::fs::write(
                    p.join("header.json"),
                    h.replace("\"n_cells\": 3", "\"n_cells\": 2"),
                )
                .unwrap();
            }),
            "checksum",
        ),
        (
            "header bit flip",
            Box::new(|p| flip(&p.join("header.json"), 40)),
            "",
        ),
        (
            "meta bit flip",
            Box::new(|p| flip(&p.join("meta.bin"), 30)),
            "checksum",
        ),
        (
            "indptr bit flip",
            Box::new(|p| flip(&p.join("indptr.u64"), 9)),
            "checksum",
        ),
        (
            "missing file",
            Box::new(|p| std::fs::remove_file(p.join("indices.u32")).unwrap()),
            "indices.u32",
        ),
        (
            "header gone",
            Box::new(|p| std::fs::remove_file(p.join("header.json")).unwrap()),
            "header.json",
        ),
        (
            "empty header",
            Box::new(|p| std::fs::write(p.join("header.json"), "").unwrap()),
            "header",
        ),
    ];
    for (name, damage, msg) in cases {
        let p = write_small(&dir);
        Store::open(&p).unwrap();
        damage(&p);
        let e = match Store::open(&p) {
            Ok(_) => panic!("{name}: opened"),
            Err(e) => e.to_string(),
        };
        assert!(e.contains(msg), "{name}: {e}");
        std::fs::remove_dir_all(&p).unwrap();
    }
    // Data corruption inside indices/data is found by verify (O(nnz)), not at open.
    let p = write_small(&dir);
    flip(&p.join("data.f32"), 2);
    let s = Store::open(&p).unwrap();
    assert!(s.verify().unwrap_err().to_string().contains("checksum"));
    // Not a store at all.
    assert!(Store::open(&dir.join("nope")).is_err());
    std::fs::write(dir.join("file.store"), "x").unwrap();
    assert!(Store::open(&dir.join("file.store")).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Gene indices and values are not checked at open (that is O(nnz)): every read of a row checks
/// it, so a corrupted `indices.u32` or `data.f32` is an error naming the file and the row wherever
/// the rows are read (the loader, a conversion's passes, the library-size pass), never a panic.
#[test]
fn corrupt_rows_are_errors_naming_the_file_and_the_row() {
    use scvi_rs::train::{for_each_minibatch, Covariates};
    let dir = tmpdir("rows");
    // Entry 3 is the first value of row 2 (rows hold 2, 0 and 3 values).
    let cases: [(&str, &str, [u8; 4], &str); 6] = [
        (
            "gene out of range",
            "indices.u32",
            4u32.to_le_bytes(),
            "gene index 4",
        ),
        (
            "huge gene index",
            "indices.u32",
            u32::MAX.to_le_bytes(),
            "4294967295",
        ),
        ("NaN", "data.f32", f32::NAN.to_le_bytes(), "NaN"),
        ("negative", "data.f32", (-2f32).to_le_bytes(), "negative"),
        (
            "infinite",
            "data.f32",
            f32::INFINITY.to_le_bytes(),
            "infinite",
        ),
        ("above 10^9", "data.f32", 3e9f32.to_le_bytes(), "10^9"),
    ];
    for (name, file, bytes, word) in cases {
        let p = write_small(&dir);
        poke(&p, file, 3, bytes);
        let expect = |e: scvi_rs::Error| {
            let e = e.to_string();
            assert!(
                e.contains(file) && e.contains("row 2") && e.contains(word),
                "{name}: {e}"
            );
        };
        let s = Store::open(&p).unwrap();
        assert!(s.matrix().check_row(0).is_ok());
        expect(s.matrix().check_row(2).unwrap_err());
        expect(s.verify().unwrap_err());
        let data = s.into_dataset();
        let cov = Covariates {
            batch: &[],
            labels: &[],
        };
        let mut seen = 0;
        let r = for_each_minibatch(data.counts.as_ref(), &cov, &[0, 1, 2], 2, |_| {
            seen += 1;
            Ok(())
        });
        expect(r.unwrap_err());
        assert_eq!(seen, 1, "{name}: the minibatch before the bad row is used");
        let mut c = convert_args(&p, &dir.join("out.store"));
        c.opts.n_top_genes = Some(2);
        expect(run_convert(&c).unwrap_err());
        assert!(!dir.join("out.store").exists());
        std::fs::remove_dir_all(&p).unwrap();
    }
    // Unsorted indices: entry 4 (row 2's second) repeats entry 3's gene.
    let p = write_small(&dir);
    poke(&p, "indices.u32", 4, 1u32.to_le_bytes());
    let e = Store::open(&p).unwrap().matrix().check_row(2).unwrap_err();
    assert!(e.to_string().contains("must increase"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_rows_leave_no_store() {
    let dir = tmpdir("bad");
    let p = dir.join("bad.store");
    let count = |d: &Path| listing(d).len();

    // A temporary directory left by a killed conversion (no such process) is cleaned up.
    let stale = dir.join(".scvi-rs-tmp.999999999.0.bad.store");
    std::fs::create_dir_all(&stale).unwrap();
    let mut w = StoreWriter::create(&p, 3, "bad", false).unwrap();
    assert!(!stale.exists(), "stale temporary directory kept");
    let mut neg = CsrMatrix::with_cols(3);
    neg.push_row([(1, -2.0)]);
    let e = w.append(&neg).unwrap_err().to_string();
    assert!(e.contains("negative"), "{e}");
    drop(w);
    assert_eq!(count(&dir), 0, "temporary directory left behind");

    let mut w = StoreWriter::create(&p, 3, "bad", false).unwrap();
    let out_of_range = CsrMatrix {
        n_rows: 1,
        n_cols: 3,
        indptr: vec![0, 1],
        indices: vec![3],
        data: vec![1.0],
    };
    assert!(w.append(&out_of_range).is_err());
    let wrong_width = CsrMatrix::with_cols(5);
    assert!(w.append(&wrong_width).is_err());
    drop(w);
    assert_eq!(count(&dir), 0);

    // Empty matrix and all-zero matrix.
    let w = StoreWriter::create(&p, 3, "empty", false).unwrap();
    let e = w.finish(StoreMeta::default()).unwrap_err().to_string();
    assert!(e.contains("empty"), "{e}");
    let mut w = StoreWriter::create(&p, 3, "zeros", false).unwrap();
    let mut z = CsrMatrix::with_cols(3);
    z.push_row([]);
    w.append(&z).unwrap();
    assert!(w.finish(StoreMeta::default()).is_err());
    // Metadata sizes that do not match.
    let mut w = StoreWriter::create(&p, 3, "meta", false).unwrap();
    let mut one = CsrMatrix::with_cols(3);
    one.push_row([(0, 1.0)]);
    w.append(&one).unwrap();
    let e = w
        .finish(StoreMeta {
            gene_names: vec!["a".into()],
            cell_names: vec!["c".into()],
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
    assert!(e.contains("gene names"), "{e}");
    assert_eq!(count(&dir), 0);

    // Refuses to overwrite something that is not a store; replaces a store.
    std::fs::write(&p, "precious").unwrap();
    assert!(StoreWriter::create(&p, 3, "x", false).is_err());
    std::fs::remove_file(&p).unwrap();
    let s = write_small(&dir);
    let mut w = StoreWriter::create(&s, 3, "again", true).unwrap();
    w.append(&one).unwrap();
    w.finish(StoreMeta {
        gene_names: vec!["a".into(), "b".into(), "c".into()],
        cell_names: vec!["c".into()],
        ..Default::default()
    })
    .unwrap();
    assert_eq!(Store::open(&s).unwrap().n_cells(), 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

// ------------------------------------------------------------------------------------------------
// The data commands, end to end through their library functions.

use scvi_rs::data::hvg::highly_variable_genes_seurat_v3;
use scvi_rs::store::{convert, info_json, open_input, write_simulated, ConvertOptions, Written};

/// A conversion as the tests vary it: the input (with the layer to read) and the options.
struct Conversion {
    input: PathBuf,
    output: PathBuf,
    layer: Option<String>,
    opts: ConvertOptions,
}

fn convert_args(input: &Path, output: &Path) -> Conversion {
    Conversion {
        input: input.to_path_buf(),
        output: output.to_path_buf(),
        layer: None,
        opts: ConvertOptions {
            chunk_rows: Some(2),
            ..Default::default()
        },
    }
}

/// What `scvi-rs convert` does after checking its output: open the input, convert it.
fn run_convert(c: &Conversion) -> scvi_rs::Result<Written> {
    let input = open_input(&c.input, c.layer.as_deref())?;
    convert(&input, &c.output, &c.opts)
}

fn tenx(name: &str) -> PathBuf {
    fixture("tenx", name)
}

/// A simulated data set: sizes, batches, cell types, seed.
fn sim_config(size: (usize, usize), n_batches: usize, n_cell_types: usize, seed: u64) -> SimConfig {
    SimConfig {
        n_cells: size.0,
        n_genes: size.1,
        n_batches,
        n_cell_types,
        seed,
        ..SimConfig::default()
    }
}

#[test]
fn convert_mtx_with_gene_list() {
    let dir = tmpdir("genes");
    let list = dir.join("genes.txt");
    std::fs::write(&list, "# wanted\nGeneD\nENSG02\n\nGeneA-1\n").unwrap();
    let out = dir.join("x.store");
    let mut a = convert_args(&tenx("mtx_v3"), &out);
    a.opts.genes = Some(list.clone());
    run_convert(&a).unwrap();
    let s = Store::open(&out).unwrap();
    assert_eq!(s.gene_names(), ["GeneD", "GeneB", "GeneA-1"]);
    let ids = &s.var().iter().find(|(k, _)| k == "gene_ids").unwrap().1;
    assert_eq!(ids, &["ENSG05", "ENSG02", "ENSG03"]);
    // Cells x (GeneD, GeneB, GeneA-1), from the fixture's matrix.
    let want: [&[(u32, f32)]; 4] = [&[], &[(1, 2.0), (2, 3.0)], &[], &[(0, 7.0)]];
    for (i, w) in want.iter().enumerate() {
        let (j, v) = s.matrix().row(i);
        let got: Vec<(u32, f32)> = j.iter().copied().zip(v.iter().copied()).collect();
        assert_eq!(&got[..], *w, "row {i}");
    }
    s.verify().unwrap();
    // Genes that are not there are named.
    std::fs::write(&list, "GeneD\nNOPE1\nNOPE2\n").unwrap();
    a.opts.force = true;
    let e = run_convert(&a).unwrap_err().to_string();
    assert!(
        e.contains("NOPE1") && e.contains("NOPE2") && e.contains("2 of the 3"),
        "{e}"
    );
    // The earlier store is untouched by the failed conversion.
    assert_eq!(Store::open(&out).unwrap().n_genes(), 3);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn convert_10x_h5_and_store_to_store() {
    let dir = tmpdir("h5conv");
    let a = dir.join("a.store");
    run_convert(&convert_args(&tenx("v3.h5"), &a)).unwrap();
    let b = dir.join("b.store");
    run_convert(&convert_args(&a, &b)).unwrap();
    let (sa, sb) = (Store::open(&a).unwrap(), Store::open(&b).unwrap());
    assert_eq!(
        sa.gene_names(),
        ["GeneA", "GeneB", "GeneA-1", "GeneC", "GeneD"]
    );
    assert_eq!(sa.header().values.n_empty_cells, 1);
    assert_eq!(sb.gene_names(), sa.gene_names());
    assert_eq!(sb.var(), sa.var());
    for i in 0..4 {
        assert_eq!(sa.matrix().row(i), sb.matrix().row(i));
    }
    let v = info_json(&b, true).unwrap();
    assert_eq!(v["n_cells"], 4);
    assert_eq!(v["n_genes"], 5);
    assert_eq!(v["nnz"], 7);
    assert_eq!(v["format_version"], 1);
    assert_eq!(v["verified"], true);
    // --layer on a store is refused.
    let mut bad = convert_args(&a, &dir.join("c.store"));
    bad.layer = Some("counts".into());
    assert!(run_convert(&bad).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn simulate_then_convert_with_hvg_streams_like_in_memory() {
    let dir = tmpdir("hvgconv");
    let sim = dir.join("sim.store");
    let cfg = sim_config((3000, 400), 3, 4, 9);
    write_simulated(&cfg, &sim, false).unwrap();
    let v = info_json(&sim, false).unwrap();
    assert_eq!(v["n_cells"], 3000);
    let obs = v["obs"].as_array().unwrap();
    assert_eq!(obs[0]["name"], "batch");
    assert_eq!(obs[0]["categories"].as_array().unwrap().len(), 3);
    assert_eq!(obs[1]["name"], "cell_type");

    let out = dir.join("hvg.store");
    let mut a = convert_args(&sim, &out);
    a.opts.n_top_genes = Some(60);
    a.opts.hvg_batch_key = Some("batch".into());
    a.opts.chunk_rows = Some(257);
    run_convert(&a).unwrap();
    let s = Store::open(&out).unwrap();
    assert_eq!(s.n_genes(), 60);

    let d = Store::open(&sim).unwrap().into_dataset();
    let (codes, cats) = categorical(&d, "batch");
    let res =
        highly_variable_genes_seurat_v3(d.counts.as_ref(), Some((codes, cats.len())), 60).unwrap();
    let chosen = chosen_names(&d.gene_names, &res.highly_variable);
    let stored: Vec<&str> = s.gene_names().iter().map(|g| g.as_str()).collect();
    assert_eq!(stored, chosen, "streamed HVG differs from in-memory HVG");
    // The genes keep their original order and the counts are the original columns.
    let pos: std::collections::HashMap<&str, u32> = d
        .gene_names
        .iter()
        .enumerate()
        .map(|(i, g)| (g.as_str(), i as u32))
        .collect();
    for i in [0, 1234, 2999] {
        let (j, v) = s.matrix().row(i);
        let (j0, v0) = d.counts.row(i);
        for (&g, &x) in j.iter().zip(v) {
            let old = pos[s.gene_names()[g as usize].as_str()];
            let k = j0.iter().position(|&c| c == old).unwrap();
            assert_eq!(v0[k], x);
        }
    }
    // Unknown batch key, and .h5ad output of simulate.
    a.opts.force = true;
    a.opts.hvg_batch_key = Some("nope".into());
    assert!(run_convert(&a).unwrap_err().to_string().contains("nope"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn simulate_writes_h5ad_that_reads_back() {
    let dir = tmpdir("simh5ad");
    let p = dir.join("sim.h5ad");
    let cfg = sim_config((700, 150), 3, 4, 3);
    write_simulated(&cfg, &p, false).unwrap();
    let d = scvi_rs::data::h5ad::read_h5ad(&p, &Default::default()).unwrap();
    let want = simulate(&cfg);
    assert_eq!(d.gene_names, want.gene_names);
    assert_eq!(d.cell_names, want.cell_names);
    assert_eq!(d.obs, want.obs);
    assert_eq!(d.counts.nnz(), want.counts.nnz());
    for i in 0..700 {
        assert_eq!(d.counts.row(i), want.counts.row(i), "row {i}");
    }
    // And on to a store, through the h5ad path of convert.
    let s = dir.join("sim.store");
    run_convert(&convert_args(&p, &s)).unwrap();
    assert_eq!(Store::open(&s).unwrap().nnz(), want.counts.nnz());
    let left = listing(&dir);
    assert_eq!(left.len(), 2, "temporary files left: {left:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn convert_csc_dense_and_layer_h5ad() {
    // The h5ad reader's fixtures: a CSC X, a dense X, and a counts layer.
    let dir = tmpdir("cscconv");
    for (file, layer) in [
        ("csc.h5ad", None),
        ("dense.h5ad", None),
        ("layer_counts.h5ad", Some("counts")),
    ] {
        let p = fixture("h5ad", file);
        if !p.exists() {
            skip(&format!("{file} not found"));
            continue;
        }
        let want = scvi_rs::data::h5ad::read_h5ad(
            &p,
            &scvi_rs::data::h5ad::H5adOptions {
                layer: layer.map(str::to_string),
            },
        )
        .unwrap();
        let out = dir.join(format!("{file}.store"));
        let mut a = convert_args(&p, &out);
        a.layer = layer.map(str::to_string);
        a.opts.chunk_rows = None;
        run_convert(&a).unwrap();
        let s = Store::open(&out).unwrap();
        assert_eq!(s.n_cells(), want.n_cells(), "{file}");
        for i in 0..want.n_cells() {
            let (j, v) = want.counts.row(i);
            // The store drops explicit zeros.
            let kept: Vec<(u32, f32)> = j
                .iter()
                .copied()
                .zip(v.iter().copied())
                .filter(|p| p.1 != 0.0)
                .collect();
            let (sj, sv) = s.matrix().row(i);
            let got: Vec<(u32, f32)> = sj.iter().copied().zip(sv.iter().copied()).collect();
            assert_eq!(got, kept, "{file} row {i}");
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn convert_10x_to_h5ad() {
    let dir = tmpdir("toh5ad");
    let out = dir.join("pbmc.h5ad");
    run_convert(&convert_args(&tenx("v3.h5"), &out)).unwrap();
    let d = scvi_rs::data::h5ad::read_h5ad(&out, &Default::default()).unwrap();
    assert_eq!(
        d.gene_names,
        ["GeneA", "GeneB", "GeneA-1", "GeneC", "GeneD"]
    );
    assert_eq!(d.cell_names, ["AAAC-1", "AAAG-1", "AAAT-1", "AACA-1"]);
    assert_eq!(
        d.counts.row(3),
        (&[0u32, 3, 4][..], &[4.0f32, 1.0, 7.0][..])
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn convert_h5ad_matches_reader() {
    let Some(p) = shared_data("kang_ifnb_hvg2k.h5ad") else {
        return;
    };
    let dir = tmpdir("h5ad");
    let out = dir.join("kang.store");
    let mut a = convert_args(&p, &out);
    a.opts.chunk_rows = Some(4096);
    run_convert(&a).unwrap();
    let s = Store::open(&out).unwrap();
    let d = scvi_rs::data::h5ad::read_h5ad(&p, &Default::default()).unwrap();
    assert_eq!(s.n_cells(), d.n_cells());
    assert_eq!(s.nnz(), d.counts.nnz());
    assert_eq!(s.gene_names(), &d.gene_names[..]);
    assert_eq!(s.cell_names(), &d.cell_names[..]);
    assert_eq!(s.obs(), &d.obs[..]);
    for i in (0..d.n_cells()).step_by(97) {
        assert_eq!(s.matrix().row(i), d.counts.row(i));
    }
    let v = info_json(&out, false).unwrap();
    let stim = v["obs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "stim")
        .unwrap();
    assert_eq!(stim["categories"], serde_json::json!(["CTRL", "STIM"]));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Benchmarks, run by hand under `/usr/bin/time -v` (see BENCHMARKS.md):
/// `SCVI_BENCH_OUT=/tmp/sim.store SCVI_BENCH_CELLS=1000000 cargo test --release --test store bench_simulate -- --ignored --nocapture`
#[test]
#[ignore]
fn bench_simulate() {
    let out = PathBuf::from(std::env::var("SCVI_BENCH_OUT").expect("SCVI_BENCH_OUT"));
    let cells = std::env::var("SCVI_BENCH_CELLS")
        .map(|s| s.parse().unwrap())
        .unwrap_or(1_000_000);
    let cfg = sim_config((cells, 2000), 4, 8, 0);
    write_simulated(&cfg, &out, false).unwrap();
}

/// `SCVI_BENCH_IN=x.h5ad SCVI_BENCH_OUT=/tmp/x.store cargo test --release --test store bench_convert -- --ignored --nocapture`
#[test]
#[ignore]
fn bench_convert() {
    let input = PathBuf::from(std::env::var("SCVI_BENCH_IN").expect("SCVI_BENCH_IN"));
    let out = PathBuf::from(std::env::var("SCVI_BENCH_OUT").expect("SCVI_BENCH_OUT"));
    let mut a = convert_args(&input, &out);
    a.opts.chunk_rows = std::env::var("SCVI_BENCH_CHUNK")
        .ok()
        .map(|s| s.parse().unwrap());
    if let Ok(n) = std::env::var("SCVI_BENCH_HVG") {
        a.opts.n_top_genes = Some(n.parse().unwrap());
        a.opts.hvg_batch_key = std::env::var("SCVI_BENCH_HVG_KEY").ok();
    }
    run_convert(&a).unwrap();
}

/// `SCVI_BENCH_IN=/tmp/sim.store cargo test --release --test store bench_open -- --ignored --nocapture`
#[test]
#[ignore]
fn bench_open() {
    let p = PathBuf::from(std::env::var("SCVI_BENCH_IN").expect("SCVI_BENCH_IN"));
    let t = std::time::Instant::now();
    let s = Store::open(&p).unwrap();
    let open = t.elapsed().as_secs_f64();
    let t = std::time::Instant::now();
    s.verify().unwrap();
    eprintln!(
        "open {:.3} s ({} cells, {} non-zeros), verify {:.1} s",
        open,
        s.n_cells(),
        s.nnz(),
        t.elapsed().as_secs_f64()
    );
}
