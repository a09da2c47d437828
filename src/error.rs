//! The library's error type. Every failure on user data ends up here, with the file and the field
//! named, so the binary can print it and exit non-zero. Nothing in the library panics on user data.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The operating system refused a file operation.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
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
    /// The GPU engine: a missing driver or library, a bad device, out of memory, a kernel failure.
    #[error("CUDA: {0}")]
    Cuda(String),
    /// A stop was requested (Ctrl-C, SIGTERM; see `crate::interrupt`) and the work stopped at a
    /// safe point. `signal` is the signal's number (2 for SIGINT).
    #[error("interrupted")]
    Interrupted { signal: i32 },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The exit status a command line reports for this error: 128 + the signal for an
    /// interruption (130 for Ctrl-C), 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Interrupted { signal } => 128 + signal,
            _ => 1,
        }
    }
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }
    pub fn format(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::Format {
            path: path.as_ref().to_path_buf(),
            msg: msg.into(),
        }
    }
}
