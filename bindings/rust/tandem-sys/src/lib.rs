//! Raw declarations of the Tandem C ABI, one-to-one with `capi/include/tandem.h` (ABI version 1).
//! Ownership and thread-safety are as the header documents; the `tandem` crate wraps them safely.
#![allow(non_camel_case_types)]

use std::os::raw::{c_char, c_float, c_int, c_void};

pub const TANDEM_ABI_VERSION: u32 = 1;

pub type tandem_status = c_int;
pub const TANDEM_STATUS_OK: tandem_status = 0;
pub const TANDEM_STATUS_INVALID_ARGUMENT: tandem_status = 1;
pub const TANDEM_STATUS_IO: tandem_status = 2;
pub const TANDEM_STATUS_CORRUPT_FILE: tandem_status = 3;
pub const TANDEM_STATUS_UNSUPPORTED: tandem_status = 4;
pub const TANDEM_STATUS_OUT_OF_RANGE: tandem_status = 5;
pub const TANDEM_STATUS_OUT_OF_MEMORY: tandem_status = 6;
pub const TANDEM_STATUS_CANCELLED: tandem_status = 7;
pub const TANDEM_STATUS_INTERNAL: tandem_status = 8;
pub const TANDEM_STATUS_BUFFER_TOO_SMALL: tandem_status = 9;

pub type tandem_log_level = c_int;
pub type tandem_stop_reason = c_int;

#[repr(C)]
pub struct tandem_model {
    _private: [u8; 0],
}
#[repr(C)]
pub struct tandem_session {
    _private: [u8; 0],
}
#[repr(C)]
pub struct tandem_sampler {
    _private: [u8; 0],
}

pub type tandem_log_fn = Option<unsafe extern "C" fn(tandem_log_level, *const c_char, *mut c_void)>;
pub type tandem_progress_fn = Option<unsafe extern "C" fn(c_float, *const c_char, *mut c_void)>;
pub type tandem_token_fn = Option<unsafe extern "C" fn(i32, *const c_char, usize, *mut c_void) -> i32>;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct tandem_load_params {
    pub struct_size: usize,
    pub placement: *const c_char,
    pub threads: i32,
    pub max_context_tokens: i64,
    pub max_sessions: i64,
    pub max_batch_tokens: i64,
    pub load_tokenizer: i32,
    pub progress: tandem_progress_fn,
    pub progress_user_data: *mut c_void,
    pub cancel_flag: *const i32,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct tandem_model_info {
    pub struct_size: usize,
    pub architecture: *const c_char,
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub num_layers: i64,
    pub num_experts: i64,
    pub num_experts_per_tok: i64,
    pub num_shared_experts: i64,
    pub max_position_embeddings: i64,
    pub max_context_tokens: i64,
    pub bos_id: i32,
    pub eos_id: i32,
    pub has_tokenizer: i32,
    pub has_chat_template: i32,
    pub total_bytes: u64,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct tandem_chat_params {
    pub struct_size: usize,
    pub messages_json: *const c_char,
    pub tools_json: *const c_char,
    pub extra_json: *const c_char,
    pub add_generation_prompt: i32,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct tandem_sampler_params {
    pub struct_size: usize,
    pub temperature: f32,
    pub top_k: i32,
    pub top_p: f32,
    pub min_p: f32,
    pub repetition_penalty: f32,
    pub frequency_penalty: f32,
    pub presence_penalty: f32,
    pub penalty_last_n: i32,
    pub seed: u64,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct tandem_generate_params {
    pub struct_size: usize,
    pub max_new_tokens: i64,
    pub sampling: *const tandem_sampler_params,
    pub stop_at_eos: i32,
    pub stop_strings: *const *const c_char,
    pub n_stop_strings: usize,
    pub skip_special_text: i32,
    pub on_token: tandem_token_fn,
    pub user_data: *mut c_void,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct tandem_generate_stats {
    pub struct_size: usize,
    pub stop_reason: tandem_stop_reason,
    pub prompt_tokens: i64,
    pub prefilled_tokens: i64,
    pub generated_tokens: i64,
    pub prefill_seconds: f64,
    pub decode_seconds: f64,
}

extern "C" {
    pub fn tandem_last_error() -> *const c_char;
    pub fn tandem_status_name(status: tandem_status) -> *const c_char;
    pub fn tandem_abi_version() -> u32;
    pub fn tandem_version_string() -> *const c_char;
    pub fn tandem_free_string(text: *mut c_char);
    pub fn tandem_set_log_callback(callback: tandem_log_fn, user_data: *mut c_void, max_level: tandem_log_level);

    pub fn tandem_load_default_params() -> tandem_load_params;
    pub fn tandem_model_load(path: *const c_char, params: *const tandem_load_params,
                             out_model: *mut *mut tandem_model) -> tandem_status;
    pub fn tandem_model_free(model: *mut tandem_model);
    pub fn tandem_model_get_info(model: *const tandem_model, out_info: *mut tandem_model_info) -> tandem_status;
    pub fn tandem_model_memory_report_json(model: *const tandem_model, out_json: *mut *mut c_char) -> tandem_status;

    pub fn tandem_tokenize(model: *const tandem_model, text: *const c_char, text_len: usize, add_special: i32,
                           out_ids: *mut i32, capacity: usize, out_count: *mut usize) -> tandem_status;
    pub fn tandem_detokenize(model: *const tandem_model, ids: *const i32, n_ids: usize, skip_special: i32,
                             out_text: *mut *mut c_char, out_len: *mut usize) -> tandem_status;
    pub fn tandem_chat_default_params() -> tandem_chat_params;
    pub fn tandem_chat_render(model: *const tandem_model, params: *const tandem_chat_params,
                              out_text: *mut *mut c_char) -> tandem_status;

    pub fn tandem_sampler_default_params() -> tandem_sampler_params;
    pub fn tandem_sampler_new(params: *const tandem_sampler_params, out_sampler: *mut *mut tandem_sampler)
                              -> tandem_status;
    pub fn tandem_sampler_free(sampler: *mut tandem_sampler);
    pub fn tandem_sampler_sample(sampler: *mut tandem_sampler, logits: *const f32, n_logits: usize,
                                 history: *const i32, n_history: usize, out_id: *mut i32) -> tandem_status;
    pub fn tandem_sampler_reseed(sampler: *mut tandem_sampler, seed: u64) -> tandem_status;

    pub fn tandem_session_new(model: *mut tandem_model, out_session: *mut *mut tandem_session) -> tandem_status;
    pub fn tandem_session_free(session: *mut tandem_session);
    pub fn tandem_session_prefill(session: *mut tandem_session, ids: *const i32, n_ids: usize) -> tandem_status;
    pub fn tandem_session_decode(session: *mut tandem_session, id: i32) -> tandem_status;
    pub fn tandem_session_logits(session: *const tandem_session, out_logits: *mut *const f32,
                                 out_count: *mut usize) -> tandem_status;
    pub fn tandem_session_copy_logits(session: *const tandem_session, out_logits: *mut f32, capacity: usize,
                                      out_count: *mut usize) -> tandem_status;
    pub fn tandem_session_position(session: *const tandem_session, out_position: *mut i64) -> tandem_status;
    pub fn tandem_session_reset(session: *mut tandem_session) -> tandem_status;
    pub fn tandem_session_cancel(session: *mut tandem_session) -> tandem_status;
    pub fn tandem_generate_default_params() -> tandem_generate_params;
    pub fn tandem_session_generate(session: *mut tandem_session, prompt: *const i32, n_prompt: usize,
                                   params: *const tandem_generate_params, out_ids: *mut i32, capacity: usize,
                                   out_count: *mut usize, out_stats: *mut tandem_generate_stats) -> tandem_status;
}
