#!/usr/bin/env python3
"""Checks that failures surface as typed errors with the library's message.
Usage: errors.py MODEL_PATH   (exits non-zero when an error has the wrong type or no message)"""
import ctypes
import os
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import tandem  # noqa: E402


def expect(kind, what, action, needle):
    try:
        action()
    except kind as error:
        if needle not in error.message:
            sys.exit(f"FAIL {what}: message {error.message!r} does not mention {needle!r}")
        print(f"ok: {what} -> {type(error).__name__} ({tandem.STATUS_NAMES[error.status]}): {error.message}")
        return
    except tandem.TandemError as error:
        sys.exit(f"FAIL {what}: raised {type(error).__name__}, expected {kind.__name__}: {error}")
    sys.exit(f"FAIL {what}: no error raised")


def load_with_struct_size(path, size):
    params = tandem.lib.tandem_load_default_params()
    params.struct_size = size
    handle = ctypes.c_void_p()
    tandem.check(tandem.lib.tandem_model_load(path.encode(), ctypes.byref(params), ctypes.byref(handle)))


def main():
    model_path = sys.argv[1]
    missing = "/nonexistent/tandem-model"
    expect(tandem.FileError, "missing file", lambda: tandem.Model(missing), missing)
    with tempfile.TemporaryDirectory() as folder:
        corrupt = os.path.join(folder, "corrupt.gguf")
        with open(corrupt, "wb") as f:
            f.write(b"GGUF\x03\x00\x00\x00not a model at all")
        expect(tandem.CorruptFileError, "corrupt file", lambda: tandem.Model(corrupt), "corrupt.gguf")
    expect(tandem.InvalidArgumentError, "bad struct_size", lambda: load_with_struct_size(model_path, 3),
           "struct_size")


if __name__ == "__main__":
    main()
