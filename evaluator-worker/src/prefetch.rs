//! Speculative parsing of the files a source names, on a second thread.
//!
//! Evaluation is single-threaded, and in a package set much of its time goes
//! to reading and parsing the files that `import` and `callPackage` load.
//! Which files those will be is mostly visible in advance: they are the path
//! literals of the sources already lowered (`./pkgs/foo.nix`,
//! `../libraries/bar`). When a source has been lowered, its path literals
//! that name a `.nix` file (or a directory with a `default.nix`) are queued
//! here, and one background thread reads and parses them in order, so that
//! the evaluation thread finds them parsed when it imports them.
//!
//! The thread also lowers each file to the IR (see [`Lowered`] for why
//! that `Rc` tree may cross threads), resolving its variables against the
//! evaluator's globals and interning its names in the evaluator's symbol
//! table, and queues the files that file names in turn. The speculation is
//! invisible to the language: a file that is never imported is parsed for
//! nothing but never evaluated, and parse and lowering errors are reported
//! only when (and exactly as if) the evaluation thread lowers the file:
//! a file that does not lower here is handed over parsed only, and the
//! evaluation thread lowers it again and reports what it finds.
//!
//! What the speculation costs is bounded: at most [`MAX_READY`] parsed
//! files ([`MAX_READY_BYTES`] of source) wait to be taken; beyond that the
//! thread turns to other work. Files over [`MAX_FILE_BYTES`] are left to the
//! evaluation thread. There is one parsing thread per process, shared by
//! every evaluator in it; dropping a [`Prefetcher`] drops its queue.

use crate::ir::Expr;
use crate::lower::Lowerer;
use crate::pos::Source;
use crate::value::Symbol;
use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::AtomicU32;
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard, OnceLock};

/// Most parsed files waiting to be taken.
pub const MAX_READY: usize = 512;
/// Most bytes of source among the parsed files waiting to be taken.
pub const MAX_READY_BYTES: usize = 4 << 20;
/// Larger files are not parsed speculatively.
pub const MAX_FILE_BYTES: u64 = 1 << 20;
/// Stack of the parsing thread: rnix's parser recurses (not every kind of
/// nesting counts towards its own limit), so it gets the evaluation
/// thread's stack, and a file parses here exactly when it would parse
/// there. Only the pages used are committed.
const STACK_SIZE: usize = crate::EVAL_STACK_SIZE;

/// A file read and parsed ahead of its import.
pub struct Parsed {
    /// Bytes of source.
    pub bytes: usize,
    /// How far it got.
    pub ahead: Ahead,
}

/// What the parsing thread made of a file.
pub enum Ahead {
    /// Lowered, ready to evaluate.
    Lowered(Lowered),
    /// Parsed only: lowering failed (or there was nothing to lower against,
    /// see [`Prefetcher::new`]), and the evaluation thread lowers it.
    Parsed {
        /// The file's text, exactly as read.
        text: String,
        /// rnix's parse of the text with its newlines normalised.
        parse: rnix::Parse<rnix::Root>,
    },
}

/// A file lowered on the parsing thread.
///
/// The IR is built of `Rc`s, which may not cross threads because two
/// threads could count references to one allocation at once. That cannot
/// happen to this tree: [`lower_ahead`] builds every `Rc` in it from new
/// allocations, the lowerer that also held some is dropped before the tree
/// is wrapped, and what the tree shares with the evaluator is `Arc`-counted
/// (names, [`Symbol`]) or copied (global slots, file index). So whoever
/// holds a `Lowered` holds the only references to everything `Rc` in it,
/// and moving it moves them all.
pub struct Lowered {
    /// The source's index, taken from the evaluator's counter.
    pub file: u32,
    /// The source (name, path and normalised text), to be entered at `file`.
    pub source: Source,
    /// The lowered file.
    pub expr: Rc<Expr>,
}

// SAFETY: see the type's documentation: the `Rc`s inside are reachable
// only through this value.
unsafe impl Send for Lowered {}

/// What the parsing thread needs of an evaluator to lower its files the
/// way the evaluator would.
pub struct LowerContext {
    /// The evaluator's global names and their slots.
    pub globals: HashMap<Symbol, u32>,
    /// The evaluator's symbol table.
    pub symbols: Arc<crate::lower::SymbolTable>,
    /// The evaluator's source index counter ([`crate::pos::Sources::counter`]).
    pub next_file: Arc<AtomicU32>,
}

/// Lowers the file at `path` (text as read) on the parsing thread, the way
/// `Eval::parse_file` would with no `scopedImport` names, and returns the
/// path literals it names.
fn lower_ahead(cx: &LowerContext, path: &Path, text: String) -> (Ahead, Vec<String>) {
    let normal = crate::lower::normalize_newlines(&text);
    let parse = rnix::Root::parse(&normal);
    let source = Source::new(
        path.display().to_string(),
        Some(path.to_path_buf()),
        Rc::from(&*normal),
    );
    drop(normal);
    let file = crate::pos::reserve(&cx.next_file);
    let dir = crate::eval::import_base_dir(path);
    let lowered = {
        let mut l = Lowerer::new(
            file,
            &source,
            Rc::from(dir.as_str()),
            &cx.globals,
            &cx.symbols,
            None,
        );
        l.lower_parse(&parse, &source.text)
            .ok()
            .map(|expr| (expr, std::mem::take(&mut l.paths)))
    };
    match lowered {
        Some((expr, paths)) => {
            drop(parse);
            let ahead = Ahead::Lowered(Lowered { file, source, expr });
            (ahead, paths)
        }
        None => (Ahead::Parsed { text, parse }, Vec::new()),
    }
}

/// The queue and the finished parses of one evaluator, shared with the
/// parsing thread.
#[derive(Default)]
struct State {
    /// Files to parse, in the order they were named.
    queue: VecDeque<PathBuf>,
    /// Every file ever queued (a file is queued once).
    seen: HashSet<PathBuf>,
    /// Files the evaluation thread asked for before the parsing thread
    /// reached them: it parses them itself, so they are skipped here.
    claimed: HashSet<PathBuf>,
    /// The file being parsed now.
    busy: Option<PathBuf>,
    /// Finished parses not yet taken.
    ready: HashMap<PathBuf, Parsed>,
    /// Bytes of source in `ready`.
    ready_bytes: usize,
    /// Set when the owner is dropped.
    stop: bool,
    /// Syntax trees lowered already, for the parsing thread to free: it
    /// allocated them, and freeing them there keeps that work off the
    /// evaluation thread.
    discarded: Vec<rnix::Parse<rnix::Root>>,
    /// Handed to the parsing thread, which works on this state until it
    /// runs out of work or room.
    scheduled: bool,
    /// The evaluation thread waits for a parse (`Shared::done`).
    taker_waiting: bool,
}

impl State {
    fn full(&self) -> bool {
        self.ready.len() >= MAX_READY || self.ready_bytes >= MAX_READY_BYTES
    }

    /// Queue the `paths` that may name Nix files and were never queued.
    fn enqueue<I: IntoIterator<Item = String>>(&mut self, paths: I) {
        for p in paths {
            if !candidate(&p) {
                continue;
            }
            let p = PathBuf::from(p);
            if self.seen.insert(p.clone()) {
                self.queue.push_back(p);
            }
        }
    }

    /// Whether the parsing thread has something to do here.
    fn has_work(&self) -> bool {
        !self.stop && (!self.discarded.is_empty() || (!self.queue.is_empty() && !self.full()))
    }
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the evaluation thread waiting for the parse in progress;
    /// signalled only when it waits, so the common case costs no system
    /// call.
    done: Condvar,
    /// How to lower files; without it they are parsed only.
    lower: Option<LowerContext>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; carry on.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The process's one parsing thread, fed the evaluators that have work.
/// One thread for the whole process, started on first use: a worker that
/// evaluates job after job does not start (and leave memory behind in) a
/// thread per job. `None` when the thread could not be started; then every
/// file is parsed on the evaluation thread.
fn parser() -> Option<&'static Mutex<mpsc::Sender<Arc<Shared>>>> {
    static PARSER: OnceLock<Option<Mutex<mpsc::Sender<Arc<Shared>>>>> = OnceLock::new();
    PARSER
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel::<Arc<Shared>>();
            std::thread::Builder::new()
                .name("kiln-parse".into())
                .stack_size(STACK_SIZE)
                .spawn(move || {
                    for shared in rx {
                        serve(&shared);
                    }
                })
                .ok()
                .map(|_| Mutex::new(tx))
        })
        .as_ref()
}

/// Per-evaluator handle on the parsing thread; see the module
/// documentation.
pub struct Prefetcher {
    shared: Arc<Shared>,
}

impl Default for Prefetcher {
    /// A prefetcher that parses without lowering.
    fn default() -> Self {
        Prefetcher::new(None)
    }
}

impl Prefetcher {
    /// A prefetcher that lowers the files it parses with `lower`, or only
    /// parses them without it.
    pub fn new(lower: Option<LowerContext>) -> Self {
        Prefetcher {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                done: Condvar::new(),
                lower,
            }),
        }
    }

    /// Hands this evaluator to the parsing thread when it has work there
    /// and is not handed over already. Called with the lock held.
    fn schedule(&self, st: &mut State) {
        if st.scheduled || !st.has_work() {
            return;
        }
        let Some(parser) = parser() else {
            // No thread: the evaluation thread parses everything itself.
            st.queue.clear();
            st.discarded.clear();
            return;
        };
        let sent = parser
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(self.shared.clone());
        st.scheduled = sent.is_ok();
    }

    /// Queue `paths` (absolute, as a source names them) for parsing. Paths
    /// that cannot be a Nix file are dropped here without touching the
    /// file system; the rest are checked on the parsing thread.
    pub fn request<I: IntoIterator<Item = String>>(&mut self, paths: I) {
        let mut st = self.shared.lock();
        st.enqueue(paths);
        self.schedule(&mut st);
    }

    /// The speculative parse of the file at `path` (resolved as `import`
    /// resolves it), waiting for it when it is being parsed right now.
    /// `None` when the file was not parsed ahead: the caller parses it,
    /// and the parsing thread will not.
    pub fn take(&self, path: &Path) -> Option<Parsed> {
        let mut st = self.shared.lock();
        loop {
            if let Some(p) = st.ready.remove(path) {
                st.ready_bytes -= p.bytes;
                // Room in the window again.
                self.schedule(&mut st);
                return Some(p);
            }
            if st.busy.as_deref() != Some(path) {
                // `path` is resolved (a directory's `default.nix`) while
                // the queue holds paths as named: the parsing thread checks
                // both against the claims.
                if !st.seen.is_empty() {
                    st.claimed.insert(path.to_path_buf());
                }
                return None;
            }
            // The parsing thread is at work on `path`. Rather than wait
            // idle, take a file from the queue and lower it here: when
            // evaluation outruns the parsing thread, the two threads share
            // its work.
            if self.shared.lower.is_some() && !st.full() {
                if let Some(next) = next_unclaimed(&mut st) {
                    drop(st);
                    work_on(&self.shared, next);
                    st = self.shared.lock();
                    continue;
                }
            }
            st.taker_waiting = true;
            st = self.shared.done.wait(st).unwrap_or_else(|e| e.into_inner());
            st.taker_waiting = false;
        }
    }

    /// Wait until the parsing thread has worked off the queue (tests).
    #[cfg(test)]
    pub(crate) fn settle(&self) {
        for _ in 0..5_000 {
            let st = self.shared.lock();
            if st.queue.is_empty() && st.busy.is_none() {
                return;
            }
            drop(st);
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        panic!("the parsing thread did not finish its queue");
    }

    /// Files waiting to be taken, lowered or only parsed (tests).
    #[cfg(test)]
    pub(crate) fn ready_files(&self) -> Vec<(PathBuf, bool)> {
        let st = self.shared.lock();
        let mut v: Vec<_> = st
            .ready
            .iter()
            .map(|(p, r)| (p.clone(), matches!(r.ahead, Ahead::Lowered(_))))
            .collect();
        v.sort();
        v
    }

    /// Hand a parse that came from [`Prefetcher::take`] back once it is
    /// lowered, to be freed on the parsing thread.
    pub fn discard(&mut self, parse: rnix::Parse<rnix::Root>) {
        let mut st = self.shared.lock();
        if st.stop {
            return;
        }
        st.discarded.push(parse);
        // Freed along with the next parse; the thread is woken for them
        // alone only once there is a batch.
        if st.discarded.len() >= 64 {
            self.schedule(&mut st);
        }
    }
}

impl Drop for Prefetcher {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        st.stop = true;
        st.queue.clear();
        st.ready.clear();
        st.ready_bytes = 0;
        let discarded = std::mem::take(&mut st.discarded);
        // The parsing thread frees what it allocated, if it is at work
        // here anyway; otherwise it is freed now.
        if st.scheduled {
            st.discarded = discarded;
        } else {
            drop(st);
            drop(discarded);
        }
    }
}

/// Whether a path literal may name a file that `import` parses: a `.nix`
/// file, or a directory (its `default.nix`) when the last component has no
/// extension. Anything else (`./fix.patch`, `./src.tar.gz`) is not read.
fn candidate(p: &str) -> bool {
    let last = p.rsplit('/').next().unwrap_or(p);
    p.starts_with('/') && (last.ends_with(".nix") || !last.contains('.'))
}

/// Work on one evaluator's queue until it has no work left (or no room),
/// then give it up; it is handed over again when it has work.
fn serve(shared: &Shared) {
    loop {
        let path = {
            let mut st = shared.lock();
            loop {
                if !st.discarded.is_empty() {
                    let trash = std::mem::take(&mut st.discarded);
                    drop(st);
                    drop(trash);
                    st = shared.lock();
                    continue;
                }
                if !st.has_work() {
                    st.scheduled = false;
                    return;
                }
                if let Some(p) = next_unclaimed(&mut st) {
                    st.busy = Some(p.clone());
                    break p;
                }
            }
        };
        work_on(shared, path);
        let mut st = shared.lock();
        st.busy = None;
        if st.taker_waiting {
            shared.done.notify_one();
        }
    }
}

/// The next queued file that the evaluation thread has not claimed.
fn next_unclaimed(st: &mut State) -> Option<PathBuf> {
    while let Some(p) = st.queue.pop_front() {
        if !st.claimed.remove(&p) {
            return Some(p);
        }
    }
    None
}

/// Read, parse and lower the queued file `path` (taken off the queue) and
/// make it ready, unless it was claimed meanwhile.
fn work_on(shared: &Shared, path: PathBuf) {
    let resolved = resolve(&path);
    let parsed = resolved.as_deref().and_then(|p| {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            read_and_parse(p, shared.lower.as_ref())
        }))
        .ok()
        .flatten()
    });
    let mut st = shared.lock();
    if let (Some(resolved), Some((parsed, named))) = (resolved, parsed) {
        if !st.stop && !st.claimed.remove(&resolved) && !st.ready.contains_key(&resolved) {
            st.ready_bytes += parsed.bytes;
            st.ready.insert(resolved, parsed);
            st.enqueue(named);
        }
    }
}

/// The file `import` would read for `path`, when it is a regular file.
fn resolve(path: &Path) -> Option<PathBuf> {
    let meta = std::fs::metadata(path).ok()?;
    if meta.is_dir() {
        let p = path.join("default.nix");
        std::fs::metadata(&p).ok()?.is_file().then_some(p)
    } else {
        meta.is_file().then(|| path.to_path_buf())
    }
}

/// Read and parse (and, with `lower`, lower) the file at `path`; also
/// returns the path literals of a lowered file.
fn read_and_parse(path: &Path, lower: Option<&LowerContext>) -> Option<(Parsed, Vec<String>)> {
    use std::io::Read;
    let file = std::fs::File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    if len > MAX_FILE_BYTES {
        return None;
    }
    let mut text = String::with_capacity(len as usize);
    // Through `take`: `File`'s own `read_to_string` would ask for the size
    // (and position) again.
    file.take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .ok()?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return None;
    }
    let bytes = text.len();
    let (ahead, named) = match lower {
        Some(cx) => lower_ahead(cx, path, text),
        None => {
            let parse = rnix::Root::parse(&crate::lower::normalize_newlines(&text));
            (Ahead::Parsed { text, parse }, Vec::new())
        }
    };
    Some((Parsed { bytes, ahead }, named))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>() {}

    /// The text and parse of a file parsed (not lowered) ahead.
    fn parsed(p: Parsed) -> (String, rnix::Parse<rnix::Root>) {
        match p.ahead {
            Ahead::Parsed { text, parse } => (text, parse),
            Ahead::Lowered(_) => panic!("lowered without a lowering context"),
        }
    }

    #[test]
    fn parses_cross_threads() {
        assert_send::<Parsed>();
    }

    #[test]
    fn candidates() {
        assert!(candidate("/a/b/foo.nix"));
        assert!(candidate("/a/b/pkgs"));
        assert!(!candidate("/a/b/fix.patch"));
        assert!(!candidate("relative.nix"));
    }

    #[test]
    fn parses_named_files_and_yields_each_once() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.nix");
        std::fs::write(&a, "{ x = 1; }").unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        let d = dir.path().join("d/default.nix");
        std::fs::write(&d, "1 +").unwrap();
        let deep = dir.path().join("deep.nix");
        std::fs::write(&deep, "[".repeat(20_000) + &"]".repeat(20_000)).unwrap();
        let mut pf = Prefetcher::default();
        pf.request([
            deep.display().to_string(),
            a.display().to_string(),
            dir.path().join("d").display().to_string(),
            dir.path().join("missing.nix").display().to_string(),
        ]);
        // Wait until the queue is worked off (the thread is shared with
        // other tests).
        pf.settle();
        let (text, parse) = parsed(pf.take(&a).expect("a.nix parsed ahead"));
        assert_eq!(text, "{ x = 1; }");
        assert!(parse.errors().is_empty());
        // A directory is parsed as its default.nix; its errors are kept for
        // the evaluation thread to report.
        let (_, parse) = parsed(pf.take(&d).expect("d/default.nix parsed ahead"));
        assert!(!parse.errors().is_empty());
        // Deep nesting parses as it does on the evaluation thread.
        let (text, parse) = parsed(pf.take(&deep).expect("deep.nix parsed ahead"));
        let here = crate::with_big_stack(move || rnix::Root::parse(&text).errors().to_vec());
        assert_eq!(parse.errors(), here.unwrap().as_slice());
        assert!(pf.take(&a).is_none(), "taken twice");
        assert!(pf.take(&dir.path().join("missing.nix")).is_none());
    }

    #[test]
    fn a_claimed_file_is_left_to_the_caller() {
        let dir = tempfile::tempdir().unwrap();
        let mut pf = Prefetcher::default();
        let files: Vec<PathBuf> = (0..50)
            .map(|i| {
                let p = dir.path().join(format!("f{i}.nix"));
                std::fs::write(&p, format!("{i}")).unwrap();
                p
            })
            .collect();
        pf.request(files.iter().map(|p| p.display().to_string()));
        // Whatever was not parsed yet is claimed and never shows up later.
        for p in &files {
            let _ = pf.take(p);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        let st = pf.shared.lock();
        assert!(st.ready.is_empty(), "{} parses left behind", st.ready.len());
        drop(st);
        // Each one was handed out at most once.
        assert!(files.iter().all(|p| pf.take(p).is_none()));
    }
}
