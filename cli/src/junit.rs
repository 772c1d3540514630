//! `--junit FILE`: a job's outcome as a JUnit XML report, one test case
//! per root attribute, in the shape GitLab, Jenkins and GitHub Actions
//! reporters read (`testsuites` > `testsuite` > `testcase`, with
//! `failure`, `error` or `skipped`).
//!
//! A root whose derivation was built or found in the store passes; one
//! whose build failed carries a `failure` with the reason and the log
//! tail; one not built because an input failed carries a `failure` naming
//! that input (with the input's log tail); an attribute that evaluation
//! never produced carries an `error` with the evaluation error.

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use kiln_protocol::{DrvStatus, DrvSummary};
use quick_xml::events::{BytesDecl, BytesEnd, BytesStart, BytesText, Event};
use quick_xml::Writer;

use crate::build::{Failure, Outcome};

/// One test case of the report.
#[derive(Debug, PartialEq)]
struct Case {
    name: String,
    time_secs: f64,
    result: CaseResult,
    /// The root's outputs, shown as the case's standard output.
    out: String,
}

#[derive(Debug, PartialEq)]
enum CaseResult {
    Passed,
    Failure {
        message: String,
        kind: String,
        text: String,
    },
    Error {
        message: String,
        text: String,
    },
    Skipped {
        message: String,
    },
}

/// Writes the report of `outcome` for the job `job` (which asked for
/// `requested` attributes) to `path`.
pub fn write(
    path: &Path,
    job: uuid::Uuid,
    requested: &[String],
    outcome: &Outcome,
    elapsed_secs: f64,
) -> Result<()> {
    let cases = cases(requested, outcome);
    let mut bytes = Vec::new();
    render(&mut bytes, job, &cases, elapsed_secs).context("rendering the JUnit report")?;
    std::fs::write(path, bytes)
        .with_context(|| format!("writing the JUnit report '{}'", path.display()))
}

/// The test cases: one per root, then one per requested attribute that
/// produced no root.
fn cases(requested: &[String], o: &Outcome) -> Vec<Case> {
    let summary: HashMap<&str, &DrvSummary> =
        o.summary.iter().map(|d| (d.drv_path.as_str(), d)).collect();
    let failures: HashMap<&str, &Failure> = o
        .failures
        .iter()
        .map(|f| (f.drv_path.as_str(), f))
        .collect();
    let dependency: HashMap<&str, &str> = o
        .dependency_failures
        .iter()
        .map(|(d, dep)| (d.as_str(), dep.as_str()))
        .collect();
    let mut cases = Vec::new();
    let mut seen = BTreeSet::new();
    for root in &o.roots {
        seen.insert(root.attr_path.clone());
        let drv = root.drv_path.as_str();
        let s = summary.get(drv);
        let time_secs = s.and_then(|s| s.duration_ms).unwrap_or(0) as f64 / 1000.0;
        let status = s.map(|s| s.status);
        let result = match (status, failures.get(drv), dependency.get(drv)) {
            (Some(DrvStatus::Built | DrvStatus::Cached), ..) => CaseResult::Passed,
            (_, Some(f), _) => CaseResult::Failure {
                message: f.reason.clone(),
                kind: f
                    .kind
                    .map_or("build".into(), |k| format!("{k:?}").to_lowercase()),
                text: f.log_tail.join("\n"),
            },
            (_, None, Some(dep)) => CaseResult::Failure {
                message: format!("not built: its dependency '{dep}' failed"),
                kind: "dependency".into(),
                text: failures
                    .get(dep)
                    .map(|f| format!("{}\n{}", f.reason, f.log_tail.join("\n")))
                    .unwrap_or_default(),
            },
            _ if o.cancelled => CaseResult::Skipped {
                message: "the job was cancelled".into(),
            },
            _ => CaseResult::Skipped {
                message: "not built: the job stopped at its first failure".into(),
            },
        };
        let out = root
            .outputs
            .values()
            .cloned()
            .collect::<Vec<_>>()
            .join("\n");
        cases.push(Case {
            name: root.attr_path.clone(),
            time_secs,
            result,
            out,
        });
    }
    let missing: Vec<&String> = requested.iter().filter(|a| !seen.contains(*a)).collect();
    let eval_error = o.eval_error.clone();
    if let Some(e) = &eval_error {
        let names: Vec<String> = if missing.is_empty() && o.roots.is_empty() {
            vec!["(evaluation)".into()]
        } else {
            missing.iter().map(|s| (*s).clone()).collect()
        };
        for name in names {
            cases.push(Case {
                name,
                time_secs: 0.0,
                result: if o.cancelled {
                    CaseResult::Skipped {
                        message: "the job was cancelled".into(),
                    }
                } else {
                    CaseResult::Error {
                        message: "evaluation failed".into(),
                        text: e.clone(),
                    }
                },
                out: String::new(),
            });
        }
    }
    cases
}

/// XML 1.0 cannot carry most control characters (a log's colour codes):
/// they are written as U+FFFD.
fn xml_text(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() && !matches!(c, '\n' | '\t' | '\r') {
                '\u{FFFD}'
            } else {
                c
            }
        })
        .collect()
}

fn render(
    out: &mut Vec<u8>,
    job: uuid::Uuid,
    cases: &[Case],
    elapsed_secs: f64,
) -> std::io::Result<()> {
    let count = |f: fn(&CaseResult) -> bool| cases.iter().filter(|c| f(&c.result)).count();
    let failures = count(|r| matches!(r, CaseResult::Failure { .. })).to_string();
    let errors = count(|r| matches!(r, CaseResult::Error { .. })).to_string();
    let skipped = count(|r| matches!(r, CaseResult::Skipped { .. })).to_string();
    let tests = cases.len().to_string();
    let time = format!("{elapsed_secs:.3}");
    let suite_name = format!("kiln job {job}");
    let mut w = Writer::new_with_indent(out, b' ', 2);
    w.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))?;
    let mut suites = BytesStart::new("testsuites");
    suites.push_attribute(("name", "kiln"));
    suites.push_attribute(("tests", tests.as_str()));
    suites.push_attribute(("failures", failures.as_str()));
    suites.push_attribute(("errors", errors.as_str()));
    suites.push_attribute(("skipped", skipped.as_str()));
    suites.push_attribute(("time", time.as_str()));
    w.write_event(Event::Start(suites))?;
    let mut suite = BytesStart::new("testsuite");
    suite.push_attribute(("name", suite_name.as_str()));
    suite.push_attribute(("tests", tests.as_str()));
    suite.push_attribute(("failures", failures.as_str()));
    suite.push_attribute(("errors", errors.as_str()));
    suite.push_attribute(("skipped", skipped.as_str()));
    suite.push_attribute(("time", time.as_str()));
    w.write_event(Event::Start(suite))?;
    for c in cases {
        let mut tc = BytesStart::new("testcase");
        let name = xml_text(&c.name);
        let time = format!("{:.3}", c.time_secs);
        tc.push_attribute(("classname", "kiln"));
        tc.push_attribute(("name", name.as_str()));
        tc.push_attribute(("time", time.as_str()));
        w.write_event(Event::Start(tc))?;
        let detail = |w: &mut Writer<&mut Vec<u8>>,
                      tag: &str,
                      attrs: &[(&str, &str)],
                      text: &str|
         -> std::io::Result<()> {
            let mut e = BytesStart::new(tag);
            for (k, v) in attrs {
                e.push_attribute((*k, xml_text(v).as_str()));
            }
            if text.is_empty() {
                w.write_event(Event::Empty(e))?;
            } else {
                w.write_event(Event::Start(e))?;
                w.write_event(Event::Text(BytesText::new(&xml_text(text))))?;
                w.write_event(Event::End(BytesEnd::new(tag)))?;
            }
            Ok(())
        };
        match &c.result {
            CaseResult::Passed => {}
            CaseResult::Failure {
                message,
                kind,
                text,
            } => detail(
                &mut w,
                "failure",
                &[("message", message), ("type", kind)],
                text,
            )?,
            CaseResult::Error { message, text } => detail(
                &mut w,
                "error",
                &[("message", message), ("type", "evaluation")],
                text,
            )?,
            CaseResult::Skipped { message } => {
                detail(&mut w, "skipped", &[("message", message)], "")?
            }
        }
        if !c.out.is_empty() {
            detail(&mut w, "system-out", &[], &c.out)?;
        }
        w.write_event(Event::End(BytesEnd::new("testcase")))?;
    }
    w.write_event(Event::End(BytesEnd::new("testsuite")))?;
    w.write_event(Event::End(BytesEnd::new("testsuites")))?;
    w.into_inner().write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_protocol::{EvalRoot, FailureKind};

    fn root(attr: &str, drv: &str) -> EvalRoot {
        EvalRoot {
            job_id: uuid::Uuid::nil(),
            attempt: uuid::Uuid::nil(),
            attr_path: attr.into(),
            drv_path: drv.into(),
            outputs: [("out".to_string(), format!("{drv}-out"))].into(),
        }
    }

    fn summary(drv: &str, status: DrvStatus) -> DrvSummary {
        DrvSummary {
            drv_path: drv.into(),
            status,
            duration_ms: Some(1500),
            log: None,
        }
    }

    #[test]
    fn one_case_per_root_and_per_attribute_evaluation_lost() {
        let o = Outcome {
            success: false,
            cancelled: false,
            roots: vec![root("ok", "/a"), root("bad", "/b"), root("after", "/c")],
            failures: vec![Failure {
                drv_path: "/x".into(),
                reason: "builder for '/x' failed with exit code 1".into(),
                log_tail: vec!["oops \u{1b}[31m<red>".into()],
                kind: Some(FailureKind::BuilderExit),
            }],
            dependency_failures: vec![("/b".into(), "/x".into())],
            eval_error: Some("error: undefined variable 'y'".into()),
            summary: vec![
                summary("/a", DrvStatus::Cached),
                summary("/b", DrvStatus::DependencyFailed),
                summary("/c", DrvStatus::NotBuilt),
            ],
        };
        let cases = cases(&["ok".into(), "bad".into(), "lost".into()], &o);
        let names: Vec<&str> = cases.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["ok", "bad", "after", "lost"]);
        assert_eq!(cases[0].result, CaseResult::Passed);
        assert!(
            matches!(&cases[1].result, CaseResult::Failure { kind, text, .. } if kind == "dependency" && text.contains("oops"))
        );
        assert!(matches!(cases[2].result, CaseResult::Skipped { .. }));
        assert!(matches!(cases[3].result, CaseResult::Error { .. }));
        let mut xml = Vec::new();
        render(&mut xml, uuid::Uuid::nil(), &cases, 2.0).unwrap();
        let xml = String::from_utf8(xml).unwrap();
        assert!(
            xml.contains(r#"tests="4" failures="1" errors="1" skipped="1""#),
            "{xml}"
        );
        assert!(
            xml.contains("&lt;red&gt;") && !xml.contains('\u{1b}'),
            "{xml}"
        );
    }
}
