//! Renders a job's event stream: a live view on a terminal, one plain line
//! per event elsewhere, or JSON lines with `--json`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use kiln_protocol::{DrvStatus, Event, JobEvent};

/// How events are shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Live,
    Plain,
    Json,
}

/// The derivation's name: `/nix/store/<hash>-hello-2.12.drv` → `hello-2.12`.
pub fn drv_name(drv_path: &str) -> &str {
    let base = drv_path.rsplit('/').next().unwrap_or(drv_path);
    let base = base.strip_suffix(".drv").unwrap_or(base);
    match base.split_once('-') {
        Some((hash, name)) if hash.len() == 32 => name,
        _ => base,
    }
}

/// Replaces control characters (escape sequences, carriage returns) so a
/// build log cannot repaint the user's terminal or garble CI logs.
pub fn sanitize(line: &str) -> String {
    line.chars()
        .map(|c| {
            if c.is_control() && c != '\t' {
                '\u{fffd}'
            } else {
                c
            }
        })
        .collect()
}

/// [`sanitize`] for a message of several lines (an evaluation error with
/// its trace, a failure reason): line breaks stay, and the lines after the
/// first are indented so they read as part of one message.
pub fn sanitize_text(text: &str) -> String {
    text.trim_end_matches('\n')
        .split('\n')
        .map(sanitize)
        .collect::<Vec<_>>()
        .join("\n  ")
}

/// Keeps the state the live view needs and prints events.
pub struct Progress {
    mode: Mode,
    started: Instant,
    bar: Option<ProgressBar>,
    planned: HashSet<String>,
    cached: usize,
    done: usize,
    failed: usize,
    running: BTreeMap<String, Instant>,
    /// input → dependents, for dependency paths.
    dependents: HashMap<String, Vec<String>>,
    roots: HashSet<String>,
    /// The last log lines per derivation, for failure reports.
    tails: HashMap<String, Vec<String>>,
}

const TAIL: usize = 25;

impl Progress {
    pub fn new(mode: Mode) -> Self {
        let bar = (mode == Mode::Live).then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(10));
            bar.set_style(ProgressStyle::with_template("{msg}").expect("static template"));
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Progress {
            mode,
            started: Instant::now(),
            bar,
            planned: HashSet::new(),
            cached: 0,
            done: 0,
            failed: 0,
            running: BTreeMap::new(),
            dependents: HashMap::new(),
            roots: HashSet::new(),
            tails: HashMap::new(),
        }
    }

    /// Redraws the live view so elapsed times move between events.
    pub fn tick(&self) {
        if let Some(bar) = &self.bar {
            bar.set_message(self.view());
        }
    }

    /// The last log lines of a derivation.
    pub fn tail(&self, drv: &str) -> &[String] {
        self.tails.get(drv).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Handles one event.
    pub fn event(&mut self, ev: &JobEvent) {
        self.track(&ev.event);
        match self.mode {
            Mode::Json => {
                let mut out = std::io::stdout().lock();
                if let Ok(line) = serde_json::to_string(ev) {
                    let _ = writeln!(out, "{line}");
                }
            }
            Mode::Plain => {
                if let Some(line) = plain_line(&ev.event) {
                    eprintln!("[{:>7.2}s] {line}", ev.at_ms as f64 / 1000.0);
                }
            }
            Mode::Live => {
                if let Some(bar) = &self.bar {
                    match &ev.event {
                        Event::Log { drv_path, line } => {
                            bar.println(format!("{}> {}", drv_name(drv_path), sanitize(line)))
                        }
                        Event::Failed { .. }
                        | Event::Built { .. }
                        | Event::DependencyFailed { .. } => {
                            if let Some(line) = plain_line(&ev.event) {
                                bar.println(line);
                            }
                        }
                        _ => {}
                    }
                    bar.set_message(self.view());
                }
            }
        }
    }

    fn track(&mut self, event: &Event) {
        match event {
            Event::Discovered { drv_path, inputs } => {
                self.planned.insert(drv_path.clone());
                for i in inputs {
                    self.dependents
                        .entry(i.clone())
                        .or_default()
                        .push(drv_path.clone());
                }
            }
            Event::Root { drv_path, .. } => {
                self.roots.insert(drv_path.clone());
            }
            Event::Cached { .. } => self.cached += 1,
            Event::Started { drv_path, .. } => {
                self.running.insert(drv_path.clone(), Instant::now());
            }
            Event::Log { drv_path, line } => {
                let t = self.tails.entry(drv_path.clone()).or_default();
                if t.len() == TAIL {
                    t.remove(0);
                }
                t.push(sanitize(line));
            }
            Event::Built { drv_path, .. } => {
                self.running.remove(drv_path);
                self.done += 1;
            }
            Event::Failed { drv_path, .. } | Event::DependencyFailed { drv_path, .. } => {
                self.running.remove(drv_path);
                self.failed += 1;
            }
            Event::Queued { .. } | Event::EvalFinished { .. } | Event::JobFinished { .. } => {}
        }
    }

    /// A path from a root down to `drv`, as names (`root → … → drv`).
    fn dependency_path(&self, drv: &str) -> Vec<String> {
        let mut path = vec![drv.to_string()];
        let mut seen = HashSet::new();
        let mut cur = drv.to_string();
        while !self.roots.contains(&cur) {
            let Some(next) = self.dependents.get(&cur).and_then(|d| d.first()) else {
                break;
            };
            if !seen.insert(next.clone()) {
                break;
            }
            path.push(next.clone());
            cur = next.clone();
        }
        path.reverse();
        path.iter().map(|p| drv_name(p).to_string()).collect()
    }

    fn view(&self) -> String {
        let mut s = format!(
            "planned {}  running {}  cached {}  done {}  failed {}  ⏱ {:.1}s",
            self.planned.len(),
            self.running.len(),
            self.cached,
            self.done,
            self.failed,
            self.started.elapsed().as_secs_f64()
        );
        for (drv, since) in self.running.iter().take(10) {
            s.push_str(&format!(
                "\n  ⏵ {} ({:.1}s)  {}",
                drv_name(drv),
                since.elapsed().as_secs_f64(),
                self.dependency_path(drv).join(" → ")
            ));
        }
        if self.running.len() > 10 {
            s.push_str(&format!("\n  … and {} more", self.running.len() - 10));
        }
        s
    }

    /// Stops the live view.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// The one-line form of an event (`None` for events not worth a line).
fn plain_line(event: &Event) -> Option<String> {
    Some(match event {
        Event::Discovered { drv_path, .. } => format!("planned {drv_path}"),
        Event::Root {
            attr_path,
            drv_path,
        } => format!(
            "root {} = {drv_path}",
            if attr_path.is_empty() {
                "<top>"
            } else {
                attr_path
            }
        ),
        Event::Cached { drv_path } => format!("cached {}", drv_name(drv_path)),
        Event::Queued { drv_path } => format!("queued {}", drv_name(drv_path)),
        Event::Started {
            drv_path,
            builder_id,
        } => format!("building {} on {builder_id}", drv_name(drv_path)),
        Event::Log { drv_path, line } => format!("{}> {}", drv_name(drv_path), sanitize(line)),
        Event::Built {
            drv_path,
            duration_ms,
            ..
        } => {
            format!(
                "built {} in {:.2}s",
                drv_name(drv_path),
                *duration_ms as f64 / 1000.0
            )
        }
        Event::Failed {
            drv_path, reason, ..
        } => format!("failed {drv_path}: {}", sanitize_text(reason)),
        Event::DependencyFailed {
            drv_path,
            dependency,
        } => {
            format!(
                "dependency failed {}: {} failed",
                drv_name(drv_path),
                drv_name(dependency)
            )
        }
        Event::EvalFinished { error: None } => "evaluation finished".to_string(),
        Event::EvalFinished { error: Some(e) } => {
            format!("evaluation failed: {}", sanitize_text(e))
        }
        Event::JobFinished {
            success, summary, ..
        } => {
            let count = |st: DrvStatus| summary.iter().filter(|d| d.status == st).count();
            format!(
                "job {}: {} built, {} cached, {} failed, {} dependency failed",
                if *success { "succeeded" } else { "failed" },
                count(DrvStatus::Built),
                count(DrvStatus::Cached),
                count(DrvStatus::Failed),
                count(DrvStatus::DependencyFailed)
            )
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_sanitising() {
        assert_eq!(
            drv_name("/nix/store/s5nvav9b8g8kczqzrn1n1npbvs31hgs4-hello-2.12.drv"),
            "hello-2.12"
        );
        assert_eq!(sanitize("a\x1b[2Jb\rc\td"), "a\u{fffd}[2Jb\u{fffd}c\td");
        let eval = plain_line(&Event::EvalFinished {
            error: Some("error: undefined variable 'x'\n\n       at /a.nix:1:1:\n\x1b[2J\n".into()),
        })
        .unwrap();
        assert_eq!(
            eval,
            "evaluation failed: error: undefined variable 'x'\n  \n         at /a.nix:1:1:\n  \u{fffd}[2J"
        );
        let line = plain_line(&Event::Log {
            drv_path: "/nix/store/s5nvav9b8g8kczqzrn1n1npbvs31hgs4-x.drv".into(),
            line: "\x1b[31mred".into(),
        })
        .unwrap();
        assert!(!line.chars().any(|c| c.is_control()), "{line:?}");
    }

    #[test]
    fn dependency_path_walks_to_a_root() {
        let mut p = Progress::new(Mode::Plain);
        let d = |n: &str| format!("/nix/store/{}-{n}.drv", "a".repeat(32));
        p.track(&Event::Discovered {
            drv_path: d("zlib"),
            inputs: vec![],
        });
        p.track(&Event::Discovered {
            drv_path: d("lib"),
            inputs: vec![d("zlib")],
        });
        p.track(&Event::Discovered {
            drv_path: d("app"),
            inputs: vec![d("lib")],
        });
        p.track(&Event::Root {
            attr_path: "app".into(),
            drv_path: d("app"),
        });
        assert_eq!(p.dependency_path(&d("zlib")), vec!["app", "lib", "zlib"]);
    }
}
