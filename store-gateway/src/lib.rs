//! Kiln's store: a Nix binary cache on local disk or S3, and the HTTP gateway that serves it.
