//! `kiln submit`: hands a job to the farm. It ships the local expression
//! tree (without `.git`) and every local path named on the command line
//! into the store as sources, so an evaluator on another machine sees the
//! same files, publishes the job, prints its id and, with `--wait`,
//! follows it exactly as `kiln build` does (same progress, exit codes,
//! output paths and `result` links).

use std::io::IsTerminal;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use kiln_nix::store_path::StorePath;
use kiln_protocol::{
    ArgValue, Envelope, ExprSource, JobSpec, Message, Route, ShippedSource, Transport,
};
use kiln_store::cache::{BinaryCache, CacheOptions, PathMeta};

use crate::build::{finish, follow, kiln_home, OnInterrupt};
use crate::farm::AmqpOpts;
use crate::progress::Mode;
use crate::store_cmds::{open_cache, runtime};

/// `kiln submit`.
#[derive(clap::Args, Debug)]
pub struct SubmitArgs {
    #[command(flatten)]
    pub build: crate::build::Args,
    /// Follow the job until it ends, as `kiln build` does. Ctrl-C stops
    /// following; the job keeps running (`kiln cancel` stops it).
    #[arg(long)]
    pub wait: bool,
    /// With --wait, write a JUnit XML report (one test case per root
    /// attribute) to FILE.
    #[arg(long, value_name = "FILE", requires = "wait")]
    pub junit: Option<PathBuf>,
    #[command(flatten)]
    pub amqp: AmqpOpts,
}

pub fn run(args: SubmitArgs) -> Result<ExitCode> {
    let mut spec = crate::build::spec(&args.build)?;
    let store_url = match args
        .build
        .store
        .clone()
        .or_else(|| std::env::var("KILN_STORE_URL").ok().filter(|s| !s.is_empty()))
    {
        Some(s) => s,
        None => bail!("kiln submit needs the farm's store to ship sources to: pass --store URL or set KILN_STORE_URL"),
    };
    let home = kiln_home()?;
    let mode = if args.build.json {
        Mode::Json
    } else if std::io::stderr().is_terminal() {
        Mode::Live
    } else {
        Mode::Plain
    };
    runtime()?.block_on(async move {
        let temp = home.join("tmp");
        std::fs::create_dir_all(&temp).with_context(|| format!("creating '{}'", temp.display()))?;
        let cache = Arc::new(
            open_cache(
                &store_url,
                &args.build.store_opts,
                CacheOptions {
                    temp_dir: temp.clone(),
                    ..CacheOptions::default()
                },
            )
            .await?,
        );
        ship_sources(&mut spec, &cache, &temp).await?;
        let transport: Arc<dyn Transport> = Arc::new(args.amqp.connect_client().await?);
        let job_id = spec.job_id;
        // Subscribed before the job is published, so no event is missed.
        let mut events = if args.wait {
            Some(transport.subscribe(&Route::JobEvents(job_id)).await?)
        } else {
            None
        };
        transport
            .publish(&Route::Jobs, &Envelope::new(Message::SubmitJob(spec)), 0)
            .await
            .context("submitting the job")?;
        let Some(mut events) = events.take() else {
            println!("{job_id}");
            return Ok(ExitCode::SUCCESS);
        };
        eprintln!("job {job_id} submitted");
        let started = std::time::Instant::now();
        let Some(outcome) = follow(
            &mut events,
            &transport,
            job_id,
            mode,
            OnInterrupt::Detach,
            std::future::pending::<String>(),
        )
        .await?
        else {
            return Ok(ExitCode::from(crate::exit::CANCELLED));
        };
        if let Some(path) = &args.junit {
            crate::junit::write(
                path,
                job_id,
                &args.build.expr.attr,
                &outcome,
                started.elapsed().as_secs_f64(),
            )?;
        }
        let realised = home.join("realised");
        finish(&args.build, &cache, &realised, outcome).await
    })
}

/// The directory to ship for an expression found in `dir`: the top of its
/// git checkout, or `dir` itself.
fn tree_root(dir: &Path) -> PathBuf {
    let mut cur = Some(dir);
    while let Some(d) = cur {
        if d.join(".git").exists() {
            return d.to_path_buf();
        }
        cur = d.parent();
    }
    dir.to_path_buf()
}

/// An `--arg` expression that is a path literal naming an existing local
/// path, made absolute.
fn arg_path(expr: &str, cwd: &Path) -> Option<PathBuf> {
    let t = expr.trim();
    let p = if t.starts_with('/') {
        PathBuf::from(t)
    } else if t.starts_with("./") || t.starts_with("../") {
        cwd.join(t)
    } else {
        return None;
    };
    if t.contains(char::is_whitespace) || !p.exists() {
        return None;
    }
    Some(p)
}

/// Ships the job's local paths into the store and records them in
/// `spec.sources`; `--arg` path literals are made absolute so the
/// evaluator can map them.
async fn ship_sources(spec: &mut JobSpec, cache: &Arc<BinaryCache>, temp: &Path) -> Result<()> {
    let cwd = std::env::current_dir().context("reading the current directory")?;
    let mut wanted: Vec<PathBuf> = Vec::new();
    match &spec.source {
        ExprSource::File { path } => {
            let p = PathBuf::from(path);
            wanted.push(tree_root(p.parent().unwrap_or(Path::new("/"))));
        }
        ExprSource::Expr { base_dir, .. } => wanted.push(tree_root(Path::new(base_dir))),
    }
    for arg in &mut spec.args {
        if let ArgValue::Expr(text) = &mut arg.value {
            if let Some(p) = arg_path(text, &cwd) {
                *text = p.display().to_string();
                wanted.push(p);
            }
        }
    }
    for entry in &spec.search_path {
        let p = Path::new(&entry.path);
        if p.is_absolute() && p.exists() {
            wanted.push(p.to_path_buf());
        } else if !entry.path.contains("://") && cwd.join(p).exists() && !entry.path.is_empty() {
            wanted.push(cwd.join(p));
        }
    }
    // Outermost first; a path inside a shipped one travels with it.
    wanted.sort_by_key(|p| p.as_os_str().len());
    let mut shipped: Vec<PathBuf> = Vec::new();
    for p in wanted {
        if shipped.iter().any(|s| p.starts_with(s)) {
            continue;
        }
        shipped.push(p);
    }
    let staging = tempfile::Builder::new()
        .prefix("kiln-submit-")
        .tempdir_in(temp)
        .context("creating a staging directory")?;
    for local in shipped {
        let store_path = ship(cache, &local, staging.path())
            .await
            .with_context(|| format!("shipping '{}' to the store", local.display()))?;
        spec.sources.push(ShippedSource {
            local: local.display().to_string(),
            store_path: store_path.to_absolute_path(),
        });
    }
    Ok(())
}

/// The files of the git checkout at `root` that git does not ignore
/// (tracked, and untracked but not ignored), with every directory leading
/// to them, relative to `root`: what a checkout's build may read, without
/// its build products (`target/`, `result` links). `None` when `root` is
/// not the top of a checkout or git cannot list it.
fn git_files(root: &Path) -> Option<std::collections::HashSet<PathBuf>> {
    if !root.join(".git").exists() {
        return None;
    }
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(root)
        .args([
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let mut keep = std::collections::HashSet::new();
    for name in out.stdout.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let rel = PathBuf::from(std::ffi::OsStr::from_bytes(name));
        let mut dir = rel.parent();
        while let Some(d) = dir.filter(|d| !d.as_os_str().is_empty()) {
            if !keep.insert(d.to_path_buf()) {
                break;
            }
            dir = d.parent();
        }
        keep.insert(rel);
    }
    Some(keep)
}

/// Copies `local` into the store as a source: for a git checkout, the
/// files git does not ignore ([`git_files`], as a flake is copied);
/// otherwise everything but `.git`.
async fn ship(cache: &Arc<BinaryCache>, local: &Path, staging: &Path) -> Result<StorePath> {
    let name = local
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| kiln_store::key::is_valid_store_base_name(&format!("{}-{n}", "0".repeat(32))))
        .unwrap_or_else(|| "source".to_string());
    let dir = kiln_evaluator::store::DirStore::new(staging)?;
    let (local_owned, name2) = (local.to_path_buf(), name.clone());
    let (sp, copy) = tokio::task::spawn_blocking(move || {
        use kiln_evaluator::store::Store;
        let listed = git_files(&local_owned);
        if listed.is_none() && local_owned.join(".git").exists() {
            tracing::warn!(path = %local_owned.display(), "git cannot list this checkout; shipping all of it but .git");
        }
        let mut wanted = |p: &Path, _: std::fs::FileType| match (&listed, p.strip_prefix(&local_owned)) {
            (Some(keep), Ok(rel)) => rel.as_os_str().is_empty() || keep.contains(rel),
            _ => p.file_name().is_none_or(|n| n != ".git"),
        };
        let sp = dir.add_path(&local_owned, &name2, Some(&mut wanted))?;
        let copy = dir.real_path(&sp).context("the staged copy is missing")?;
        Ok::<_, anyhow::Error>((sp, copy))
    })
    .await??;
    let meta = PathMeta {
        path: sp.clone(),
        references: Default::default(),
        deriver: None,
        system: None,
        ca: None,
        sigs: Default::default(),
        expected: None,
    };
    kiln_evaluator::worker::upload_path(cache, meta, copy).await?;
    Ok(sp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkout_ships_what_git_does_not_ignore() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let git = |args: &[&str]| {
            let ok = std::process::Command::new("git")
                .arg("-C")
                .arg(d)
                .args(args)
                .output()
                .is_ok_and(|o| o.status.success());
            assert!(ok, "git {args:?}");
        };
        git(&["init", "-q"]);
        std::fs::write(d.join(".gitignore"), "/target\n").unwrap();
        std::fs::create_dir_all(d.join("pkgs/sub")).unwrap();
        std::fs::create_dir_all(d.join("target/release")).unwrap();
        std::fs::write(d.join("default.nix"), "1").unwrap();
        std::fs::write(d.join("pkgs/sub/x.nix"), "2").unwrap();
        std::fs::write(d.join("target/release/big"), "3").unwrap();
        git(&["add", "default.nix"]);
        let keep = git_files(d).expect("a checkout");
        for p in [
            ".gitignore",
            "default.nix",
            "pkgs",
            "pkgs/sub",
            "pkgs/sub/x.nix",
        ] {
            assert!(keep.contains(Path::new(p)), "{p} shipped: {keep:?}");
        }
        assert!(!keep.iter().any(|p| p.starts_with("target")), "{keep:?}");
        assert_eq!(
            git_files(&d.join("pkgs")),
            None,
            "not the top of a checkout"
        );
    }

    #[test]
    fn only_existing_path_literals_are_shipped() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("bb")).unwrap();
        assert_eq!(arg_path("./bb", dir.path()), Some(dir.path().join("./bb")));
        let abs = dir.path().join("bb").display().to_string();
        assert!(arg_path(&abs, Path::new("/")).is_some());
        assert_eq!(arg_path("./missing", dir.path()), None);
        assert_eq!(arg_path("{ a = 1; }", dir.path()), None);
        assert_eq!(arg_path("import ./bb", dir.path()), None);
    }
}
