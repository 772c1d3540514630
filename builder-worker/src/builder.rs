//! The [`Builder`]: runs derivations in the sandbox with at most `max-jobs`
//! at once, each in its own scratch directory that is removed afterwards.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, Semaphore};

use crate::env::{build_env, EnvError, EnvParams};
use crate::outputs::{self, BuiltOutput, OutputError};
use crate::recipe::{Recipe, RecipeError};
use crate::rootfs::{self, RootfsError, BUILD_DIR};
use crate::run::{self, CancelToken, Stop, Supervision};
use crate::sandbox::{self, SandboxError, SandboxSpec};
use crate::userpool::{BuildUser, UserPool, UserPoolError};
use kiln_nix::derivation::Derivation;

/// Settings shared by every build of a [`Builder`].
#[derive(Debug, Clone)]
pub struct BuilderConfig {
    /// Most builds running at once (Nix's `max-jobs`).
    pub max_jobs: usize,
    /// Where per-build scratch directories are created.
    pub scratch_dir: PathBuf,
    /// The store directory builds see (`/nix/store`).
    pub store_dir: String,
    /// `NIX_BUILD_CORES`.
    pub cores: u32,
    /// Size of each build's `/dev/shm` (Nix's `sandbox-shm-size`).
    pub shm_size: String,
    /// Kill a build writing more log than this (Nix's `max-build-log-size`).
    pub max_log_size: Option<u64>,
    /// Host users builds run as when Kiln runs as root.
    pub user_pool: UserPool,
    /// Lay each build's root skeleton out on a tmpfs (`/dev/shm`) when
    /// there is one, instead of next to its outputs on disk; set-up is then
    /// several times faster. (The CLI turns it off for
    /// `KILN_SANDBOX_TMPFS_ROOT=0`.)
    pub tmpfs_root: bool,
}

impl BuilderConfig {
    /// Defaults like Nix's: one job, all cores, `/nix/store`, 50% shm.
    pub fn new(scratch_dir: impl Into<PathBuf>) -> Self {
        BuilderConfig {
            max_jobs: 1,
            scratch_dir: scratch_dir.into(),
            store_dir: "/nix/store".into(),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            shm_size: "50%".into(),
            max_log_size: Some(64 << 20),
            user_pool: UserPool::default(),
            tmpfs_root: true,
        }
    }
}

/// Per-build options.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// Where finished outputs go, as `<out_dir>/<hash>-<name>`.
    pub out_dir: PathBuf,
    /// Kill the build after this long (Nix's `timeout`).
    pub timeout: Option<Duration>,
    /// Kill the build after this long without output (`max-silent-time`).
    pub max_silent_time: Option<Duration>,
    /// Receives the log line by line.
    pub log_lines: Option<mpsc::Sender<String>>,
    /// Cancels the build.
    pub cancel: Option<CancelToken>,
}

/// A successful build.
#[derive(Debug, Clone)]
pub struct BuildOutputs {
    /// Output name → what was produced.
    pub outputs: BTreeMap<String, BuiltOutput>,
    /// The complete log, for the store's `log/<drv>`.
    pub log: Vec<u8>,
    /// Time from the start of set-up until the builder was executing.
    pub setup_time: Duration,
}

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The builder exited unsuccessfully.
    #[error("builder for '{drv}' {status}")]
    BuilderFailed {
        /// The derivation.
        drv: String,
        /// Nix's description of the exit (`failed with exit code 3`).
        status: String,
        /// The log so far.
        log: Vec<u8>,
    },
    /// `timeout` passed.
    #[error("building of '{drv}' timed out after {} seconds", .after.as_secs())]
    Timeout {
        /// The derivation.
        drv: String,
        /// The limit.
        after: Duration,
    },
    /// `max-silent-time` passed.
    #[error("building of '{drv}' timed out after {} seconds of silence", .after.as_secs())]
    Silent {
        /// The derivation.
        drv: String,
        /// The limit.
        after: Duration,
    },
    /// Too much log output.
    #[error("building of '{drv}' killed after writing more than {limit} bytes of log output")]
    LogLimit {
        /// The derivation.
        drv: String,
        /// The limit.
        limit: u64,
    },
    /// Cancelled by the caller.
    #[error("build of '{drv}' was cancelled")]
    Cancelled {
        /// The derivation.
        drv: String,
    },
    /// The derivation asks for something this builder cannot do.
    #[error("cannot build '{drv}'")]
    Env {
        /// The derivation.
        drv: String,
        /// The problem.
        #[source]
        source: EnvError,
    },
    /// The derivation's outputs cannot be built.
    #[error("cannot build '{drv}'")]
    Recipe {
        /// The derivation.
        drv: String,
        /// The problem.
        #[source]
        source: RecipeError,
    },
    /// Laying out the sandbox root failed.
    #[error("cannot build '{drv}'")]
    Rootfs {
        /// The derivation.
        drv: String,
        /// The problem.
        #[source]
        source: RootfsError,
    },
    /// Starting the sandbox failed.
    #[error("cannot start the sandbox for '{drv}'")]
    Sandbox {
        /// The derivation.
        drv: String,
        /// The problem.
        #[source]
        source: SandboxError,
    },
    /// No unprivileged host user was free for the build.
    #[error("cannot build '{drv}'")]
    User {
        /// The derivation.
        drv: String,
        /// The problem.
        #[source]
        source: UserPoolError,
    },
    /// The outputs are invalid (missing, cycle, hash mismatch, …).
    #[error(transparent)]
    Output(#[from] OutputError),
    /// Scratch-directory or supervision I/O failed.
    #[error("building '{drv}': {action}")]
    Io {
        /// The derivation.
        drv: String,
        /// What was being done.
        action: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// Runs builds, at most `max_jobs` at once.
#[derive(Debug)]
pub struct Builder {
    config: BuilderConfig,
    /// Builds run as users of `config.user_pool` (see [`UserPool::usable`]).
    pool_usable: bool,
    slots: Arc<Semaphore>,
    counter: AtomicU64,
}

/// A build's scratch directories, removed when dropped: `work` on disk
/// (the build directory and the outputs) and, when there is a tmpfs for
/// it, the private directory holding the root's skeleton.
struct Scratch {
    work: PathBuf,
    tmpfs: Option<PathBuf>,
}

impl Scratch {
    fn root(&self) -> PathBuf {
        match &self.tmpfs {
            Some(t) => t.join("root"),
            None => self.work.join("root"),
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = rootfs::remove_tree(&self.work);
        if let Some(t) = &self.tmpfs {
            let _ = rootfs::remove_tree(t);
        }
    }
}

impl Builder {
    /// A builder with `config`.
    pub fn new(config: BuilderConfig) -> Self {
        let slots = Arc::new(Semaphore::new(config.max_jobs.max(1)));
        Builder {
            pool_usable: config.user_pool.usable(),
            config,
            slots,
            counter: AtomicU64::new(0),
        }
    }

    /// Its configuration.
    pub fn config(&self) -> &BuilderConfig {
        &self.config
    }

    /// Builds the derivation `drv` (whose `.drv` is at `drv_path`) with
    /// `inputs` (store path → host location; the closure of its input
    /// sources and input derivations' outputs) visible read-only.
    ///
    /// Dropping the returned future kills the build and removes its scratch
    /// directory.
    pub async fn build(
        &self,
        drv_path: &str,
        drv: &Derivation,
        inputs: &BTreeMap<String, PathBuf>,
        options: &BuildOptions,
    ) -> Result<BuildOutputs, BuildError> {
        let recipe = Recipe::from_derivation(drv).map_err(|source| BuildError::Recipe {
            drv: drv_path.into(),
            source,
        })?;
        self.build_recipe(drv_path, &recipe, inputs, options).await
    }

    /// [`Builder::build`] for an already converted [`Recipe`].
    pub async fn build_recipe(
        &self,
        drv_path: &str,
        recipe: &Recipe,
        inputs: &BTreeMap<String, PathBuf>,
        options: &BuildOptions,
    ) -> Result<BuildOutputs, BuildError> {
        let drv = drv_path.to_string();
        let cancelled = || BuildError::Cancelled { drv: drv.clone() };
        let permit = match &options.cancel {
            Some(c) => tokio::select! {
                p = self.slots.clone().acquire_owned() => p,
                _ = c.cancelled() => return Err(cancelled()),
            },
            None => self.slots.clone().acquire_owned().await,
        };
        let _permit = permit.map_err(|_| cancelled())?;
        if options.cancel.as_ref().is_some_and(|c| c.is_cancelled()) {
            return Err(cancelled());
        }
        let io = |action: &str| {
            let drv = drv.clone();
            let action = action.to_string();
            move |source| BuildError::Io {
                drv,
                action,
                source,
            }
        };

        let started = Instant::now();
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let base = drv_path.rsplit('/').next().unwrap_or("drv");
        let scratch_path = self
            .config
            .scratch_dir
            .join(format!("{}-{n}-{base}", std::process::id()));
        std::fs::create_dir_all(&self.config.scratch_dir)
            .map_err(io("creating the scratch directory"))?;
        rootfs::remove_tree(&scratch_path).map_err(io("clearing the scratch directory"))?;
        let scratch = Scratch {
            work: scratch_path,
            tmpfs: if self.config.tmpfs_root {
                rootfs::tmpfs_roots_dir()
            } else {
                None
            },
        };

        // Held until the build is over: its host uid is not reused before.
        let (child, root, _user) = self.start(&drv, recipe, inputs, &scratch)?;
        let setup_time = started.elapsed();

        let sup = Supervision {
            timeout: options.timeout,
            max_silent_time: options.max_silent_time,
            max_log_size: self.config.max_log_size,
            lines: options.log_lines.clone(),
            cancel: options.cancel.clone(),
        };
        let outcome = run::supervise(child, &sup)
            .await
            .map_err(io("supervising the builder"))?;
        let status = match outcome.result {
            Ok(st) => st,
            Err(Stop::Timeout(after)) => return Err(BuildError::Timeout { drv, after }),
            Err(Stop::Silent(after)) => return Err(BuildError::Silent { drv, after }),
            Err(Stop::LogLimit(limit)) => return Err(BuildError::LogLimit { drv, limit }),
            Err(Stop::Cancelled) => return Err(cancelled()),
        };
        if status != 0 {
            return Err(BuildError::BuilderFailed {
                drv,
                status: run::describe_status(status),
                log: outcome.log,
            });
        }

        let job = outputs::Job {
            drv_path: drv.clone(),
            store_dir: self.config.store_dir.clone(),
            built_store: root.store_dir.clone(),
            outputs: recipe.outputs.clone(),
            inputs: inputs.keys().cloned().collect(),
            out_dir: options.out_dir.clone(),
        };
        let outputs = tokio::task::spawn_blocking(move || outputs::finish(&job))
            .await
            .map_err(|e| io("processing outputs")(std::io::Error::other(e)))??;
        drop(scratch);
        Ok(BuildOutputs {
            outputs,
            log: outcome.log,
            setup_time,
        })
    }

    /// Lays out the root, writes the build files and starts the builder.
    fn start(
        &self,
        drv: &str,
        recipe: &Recipe,
        inputs: &BTreeMap<String, PathBuf>,
        scratch: &Scratch,
    ) -> Result<(sandbox::SandboxChild, rootfs::Rootfs, Option<BuildUser>), BuildError> {
        let fixed = recipe.is_fixed_output();
        let outs = recipe.output_paths();
        let params = EnvParams {
            drv_env: &recipe.env,
            outputs: &outs,
            store_dir: &self.config.store_dir,
            cores: self.config.cores,
            fixed_output: fixed,
        };
        let env =
            build_env(&params, |k| std::env::var(k).ok()).map_err(|source| BuildError::Env {
                drv: drv.into(),
                source,
            })?;
        let root_dir = scratch.root();
        let work_dir = scratch.work.join("work");
        let layout = rootfs::Layout {
            root: &root_dir,
            work: &work_dir,
        };
        let root = rootfs::prepare(
            layout,
            &self.config.store_dir,
            inputs.iter().map(|(k, v)| (k.as_str(), v.as_path())),
            fixed,
        )
        .map_err(|source| BuildError::Rootfs {
            drv: drv.into(),
            source,
        })?;
        for (name, data) in &env.files {
            let p = root.build_dir.join(name);
            std::fs::write(&p, data).map_err(|source| BuildError::Io {
                drv: drv.into(),
                action: format!("writing '{}'", p.display()),
                source,
            })?;
        }
        // As root, the build runs as an unprivileged host user of its own.
        let user = if self.pool_usable {
            let user = self
                .config
                .user_pool
                .acquire()
                .map_err(|source| BuildError::User {
                    drv: drv.into(),
                    source,
                })?;
            rootfs::hand_over(&root, user.uid, user.gid).map_err(|source| BuildError::Rootfs {
                drv: drv.into(),
                source,
            })?;
            Some(user)
        } else {
            None
        };
        let mut args = vec![recipe.builder.clone().into_bytes()];
        args.extend(recipe.args.iter().map(|a| a.clone().into_bytes()));
        let spec = SandboxSpec {
            root: root.root.clone(),
            binds: root.binds.clone(),
            host_user: user.as_ref().map(|u| (u.uid, u.gid)),
            private_network: !fixed,
            shm_size: self.config.shm_size.clone(),
            cwd: PathBuf::from(BUILD_DIR),
            program: recipe.builder.clone().into_bytes(),
            args,
            env: env.envp(),
        };
        let child = sandbox::spawn(&spec).map_err(|source| BuildError::Sandbox {
            drv: drv.into(),
            source,
        })?;
        Ok((child, root, user))
    }
}
