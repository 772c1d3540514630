//! Outputs streamed back by builders without store credentials.
//!
//! A builder in `via-coordinator` mode sends each output's NAR as
//! [`NarChunk`]s (at most [`kiln_protocol::MAX_NAR_CHUNK`] bytes each, in
//! order, the last one marked) on the build-events queue, before the
//! build's result. The sink writes them to a file per (build, output),
//! refusing a chunk out of sequence, and hashes as it writes; when the
//! result arrives, the coordinator takes each file, checks its size and
//! hash against the result, and stores it.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use kiln_nix::hash::{Hash, HashAlgo, Hasher};
use kiln_protocol::{BuildId, NarChunk};

/// Most bytes one streamed output may have (a bound against a runaway or
/// hostile builder filling the coordinator's disk).
pub const MAX_STREAMED_NAR: u64 = 64 << 30;

struct Partial {
    path: PathBuf,
    file: File,
    size: u64,
    hasher: Hasher,
    complete: bool,
}

/// A streamed output, complete and checked against its own bytes.
#[derive(Debug)]
pub struct Received {
    pub file: PathBuf,
    pub size: u64,
    pub nar_hash: Hash,
}

/// Outputs being received, by build and output name.
pub struct NarSink {
    dir: PathBuf,
    partial: HashMap<(BuildId, String), Partial>,
}

impl NarSink {
    /// A sink writing under `dir` (created; left-overs of an earlier run
    /// are removed).
    pub fn new(dir: impl Into<PathBuf>) -> std::io::Result<Self> {
        let dir = dir.into();
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        Ok(NarSink {
            dir,
            partial: HashMap::new(),
        })
    }

    /// Where the sink writes.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Takes one chunk; an error names what is wrong, and the partial
    /// output is dropped (the build's result will then fail).
    pub fn chunk(&mut self, c: NarChunk) -> Result<(), String> {
        let key = (c.build_id, c.output.clone());
        if !self.partial.contains_key(&key) {
            if c.offset != 0 {
                return Err(format!(
                    "output '{}' of build {}: first chunk at offset {}",
                    c.output, c.build_id, c.offset
                ));
            }
            if c.output.is_empty() || c.output.contains('/') || c.output.len() > 64 {
                return Err(format!(
                    "build {}: bad output name '{}'",
                    c.build_id, c.output
                ));
            }
            let path = self.dir.join(format!("{}-{}.nar", c.build_id, c.output));
            let file =
                File::create(&path).map_err(|e| format!("creating '{}': {e}", path.display()))?;
            self.partial.insert(
                key.clone(),
                Partial {
                    path,
                    file,
                    size: 0,
                    hasher: Hasher::new(HashAlgo::Sha256),
                    complete: false,
                },
            );
        }
        let result = {
            let p = self.partial.get_mut(&key).expect("inserted");
            if p.complete {
                Err(format!(
                    "output '{}' of build {}: chunk after the last one",
                    c.output, c.build_id
                ))
            } else if c.offset != p.size {
                Err(format!(
                    "output '{}' of build {}: chunk at offset {}, expected {}",
                    c.output, c.build_id, c.offset, p.size
                ))
            } else if p.size + c.data.len() as u64 > MAX_STREAMED_NAR {
                Err(format!(
                    "output '{}' of build {}: more than {MAX_STREAMED_NAR} bytes",
                    c.output, c.build_id
                ))
            } else {
                p.file
                    .write_all(&c.data)
                    .map_err(|e| format!("writing '{}': {e}", p.path.display()))
                    .map(|()| {
                        p.hasher.update(&c.data);
                        p.size += c.data.len() as u64;
                        p.complete = c.last;
                    })
            }
        };
        if result.is_err() {
            self.discard_output(&key);
        }
        result
    }

    /// The complete output `name` of `build`, if it was streamed whole.
    pub fn take(&mut self, build: BuildId, name: &str) -> Option<Received> {
        let key = (build, name.to_string());
        let p = self.partial.remove(&key)?;
        if !p.complete {
            let _ = std::fs::remove_file(&p.path);
            return None;
        }
        drop(p.file);
        Some(Received {
            file: p.path,
            size: p.size,
            nar_hash: p.hasher.finish(),
        })
    }

    /// Whether any chunk of `build` arrived.
    pub fn has_build(&self, build: BuildId) -> bool {
        self.partial.keys().any(|(b, _)| *b == build)
    }

    /// Drops everything received for `build`.
    pub fn discard(&mut self, build: BuildId) {
        let keys: Vec<_> = self
            .partial
            .keys()
            .filter(|(b, _)| *b == build)
            .cloned()
            .collect();
        for k in keys {
            self.discard_output(&k);
        }
    }

    fn discard_output(&mut self, key: &(BuildId, String)) {
        if let Some(p) = self.partial.remove(key) {
            let _ = std::fs::remove_file(&p.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(build: BuildId, offset: u64, data: &[u8], last: bool) -> NarChunk {
        NarChunk {
            build_id: build,
            output: "out".into(),
            offset,
            data: data.to_vec(),
            last,
        }
    }

    #[test]
    fn sequenced_chunks_make_a_checked_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = NarSink::new(dir.path().join("nars")).unwrap();
        let b = uuid::Uuid::new_v4();
        sink.chunk(chunk(b, 0, b"hello ", false)).unwrap();
        sink.chunk(chunk(b, 6, b"world", true)).unwrap();
        let r = sink.take(b, "out").unwrap();
        assert_eq!(r.size, 11);
        assert_eq!(r.nar_hash, Hash::of(HashAlgo::Sha256, b"hello world"));
        assert_eq!(std::fs::read(&r.file).unwrap(), b"hello world");
    }

    #[test]
    fn gaps_repeats_and_unfinished_streams_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = NarSink::new(dir.path().join("nars")).unwrap();
        let b = uuid::Uuid::new_v4();
        sink.chunk(chunk(b, 0, b"abc", false)).unwrap();
        let err = sink.chunk(chunk(b, 7, b"x", false)).unwrap_err();
        assert!(err.contains("expected 3"), "{err}");
        assert!(sink.take(b, "out").is_none(), "a broken stream is dropped");
        let err = sink.chunk(chunk(b, 5, b"x", false)).unwrap_err();
        assert!(err.contains("first chunk at offset 5"), "{err}");
        sink.chunk(chunk(b, 0, b"abc", false)).unwrap();
        assert!(
            sink.take(b, "out").is_none(),
            "an unfinished stream is no output"
        );
    }
}
