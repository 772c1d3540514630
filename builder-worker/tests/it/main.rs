//! The builder's integration tests, linked into one test binary: the
//! sandbox on its own, build control (timeouts, cancellation, limits), and
//! building as an ordinary user.

mod control;
mod sandbox;
mod unprivileged;
