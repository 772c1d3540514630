//! Kiln's versioned messages between roles and the transports that carry them.
