//! Evaluation and parse errors, with the source position they happened at.

use crate::pos::Pos;

/// What went wrong.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ErrorKind {
    /// The source text is not valid Nix.
    #[error("{0}")]
    Parse(String),
    /// A variable that is bound nowhere (lexically or by `with`).
    #[error("undefined variable '{0}'")]
    UndefinedVariable(String),
    /// `throw`, and other errors `tryEval` may catch.
    #[error("{0}")]
    Throw(String),
    /// `assert` whose condition was false (catchable by `tryEval`).
    #[error("assertion '{0}' failed")]
    Assertion(String),
    /// `abort`.
    #[error("evaluation aborted with the following error message: '{0}'")]
    Abort(String),
    /// A thunk needed its own value.
    #[error("infinite recursion encountered")]
    InfiniteRecursion,
    /// Recursion deeper than the evaluator's limit.
    #[error("stack overflow (possible infinite recursion; evaluation depth {0})")]
    TooDeep(usize),
    /// A builtin this evaluator does not provide.
    #[error("builtin '{0}' is not supported by Kiln's evaluator")]
    UnsupportedBuiltin(String),
    /// A file could not be read.
    #[error("{msg} '{path}'")]
    Io { msg: String, path: String },
    /// Every other evaluation error (type errors, missing attributes, ...).
    #[error("{0}")]
    Eval(String),
}

/// Most trace frames an error keeps.
pub const MAX_TRACE: usize = 1000;

/// An error with the position it happened at and a trace of enclosing frames.
///
/// Boxed, so that the `Result<Value>` every evaluation step returns stays
/// two words wide; the fields are reached through `Deref` ([`ErrorData`]).
#[derive(Debug, Clone)]
pub struct Error(Box<ErrorData>);

/// What an [`Error`] holds.
#[derive(Debug, Clone)]
pub struct ErrorData {
    /// What went wrong.
    pub kind: ErrorKind,
    /// Where, if known.
    pub pos: Option<Pos>,
    /// Enclosing contexts, innermost first (shown with `--show-trace`).
    pub trace: Vec<(Option<Pos>, String)>,
}

impl std::ops::Deref for Error {
    type Target = ErrorData;
    fn deref(&self) -> &ErrorData {
        &self.0
    }
}

impl std::ops::DerefMut for Error {
    fn deref_mut(&mut self) -> &mut ErrorData {
        &mut self.0
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.kind.fmt(f)
    }
}

impl std::error::Error for Error {}

/// Result alias used throughout the evaluator.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error of kind `kind` with no position.
    pub fn new(kind: ErrorKind) -> Self {
        Error(Box::new(ErrorData {
            kind,
            pos: None,
            trace: Vec::new(),
        }))
    }
    /// A generic evaluation error.
    pub fn eval(msg: impl Into<String>) -> Self {
        Error::new(ErrorKind::Eval(msg.into()))
    }
    /// A catchable `throw`.
    pub fn throw(msg: impl Into<String>) -> Self {
        Error::new(ErrorKind::Throw(msg.into()))
    }
    /// Attach `pos` if the error has none yet.
    pub fn at(mut self, pos: Pos) -> Self {
        if self.pos.is_none() {
            self.pos = Some(pos);
        }
        self
    }
    /// Attach `pos` if the error has none yet and `pos` is some.
    pub fn at_opt(mut self, pos: Option<Pos>) -> Self {
        if self.pos.is_none() {
            self.pos = pos;
        }
        self
    }
    /// Add a trace frame (at most [`MAX_TRACE`]: an error out of a very
    /// deep recursion keeps its innermost frames).
    pub fn with_trace(mut self, pos: Option<Pos>, msg: impl Into<String>) -> Self {
        if self.trace.len() < MAX_TRACE {
            self.trace.push((pos, msg.into()));
        }
        self
    }
    /// True for errors `builtins.tryEval` catches (throw and assert).
    pub fn is_catchable(&self) -> bool {
        matches!(self.kind, ErrorKind::Throw(_) | ErrorKind::Assertion(_))
    }
}
