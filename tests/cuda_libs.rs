//! Finding the CUDA libraries of CUDA 12 and 13 (src/cuda/libs): the search as a pure function over
//! fake installations laid out under a temporary root (toolkits, pip wheels of both layouts, the
//! driver's folders), and the real thing where the NVRTC wheels are installed: `scvi-rs doctor`
//! run once with CUDA 12's NVRTC and once with CUDA 13's (whose `libnvrtc.so.13` has no RUNPATH,
//! so its builtins must be loaded first) compiles every kernel with each.

mod common;

use common::files::tmpdir;
use common::gpu::{scvi_bin, skip};
use scvi_rs::cuda::libs::search::{self, Candidate, SearchDir, Source, Target};
use scvi_rs::cuda::libs::Lib;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Create `rel` (and its folders) under `root` as an empty file.
fn touch(root: &Path, rel: &str) -> PathBuf {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, b"").unwrap();
    p
}

fn link(root: &Path, rel: &str, to: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(to, &p).unwrap();
}

/// The distribution's library folder for this architecture, relative to the root.
fn arch_lib() -> String {
    format!("usr/lib/{}-linux-gnu", std::env::consts::ARCH)
}

/// A machine with two toolkits, a driver, a CUDA 13 wheel in a venv whose python is on PATH and a
/// CUDA 12 wheel in ~/.local, and the files that must never be picked (stubs, `.alt` builds,
/// CUDA 11).
fn fake_machine(root: &Path) {
    for f in [
        "usr/local/cuda-12.8/lib64/libnvrtc.so.12",
        "usr/local/cuda-12.8/lib64/libnvrtc.so.12.8.93",
        "usr/local/cuda-12.8/lib64/libnvrtc-builtins.so.12.8",
        "usr/local/cuda-12.8/lib64/libcublas.so.12",
        "usr/local/cuda-12.8/lib64/libcublasLt.so.12",
        "usr/local/cuda-13.0/lib64/libnvrtc.so.13",
        "usr/local/cuda-13.0/lib64/libnvrtc-builtins.so.13.0",
        "usr/local/cuda-13.0/lib64/stubs/libcuda.so",
        "usr/local/cuda-11.8/lib64/libnvrtc.so.11.2",
        "opt/torch/.venv/bin/python3",
        "opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib/libnvrtc.so.13",
        "opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib/libnvrtc.alt.so.13",
        "opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib/libnvrtc-builtins.so.13.0",
        "opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib/libnvrtc-builtins.alt.so.13.0",
        "opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib/libcublas.so.13",
        "opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib/libcublasLt.so.13",
        "home/u/.local/lib/python3.11/site-packages/nvidia/cuda_nvrtc/lib/libnvrtc.so.12",
        "home/u/.local/lib/python3.11/site-packages/nvidia/cuda_nvrtc/lib/libnvrtc-builtins.so.12.9",
        "home/u/.local/lib/python3.11/site-packages/nvidia/cublas/lib/libcublas.so.12",
        "home/u/.local/lib/python3.11/site-packages/nvidia/cublas/lib/libcublasLt.so.12",
    ] {
        touch(root, f);
    }
    touch(root, &format!("{}/libcuda.so.1", arch_lib()));
    link(
        root,
        "usr/local/cuda-12.8/lib64/libnvrtc.so",
        "libnvrtc.so.12",
    );
}

/// A fresh fake machine for test case `case`: its root and the folders searched there.
fn machine(case: &str) -> (PathBuf, Vec<SearchDir>) {
    let root = tmpdir("cuda_libs", case);
    fake_machine(&root);
    let dirs = search::search_dirs(&env(&root, &[]), &root);
    (root, dirs)
}

/// The environment of the fake machine: PATH holds the venv's bin, HOME is /home/u.
fn env(root: &Path, extra: &[(&str, String)]) -> impl Fn(&str) -> Option<String> {
    let mut m: HashMap<String, String> = HashMap::new();
    m.insert(
        "PATH".into(),
        format!(
            "/nonexistent:{}",
            root.join("opt/torch/.venv/bin").display()
        ),
    );
    m.insert("HOME".into(), root.join("home/u").display().to_string());
    for (k, v) in extra {
        m.insert(k.to_string(), v.clone());
    }
    move |k: &str| m.get(k).cloned()
}

fn rel(root: &Path, c: &Candidate) -> String {
    match &c.target {
        Target::Path(p) => p.strip_prefix(root).unwrap().display().to_string(),
        Target::Soname(s) => format!("name:{s}"),
    }
}

fn paths_only(root: &Path, c: &[Candidate]) -> Vec<String> {
    c.iter()
        .filter(|c| matches!(c.target, Target::Path(_)))
        .map(|c| rel(root, c))
        .collect()
}

#[test]
fn search_dirs_cover_toolkits_system_and_both_wheel_layouts_in_order() {
    let (root, dirs) = machine("dirs");
    let shown: Vec<(String, Source)> = dirs
        .iter()
        .map(|d| {
            let r = d.dir.strip_prefix(&root).unwrap().display().to_string();
            (r, d.source)
        })
        .collect();
    for (d, s) in &shown {
        println!("{d} ({s:?})");
    }
    let pos = |d: &str| {
        shown
            .iter()
            .position(|(x, _)| x == d)
            .unwrap_or_else(|| panic!("{d} not searched: {shown:?}"))
    };
    // Toolkits newest first, then the system's folders, then the wheels.
    assert!(pos("usr/local/cuda-13.0/lib64") < pos("usr/local/cuda-12.8/lib64"));
    assert!(pos("usr/local/cuda-12.8/lib64") < pos("usr/local/cuda-11.8/lib64"));
    assert!(pos("usr/local/cuda-11.8/lib64") < pos(&arch_lib()));
    let cu13 = pos("opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib");
    let cu12 = pos("home/u/.local/lib/python3.11/site-packages/nvidia/cuda_nvrtc/lib");
    pos("home/u/.local/lib/python3.11/site-packages/nvidia/cublas/lib");
    assert!(pos(&arch_lib()) < cu13.min(cu12));
    assert_eq!(shown[cu13].1, Source::PythonWheel);
    // Never a stubs folder (its libcuda.so is a link-time stub that cannot run anything).
    assert!(shown.iter().all(|(d, _)| !d.contains("stubs")));
    // No folder twice.
    let mut uniq = shown.clone();
    uniq.dedup();
    assert_eq!(uniq.len(), shown.len());
}

#[test]
fn nvrtc_of_the_drivers_major_comes_first_with_its_builtins() {
    let (root, dirs) = machine("nvrtc");

    // A CUDA 13 driver: the 13 toolkit, then the loader by name, ..., the 13 wheel; CUDA 11 never.
    let c13 = search::candidates(Lib::Nvrtc, &dirs, Some(13));
    let p13 = paths_only(&root, &c13);
    println!("driver 13: {p13:#?}");
    assert_eq!(p13[0], "usr/local/cuda-13.0/lib64/libnvrtc.so.13");
    assert_eq!(
        c13.iter()
            .find(|c| matches!(c.target, Target::Path(_)))
            .unwrap()
            .preload,
        vec![root.join("usr/local/cuda-13.0/lib64/libnvrtc-builtins.so.13.0")]
    );
    assert!(p13
        .iter()
        .all(|p| !p.contains(".alt.") && !p.contains("11.")));
    // One file per major and folder: the SONAME link, not the full version nor the dev link.
    assert!(!p13.iter().any(|p| p.ends_with("libnvrtc.so.12.8.93")));
    assert!(!p13
        .iter()
        .any(|p| p.ends_with("cuda-12.8/lib64/libnvrtc.so")));
    let wheel13 = c13
        .iter()
        .find(|c| rel(&root, c).contains("nvidia/cu13/lib/libnvrtc.so.13"))
        .expect("the CUDA 13 wheel is a candidate");
    assert_eq!(wheel13.source, Source::PythonWheel);
    assert_eq!(wheel13.preload.len(), 1, "{:?}", wheel13.preload);
    assert!(wheel13.preload[0].ends_with("libnvrtc-builtins.so.13.0"));
    // The names the loader is asked for, after the toolkits? No: by name comes before the
    // toolkit folders, as the loader's configuration is the machine's own choice.
    let first_name = c13
        .iter()
        .position(|c| matches!(c.target, Target::Soname(_)));
    let first_toolkit = c13.iter().position(|c| c.source == Source::Toolkit);
    assert!(first_name < first_toolkit, "{c13:#?}");
    assert_eq!(rel(&root, &c13[0]), "name:libnvrtc.so.13");

    // A CUDA 12 driver: CUDA 13 files go last, after every CUDA 12 one.
    let c12 = search::candidates(Lib::Nvrtc, &dirs, Some(12));
    let p12 = paths_only(&root, &c12);
    println!("driver 12: {p12:#?}");
    assert_eq!(p12[0], "usr/local/cuda-12.8/lib64/libnvrtc.so.12");
    let last12 = c12.iter().rposition(|c| c.major == Some(12)).unwrap();
    let first13 = c12.iter().position(|c| c.major == Some(13)).unwrap();
    assert!(last12 < first13, "{c12:#?}");

    // No driver (compiling kernels on a machine without a GPU): the newest major first.
    let none = search::candidates(Lib::Nvrtc, &dirs, None);
    assert_eq!(none[0].major, Some(13));
}

#[test]
fn the_users_folder_wins_and_an_unversioned_link_says_its_major() {
    let root = tmpdir("cuda_libs", "env");
    fake_machine(&root);
    let mine = root.join("home/u/.local/lib/python3.11/site-packages/nvidia/cuda_nvrtc/lib");
    let dirs = search::search_dirs(
        &env(
            &root,
            &[("SCVI_RS_CUDA_LIB_DIR", mine.display().to_string())],
        ),
        &root,
    );
    assert_eq!(
        dirs[0],
        SearchDir {
            dir: mine.clone(),
            source: Source::EnvVar
        }
    );
    // Even with a CUDA 13 driver, the user's CUDA 12 NVRTC is tried first (12 <= 13).
    let c = search::candidates(Lib::Nvrtc, &dirs, Some(13));
    assert_eq!(c[0].target, Target::Path(mine.join("libnvrtc.so.12")));
    assert_eq!(c[0].preload, vec![mine.join("libnvrtc-builtins.so.12.9")]);
    // A folder with only the development link: its target names the major.
    let solo = tmpdir("cuda_libs", "link");
    touch(&solo, "lib/libnvrtc.so.12");
    link(&solo, "lib/libnvrtc.so", "libnvrtc.so.12");
    std::fs::remove_file(solo.join("lib/libnvrtc.so.12")).unwrap();
    touch(&solo, "lib/libnvrtc.so.12.4.99");
    let d = [SearchDir {
        dir: solo.join("lib"),
        source: Source::EnvVar,
    }];
    let c = search::candidates(Lib::Nvrtc, &d, None);
    let paths: Vec<_> = c.iter().filter(|c| c.source == Source::EnvVar).collect();
    assert_eq!(paths.len(), 1, "{paths:#?}");
    assert_eq!(paths[0].major, Some(12));
    assert!(rel(&solo, paths[0]).ends_with("libnvrtc.so.12.4.99"));
}

#[test]
fn cublas_brings_its_lt_and_the_driver_is_never_a_stub() {
    let (root, dirs) = machine("cublas");
    let c = search::candidates(Lib::Cublas, &dirs, Some(13));
    let first = c
        .iter()
        .find(|c| matches!(c.target, Target::Path(_)))
        .unwrap();
    println!("{first:#?}");
    // The earlier source wins while its major is not newer than the driver's: the toolkit's
    // CUDA 12 cuBLAS before the CUDA 13 wheel.
    assert_eq!(
        rel(&root, first),
        "usr/local/cuda-12.8/lib64/libcublas.so.12"
    );
    assert!(first.preload[0].ends_with("cuda-12.8/lib64/libcublasLt.so.12"));
    let wheel = |suffix: &str| {
        c.iter()
            .find(|c| rel(&root, c).ends_with(suffix))
            .unwrap_or_else(|| panic!("{suffix} is a candidate: {c:#?}"))
    };
    let cu13 = wheel("nvidia/cu13/lib/libcublas.so.13");
    assert!(cu13.preload[0].ends_with("nvidia/cu13/lib/libcublasLt.so.13"));
    let cu12 = wheel("nvidia/cublas/lib/libcublas.so.12");
    assert!(cu12.preload[0].ends_with("nvidia/cublas/lib/libcublasLt.so.12"));

    let d = search::candidates(Lib::Driver, &dirs, None);
    let shown: Vec<String> = d.iter().map(|c| rel(&root, c)).collect();
    println!("{shown:?}");
    assert_eq!(shown[0], "name:libcuda.so.1");
    assert!(shown.contains(&format!("{}/libcuda.so.1", arch_lib())));
    assert!(shown
        .iter()
        .all(|s| !s.contains("stubs") && !s.ends_with("libcuda.so")));
}

/// The NVRTC folders of CUDA 12 and 13 that scripts/test.sh installed (scripts/ci/setup_nvrtc.sh),
/// or why this test skips (a failure under SCVI_RS_REQUIRE_NVRTC=1).
fn nvrtc_dir(var: &str, test: &str) -> Option<PathBuf> {
    match std::env::var(var) {
        Ok(d) if Path::new(&d).is_dir() => Some(PathBuf::from(d)),
        _ => {
            let why = format!("{var} is not set to a folder (scripts/test.sh sets it)");
            if std::env::var("SCVI_RS_REQUIRE_NVRTC").is_ok_and(|v| v == "1") {
                panic!("{test}: SCVI_RS_REQUIRE_NVRTC=1 but {why}");
            }
            skip(test, &why);
            None
        }
    }
}

/// `scvi-rs doctor --arch sm_90` with `dir` as the only library folder: the NVRTC it reports and
/// the kernel lines.
fn doctor_with(dir: &Path) -> (bool, String) {
    let out = std::process::Command::new(scvi_bin())
        .args(["doctor", "--arch", "sm_90"])
        .env("SCVI_RS_CUDA_LIB_DIR", dir)
        // The kernel cache would answer without compiling.
        .env("SCVI_RS_KERNEL_CACHE", tmpdir("cuda_libs", "kernel-cache"))
        .output()
        .expect("run scvi-rs doctor");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("{text}{}", String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn nvrtc_12_and_13_both_compile_every_kernel() {
    let test = "nvrtc_12_and_13_both_compile_every_kernel";
    for (var, major) in [("SCVI_RS_NVRTC12_DIR", 12), ("SCVI_RS_NVRTC13_DIR", 13)] {
        let Some(dir) = nvrtc_dir(var, test) else {
            continue;
        };
        let (ok, text) = doctor_with(&dir);
        assert!(ok, "doctor failed with {}", dir.display());
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with("libnvrtc "))
            .expect("a libnvrtc line");
        assert!(
            line.contains(&format!("libnvrtc.so.{major} from {}", dir.display())),
            "loaded from the given folder: {line}"
        );
        assert!(line.contains(&format!("NVRTC {major}.")), "{line}");
        assert!(line.contains("libnvrtc-builtins"), "builtins first: {line}");
        let compiled = text.lines().filter(|l| l.contains(" ok ")).count();
        let n_files = scvi_rs::cuda::kernels::KERNEL_FILES.len();
        assert!(
            compiled >= n_files,
            "every kernel compiled for sm_90: {text}"
        );
        assert!(!text.contains("FAILED"), "{text}");
    }
}
