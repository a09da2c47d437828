//! The core's errors as Python exceptions, with the command line's message: a missing file is a
//! `FileNotFoundError`, a missing obs column or layer a `KeyError`, bad values and options a
//! `ValueError`, the GPU and too little memory or disk a `RuntimeError`, an interruption a `KeyboardInterrupt`.

use pyo3::exceptions::{
    PyFileNotFoundError, PyKeyError, PyKeyboardInterrupt, PyOSError, PyRuntimeError, PyValueError,
};
use pyo3::PyErr;
use scvi_rs::Error;

pub fn to_py(e: Error) -> PyErr {
    let msg = e.to_string();
    match &e {
        Error::Io { err, .. } if err.kind() == std::io::ErrorKind::NotFound => {
            PyFileNotFoundError::new_err(msg)
        }
        Error::Io { .. } => PyOSError::new_err(msg),
        // The readers' "obs has no column 'x'" and "no layer 'x'": a missing key.
        Error::Data(m) | Error::Format { msg: m, .. }
            if m.contains("has no column") || m.contains("no layer") =>
        {
            PyKeyError::new_err(msg)
        }
        Error::Format { .. } | Error::Data(_) | Error::Shape(_) | Error::Config(_) => {
            PyValueError::new_err(msg)
        }
        // Not enough memory or disk for what the input asks: Python's MemoryError would suggest
        // the interpreter ran out; the work was refused before it started.
        Error::Resource(_) | Error::Cuda(_) => PyRuntimeError::new_err(msg),
        Error::Interrupted { .. } => PyKeyboardInterrupt::new_err(msg),
    }
}
