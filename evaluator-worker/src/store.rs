//! The store boundary: everything evaluation writes to a store goes through
//! [`Store`]; derivation outputs needed during evaluation come from a
//! [`Realiser`]; instantiated derivations are streamed to a [`DerivationSink`].

use kiln_nix::hash::{Hash, HashAlgo, Hasher};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

/// Errors at the store boundary.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading a source path failed.
    #[error("reading '{path}': {source}")]
    Io {
        /// The path.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The realiser could not build an output.
    #[error("cannot realise '{0}': {1}")]
    Realise(String, String),
}

/// Where copied sources, `toFile` texts and `.drv` files are written.
pub trait Store {
    /// The store directory (`/nix/store`).
    fn store_dir(&self) -> &str {
        "/nix/store"
    }
    /// Copy `path` (file, directory or symlink) into the store as `name`
    /// (recursive/NAR hashing) and return its store path.
    fn add_path(
        &self,
        path: &Path,
        name: &str,
        filter: Option<&dyn Fn(&Path) -> bool>,
    ) -> Result<String, StoreError>;
    /// Write a text file (`toFile`, `.drv`) with the given references; return its store path.
    fn add_text(&self, name: &str, text: &str, refs: &[String]) -> Result<String, StoreError>;
    /// Contents of a text file previously written with `add_text`, if any.
    fn read_text(&self, path: &str) -> Option<String>;
}

/// Builds derivation outputs when evaluation reads them (import from derivation).
pub trait Realiser {
    /// Build `drv_path` so that `outputs` exist; return their real filesystem locations.
    fn realise(
        &self,
        drv_path: &str,
        outputs: &[String],
    ) -> Result<Vec<std::path::PathBuf>, StoreError>;
}

/// Receives each derivation as soon as it is instantiated.
pub trait DerivationSink {
    /// `drv_path` was written with ATerm text `aterm`.
    fn derivation(&self, drv_path: &str, aterm: &str);
}

/// Make a store path from its type, inner hash and name (Nix's `makeStorePath`).
pub fn make_store_path(store_dir: &str, ty: &str, hash: &Hash, name: &str) -> String {
    let fp = format!(
        "{ty}:{}:{}:{store_dir}:{name}",
        hash.algo(),
        hash.to_base16()
    );
    let h = Hash::of(HashAlgo::Sha256, fp.as_bytes());
    let c = kiln_nix::hash::compress_hash(h.digest(), 20);
    format!("{store_dir}/{}-{name}", kiln_nix::nixbase32::encode(&c))
}

/// Store path of a text file with references (`toFile`, `.drv`).
pub fn text_store_path(store_dir: &str, name: &str, text: &str, refs: &[String]) -> String {
    let mut ty = String::from("text");
    let mut refs = refs.to_vec();
    refs.sort();
    refs.dedup();
    for r in &refs {
        ty.push(':');
        ty.push_str(r);
    }
    make_store_path(
        store_dir,
        &ty,
        &Hash::of(HashAlgo::Sha256, text.as_bytes()),
        name,
    )
}

/// Serialise `path` as a NAR into `h` (streaming).
pub fn nar_hash(path: &Path, filter: Option<&dyn Fn(&Path) -> bool>) -> Result<Hash, StoreError> {
    let mut h = Hasher::new(HashAlgo::Sha256);
    nar_str(&mut h, "nix-archive-1");
    nar_entry(&mut h, path, filter)?;
    Ok(h.finish())
}

fn nar_str(h: &mut Hasher, s: &str) {
    nar_bytes(h, s.as_bytes());
}

fn nar_bytes(h: &mut Hasher, b: &[u8]) {
    h.update(&(b.len() as u64).to_le_bytes());
    h.update(b);
    let pad = (8 - b.len() % 8) % 8;
    h.update(&[0u8; 8][..pad]);
}

fn io_err(path: &Path, source: std::io::Error) -> StoreError {
    StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn nar_entry(
    h: &mut Hasher,
    path: &Path,
    filter: Option<&dyn Fn(&Path) -> bool>,
) -> Result<(), StoreError> {
    let md = std::fs::symlink_metadata(path).map_err(|e| io_err(path, e))?;
    nar_str(h, "(");
    if md.file_type().is_symlink() {
        let target = std::fs::read_link(path).map_err(|e| io_err(path, e))?;
        nar_str(h, "type");
        nar_str(h, "symlink");
        nar_str(h, "target");
        nar_bytes(h, target.as_os_str().as_encoded_bytes());
    } else if md.is_dir() {
        nar_str(h, "type");
        nar_str(h, "directory");
        let mut names: Vec<_> = std::fs::read_dir(path)
            .map_err(|e| io_err(path, e))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .collect();
        names.sort();
        for n in names {
            let child = path.join(&n);
            if let Some(f) = filter {
                if !f(&child) {
                    continue;
                }
            }
            nar_str(h, "entry");
            nar_str(h, "(");
            nar_str(h, "name");
            nar_bytes(h, n.as_encoded_bytes());
            nar_str(h, "node");
            nar_entry(h, &child, filter)?;
            nar_str(h, ")");
        }
    } else {
        use std::os::unix::fs::PermissionsExt;
        nar_str(h, "type");
        nar_str(h, "regular");
        if md.permissions().mode() & 0o100 != 0 {
            nar_str(h, "executable");
            nar_str(h, "");
        }
        nar_str(h, "contents");
        let len = md.len();
        h.update(&len.to_le_bytes());
        let mut f = std::fs::File::open(path).map_err(|e| io_err(path, e))?;
        let mut buf = [0u8; 65536];
        let mut total = 0u64;
        loop {
            let n = f.read(&mut buf).map_err(|e| io_err(path, e))?;
            if n == 0 {
                break;
            }
            total += n as u64;
            h.update(&buf[..n]);
        }
        if total != len {
            return Err(io_err(
                path,
                std::io::Error::other("file changed while reading"),
            ));
        }
        let pad = ((8 - len % 8) % 8) as usize;
        h.update(&[0u8; 8][..pad]);
    }
    nar_str(h, ")");
    Ok(())
}

/// A store that only computes paths and keeps text files in memory: for tests
/// and for evaluation without a real store.
#[derive(Default)]
pub struct MemStore {
    texts: RefCell<BTreeMap<String, String>>,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Store for MemStore {
    fn add_path(
        &self,
        path: &Path,
        name: &str,
        filter: Option<&dyn Fn(&Path) -> bool>,
    ) -> Result<String, StoreError> {
        let h = nar_hash(path, filter)?;
        Ok(make_store_path(self.store_dir(), "source", &h, name))
    }
    fn add_text(&self, name: &str, text: &str, refs: &[String]) -> Result<String, StoreError> {
        let p = text_store_path(self.store_dir(), name, text, refs);
        self.texts.borrow_mut().insert(p.clone(), text.to_string());
        Ok(p)
    }
    fn read_text(&self, path: &str) -> Option<String> {
        self.texts.borrow().get(path).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_path_matches_nix() {
        // nix-instantiate --eval -E 'builtins.toFile "foo" "bar"'
        let p = text_store_path("/nix/store", "foo", "bar", &[]);
        assert_eq!(p, "/nix/store/vxjiwkjkn7x4079qvh1jkl5pn05j2aw0-foo");
    }
}
