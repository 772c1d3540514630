//! The files Nix bundles under `<nix/...>` ("corepkgs"), as Kiln's own
//! versions embedded in the evaluator. A search-path lookup of `nix/NAME`
//! that the search path does not satisfy yields `/__corepkgs__/NAME`, the
//! path Nix 2.8 uses, and parsing that path reads the embedded text.

/// The directory the embedded files appear under.
pub const PREFIX: &str = "/__corepkgs__/";

const FILES: &[(&str, &str)] = &[("fetchurl.nix", include_str!("corepkgs/fetchurl.nix"))];

/// The path `<nix/REST>` falls back to, when `name` is `nix/REST`.
pub fn lookup_path(name: &str) -> Option<String> {
    name.strip_prefix("nix/")
        .map(|rest| format!("{PREFIX}{rest}"))
}

/// The embedded source of `path`, when it names a bundled file.
pub fn source(path: &std::path::Path) -> Option<&'static str> {
    let name = path.to_str()?.strip_prefix(PREFIX)?;
    FILES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, text)| *text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nix_prefix_maps_to_corepkgs() {
        assert_eq!(
            lookup_path("nix/fetchurl.nix").as_deref(),
            Some("/__corepkgs__/fetchurl.nix")
        );
        assert_eq!(lookup_path("nix"), None);
        assert_eq!(lookup_path("nixpkgs/x"), None);
        let p = std::path::Path::new("/__corepkgs__/fetchurl.nix");
        assert!(source(p).unwrap().contains("builtin:fetchurl"));
        assert!(source(std::path::Path::new("/__corepkgs__/other.nix")).is_none());
    }
}
