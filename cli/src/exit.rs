//! Exit codes of `kiln build` and `kiln submit --wait`, distinct per
//! outcome so a CI pipeline can tell them apart (docs/cli.md lists them):
//!
//! | code | meaning |
//! |-----:|---------|
//! | 0    | every requested output was built or found in the store |
//! | 1    | evaluation failed (or another error, as with `nix-build`) |
//! | 2    | the command line was wrong |
//! | 100  | a build failed (`nix-build`'s code); 101 when a build timed out, 102 on a fixed-output hash mismatch, 103 both |
//! | 69   | the farm could not be reached (broker or coordinator; `EX_UNAVAILABLE`) |
//! | 130  | the job was cancelled (`kiln cancel`, or Ctrl-C on `kiln build`) |

use std::process::ExitCode;

use kiln_protocol::FailureKind;

/// Evaluation failed.
pub const EVAL_FAILED: u8 = 1;
/// A build failed; see [`build_failure`] for the added bits.
pub const BUILD_FAILED: u8 = 100;
/// The broker or the coordinator did not answer.
pub const UNREACHABLE: u8 = 69;
/// The job was cancelled.
pub const CANCELLED: u8 = 130;

/// The code for builds that failed with these kinds, as Nix computes it:
/// 100, plus 1 if one timed out, plus 2 if one had a hash mismatch.
pub fn build_failure(kinds: impl IntoIterator<Item = Option<FailureKind>>) -> ExitCode {
    let mut code = BUILD_FAILED;
    for k in kinds.into_iter().flatten() {
        match k {
            FailureKind::Timeout | FailureKind::SilentTimeout => code |= 1,
            FailureKind::HashMismatch => code |= 2,
            _ => {}
        }
    }
    ExitCode::from(code)
}

/// An error meaning the farm could not be reached; `main` exits with
/// [`UNREACHABLE`] when a command's error chain holds it.
#[derive(Debug)]
pub struct Unreachable(pub String);

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unreachable {}

/// Whether `err` says the farm could not be reached.
pub fn is_unreachable(err: &anyhow::Error) -> bool {
    err.chain()
        .any(|e| e.downcast_ref::<Unreachable>().is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_failure_codes_follow_nix() {
        assert_eq!(build_failure([None]), ExitCode::from(100));
        assert_eq!(
            build_failure([Some(FailureKind::BuilderExit)]),
            ExitCode::from(100)
        );
        assert_eq!(
            build_failure([Some(FailureKind::Timeout)]),
            ExitCode::from(101)
        );
        assert_eq!(
            build_failure([Some(FailureKind::HashMismatch)]),
            ExitCode::from(102)
        );
        assert_eq!(
            build_failure([
                Some(FailureKind::SilentTimeout),
                Some(FailureKind::HashMismatch)
            ]),
            ExitCode::from(103)
        );
    }

    #[test]
    fn unreachable_is_found_in_the_chain() {
        let e = anyhow::Error::new(Unreachable("no broker".into())).context("submitting");
        assert!(is_unreachable(&e));
        assert!(!is_unreachable(&anyhow::anyhow!("other")));
    }
}
