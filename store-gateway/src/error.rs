//! The store's error type: every failure names the store, key or path involved.

use std::path::PathBuf;

use thiserror::Error;

use crate::key::KeyError;

/// What went wrong in a store operation.
#[derive(Debug, Error)]
pub enum StoreError {
    /// A key or store path was malformed.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// A store URL could not be understood.
    #[error("bad store URL '{url}': {reason}")]
    BadUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Local file system I/O failed.
    // The OS error is part of the message (most callers print only that)
    // and so not also a `source`, which would print it twice in a chain.
    #[error("{op} '{path}': {cause}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        cause: std::io::Error,
    },
    /// Reading or writing a stream failed.
    #[error("{context}: {cause}")]
    Stream {
        /// What was being streamed.
        context: String,
        /// The underlying error.
        cause: std::io::Error,
    },
    /// The S3 server refused or failed a request.
    #[error("S3 {op} of '{key}' in bucket '{bucket}': {message}")]
    S3 {
        /// The S3 operation.
        op: &'static str,
        /// The bucket.
        bucket: String,
        /// The object key (with prefix).
        key: String,
        /// The server's or SDK's message.
        message: String,
    },
    /// An HTTP request to a remote cache failed.
    #[error("HTTP {method} {url}: {message}")]
    Http {
        /// The method.
        method: &'static str,
        /// The full URL.
        url: String,
        /// Status or transport error.
        message: String,
    },
    /// The store cannot be written (a plain HTTP cache without a token).
    #[error("store '{store}' is read-only")]
    ReadOnly {
        /// The store's URL.
        store: String,
    },
    /// A path's narinfo exists already: a path is written once.
    #[error("path '{path}' is already in store '{store}' (a path is written once)")]
    Exists {
        /// The store's URL.
        store: String,
        /// The store path.
        path: String,
    },
    /// A narinfo or nix-cache-info was malformed.
    #[error("malformed {key} in '{store}': {message}")]
    Malformed {
        /// The store's URL.
        store: String,
        /// The object.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A store path is not in the store.
    #[error("path '{path}' is not in store '{store}'")]
    NotFound {
        /// The store's URL.
        store: String,
        /// The missing store path.
        path: String,
    },
    /// Downloaded or uploaded data did not match its narinfo.
    #[error("{what} mismatch for '{path}': expected {expected}, got {got}")]
    Mismatch {
        /// `NAR hash`, `NAR size`, `file hash` or `file size`.
        what: &'static str,
        /// The store path or key.
        path: String,
        /// What the narinfo says.
        expected: String,
        /// What was actually received.
        got: String,
    },
    /// No trusted key signed a path.
    #[error("path '{path}' has no signature by a trusted key")]
    Untrusted {
        /// The store path.
        path: String,
    },
    /// A Nix format error from `kiln-nix`.
    #[error("{context}: {message}")]
    Format {
        /// Where it happened.
        context: String,
        /// The format error.
        message: String,
    },
}

impl StoreError {
    /// Wraps an I/O error on a local file.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StoreError::Io {
            op,
            path: path.into(),
            cause: source,
        }
    }

    /// Wraps an I/O error on a stream.
    pub fn stream(context: impl Into<String>, source: std::io::Error) -> Self {
        StoreError::Stream {
            context: context.into(),
            cause: source,
        }
    }
}

/// Shorthand for store results.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
