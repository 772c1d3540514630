//! The builder's environment, exactly as Nix 2.8 constructs it: Nix's own
//! variables, the derivation's attributes (or, with `__structuredAttrs`,
//! `.attrs.json` and `.attrs.sh`), and `passAsFile` files.

use std::collections::BTreeMap;

use kiln_nix::hash::{Hash, HashAlgo};
use serde_json::Value;

use crate::rootfs::BUILD_DIR;

/// Errors while preparing the environment.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    /// `__json` is not a JSON object.
    #[error("derivation attribute '__json' is not a valid JSON object: {0}")]
    BadJson(String),
    /// A feature needing store metadata the builder is not given.
    #[error("derivation attribute '{0}' is not supported by Kiln's builder")]
    Unsupported(&'static str),
}

/// What the sandbox needs besides the variables: files for `/build`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct BuildEnv {
    /// Variables, sorted by name (as Nix passes them).
    pub vars: BTreeMap<String, String>,
    /// Files to create in the build directory: (file name, contents).
    pub files: Vec<(String, Vec<u8>)>,
}

impl BuildEnv {
    /// `NAME=value` strings for `execve`.
    pub fn envp(&self) -> Vec<Vec<u8>> {
        self.vars
            .iter()
            .map(|(k, v)| format!("{k}={v}").into_bytes())
            .collect()
    }
}

/// Inputs to [`build_env`].
#[derive(Debug, Clone)]
pub struct EnvParams<'a> {
    /// The derivation's `env` attribute set.
    pub drv_env: &'a BTreeMap<String, String>,
    /// Output name → output path.
    pub outputs: &'a BTreeMap<String, String>,
    /// The store directory (`/nix/store`).
    pub store_dir: &'a str,
    /// Value of `NIX_BUILD_CORES`.
    pub cores: u32,
    /// Whether the derivation is fixed-output (impure variables pass).
    pub fixed_output: bool,
}

/// Builds the environment for one derivation; `host_env` looks up host
/// variables named in `impureEnvVars` (fixed-output only).
pub fn build_env(
    p: &EnvParams<'_>,
    host_env: impl Fn(&str) -> Option<String>,
) -> Result<BuildEnv, EnvError> {
    let mut env = BuildEnv::default();
    let v = &mut env.vars;
    v.insert("PATH".into(), "/path-not-set".into());
    v.insert("HOME".into(), "/homeless-shelter".into());
    v.insert("NIX_STORE".into(), p.store_dir.into());
    v.insert("NIX_BUILD_CORES".into(), p.cores.to_string());

    let structured = p.drv_env.get("__json");
    if structured.is_none() {
        if p.drv_env.contains_key("exportReferencesGraph") {
            return Err(EnvError::Unsupported("exportReferencesGraph"));
        }
        let pass_as_file: Vec<&str> = p
            .drv_env
            .get("passAsFile")
            .map(|s| s.split_ascii_whitespace().collect())
            .unwrap_or_default();
        for (k, val) in p.drv_env {
            if pass_as_file.contains(&k.as_str()) {
                let name = format!(
                    ".attr-{}",
                    Hash::of(HashAlgo::Sha256, k.as_bytes()).to_base32()
                );
                v.insert(format!("{k}Path"), format!("{BUILD_DIR}/{name}"));
                env.files.push((name, val.clone().into_bytes()));
            } else {
                v.insert(k.clone(), val.clone());
            }
        }
    }
    for k in ["NIX_BUILD_TOP", "TMPDIR", "TEMPDIR", "TMP", "TEMP", "PWD"] {
        v.insert(k.into(), BUILD_DIR.into());
    }
    if p.fixed_output {
        v.insert("NIX_OUTPUT_CHECKED".into(), "1".into());
        let impure: Vec<String> = match structured {
            Some(json) => match serde_json::from_str::<Value>(json) {
                Ok(Value::Object(o)) => match o.get("impureEnvVars") {
                    Some(Value::Array(a)) => a
                        .iter()
                        .filter_map(|x| x.as_str().map(str::to_string))
                        .collect(),
                    _ => Vec::new(),
                },
                _ => Vec::new(),
            },
            None => p
                .drv_env
                .get("impureEnvVars")
                .map(|s| s.split_ascii_whitespace().map(str::to_string).collect())
                .unwrap_or_default(),
        };
        for name in impure {
            let val = host_env(&name).unwrap_or_default();
            v.insert(name, val);
        }
    }
    v.insert("NIX_LOG_FD".into(), "2".into());
    v.insert("TERM".into(), "xterm-256color".into());

    if let Some(json) = structured {
        let mut obj = match serde_json::from_str::<Value>(json) {
            Ok(Value::Object(o)) => o,
            Ok(_) => return Err(EnvError::BadJson("not an object".into())),
            Err(e) => return Err(EnvError::BadJson(e.to_string())),
        };
        if obj.contains_key("exportReferencesGraph") {
            return Err(EnvError::Unsupported("exportReferencesGraph"));
        }
        let outs = p
            .outputs
            .iter()
            .map(|(k, path)| (k.clone(), Value::String(path.clone())))
            .collect();
        obj.insert("outputs".into(), Value::Object(outs));
        let value = Value::Object(obj);
        env.files
            .push((".attrs.json".into(), value.to_string().into_bytes()));
        env.files
            .push((".attrs.sh".into(), attrs_sh(&value).into_bytes()));
    }
    Ok(env)
}

/// Single-quotes `s` for a POSIX shell.
fn shell_escape(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Renders a JSON scalar the way `.attrs.sh` does; `None` for compound values
/// and non-integral numbers.
fn simple(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(shell_escape(s)),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Some(i.to_string()),
            None => n
                .as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < i32::MAX as f64)
                .map(|f| (f as i64).to_string()),
        },
        Value::Null => Some("''".into()),
        Value::Bool(b) => Some(if *b { "1".into() } else { String::new() }),
        _ => None,
    }
}

fn is_shell_name(k: &str) -> bool {
    let mut chars = k.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The `.attrs.sh` file: one `declare` per attribute whose name is a shell
/// variable name and whose value is a scalar, a list of scalars or an
/// attribute set of scalars.
pub fn attrs_sh(json: &Value) -> String {
    let mut out = String::new();
    let Value::Object(obj) = json else { return out };
    for (k, v) in obj {
        if !is_shell_name(k) {
            continue;
        }
        if let Some(s) = simple(v) {
            out.push_str(&format!("declare {k}={s}\n"));
        } else if let Value::Array(items) = v {
            let parts: Option<Vec<String>> = items.iter().map(simple).collect();
            if let Some(parts) = parts {
                let body: String = parts.iter().map(|p| format!("{p} ")).collect();
                out.push_str(&format!("declare -a {k}=({body})\n"));
            }
        } else if let Value::Object(map) = v {
            let parts: Option<Vec<String>> = map
                .iter()
                .map(|(k2, v2)| simple(v2).map(|s| format!("[{}]={s} ", shell_escape(k2))))
                .collect();
            if let Some(parts) = parts {
                out.push_str(&format!("declare -A {k}=({})\n", parts.concat()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params<'a>(
        env: &'a BTreeMap<String, String>,
        outs: &'a BTreeMap<String, String>,
    ) -> EnvParams<'a> {
        EnvParams {
            drv_env: env,
            outputs: outs,
            store_dir: "/nix/store",
            cores: 4,
            fixed_output: false,
        }
    }

    #[test]
    fn plain_environment_has_nix_variables() {
        let env: BTreeMap<_, _> = [
            ("out".to_string(), "/nix/store/x-y".to_string()),
            ("custom".into(), "v".into()),
        ]
        .into();
        let outs = BTreeMap::new();
        let e = build_env(&params(&env, &outs), |_| None).unwrap();
        let keys: Vec<_> = e.vars.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "HOME",
                "NIX_BUILD_CORES",
                "NIX_BUILD_TOP",
                "NIX_LOG_FD",
                "NIX_STORE",
                "PATH",
                "PWD",
                "TEMP",
                "TEMPDIR",
                "TERM",
                "TMP",
                "TMPDIR",
                "custom",
                "out"
            ]
        );
        assert_eq!(e.vars["NIX_BUILD_CORES"], "4");
        assert!(e.files.is_empty());
    }

    #[test]
    fn pass_as_file_matches_nix_file_name() {
        let env: BTreeMap<_, _> = [
            ("big".to_string(), "data".to_string()),
            ("passAsFile".into(), "big".into()),
        ]
        .into();
        let outs = BTreeMap::new();
        let e = build_env(&params(&env, &outs), |_| None).unwrap();
        // Name observed in the conformance corpus's pass-as-file output.
        assert_eq!(
            e.vars["bigPath"],
            "/build/.attr-1lak0mvllw8rv9i9ygkglvhqsq19qi9ynl4bi7gbf69ab5nzw89a"
        );
        assert!(!e.vars.contains_key("big"));
        assert_eq!(
            e.files,
            vec![(
                ".attr-1lak0mvllw8rv9i9ygkglvhqsq19qi9ynl4bi7gbf69ab5nzw89a".to_string(),
                b"data".to_vec()
            )]
        );
    }

    #[test]
    fn structured_attrs_write_json_and_sh() {
        let env: BTreeMap<_, _> = [(
            "__json".to_string(),
            r#"{"b":[1,"x"],"a":{"k":"it's"},"n":null,"t":true,"bad-name":1}"#.to_string(),
        )]
        .into();
        let outs: BTreeMap<_, _> = [("out".to_string(), "/nix/store/p-q".to_string())].into();
        let e = build_env(&params(&env, &outs), |_| None).unwrap();
        assert!(!e.vars.contains_key("__json"));
        assert_eq!(e.files[0].0, ".attrs.json");
        assert_eq!(
            String::from_utf8(e.files[0].1.clone()).unwrap(),
            r#"{"a":{"k":"it's"},"b":[1,"x"],"bad-name":1,"n":null,"outputs":{"out":"/nix/store/p-q"},"t":true}"#
        );
        assert_eq!(
            String::from_utf8(e.files[1].1.clone()).unwrap(),
            "declare -A a=(['k']='it'\\''s' )\ndeclare -a b=(1 'x' )\ndeclare n=''\ndeclare -A outputs=(['out']='/nix/store/p-q' )\ndeclare t=1\n"
        );
    }

    #[test]
    fn impure_env_vars_only_for_fixed_output() {
        let env: BTreeMap<_, _> =
            [("impureEnvVars".to_string(), "http_proxy FOO".to_string())].into();
        let outs = BTreeMap::new();
        let mut p = params(&env, &outs);
        let host = |k: &str| (k == "http_proxy").then(|| "proxy".to_string());
        assert!(!build_env(&p, host).unwrap().vars.contains_key("http_proxy"));
        p.fixed_output = true;
        let e = build_env(&p, host).unwrap();
        assert_eq!(e.vars["http_proxy"], "proxy");
        assert_eq!(e.vars["FOO"], "");
        assert_eq!(e.vars["NIX_OUTPUT_CHECKED"], "1");
    }
}
