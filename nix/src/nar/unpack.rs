//! placeholder
use thiserror::Error;
#[derive(Debug, Error)]
pub enum UnpackError { #[error("x")] X }
pub fn unpack() {}
