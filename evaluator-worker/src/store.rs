//! The store boundary: everything evaluation writes to a store goes through
//! [`Store`]; derivation outputs needed during evaluation come from a
//! [`Realiser`]; instantiated derivations are streamed to a [`DerivationSink`].
//!
//! Store paths, NAR serialisation and hashing all come from `kiln_nix`; this
//! module only decides where (if anywhere) the bytes go. Two implementations
//! are here: [`MemStore`] (paths only, nothing written to disk) and
//! [`DirStore`] (a real directory standing in for `/nix/store`).

use kiln_nix::hash::HashAlgo;
use kiln_nix::nar::{self, DumpError};
use kiln_nix::store_path::{
    compute_text_path, make_source_path, validate_name, StorePath, StorePathError, STORE_DIR,
};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Errors at the store boundary.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Serialising a source path failed.
    #[error("adding '{path}' to the store: {source}")]
    Dump {
        /// The path being added.
        path: String,
        /// The cause.
        source: DumpError,
    },
    /// A store path could not be formed (bad name, …).
    #[error("store path for '{name}': {source}")]
    Path {
        /// The name of the object.
        name: String,
        /// The cause.
        source: StorePathError,
    },
    /// Writing into a [`DirStore`] failed.
    #[error("writing '{path}': {source}")]
    Io {
        /// The file written.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Unpacking a serialised source into a [`DirStore`] failed.
    #[error("unpacking into '{path}': {source}")]
    Unpack {
        /// The destination.
        path: String,
        /// The cause.
        source: nar::UnpackError,
    },
    /// The realiser could not build an output.
    #[error("cannot realise '{0}': {1}")]
    Realise(String, String),
    /// Uploading an added path to Kiln's store failed.
    #[error("uploading '{path}' to the store: {message}")]
    Upload {
        /// The store path.
        path: String,
        /// What went wrong.
        message: String,
    },
}

/// Decides which entries below a path added with a filter are kept: called
/// with each entry's full path and file type (the root is always kept).
pub type PathFilter<'a> = dyn FnMut(&Path, fs::FileType) -> bool + 'a;

/// Where copied sources, `toFile` texts and `.drv` files are written.
pub trait Store {
    /// The store directory (`/nix/store`).
    fn store_dir(&self) -> &str {
        STORE_DIR
    }
    /// Copy `path` (file, directory or symlink) into the store as `name`
    /// (recursive/NAR hashing, type `source`) and return its store path.
    fn add_path(
        &self,
        path: &Path,
        name: &str,
        filter: Option<&mut PathFilter<'_>>,
    ) -> Result<StorePath, StoreError>;
    /// Copy the regular file `path` into the store as `name` the way
    /// `builtins.path { recursive = false; }` does: a flat fixed-output
    /// path, named by the SHA-256 of the file's bytes (not of its NAR).
    fn add_flat(&self, path: &Path, name: &str) -> Result<StorePath, StoreError>;
    /// Write a text file (`toFile`, `.drv`) with the given references and
    /// return its store path.
    fn add_text(
        &self,
        name: &str,
        text: &str,
        refs: &BTreeSet<StorePath>,
    ) -> Result<StorePath, StoreError>;
    /// Where the contents of `path` can be read on this machine, if this
    /// store holds them (`readFile` of a `toFile` result, `import` of a
    /// `.drv`'s sibling…). `None` means the path is read where it is named.
    fn real_path(&self, path: &StorePath) -> Option<PathBuf>;
}

/// Builds derivation outputs when evaluation reads them (import from derivation).
pub trait Realiser {
    /// Build `drv_path` so that `outputs` exist; return their real filesystem locations.
    fn realise(&self, drv_path: &str, outputs: &[String]) -> Result<Vec<PathBuf>, StoreError>;
}

/// Receives each derivation as soon as it is instantiated.
pub trait DerivationSink {
    /// `drv_path` was written with ATerm text `aterm`.
    fn derivation(&self, drv_path: &str, aterm: &str);
}

fn dump_err(path: &Path) -> impl FnOnce(DumpError) -> StoreError + '_ {
    move |source| StoreError::Dump {
        path: path.display().to_string(),
        source,
    }
}

fn path_err(name: &str) -> impl FnOnce(StorePathError) -> StoreError + '_ {
    move |source| StoreError::Path {
        name: name.to_string(),
        source,
    }
}

/// The `source` store path of `path` (NAR-hashed, optionally filtered), as
/// Nix's `addToStore` computes it, without writing anything.
pub fn source_path(
    path: &Path,
    name: &str,
    filter: Option<&mut PathFilter<'_>>,
) -> Result<StorePath, StoreError> {
    let mut all = |_: &Path, _: fs::FileType| true;
    let filter: &mut PathFilter<'_> = match filter {
        Some(f) => f,
        None => &mut all,
    };
    let (_, digest) = nar::dump_path_filtered(path, std::io::sink(), HashAlgo::Sha256, filter)
        .map_err(dump_err(path))?;
    make_source_path(name, &digest.hash, &BTreeSet::new(), false).map_err(path_err(name))
}

/// The flat fixed-output store path of the regular file `path` and its
/// bytes, without writing anything.
pub fn flat_path(path: &Path, name: &str) -> Result<(StorePath, Vec<u8>), StoreError> {
    let io = |source| StoreError::Io {
        path: path.display().to_string(),
        source,
    };
    let md = fs::symlink_metadata(path).map_err(io)?;
    if !md.is_file() {
        return Err(io(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file (needed when 'recursive' is false)",
        )));
    }
    let data = fs::read(path).map_err(io)?;
    let hash = kiln_nix::hash::Hash::of(HashAlgo::Sha256, &data);
    let sp = kiln_nix::store_path::make_fixed_output_path(
        name,
        kiln_nix::store_path::FileIngestionMethod::Flat,
        &hash,
        &BTreeSet::new(),
    )
    .map_err(path_err(name))?;
    Ok((sp, data))
}

/// A store that computes every path exactly but writes nothing to disk: its
/// paths are not readable through the file system. The `toFile` texts it
/// is given are kept in memory and can be read back with
/// [`MemStore::text`]; `.drv` texts are not (a large evaluation makes
/// tens of megabytes of them, and derivations reach their consumers
/// through the evaluator's sink).
#[derive(Default)]
pub struct MemStore {
    texts: RefCell<BTreeMap<StorePath, String>>,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The text written at `path` with [`Store::add_text`], if any.
    pub fn text(&self, path: &StorePath) -> Option<String> {
        self.texts.borrow().get(path).cloned()
    }
}

impl Store for MemStore {
    fn add_path(
        &self,
        path: &Path,
        name: &str,
        filter: Option<&mut PathFilter<'_>>,
    ) -> Result<StorePath, StoreError> {
        source_path(path, name, filter)
    }

    fn add_flat(&self, path: &Path, name: &str) -> Result<StorePath, StoreError> {
        flat_path(path, name).map(|(sp, _)| sp)
    }

    fn add_text(
        &self,
        name: &str,
        text: &str,
        refs: &BTreeSet<StorePath>,
    ) -> Result<StorePath, StoreError> {
        let p = compute_text_path(name, text.as_bytes(), refs).map_err(path_err(name))?;
        if !name.ends_with(".drv") {
            self.texts.borrow_mut().insert(p.clone(), text.to_string());
        }
        Ok(p)
    }

    fn real_path(&self, _path: &StorePath) -> Option<PathBuf> {
        None
    }
}

/// A store kept in an ordinary directory: `/nix/store/<hash>-<name>` is
/// written as `<root>/<hash>-<name>` (sources unpacked from their filtered
/// NAR, texts as read-only files), so evaluation can read back what it
/// added. For tests and for evaluating without a real Kiln store.
pub struct DirStore {
    root: PathBuf,
}

impl DirStore {
    /// A store in `root` (created if missing).
    pub fn new(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let root = root.into();
        fs::create_dir_all(&root).map_err(|source| StoreError::Io {
            path: root.display().to_string(),
            source,
        })?;
        Ok(DirStore { root })
    }

    /// The directory holding the store's objects.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn location(&self, p: &StorePath) -> PathBuf {
        self.root.join(p.base_name())
    }

    /// Writes `data` as the read-only file of `sp` unless it is there
    /// already; under a temporary name first, so a crash never leaves a
    /// truncated object under its final name.
    fn write_file(&self, sp: &StorePath, name: &str, data: &[u8]) -> Result<(), StoreError> {
        let dest = self.location(sp);
        if dest.symlink_metadata().is_ok() {
            return Ok(());
        }
        let io = |source| StoreError::Io {
            path: dest.display().to_string(),
            source,
        };
        let tmp = self.temp_name(name);
        let mut f = fs::File::create(&tmp).map_err(io)?;
        f.write_all(data).map_err(io)?;
        f.set_permissions(fs::Permissions::from_mode(0o444))
            .map_err(io)?;
        fs::rename(&tmp, &dest).map_err(io)
    }

    /// A fresh temporary file name in the store directory (hidden, so it
    /// never looks like a store object).
    fn temp_name(&self, name: &str) -> PathBuf {
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        self.root
            .join(format!(".tmp-{}-{n}-{name}", std::process::id()))
    }
}

impl Store for DirStore {
    fn add_path(
        &self,
        path: &Path,
        name: &str,
        filter: Option<&mut PathFilter<'_>>,
    ) -> Result<StorePath, StoreError> {
        let mut all = |_: &Path, _: fs::FileType| true;
        let filter: &mut PathFilter<'_> = match filter {
            Some(f) => f,
            None => &mut all,
        };
        // One walk gives both the NAR (spooled to a temporary file, then
        // unpacked) and its hash, so the filter runs once per entry, as in Nix.
        // Validate the name before it is used in a file name.
        validate_name(name).map_err(path_err(name))?;
        let tmp = self.temp_name(name);
        let io = |p: &Path| {
            let path = p.display().to_string();
            move |source| StoreError::Io { path, source }
        };
        let file = fs::File::create(&tmp).map_err(io(&tmp))?;
        let result = (|| {
            let out = std::io::BufWriter::new(file);
            let (out, digest) = nar::dump_path_filtered(path, out, HashAlgo::Sha256, filter)
                .map_err(dump_err(path))?;
            // A scratch file, unpacked and deleted below: flushed, not synced.
            out.into_inner().map_err(|e| io(&tmp)(e.into_error()))?;
            let sp = make_source_path(name, &digest.hash, &BTreeSet::new(), false)
                .map_err(path_err(name))?;
            let dest = self.location(&sp);
            if dest.symlink_metadata().is_err() {
                let nar = std::io::BufReader::new(fs::File::open(&tmp).map_err(io(&tmp))?);
                nar::unpack(nar, &dest).map_err(|source| StoreError::Unpack {
                    path: dest.display().to_string(),
                    source,
                })?;
            }
            Ok(sp)
        })();
        let _ = fs::remove_file(&tmp);
        result
    }

    fn add_flat(&self, path: &Path, name: &str) -> Result<StorePath, StoreError> {
        let (sp, data) = flat_path(path, name)?;
        self.write_file(&sp, name, &data)?;
        Ok(sp)
    }

    fn add_text(
        &self,
        name: &str,
        text: &str,
        refs: &BTreeSet<StorePath>,
    ) -> Result<StorePath, StoreError> {
        let sp = compute_text_path(name, text.as_bytes(), refs).map_err(path_err(name))?;
        self.write_file(&sp, name, text.as_bytes())?;
        Ok(sp)
    }

    fn real_path(&self, path: &StorePath) -> Option<PathBuf> {
        Some(self.location(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_path_matches_nix() {
        // nix-instantiate --eval -E 'builtins.toFile "foo" "bar"'
        let s = MemStore::new();
        let p = s.add_text("foo", "bar", &BTreeSet::new()).unwrap();
        assert_eq!(
            p.to_absolute_path(),
            "/nix/store/vxjiwkjkn7x4079qvh1jkl5pn05j2aw0-foo"
        );
        assert_eq!(s.text(&p).as_deref(), Some("bar"));
        assert_eq!(s.real_path(&p), None);
    }

    #[test]
    fn flat_files_are_written_under_their_flat_path() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("flat.txt");
        fs::write(&f, "hello\n").unwrap();
        let s = DirStore::new(t.path().join("store")).unwrap();
        let p = s.add_flat(&f, "flat.txt").unwrap();
        assert_eq!(p.base_name(), "6knq949b53ya3z1rs5ips7h7xkb8mw3a-flat.txt");
        assert_eq!(fs::read(s.real_path(&p).unwrap()).unwrap(), b"hello\n");
        assert_eq!(MemStore::new().add_flat(&f, "flat.txt").unwrap(), p);
        assert!(s.add_flat(t.path(), "dir").is_err());
    }

    #[test]
    fn dir_store_writes_what_it_adds() {
        let t = tempfile::tempdir().unwrap();
        let s = DirStore::new(t.path().join("store")).unwrap();
        let p = s.add_text("foo", "bar", &BTreeSet::new()).unwrap();
        assert_eq!(p.base_name(), "vxjiwkjkn7x4079qvh1jkl5pn05j2aw0-foo");
        let real = s.real_path(&p).unwrap();
        assert_eq!(fs::read_to_string(&real).unwrap(), "bar");

        let src = t.path().join("src");
        fs::create_dir_all(src.join("sub")).unwrap();
        fs::write(src.join("sub/keep"), "k").unwrap();
        fs::write(src.join("skip.log"), "s").unwrap();
        let mut f = |p: &Path, _: fs::FileType| !p.to_string_lossy().ends_with(".log");
        let sp = s.add_path(&src, "src", Some(&mut f)).unwrap();
        // Same path as computing it without writing.
        let mut f2 = |p: &Path, _: fs::FileType| !p.to_string_lossy().ends_with(".log");
        assert_eq!(source_path(&src, "src", Some(&mut f2)).unwrap(), sp);
        let real = s.real_path(&sp).unwrap();
        assert_eq!(fs::read_to_string(real.join("sub/keep")).unwrap(), "k");
        assert!(!real.join("skip.log").exists());
        // Adding again is a no-op giving the same path.
        assert_eq!(MemStore::new().add_path(&real, "src", None).unwrap(), sp);
    }

    #[test]
    fn bad_name_is_an_error_naming_it() {
        let e = MemStore::new()
            .add_text("bad/name", "x", &BTreeSet::new())
            .unwrap_err();
        assert!(e.to_string().contains("bad/name"), "{e}");
    }
}
