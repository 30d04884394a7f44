//! Safe Rust binding of qllm's C ABI.
//!
//! ```no_run
//! let model = qllm::Model::load("model.gguf").unwrap();
//! let mut session = model.session(&qllm::SessionParams { temperature: 0.0, ..Default::default() }).unwrap();
//! let opts = qllm::GenerateOptions { max_tokens: 32, ..Default::default() };
//! session.generate("Once upon a time", &opts, |piece| { print!("{}", piece); true }).unwrap();
//! ```
pub mod ffi;

use std::ffi::{CStr, CString};
use std::fmt;
use std::os::raw::{c_char, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;

/// A failed call: the C status (`QLLM_ERR_*`), its name and the library's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub status: i32,
    pub name: String,
    pub message: String,
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
    if status == ffi::QLLM_OK {
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

/// Runs `f(buf, capacity, n_out)` with the needed-size convention: size, allocate, fill.
fn sized<T: Copy + Default>(mut f: impl FnMut(*mut T, usize, *mut usize) -> ffi::qllm_status, extra: usize)
                            -> Result<Vec<T>> {
    let mut n = 0usize;
    let mut buf: Vec<T> = vec![T::default(); 64];
    loop {
        let st = f(buf.as_mut_ptr(), buf.len(), &mut n);
        if st == ffi::QLLM_ERR_BUFFER_TOO_SMALL && n + extra > buf.len() {
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

/// The library's version, e.g. "0.6.0".
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
    pub weight_bytes: u64,
    pub weight_type_name: String,
    /// The file's tensor types, e.g. "Q4_K_M: 193 q4_k, 65 f32, 33 q6_k".
    pub weight_mix: String,
    pub isa: String,
    pub load_seconds: f64,
}

/// A loaded model: immutable, shared between threads (`Send + Sync`).
pub struct Model {
    ptr: *mut ffi::qllm_model,
}

// The C ABI documents a model as immutable after load and usable from any thread.
unsafe impl Send for Model {}
unsafe impl Sync for Model {}

impl Drop for Model {
    fn drop(&mut self) {
        unsafe { ffi::qllm_model_free(self.ptr) }
    }
}

impl Model {
    pub fn load(path: &str) -> Result<Model> {
        Model::load_with(path, &ModelParams::default())
    }

    pub fn load_with(path: &str, params: &ModelParams) -> Result<Model> {
        let cpath = c_string(path)?;
        let isa = match &params.isa {
            Some(s) => Some(c_string(s)?),
            None => None,
        };
        let mut p: ffi::qllm_model_params = unsafe { std::mem::zeroed() };
        check(unsafe { ffi::qllm_model_params_init(&mut p, std::mem::size_of::<ffi::qllm_model_params>()) })?;
        p.n_threads = params.n_threads;
        p.quantize_float_weights = params.quantize_float_weights as i32;
        p.isa = isa.as_ref().map_or(ptr::null(), |s| s.as_ptr());
        let mut out = ptr::null_mut();
        check(unsafe { ffi::qllm_model_load(cpath.as_ptr(), &p, &mut out) })?;
        Ok(Model { ptr: out })
    }

    pub fn info(&self) -> Result<ModelInfo> {
        let mut i: ffi::qllm_model_info = unsafe { std::mem::zeroed() };
        i.struct_size = std::mem::size_of::<ffi::qllm_model_info>() as u32;
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
        })
    }

    pub fn tokenize(&self, text: &str, add_bos: bool) -> Result<Vec<i32>> {
        sized(|buf, cap, n| unsafe {
            ffi::qllm_tokenize(self.ptr, text.as_ptr() as *const c_char, text.len(), add_bos as i32, buf, cap, n)
        }, 0)
    }

    pub fn count_tokens(&self, text: &str, add_bos: bool) -> Result<usize> {
        let mut n = 0usize;
        check(unsafe {
            ffi::qllm_count_tokens(self.ptr, text.as_ptr() as *const c_char, text.len(), add_bos as i32, &mut n)
        })?;
        Ok(n)
    }

    pub fn detokenize(&self, ids: &[i32]) -> Result<String> {
        bytes_to_string(sized(|buf, cap, n| unsafe { ffi::qllm_detokenize(self.ptr, ids.as_ptr(), ids.len(), buf, cap, n) }, 1)?)
    }

    pub fn token_piece(&self, token: i32) -> Result<String> {
        bytes_to_string(sized(|buf, cap, n| unsafe { ffi::qllm_token_piece(self.ptr, token, buf, cap, n) }, 1)?)
    }

    /// Llama-2-chat token ids of a dialog of (role, content) pairs.
    pub fn chat_tokens(&self, dialog: &[(&str, &str)]) -> Result<Vec<i32>> {
        let owned: Vec<(CString, CString)> =
            dialog.iter().map(|(r, c)| Ok((c_string(r)?, c_string(c)?))).collect::<Result<_>>()?;
        let msgs: Vec<ffi::qllm_chat_message> = owned
            .iter()
            .map(|(r, c)| ffi::qllm_chat_message { role: r.as_ptr(), content: c.as_ptr() })
            .collect();
        sized(|buf, cap, n| unsafe { ffi::qllm_chat_apply(self.ptr, msgs.as_ptr(), msgs.len(), buf, cap, n) }, 0)
    }

    pub fn session(&self, params: &SessionParams) -> Result<Session> {
        let p = params.to_ffi()?;
        let mut out = ptr::null_mut();
        check(unsafe { ffi::qllm_session_create(self.ptr, &p, &mut out) })?;
        Ok(Session { ptr: out })
    }
}

/// What happens when a prompt does not fit the window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContextPolicy {
    Error = 0,
    KeepHeadAndTail = 1,
    KeepTail = 2,
}

/// Session settings; `Default` gives the library's defaults (temperature 0.8, policy Error).
#[derive(Clone, Debug)]
pub struct SessionParams {
    pub n_ctx: i32,
    pub n_threads: i32,
    pub context_policy: ContextPolicy,
    pub n_keep: Option<i32>,
    pub context_shift: bool,
    pub temperature: f32,
    pub top_k: Option<i32>,
    pub top_p: Option<f32>,
    pub min_p: Option<f32>,
    pub seed: Option<u64>,
}

impl SessionParams {
    fn to_ffi(&self) -> Result<ffi::qllm_session_params> {
        let mut p: ffi::qllm_session_params = unsafe { std::mem::zeroed() };
        check(unsafe { ffi::qllm_session_params_init(&mut p, std::mem::size_of::<ffi::qllm_session_params>()) })?;
        p.n_ctx = self.n_ctx;
        p.n_threads = self.n_threads;
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
            context_policy: ContextPolicy::Error,
            n_keep: None,
            context_shift: true,
            temperature: 0.8,
            top_k: None,
            top_p: None,
            min_p: None,
            seed: None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct GenerateOptions {
    /// -1: until EOS, a stop string or a full window.
    pub max_tokens: i32,
    pub stop: Vec<String>,
    pub stop_at_eos: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions { max_tokens: 256, stop: Vec::new(), stop_at_eos: true }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    Eos,
    StopString,
    MaxTokens,
    Cancelled,
    ContextFull,
    /// A reason added by a newer library than this binding knows.
    Other(i32),
}

/// The generated text and what happened.
#[derive(Clone, Debug)]
pub struct Generation {
    pub text: String,
    pub finish: Finish,
    pub raw: ffi::qllm_generate_result,
}

/// KV cache and sampler of one sequence: `Send` (move it to another thread) but not `Sync`.
pub struct Session {
    ptr: *mut ffi::qllm_session,
}

unsafe impl Send for Session {}

impl Drop for Session {
    fn drop(&mut self) {
        unsafe { ffi::qllm_session_free(self.ptr) }
    }
}

struct CallbackState<'a> {
    f: &'a mut dyn FnMut(&str) -> bool,
    panic: Option<Box<dyn std::any::Any + Send>>,
}

unsafe extern "C" fn trampoline(text: *const c_char, len: usize, _token: i32, user_data: *mut c_void) -> i32 {
    let state = &mut *(user_data as *mut CallbackState);
    if state.panic.is_some() {
        return 1;
    }
    let bytes = if len == 0 { &[][..] } else { std::slice::from_raw_parts(text as *const u8, len) };
    let piece = std::str::from_utf8(bytes).unwrap_or("\u{FFFD}");
    // a panic must not unwind through C: catch it, cancel, and resume it after the C call
    match catch_unwind(AssertUnwindSafe(|| (state.f)(piece))) {
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

impl Session {
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

    pub fn sample(&mut self) -> Result<i32> {
        let mut t = 0i32;
        check(unsafe { ffi::qllm_session_sample(self.ptr, &mut t) })?;
        Ok(t)
    }

    pub fn history(&self) -> Result<Vec<i32>> {
        sized(|buf, cap, n| unsafe { ffi::qllm_session_history(self.ptr, buf, cap, n) }, 0)
    }

    /// Mean-pooled final hidden state, L2-normalised (replaces the session's sequence).
    pub fn embed(&mut self, text: &str) -> Result<Vec<f32>> {
        sized(|buf, cap, n| unsafe {
            ffi::qllm_embed(self.ptr, text.as_ptr() as *const c_char, text.len(), buf, cap, n)
        }, 0)
    }

    /// Generates after `prompt` (the whole text the model sees), calling `on_text` with each
    /// piece; return false from it to stop.
    pub fn generate(&mut self, prompt: &str, opts: &GenerateOptions, on_text: impl FnMut(&str) -> bool)
                    -> Result<Generation> {
        self.run(Prompt::Text(prompt), opts, on_text)
    }

    /// The same for a token sequence (e.g. from `Model::chat_tokens`).
    pub fn generate_tokens(&mut self, tokens: &[i32], opts: &GenerateOptions, on_text: impl FnMut(&str) -> bool)
                           -> Result<Generation> {
        self.run(Prompt::Tokens(tokens), opts, on_text)
    }

    fn run(&mut self, prompt: Prompt, opts: &GenerateOptions, mut on_text: impl FnMut(&str) -> bool)
           -> Result<Generation> {
        let stops: Vec<CString> = opts.stop.iter().map(|s| c_string(s)).collect::<Result<_>>()?;
        let stop_ptrs: Vec<*const c_char> = stops.iter().map(|s| s.as_ptr()).collect();
        let mut state = CallbackState { f: &mut on_text, panic: None };
        let mut gp: ffi::qllm_generate_params = unsafe { std::mem::zeroed() };
        check(unsafe { ffi::qllm_generate_params_init(&mut gp, std::mem::size_of::<ffi::qllm_generate_params>()) })?;
        gp.max_tokens = opts.max_tokens;
        gp.stop_at_eos = opts.stop_at_eos as i32;
        gp.stop = if stop_ptrs.is_empty() { ptr::null() } else { stop_ptrs.as_ptr() };
        gp.n_stop = stop_ptrs.len();
        gp.callback = Some(trampoline);
        gp.user_data = &mut state as *mut CallbackState as *mut c_void;
        let mut r = ffi::qllm_generate_result {
            struct_size: std::mem::size_of::<ffi::qllm_generate_result>() as u32,
            ..Default::default()
        };
        let st = match prompt {
            Prompt::Text(t) => unsafe {
                ffi::qllm_generate(self.ptr, t.as_ptr() as *const c_char, t.len(), &gp, &mut r)
            },
            Prompt::Tokens(ids) => unsafe { ffi::qllm_generate_tokens(self.ptr, ids.as_ptr(), ids.len(), &gp, &mut r) },
        };
        if let Some(p) = state.panic.take() {
            std::panic::resume_unwind(p);
        }
        check(st)?;
        let mut text: *const c_char = ptr::null();
        let mut len = 0usize;
        check(unsafe { ffi::qllm_session_output(self.ptr, &mut text, &mut len) })?;
        let bytes = unsafe { std::slice::from_raw_parts(text as *const u8, len) };
        let finish = match r.finish_reason {
            0 => Finish::Eos,
            1 => Finish::StopString,
            2 => Finish::MaxTokens,
            3 => Finish::Cancelled,
            4 => Finish::ContextFull,
            other => Finish::Other(other),
        };
        Ok(Generation { text: String::from_utf8_lossy(bytes).into_owned(), finish, raw: r })
    }
}

#[cfg(test)]
mod layout {
    use super::ffi::*;
    use std::mem::size_of;

    // The sizes the C compiler gives on LP64 targets (x86-64, aarch64).
    #[test]
    fn struct_sizes_match_the_header() {
        assert_eq!(size_of::<qllm_model_params>(), 24);
        assert_eq!(size_of::<qllm_model_info>(), 224);
        assert_eq!(size_of::<qllm_session_params>(), 72);
        assert_eq!(size_of::<qllm_generate_params>(), 48);
        assert_eq!(size_of::<qllm_generate_result>(), 80);
        assert_eq!(size_of::<qllm_chat_message>(), 16);
    }
}
