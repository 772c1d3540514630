//! Store URLs, following Nix's conventions: a directory or `file://DIR`,
//! `s3://BUCKET?endpoint=URL&region=R&prefix=P`, and `http(s)://HOST…`.

use std::path::PathBuf;
use std::sync::Arc;

use crate::backend::http::HttpStore;
use crate::backend::local::LocalStore;
use crate::backend::s3::{S3Config, S3Store};
use crate::backend::Store;
use crate::error::{Result, StoreError};

/// A parsed store URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// A local directory.
    Local(PathBuf),
    /// An S3 bucket.
    S3(S3Config),
    /// A remote HTTP(S) binary cache.
    Http(String),
}

fn bad(url: &str, reason: impl Into<String>) -> StoreError {
    StoreError::BadUrl {
        url: url.to_string(),
        reason: reason.into(),
    }
}

/// Decodes `%XX` escapes in a query value.
fn percent_decode(url: &str, s: &str) -> Result<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .ok_or_else(|| bad(url, "truncated %-escape"))?;
            let b = u8::from_str_radix(hex, 16)
                .map_err(|_| bad(url, format!("bad %-escape '%{hex}'")))?;
            out.push(b);
            i += 3;
        } else {
            out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad(url, "query value is not UTF-8"))
}

impl StoreUrl {
    /// Parses a store URL. S3 parameters other than `endpoint`, `region`,
    /// `prefix`, `profile`, `path-style` and `config` (a settings file; or
    /// Nix's `scheme`) are refused.
    pub fn parse(url: &str) -> Result<StoreUrl> {
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, query) = rest.split_once('?').unwrap_or((rest, ""));
            let bucket = bucket.trim_end_matches('/');
            if bucket.is_empty() || bucket.contains('/') {
                return Err(bad(url, "expected s3://BUCKET[?PARAMS]"));
            }
            let mut cfg = S3Config::new(bucket);
            let mut scheme = None;
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                let (k, v) = pair
                    .split_once('=')
                    .ok_or_else(|| bad(url, format!("'{pair}' is not KEY=VALUE")))?;
                let v = percent_decode(url, v)?;
                match k {
                    "endpoint" => cfg.endpoint = Some(v),
                    "region" => cfg.region = Some(v),
                    "prefix" => cfg.prefix = v.trim_matches('/').to_string(),
                    "profile" => cfg.profile = Some(v),
                    "config" => cfg.config_file = Some(PathBuf::from(v)),
                    "scheme" => scheme = Some(v),
                    "path-style" => {
                        cfg.path_style = Some(match v.as_str() {
                            "true" | "1" => true,
                            "false" | "0" => false,
                            _ => return Err(bad(url, "path-style must be true or false")),
                        })
                    }
                    _ => return Err(bad(url, format!("unknown S3 parameter '{k}'"))),
                }
            }
            // Nix writes `endpoint=HOST&scheme=http`; accept that form too.
            if let (Some(ep), Some(s)) = (&cfg.endpoint, scheme) {
                if !ep.contains("://") {
                    cfg.endpoint = Some(format!("{s}://{ep}"));
                }
            }
            return Ok(StoreUrl::S3(cfg));
        }
        if url.starts_with("http://") || url.starts_with("https://") {
            if url.contains('?') {
                return Err(bad(url, "HTTP store parameters are not supported"));
            }
            return Ok(StoreUrl::Http(url.trim_end_matches('/').to_string()));
        }
        if let Some(dir) = url.strip_prefix("file://") {
            let dir = dir.split('?').next().unwrap_or(dir);
            if !dir.starts_with('/') {
                return Err(bad(url, "file:// needs an absolute path"));
            }
            return Ok(StoreUrl::Local(PathBuf::from(dir)));
        }
        if url.contains("://") {
            return Err(bad(
                url,
                "unsupported scheme (use a directory, file://, s3:// or http(s)://)",
            ));
        }
        if url.is_empty() {
            return Err(bad(url, "empty store URL"));
        }
        Ok(StoreUrl::Local(PathBuf::from(url)))
    }

    /// Opens the store. S3 settings missing from the URL are taken from
    /// `env`; `token` is the bearer token for writing to a Kiln gateway.
    pub async fn open(
        self,
        env: impl Fn(&str) -> Option<String>,
        token: Option<String>,
    ) -> Result<Arc<dyn Store>> {
        Ok(match self {
            StoreUrl::Local(dir) => Arc::new(LocalStore::open(dir).await?),
            StoreUrl::S3(mut cfg) => {
                cfg.fill_from_file(&env)?;
                cfg.fill_from_env(env);
                Arc::new(S3Store::connect(cfg).await?)
            }
            StoreUrl::Http(base) => Arc::new(HttpStore::new(&base, token)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_settings_come_from_url_then_file_then_environment() {
        let t = tempfile::tempdir().unwrap();
        let file = t.path().join("s3.toml");
        std::fs::write(
            &file,
            "endpoint = \"http://file:3900\"\nregion = \"garage\"\nprefix = \"/cache/\"\n\
             access-key-id = \"GKfile\"\nsecret-access-key = \"s3cret\"\npart-size = 8388608\n",
        )
        .unwrap();
        let url = format!(
            "s3://b?config={}&endpoint=http%3A%2F%2Furl%3A3900",
            file.display()
        );
        let StoreUrl::S3(mut cfg) = StoreUrl::parse(&url).unwrap() else {
            panic!("not S3")
        };
        let env = |k: &str| match k {
            "AWS_REGION" => Some("from-env".to_string()),
            "AWS_ACCESS_KEY_ID" => Some("GKenv".to_string()),
            "AWS_PROFILE" => Some("envprofile".to_string()),
            _ => None,
        };
        cfg.fill_from_file(env).unwrap();
        cfg.fill_from_env(env);
        assert_eq!(cfg.endpoint.as_deref(), Some("http://url:3900"), "URL wins");
        assert_eq!(cfg.region.as_deref(), Some("garage"), "file beats env");
        assert_eq!(cfg.prefix, "cache");
        assert_eq!(cfg.access_key_id.as_deref(), Some("GKfile"));
        assert_eq!(cfg.part_size, 8 << 20);
        assert_eq!(
            cfg.profile.as_deref(),
            Some("envprofile"),
            "env fills the rest"
        );

        // KILN_S3_CONFIG names the file when the URL does not.
        let StoreUrl::S3(mut cfg) = StoreUrl::parse("s3://b").unwrap() else {
            panic!("not S3")
        };
        let path = file.display().to_string();
        cfg.fill_from_file(|k: &str| (k == "KILN_S3_CONFIG").then(|| path.clone()))
            .unwrap();
        assert_eq!(cfg.endpoint.as_deref(), Some("http://file:3900"));

        // A bad file is named in the error.
        std::fs::write(&file, "endpont = 1\n").unwrap();
        let StoreUrl::S3(mut cfg) = StoreUrl::parse(&url).unwrap() else {
            panic!("not S3")
        };
        let err = cfg.fill_from_file(|_: &str| None).unwrap_err().to_string();
        assert!(err.contains("s3.toml") && err.contains("endpont"), "{err}");
    }

    #[test]
    fn parses_every_form() {
        assert_eq!(
            StoreUrl::parse("/tmp/c").unwrap(),
            StoreUrl::Local("/tmp/c".into())
        );
        assert_eq!(
            StoreUrl::parse("file:///tmp/c").unwrap(),
            StoreUrl::Local("/tmp/c".into())
        );
        assert_eq!(
            StoreUrl::parse("http://127.0.0.1:8080/").unwrap(),
            StoreUrl::Http("http://127.0.0.1:8080".into())
        );
        let StoreUrl::S3(c) = StoreUrl::parse(
            "s3://b?endpoint=http%3A%2F%2F127.0.0.1%3A3900&region=garage&prefix=/p/",
        )
        .unwrap() else {
            panic!("not s3")
        };
        assert_eq!(c.bucket, "b");
        assert_eq!(c.endpoint.as_deref(), Some("http://127.0.0.1:3900"));
        assert_eq!(c.region.as_deref(), Some("garage"));
        assert_eq!(c.prefix, "p");
        let StoreUrl::S3(c) = StoreUrl::parse("s3://b?endpoint=h:1&scheme=http").unwrap() else {
            panic!("not s3")
        };
        assert_eq!(c.endpoint.as_deref(), Some("http://h:1"));
    }

    #[test]
    fn refuses_nonsense() {
        for u in [
            "s3://",
            "s3://b/c",
            "s3://b?x=1",
            "s3://b?endpoint",
            "ftp://x",
            "file://rel",
            "",
            "s3://b?region=%zz",
        ] {
            assert!(StoreUrl::parse(u).is_err(), "{u} accepted");
        }
    }
}
