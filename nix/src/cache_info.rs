//! A binary cache's `nix-cache-info` file, read and written as Nix 2.8
//! does.

use crate::narinfo::NarInfoError;

/// A binary cache's `nix-cache-info` file.
///
/// Nix 2.8 reads it line by line, skips lines without a colon and unknown
/// fields, and trims whitespace around values. It writes only `StoreDir`;
/// caches such as cache.nixos.org add `WantMassQuery` and `Priority`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NixCacheInfo {
    /// `StoreDir`: the store the cache is for (normally `/nix/store`).
    pub store_dir: String,
    /// `WantMassQuery`: `1` means clients may query many paths at once.
    pub want_mass_query: Option<bool>,
    /// `Priority`: lower is preferred (cache.nixos.org uses 40).
    pub priority: Option<i32>,
}

impl NixCacheInfo {
    /// Info for a new cache of `store_dir`, as Nix writes it.
    pub fn new(store_dir: &str) -> Self {
        NixCacheInfo {
            store_dir: store_dir.to_string(),
            want_mass_query: None,
            priority: None,
        }
    }

    /// Parses a `nix-cache-info`; errors name `whence`, the line and field.
    /// A missing `StoreDir` is refused (Nix would assume its own store).
    pub fn parse(text: &str, whence: &str) -> Result<Self, NarInfoError> {
        let mut store_dir = None;
        let mut want_mass_query = None;
        let mut priority = None;
        for (idx, l) in text.split('\n').enumerate() {
            let Some((name, value)) = l.split_once(':') else {
                continue;
            };
            let value = value.trim_matches(|c| c == ' ' || c == '\t' || c == '\r');
            let bad = |field| NarInfoError::BadCacheInfo {
                whence: whence.to_string(),
                line: idx + 1,
                field,
                value: value.to_string(),
            };
            match name {
                "StoreDir" => {
                    if value.is_empty() {
                        return Err(bad("StoreDir"));
                    }
                    store_dir = Some(value.to_string());
                }
                "WantMassQuery" => want_mass_query = Some(value == "1"),
                "Priority" => priority = Some(value.parse::<i32>().map_err(|_| bad("Priority"))?),
                _ => {}
            }
        }
        Ok(NixCacheInfo {
            store_dir: store_dir.ok_or_else(|| NarInfoError::Missing {
                whence: whence.to_string(),
                field: "StoreDir",
            })?,
            want_mass_query,
            priority,
        })
    }

    /// Writes `StoreDir`, then `WantMassQuery` and `Priority` when set, one
    /// `Field: value` line each.
    pub fn to_cache_info_string(&self) -> String {
        let mut out = format!("StoreDir: {}\n", self.store_dir);
        if let Some(w) = self.want_mass_query {
            out.push_str(&format!("WantMassQuery: {}\n", u8::from(w)));
        }
        if let Some(p) = self.priority {
            out.push_str(&format!("Priority: {p}\n"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_info() {
        let nix = NixCacheInfo::parse("StoreDir: /nix/store\n", "nix-cache-info").unwrap();
        assert_eq!(nix, NixCacheInfo::new("/nix/store"));
        assert_eq!(nix.to_cache_info_string(), "StoreDir: /nix/store\n");
        let hydra = "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n";
        let info = NixCacheInfo::parse(hydra, "x").unwrap();
        assert_eq!(
            (info.want_mass_query, info.priority),
            (Some(true), Some(40))
        );
        assert_eq!(info.to_cache_info_string(), hydra);
        let loose =
            NixCacheInfo::parse("junk\nPriority:  -3 \r\nStoreDir:/s\nOther: 1", "x").unwrap();
        assert_eq!((loose.store_dir.as_str(), loose.priority), ("/s", Some(-3)));
        let e = NixCacheInfo::parse("StoreDir: /nix/store\nPriority: high\n", "c/nix-cache-info")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 2") && e.contains("Priority") && e.contains("c/nix-cache-info"),
            "{e}"
        );
        assert!(NixCacheInfo::parse("Priority: 1\n", "x")
            .unwrap_err()
            .to_string()
            .contains("StoreDir missing"));
    }
}
