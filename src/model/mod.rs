//! The model: its configuration, the flat parameter buffer with named views, initialisation, and
//! saving and loading under scvi-tools' `state_dict` names.

pub mod config;
pub mod init;
pub mod io;
pub mod layout;
pub mod pickle;
pub mod scvi_tools;
pub mod torch_file;

pub use config::{
    Dispersion, GeneLikelihood, LatentDistribution, ModelConfig, NormPlacement, Precision,
};
pub use layout::{Layout, Tensor};
