//! The tree-walking evaluator: environments, expression evaluation, function calls.

use crate::error::{Error, ErrorKind, Result};
use crate::ir::*;
use crate::lower::{canon_path, Lowerer};
use crate::pos::{Pos, Source, Sources};
use crate::prefetch::Ahead;
use crate::store::{DerivationSink, Realiser, Store};
use crate::value::*;
use kiln_nix::derivation::DrvHashModulo;
use kiln_nix::store_path::StorePath;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::rc::{Rc, Weak};

mod coerce;

/// The slots of a frame. Most frames (a lambda's argument, a `with`) have
/// one or two, which are kept inline: one allocation per frame.
pub type Slots = smallvec::SmallVec<[Value; 2]>;

/// An environment frame: slots for one `let`/`rec`/lambda/`with`.
pub struct Env {
    /// Slot values (filled right after creation for recursive frames).
    pub vals: RefCell<Slots>,
    /// Enclosing frame.
    pub up: Option<Rc<Env>>,
}

impl Env {
    /// A frame with `vals` under `up`.
    pub fn new(vals: Slots, up: Option<Rc<Env>>) -> Rc<Env> {
        Rc::new(Env {
            vals: RefCell::new(vals),
            up,
        })
    }
}

/// One `-I`/`NIX_PATH` entry: `prefix=path` or just `path` (empty prefix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchPathEntry {
    /// Prefix (`nixpkgs`), empty for a bare directory.
    pub prefix: String,
    /// Directory or file.
    pub path: String,
}

impl SearchPathEntry {
    /// Parse `[NAME=]PATH`.
    pub fn parse(s: &str) -> SearchPathEntry {
        match s.split_once('=') {
            Some((p, path)) => SearchPathEntry {
                prefix: p.to_string(),
                path: path.to_string(),
            },
            None => SearchPathEntry {
                prefix: String::new(),
                path: s.to_string(),
            },
        }
    }
}

/// Evaluator state shared by every evaluation in one session.
pub struct Eval {
    /// Every parsed source.
    pub sources: RefCell<Sources>,
    pub(crate) globals: Vec<Value>,
    pub(crate) global_names: HashMap<Symbol, u32>,
    /// Search path (`-I` entries first, then `NIX_PATH`).
    pub search_path: Vec<SearchPathEntry>,
    pub(crate) import_cache: RefCell<HashMap<PathBuf, Value>>,
    /// Every file parsed so far, by resolved path.
    parse_cache: RefCell<HashMap<PathBuf, Rc<Expr>>>,
    /// Every name the sources use, one `Symbol` each (see [`Lowerer`]);
    /// shared with the parsing thread, which lowers files too.
    symbols: std::sync::Arc<crate::lower::SymbolTable>,
    /// Parses, on a second thread, the files sources name before they are
    /// imported (see [`crate::prefetch`]); `None` when turned off.
    prefetch: Option<RefCell<crate::prefetch::Prefetcher>>,
    depth: Cell<usize>,
    /// Maximum evaluation depth before a clean "stack overflow" error.
    pub max_depth: usize,
    /// Bytes of stack the evaluation may use before a clean "stack
    /// overflow" error (Nix 2.8 has no depth limit, only its stack); the
    /// evaluating thread's stack must be larger.
    pub stack_budget: usize,
    /// The highest stack address seen when entering at depth 0 (the stack
    /// grows down): where the evaluation's stack use is measured from.
    stack_base: Cell<usize>,
    /// Set from outside to stop the evaluation at its next step.
    pub cancel: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    /// Where store paths and `.drv` files go.
    pub store: Rc<dyn Store>,
    /// `builtins.currentSystem`.
    pub system: String,
    /// Builds derivation outputs needed during evaluation (IFD).
    pub realiser: Option<Rc<dyn Realiser>>,
    /// Receives every instantiated derivation.
    pub sink: Option<Rc<dyn DerivationSink>>,
    /// Whether `builtins.trace` prints to standard error.
    pub print_trace: bool,
    /// Every derivation instantiated so far, by `.drv` path.
    pub(crate) drvs: RefCell<HashMap<StorePath, DrvInfo>>,
    /// Source paths already copied to the store (Nix's `srcToStore`).
    src_cache: RefCell<HashMap<String, String>>,
    /// Frames and thunks that may be part of reference cycles, released
    /// when the evaluator is dropped.
    cycles: RefCell<CycleRoots>,
    /// Whether cycles are recorded, so that dropping the evaluator frees
    /// its values (see [`CycleRoots`]). Set once, before evaluating.
    pub(crate) free_on_drop: bool,
}

/// The frames and thunks of one evaluator that may be part of reference
/// cycles, so that dropping the evaluator can break the cycles and free
/// everything the evaluation allocated (a long-lived worker evaluates job
/// after job in one process).
///
/// Values are reference counted, and an object refers, when it is made,
/// only to objects older than itself. A cycle therefore needs an edge from
/// an older object to a newer one, and only two mutations make those:
/// - filling a frame's slots after the frame exists: the bindings of a `let`
///   or `rec` set and the defaults of a lambda's formals, whose thunks and
///   closures capture the frame (a frame whose slots did not capture it is
///   in no cycle: evaluation is pure, so nothing its slots compute can reach
///   it);
/// - updating a thunk to its value, when the value is a set, list or
///   function that refers to newer objects (in
///   `let x = { a = x; }; in x`, `x`'s thunk and its value form a cycle
///   that outlives the frame).
///
/// Both are recorded here: the frames whose slots captured them, and the
/// thunks updated to such values. When the evaluator is dropped the frames'
/// slots are emptied and the thunks released, which breaks every cycle.
/// Entries are weak, so what dies on its own is freed as usual; dead entries
/// are swept whenever the lists have doubled since the last sweep.
#[derive(Default)]
struct CycleRoots {
    frames: Vec<Weak<Env>>,
    thunks: Vec<Weak<RefCell<ThunkState>>>,
    /// Number of entries (both lists) at which dead ones are swept next.
    sweep_at: usize,
}

impl CycleRoots {
    /// Fewest entries kept before the first sweep.
    const MIN_SWEEP: usize = 1 << 14;

    #[inline]
    fn make_room(&mut self) {
        if self.frames.len() + self.thunks.len() >= self.sweep_at {
            self.sweep();
        }
    }

    #[cold]
    fn sweep(&mut self) {
        self.frames.retain(|w| w.strong_count() > 0);
        self.thunks.retain(|w| w.strong_count() > 0);
        self.sweep_at = ((self.frames.len() + self.thunks.len()) * 2).max(Self::MIN_SWEEP);
    }
}

impl Drop for Eval {
    /// Breaks the reference cycles of this evaluation (see [`CycleRoots`])
    /// so that dropping the evaluator frees its values. Values still held
    /// elsewhere stay valid as data, but forcing a thunk of the evaluation
    /// afterwards is an error.
    fn drop(&mut self) {
        let roots = std::mem::take(self.cycles.get_mut());
        // What is taken out is dropped at once; that may free frames and
        // thunks further down the lists, whose weak entries then no longer
        // upgrade.
        for env in roots.frames.iter().filter_map(Weak::upgrade) {
            let slots = match env.vals.try_borrow_mut() {
                Ok(mut vals) => std::mem::take(&mut *vals),
                Err(_) => continue,
            };
            drop(slots);
        }
        for t in roots.thunks.iter().filter_map(Weak::upgrade) {
            release(&t);
        }
        // `builtins.builtins` is the set itself.
        if let Some(&i) = self.global_names.get(&Symbol::from("builtins")) {
            if let Some(Value::Attrs(set)) = self.globals.get(i as usize) {
                if let Some(Value::Thunk(t)) = set.get("builtins") {
                    release(&t.0);
                }
            }
        }
    }
}

/// Empties a thunk (see [`CycleRoots`]); its old state is dropped after the
/// borrow ends, since dropping it may reach other thunks.
fn release(t: &RefCell<ThunkState>) {
    let state = match t.try_borrow_mut() {
        Ok(mut state) => std::mem::replace(&mut *state, ThunkState::Released),
        Err(_) => return,
    };
    drop(state);
}

/// What later derivations need to know about one instantiated derivation.
pub(crate) struct DrvInfo {
    /// Its unmasked `hashDerivationModulo`, used by dependents.
    pub hash_modulo: DrvHashModulo,
    /// Its output names.
    pub outputs: Vec<String>,
    /// Its references (input sources and input derivations).
    pub refs: BTreeSet<StorePath>,
}

impl Eval {
    /// A new evaluator with the builtins installed.
    pub fn new(
        search_path: Vec<SearchPathEntry>,
        store: Rc<dyn Store>,
        system: &str,
        parse_ahead: bool,
    ) -> Eval {
        let mut ev = Eval {
            sources: RefCell::new(Sources::default()),
            globals: Vec::new(),
            global_names: HashMap::new(),
            search_path,
            import_cache: RefCell::new(HashMap::new()),
            parse_cache: RefCell::new(HashMap::new()),
            symbols: Default::default(),
            prefetch: None,
            depth: Cell::new(0),
            max_depth: 10_000,
            stack_budget: crate::EVAL_STACK_SIZE / 8 * 7,
            stack_base: Cell::new(0),
            cancel: None,
            store,
            realiser: None,
            sink: None,
            print_trace: true,
            drvs: RefCell::new(HashMap::new()),
            src_cache: RefCell::new(HashMap::new()),
            cycles: RefCell::new(CycleRoots::default()),
            free_on_drop: true,
            system: system.to_string(),
        };
        crate::builtins::install(&mut ev);
        crate::builtins::install_derivation(&mut ev);
        if parse_ahead {
            let cx = crate::prefetch::LowerContext {
                globals: ev.global_names.clone(),
                symbols: ev.symbols.clone(),
                next_file: ev.sources.borrow().counter(),
            };
            ev.prefetch = Some(RefCell::new(crate::prefetch::Prefetcher::new(Some(cx))));
        }
        ev
    }

    /// The parse-ahead state (tests).
    #[cfg(test)]
    pub(crate) fn prefetcher(&self) -> Option<std::cell::Ref<'_, crate::prefetch::Prefetcher>> {
        self.prefetch.as_ref().map(|p| p.borrow())
    }

    pub(crate) fn add_global(&mut self, name: &str, v: Value) {
        self.global_names
            .insert(Symbol::from(name), self.globals.len() as u32);
        self.globals.push(v);
    }

    /// Parse and lower `text`; `path` is the file it came from (for relative paths).
    pub fn parse(
        &self,
        text: &str,
        name: String,
        path: Option<PathBuf>,
        base_dir: &str,
        outer: Option<Vec<Symbol>>,
    ) -> Result<Rc<Expr>> {
        self.parse_source(Rc::from(text), None, name, path, base_dir, outer)
    }

    /// Lower `text` (or `parse`, its parse when already made) as a source
    /// of its own, then queue the files it names for parsing ahead.
    fn parse_source(
        &self,
        text: Rc<str>,
        parse: Option<rnix::Parse<rnix::Root>>,
        name: String,
        path: Option<PathBuf>,
        base_dir: &str,
        outer: Option<Vec<Symbol>>,
    ) -> Result<Rc<Expr>> {
        // Offsets (positions) count in the text as parsed.
        let text: Rc<str> = match crate::lower::normalize_newlines(&text) {
            std::borrow::Cow::Borrowed(_) => text,
            std::borrow::Cow::Owned(normal) => Rc::from(normal),
        };
        let src = Source::new(name, path, text.clone());
        let file = self.sources.borrow_mut().add(src);
        let sources = self.sources.borrow();
        let src = sources
            .get(file)
            .ok_or_else(|| Error::eval("source table corrupted"))?;
        let mut l = Lowerer::new(
            file,
            src,
            Rc::from(base_dir),
            &self.global_names,
            &self.symbols,
            outer,
        );
        let lowered = match &parse {
            Some(parse) => l.lower_parse(parse, &text),
            None => l.lower_parse(&rnix::Root::parse(&text), &text),
        };
        if let Some(pf) = &self.prefetch {
            let mut pf = pf.borrow_mut();
            pf.request(std::mem::take(&mut l.paths));
            if let Some(parse) = parse {
                pf.discard(parse);
            }
        }
        lowered
    }

    /// Parse the file at `path` (a directory means its `default.nix`).
    /// Each file is read and parsed once per evaluator (Nix's
    /// `fileParseCache`); `scopedImport` (`outer` names) lowers afresh since
    /// its variables resolve differently.
    pub fn parse_file(&self, path: &Path, outer: Option<Vec<Symbol>>) -> Result<Rc<Expr>> {
        self.parse_resolved(resolve_import_path(path)?, outer)
    }

    /// [`Eval::parse_file`] of a path resolved already.
    fn parse_resolved(&self, p: PathBuf, outer: Option<Vec<Symbol>>) -> Result<Rc<Expr>> {
        if outer.is_none() {
            if let Some(e) = self.parse_cache.borrow().get(&p) {
                return Ok(e.clone());
            }
        }
        let cacheable = outer.is_none();
        let e = self.parse_file_uncached(&p, outer)?;
        if cacheable {
            self.parse_cache.borrow_mut().insert(p, e.clone());
        }
        Ok(e)
    }

    fn parse_file_uncached(&self, p: &Path, outer: Option<Vec<Symbol>>) -> Result<Rc<Expr>> {
        let core = crate::corepkgs::source(p);
        let ahead = match core {
            Some(_) => None,
            None => self.prefetch.as_ref().and_then(|pf| pf.borrow().take(p)),
        };
        tracing::trace!(
            file = %p.display(),
            parsed_ahead = ahead.is_some(),
            lowered_ahead = matches!(
                ahead,
                Some(crate::prefetch::Parsed { ahead: Ahead::Lowered(_), .. })
            ),
            "parsing"
        );
        let (text, parse) = match (ahead.map(|a| a.ahead), core) {
            (Some(Ahead::Lowered(l)), _) => {
                if outer.is_none() {
                    self.sources.borrow_mut().insert(l.file, l.source);
                    return Ok(l.expr);
                }
                // `scopedImport` resolves names differently: lower afresh.
                (l.source.text.to_string(), None)
            }
            (Some(Ahead::Parsed { text, parse }), _) => (text, Some(parse)),
            (None, Some(text)) => (text.to_string(), None),
            (None, None) => (
                std::fs::read_to_string(p).map_err(|e| {
                    Error::new(ErrorKind::Io {
                        msg: format!("opening file: {e}:"),
                        path: p.display().to_string(),
                    })
                })?,
                None,
            ),
        };
        self.parse_source(
            Rc::from(text),
            parse,
            p.display().to_string(),
            Some(p.to_path_buf()),
            &import_base_dir(p),
            outer,
        )
    }

    /// Evaluate a file (cached by its resolved path, like `import`: Nix's
    /// `fileEvalCache`).
    pub fn eval_file(&self, path: &Path) -> Result<Value> {
        let key = resolve_import_path(path)?;
        if let Some(v) = self.import_cache.borrow().get(&key) {
            return Ok(v.clone());
        }
        let e = self.parse_resolved(key.clone(), None)?;
        let v = self.eval(&Env::new(Slots::new(), None), &e)?;
        self.import_cache.borrow_mut().insert(key, v.clone());
        Ok(v)
    }

    /// Force a value to weak head normal form.
    #[inline]
    pub fn force(&self, v: &Value) -> Result<Value> {
        match v {
            Value::Thunk(t) => t.force(self),
            o => Ok(o.clone()),
        }
    }

    fn enter(&self) -> Result<()> {
        if let Some(c) = &self.cancel {
            if c.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(Error::eval("evaluation cancelled: the job was stopped"));
            }
        }
        let d = self.depth.get() + 1;
        if d > self.max_depth {
            return Err(Error::new(ErrorKind::TooDeep(self.max_depth)));
        }
        let marker = 0u8;
        let sp = std::ptr::addr_of!(marker) as usize;
        if d == 1 {
            if sp > self.stack_base.get() {
                self.stack_base.set(sp);
            }
        } else if self.stack_base.get().saturating_sub(sp) > self.stack_budget {
            return Err(Error::new(ErrorKind::TooDeep(d)));
        }
        self.depth.set(d);
        Ok(())
    }

    fn leave(&self) {
        self.depth.set(self.depth.get() - 1);
    }

    /// A lazy value for `e` in `env` (no thunk for constants, variables and lambdas).
    pub fn thunk(&self, env: &Rc<Env>, e: &Rc<Expr>) -> Value {
        match &**e {
            Expr::Const(v) => v.clone(),
            Expr::Var { level, slot, .. } => {
                let frame = env_at(env, *level);
                let vals = frame.vals.borrow();
                match vals.get(*slot as usize) {
                    Some(v) => v.clone(),
                    // The frame is still being built (recursive bindings, defaults).
                    None => Value::Thunk(Thunk::new(env.clone(), e.clone())),
                }
            }
            Expr::Global(g) => self.globals[*g as usize].clone(),
            Expr::Lambda(def) => Value::Lambda(Rc::new(Closure {
                def: def.clone(),
                env: env.clone(),
            })),
            Expr::Bin { op, l, r, pos } if is_total_on_numbers(*op) => {
                // Arithmetic and comparisons of numbers that are already
                // known cannot fail or diverge: computing them now gives the
                // same value as forcing a thunk later, and saves the thunk.
                if let (Some(a), Some(b)) = (self.ready_number(env, l), self.ready_number(env, r)) {
                    if let Ok(v) = crate::ops::binop(self, *op, &a, &b, *pos) {
                        return v;
                    }
                }
                Value::Thunk(Thunk::new(env.clone(), e.clone()))
            }
            Expr::Select {
                e: subject, path, ..
            } => {
                // `x.a.b` of a set already evaluated, whose attribute is
                // there: that attribute's own value (perhaps a thunk) is
                // what forcing a new thunk would give, so it is shared.
                match self.ready_select(env, subject, path) {
                    Some(v) => v,
                    None => Value::Thunk(Thunk::new(env.clone(), e.clone())),
                }
            }
            _ => Value::Thunk(Thunk::new(env.clone(), e.clone())),
        }
    }

    /// The value `subject.path` selects, when `subject` is a variable
    /// already evaluated to a set, every name is static, every value on the
    /// way (the selected one too) is already evaluated, and the selected
    /// value is not a function (whose identity `==` can observe).
    fn ready_select(&self, env: &Rc<Env>, subject: &Rc<Expr>, path: &[AttrKey]) -> Option<Value> {
        let Expr::Var { level, slot, .. } = &**subject else {
            return None;
        };
        let mut v = ready_var(env, *level, *slot)?;
        for (i, key) in path.iter().enumerate() {
            let AttrKey::Static(name) = key else {
                return None;
            };
            let Value::Attrs(set) = &v else {
                return None;
            };
            v = evaluated(set.get(name.as_str())?)?;
            if i + 1 == path.len() && v.is_function() {
                // Nix makes a new cell for a selection: a function selected
                // twice is two values that `[ s.f ] == [ s.f ]` tells apart.
                return None;
            }
        }
        Some(v)
    }

    /// The value of `e` when it is a number that needs no evaluation: a
    /// constant, or a variable already evaluated to a number.
    fn ready_number(&self, env: &Rc<Env>, e: &Rc<Expr>) -> Option<Value> {
        let v = match &**e {
            Expr::Const(v) => v.clone(),
            Expr::Var { level, slot, .. } => ready_var(env, *level, *slot)?,
            _ => return None,
        };
        matches!(v, Value::Int(_) | Value::Float(_)).then_some(v)
    }

    /// Evaluate `e` in `env` to weak head normal form.
    pub fn eval(&self, env: &Rc<Env>, e: &Rc<Expr>) -> Result<Value> {
        self.enter()?;
        let r = self.eval_inner(env, e);
        self.leave();
        r
    }

    fn eval_inner(&self, env: &Rc<Env>, e: &Rc<Expr>) -> Result<Value> {
        match &**e {
            Expr::Const(v) => Ok(v.clone()),
            Expr::Var { level, slot, pos } => {
                let v = {
                    let env = env_at(env, *level);
                    let vals = env.vals.borrow();
                    match vals.get(*slot as usize) {
                        Some(v) => v.clone(),
                        None => return Err(released_frame().at(*pos)),
                    }
                };
                self.force(&v).map_err(|e| e.at(*pos))
            }
            Expr::Global(g) => self.force(&self.globals[*g as usize]),
            Expr::WithVar { name, withs, pos } => {
                for level in withs {
                    let ns = {
                        let env = env_at(env, *level);
                        let vals = env.vals.borrow();
                        vals.first().cloned().unwrap_or(Value::Null)
                    };
                    let ns = self.force(&ns).map_err(|e| e.at(*pos))?;
                    let attrs = self.expect_attrs(&ns, *pos)?;
                    if let Some(v) = attrs.get(name.as_str()) {
                        return self.force(v).map_err(|e| e.at(*pos));
                    }
                }
                Err(Error::new(ErrorKind::UndefinedVariable(name.as_str().to_string())).at(*pos))
            }
            Expr::Select {
                e: subject,
                path,
                default,
                pos,
            } => {
                let mut v = self.eval(env, subject)?;
                for key in path {
                    let name = self.attr_name(env, key, *pos)?;
                    let found = match &v {
                        Value::Attrs(a) => a.get_attr(&name.s).map(|a| (a.value.clone(), a.pos)),
                        other if default.is_none() => {
                            return Err(Error::eval(format!(
                                "value is {} while a set was expected",
                                other.type_desc()
                            ))
                            .at(*pos))
                        }
                        _ => None,
                    };
                    match found {
                        Some((x, apos)) => {
                            v = self.force(&x).map_err(|e| {
                                e.at(*pos).with_trace(
                                    apos,
                                    format!("while evaluating the attribute '{}'", name.s),
                                )
                            })?
                        }
                        None => match default {
                            Some(d) => return self.eval(env, d),
                            None => {
                                return Err(
                                    Error::eval(format!("attribute '{}' missing", name.s)).at(*pos)
                                )
                            }
                        },
                    }
                }
                Ok(v)
            }
            Expr::HasAttr { e: subject, path } => {
                let mut v = self.eval(env, subject)?;
                for (i, key) in path.iter().enumerate() {
                    let name = self.attr_name(env, key, Pos::START)?;
                    let Value::Attrs(a) = &v else {
                        return Ok(Value::Bool(false));
                    };
                    match a.get(&name.s) {
                        Some(x) => {
                            if i + 1 < path.len() {
                                v = self.force(x)?;
                            }
                        }
                        None => return Ok(Value::Bool(false)),
                    }
                }
                Ok(Value::Bool(true))
            }
            Expr::Attrs(def) => self.eval_attrs(env, def),
            Expr::List(items) => Ok(Value::list(
                items.iter().map(|i| self.thunk(env, i)).collect(),
            )),
            Expr::Lambda(def) => Ok(Value::Lambda(Rc::new(Closure {
                def: def.clone(),
                env: env.clone(),
            }))),
            Expr::Apply { f, arg, pos } => {
                let fv = self.eval(env, f)?;
                let a = self.thunk(env, arg);
                self.call(&fv, a, *pos)
            }
            Expr::Let { binds, body } => {
                let new_env = self.rec_env(env, binds);
                self.eval(&new_env, body)
            }
            Expr::With { ns, body } => {
                let new_env = Env::new(smallvec::smallvec![self.thunk(env, ns)], Some(env.clone()));
                self.eval(&new_env, body)
            }
            Expr::If {
                cond,
                then,
                els,
                pos,
            } => {
                if self.eval_bool(env, cond, *pos)? {
                    self.eval(env, then)
                } else {
                    self.eval(env, els)
                }
            }
            Expr::Assert {
                cond,
                body,
                text,
                pos,
            } => {
                if self.eval_bool(env, cond, *pos)? {
                    self.eval(env, body)
                } else {
                    Err(Error::new(ErrorKind::Assertion(text.clone())).at(*pos))
                }
            }
            Expr::Not(x, pos) => Ok(Value::Bool(!self.eval_bool(env, x, *pos)?)),
            Expr::Neg(x, pos) => {
                let v = self.eval(env, x)?;
                crate::ops::arith(self, BinOp::Sub, &Value::Int(0), &v, *pos)
            }
            Expr::Bin { op, l, r, pos } => self.eval_bin(env, *op, l, r, *pos),
            Expr::Concat {
                parts,
                is_string,
                pos,
            } => self.eval_concat(env, parts, *is_string, *pos),
            Expr::PathInterp {
                kind,
                parts,
                base,
                pos,
            } => {
                let mut s = String::new();
                for p in parts {
                    let v = self.eval(env, p)?;
                    let ns = self.coerce_to_string(&v, *pos, false, false)?;
                    s.push_str(&ns.s);
                }
                let full = match kind {
                    PathKind::Absolute => canon_path(&s),
                    PathKind::Relative => canon_path(&format!("{base}/{s}")),
                    PathKind::Home => {
                        let home = std::env::var("HOME").unwrap_or_default();
                        canon_path(&format!("{home}/{}", s.trim_start_matches('~')))
                    }
                };
                Ok(Value::Path(full.into()))
            }
            Expr::CurPos(pos) => Ok(self.pos_value(Some(*pos))),
        }
    }

    /// `{ file, line, column }` for `pos`, or null.
    pub fn pos_value(&self, pos: Option<Pos>) -> Value {
        let Some(pos) = pos else { return Value::Null };
        let (file, line, col) = match self.sources.borrow().locate(pos) {
            Some((src, line, col)) => (src.name.clone(), line, col),
            None => (String::new(), 1, 1),
        };
        let attrs = vec![
            Attr {
                name: "column".into(),
                value: Value::Int(col as i64),
                pos: None,
            },
            Attr {
                name: "file".into(),
                value: Value::string(file),
                pos: None,
            },
            Attr {
                name: "line".into(),
                value: Value::Int(line as i64),
                pos: None,
            },
        ];
        Value::Attrs(Rc::new(Attrs::from_sorted(attrs)))
    }

    fn attr_name(&self, env: &Rc<Env>, key: &AttrKey, pos: Pos) -> Result<Rc<NixString>> {
        match key {
            AttrKey::Static(s) => Ok(Rc::new(NixString::plain(s.as_str()))),
            AttrKey::Dynamic(e) => {
                let v = self.eval(env, e)?;
                match v {
                    Value::Str(s) => Ok(s),
                    other => Err(Error::eval(format!(
                        "value is {} while a string was expected",
                        other.type_desc()
                    ))
                    .at(pos)),
                }
            }
        }
    }

    fn eval_bool(&self, env: &Rc<Env>, e: &Rc<Expr>, pos: Pos) -> Result<bool> {
        match self.eval(env, e)? {
            Value::Bool(b) => Ok(b),
            other => Err(Error::eval(format!(
                "value is {} while a Boolean was expected",
                other.type_desc()
            ))
            .at(pos)),
        }
    }

    fn eval_bin(
        &self,
        env: &Rc<Env>,
        op: BinOp,
        l: &Rc<Expr>,
        r: &Rc<Expr>,
        pos: Pos,
    ) -> Result<Value> {
        match op {
            BinOp::And => Ok(Value::Bool(
                self.eval_bool(env, l, pos)? && self.eval_bool(env, r, pos)?,
            )),
            BinOp::Or => Ok(Value::Bool(
                self.eval_bool(env, l, pos)? || self.eval_bool(env, r, pos)?,
            )),
            BinOp::Impl => Ok(Value::Bool(
                !self.eval_bool(env, l, pos)? || self.eval_bool(env, r, pos)?,
            )),
            _ => {
                let a = self.eval(env, l)?;
                let b = self.eval(env, r)?;
                crate::ops::binop(self, op, &a, &b, pos)
            }
        }
    }

    fn eval_concat(
        &self,
        env: &Rc<Env>,
        parts: &[Rc<Expr>],
        is_string: bool,
        pos: Pos,
    ) -> Result<Value> {
        let mut out = NixString::plain(String::new());
        for p in parts {
            let v = self.eval(env, p)?;
            let s = self.coerce_to_string(&v, pos, false, true)?;
            out.s.push_str(&s.s);
            out.add_context(&s.ctx);
        }
        if is_string {
            Ok(Value::Str(Rc::new(out)))
        } else {
            Ok(Value::Path(canon_path(&out.s).into()))
        }
    }

    /// A new recursive frame for `def` (a `let` or `rec` set) under `env`.
    fn rec_env(&self, env: &Rc<Env>, def: &AttrsDef) -> Rc<Env> {
        let new_env = Env::new(Slots::with_capacity(def.attrs.len()), Some(env.clone()));
        // Filled in order, as Nix fills the frame: a binding that is just
        // an earlier binding's name (`f' = f;`) is that same value, not a
        // new thunk (which `[ f ] == [ f' ]` could tell apart).
        for a in &def.attrs {
            let v = if a.in_rec_env {
                self.thunk(&new_env, &a.value)
            } else {
                self.thunk(env, &a.value)
            };
            new_env.vals.borrow_mut().push(v);
        }
        self.note_cycles(&new_env);
        new_env
    }

    /// Records `env` as possibly part of a reference cycle when its slots,
    /// just filled, captured it (see [`CycleRoots`]).
    #[inline]
    fn note_cycles(&self, env: &Rc<Env>) {
        if self.free_on_drop && Rc::strong_count(env) > 1 {
            let mut roots = self.cycles.borrow_mut();
            roots.make_room();
            roots.frames.push(Rc::downgrade(env));
        }
    }

    /// Records a thunk just updated to `value` when that may have closed a
    /// reference cycle (see [`CycleRoots`]).
    #[inline]
    pub(crate) fn note_update(&self, thunk: &Rc<RefCell<ThunkState>>, value: &Value) {
        if self.free_on_drop
            && matches!(
                value,
                Value::Attrs(_) | Value::List(_) | Value::Lambda(_) | Value::PrimOpApp(_)
            )
        {
            let mut roots = self.cycles.borrow_mut();
            roots.make_room();
            roots.thunks.push(Rc::downgrade(thunk));
        }
    }

    fn eval_attrs(&self, env: &Rc<Env>, def: &AttrsDef) -> Result<Value> {
        let (mut entries, scope): (Vec<Attr>, Rc<Env>) = if def.rec {
            let new_env = self.rec_env(env, def);
            let extra = match def
                .attrs
                .iter()
                .position(|a| a.name.as_str() == "__overrides")
            {
                Some(i) => self.apply_overrides(def, &new_env, i)?,
                None => Vec::new(),
            };
            let vals = new_env.vals.borrow().clone();
            let mut entries: Vec<Attr> = def
                .attrs
                .iter()
                .zip(vals)
                .map(|(a, v)| Attr {
                    name: a.name.clone(),
                    value: v,
                    pos: Some(a.pos),
                })
                .collect();
            entries.extend(extra);
            (entries, new_env)
        } else {
            let entries = def
                .attrs
                .iter()
                .map(|a| Attr {
                    name: a.name.clone(),
                    value: self.thunk(env, &a.value),
                    pos: Some(a.pos),
                })
                .collect();
            (entries, env.clone())
        };
        if def.dynamic.is_empty() {
            return Ok(Value::Attrs(Rc::new(Attrs::from_unsorted(entries))));
        }
        for d in &def.dynamic {
            let k = self.eval(&scope, &d.key)?;
            let name = match k {
                Value::Null => continue,
                Value::Str(s) => s,
                other => {
                    return Err(Error::eval(format!(
                        "value is {} while a string was expected",
                        other.type_desc()
                    ))
                    .at(d.pos))
                }
            };
            if let Some(prev) = entries.iter().find(|e| e.name.as_str() == name.s) {
                let where_ = prev
                    .pos
                    .map(|p| self.sources.borrow().describe(p))
                    .unwrap_or_default();
                return Err(Error::eval(format!(
                    "dynamic attribute '{}' already defined at {}",
                    name.s, where_
                ))
                .at(d.pos));
            }
            entries.push(Attr {
                name: Symbol::from(name.s.as_str()),
                value: self.thunk(&scope, &d.value),
                pos: Some(d.pos),
            });
        }
        Ok(Value::Attrs(Rc::new(Attrs::from_unsorted(entries))))
    }

    /// `__overrides` in a `rec` set replaces the recursive bindings too.
    /// Returns the overriding attributes that are not bindings of the set.
    fn apply_overrides(&self, def: &AttrsDef, env: &Rc<Env>, idx: usize) -> Result<Vec<Attr>> {
        let ov = env.vals.borrow()[idx].clone();
        let ov = self.expect_attrs(&ov, def.attrs[idx].pos)?;
        let mut vals = env.vals.borrow_mut();
        let mut extra = Vec::new();
        for o in ov.iter() {
            match def.attrs.iter().position(|a| a.name == o.name) {
                Some(slot) => vals[slot] = o.value.clone(),
                None => extra.push(o.clone()),
            }
        }
        Ok(extra)
    }

    /// Apply function `f` to `arg`.
    pub fn call(&self, f: &Value, arg: Value, pos: Pos) -> Result<Value> {
        self.enter()?;
        let r = self.call_inner(f, arg, pos);
        self.leave();
        r
    }

    fn call_inner(&self, f: &Value, arg: Value, pos: Pos) -> Result<Value> {
        match f {
            Value::Lambda(c) => self.call_lambda(c, arg, pos),
            Value::PrimOp(op) => {
                if op.arity == 1 {
                    (op.f)(self, &[arg], pos).map_err(|e| e.at(pos))
                } else {
                    Ok(Value::PrimOpApp(Rc::new(PrimOpApp {
                        op: op.clone(),
                        args: vec![arg],
                    })))
                }
            }
            Value::PrimOpApp(app) => {
                let mut args = app.args.clone();
                args.push(arg);
                if args.len() == app.op.arity {
                    (app.op.f)(self, &args, pos).map_err(|e| e.at(pos))
                } else {
                    Ok(Value::PrimOpApp(Rc::new(PrimOpApp {
                        op: app.op.clone(),
                        args,
                    })))
                }
            }
            Value::Attrs(a) => match a.get("__functor") {
                Some(functor) => {
                    let functor = self.force(functor)?;
                    let g = self.call(&functor, f.clone(), pos)?;
                    self.call(&g, arg, pos)
                }
                None => Err(self.not_callable(f, pos)),
            },
            Value::Thunk(t) => {
                let fv = t.force(self)?;
                self.call_inner(&fv, arg, pos)
            }
            other => Err(self.not_callable(other, pos)),
        }
    }

    fn not_callable(&self, v: &Value, pos: Pos) -> Error {
        Error::eval(format!(
            "attempt to call something which is not a function but {}",
            v.type_desc()
        ))
        .at(pos)
    }

    fn lambda_desc(&self, def: &LambdaDef) -> String {
        format!(
            "anonymous function at {}",
            self.sources.borrow().describe(def.pos)
        )
    }

    /// Calls a lambda; an error from its body gets Nix's two trace frames
    /// (the lambda, then the call site).
    fn call_lambda(&self, c: &Rc<Closure>, arg: Value, pos: Pos) -> Result<Value> {
        self.call_lambda_inner(c, arg, pos).map_err(|e| {
            let what = match c.def.name.get() {
                Some(n) => format!("while evaluating '{}'", n.as_str()),
                None => "while evaluating anonymous lambda".to_string(),
            };
            e.with_trace(Some(c.def.pos), what)
                .with_trace(Some(pos), "from call site")
        })
    }

    fn call_lambda_inner(&self, c: &Rc<Closure>, arg: Value, pos: Pos) -> Result<Value> {
        let def = &c.def;
        let Some(formals) = &def.formals else {
            let env = Env::new(smallvec::smallvec![arg], Some(c.env.clone()));
            return self.eval(&env, &def.body);
        };
        let argv = self.force(&arg).map_err(|e| e.at(pos))?;
        let attrs = match &argv {
            Value::Attrs(a) => a.clone(),
            other => {
                return Err(Error::eval(format!(
                    "value is {} while a set was expected",
                    other.type_desc()
                ))
                .at(pos))
            }
        };
        // Filled in order, so that a default naming an earlier formal
        // shares its value (see `rec_env`).
        let env = Env::new(Slots::with_capacity(def.slots), Some(c.env.clone()));
        let mut used = 0usize;
        for (name, default) in &formals.entries {
            match attrs.get(name.as_str()) {
                Some(v) => {
                    used += 1;
                    env.vals.borrow_mut().push(v.clone());
                }
                None => match default {
                    Some(d) => {
                        let v = self.thunk(&env, d);
                        env.vals.borrow_mut().push(v);
                    }
                    None => {
                        return Err(Error::eval(format!(
                            "{} called without required argument '{}'",
                            self.lambda_desc(def),
                            name.as_str()
                        ))
                        .at(pos))
                    }
                },
            }
        }
        if !formals.ellipsis && used < attrs.len() {
            for a in attrs.iter() {
                if !formals.entries.iter().any(|(n, _)| n == &a.name) {
                    return Err(Error::eval(format!(
                        "{} called with unexpected argument '{}'",
                        self.lambda_desc(def),
                        a.name.as_str()
                    ))
                    .at(pos));
                }
            }
        }
        if formals.at.is_some() {
            env.vals.borrow_mut().push(argv);
        }
        if used < formals.entries.len() {
            // Defaults were used: their thunks capture this frame.
            self.note_cycles(&env);
        }
        self.eval(&env, &def.body)
    }
}

/// `v` in weak head normal form if it is there already (a value, or a
/// thunk already evaluated), without evaluating anything.
fn evaluated(v: &Value) -> Option<Value> {
    match v {
        Value::Thunk(t) => t.value(),
        v => Some(v.clone()),
    }
}

/// The variable at `level`/`slot` if it is evaluated already.
fn ready_var(env: &Rc<Env>, level: u32, slot: u32) -> Option<Value> {
    let frame = env_at(env, level);
    let vals = frame.vals.borrow();
    evaluated(vals.get(slot as usize)?)
}

/// Operators that give a value, never an error, for any two numbers.
fn is_total_on_numbers(op: BinOp) -> bool {
    matches!(
        op,
        BinOp::Add
            | BinOp::Sub
            | BinOp::Mul
            | BinOp::Lt
            | BinOp::Le
            | BinOp::Gt
            | BinOp::Ge
            | BinOp::Eq
            | BinOp::Neq
    )
}

/// The error for reading a slot of a frame emptied when its evaluator was
/// dropped (or not filled yet, which evaluation never does).
#[cold]
fn released_frame() -> Error {
    Error::eval("a value was used after the evaluation that made it ended")
}

/// The directory relative paths in the file at `path` resolve against.
pub(crate) fn import_base_dir(path: &Path) -> String {
    path.parent()
        .map(|d| d.display().to_string())
        .unwrap_or_else(|| "/".into())
}

/// Nix's `resolveExprPath`: a symlink is followed (so that the file's
/// relative paths, and the import cache, go by the file it points to), and
/// a directory means its `default.nix`.
fn resolve_import_path(path: &Path) -> Result<PathBuf> {
    let mut path = path.to_path_buf();
    // Nix gives up after 1024 links; a loop then fails when the file is read.
    for _ in 0..1024 {
        // A bundled `<nix/...>` file is not on disk.
        if crate::corepkgs::source(&path).is_some() {
            return Ok(path);
        }
        let meta = path.symlink_metadata().map_err(|e| {
            Error::eval(format!(
                "getting status of '{}': {}",
                path.display(),
                os_error_text(&e)
            ))
        })?;
        if !meta.file_type().is_symlink() {
            break;
        }
        let Ok(target) = std::fs::read_link(&path) else {
            break;
        };
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        path = PathBuf::from(canon_path(&dir.join(target).to_string_lossy()));
    }
    Ok(if path.is_dir() {
        path.join("default.nix")
    } else {
        path
    })
}

/// An I/O error's text as Nix prints it (`strerror`, without Rust's
/// " (os error N)").
fn os_error_text(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error ") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// The frame `level` levels up from `env`.
#[inline]
pub fn env_at(env: &Rc<Env>, level: u32) -> &Rc<Env> {
    let mut e = env;
    for _ in 0..level {
        match &e.up {
            Some(u) => e = u,
            None => break,
        }
    }
    e
}

#[cfg(test)]
mod tests {
    use crate::{Evaluator, Options, Value};
    use std::path::Path;
    use std::rc::Rc;

    /// Evaluates `src` completely, drops the value and the evaluator, and
    /// says whether the value was freed.
    fn freed(src: &str, leak_on_drop: bool) -> bool {
        let src = src.to_string();
        crate::with_big_stack(move || {
            let e = Evaluator::new(Options {
                leak_on_drop,
                ..Default::default()
            });
            let v = e.eval_string(&src, Path::new("/")).expect("evaluates");
            e.force_deep(&v).expect("forces");
            let alive: Box<dyn Fn() -> bool> = match &v {
                Value::Attrs(a) => {
                    let w = Rc::downgrade(a);
                    Box::new(move || w.strong_count() > 0)
                }
                Value::List(l) => {
                    let w = Rc::downgrade(l);
                    Box::new(move || w.strong_count() > 0)
                }
                Value::Lambda(c) => {
                    let w = Rc::downgrade(c);
                    Box::new(move || w.strong_count() > 0)
                }
                other => panic!("{src} is {}", other.type_desc()),
            };
            drop(v);
            drop(e);
            !alive()
        })
        .expect("no panic")
    }

    #[test]
    fn dropping_the_evaluator_frees_cyclic_values() {
        let cases = [
            // A thunk whose value holds the thunk (the frame is long gone).
            "let x = { a = x; }; in x",
            // `rec` bindings referring to each other.
            "(rec { a = { inherit b; }; b = [ a ]; }).a",
            // A recursive function: its closure holds its own frame.
            "let f = n: if n == 0 then 0 else f (n - 1); in f",
            // A default argument referring to the argument itself.
            "({ a ? { b = a; } }: a) { }",
            // A fixed point, as Nixpkgs makes package sets.
            "let fix = f: let x = f x; in x; in fix (self: { a = 1; b = self.a; c = self; })",
            // `derivation`: each output's value is built from a set
            // containing that same value.
            r#"derivation { name = "a"; builder = "b"; system = "c"; outputs = [ "out" "dev" ]; }"#,
        ];
        for src in cases {
            assert!(freed(src, false), "{src} was not freed");
            // The case does make a cycle: without breaking it, it leaks.
            assert!(!freed(src, true), "{src} makes no cycle");
        }
    }

    /// Arithmetic on numbers already known is computed when its thunk
    /// would be made; anything that could fail or needs forcing stays lazy.
    #[test]
    fn eager_arithmetic_keeps_laziness() {
        let run = |src: &'static str| {
            crate::with_big_stack(move || {
                let e = Evaluator::new(Options::default());
                let v = e
                    .eval_string(src, Path::new("/"))
                    .map_err(|e| e.to_string())?;
                let v = e.ev.force(&v).map_err(|e| e.to_string())?;
                Ok::<_, String>(match v {
                    Value::Int(i) => i,
                    _ => panic!("{src}: not an int"),
                })
            })
            .unwrap()
        };
        // Unused operands that would fail are never forced.
        assert_eq!(run("let x = throw \"no\"; y = x + 1; in 1"), Ok(1));
        assert_eq!(run("let z = 0; b = 1 / z; in 5"), Ok(5));
        assert_eq!(run("let s = \"a\"; b = s + 1; in 5"), Ok(5));
        // The failures still happen when the value is needed.
        assert!(run("let z = 0; b = 1 / z; in b")
            .unwrap_err()
            .contains("division by zero"));
        assert!(run("let s = \"a\"; n = 1; b = n + s; in b").is_err());
        // Known numbers: the same values as lazily.
        assert_eq!(
            run("let f = n: if n < 2 then n else f (n - 1) + f (n - 2); in f 15"),
            Ok(610)
        );
        assert_eq!(
            run("let n = 9223372036854775807; m = n + 1; in m"),
            Ok(i64::MIN)
        );
        // Selections from sets already evaluated share the attribute's
        // value; they evaluate nothing and fail only when forced.
        let sel = "let s = { a = throw \"x\"; b.c = 2; }; f = x: x; in ";
        let sel_run = |tail: &str| {
            run(Box::leak(
                format!("{sel}builtins.seq s ({tail})").into_boxed_str(),
            ))
        };
        assert_eq!(sel_run("let y = s.a; in 1"), Ok(1));
        assert_eq!(sel_run("f s.b.c"), Ok(2));
        assert_eq!(sel_run("f (s.z or 3)"), Ok(3));
        assert_eq!(sel_run("f (s.b.c or 3)"), Ok(2));
        assert!(sel_run("f s.a").unwrap_err().contains('x'));
        assert!(sel_run("f s.z")
            .unwrap_err()
            .contains("attribute 'z' missing"));
    }

    #[test]
    fn values_outliving_their_evaluator_fail_cleanly() {
        let msg = crate::with_big_stack(|| {
            let e = Evaluator::new(Options::default());
            let v = e
                .eval_string(
                    "let x = { a = x; b = toString y; }; y = 1; in x",
                    Path::new("/"),
                )
                .unwrap();
            let v = e.ev.force(&v).unwrap();
            e.ev.force(&v).unwrap();
            let Value::Attrs(set) = &v else {
                panic!("not a set")
            };
            let set = set.clone();
            e.ev.force(set.get("a").unwrap()).unwrap();
            drop(e);
            let other = Evaluator::new(Options::default());
            let a = other.ev.force(set.get("a").unwrap()).unwrap_err();
            let b = other.ev.force(set.get("b").unwrap()).unwrap_err();
            (a.kind.to_string(), b.kind.to_string())
        })
        .unwrap();
        assert!(
            msg.0.contains("after the evaluation that made it ended"),
            "{msg:?}"
        );
        assert!(
            msg.1.contains("after the evaluation that made it ended"),
            "{msg:?}"
        );
    }
}
