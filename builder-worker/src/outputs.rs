//! After a successful builder run: check each output exists, canonicalise
//! it, serialise it to a NAR while hashing it and scanning it for references
//! (one pass), verify fixed-output hashes, refuse reference cycles between
//! outputs, and move the outputs out of the sandbox.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use kiln_nix::hash::{Hash, HashAlgo, Hasher};
use kiln_nix::nar::{dump_path, DumpError};
use kiln_nix::refscan::RefScanner;
use kiln_nix::store_path::StorePath;

use crate::canonicalise::{canonicalise, CanonicaliseError};
use crate::recipe::OutputRecipe;
use crate::rootfs::remove_tree;

/// Errors in a build's outputs, worded as Nix words them.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// An output was never written.
    #[error("builder for '{drv}' failed to produce output path for output '{output}' at '{path}'")]
    Missing {
        /// The derivation.
        drv: String,
        /// The output name.
        output: String,
        /// Where it was expected.
        path: PathBuf,
    },
    /// Outputs refer to each other in a cycle.
    #[error("cycle detected in build of '{drv}' in the references of output '{output}' from output '{from}'")]
    Cycle {
        /// The derivation.
        drv: String,
        /// The output reached again.
        output: String,
        /// The output referring to it.
        from: String,
    },
    /// A fixed-output hash does not match.
    #[error("hash mismatch in fixed-output derivation '{drv}':\n  specified: {specified}\n  got:       {got}")]
    HashMismatch {
        /// The derivation.
        drv: String,
        /// The declared hash (SRI).
        specified: String,
        /// The actual hash (SRI).
        got: String,
    },
    /// A flat fixed output that is not a plain file.
    #[error("output path '{path}' should be a non-executable regular file since recursive hashing is not enabled (outputHashMode=flat)")]
    NotFlat {
        /// The output path.
        path: String,
    },
    /// A fixed output referring to store paths.
    #[error("illegal path references in fixed-output derivation '{drv}' ({count} paths, e.g. '{example}')")]
    FixedOutputReferences {
        /// The derivation.
        drv: String,
        /// How many.
        count: usize,
        /// One of them.
        example: String,
    },
    /// An output or input path that is not a valid store path.
    #[error("{what} of '{drv}' has an invalid store path '{path}'")]
    BadPath {
        /// The derivation.
        drv: String,
        /// Which path (`output 'out'`, `an input`).
        what: String,
        /// The path.
        path: String,
    },
    /// Canonicalisation failed (including unsupported file types).
    #[error(transparent)]
    Canonicalise(#[from] CanonicaliseError),
    /// Serialisation failed.
    #[error(transparent)]
    Dump(#[from] DumpError),
    /// Moving or hashing failed.
    #[error("{action} '{path}'")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

/// One produced output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltOutput {
    /// Its store path.
    pub path: String,
    /// sha256 of its NAR serialisation.
    pub nar_hash: Hash,
    /// Size of its NAR serialisation.
    pub nar_size: u64,
    /// Store paths it refers to (inputs, other outputs, itself), sorted.
    pub references: BTreeSet<String>,
    /// Where its file tree now is on the host.
    pub location: PathBuf,
}

/// Everything [`finish`] needs.
#[derive(Debug, Clone)]
pub struct Job {
    /// The derivation (for messages).
    pub drv_path: String,
    /// The logical store directory (`/nix/store`).
    pub store_dir: String,
    /// The sandbox's store directory on the host.
    pub built_store: PathBuf,
    /// The outputs to collect.
    pub outputs: BTreeMap<String, OutputRecipe>,
    /// The input closure (candidates for references).
    pub inputs: BTreeSet<String>,
    /// Where outputs are moved.
    pub out_dir: PathBuf,
}

/// Writes to two sinks.
struct Tee<A, B>(A, B);

impl<A: Write, B: Write> Write for Tee<A, B> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write_all(buf)?;
        self.1.write_all(buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()?;
        self.1.flush()
    }
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> OutputError + 'a {
    move |source| OutputError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Hash of a flat file's contents.
fn flat_hash(path: &Path, algo: HashAlgo) -> Result<Hash, OutputError> {
    let mut f = File::open(path).map_err(io_err("opening", path))?;
    let mut h = Hasher::new(algo);
    io::copy(&mut f, &mut h).map_err(io_err("reading", path))?;
    Ok(h.finish())
}

/// Scans, hashes and checks the outputs, then moves them to `out_dir`.
pub fn finish(job: &Job) -> Result<BTreeMap<String, BuiltOutput>, OutputError> {
    let drv = &job.drv_path;
    // Candidates: the input closure and every output of this build, by
    // hash part.
    let mut candidates: BTreeMap<String, String> = BTreeMap::new();
    for p in job
        .inputs
        .iter()
        .chain(job.outputs.values().map(|o| &o.path))
    {
        let sp = StorePath::from_absolute_path(p).map_err(|_| OutputError::BadPath {
            drv: drv.clone(),
            what: "a reference candidate".into(),
            path: p.clone(),
        })?;
        candidates.insert(sp.hash_part(), p.clone());
    }
    let mut done: BTreeMap<String, (BuiltOutput, PathBuf)> = BTreeMap::new();
    for (name, out) in &job.outputs {
        let base = out.path.rsplit('/').next().unwrap_or_default();
        if base.is_empty() || !out.path.starts_with(&job.store_dir) {
            return Err(OutputError::BadPath {
                drv: drv.clone(),
                what: format!("output '{name}'"),
                path: out.path.clone(),
            });
        }
        let actual = job.built_store.join(base);
        if fs::symlink_metadata(&actual).is_err() {
            return Err(OutputError::Missing {
                drv: drv.clone(),
                output: name.clone(),
                path: actual,
            });
        }
        canonicalise(&actual)?;
        let mut scanner = RefScanner::new(candidates.keys()).map_err(|e| OutputError::Io {
            action: "scanning for references",
            path: actual.clone(),
            source: io::Error::other(e.to_string()),
        })?;
        let extra_algo = out
            .fixed
            .as_ref()
            .filter(|f| out.is_recursive() && f.hash.algo() != HashAlgo::Sha256)
            .map(|f| f.hash.algo());
        let mut extra = extra_algo.map(Hasher::new);
        let (_, digest) = {
            let sink = Tee(&mut scanner, ExtraHash(extra.as_mut()));
            dump_path(&actual, sink)?
        };
        let references: BTreeSet<String> = scanner
            .found()
            .iter()
            .filter_map(|h| candidates.get(h).cloned())
            .collect();
        if let Some(fixed) = &out.fixed {
            let got = if out.is_recursive() {
                match extra {
                    Some(h) => h.finish(),
                    None => digest.hash.clone(),
                }
            } else {
                let md = fs::symlink_metadata(&actual)
                    .map_err(io_err("reading metadata of", &actual))?;
                use std::os::unix::fs::PermissionsExt;
                if !md.is_file() || md.permissions().mode() & 0o100 != 0 {
                    return Err(OutputError::NotFlat {
                        path: out.path.clone(),
                    });
                }
                flat_hash(&actual, fixed.hash.algo())?
            };
            if got != fixed.hash {
                return Err(OutputError::HashMismatch {
                    drv: drv.clone(),
                    specified: fixed.hash.to_sri(),
                    got: got.to_sri(),
                });
            }
            let foreign: Vec<&String> = references.iter().filter(|r| **r != out.path).collect();
            if let Some(example) = foreign.first() {
                return Err(OutputError::FixedOutputReferences {
                    drv: drv.clone(),
                    count: foreign.len(),
                    example: (*example).clone(),
                });
            }
        }
        let built = BuiltOutput {
            path: out.path.clone(),
            nar_hash: digest.hash,
            nar_size: digest.size,
            references,
            location: PathBuf::new(),
        };
        done.insert(name.clone(), (built, actual));
    }
    check_cycles(drv, &job.outputs, &done)?;
    fs::create_dir_all(&job.out_dir).map_err(io_err("creating", &job.out_dir))?;
    let mut result = BTreeMap::new();
    for (name, (mut built, actual)) in done {
        let base = built.path.rsplit('/').next().unwrap_or_default();
        let dest = job.out_dir.join(base);
        remove_tree(&dest).map_err(io_err("removing old", &dest))?;
        move_path(&actual, &dest)?;
        built.location = dest;
        result.insert(name, built);
    }
    Ok(result)
}

/// An optional second hasher (for fixed outputs hashed with another algorithm).
struct ExtraHash<'a>(Option<&'a mut Hasher>);

impl Write for ExtraHash<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(h) = self.0.as_mut() {
            h.update(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Renames `src` to `dst`, making a read-only directory briefly writable so
/// its `..` entry can change (needed when not root).
fn move_path(src: &Path, dst: &Path) -> Result<(), OutputError> {
    use std::os::unix::fs::PermissionsExt;
    let md = fs::symlink_metadata(src).map_err(io_err("reading metadata of", src))?;
    let mode = md.permissions().mode();
    let fix = md.is_dir() && mode & 0o200 == 0 && unsafe { libc::geteuid() } != 0;
    if fix {
        fs::set_permissions(src, fs::Permissions::from_mode(mode | 0o200))
            .map_err(io_err("making writable", src))?;
    }
    fs::rename(src, dst).map_err(io_err("moving output to", dst))?;
    if fix {
        fs::set_permissions(dst, fs::Permissions::from_mode(mode))
            .map_err(io_err("restoring permissions of", dst))?;
    }
    Ok(())
}

/// Refuses reference cycles between outputs, reporting the first one found
/// by a depth-first walk in output-name order, as Nix's `topoSort` does.
fn check_cycles(
    drv: &str,
    outputs: &BTreeMap<String, OutputRecipe>,
    built: &BTreeMap<String, (BuiltOutput, PathBuf)>,
) -> Result<(), OutputError> {
    let by_path: BTreeMap<&str, &str> = outputs
        .iter()
        .map(|(n, o)| (o.path.as_str(), n.as_str()))
        .collect();
    let edges = |name: &str| -> Vec<&str> {
        built.get(name).map_or_else(Vec::new, |(b, _)| {
            let mut e: Vec<&str> = b
                .references
                .iter()
                .filter_map(|r| by_path.get(r.as_str()).copied())
                .filter(|n| *n != name)
                .collect();
            e.sort_unstable();
            e
        })
    };
    let mut visited: BTreeSet<&str> = BTreeSet::new();
    for start in outputs.keys() {
        if visited.contains(start.as_str()) {
            continue;
        }
        // Iterative DFS: (node, next edge index); `on_path` holds the stack.
        let mut stack: Vec<(&str, Vec<&str>, usize)> = vec![(start.as_str(), edges(start), 0)];
        let mut on_path: BTreeSet<&str> = [start.as_str()].into();
        while let Some((node, succ, i)) = stack.last_mut() {
            if *i < succ.len() {
                let next = succ[*i];
                *i += 1;
                let from = *node;
                if on_path.contains(next) {
                    return Err(OutputError::Cycle {
                        drv: drv.into(),
                        output: next.into(),
                        from: from.into(),
                    });
                }
                if visited.insert(next) {
                    on_path.insert(next);
                    stack.push((next, edges(next), 0));
                }
            } else {
                let n = *node;
                on_path.remove(n);
                visited.insert(n);
                stack.pop();
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUT: &str = "/nix/store/11111111111111111111111111111111-x";
    const DEV: &str = "/nix/store/22222222222222222222222222222222-x-dev";

    fn outputs() -> BTreeMap<String, OutputRecipe> {
        [("out", OUT), ("dev", DEV)]
            .iter()
            .map(|(n, p)| {
                (
                    n.to_string(),
                    OutputRecipe {
                        path: p.to_string(),
                        fixed: None,
                    },
                )
            })
            .collect()
    }

    fn built(refs: &[(&str, &[&str])]) -> BTreeMap<String, (BuiltOutput, PathBuf)> {
        refs.iter()
            .map(|(name, r)| {
                let b = BuiltOutput {
                    path: String::new(),
                    nar_hash: Hash::of(HashAlgo::Sha256, b""),
                    nar_size: 0,
                    references: r.iter().map(|s| s.to_string()).collect(),
                    location: PathBuf::new(),
                };
                (name.to_string(), (b, PathBuf::new()))
            })
            .collect()
    }

    #[test]
    fn cycle_between_outputs_is_reported_as_nix_does() {
        let b = built(&[("out", &[DEV, OUT]), ("dev", &[OUT])]);
        let err = check_cycles("/nix/store/d.drv", &outputs(), &b).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cycle detected in build of '/nix/store/d.drv' in the references of output 'dev' from output 'out'"
        );
    }

    #[test]
    fn self_and_one_way_references_are_fine() {
        let b = built(&[("out", &[DEV, OUT]), ("dev", &[DEV])]);
        check_cycles("/nix/store/d.drv", &outputs(), &b).unwrap();
    }
}
