//! Checks that failures surface as typed errors with the library's message.
//! Usage: errors MODEL_PATH   (exits non-zero when an error has the wrong kind or no message)
use std::ffi::CString;
use std::process::ExitCode;
use tandem::{sys, ErrorKind};

fn expect(what: &str, result: tandem::Result<()>, kind: ErrorKind, needle: &str) -> bool {
    match result {
        Err(e) if e.kind == kind && e.message.contains(needle) => {
            println!("ok: {what} -> {:?}: {}", e.kind, e.message);
            true
        }
        Err(e) => {
            eprintln!("FAIL {what}: got {e}, expected {kind:?} mentioning '{needle}'");
            false
        }
        Ok(()) => {
            eprintln!("FAIL {what}: no error");
            false
        }
    }
}

fn load(path: &str) -> tandem::Result<()> {
    tandem::Model::load(path, &tandem::LoadOptions::default()).map(|_| ())
}

fn load_with_struct_size(path: &str, size: usize) -> tandem::Result<()> {
    let c_path = CString::new(path).unwrap();
    let mut params = unsafe { sys::tandem_load_default_params() };
    params.struct_size = size;
    let mut raw = std::ptr::null_mut();
    tandem::check(unsafe { sys::tandem_model_load(c_path.as_ptr(), &params, &mut raw) })?;
    unsafe { sys::tandem_model_free(raw) };
    Ok(())
}

fn main() -> ExitCode {
    let model_path = std::env::args().nth(1).expect("usage: errors MODEL_PATH");
    let corrupt = std::env::temp_dir().join(format!("tandem-rust-corrupt-{}.gguf", std::process::id()));
    std::fs::write(&corrupt, b"GGUF\x03\x00\x00\x00not a model at all").unwrap();
    let corrupt_path = corrupt.to_string_lossy().into_owned();
    let ok = [
        expect("missing file", load("/nonexistent/tandem-model"), ErrorKind::Io, "/nonexistent/tandem-model"),
        expect("corrupt file", load(&corrupt_path), ErrorKind::CorruptFile, "tandem-rust-corrupt"),
        expect("bad struct_size", load_with_struct_size(&model_path, 3), ErrorKind::InvalidArgument, "struct_size"),
    ];
    let _ = std::fs::remove_file(&corrupt);
    if ok.iter().all(|&passed| passed) { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
