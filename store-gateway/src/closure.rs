//! Closure queries over a [`BinaryCache`]: the narinfos of everything a set
//! of paths refers to, directly or not, dependencies first.

use std::collections::{HashMap, HashSet};

use futures::stream::{self, StreamExt, TryStreamExt};
use kiln_nix::narinfo::NarInfo;
use kiln_nix::store_path::StorePath;

use crate::cache::BinaryCache;
use crate::error::Result;

impl BinaryCache {
    /// The narinfos of the closure of `roots`, dependencies before the
    /// paths that refer to them.
    pub async fn closure(&self, roots: &[StorePath]) -> Result<Vec<NarInfo>> {
        let mut infos: HashMap<StorePath, NarInfo> = HashMap::new();
        let mut frontier: Vec<StorePath> = roots.to_vec();
        let mut seen: HashSet<StorePath> = roots.iter().cloned().collect();
        while !frontier.is_empty() {
            let fetched: Vec<NarInfo> = stream::iter(
                frontier
                    .drain(..)
                    .map(|p| async move { self.require_info(&p).await }),
            )
            .buffer_unordered(self.options().concurrency.max(1))
            .try_collect()
            .await?;
            for info in fetched {
                for r in &info.references {
                    if seen.insert(r.clone()) {
                        frontier.push(r.clone());
                    }
                }
                infos.insert(info.store_path.clone(), info);
            }
        }
        Ok(topo_sort(infos))
    }
}

/// Orders narinfos so that every path comes after its references.
fn topo_sort(mut infos: HashMap<StorePath, NarInfo>) -> Vec<NarInfo> {
    let mut names: Vec<StorePath> = infos.keys().cloned().collect();
    names.sort();
    let mut done: HashSet<StorePath> = HashSet::new();
    let mut order = Vec::with_capacity(names.len());
    for root in names {
        // Iterative depth-first post-order; a self-reference is skipped and
        // a (malformed) cycle cannot loop because visited paths are marked.
        let mut stack = vec![(root, false)];
        while let Some((p, expanded)) = stack.pop() {
            if expanded {
                order.push(p);
                continue;
            }
            if !done.insert(p.clone()) {
                continue;
            }
            stack.push((p.clone(), true));
            if let Some(info) = infos.get(&p) {
                for r in info.references.iter().rev() {
                    if r != &p && !done.contains(r) {
                        stack.push((r.clone(), false));
                    }
                }
            }
        }
    }
    order.into_iter().filter_map(|p| infos.remove(&p)).collect()
}
