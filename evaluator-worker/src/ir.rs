//! Kiln's compact expression IR: variables are resolved to environment slots at
//! lowering time; only names not bound lexically are looked up in `with` scopes.

use crate::pos::Pos;
use crate::value::{Symbol, Value};
use std::rc::Rc;

/// A binary operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    /// `++`
    Concat,
    /// `//`
    Update,
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `*`
    Mul,
    /// `/`
    Div,
    /// `&&`
    And,
    /// `||`
    Or,
    /// `->`
    Impl,
    /// `==`
    Eq,
    /// `!=`
    Neq,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

/// One element of an attribute path: static name or computed.
#[derive(Debug)]
pub enum AttrKey {
    /// A name known at parse time.
    Static(Symbol),
    /// `${e}` or `"…${e}…"`.
    Dynamic(Rc<Expr>),
}

/// The value of one attribute in a set or `let`.
#[derive(Debug)]
pub struct AttrDef {
    /// Name.
    pub name: Symbol,
    /// Value expression, lowered in the scope it must be evaluated in.
    pub value: Rc<Expr>,
    /// True if the value is evaluated in the set's own (recursive) environment,
    /// false if in the enclosing one (`inherit x;` in a `rec` set).
    pub in_rec_env: bool,
    /// Where the attribute was defined.
    pub pos: Pos,
}

/// An attribute whose name is computed.
#[derive(Debug)]
pub struct DynAttr {
    /// Name expression.
    pub key: Rc<Expr>,
    /// Value expression.
    pub value: Rc<Expr>,
    /// Where it was defined.
    pub pos: Pos,
}

/// `{ ... }` or `rec { ... }` or the bindings of a `let`.
#[derive(Debug)]
pub struct AttrsDef {
    /// If true, a new environment is created whose slots are `attrs`, in order.
    pub rec: bool,
    /// Static attributes, in slot order.
    pub attrs: Vec<AttrDef>,
    /// Attributes with computed names.
    pub dynamic: Vec<DynAttr>,
}

/// A lambda's parameter pattern.
#[derive(Debug)]
pub struct Formals {
    /// Formal names with optional defaults, in slot order starting at slot 0.
    pub entries: Vec<(Symbol, Option<Rc<Expr>>)>,
    /// Position of each formal's name.
    pub positions: Vec<Pos>,
    /// `...` present.
    pub ellipsis: bool,
    /// Slot of the `@` name, if any (after the formals).
    pub at: Option<Symbol>,
}

/// A lambda.
#[derive(Debug)]
pub struct LambdaDef {
    /// Name of a plain parameter (slot 0), when there is no pattern.
    pub arg: Option<Symbol>,
    /// Pattern, if any.
    pub formals: Option<Formals>,
    /// Body, in an environment with one slot per parameter.
    pub body: Rc<Expr>,
    /// Where the lambda starts.
    pub pos: Pos,
    /// Number of slots in its environment.
    pub slots: usize,
    /// The name it is bound to (`f = x: …`), for error traces as Nix
    /// names lambdas; set once when the binding is lowered.
    pub name: std::cell::OnceCell<Symbol>,
}

/// Kind of a path literal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    /// `/abs`
    Absolute,
    /// `./rel`, resolved against the file's directory
    Relative,
    /// `~/x`
    Home,
}

/// An expression.
#[derive(Debug)]
pub enum Expr {
    /// A constant (number, literal string, resolved path literal).
    Const(Value),
    /// A variable bound lexically: environment `level` frames up, slot `slot`.
    Var {
        /// Frames up.
        level: u32,
        /// Slot.
        slot: u32,
        /// Where used.
        pos: Pos,
    },
    /// A builtin available in the global scope.
    Global(u32),
    /// A name not bound lexically: looked up in the enclosing `with`s, innermost first.
    WithVar {
        /// Name.
        name: Symbol,
        /// Frame levels of the enclosing `with`s, innermost first.
        withs: Vec<u32>,
        /// Where used.
        pos: Pos,
    },
    /// `e.a.b or d`
    Select {
        /// Subject.
        e: Rc<Expr>,
        /// Path.
        path: Vec<AttrKey>,
        /// `or` default.
        default: Option<Rc<Expr>>,
        /// Where.
        pos: Pos,
    },
    /// `e ? a.b`
    HasAttr {
        /// Subject.
        e: Rc<Expr>,
        /// Path.
        path: Vec<AttrKey>,
    },
    /// An attribute set.
    Attrs(AttrsDef),
    /// A list.
    List(Vec<Rc<Expr>>),
    /// A function.
    Lambda(Rc<LambdaDef>),
    /// Application.
    Apply {
        /// Function.
        f: Rc<Expr>,
        /// Argument.
        arg: Rc<Expr>,
        /// Where.
        pos: Pos,
    },
    /// `let`: bindings in a new frame, then the body.
    Let {
        /// Bindings (always `rec`).
        binds: AttrsDef,
        /// Body.
        body: Rc<Expr>,
    },
    /// `with e; body`: a frame with one slot holding `e`.
    With {
        /// Namespace.
        ns: Rc<Expr>,
        /// Body.
        body: Rc<Expr>,
    },
    /// `if c then a else b`
    If {
        /// Condition.
        cond: Rc<Expr>,
        /// Then.
        then: Rc<Expr>,
        /// Else.
        els: Rc<Expr>,
        /// Where.
        pos: Pos,
    },
    /// `assert c; body`
    Assert {
        /// Condition.
        cond: Rc<Expr>,
        /// Body.
        body: Rc<Expr>,
        /// Source text of the condition, for the message.
        text: String,
        /// Where.
        pos: Pos,
    },
    /// `!e`
    Not(Rc<Expr>, Pos),
    /// `-e`
    Neg(Rc<Expr>, Pos),
    /// Binary operator.
    Bin {
        /// Operator.
        op: BinOp,
        /// Left.
        l: Rc<Expr>,
        /// Right.
        r: Rc<Expr>,
        /// Where.
        pos: Pos,
    },
    /// String or path with interpolations. The first part decides the type.
    Concat {
        /// Parts.
        parts: Vec<Rc<Expr>>,
        /// True for strings (result is a string), false for paths.
        is_string: bool,
        /// Where.
        pos: Pos,
    },
    /// A path literal with interpolation: parts concatenated then resolved.
    PathInterp {
        /// Kind.
        kind: PathKind,
        /// Parts (first is the literal start).
        parts: Vec<Rc<Expr>>,
        /// Directory of the file, for relative paths.
        base: Rc<str>,
        /// Where.
        pos: Pos,
    },
    /// `__curPos`
    CurPos(Pos),
}
