"""Tandem from Python through its C ABI (ctypes; no compiled extension).

    import tandem
    with tandem.Model("path/to/model") as model, model.session() as session:
        ids = session.generate(model.tokenize("Hello"), max_new_tokens=16)

libtandem.so is found through $TANDEM_LIBRARY (a file path), else the system loader
(LD_LIBRARY_PATH, ldconfig). Errors raise TandemError subclasses carrying the C status and the
library's message. Handles are freed by close() / the with-statement (and, as a fallback, by
garbage collection).
"""
import ctypes
import os
from ctypes import (CFUNCTYPE, POINTER, Structure, byref, c_char_p, c_double, c_float, c_int, c_int32,
                    c_int64, c_size_t, c_uint32, c_uint64, c_void_p)

ABI_VERSION = 1  # the tandem.h version this module was written against


class TandemError(Exception):
    """A failed Tandem call: `status` is the tandem_status value, `message` the library's text."""

    def __init__(self, status, message):
        super().__init__(f"{STATUS_NAMES.get(status, 'unknown')}: {message}")
        self.status = status
        self.message = message


class InvalidArgumentError(TandemError): pass
class FileError(TandemError): pass
class CorruptFileError(TandemError): pass
class UnsupportedError(TandemError): pass
class OutOfRangeError(TandemError): pass
class OutOfMemoryError(TandemError): pass
class CancelledError(TandemError): pass
class InternalError(TandemError): pass
class BufferTooSmallError(TandemError): pass


STATUS_OK = 0
_ERRORS = {1: InvalidArgumentError, 2: FileError, 3: CorruptFileError, 4: UnsupportedError,
           5: OutOfRangeError, 6: OutOfMemoryError, 7: CancelledError, 8: InternalError,
           9: BufferTooSmallError}
STATUS_NAMES = {0: "ok", 1: "invalid_argument", 2: "io", 3: "corrupt_file", 4: "unsupported",
                5: "out_of_range", 6: "out_of_memory", 7: "cancelled", 8: "internal",
                9: "buffer_too_small"}
STOP_REASONS = {0: "max_tokens", 1: "eos", 2: "stop_string", 3: "callback", 4: "cancelled",
                5: "context_full"}

ProgressFn = CFUNCTYPE(None, c_float, c_char_p, c_void_p)
TokenFn = CFUNCTYPE(c_int32, c_int32, POINTER(ctypes.c_char), c_size_t, c_void_p)


class LoadParams(Structure):
    _fields_ = [("struct_size", c_size_t), ("placement", c_char_p), ("threads", c_int32),
                ("max_context_tokens", c_int64), ("max_sessions", c_int64), ("max_batch_tokens", c_int64),
                ("load_tokenizer", c_int32), ("progress", ProgressFn), ("progress_user_data", c_void_p),
                ("cancel_flag", POINTER(c_int32))]


class ModelInfo(Structure):
    _fields_ = [("struct_size", c_size_t), ("architecture", c_char_p), ("vocab_size", c_int64),
                ("hidden_size", c_int64), ("num_layers", c_int64), ("num_experts", c_int64),
                ("num_experts_per_tok", c_int64), ("num_shared_experts", c_int64),
                ("max_position_embeddings", c_int64), ("max_context_tokens", c_int64), ("bos_id", c_int32),
                ("eos_id", c_int32), ("has_tokenizer", c_int32), ("has_chat_template", c_int32),
                ("total_bytes", c_uint64)]


class ChatParams(Structure):
    _fields_ = [("struct_size", c_size_t), ("messages_json", c_char_p), ("tools_json", c_char_p),
                ("extra_json", c_char_p), ("add_generation_prompt", c_int32)]


class SamplerParams(Structure):
    _fields_ = [("struct_size", c_size_t), ("temperature", c_float), ("top_k", c_int32), ("top_p", c_float),
                ("min_p", c_float), ("repetition_penalty", c_float), ("frequency_penalty", c_float),
                ("presence_penalty", c_float), ("penalty_last_n", c_int32), ("seed", c_uint64)]


class GenerateParams(Structure):
    _fields_ = [("struct_size", c_size_t), ("max_new_tokens", c_int64), ("sampling", POINTER(SamplerParams)),
                ("stop_at_eos", c_int32), ("stop_strings", POINTER(c_char_p)), ("n_stop_strings", c_size_t),
                ("skip_special_text", c_int32), ("on_token", TokenFn), ("user_data", c_void_p)]


class GenerateStats(Structure):
    _fields_ = [("struct_size", c_size_t), ("stop_reason", c_int), ("prompt_tokens", c_int64),
                ("prefilled_tokens", c_int64), ("generated_tokens", c_int64), ("prefill_seconds", c_double),
                ("decode_seconds", c_double)]


def _load_library():
    path = os.environ.get("TANDEM_LIBRARY") or "libtandem.so.0"
    lib = ctypes.CDLL(path)
    st = c_int
    signatures = {
        "tandem_last_error": (c_char_p, []),
        "tandem_abi_version": (c_uint32, []),
        "tandem_version_string": (c_char_p, []),
        "tandem_free_string": (None, [c_void_p]),
        "tandem_load_default_params": (LoadParams, []),
        "tandem_model_load": (st, [c_char_p, POINTER(LoadParams), POINTER(c_void_p)]),
        "tandem_model_load_with_overrides": (st, [c_char_p, POINTER(LoadParams), c_char_p, POINTER(c_void_p)]),
        "tandem_model_free": (None, [c_void_p]),
        "tandem_model_get_info": (st, [c_void_p, POINTER(ModelInfo)]),
        "tandem_model_memory_report_json": (st, [c_void_p, POINTER(c_void_p)]),
        "tandem_tokenize": (st, [c_void_p, c_char_p, c_size_t, c_int32, POINTER(c_int32), c_size_t,
                                 POINTER(c_size_t)]),
        "tandem_detokenize": (st, [c_void_p, POINTER(c_int32), c_size_t, c_int32, POINTER(c_void_p),
                                   POINTER(c_size_t)]),
        "tandem_chat_default_params": (ChatParams, []),
        "tandem_chat_render": (st, [c_void_p, POINTER(ChatParams), POINTER(c_void_p)]),
        "tandem_sampler_default_params": (SamplerParams, []),
        "tandem_session_new": (st, [c_void_p, POINTER(c_void_p)]),
        "tandem_session_free": (None, [c_void_p]),
        "tandem_session_prefill": (st, [c_void_p, POINTER(c_int32), c_size_t]),
        "tandem_session_decode": (st, [c_void_p, c_int32]),
        "tandem_session_copy_logits": (st, [c_void_p, POINTER(c_float), c_size_t, POINTER(c_size_t)]),
        "tandem_session_position": (st, [c_void_p, POINTER(c_int64)]),
        "tandem_session_reset": (st, [c_void_p]),
        "tandem_session_cancel": (st, [c_void_p]),
        "tandem_generate_default_params": (GenerateParams, []),
        "tandem_session_generate": (st, [c_void_p, POINTER(c_int32), c_size_t, POINTER(GenerateParams),
                                         POINTER(c_int32), c_size_t, POINTER(c_size_t), POINTER(GenerateStats)]),
    }
    for name, (restype, argtypes) in signatures.items():
        function = getattr(lib, name)
        function.restype = restype
        function.argtypes = argtypes
    if lib.tandem_abi_version() < ABI_VERSION:
        raise ImportError(f"{path} implements Tandem ABI {lib.tandem_abi_version()}, need {ABI_VERSION}")
    return lib


lib = _load_library()


def check(status):
    """Raises the TandemError subclass for a non-OK status, with tandem_last_error()'s message."""
    if status != STATUS_OK:
        message = (lib.tandem_last_error() or b"").decode("utf-8", "replace")
        raise _ERRORS.get(status, TandemError)(status, message)


def _take_string(pointer, length=None):
    """Copies a library-owned string out and frees it with tandem_free_string."""
    try:
        return ctypes.string_at(pointer, length) if length is not None else ctypes.string_at(pointer)
    finally:
        lib.tandem_free_string(pointer)


def _ids_array(ids):
    ids = list(ids)
    return (c_int32 * max(len(ids), 1))(*ids), len(ids)


class _Owned:
    """A C handle freed by close(), by `with`, or when garbage-collected."""

    _handle = None
    _free = None  # the tandem_*_free function, set by the subclass

    def close(self):
        if self._handle:
            type(self).__dict__['_free'](self._handle)
            self._handle = c_void_p()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        self.close()


class Model(_Owned):
    """A loaded model. Thread-safe for reading (tokenize, info, sessions); close() after its sessions."""

    _free = lib.tandem_model_free

    def __init__(self, path, threads=0, max_context_tokens=None, placement=None, progress=None, override_kv=None):
        params = lib.tandem_load_default_params()
        params.threads = threads
        if max_context_tokens is not None:
            params.max_context_tokens = max_context_tokens
        if placement is not None:
            params.placement = placement.encode()
        if progress is not None:  # keep the ctypes callback alive for the call
            self._progress = ProgressFn(lambda fraction, stage, _: progress(fraction, stage.decode()))
            params.progress = self._progress
        self._handle = c_void_p()
        # override_kv: "KEY=TYPE:VALUE" items (a list, or one comma-separated string), as --override-kv
        if isinstance(override_kv, (list, tuple)):
            override_kv = ",".join(override_kv)
        overrides = override_kv.encode() if override_kv else None
        check(lib.tandem_model_load_with_overrides(os.fsencode(path), byref(params), overrides, byref(self._handle)))

    def info(self):
        info = ModelInfo(struct_size=ctypes.sizeof(ModelInfo))
        check(lib.tandem_model_get_info(self._handle, byref(info)))
        return {name: (getattr(info, name).decode() if name == "architecture" else getattr(info, name))
                for name, _ in ModelInfo._fields_ if name != "struct_size"}

    def tokenize(self, text, add_special=True):
        data = text.encode()
        count = c_size_t()
        status = lib.tandem_tokenize(self._handle, data, len(data), int(add_special), None, 0, byref(count))
        if status != 9:  # BUFFER_TOO_SMALL is the expected answer to the size query
            check(status)
        ids = (c_int32 * max(count.value, 1))()
        check(lib.tandem_tokenize(self._handle, data, len(data), int(add_special), ids, count.value, byref(count)))
        return list(ids[:count.value])

    def detokenize(self, ids, skip_special=False):
        array, n = _ids_array(ids)
        text, length = c_void_p(), c_size_t()
        check(lib.tandem_detokenize(self._handle, array, n, int(skip_special), byref(text), byref(length)))
        return _take_string(text, length.value).decode("utf-8", "replace")

    def render_chat(self, messages_json, add_generation_prompt=True):
        params = lib.tandem_chat_default_params()
        params.messages_json = messages_json.encode()
        params.add_generation_prompt = int(add_generation_prompt)
        text = c_void_p()
        check(lib.tandem_chat_render(self._handle, byref(params), byref(text)))
        return _take_string(text).decode()

    def session(self):
        return Session(self)


class Session(_Owned):
    """One sequence with its KV cache. One thread at a time; cancel() from any thread."""

    _free = lib.tandem_session_free

    def __init__(self, model):
        self._model = model  # keeps the model alive while the session is
        self._handle = c_void_p()
        check(lib.tandem_session_new(model._handle, byref(self._handle)))

    def prefill(self, ids):
        array, n = _ids_array(ids)
        check(lib.tandem_session_prefill(self._handle, array, n))

    def decode(self, token_id):
        check(lib.tandem_session_decode(self._handle, token_id))

    def logits(self):
        count = c_size_t()
        status = lib.tandem_session_copy_logits(self._handle, None, 0, byref(count))
        if status != 9:
            check(status)
        values = (c_float * count.value)()
        check(lib.tandem_session_copy_logits(self._handle, values, count.value, byref(count)))
        return list(values)

    def reset(self):
        check(lib.tandem_session_reset(self._handle))

    def cancel(self):
        check(lib.tandem_session_cancel(self._handle))

    def generate(self, prompt_ids, max_new_tokens=256, stop_at_eos=True, temperature=0.0, seed=0,
                 on_token=None):
        """Returns the new ids. on_token(id, text) -> truthy stops generation after that token."""
        params = lib.tandem_generate_default_params()
        params.max_new_tokens = max_new_tokens
        params.stop_at_eos = int(stop_at_eos)
        sampling = lib.tandem_sampler_default_params()
        sampling.temperature = temperature
        sampling.seed = seed
        params.sampling = ctypes.pointer(sampling)
        if on_token is not None:
            callback = TokenFn(lambda token, text, length, _: int(bool(
                on_token(token, ctypes.string_at(text, length).decode("utf-8", "replace")))))
            params.on_token = callback
        prompt, n_prompt = _ids_array(prompt_ids)
        out = (c_int32 * max(max_new_tokens, 1))()
        count = c_size_t()
        stats = GenerateStats(struct_size=ctypes.sizeof(GenerateStats))
        check(lib.tandem_session_generate(self._handle, prompt, n_prompt, byref(params), out, max_new_tokens,
                                          byref(count), byref(stats)))
        self.last_stop_reason = STOP_REASONS.get(stats.stop_reason, "unknown")
        return list(out[:count.value])
