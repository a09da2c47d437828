//! The library's error type. Every failure on user data ends up here, with the file and the field
//! named, so the binary can print it and exit non-zero. Nothing in the library panics on user data.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The operating system refused a file operation. The OS error is part of the message, not a
    /// `source`, so that a caller printing the chain of causes (anyhow's `{:#}`) says it once.
    #[error("{}: {}", path.display(), io_text(err))]
    Io { path: PathBuf, err: std::io::Error },
    /// A file is readable but not what was expected (not HDF5, a missing or ill-typed field, ...).
    #[error("{}: {msg}", path.display())]
    Format { path: PathBuf, msg: String },
    /// The values in the data break the model's assumptions (negative counts, NaN, empty cells, ...).
    #[error("{0}")]
    Data(String),
    /// Arrays whose sizes disagree.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// A configuration or command-line option that cannot be honoured.
    #[error("{0}")]
    Config(String),
    /// The machine lacks what the work needs (memory, disk space), said before the work starts.
    #[error("{0}")]
    Resource(String),
    /// The GPU engine: a missing driver or library, a bad device, out of memory, a kernel failure.
    #[error("CUDA: {0}")]
    Cuda(String),
    /// A stop was requested (Ctrl-C, SIGTERM; see `crate::interrupt`) and the work stopped at a
    /// safe point. `signal` is the signal's number (2 for SIGINT).
    #[error("interrupted")]
    Interrupted { signal: i32 },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An I/O error as a user reads it: the operating system's words without the `(os error N)` tail,
/// and words for an error made from a bare kind (whose own text, "entity not found", says little).
fn io_text(e: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    if e.raw_os_error().is_none() && e.get_ref().is_none() {
        let words = match e.kind() {
            K::NotFound => "no such file or directory",
            K::PermissionDenied => "permission denied",
            K::AlreadyExists => "already exists",
            K::UnexpectedEof => "the file ended early",
            _ => "",
        };
        if !words.is_empty() {
            return words.to_string();
        }
    }
    let s = e.to_string();
    let s = match s.rfind(" (os error ") {
        Some(at) if s.ends_with(')') => s[..at].to_string(),
        _ => s,
    };
    // The OS says "No such file or directory"; after a path and a colon it reads in lower case,
    // like the words above.
    let mut c = s.chars();
    match c.next() {
        Some(first) if c.clone().next().is_some_and(char::is_lowercase) => {
            first.to_lowercase().chain(c).collect()
        }
        _ => s,
    }
}

/// A lower layer's text without the labels it puts before its own ("decompression error: ...",
/// "I/O error: ..."), which would make a message say `error:` more than once when printed.
fn without_labels(msg: String) -> String {
    if !msg.contains("error: ") {
        return msg;
    }
    // The decompressor's own words repeat themselves ("DEFLATE decompression failed: deflate
    // decompression error"); what the user needs is that the stored bytes are damaged.
    if let Some(at) = msg.find("decompression error: ") {
        return format!(
            "{}compressed data is damaged (cannot be decompressed)",
            &msg[..at]
        );
    }
    msg.replace("I/O error: ", "").replace("error: ", "")
}

impl Error {
    /// The exit status a command line reports for this error: 128 + the signal for an
    /// interruption (130 for Ctrl-C), 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Interrupted { signal } => 128 + signal,
            _ => 1,
        }
    }
    pub fn io(path: impl AsRef<Path>, err: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            err,
        }
    }
    pub fn format(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::Format {
            path: path.as_ref().to_path_buf(),
            msg: without_labels(msg.into()),
        }
    }
}
