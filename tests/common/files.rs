//! Files for the tests: committed fixtures, scratch folders, and the shared data sets that sit
//! beside the checkout (`../shared/data`), whose tests skip with a printed reason when absent.

use std::io::Write;
use std::path::{Path, PathBuf};

/// `tests/fixtures/<dir>/<name>`.
pub fn fixture(dir: &str, name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(dir)
        .join(name)
}

/// A fresh, empty scratch folder for test `test`, case `name` (one per process).
pub fn tmpdir(test: &str, name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("scvi-rs-test-{test}-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Say on stderr why a test does not run (`skipped: ...`), past the test harness's capture.
pub fn skip(why: &str) {
    let _ = writeln!(std::io::stderr(), "skipped: {why}");
}

/// A shared data set (`../shared/data/<name>`), or None after saying that it is absent.
pub fn shared_data(name: &str) -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data")
        .join(name);
    if p.exists() {
        return Some(p);
    }
    skip(&format!(
        "{} is absent (the shared data sets are not beside this checkout)",
        p.display()
    ));
    None
}

/// The names of the entries of `dir`.
pub fn listing(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect()
}

/// Overwrite the `k`-th 4-byte entry of a store's matrix file `file` with `bytes` (a store damaged
/// after it was written).
pub fn poke(store: &Path, file: &str, k: usize, bytes: [u8; 4]) {
    let p = store.join(file);
    let mut b = std::fs::read(&p).unwrap();
    b[k * 4..k * 4 + 4].copy_from_slice(&bytes);
    std::fs::write(p, b).unwrap();
}
