//! 10x readers: Cell Ranger .h5 (v3 and v2) and MTX folders (gz and plain, unsorted entries), the
//! gene-expression filter, unique names, and bad folders. Fixtures: tests/fixtures/tenx (made by
//! scripts/fixtures/make_tenx_fixtures.py; the expected values are in its docstring, checked
//! against scanpy's read_10x_h5 / read_10x_mtx).

mod common;

use std::path::{Path, PathBuf};

use scvi_rs::data::tenx::{read_10x_h5, read_10x_mtx, TenxH5};
use scvi_rs::data::{CsrMatrix, SparseRows};
use scvi_rs::store::{detect_format, load_dataset, Input, InputFormat};

fn fixture(name: &str) -> PathBuf {
    common::files::fixture("tenx", name)
}

fn tmpdir(name: &str) -> PathBuf {
    common::files::tmpdir("tenx", name)
}

const EXPECTED: [[f32; 5]; 4] = [
    [1., 0., 0., 5., 0.],
    [0., 2., 3., 0., 0.],
    [0., 0., 0., 0., 0.],
    [4., 0., 0., 1., 7.],
];
const NAMES: [&str; 5] = ["GeneA", "GeneB", "GeneA-1", "GeneC", "GeneD"];
const BARCODES: [&str; 4] = ["AAAC-1", "AAAG-1", "AAAT-1", "AACA-1"];

fn dense(m: &dyn SparseRows) -> Vec<[f32; 5]> {
    (0..m.n_rows())
        .map(|i| {
            let mut r = [0f32; 5];
            let (j, v) = m.row(i);
            assert!(j.windows(2).all(|w| w[0] < w[1]), "row {i} not sorted");
            for (&g, &x) in j.iter().zip(v) {
                r[g as usize] = x;
            }
            r
        })
        .collect()
}

#[test]
fn h5_v3_like_scanpy() {
    let p = fixture("v3.h5");
    assert_eq!(detect_format(&p).unwrap(), InputFormat::TenxH5);
    let d = read_10x_h5(&p).unwrap();
    assert_eq!(d.gene_names, NAMES);
    assert_eq!(d.cell_names, BARCODES);
    assert_eq!(dense(d.counts.as_ref()), EXPECTED);
    let t = TenxH5::open(&p).unwrap();
    assert_eq!(
        t.genes.ids,
        ["ENSG01", "ENSG02", "ENSG03", "ENSG04", "ENSG05"]
    );
    assert_eq!(
        t.genes.names_original,
        ["GeneA", "GeneB", "GeneA", "GeneC", "GeneD"]
    );
    assert_eq!(t.genes.feature_types.as_ref().unwrap().len(), 5);
    // Chunks of one row give the same matrix.
    let mut rows = Vec::new();
    t.for_each_row_chunk(1, |first, c| {
        assert_eq!(first, rows.len());
        rows.extend(dense(&c));
        Ok(())
    })
    .unwrap();
    assert_eq!(rows, EXPECTED);
}

#[test]
fn h5_v2_genome_group() {
    let d = read_10x_h5(&fixture("v2.h5")).unwrap();
    assert_eq!(d.gene_names, NAMES);
    assert_eq!(dense(d.counts.as_ref()), EXPECTED);
}

#[test]
fn mtx_folders_gz_and_plain() {
    for dir in ["mtx_v3", "mtx_v2"] {
        let p = fixture(dir);
        assert_eq!(detect_format(&p).unwrap(), InputFormat::TenxMtx);
        let m = read_10x_mtx(&p).unwrap();
        assert_eq!(m.genes.names, NAMES, "{dir}");
        assert_eq!(m.barcodes, BARCODES);
        assert_eq!(dense(&m.counts), EXPECTED, "{dir}");
        let d = load_dataset(&p, None).unwrap();
        assert_eq!(d.n_cells(), 4);
        let input = Input::open(&p, None).unwrap();
        let var: Vec<&str> = input.meta.var.iter().map(|(k, _)| k.as_str()).collect();
        assert!(
            var.contains(&"gene_ids") && var.contains(&"gene_names_original"),
            "{var:?}"
        );
    }
    // --layer is for .h5ad only.
    assert!(Input::open(&fixture("mtx_v3"), Some("counts")).is_err());
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn err_of(p: &Path) -> String {
    match read_10x_mtx(p) {
        Ok(_) => panic!("{} read without error", p.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_mtx_folders_are_clear_errors() {
    let base = tmpdir("bad");
    let src = fixture("mtx_v2");

    let d = base.join("missing_barcodes");
    copy_dir(&src, &d);
    std::fs::remove_file(d.join("barcodes.tsv")).unwrap();
    assert!(err_of(&d).contains("barcodes.tsv"));

    let d = base.join("missing_matrix");
    copy_dir(&src, &d);
    std::fs::remove_file(d.join("matrix.mtx")).unwrap();
    assert!(err_of(&d).contains("matrix.mtx"));
    assert!(detect_format(&d).is_err());

    let d = base.join("extra_barcode");
    copy_dir(&src, &d);
    std::fs::write(d.join("barcodes.tsv"), "A\nB\nC\nD\nE\n").unwrap();
    let e = err_of(&d);
    assert!(e.contains("5 cells") && e.contains("4 columns"), "{e}");

    let d = base.join("fewer_genes");
    copy_dir(&src, &d);
    std::fs::write(d.join("genes.tsv"), "E1\tA\nE2\tB\n").unwrap();
    let e = err_of(&d);
    assert!(e.contains("2 genes") && e.contains("5 rows"), "{e}");

    let mtx = std::fs::read_to_string(src.join("matrix.mtx")).unwrap();
    let d = base.join("out_of_range");
    copy_dir(&src, &d);
    std::fs::write(
        d.join("matrix.mtx"),
        mtx.replacen("\n5 4 7\n", "\n5 4 8\n", 1) + "6 1 1\n",
    )
    .unwrap();
    let e = err_of(&d);
    assert!(e.contains("outside") && e.contains("(6, 1)"), "{e}");

    let d = base.join("truncated");
    copy_dir(&src, &d);
    let cut: Vec<&str> = mtx.lines().collect();
    std::fs::write(d.join("matrix.mtx"), cut[..cut.len() - 2].join("\n")).unwrap();
    let e = err_of(&d);
    assert!(e.contains("announces"), "{e}");

    let d = base.join("not_mtx");
    copy_dir(&src, &d);
    std::fs::write(d.join("matrix.mtx"), "hello\n").unwrap();
    assert!(err_of(&d).contains("MatrixMarket"));

    let d = base.join("negative");
    copy_dir(&src, &d);
    std::fs::write(d.join("matrix.mtx"), mtx.replacen(" 7\n", " -7\n", 1)).unwrap();
    // The reader takes the number; the value checks of load/convert reject it.
    let e = load_dataset(&d, None)
        .err()
        .expect("negative count accepted")
        .to_string();
    assert!(e.contains("negative"), "{e}");

    let d = base.join("empty");
    copy_dir(&src, &d);
    std::fs::write(
        d.join("matrix.mtx"),
        "%%MatrixMarket matrix coordinate integer general\n5 0 0\n",
    )
    .unwrap();
    std::fs::write(d.join("barcodes.tsv"), "").unwrap();
    let e = Input::open(&d, None)
        .err()
        .expect("empty matrix accepted")
        .to_string();
    assert!(e.contains("empty"), "{e}");
    std::fs::remove_dir_all(&base).unwrap();
}

#[test]
fn truncated_h5_is_an_error() {
    let base = tmpdir("h5");
    let bytes = std::fs::read(fixture("v3.h5")).unwrap();
    let p = base.join("cut.h5");
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    assert!(TenxH5::open(&p).is_err() || read_10x_h5(&p).is_err());
    std::fs::remove_dir_all(&base).unwrap();
}

#[test]
fn sorted_chunks_are_valid_csr() {
    // Every chunk a reader hands out must pass the CSR structure check.
    let t = TenxH5::open(&fixture("v3.h5")).unwrap();
    t.for_each_row_chunk(3, |_, c: CsrMatrix| c.validate_structure())
        .unwrap();
}

#[test]
fn inputs_are_told_apart_by_content_not_name() {
    let base = tmpdir("content");
    let h5_named_h5ad = base.join("cells.h5ad");
    std::fs::copy(fixture("v3.h5"), &h5_named_h5ad).unwrap();
    assert_eq!(detect_format(&h5_named_h5ad).unwrap(), InputFormat::TenxH5);
    assert_eq!(load_dataset(&h5_named_h5ad, None).unwrap().n_cells(), 4);
    let h5ad_named_h5 = base.join("cells.h5");
    std::fs::copy(common::files::fixture("h5ad", "csc.h5ad"), &h5ad_named_h5).unwrap();
    assert_eq!(detect_format(&h5ad_named_h5).unwrap(), InputFormat::H5ad);
    assert_eq!(load_dataset(&h5ad_named_h5, None).unwrap().n_cells(), 7);
    let e = detect_format(&common::files::fixture("h5ad", "not_hdf5.h5ad"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("not an HDF5 file") && e.contains("10x"), "{e}");
    std::fs::remove_dir_all(&base).unwrap();
}
