//! The memory-mapped store: round trip, integrity checks at open, atomic writes, bad input.

use std::path::{Path, PathBuf};

use scvi_rs::data::simulate::{simulate, SimConfig};
use scvi_rs::data::{CsrMatrix, ObsColumn, SparseRows};
use scvi_rs::store::{Store, StoreMeta, StoreWriter};

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("scvi-rs-test-store-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
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
    let mut w = StoreWriter::create(&p, 4, "test").unwrap();
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
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 1, "{left:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn round_trip_simulated_and_explicit_zeros() {
    let dir = tmpdir("sim");
    let cfg = SimConfig {
        n_cells: 3000,
        n_genes: 200,
        seed: 5,
        ..SimConfig::default()
    };
    let d = simulate(&cfg);
    let p = dir.join("sim.store");
    let mut w = StoreWriter::create(&p, 200, "sim").unwrap();
    // Feed rows in uneven chunks, with an explicit zero added to each row, which the store drops.
    let all: Vec<usize> = (0..d.n_cells()).collect();
    for rows in all.chunks(777) {
        let mut c = CsrMatrix::with_cols(200);
        for &i in rows {
            let (j, v) = d.counts.row(i);
            let mut e: Vec<(u32, f32)> = j.iter().copied().zip(v.iter().copied()).collect();
            if !e.iter().any(|x| x.0 == 199) {
                e.push((199, 0.0));
            }
            c.indices.extend(e.iter().map(|x| x.0));
            c.data.extend(e.iter().map(|x| x.1));
            c.indptr.push(c.indices.len() as u64);
            c.n_rows += 1;
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

#[test]
fn corrupt_or_truncated_store_is_an_error() {
    let dir = tmpdir("corrupt");
    let cases: Vec<(&str, Box<dyn Fn(&Path)>, &str)> = vec![
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

#[test]
fn bad_rows_leave_no_store() {
    let dir = tmpdir("bad");
    let p = dir.join("bad.store");
    let count = |d: &Path| std::fs::read_dir(d).unwrap().count();

    let mut w = StoreWriter::create(&p, 3, "bad").unwrap();
    let mut neg = CsrMatrix::with_cols(3);
    neg.push_row([(1, -2.0)]);
    let e = w.append(&neg).unwrap_err().to_string();
    assert!(e.contains("negative"), "{e}");
    drop(w);
    assert_eq!(count(&dir), 0, "temporary directory left behind");

    let mut w = StoreWriter::create(&p, 3, "bad").unwrap();
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
    let w = StoreWriter::create(&p, 3, "empty").unwrap();
    let e = w.finish(StoreMeta::default()).unwrap_err().to_string();
    assert!(e.contains("empty"), "{e}");
    let mut w = StoreWriter::create(&p, 3, "zeros").unwrap();
    let mut z = CsrMatrix::with_cols(3);
    z.push_row([]);
    w.append(&z).unwrap();
    assert!(w.finish(StoreMeta::default()).is_err());
    // Metadata sizes that do not match.
    let mut w = StoreWriter::create(&p, 3, "meta").unwrap();
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
    assert!(StoreWriter::create(&p, 3, "x").is_err());
    std::fs::remove_file(&p).unwrap();
    let s = write_small(&dir);
    let mut w = StoreWriter::create(&s, 3, "again").unwrap();
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
