//! The gateway's Prometheus metrics, kept as plain atomic counters.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters exposed on `/metrics`.
#[derive(Debug, Default)]
pub struct Metrics {
    /// GET requests answered with content.
    pub gets: AtomicU64,
    /// HEAD requests.
    pub heads: AtomicU64,
    /// Requests for objects the cache does not have.
    pub not_found: AtomicU64,
    /// Requests refused as malformed or unauthorised.
    pub refused: AtomicU64,
    /// Uploads accepted.
    pub uploads_accepted: AtomicU64,
    /// Uploads refused after verification.
    pub uploads_rejected: AtomicU64,
    /// Bytes received in accepted uploads.
    pub bytes_uploaded: AtomicU64,
    /// Batch existence requests.
    pub exists_requests: AtomicU64,
    /// Paths asked about in batch existence requests.
    pub exists_paths: AtomicU64,
    /// Requests that failed inside the gateway or its backend.
    pub errors: AtomicU64,
}

impl Metrics {
    /// Adds one to a counter.
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Renders the counters in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let rows: [(&str, &str, &AtomicU64); 10] = [
            ("kiln_store_get_total", "GET requests served", &self.gets),
            ("kiln_store_head_total", "HEAD requests", &self.heads),
            (
                "kiln_store_not_found_total",
                "requests for missing objects",
                &self.not_found,
            ),
            (
                "kiln_store_refused_total",
                "malformed or unauthorised requests",
                &self.refused,
            ),
            (
                "kiln_store_uploads_accepted_total",
                "uploads accepted",
                &self.uploads_accepted,
            ),
            (
                "kiln_store_uploads_rejected_total",
                "uploads refused by verification",
                &self.uploads_rejected,
            ),
            (
                "kiln_store_uploaded_bytes_total",
                "bytes received in accepted uploads",
                &self.bytes_uploaded,
            ),
            (
                "kiln_store_exists_requests_total",
                "batch existence requests",
                &self.exists_requests,
            ),
            (
                "kiln_store_exists_paths_total",
                "paths in batch existence requests",
                &self.exists_paths,
            ),
            (
                "kiln_store_errors_total",
                "requests failed by the gateway or backend",
                &self.errors,
            ),
        ];
        for (name, help, v) in rows {
            // Writing to a String cannot fail.
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        Metrics::inc(&m.gets);
        Metrics::inc(&m.gets);
        let text = m.render();
        assert!(text.contains("# TYPE kiln_store_get_total counter\nkiln_store_get_total 2\n"));
        assert!(text.contains("kiln_store_errors_total 0\n"));
    }
}
