//! Safe Rust wrapper over the Tandem C ABI: RAII handles (`Drop` frees them), `Result` with a typed
//! [`Error`], sessions that borrow their model so they cannot outlive it.
//!
//! ```no_run
//! let model = tandem::Model::load("tests/data/tiny-qwen3moe", &tandem::LoadOptions::default())?;
//! let mut session = model.session()?;
//! let ids = session.generate(&model.tokenize("Hello", true)?, &tandem::GenerateOptions::default())?;
//! # Ok::<(), tandem::Error>(())
//! ```
use std::ffi::{CStr, CString};
use std::os::raw::{c_char, c_void};
use std::fmt;
use std::ptr;

pub use tandem_sys as sys;

/// What kind of failure a Tandem call reported (the C `tandem_status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidArgument,
    Io,
    CorruptFile,
    Unsupported,
    OutOfRange,
    OutOfMemory,
    Cancelled,
    Internal,
    BufferTooSmall,
    Unknown(i32),
}

impl ErrorKind {
    fn from_status(status: sys::tandem_status) -> ErrorKind {
        match status {
            sys::TANDEM_STATUS_INVALID_ARGUMENT => ErrorKind::InvalidArgument,
            sys::TANDEM_STATUS_IO => ErrorKind::Io,
            sys::TANDEM_STATUS_CORRUPT_FILE => ErrorKind::CorruptFile,
            sys::TANDEM_STATUS_UNSUPPORTED => ErrorKind::Unsupported,
            sys::TANDEM_STATUS_OUT_OF_RANGE => ErrorKind::OutOfRange,
            sys::TANDEM_STATUS_OUT_OF_MEMORY => ErrorKind::OutOfMemory,
            sys::TANDEM_STATUS_CANCELLED => ErrorKind::Cancelled,
            sys::TANDEM_STATUS_INTERNAL => ErrorKind::Internal,
            sys::TANDEM_STATUS_BUFFER_TOO_SMALL => ErrorKind::BufferTooSmall,
            other => ErrorKind::Unknown(other),
        }
    }
}

/// A failed call: its kind and the library's message (`tandem_last_error()`).
#[derive(Debug, Clone)]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.message)
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

/// Turns a status into `Ok(())` or the typed error with this thread's last message.
pub fn check(status: sys::tandem_status) -> Result<()> {
    if status == sys::TANDEM_STATUS_OK {
        return Ok(());
    }
    let message = unsafe { CStr::from_ptr(sys::tandem_last_error()) }.to_string_lossy().into_owned();
    Err(Error { kind: ErrorKind::from_status(status), message })
}

fn invalid(message: &str) -> Error {
    Error { kind: ErrorKind::InvalidArgument, message: message.to_string() }
}

/// The ABI version of the loaded libtandem.
pub fn abi_version() -> u32 {
    unsafe { sys::tandem_abi_version() }
}

#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub threads: i32,
    pub max_context_tokens: i64,
    pub placement: Option<String>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        let defaults = unsafe { sys::tandem_load_default_params() };
        LoadOptions { threads: defaults.threads, max_context_tokens: defaults.max_context_tokens, placement: None }
    }
}

/// A loaded model; shareable across threads for reading.
pub struct Model {
    raw: *mut sys::tandem_model,
}

unsafe impl Send for Model {}
unsafe impl Sync for Model {}

impl Model {
    pub fn load(path: &str, options: &LoadOptions) -> Result<Model> {
        let c_path = CString::new(path).map_err(|_| invalid("path contains a NUL byte"))?;
        let placement = match &options.placement {
            Some(p) => Some(CString::new(p.as_str()).map_err(|_| invalid("placement contains a NUL byte"))?),
            None => None,
        };
        let mut params = unsafe { sys::tandem_load_default_params() };
        params.threads = options.threads;
        params.max_context_tokens = options.max_context_tokens;
        params.placement = placement.as_ref().map_or(ptr::null(), |p| p.as_ptr());
        let mut raw = ptr::null_mut();
        check(unsafe { sys::tandem_model_load(c_path.as_ptr(), &params, &mut raw) })?;
        Ok(Model { raw })
    }

    pub fn architecture(&self) -> Result<String> {
        let mut info: sys::tandem_model_info = unsafe { std::mem::zeroed() };
        info.struct_size = std::mem::size_of::<sys::tandem_model_info>();
        check(unsafe { sys::tandem_model_get_info(self.raw, &mut info) })?;
        Ok(unsafe { CStr::from_ptr(info.architecture) }.to_string_lossy().into_owned())
    }

    pub fn tokenize(&self, text: &str, add_special: bool) -> Result<Vec<i32>> {
        let mut count = 0usize;
        let special = add_special as i32;
        let status = unsafe {
            sys::tandem_tokenize(self.raw, text.as_ptr() as *const c_char, text.len(), special, ptr::null_mut(), 0,
                                 &mut count)
        };
        if status != sys::TANDEM_STATUS_BUFFER_TOO_SMALL {
            check(status)?;
        }
        let mut ids = vec![0i32; count];
        check(unsafe {
            sys::tandem_tokenize(self.raw, text.as_ptr() as *const c_char, text.len(), special, ids.as_mut_ptr(),
                                 ids.len(), &mut count)
        })?;
        ids.truncate(count);
        Ok(ids)
    }

    pub fn detokenize(&self, ids: &[i32], skip_special: bool) -> Result<String> {
        let mut text: *mut c_char = ptr::null_mut();
        let mut len = 0usize;
        check(unsafe {
            sys::tandem_detokenize(self.raw, ids.as_ptr(), ids.len(), skip_special as i32, &mut text, &mut len)
        })?;
        let bytes = unsafe { std::slice::from_raw_parts(text as *const u8, len) }.to_vec();
        unsafe { sys::tandem_free_string(text) };
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// A new session; it borrows the model, so it is dropped first.
    pub fn session(&self) -> Result<Session<'_>> {
        let mut raw = ptr::null_mut();
        check(unsafe { sys::tandem_session_new(self.raw, &mut raw) })?;
        Ok(Session { raw, _model: self })
    }
}

impl Drop for Model {
    fn drop(&mut self) {
        unsafe { sys::tandem_model_free(self.raw) };
    }
}

#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    pub stop_at_eos: bool,
    pub temperature: f32,
    pub seed: u64,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions { max_new_tokens: 256, stop_at_eos: true, temperature: 0.0, seed: 0 }
    }
}

/// One sequence with its KV cache. Used by one thread at a time.
pub struct Session<'m> {
    raw: *mut sys::tandem_session,
    _model: &'m Model,
}

unsafe impl Send for Session<'_> {}

struct Streaming<'f> {
    on_token: &'f mut dyn FnMut(i32, &str) -> bool,
}

unsafe extern "C" fn stream_token(id: i32, text: *const c_char, len: usize, user: *mut c_void) -> i32 {
    let streaming = &mut *(user as *mut Streaming);
    let bytes = if len == 0 { &[][..] } else { std::slice::from_raw_parts(text as *const u8, len) };
    // A panic must not unwind into C: treat it as "stop".
    let keep_going = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        (streaming.on_token)(id, &String::from_utf8_lossy(bytes))
    }));
    matches!(keep_going, Ok(true)) as i32 ^ 1
}

impl Session<'_> {
    pub fn prefill(&mut self, ids: &[i32]) -> Result<()> {
        check(unsafe { sys::tandem_session_prefill(self.raw, ids.as_ptr(), ids.len()) })
    }

    pub fn decode(&mut self, id: i32) -> Result<()> {
        check(unsafe { sys::tandem_session_decode(self.raw, id) })
    }

    /// A copy of the last position's logits.
    pub fn logits(&self) -> Result<Vec<f32>> {
        let mut data: *const f32 = ptr::null();
        let mut count = 0usize;
        check(unsafe { sys::tandem_session_logits(self.raw, &mut data, &mut count) })?;
        Ok(unsafe { std::slice::from_raw_parts(data, count) }.to_vec())
    }

    pub fn reset(&mut self) -> Result<()> {
        check(unsafe { sys::tandem_session_reset(self.raw) })
    }

    /// Generates after `prompt`; returns the new ids.
    pub fn generate(&mut self, prompt: &[i32], options: &GenerateOptions) -> Result<Vec<i32>> {
        self.generate_streaming(prompt, options, &mut |_, _| true)
    }

    /// As `generate`, calling `on_token(id, text)` per token; returning false stops.
    pub fn generate_streaming(&mut self, prompt: &[i32], options: &GenerateOptions,
                              on_token: &mut dyn FnMut(i32, &str) -> bool) -> Result<Vec<i32>> {
        let mut sampling = unsafe { sys::tandem_sampler_default_params() };
        sampling.temperature = options.temperature;
        sampling.seed = options.seed;
        let mut streaming = Streaming { on_token };
        let mut params = unsafe { sys::tandem_generate_default_params() };
        params.max_new_tokens = options.max_new_tokens as i64;
        params.stop_at_eos = options.stop_at_eos as i32;
        params.sampling = &sampling;
        params.on_token = Some(stream_token);
        params.user_data = &mut streaming as *mut Streaming as *mut c_void;
        let mut ids = vec![0i32; options.max_new_tokens];
        let mut count = 0usize;
        check(unsafe {
            sys::tandem_session_generate(self.raw, prompt.as_ptr(), prompt.len(), &params, ids.as_mut_ptr(), ids.len(),
                                         &mut count, ptr::null_mut())
        })?;
        ids.truncate(count);
        Ok(ids)
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        unsafe { sys::tandem_session_free(self.raw) };
    }
}
