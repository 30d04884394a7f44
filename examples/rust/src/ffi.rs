//! Declarations of capi/qllm.h, written by hand; layouts must match the header (checked by the
//! size tests in src/lib.rs against the sizes the C compiler gives).
#![allow(non_camel_case_types)]
use std::os::raw::{c_char, c_void};

pub type qllm_status = i32;
pub const QLLM_OK: qllm_status = 0;
pub const QLLM_ERR_BUFFER_TOO_SMALL: qllm_status = 8;
pub const QLLM_ERR_CANCELLED: qllm_status = 9;

#[repr(C)]
pub struct qllm_model {
    _private: [u8; 0],
}
#[repr(C)]
pub struct qllm_session {
    _private: [u8; 0],
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct qllm_model_params {
    pub struct_size: u32,
    pub n_threads: i32,
    pub use_mmap: i32,
    pub quantize_float_weights: i32,
    pub isa: *const c_char,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct qllm_model_info {
    pub struct_size: u32,
    pub n_vocab: i32,
    pub n_ctx_train: i32,
    pub n_embd: i32,
    pub n_layer: i32,
    pub n_head: i32,
    pub n_head_kv: i32,
    pub n_ff: i32,
    pub has_vocabulary: i32,
    pub bos_token: i32,
    pub eos_token: i32,
    pub n_params: i64,
    pub weight_bytes: u64,
    pub weight_type: i32,
    pub weight_type_name: [c_char; 16],
    pub isa: [c_char; 32],
    pub load_seconds: f64,
    pub weight_mix: [c_char; 96],
}

#[repr(C)]
pub struct qllm_chat_message {
    pub role: *const c_char,
    pub content: *const c_char,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct qllm_session_params {
    pub struct_size: u32,
    pub n_ctx: i32,
    pub n_batch: i32,
    pub n_threads: i32,
    pub kv_type: i32,
    pub context_policy: i32,
    pub n_keep: i32,
    pub context_shift: i32,
    pub temperature: f32,
    pub top_k: i32,
    pub top_p: f32,
    pub min_p: f32,
    pub repeat_penalty: f32,
    pub frequency_penalty: f32,
    pub presence_penalty: f32,
    pub penalty_last_n: i32,
    pub seed: u64,
}

pub type qllm_stream_callback =
    Option<unsafe extern "C" fn(text: *const c_char, len: usize, token: i32, user_data: *mut c_void) -> i32>;

#[repr(C)]
pub struct qllm_generate_params {
    pub struct_size: u32,
    pub max_tokens: i32,
    pub stop_at_eos: i32,
    pub stop: *const *const c_char,
    pub n_stop: usize,
    pub callback: qllm_stream_callback,
    pub user_data: *mut c_void,
}

#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct qllm_generate_result {
    pub struct_size: u32,
    pub finish_reason: i32,
    pub n_prompt_tokens: i32,
    pub n_reused_tokens: i32,
    pub n_generated: i32,
    pub n_sequence_tokens: i32,
    pub n_dropped: i32,
    pub drop_begin: i32,
    pub drop_end: i32,
    pub n_shifts: i32,
    pub n_shift_dropped: i32,
    pub prompt_seconds: f64,
    pub generation_seconds: f64,
    pub prompt_tokens_per_second: f64,
    pub generation_tokens_per_second: f64,
}

extern "C" {
    pub fn qllm_version() -> u32;
    pub fn qllm_version_string() -> *const c_char;
    pub fn qllm_status_name(status: qllm_status) -> *const c_char;
    pub fn qllm_last_error() -> *const c_char;

    pub fn qllm_model_params_init(p: *mut qllm_model_params, struct_size: usize) -> qllm_status;
    pub fn qllm_model_load(path: *const c_char, params: *const qllm_model_params, out: *mut *mut qllm_model)
        -> qllm_status;
    pub fn qllm_model_free(model: *mut qllm_model);
    pub fn qllm_model_get_info(model: *const qllm_model, info: *mut qllm_model_info) -> qllm_status;

    pub fn qllm_tokenize(model: *const qllm_model, text: *const c_char, text_len: usize, add_bos: i32,
                         ids: *mut i32, capacity: usize, n_out: *mut usize) -> qllm_status;
    pub fn qllm_count_tokens(model: *const qllm_model, text: *const c_char, text_len: usize, add_bos: i32,
                             n_out: *mut usize) -> qllm_status;
    pub fn qllm_detokenize(model: *const qllm_model, ids: *const i32, n_ids: usize, buf: *mut c_char,
                           capacity: usize, n_out: *mut usize) -> qllm_status;
    pub fn qllm_token_piece(model: *const qllm_model, token: i32, buf: *mut c_char, capacity: usize,
                            n_out: *mut usize) -> qllm_status;
    pub fn qllm_chat_apply(model: *const qllm_model, messages: *const qllm_chat_message, n_messages: usize,
                           ids: *mut i32, capacity: usize, n_out: *mut usize) -> qllm_status;
    pub fn qllm_chat_format(messages: *const qllm_chat_message, n_messages: usize, buf: *mut c_char,
                            capacity: usize, n_out: *mut usize) -> qllm_status;

    pub fn qllm_session_params_init(p: *mut qllm_session_params, struct_size: usize) -> qllm_status;
    pub fn qllm_session_create(model: *const qllm_model, params: *const qllm_session_params,
                               out: *mut *mut qllm_session) -> qllm_status;
    pub fn qllm_session_free(session: *mut qllm_session);
    pub fn qllm_session_reset(session: *mut qllm_session) -> qllm_status;
    pub fn qllm_session_cancel(session: *mut qllm_session) -> qllm_status;
    pub fn qllm_session_set_sampling(session: *mut qllm_session, params: *const qllm_session_params) -> qllm_status;
    pub fn qllm_session_eval(session: *mut qllm_session, tokens: *const i32, n_tokens: usize) -> qllm_status;
    pub fn qllm_session_logits(session: *mut qllm_session, logits: *mut *const f32, n_vocab: *mut usize)
        -> qllm_status;
    pub fn qllm_session_sample(session: *mut qllm_session, token: *mut i32) -> qllm_status;
    pub fn qllm_session_history(session: *const qllm_session, ids: *mut i32, capacity: usize, n_out: *mut usize)
        -> qllm_status;

    pub fn qllm_generate_params_init(p: *mut qllm_generate_params, struct_size: usize) -> qllm_status;
    pub fn qllm_generate(session: *mut qllm_session, prompt: *const c_char, prompt_len: usize,
                         params: *const qllm_generate_params, result: *mut qllm_generate_result) -> qllm_status;
    pub fn qllm_generate_tokens(session: *mut qllm_session, tokens: *const i32, n_tokens: usize,
                                params: *const qllm_generate_params, result: *mut qllm_generate_result)
        -> qllm_status;
    pub fn qllm_session_output(session: *const qllm_session, text: *mut *const c_char, len: *mut usize)
        -> qllm_status;
    pub fn qllm_embed(session: *mut qllm_session, text: *const c_char, text_len: usize, out: *mut f32,
                      capacity: usize, n_out: *mut usize) -> qllm_status;
}
