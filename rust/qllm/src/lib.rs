//! Safe Rust interface to qllm: int4/int8 Llama-2 inference on CPUs, over the library's stable
//! C ABI (the `qllm-sys` crate, which finds and links libqllm).
//!
//! A [`Model`] is loaded once (mmap) and shared between threads (`Send + Sync`); each
//! conversation or request gets a [`Session`] (its KV cache and sampler), which is `Send` and
//! used by one thread at a time. Every failure is an [`Error`] carrying the C status, its name
//! and the library's message; nothing panics on bad input.
//!
//! ```no_run
//! fn main() -> Result<(), qllm::Error> {
//!     let model = qllm::Model::load("models/tiny-kjv.q8_0.gguf")?;
//!     let mut session = model.session(&qllm::SessionParams { temperature: 0.0, ..Default::default() })?;
//!     let opts = qllm::GenerateOptions { max_tokens: 32, ..Default::default() };
//!     // with a closure that sees each piece as it is generated (return false to stop) ...
//!     let g = session.generate("And God said unto Noah,", &opts, |piece| {
//!         print!("{}", piece);
//!         true
//!     })?;
//!     println!("\n[{} tokens, {:?}]", g.raw.n_generated, g.finish);
//!     // ... or as an iterator
//!     for piece in session.stream("In the beginning", &opts) {
//!         print!("{}", piece?);
//!     }
//!     Ok(())
//! }
//! ```
//!
//! Errors say what is wrong:
//!
//! ```
//! let e = qllm::Model::load("/nonexistent/model.gguf").err().unwrap();
//! assert_eq!(e.kind(), qllm::ErrorKind::Io);
//! assert!(e.message.contains("/nonexistent/model.gguf"));
//! ```

pub use qllm_sys as sys;
use qllm_sys as ffi;

use std::ffi::{CStr, CString};
use std::fmt;
use std::os::raw::{c_char, c_void};
use std::os::unix::ffi::OsStrExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::ptr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

const OK: ffi::qllm_status = ffi::QLLM_OK as ffi::qllm_status;
const BUFFER_TOO_SMALL: ffi::qllm_status = ffi::QLLM_ERR_BUFFER_TOO_SMALL as ffi::qllm_status;

/// The kind of a failure: the C status (`QLLM_ERR_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidArgument,
    Io,
    BadFormat,
    Unsupported,
    OutOfMemory,
    /// The prompt does not fit the window under the session's context policy.
    ContextOverflow,
    Internal,
    BufferTooSmall,
    /// `Session::eval` stopped by a cancel.
    Cancelled,
    /// A status added by a newer library than this crate knows.
    Other(i32),
}

/// A failed call: the C status (`QLLM_ERR_*`), its name and the library's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub status: i32,
    pub name: String,
    pub message: String,
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self.status {
            1 => ErrorKind::InvalidArgument,
            2 => ErrorKind::Io,
            3 => ErrorKind::BadFormat,
            4 => ErrorKind::Unsupported,
            5 => ErrorKind::OutOfMemory,
            6 => ErrorKind::ContextOverflow,
            7 => ErrorKind::Internal,
            8 => ErrorKind::BufferTooSmall,
            9 => ErrorKind::Cancelled,
            other => ErrorKind::Other(other),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.name, self.message)
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

fn cstr(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

fn check(status: ffi::qllm_status) -> Result<()> {
    if status == OK {
        return Ok(());
    }
    // the message first: it is valid only until this thread's next qllm call
    let message = cstr(unsafe { ffi::qllm_last_error() });
    Err(Error { status, name: cstr(unsafe { ffi::qllm_status_name(status) }), message })
}

fn invalid(message: &str) -> Error {
    Error { status: 1, name: "QLLM_ERR_INVALID_ARGUMENT".into(), message: message.into() }
}

fn c_string(s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| invalid("string contains a NUL byte"))
}

fn c_path(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| invalid("path contains a NUL byte"))
}

/// Runs `f(buf, capacity, n_out)` with the buffer convention: size, allocate, fill.
fn sized<T: Copy + Default>(mut f: impl FnMut(*mut T, usize, *mut usize) -> ffi::qllm_status, extra: usize)
                            -> Result<Vec<T>> {
    sized_from(64, &mut f, extra)
}

/// As `sized`, starting with room for `initial` elements (a good guess saves a second call).
fn sized_from<T: Copy + Default>(initial: usize, f: &mut dyn FnMut(*mut T, usize, *mut usize) -> ffi::qllm_status,
                                 extra: usize) -> Result<Vec<T>> {
    let mut n = 0usize;
    let mut buf: Vec<T> = vec![T::default(); initial.max(1)];
    loop {
        let st = f(buf.as_mut_ptr(), buf.len(), &mut n);
        if st == BUFFER_TOO_SMALL && n + extra > buf.len() {
            buf = vec![T::default(); n + extra];
            continue;
        }
        check(st)?;
        buf.truncate(n);
        return Ok(buf);
    }
}

fn bytes_to_string(v: Vec<c_char>) -> Result<String> {
    let bytes: Vec<u8> = v.into_iter().map(|c| c as u8).collect();
    String::from_utf8(bytes).map_err(|_| invalid("library returned invalid UTF-8"))
}

/// Text owned by the session (`qllm_session_output` and friends), copied out.
fn session_text(f: impl FnOnce(*mut *const c_char, *mut usize) -> ffi::qllm_status) -> Result<String> {
    let mut text: *const c_char = ptr::null();
    let mut len = 0usize;
    check(f(&mut text, &mut len))?;
    if text.is_null() || len == 0 {
        return Ok(String::new());
    }
    let bytes = unsafe { std::slice::from_raw_parts(text as *const u8, len) };
    Ok(String::from_utf8_lossy(bytes).into_owned())
}

/// The library's version, e.g. "0.7.0".
///
/// ```
/// assert!(qllm::version().starts_with("0."));
/// ```
pub fn version() -> String {
    cstr(unsafe { ffi::qllm_version_string() })
}

/// How to load a model.
#[derive(Clone, Debug, Default)]
pub struct ModelParams {
    /// Threads for the load-time repack; 0 = all cores.
    pub n_threads: i32,
    /// Kernel table ("avx2", "neon", "scalar", ...); None = the best for this CPU.
    pub isa: Option<String>,
    /// Quantize F16/F32 matrices to Q8_0 at load.
    pub quantize_float_weights: bool,
}

/// What a loaded model is.
#[derive(Clone, Debug)]
pub struct ModelInfo {
    pub n_vocab: i32,
    pub n_ctx_train: i32,
    pub n_embd: i32,
    pub n_layer: i32,
    pub n_head: i32,
    pub n_head_kv: i32,
    pub n_ff: i32,
    pub has_vocabulary: bool,
    pub bos_token: i32,
    pub eos_token: i32,
    pub n_params: i64,
    /// Bytes streamed from memory per generated token.
    pub weight_bytes: u64,
    pub weight_type_name: String,
    /// The file's tensor types, e.g. "Q4_K_M: 193 q4_k, 65 f32, 33 q6_k".
    pub weight_mix: String,
    /// The kernel table its sessions use.
    pub isa: String,
    pub load_seconds: f64,
    /// "sentencepiece" (Llama-2, Code Llama), "llama3-bpe" (Llama-3), "" without a vocabulary.
    pub tokenizer: String,
    /// The chat format of `chat_tokens`: "llama2", "llama3", "unsupported" (a template qllm does
    /// not know), "" without a vocabulary.
    pub chat_format: String,
}

/// One turn of a Llama-2-chat dialog: role "system" (first only), "user" or "assistant".
pub type Message<'a> = (&'a str, &'a str);

struct Dialog {
    _owned: Vec<(CString, CString)>,
    msgs: Vec<ffi::qllm_chat_message>,
}

fn dialog(messages: &[Message]) -> Result<Dialog> {
    let owned: Vec<(CString, CString)> =
        messages.iter().map(|(r, c)| Ok((c_string(r)?, c_string(c)?))).collect::<Result<_>>()?;
    let msgs = owned.iter().map(|(r, c)| ffi::qllm_chat_message { role: r.as_ptr(), content: c.as_ptr() }).collect();
    Ok(Dialog { _owned: owned, msgs })
}

struct ModelHandle(*mut ffi::qllm_model);

// The C ABI documents a model as immutable after load and usable from any thread.
unsafe impl Send for ModelHandle {}
unsafe impl Sync for ModelHandle {}

impl Drop for ModelHandle {
    fn drop(&mut self) {
        unsafe { ffi::qllm_model_free(self.0) }
    }
}

/// A loaded model: immutable and shared between threads (`Send + Sync`); a clone is another
/// reference to the same weights, and sessions keep it alive.
#[derive(Clone)]
pub struct Model {
    _handle: Arc<ModelHandle>,
    ptr: *mut ffi::qllm_model,
}

unsafe impl Send for Model {}
unsafe impl Sync for Model {}

impl fmt::Debug for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Model").field("ptr", &self.ptr).finish()
    }
}

impl Model {
    /// Loads a GGUF file (mmap) with the default parameters.
    pub fn load(path: impl AsRef<Path>) -> Result<Model> {
        Model::load_with(path, &ModelParams::default())
    }

    pub fn load_with(path: impl AsRef<Path>, params: &ModelParams) -> Result<Model> {
        let cpath = c_path(path.as_ref())?;
        let isa = match &params.isa {
            Some(s) => Some(c_string(s)?),
            None => None,
        };
        let mut p = ffi::qllm_model_params::default();
        check(unsafe { ffi::qllm_model_params_init(&mut p, std::mem::size_of::<ffi::qllm_model_params>()) })?;
        p.n_threads = params.n_threads;
        p.quantize_float_weights = params.quantize_float_weights as i32;
        p.isa = isa.as_ref().map_or(ptr::null(), |s| s.as_ptr());
        let mut out = ptr::null_mut();
        check(unsafe { ffi::qllm_model_load(cpath.as_ptr(), &p, &mut out) })?;
        Ok(Model { _handle: Arc::new(ModelHandle(out)), ptr: out })
    }

    pub fn info(&self) -> Result<ModelInfo> {
        let mut i = ffi::qllm_model_info { struct_size: std::mem::size_of::<ffi::qllm_model_info>() as u32, ..Default::default() };
        check(unsafe { ffi::qllm_model_get_info(self.ptr, &mut i) })?;
        Ok(ModelInfo {
            n_vocab: i.n_vocab,
            n_ctx_train: i.n_ctx_train,
            n_embd: i.n_embd,
            n_layer: i.n_layer,
            n_head: i.n_head,
            n_head_kv: i.n_head_kv,
            n_ff: i.n_ff,
            has_vocabulary: i.has_vocabulary != 0,
            bos_token: i.bos_token,
            eos_token: i.eos_token,
            n_params: i.n_params,
            weight_bytes: i.weight_bytes,
            weight_type_name: cstr(i.weight_type_name.as_ptr()),
            weight_mix: cstr(i.weight_mix.as_ptr()),
            isa: cstr(i.isa.as_ptr()),
            load_seconds: i.load_seconds,
            tokenizer: cstr(i.tokenizer.as_ptr()),
            chat_format: cstr(i.chat_format.as_ptr()),
        })
    }

    /// Token ids of text; control pieces written in it ("<|eot_id|>", "</s>") stay plain text.
    pub fn tokenize(&self, text: &str, add_bos: bool) -> Result<Vec<i32>> {
        tokenize(self.ptr, text, add_bos)
    }

    /// As `tokenize`, but control pieces written in the text become their tokens.
    pub fn tokenize_special(&self, text: &str, add_bos: bool) -> Result<Vec<i32>> {
        let flags = ffi::QLLM_TOKENIZE_PARSE_SPECIAL | if add_bos { ffi::QLLM_TOKENIZE_ADD_BOS } else { 0 };
        sized_from(text.len() + 2, &mut |buf, cap, n| unsafe {
            ffi::qllm_tokenize_ex(self.ptr, text.as_ptr() as *const c_char, text.len(), flags as u32, buf, cap, n)
        }, 0)
    }

    /// The ids that end an answer, ascending: EOS, and Llama-3's `<|end_of_text|>`, `<|eot_id|>`,
    /// `<|eom_id|>` where the vocabulary has them.
    pub fn end_tokens(&self) -> Result<Vec<i32>> {
        sized(|buf, cap, n| unsafe { ffi::qllm_model_end_tokens(self.ptr, buf, cap, n) }, 0)
    }

    /// A dialog as text in this model's chat format (Llama-2 or Llama-3), special pieces written out.
    pub fn chat_format(&self, messages: &[Message]) -> Result<String> {
        let d = dialog(messages)?;
        bytes_to_string(sized(|buf, cap, n| unsafe {
            ffi::qllm_chat_format_model(self.ptr, d.msgs.as_ptr(), d.msgs.len(), buf, cap, n)
        }, 1)?)
    }

    pub fn count_tokens(&self, text: &str, add_bos: bool) -> Result<usize> {
        let mut n = 0usize;
        check(unsafe {
            ffi::qllm_count_tokens(self.ptr, text.as_ptr() as *const c_char, text.len(), add_bos as i32, &mut n)
        })?;
        Ok(n)
    }

    pub fn detokenize(&self, ids: &[i32]) -> Result<String> {
        bytes_to_string(sized_from(ids.len() * 8 + 16, &mut |buf, cap, n| unsafe {
            ffi::qllm_detokenize(self.ptr, ids.as_ptr(), ids.len(), buf, cap, n)
        }, 1)?)
    }

    /// The piece of one token as stored in the vocabulary ("▁Hello", "<0x0A>", "</s>").
    pub fn token_piece(&self, token: i32) -> Result<String> {
        bytes_to_string(sized(|buf, cap, n| unsafe { ffi::qllm_token_piece(self.ptr, token, buf, cap, n) }, 1)?)
    }

    /// Token ids of a dialog of (role, content) pairs ending with a "user" turn, in the model's
    /// chat format (Llama-2 or Llama-3).
    pub fn chat_tokens(&self, messages: &[Message]) -> Result<Vec<i32>> {
        chat_tokens(self.ptr, messages)
    }

    /// A new session (KV cache and sampler) on this model.
    pub fn session(&self, params: &SessionParams) -> Result<Session> {
        let p = params.to_ffi()?;
        let mut out = ptr::null_mut();
        check(unsafe { ffi::qllm_session_create(self.ptr, &p, &mut out) })?;
        Ok(Session { ptr: out, handle: Arc::new(SessionHandle(out)), model: self.clone() })
    }
}

fn tokenize(model: *const ffi::qllm_model, text: &str, add_bos: bool) -> Result<Vec<i32>> {
    // a token is at least one byte of text: one call
    sized_from(text.len() + 2, &mut |buf, cap, n| unsafe {
        ffi::qllm_tokenize(model, text.as_ptr() as *const c_char, text.len(), add_bos as i32, buf, cap, n)
    }, 0)
}

fn chat_tokens(model: *const ffi::qllm_model, messages: &[Message]) -> Result<Vec<i32>> {
    let d = dialog(messages)?;
    let bytes: usize = messages.iter().map(|(r, c)| r.len() + c.len() + 32).sum();
    sized_from(bytes, &mut |buf, cap, n| unsafe { ffi::qllm_chat_apply(model, d.msgs.as_ptr(), d.msgs.len(), buf, cap, n) }, 0)
}

/// A dialog as Llama-2-chat text with `<s>` and `</s>` written out (for display; needs no model;
/// `Model::chat_format` writes a model's own format).
///
/// ```
/// let text = qllm::chat_format(&[("user", "Hi")]).unwrap();
/// assert_eq!(text, "<s>[INST] Hi [/INST]");
/// ```
pub fn chat_format(messages: &[Message]) -> Result<String> {
    let d = dialog(messages)?;
    bytes_to_string(sized(|buf, cap, n| unsafe { ffi::qllm_chat_format(d.msgs.as_ptr(), d.msgs.len(), buf, cap, n) }, 1)?)
}

/// What happens when a prompt does not fit the window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContextPolicy {
    /// An `ErrorKind::ContextOverflow` that says by how much (the default: nothing is dropped
    /// silently).
    Error = 0,
    /// Keep the first `n_keep` tokens and the end; the middle is dropped and reported.
    KeepHeadAndTail = 1,
    KeepTail = 2,
}

/// The KV cache's element type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvType {
    F32 = 0,
    F16 = 1,
}

/// Session settings; `Default` gives the library's defaults (temperature 0.8, policy Error);
/// `None` means the library's default for that field.
#[derive(Clone, Debug)]
pub struct SessionParams {
    /// Window in tokens; 0 = the model's training context.
    pub n_ctx: i32,
    /// Threads; 0 = all cores (within the process's CPU quota).
    pub n_threads: i32,
    /// Prompt tokens per forward pass.
    pub n_batch: Option<i32>,
    pub kv_type: Option<KvType>,
    pub context_policy: ContextPolicy,
    pub n_keep: Option<i32>,
    /// A full window drops half after `n_keep` and generation goes on.
    pub context_shift: bool,
    /// <= 0: greedy.
    pub temperature: f32,
    pub top_k: Option<i32>,
    pub top_p: Option<f32>,
    pub min_p: Option<f32>,
    pub repeat_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub penalty_last_n: Option<i32>,
    /// Same seed, same tokens, any thread count.
    pub seed: Option<u64>,
}

impl SessionParams {
    fn to_ffi(&self) -> Result<ffi::qllm_session_params> {
        let mut p = ffi::qllm_session_params::default();
        check(unsafe { ffi::qllm_session_params_init(&mut p, std::mem::size_of::<ffi::qllm_session_params>()) })?;
        p.n_ctx = self.n_ctx;
        p.n_threads = self.n_threads;
        if let Some(v) = self.n_batch {
            p.n_batch = v;
        }
        if let Some(v) = self.kv_type {
            p.kv_type = v as i32;
        }
        p.context_policy = self.context_policy as i32;
        if let Some(k) = self.n_keep {
            p.n_keep = k;
        }
        p.context_shift = self.context_shift as i32;
        p.temperature = self.temperature;
        if let Some(k) = self.top_k {
            p.top_k = k;
        }
        if let Some(v) = self.top_p {
            p.top_p = v;
        }
        if let Some(v) = self.min_p {
            p.min_p = v;
        }
        if let Some(v) = self.repeat_penalty {
            p.repeat_penalty = v;
        }
        if let Some(v) = self.frequency_penalty {
            p.frequency_penalty = v;
        }
        if let Some(v) = self.presence_penalty {
            p.presence_penalty = v;
        }
        if let Some(v) = self.penalty_last_n {
            p.penalty_last_n = v;
        }
        if let Some(s) = self.seed {
            p.seed = s;
        }
        Ok(p)
    }
}

impl Default for SessionParams {
    fn default() -> Self {
        SessionParams {
            n_ctx: 0,
            n_threads: 0,
            n_batch: None,
            kv_type: None,
            context_policy: ContextPolicy::Error,
            n_keep: None,
            context_shift: true,
            temperature: 0.8,
            top_k: None,
            top_p: None,
            min_p: None,
            repeat_penalty: None,
            frequency_penalty: None,
            presence_penalty: None,
            penalty_last_n: None,
            seed: None,
        }
    }
}

struct GrammarHandle(*mut ffi::qllm_grammar);

// The C ABI documents a grammar as immutable and usable from any thread.
unsafe impl Send for GrammarHandle {}
unsafe impl Sync for GrammarHandle {}

impl Drop for GrammarHandle {
    fn drop(&mut self) {
        unsafe { ffi::qllm_grammar_free(self.0) }
    }
}

/// A compiled grammar for constrained output ([`GenerateOptions::grammar`], [`Matcher`]):
/// immutable, `Send + Sync`; a clone is another reference to the same grammar.
///
/// ```
/// let g = qllm::Grammar::from_gbnf(r#"root ::= "yes" | "no""#).unwrap();
/// let opts = qllm::GenerateOptions { grammar: Some(g), ..Default::default() };
/// # let _ = opts;
/// ```
#[derive(Clone)]
pub struct Grammar {
    handle: Arc<GrammarHandle>,
}

impl fmt::Debug for Grammar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Grammar").field("ptr", &self.handle.0).finish()
    }
}

impl Grammar {
    fn wrap(f: impl FnOnce(*mut *mut ffi::qllm_grammar) -> ffi::qllm_status) -> Result<Grammar> {
        let mut out = ptr::null_mut();
        check(f(&mut out))?;
        Ok(Grammar { handle: Arc::new(GrammarHandle(out)) })
    }

    /// GBNF (llama.cpp's grammar syntax) starting at the rule `root`. Errors give the line and
    /// column, or name the rule.
    pub fn from_gbnf(text: &str) -> Result<Grammar> {
        Grammar::wrap(|out| unsafe { ffi::qllm_grammar_from_gbnf(text.as_ptr() as *const c_char, text.len(), out) })
    }

    /// A JSON Schema (its JSON text): every string of the grammar validates against it. A
    /// keyword the grammar could not follow exactly is `ErrorKind::Unsupported`, named.
    pub fn from_json_schema(schema: &str) -> Result<Grammar> {
        Grammar::wrap(|out| unsafe {
            ffi::qllm_grammar_from_json_schema(schema.as_ptr() as *const c_char, schema.len(), out)
        })
    }

    /// Any JSON value whose top level is an object.
    pub fn json_object() -> Result<Grammar> {
        Grammar::wrap(|out| unsafe { ffi::qllm_grammar_json_object(out) })
    }
}

/// The GBNF that [`Grammar::from_json_schema`] compiles for a schema.
pub fn gbnf_from_json_schema(schema: &str) -> Result<String> {
    let v = sized(|buf, cap, n| unsafe {
        ffi::qllm_grammar_gbnf_from_json_schema(schema.as_ptr() as *const c_char, schema.len(), buf, cap, n)
    }, 1)?;
    bytes_to_string(v)
}

/// Follows one output of a grammar token by token, for loops that sample themselves
/// ([`Session::eval`] and [`Session::sample`]): [`Matcher::mask_session`] (or
/// [`Matcher::mask`]) before each sampling, [`Matcher::accept`] after. `Send`, not `Sync`.
pub struct Matcher {
    ptr: *mut ffi::qllm_matcher,
}

unsafe impl Send for Matcher {}

impl Drop for Matcher {
    fn drop(&mut self) {
        unsafe { ffi::qllm_matcher_free(self.ptr) }
    }
}

impl fmt::Debug for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Matcher").field("ptr", &self.ptr).finish()
    }
}

impl Matcher {
    /// A matcher of `grammar` over `model`'s vocabulary (both kept alive by the library).
    pub fn new(grammar: &Grammar, model: &Model) -> Result<Matcher> {
        let mut out = ptr::null_mut();
        check(unsafe { ffi::qllm_matcher_create(grammar.handle.0, model.ptr, &mut out) })?;
        Ok(Matcher { ptr: out })
    }

    /// Sets the logit of every token that may not come next to -inf (`logits.len()` must be the
    /// vocabulary's size).
    pub fn mask(&mut self, logits: &mut [f32]) -> Result<()> {
        check(unsafe { ffi::qllm_matcher_mask(self.ptr, logits.as_mut_ptr(), logits.len()) })
    }

    /// Masks the session's last logits in place: its `sample` then picks an allowed token.
    pub fn mask_session(&mut self, session: &mut Session) -> Result<()> {
        check(unsafe { ffi::qllm_matcher_mask_session(self.ptr, session.ptr) })
    }

    /// Advances past `token` (EOS ends the output); a token not allowed is an error and changes
    /// nothing.
    pub fn accept(&mut self, token: i32) -> Result<()> {
        check(unsafe { ffi::qllm_matcher_accept(self.ptr, token) })
    }

    /// Advances past `text`; text not allowed is an error and changes nothing.
    pub fn accept_text(&mut self, text: &str) -> Result<()> {
        check(unsafe { ffi::qllm_matcher_accept_text(self.ptr, text.as_ptr() as *const c_char, text.len()) })
    }

    fn state(&self) -> (bool, bool) {
        let (mut can, mut must) = (0i32, 0i32);
        // cannot fail on a live matcher with both pointers given
        let _ = check(unsafe { ffi::qllm_matcher_state(self.ptr, &mut can, &mut must) });
        (can != 0, must != 0)
    }

    /// The text so far is a complete string of the language (EOS may come).
    pub fn can_end(&self) -> bool {
        self.state().0
    }

    /// Only EOS may come next.
    pub fn must_end(&self) -> bool {
        self.state().1
    }

    /// Back to the empty text.
    pub fn reset(&mut self) -> Result<()> {
        check(unsafe { ffi::qllm_matcher_reset(self.ptr) })
    }
}

/// How long to generate and where to stop.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    /// -1: until EOS, a stop string or a full window.
    pub max_tokens: i32,
    /// Strings that end the generation (not emitted).
    pub stop: Vec<String>,
    pub stop_at_eos: bool,
    /// Speculative decoding (library 0.7): greedy text stays the same, sampled text keeps its
    /// distribution; the drafts kept are in `raw.n_draft_accepted`.
    pub speculation: Speculation,
    /// Constrained output (library 0.8): the text is a string of this grammar's language (or a
    /// prefix of one when `max_tokens` ran out: see `finish`). With chain of thought, the answer.
    pub grammar: Option<Grammar>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions { max_tokens: 256, stop: Vec::new(), stop_at_eos: true, speculation: Speculation::Off, grammar: None }
    }
}

/// Where speculative decoding's draft tokens come from, and at most how many (1..=64) are checked
/// per forward pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Speculation {
    #[default]
    Off,
    /// Copied from where the sequence's last 2-4 tokens occurred before (prompt or output).
    Lookup(i32),
    /// Written by the session's draft model ([`Session::set_draft`]).
    DraftModel(i32),
}

/// Why a generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    Eos,
    StopString,
    MaxTokens,
    /// The callback returned false, or the stream was dropped.
    Cancelled,
    ContextFull,
    /// A reason added by a newer library than this crate knows.
    Other(i32),
}

/// The generated text and what happened: `raw` has the token counts, what a context policy
/// dropped (`n_dropped`, `drop_begin..drop_end`) and the speeds.
#[derive(Clone, Debug)]
pub struct Generation {
    pub text: String,
    pub finish: Finish,
    pub raw: ffi::qllm_generate_result,
}

struct SessionHandle(*mut ffi::qllm_session);

// Shared only with a `Canceller` and a `Stream`'s helper thread: the first calls nothing but
// qllm_session_cancel (thread-safe), the second is the session's only user while it runs.
unsafe impl Send for SessionHandle {}
unsafe impl Sync for SessionHandle {}

impl Drop for SessionHandle {
    fn drop(&mut self) {
        unsafe { ffi::qllm_session_free(self.0) }
    }
}

/// KV cache and sampler of one sequence: `Send` (move it to another thread) but not `Sync`.
/// It keeps its model alive.
pub struct Session {
    // the handle for this session's calls: NULL while a `Stream` has it (every call is then an
    // error, never a second user); `handle` owns it
    ptr: *mut ffi::qllm_session,
    handle: Arc<SessionHandle>,
    model: Model,
}

unsafe impl Send for Session {}

/// Stops the call running on a session from another thread (see [`Session::canceller`]).
#[derive(Clone)]
pub struct Canceller(Arc<SessionHandle>);

impl Canceller {
    /// Stops the generation or eval running on the session at its next check (before each
    /// chunk of prompt tokens and each generated token): generation ends with
    /// `Finish::Cancelled` and the tokens so far, an eval with `ErrorKind::Cancelled`. A call
    /// clears the request when it starts, so a cancel while nothing runs does nothing.
    pub fn cancel(&self) {
        unsafe { ffi::qllm_session_cancel(self.0 .0) };
    }
}

impl fmt::Debug for Canceller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Canceller").finish()
    }
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session").field("ptr", &self.ptr).finish()
    }
}

struct CallbackState<'a> {
    f: &'a mut dyn FnMut(&str) -> bool,
    panic: Option<Box<dyn std::any::Any + Send>>,
    stop: Option<&'a AtomicBool>,
}

fn piece<'a>(text: *const c_char, len: usize) -> &'a str {
    let bytes = if len == 0 || text.is_null() { &[][..] } else { unsafe { std::slice::from_raw_parts(text as *const u8, len) } };
    // the library sends whole UTF-8 characters only
    std::str::from_utf8(bytes).unwrap_or("\u{FFFD}")
}

unsafe extern "C" fn trampoline(text: *const c_char, len: usize, _token: i32, user_data: *mut c_void) -> i32 {
    let state = &mut *(user_data as *mut CallbackState);
    if state.panic.is_some() || state.stop.map_or(false, |s| s.load(Ordering::Relaxed)) {
        return 1;
    }
    let p = piece(text, len);
    // a panic must not unwind through C: catch it, cancel, and resume it after the C call
    match catch_unwind(AssertUnwindSafe(|| (state.f)(p))) {
        Ok(go_on) => (!go_on) as i32,
        Err(p) => {
            state.panic = Some(p);
            1
        }
    }
}

enum Prompt<'a> {
    Text(&'a str),
    Tokens(&'a [i32]),
}

fn finish_of(reason: i32) -> Finish {
    match reason {
        0 => Finish::Eos,
        1 => Finish::StopString,
        2 => Finish::MaxTokens,
        3 => Finish::Cancelled,
        4 => Finish::ContextFull,
        other => Finish::Other(other),
    }
}

/// Generation parameters pointing into `stops`, which must outlive them.
fn generate_params(opts: &GenerateOptions, stop_ptrs: &[*const c_char]) -> Result<ffi::qllm_generate_params> {
    let mut gp = ffi::qllm_generate_params::default();
    check(unsafe { ffi::qllm_generate_params_init(&mut gp, std::mem::size_of::<ffi::qllm_generate_params>()) })?;
    gp.max_tokens = opts.max_tokens;
    gp.stop_at_eos = opts.stop_at_eos as i32;
    gp.stop = if stop_ptrs.is_empty() { ptr::null() } else { stop_ptrs.as_ptr() };
    gp.n_stop = stop_ptrs.len();
    let (n, source) = match opts.speculation {
        Speculation::Off => (0, ffi::QLLM_SPEC_LOOKUP),
        Speculation::Lookup(n) => (n, ffi::QLLM_SPEC_LOOKUP),
        Speculation::DraftModel(n) => (n, ffi::QLLM_SPEC_DRAFT_MODEL),
    };
    gp.draft_tokens = n;
    gp.speculation = source as i32;
    // `opts` (which holds a reference to the grammar) outlives the call
    gp.grammar = opts.grammar.as_ref().map_or(ptr::null(), |g| g.handle.0 as *const ffi::qllm_grammar);
    Ok(gp)
}

fn new_result() -> ffi::qllm_generate_result {
    ffi::qllm_generate_result { struct_size: std::mem::size_of::<ffi::qllm_generate_result>() as u32, ..Default::default() }
}

/// Runs one generating C call with `on_text` as its streaming callback, then reads the output.
fn run_generation(session: *mut ffi::qllm_session, opts: &GenerateOptions, mut on_text: impl FnMut(&str) -> bool,
                  call: impl FnOnce(&ffi::qllm_generate_params, &mut ffi::qllm_generate_result) -> ffi::qllm_status)
                  -> Result<Generation> {
    run_generation_until(session, opts, None, &mut on_text, call)
}

fn run_generation_until(session: *mut ffi::qllm_session, opts: &GenerateOptions, stop: Option<&AtomicBool>,
                        on_text: &mut dyn FnMut(&str) -> bool,
                        call: impl FnOnce(&ffi::qllm_generate_params, &mut ffi::qllm_generate_result) -> ffi::qllm_status)
                        -> Result<Generation> {
    let stops: Vec<CString> = opts.stop.iter().map(|s| c_string(s)).collect::<Result<_>>()?;
    let stop_ptrs: Vec<*const c_char> = stops.iter().map(|s| s.as_ptr()).collect();
    let mut state = CallbackState { f: on_text, panic: None, stop };
    let mut gp = generate_params(opts, &stop_ptrs)?;
    gp.callback = Some(trampoline);
    gp.user_data = &mut state as *mut CallbackState as *mut c_void;
    let mut r = new_result();
    let st = call(&gp, &mut r);
    if let Some(p) = state.panic.take() {
        std::panic::resume_unwind(p);
    }
    check(st)?;
    let text = session_text(|t, l| unsafe { ffi::qllm_session_output(session, t, l) })?;
    Ok(Generation { text, finish: finish_of(r.finish_reason), raw: r })
}

fn generate_raw(session: *mut ffi::qllm_session, prompt: Prompt, opts: &GenerateOptions, stop: Option<&AtomicBool>,
                mut on_text: impl FnMut(&str) -> bool) -> Result<Generation> {
    run_generation_until(session, opts, stop, &mut on_text, |gp, r| match prompt {
        Prompt::Text(t) => unsafe { ffi::qllm_generate(session, t.as_ptr() as *const c_char, t.len(), gp, r) },
        Prompt::Tokens(ids) => unsafe { ffi::qllm_generate_tokens(session, ids.as_ptr(), ids.len(), gp, r) },
    })
}

impl Session {
    /// The draft model of [`Speculation::DraftModel`]: a smaller model with the same vocabulary,
    /// which the session keeps alive; `None` removes it. A vocabulary that differs is an error
    /// naming the first difference.
    pub fn set_draft(&mut self, draft: Option<&Model>) -> Result<()> {
        let d = draft.map_or(ptr::null(), |m| m.ptr as *const ffi::qllm_model);
        check(unsafe { ffi::qllm_session_set_draft(self.ptr, d) })
    }

    /// Forgets the sequence and reseeds the sampler.
    pub fn reset(&mut self) -> Result<()> {
        check(unsafe { ffi::qllm_session_reset(self.ptr) })
    }

    /// New sampling settings (the sampling fields of `params`) from the next token on.
    pub fn set_sampling(&mut self, params: &SessionParams) -> Result<()> {
        let p = params.to_ffi()?;
        check(unsafe { ffi::qllm_session_set_sampling(self.ptr, &p) })
    }

    /// Appends tokens to the sequence and evaluates them.
    pub fn eval(&mut self, tokens: &[i32]) -> Result<()> {
        check(unsafe { ffi::qllm_session_eval(self.ptr, tokens.as_ptr(), tokens.len()) })
    }

    /// Logits of the last evaluated token.
    pub fn logits(&mut self) -> Result<&[f32]> {
        let mut p: *const f32 = ptr::null();
        let mut n = 0usize;
        check(unsafe { ffi::qllm_session_logits(self.ptr, &mut p, &mut n) })?;
        Ok(unsafe { std::slice::from_raw_parts(p, n) })
    }

    /// Samples a token from the current logits (not evaluated: pass it to `eval`).
    pub fn sample(&mut self) -> Result<i32> {
        let mut t = 0i32;
        check(unsafe { ffi::qllm_session_sample(self.ptr, &mut t) })?;
        Ok(t)
    }

    /// The tokens in the cache.
    pub fn history(&self) -> Result<Vec<i32>> {
        sized(|buf, cap, n| unsafe { ffi::qllm_session_history(self.ptr, buf, cap, n) }, 0)
    }

    /// Mean-pooled final hidden state, L2-normalised (replaces the session's sequence);
    /// compare two by dot product.
    pub fn embed(&mut self, text: &str) -> Result<Vec<f32>> {
        sized(|buf, cap, n| unsafe {
            ffi::qllm_embed(self.ptr, text.as_ptr() as *const c_char, text.len(), buf, cap, n)
        }, 0)
    }

    /// Generates after `prompt` (the whole text the model sees; the part already in the cache is
    /// reused), calling `on_text` once per sampled token with its text, then once more with what
    /// was held back; a piece is empty while a character or a possible stop string is held back
    /// (and always, on a model without a vocabulary). Return false from it to stop
    /// (`Finish::Cancelled`). A panic in `on_text` cancels the generation and goes on unwinding
    /// after it.
    pub fn generate(&mut self, prompt: &str, opts: &GenerateOptions, on_text: impl FnMut(&str) -> bool)
                    -> Result<Generation> {
        generate_raw(self.ptr, Prompt::Text(prompt), opts, None, on_text)
    }

    /// The same for a token sequence (e.g. from `Model::chat_tokens`).
    pub fn generate_tokens(&mut self, tokens: &[i32], opts: &GenerateOptions, on_text: impl FnMut(&str) -> bool)
                           -> Result<Generation> {
        generate_raw(self.ptr, Prompt::Tokens(tokens), opts, None, on_text)
    }

    /// Answers a Llama-2-chat dialog of (role, content) pairs that ends with a "user" turn.
    ///
    /// ```no_run
    /// # let model = qllm::Model::load("models/tiny-kjv.q8_0.gguf")?;
    /// let mut s = model.session(&Default::default())?;
    /// let dialog = [("system", "Answer in one sentence."), ("user", "Who built the ark?")];
    /// let answer = s.chat(&dialog, &Default::default(), |_| true)?.text;
    /// # Ok::<(), qllm::Error>(())
    /// ```
    pub fn chat(&mut self, messages: &[Message], opts: &GenerateOptions, on_text: impl FnMut(&str) -> bool)
                -> Result<Generation> {
        let ids = chat_tokens(self.model.ptr, messages)?;
        self.generate_tokens(&ids, opts, on_text)
    }

    /// Generates after `prompt` as an iterator of pieces. The generation runs on a helper
    /// thread, a few pieces ahead of the reader; dropping the stream cancels it. The last item
    /// is an error when the generation failed; [`Stream::finish`] gives the [`Generation`].
    ///
    /// ```no_run
    /// # let model = qllm::Model::load("models/tiny-kjv.q8_0.gguf")?;
    /// let mut s = model.session(&Default::default())?;
    /// let mut stream = s.stream("In the beginning", &Default::default());
    /// for piece in &mut stream {
    ///     print!("{}", piece?);
    /// }
    /// let g = stream.finish()?;
    /// println!("\n{:?} after {} tokens", g.finish, g.raw.n_generated);
    /// # Ok::<(), qllm::Error>(())
    /// ```
    pub fn stream(&mut self, prompt: &str, opts: &GenerateOptions) -> Stream<'_> {
        Stream::start(self, OwnedPrompt::Text(prompt.to_owned()), opts.clone())
    }

    /// The same for a token sequence (e.g. from `Model::chat_tokens`).
    pub fn stream_tokens(&mut self, tokens: &[i32], opts: &GenerateOptions) -> Stream<'_> {
        Stream::start(self, OwnedPrompt::Tokens(tokens.to_vec()), opts.clone())
    }

    /// A handle that stops this session's running call from another thread (or a signal
    /// handler's thread); it keeps the session's memory alive, never its use.
    ///
    /// ```no_run
    /// # let model = qllm::Model::load("models/tiny-kjv.q8_0.gguf")?;
    /// let mut s = model.session(&Default::default())?;
    /// let c = s.canceller();
    /// std::thread::spawn(move || {
    ///     std::thread::sleep(std::time::Duration::from_secs(5));
    ///     c.cancel();
    /// });
    /// let g = s.generate("In the beginning", &qllm::GenerateOptions { max_tokens: -1, ..Default::default() }, |_| true)?;
    /// # Ok::<(), qllm::Error>(())
    /// ```
    pub fn canceller(&self) -> Canceller {
        Canceller(Arc::clone(&self.handle))
    }

    /// The text of the last generation (stop string excluded).
    pub fn output(&self) -> Result<String> {
        session_text(|t, l| unsafe { ffi::qllm_session_output(self.ptr, t, l) })
    }

    /// The reasoning of the last chain-of-thought call ("" after any other generation).
    pub fn reasoning(&self) -> Result<String> {
        session_text(|t, l| unsafe { ffi::qllm_session_reasoning(self.ptr, t, l) })
    }

    /// The last [`Rag::ask`]'s report as JSON: the window, the chunks given to the model and
    /// those dropped, with the reason ("" when the last generation was not an ask).
    pub fn rag_report(&self) -> Result<String> {
        session_text(|t, l| unsafe { ffi::qllm_session_rag_report(self.ptr, t, l) })
    }
}

enum OwnedPrompt {
    Text(String),
    Tokens(Vec<i32>),
}


/// Pieces of a generation running on a helper thread, from [`Session::stream`].
///
/// While it exists the session's handle belongs to the helper thread; it comes back when the
/// generation has ended and the thread is joined (at the end of the iteration, in `finish`, or
/// when the stream is dropped, which cancels first).
pub struct Stream<'a> {
    session: &'a mut Session,
    handle: *mut ffi::qllm_session,
    stop: Arc<AtomicBool>,
    rx: Option<mpsc::Receiver<String>>,
    worker: Option<JoinHandle<Result<Generation>>>,
    result: Option<Result<Generation>>,
    error_yielded: bool,
}

impl<'a> Stream<'a> {
    fn start(session: &'a mut Session, prompt: OwnedPrompt, opts: GenerateOptions) -> Stream<'a> {
        // the handle leaves the session: were the stream leaked (mem::forget), the session would
        // hold NULL, which every call answers with an error, and never a second user
        let handle = std::mem::replace(&mut session.ptr, ptr::null_mut());
        let (tx, rx) = mpsc::sync_channel::<String>(16);
        // the thread holds the session's memory too: a leaked stream never frees it under it
        let owner = Arc::clone(&session.handle);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let worker = std::thread::Builder::new().name("qllm-stream".into()).spawn(move || {
            let h = owner.0;
            // empty pieces are not sent, but every token checks the flag
            let on_text = |p: &str| p.is_empty() || tx.send(p.to_owned()).is_ok();
            match &prompt {
                OwnedPrompt::Text(t) => generate_raw(h, Prompt::Text(t), &opts, Some(&*flag), on_text),
                OwnedPrompt::Tokens(ids) => generate_raw(h, Prompt::Tokens(ids), &opts, Some(&*flag), on_text),
            }
        });
        match worker {
            Ok(w) => Stream { session, handle, stop, rx: Some(rx), worker: Some(w), result: None, error_yielded: false },
            Err(e) => {
                session.ptr = handle;
                let err = Error { status: 7, name: "QLLM_ERR_INTERNAL".into(), message: format!("cannot start a thread: {}", e) };
                Stream { session, handle: ptr::null_mut(), stop, rx: None, worker: None, result: Some(Err(err)), error_yielded: false }
            }
        }
    }

    fn join(&mut self) {
        self.rx = None;  // a send from the callback now fails, which cancels the generation
        if let Some(w) = self.worker.take() {
            let r = w.join().unwrap_or_else(|_| Err(Error {
                status: 7,
                name: "QLLM_ERR_INTERNAL".into(),
                message: "the streaming thread panicked".into(),
            }));
            self.result = Some(r);
            self.session.ptr = self.handle;
        }
    }

    /// Reads what is left and returns the whole generation (its text is all the pieces).
    pub fn finish(mut self) -> Result<Generation> {
        if let Some(rx) = &self.rx {
            while rx.recv().is_ok() {}
        }
        self.join();
        self.result.take().expect("joined")
    }
}

impl Iterator for Stream<'_> {
    type Item = Result<String>;

    fn next(&mut self) -> Option<Result<String>> {
        if let Some(rx) = &self.rx {
            if let Ok(p) = rx.recv() {
                return Some(Ok(p));
            }
            self.join();
        }
        match &self.result {
            Some(Err(e)) if !self.error_yielded => {
                self.error_yielded = true;
                Some(Err(e.clone()))
            }
            _ => None,
        }
    }
}

impl Drop for Stream<'_> {
    fn drop(&mut self) {
        if let Some(w) = &self.worker {
            // the flag stops it at its next token; the cancel, repeated until the thread ends,
            // stops a prompt being evaluated (a call clears a cancel that came before it began)
            self.stop.store(true, Ordering::Relaxed);
            while !w.is_finished() {
                unsafe { ffi::qllm_session_cancel(self.handle) };
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            self.join();
        }
    }
}

/// Chunking of [`Rag::index`]; `None` is the library's default (192 tokens, 32 of overlap).
#[derive(Clone, Debug, Default)]
pub struct IndexParams {
    pub chunk_tokens: Option<i32>,
    pub overlap_tokens: Option<i32>,
}

/// What [`Rag::index`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IndexResult {
    pub files_added: i32,
    /// Re-chunked: new content or new chunk settings.
    pub files_changed: i32,
    /// Same content hash and settings: skipped.
    pub files_unchanged: i32,
    /// Documents whose file no longer exists.
    pub files_removed: i32,
    /// Not UTF-8 text, binary or too large.
    pub files_skipped: i32,
    pub chunks_added: i64,
    pub chunks_removed: i64,
}

/// How [`Rag::ask`] builds its prompt.
#[derive(Clone, Debug, Default)]
pub struct AskParams {
    /// Chunks to retrieve (default 8); those that do not fit the window are dropped, lowest
    /// ranked first, and listed in [`Session::rag_report`].
    pub top_k: Option<i32>,
    /// Reason step by step first (chain of thought, the library's default cues); the
    /// reasoning is in [`Session::reasoning`].
    pub cot: bool,
    /// None: answer from the numbered passages and cite them.
    pub system: Option<String>,
}

/// A retrieval database: one SQLite file with documents, their chunks and a full-text (BM25)
/// index. `Send + Sync`: calls on one handle are serialised by the library.
///
/// ```no_run
/// # let model = qllm::Model::load("models/tiny-kjv.q8_0.gguf")?;
/// let rag = qllm::Rag::open("docs.db", true)?;
/// let added = rag.index(&model, &["handbook/"], &Default::default())?;
/// let mut s = model.session(&qllm::SessionParams { temperature: 0.0, ..Default::default() })?;
/// let g = rag.ask(&mut s, "How many days of leave?", &Default::default(), &Default::default(), |_| true)?;
/// println!("{}\n{}", g.text, s.rag_report()?);
/// # Ok::<(), qllm::Error>(())
/// ```
pub struct Rag {
    ptr: *mut ffi::qllm_rag,
}

unsafe impl Send for Rag {}
unsafe impl Sync for Rag {}

impl Drop for Rag {
    fn drop(&mut self) {
        unsafe { ffi::qllm_rag_free(self.ptr) }
    }
}

impl fmt::Debug for Rag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rag").field("ptr", &self.ptr).finish()
    }
}

impl Rag {
    /// Opens the database at `path`; `create` makes it if it does not exist.
    pub fn open(path: impl AsRef<Path>, create: bool) -> Result<Rag> {
        let p = c_path(path.as_ref())?;
        let mut out = ptr::null_mut();
        check(unsafe { ffi::qllm_rag_open(p.as_ptr(), create as i32, &mut out) })?;
        Ok(Rag { ptr: out })
    }

    /// Indexes files or directories (a directory: its .txt, .md and .markdown files,
    /// recursively) with the model's tokenizer; unchanged files are skipped by content hash.
    pub fn index<P: AsRef<Path>>(&self, model: &Model, paths: &[P], params: &IndexParams) -> Result<IndexResult> {
        let owned: Vec<CString> = paths.iter().map(|p| c_path(p.as_ref())).collect::<Result<_>>()?;
        let ptrs: Vec<*const c_char> = owned.iter().map(|s| s.as_ptr()).collect();
        let mut p = ffi::qllm_rag_index_params::default();
        check(unsafe { ffi::qllm_rag_index_params_init(&mut p, std::mem::size_of::<ffi::qllm_rag_index_params>()) })?;
        if let Some(v) = params.chunk_tokens {
            p.chunk_tokens = v;
        }
        if let Some(v) = params.overlap_tokens {
            p.overlap_tokens = v;
        }
        let mut r = ffi::qllm_rag_index_result {
            struct_size: std::mem::size_of::<ffi::qllm_rag_index_result>() as u32,
            ..Default::default()
        };
        check(unsafe { ffi::qllm_rag_index(self.ptr, model.ptr, ptrs.as_ptr(), ptrs.len(), &p, &mut r) })?;
        Ok(IndexResult {
            files_added: r.files_added,
            files_changed: r.files_changed,
            files_unchanged: r.files_unchanged,
            files_removed: r.files_removed,
            files_skipped: r.files_skipped,
            chunks_added: r.chunks_added,
            chunks_removed: r.chunks_removed,
        })
    }

    /// Answers `question` from the best chunks that fit the session's window (leaving room for
    /// `opts.max_tokens`), streaming through `on_text` as [`Session::generate`] does.
    pub fn ask(&self, session: &mut Session, question: &str, params: &AskParams, opts: &GenerateOptions,
               on_text: impl FnMut(&str) -> bool) -> Result<Generation> {
        let system = match &params.system {
            Some(s) => Some(c_string(s)?),
            None => None,
        };
        let mut a = ffi::qllm_rag_ask_params::default();
        check(unsafe { ffi::qllm_rag_ask_params_init(&mut a, std::mem::size_of::<ffi::qllm_rag_ask_params>()) })?;
        if let Some(k) = params.top_k {
            a.top_k = k;
        }
        a.cot = params.cot as i32;
        a.system = system.as_ref().map_or(ptr::null(), |s| s.as_ptr());
        let sp = session.ptr;
        run_generation(sp, opts, on_text, |gp, r| unsafe {
            ffi::qllm_rag_ask(self.ptr, sp, question.as_ptr() as *const c_char, question.len(), &a, gp, r)
        })
    }
}
