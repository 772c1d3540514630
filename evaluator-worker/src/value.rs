//! Runtime values: Rc-shared, cheap to clone, with lazily evaluated thunks.

use crate::error::{Error, ErrorKind, Result};
use crate::eval::{Env, Eval};
use crate::ir::{Expr, LambdaDef};
use crate::pos::Pos;
use std::cell::RefCell;
use std::fmt;
use std::rc::Rc;

/// An identifier or attribute name. Equal names compare by pointer first.
/// Shared with an atomic count: names are interned by the parsing thread
/// too (see [`crate::prefetch`]), so one name is one allocation per
/// evaluator whichever thread lowered the file.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Symbol(pub std::sync::Arc<str>);

impl Symbol {
    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Symbol {
    fn from(s: &str) -> Self {
        Symbol(std::sync::Arc::from(s))
    }
}

impl fmt::Debug for Symbol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

/// The string context: store paths a string refers to, sorted and deduplicated.
/// Elements are `/nix/store/...` (plain path), `!OUT!/nix/store/...drv` (one output)
/// or `=/nix/store/...drv` (a whole derivation with its closure).
pub type Context = Vec<Rc<str>>;

/// A string value with its context.
#[derive(Debug, Clone, PartialEq)]
pub struct NixString {
    /// The text.
    pub s: String,
    /// The context (empty for most strings).
    pub ctx: Context,
}

impl NixString {
    /// A string without context.
    pub fn plain(s: impl Into<String>) -> Self {
        NixString {
            s: s.into(),
            ctx: Vec::new(),
        }
    }
    /// Merge `other` into this context.
    pub fn add_context(&mut self, other: &[Rc<str>]) {
        merge_context(&mut self.ctx, other);
    }
}

/// Merge `other` into `ctx`, keeping it sorted and deduplicated.
pub fn merge_context(ctx: &mut Context, other: &[Rc<str>]) {
    for c in other {
        if let Err(i) = ctx.binary_search(c) {
            ctx.insert(i, c.clone());
        }
    }
}

/// A builtin function.
pub struct PrimOp {
    /// Name as printed in errors (`map`, `foldl'`).
    pub name: &'static str,
    /// Number of arguments it takes.
    pub arity: usize,
    /// The implementation: receives exactly `arity` arguments.
    pub f: fn(&Eval, &[Value], Pos) -> Result<Value>,
}

/// A primop applied to fewer arguments than its arity.
pub struct PrimOpApp {
    /// The builtin.
    pub op: Rc<PrimOp>,
    /// Arguments so far (fewer than its arity).
    pub args: Vec<Value>,
}

/// A user-defined function together with the environment it closes over.
pub struct Closure {
    /// The lambda's definition.
    pub def: Rc<LambdaDef>,
    /// Its environment.
    pub env: Rc<Env>,
}

/// A value. Thunks are values too ([`Value::Thunk`]); [`Eval::force`] resolves them.
#[derive(Clone)]
pub enum Value {
    /// `null`
    Null,
    /// `true` / `false`
    Bool(bool),
    /// 64-bit integer.
    Int(i64),
    /// Double.
    Float(f64),
    /// String with context.
    Str(Rc<NixString>),
    /// Absolute, canonical path (a thin pointer: `Rc<str>` would make
    /// every value 24 bytes instead of 16).
    Path(Rc<String>),
    /// Attribute set.
    Attrs(Rc<Attrs>),
    /// List.
    List(Rc<Vec<Value>>),
    /// Lambda.
    Lambda(Rc<Closure>),
    /// Builtin.
    PrimOp(Rc<PrimOp>),
    /// Partially applied builtin.
    PrimOpApp(Rc<PrimOpApp>),
    /// A not yet evaluated (or shared, evaluated) value.
    Thunk(Thunk),
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => write!(f, "null"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => write!(f, "{x}"),
            Value::Str(s) => write!(f, "{:?}", s.s),
            Value::Path(p) => write!(f, "{p}"),
            Value::Attrs(a) => write!(f, "{{ {} attrs }}", a.len()),
            Value::List(l) => write!(f, "[ {} items ]", l.len()),
            Value::Lambda(_) => write!(f, "<LAMBDA>"),
            Value::PrimOp(_) | Value::PrimOpApp(_) => write!(f, "<PRIMOP>"),
            Value::Thunk(_) => write!(f, "<CODE>"),
        }
    }
}

impl Value {
    /// A string value without context.
    pub fn string(s: impl Into<String>) -> Value {
        Value::Str(Rc::new(NixString::plain(s)))
    }
    /// A string value with context.
    pub fn string_ctx(s: impl Into<String>, ctx: Context) -> Value {
        Value::Str(Rc::new(NixString { s: s.into(), ctx }))
    }
    /// A list value.
    pub fn list(v: Vec<Value>) -> Value {
        Value::List(Rc::new(v))
    }
    /// Nix's name of the value's type, as used in error messages
    /// ("an integer", "a set").
    pub fn type_desc(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a Boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a float",
            Value::Str(_) => "a string",
            Value::Path(_) => "a path",
            Value::Attrs(_) => "a set",
            Value::List(_) => "a list",
            Value::Lambda(_) => "a function",
            Value::PrimOp(_) => "a built-in function",
            Value::PrimOpApp(_) => "a partially applied built-in function",
            Value::Thunk(_) => "a thunk",
        }
    }
    /// `builtins.typeOf` name.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "string",
            Value::Path(_) => "path",
            Value::Attrs(_) => "set",
            Value::List(_) => "list",
            Value::Lambda(_) | Value::PrimOp(_) | Value::PrimOpApp(_) => "lambda",
            Value::Thunk(_) => "thunk",
        }
    }
    /// True for lambdas and builtins.
    pub fn is_function(&self) -> bool {
        matches!(
            self,
            Value::Lambda(_) | Value::PrimOp(_) | Value::PrimOpApp(_)
        )
    }
}

/// One attribute: name, value and where it was defined.
#[derive(Clone)]
pub struct Attr {
    /// Name.
    pub name: Symbol,
    /// Value (often a thunk).
    pub value: Value,
    /// Definition position, for `unsafeGetAttrPos`.
    pub pos: Option<Pos>,
}

/// An attribute set, sorted by name.
#[derive(Clone, Default)]
pub struct Attrs {
    entries: Vec<Attr>,
}

impl Attrs {
    /// An empty set.
    pub fn new() -> Self {
        Attrs {
            entries: Vec::new(),
        }
    }
    /// Build from unsorted entries; later duplicates are dropped.
    pub fn from_unsorted(mut entries: Vec<Attr>) -> Self {
        entries.sort_by(|a, b| a.name.0.cmp(&b.name.0));
        entries.dedup_by(|b, a| a.name.0 == b.name.0);
        Attrs { entries }
    }
    /// Build from entries already sorted by name without duplicates.
    pub fn from_sorted(entries: Vec<Attr>) -> Self {
        debug_assert!(entries.windows(2).all(|w| w[0].name.0 < w[1].name.0));
        Attrs { entries }
    }
    /// Number of attributes.
    pub fn len(&self) -> usize {
        self.entries.len()
    }
    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
    fn find(&self, name: &str) -> std::result::Result<usize, usize> {
        if self.entries.len() <= 8 {
            for (i, e) in self.entries.iter().enumerate() {
                match (*e.name.0).cmp(name) {
                    std::cmp::Ordering::Equal => return Ok(i),
                    std::cmp::Ordering::Greater => return Err(i),
                    std::cmp::Ordering::Less => {}
                }
            }
            return Err(self.entries.len());
        }
        self.entries.binary_search_by(|e| (*e.name.0).cmp(name))
    }
    /// The attribute named `name`.
    pub fn get_attr(&self, name: &str) -> Option<&Attr> {
        self.find(name).ok().map(|i| &self.entries[i])
    }
    /// The value of attribute `name`.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.get_attr(name).map(|a| &a.value)
    }
    /// Insert or replace an attribute.
    pub fn insert(&mut self, attr: Attr) {
        match self.find(attr.name.as_str()) {
            Ok(i) => self.entries[i] = attr,
            Err(i) => self.entries.insert(i, attr),
        }
    }
    /// Remove an attribute.
    pub fn remove(&mut self, name: &str) {
        if let Ok(i) = self.find(name) {
            self.entries.remove(i);
        }
    }
    /// Entries in name order.
    pub fn iter(&self) -> std::slice::Iter<'_, Attr> {
        self.entries.iter()
    }
    /// `self // other`.
    pub fn update(&self, other: &Attrs) -> Attrs {
        if other.is_empty() {
            return self.clone();
        }
        if self.is_empty() {
            return other.clone();
        }
        let mut out = Vec::with_capacity(self.len() + other.len());
        let (mut i, mut j) = (0, 0);
        while i < self.entries.len() && j < other.entries.len() {
            match self.entries[i].name.0.cmp(&other.entries[j].name.0) {
                std::cmp::Ordering::Less => {
                    out.push(self.entries[i].clone());
                    i += 1;
                }
                std::cmp::Ordering::Greater => {
                    out.push(other.entries[j].clone());
                    j += 1;
                }
                std::cmp::Ordering::Equal => {
                    out.push(other.entries[j].clone());
                    i += 1;
                    j += 1;
                }
            }
        }
        out.extend_from_slice(&self.entries[i..]);
        out.extend_from_slice(&other.entries[j..]);
        Attrs { entries: out }
    }
}

/// The state of a thunk.
pub enum ThunkState {
    /// Evaluate `expr` in `env`.
    Expr(Rc<Env>, Rc<Expr>),
    /// Apply a function value to an argument (boxed: it is the largest
    /// state, and keeping it out of line makes every thunk 32 bytes
    /// smaller).
    Apply(Box<(Value, Value, Pos)>),
    /// Being evaluated right now: forcing it again is infinite recursion.
    Blackhole,
    /// Evaluated.
    Done(Value),
    /// Emptied when the evaluator that made it was dropped (to break
    /// reference cycles): forcing it is an error.
    Released,
}

// Every value and every thunk is made of these: keep them small.
const _: () = assert!(std::mem::size_of::<Value>() <= 16);
const _: () = assert!(std::mem::size_of::<ThunkState>() <= 24);
// Attribute sets are arrays of these.
const _: () = assert!(std::mem::size_of::<Attr>() <= 40);

/// A shared, lazily evaluated value.
#[derive(Clone)]
pub struct Thunk(pub Rc<RefCell<ThunkState>>);

impl Thunk {
    /// A thunk evaluating `expr` in `env`.
    pub fn new(env: Rc<Env>, expr: Rc<Expr>) -> Thunk {
        Thunk(Rc::new(RefCell::new(ThunkState::Expr(env, expr))))
    }
    /// A thunk applying `f` to `arg`.
    pub fn apply(f: Value, arg: Value, pos: Pos) -> Value {
        Value::Thunk(Thunk(Rc::new(RefCell::new(ThunkState::Apply(Box::new((
            f, arg, pos,
        )))))))
    }
    /// The value, if already evaluated.
    pub fn value(&self) -> Option<Value> {
        match &*self.0.try_borrow().ok()? {
            ThunkState::Done(v) => Some(v.clone()),
            _ => None,
        }
    }
    /// Force the thunk, detecting infinite recursion.
    pub fn force(&self, ev: &Eval) -> Result<Value> {
        let state = {
            let mut b = self.0.borrow_mut();
            match &*b {
                ThunkState::Done(v) => return Ok(v.clone()),
                ThunkState::Blackhole => return Err(Error::new(ErrorKind::InfiniteRecursion)),
                ThunkState::Released => {
                    return Err(Error::eval(
                        "a value was used after the evaluation that made it ended",
                    ))
                }
                _ => {}
            }
            std::mem::replace(&mut *b, ThunkState::Blackhole)
        };
        let res = match &state {
            ThunkState::Expr(env, expr) => ev.eval(env, expr).and_then(|v| ev.force(&v)),
            ThunkState::Apply(app) => {
                let (f, a, pos) = &**app;
                ev.call(f, a.clone(), *pos).and_then(|v| ev.force(&v))
            }
            _ => unreachable!("checked above"),
        };
        match res {
            Ok(v) => {
                *self.0.borrow_mut() = ThunkState::Done(v.clone());
                ev.note_update(&self.0, &v);
                Ok(v)
            }
            Err(e) => {
                *self.0.borrow_mut() = state;
                Err(e)
            }
        }
    }
}
