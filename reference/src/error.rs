//! Error types of the model side of the crate (the kernel oracles panic on inconsistent
//! shapes, like the debug assertions of a kernel launcher, because they are test tools).

use thiserror::Error;

/// A problem with a model configuration (`config.json` or a preset).
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The text is not JSON, or not a JSON object.
    #[error("config is not a valid JSON object: {0}")]
    Json(String),
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Io {
        /// The path that was read.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A required field is absent (or `null`).
    #[error("config field `{0}` is missing")]
    Missing(String),
    /// A field has the wrong JSON type.
    #[error("config field `{field}` must be {expected}, got `{got}`")]
    WrongType {
        /// Field name (dotted for nested fields).
        field: String,
        /// What was expected.
        expected: &'static str,
        /// The value found.
        got: String,
    },
    /// A field's value is out of range or inconsistent with another field.
    #[error("config field `{field}` is invalid: {reason}")]
    Invalid {
        /// Field name.
        field: String,
        /// Why it is invalid.
        reason: String,
    },
    /// A valid configuration this reference does not implement.
    #[error("unsupported configuration: {0}")]
    Unsupported(String),
}

/// A problem building or running the reference model.
#[derive(Debug, Error)]
pub enum ModelError {
    /// Invalid configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A tensor the model needs is not in the checkpoint.
    #[error("tensor `{0}` is missing from the checkpoint")]
    MissingTensor(String),
    /// A tensor has the wrong shape.
    #[error("tensor `{name}`: expected shape {expected:?}, got {got:?}")]
    Shape {
        /// Tensor name.
        name: String,
        /// Expected shape.
        expected: Vec<usize>,
        /// Shape found.
        got: Vec<usize>,
    },
    /// A tensor has a dtype the model cannot use there.
    #[error("tensor `{name}`: expected dtype {expected}, got {got}")]
    Dtype {
        /// Tensor name.
        name: String,
        /// Expected dtype(s).
        expected: &'static str,
        /// Dtype found.
        got: String,
    },
    /// The safetensors container is malformed.
    #[error("safetensors: {0}")]
    Safetensors(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The path involved.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A token id is outside the vocabulary.
    #[error("token id {token} is outside the vocabulary of {vocab}")]
    Token {
        /// The token id.
        token: u32,
        /// Vocabulary size.
        vocab: usize,
    },
    /// The sequence does not fit: positions beyond the RoPE tables or pages beyond the
    /// block table or the cache.
    #[error("sequence capacity exceeded: {0}")]
    Capacity(String),
}
