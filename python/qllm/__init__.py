"""qllm from Python: quantized Llama models on CPUs, through qllm's C ABI (ctypes; no compiled
extension module).

    import qllm
    with qllm.Model("model.gguf") as m, m.session(temperature=0) as s:
        for piece in s.stream("Once upon a time", max_tokens=32):
            print(piece, end="", flush=True)

The shared library is found through $QLLM_LIBRARY, then the copy bundled in this package (a
wheel built with the library), then the system's loader (libqllm.so.0, e.g. an installed qllm).
Errors raise QllmError with the C status (e.g. "QLLM_ERR_CONTEXT_OVERFLOW") and message.
Handles (Model, Session, Rag) are context managers that free their C handle on exit.
"""
from __future__ import annotations

import ctypes
import json
import ctypes.util
import os
import queue
import sys
import threading
from typing import Any, Callable, Iterable, Iterator, Sequence, Union

from ctypes import (CFUNCTYPE, POINTER, Structure, byref, c_char, c_char_p, c_double, c_float, c_int32, c_int64,
                    c_size_t, c_uint32, c_uint64, c_void_p)

ABI_MAJOR = 0
__version__ = "0.9.0"
__all__ = ["Model", "Session", "Rag", "Grammar", "Matcher", "QllmError", "version", "chat_format",
           "gbnf_from_json_schema"]

Message = Union[dict, Sequence[str]]  # {"role": ..., "content": ...} or (role, content)
Prompt = Union[str, bytes, Sequence[int]]  # text, or the whole sequence as token ids

# status codes (capi/qllm.h)
OK = 0
ERR_BUFFER_TOO_SMALL = 8

POLICIES = {"error": 0, "keep-head-and-tail": 1, "keep-tail": 2}
FINISH = {0: "eos", 1: "stop-string", 2: "max-tokens", 3: "cancelled", 4: "context-full"}


class QllmError(Exception):
    """A qllm call failed: .status (int), .name ("QLLM_ERR_IO", ...), .message."""

    def __init__(self, status, name, message):
        super().__init__(f"{name}: {message}")
        self.status = status
        self.name = name
        self.message = message


class _ModelParams(Structure):
    _fields_ = [("struct_size", c_uint32), ("n_threads", c_int32), ("use_mmap", c_int32),
                ("quantize_float_weights", c_int32), ("isa", c_char_p)]


class _ModelInfo(Structure):
    _fields_ = [("struct_size", c_uint32), ("n_vocab", c_int32), ("n_ctx_train", c_int32), ("n_embd", c_int32),
                ("n_layer", c_int32), ("n_head", c_int32), ("n_head_kv", c_int32), ("n_ff", c_int32),
                ("has_vocabulary", c_int32), ("bos_token", c_int32), ("eos_token", c_int32), ("n_params", c_int64),
                ("weight_bytes", c_uint64), ("weight_type", c_int32), ("weight_type_name", c_char * 16),
                ("isa", c_char * 32), ("load_seconds", c_double), ("weight_mix", c_char * 96),
                ("tokenizer", c_char * 16), ("chat_format", c_char * 16)]


class _ChatMessage(Structure):
    _fields_ = [("role", c_char_p), ("content", c_char_p)]


class _SessionParams(Structure):
    _fields_ = [("struct_size", c_uint32), ("n_ctx", c_int32), ("n_batch", c_int32), ("n_threads", c_int32),
                ("kv_type", c_int32), ("context_policy", c_int32), ("n_keep", c_int32), ("context_shift", c_int32),
                ("temperature", c_float), ("top_k", c_int32), ("top_p", c_float), ("min_p", c_float),
                ("repeat_penalty", c_float), ("frequency_penalty", c_float), ("presence_penalty", c_float),
                ("penalty_last_n", c_int32), ("seed", c_uint64)]


_StreamCallback = CFUNCTYPE(c_int32, POINTER(c_char), c_size_t, c_int32, c_void_p)


class _GenerateParams(Structure):
    _fields_ = [("struct_size", c_uint32), ("max_tokens", c_int32), ("stop_at_eos", c_int32),
                ("stop", POINTER(c_char_p)), ("n_stop", c_size_t), ("callback", _StreamCallback),
                ("user_data", c_void_p), ("draft_tokens", c_int32), ("speculation", c_int32),
                ("grammar", c_void_p)]


class _GenerateResult(Structure):
    _fields_ = [("struct_size", c_uint32), ("finish_reason", c_int32), ("n_prompt_tokens", c_int32),
                ("n_reused_tokens", c_int32), ("n_generated", c_int32), ("n_sequence_tokens", c_int32),
                ("n_dropped", c_int32), ("drop_begin", c_int32), ("drop_end", c_int32), ("n_shifts", c_int32),
                ("n_shift_dropped", c_int32), ("prompt_seconds", c_double), ("generation_seconds", c_double),
                ("prompt_tokens_per_second", c_double), ("generation_tokens_per_second", c_double),
                ("n_draft_passes", c_int32), ("n_drafted", c_int32), ("n_draft_accepted", c_int32)]


class _CotParams(Structure):
    _fields_ = [("struct_size", c_uint32), ("answer_tokens", c_int32), ("reasoning_cue", c_char_p),
                ("answer_cue", c_char_p), ("answer_request", c_char_p), ("reasoning_callback", _StreamCallback),
                ("reasoning_user_data", c_void_p)]


class _RagIndexParams(Structure):
    _fields_ = [("struct_size", c_uint32), ("chunk_tokens", c_int32), ("overlap_tokens", c_int32)]


class _RagIndexResult(Structure):
    _fields_ = [("struct_size", c_uint32), ("files_added", c_int32), ("files_changed", c_int32),
                ("files_unchanged", c_int32), ("files_removed", c_int32), ("files_skipped", c_int32),
                ("chunks_added", c_int64), ("chunks_removed", c_int64)]


class _RagAskParams(Structure):
    _fields_ = [("struct_size", c_uint32), ("top_k", c_int32), ("cot", c_int32), ("system", c_char_p),
                ("cot_params", POINTER(_CotParams))]


def _library_path():
    if os.environ.get("QLLM_LIBRARY"):
        return os.environ["QLLM_LIBRARY"]
    bundled = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_lib", "libqllm.so.0")
    if os.path.exists(bundled):
        return bundled
    return ctypes.util.find_library("qllm") or "libqllm.so.0"


def _load_library():
    path = _library_path()
    try:
        lib = ctypes.CDLL(path)
    except OSError as e:
        raise ImportError(f"qllm: cannot load the qllm library ({path}): {e}. Install qllm (libqllm.so.0), "
                          "set QLLM_LIBRARY to its path, or install a wheel that bundles it") from e
    sig = {
        "qllm_version": (c_uint32, []),
        "qllm_version_string": (c_char_p, []),
        "qllm_status_name": (c_char_p, [c_int32]),
        "qllm_last_error": (c_char_p, []),
        "qllm_model_params_init": (c_int32, [POINTER(_ModelParams), c_size_t]),
        "qllm_model_load": (c_int32, [c_char_p, POINTER(_ModelParams), POINTER(c_void_p)]),
        "qllm_model_free": (None, [c_void_p]),
        "qllm_model_get_info": (c_int32, [c_void_p, POINTER(_ModelInfo)]),
        "qllm_tokenize": (c_int32, [c_void_p, c_char_p, c_size_t, c_int32, POINTER(c_int32), c_size_t,
                                    POINTER(c_size_t)]),
        "qllm_count_tokens": (c_int32, [c_void_p, c_char_p, c_size_t, c_int32, POINTER(c_size_t)]),
        "qllm_detokenize": (c_int32, [c_void_p, POINTER(c_int32), c_size_t, c_char_p, c_size_t, POINTER(c_size_t)]),
        "qllm_token_piece": (c_int32, [c_void_p, c_int32, c_char_p, c_size_t, POINTER(c_size_t)]),
        "qllm_chat_apply": (c_int32, [c_void_p, POINTER(_ChatMessage), c_size_t, POINTER(c_int32), c_size_t,
                                      POINTER(c_size_t)]),
        "qllm_chat_format": (c_int32, [POINTER(_ChatMessage), c_size_t, c_char_p, c_size_t, POINTER(c_size_t)]),
        "qllm_session_params_init": (c_int32, [POINTER(_SessionParams), c_size_t]),
        "qllm_session_create": (c_int32, [c_void_p, POINTER(_SessionParams), POINTER(c_void_p)]),
        "qllm_session_free": (None, [c_void_p]),
        "qllm_session_reset": (c_int32, [c_void_p]),
        "qllm_session_cancel": (c_int32, [c_void_p]),
        "qllm_session_set_sampling": (c_int32, [c_void_p, POINTER(_SessionParams)]),
        "qllm_session_set_draft": (c_int32, [c_void_p, c_void_p]),
        "qllm_session_eval": (c_int32, [c_void_p, POINTER(c_int32), c_size_t]),
        "qllm_session_logits": (c_int32, [c_void_p, POINTER(POINTER(c_float)), POINTER(c_size_t)]),
        "qllm_session_sample": (c_int32, [c_void_p, POINTER(c_int32)]),
        "qllm_session_history": (c_int32, [c_void_p, POINTER(c_int32), c_size_t, POINTER(c_size_t)]),
        "qllm_generate_params_init": (c_int32, [POINTER(_GenerateParams), c_size_t]),
        "qllm_generate": (c_int32, [c_void_p, c_char_p, c_size_t, POINTER(_GenerateParams),
                                    POINTER(_GenerateResult)]),
        "qllm_generate_tokens": (c_int32, [c_void_p, POINTER(c_int32), c_size_t, POINTER(_GenerateParams),
                                           POINTER(_GenerateResult)]),
        "qllm_session_output": (c_int32, [c_void_p, POINTER(c_char_p), POINTER(c_size_t)]),
        "qllm_embed": (c_int32, [c_void_p, c_char_p, c_size_t, POINTER(c_float), c_size_t, POINTER(c_size_t)]),
        # since 0.5
        "qllm_cot_params_init": (c_int32, [POINTER(_CotParams), c_size_t]),
        "qllm_generate_cot": (c_int32, [c_void_p, c_char_p, c_size_t, POINTER(_GenerateParams), POINTER(_CotParams),
                                        POINTER(_GenerateResult)]),
        "qllm_chat_cot": (c_int32, [c_void_p, POINTER(_ChatMessage), c_size_t, POINTER(_GenerateParams),
                                    POINTER(_CotParams), POINTER(_GenerateResult)]),
        "qllm_session_reasoning": (c_int32, [c_void_p, POINTER(c_char_p), POINTER(c_size_t)]),
        "qllm_rag_open": (c_int32, [c_char_p, c_int32, POINTER(c_void_p)]),
        "qllm_rag_free": (None, [c_void_p]),
        "qllm_rag_index_params_init": (c_int32, [POINTER(_RagIndexParams), c_size_t]),
        "qllm_rag_index": (c_int32, [c_void_p, c_void_p, POINTER(c_char_p), c_size_t, POINTER(_RagIndexParams),
                                     POINTER(_RagIndexResult)]),
        "qllm_rag_ask_params_init": (c_int32, [POINTER(_RagAskParams), c_size_t]),
        "qllm_rag_ask": (c_int32, [c_void_p, c_void_p, c_char_p, c_size_t, POINTER(_RagAskParams),
                                   POINTER(_GenerateParams), POINTER(_GenerateResult)]),
        "qllm_session_rag_report": (c_int32, [c_void_p, POINTER(c_char_p), POINTER(c_size_t)]),
        # since 0.8
        "qllm_grammar_from_gbnf": (c_int32, [c_char_p, c_size_t, POINTER(c_void_p)]),
        "qllm_grammar_from_json_schema": (c_int32, [c_char_p, c_size_t, POINTER(c_void_p)]),
        "qllm_grammar_json_object": (c_int32, [POINTER(c_void_p)]),
        "qllm_grammar_gbnf_from_json_schema": (c_int32, [c_char_p, c_size_t, c_char_p, c_size_t, POINTER(c_size_t)]),
        "qllm_grammar_free": (None, [c_void_p]),
        "qllm_matcher_create": (c_int32, [c_void_p, c_void_p, POINTER(c_void_p)]),
        "qllm_matcher_free": (None, [c_void_p]),
        "qllm_matcher_mask": (c_int32, [c_void_p, POINTER(c_float), c_size_t]),
        "qllm_matcher_mask_session": (c_int32, [c_void_p, c_void_p]),
        "qllm_matcher_accept": (c_int32, [c_void_p, c_int32]),
        "qllm_matcher_accept_text": (c_int32, [c_void_p, c_char_p, c_size_t]),
        "qllm_matcher_state": (c_int32, [c_void_p, POINTER(c_int32), POINTER(c_int32)]),
        "qllm_matcher_reset": (c_int32, [c_void_p]),
        # since 0.9
        "qllm_tokenize_ex": (c_int32, [c_void_p, c_char_p, c_size_t, c_uint32, POINTER(c_int32), c_size_t,
                                       POINTER(c_size_t)]),
        "qllm_model_end_tokens": (c_int32, [c_void_p, POINTER(c_int32), c_size_t, POINTER(c_size_t)]),
        "qllm_chat_format_model": (c_int32, [c_void_p, POINTER(_ChatMessage), c_size_t, c_char_p, c_size_t,
                                             POINTER(c_size_t)]),
    }
    for name, (res, args) in sig.items():
        f = getattr(lib, name)
        f.restype = res
        f.argtypes = args
    if lib.qllm_version() // 10000 != ABI_MAJOR:
        raise ImportError(f"{path} is qllm {lib.qllm_version_string().decode()}, this module needs {ABI_MAJOR}.x")
    return lib


_lib = _load_library()


def version() -> str:
    """The library's version, "MAJOR.MINOR.PATCH"."""
    return _lib.qllm_version_string().decode()


def _check(status):
    if status != OK:
        message = _lib.qllm_last_error().decode("utf-8", "replace")  # first: valid until the next call
        raise QllmError(status, _lib.qllm_status_name(status).decode(), message)


def _int32(name, value):
    """value as a C int32, or ValueError (ctypes would silently wrap it)."""
    value = int(value)
    if not -2**31 <= value < 2**31:
        raise ValueError(f"{name} = {value} does not fit a 32-bit integer")
    return value


def _utf8(text):
    return text.encode("utf-8") if isinstance(text, str) else bytes(text)


def _ids(tokens):
    tokens = list(tokens)
    return (c_int32 * max(1, len(tokens)))(*tokens), len(tokens)


def _sized(fill, ctype):
    """Calls fill(buf, capacity, n_out) twice if needed (the needed-size convention)."""
    n = c_size_t(0)
    cap = 256
    while True:
        buf = (ctype * cap)()
        st = fill(buf, cap, byref(n))
        if st == ERR_BUFFER_TOO_SMALL and n.value + 1 > cap:
            cap = n.value + 1
            continue
        _check(st)
        return buf, n.value


def _messages(messages):
    arr = (_ChatMessage * max(1, len(messages)))()
    keep = []
    for i, m in enumerate(messages):
        role, content = (m["role"], m["content"]) if isinstance(m, dict) else m
        r, c = _utf8(role), _utf8(content)
        keep += [r, c]
        arr[i].role, arr[i].content = r, c
    return arr, keep


def chat_format(messages: Sequence[Message]) -> str:
    """The Llama-2-chat text of a dialog, <s> and </s> written out (Model.chat_format writes a
    model's own format)."""
    arr, _keep = _messages(messages)
    buf, n = _sized(lambda b, cap, n: _lib.qllm_chat_format(arr, len(messages), b, cap, n), c_char)
    return bytes(buf[:n]).decode("utf-8")


class _Handle:
    """Owns one C handle: close() (also on `with` exit and garbage collection) frees it once."""
    _what = "handle"
    _free_name = ""

    def _release(self):  # subclasses stop what still uses the handle first
        pass

    def close(self) -> None:
        """Frees the C handle (once; later calls do nothing)."""
        self._release()
        if getattr(self, "_h", None) and _lib is not None:
            getattr(_lib, self._free_name)(self._h)
        self._h = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: the library may be gone already
            pass

    def __enter__(self):  # -> the handle itself
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def handle(self):
        if not getattr(self, "_h", None):
            raise QllmError(1, "QLLM_ERR_INVALID_ARGUMENT", f"the {self._what} is closed")
        return self._h


class Model(_Handle):
    """A loaded GGUF model; immutable, shareable between threads."""
    _what = "model"
    _free_name = "qllm_model_free"

    def __init__(self, path: Union[str, os.PathLike], *, n_threads: int = 0, isa: str | None = None,
                 quantize_float_weights: bool = False) -> None:
        p = _ModelParams()
        _check(_lib.qllm_model_params_init(byref(p), ctypes.sizeof(p)))
        p.n_threads = n_threads
        p.quantize_float_weights = int(bool(quantize_float_weights))
        p.isa = _utf8(isa) if isa else None
        h = c_void_p()
        _check(_lib.qllm_model_load(os.fsencode(path), byref(p), byref(h)))
        self._h = h

    @property
    def info(self) -> dict[str, Any]:
        i = _ModelInfo()
        i.struct_size = ctypes.sizeof(i)
        _check(_lib.qllm_model_get_info(self.handle, byref(i)))
        d = {name: getattr(i, name) for name, _ in _ModelInfo._fields_ if name != "struct_size"}
        d["weight_type_name"] = i.weight_type_name.decode()
        d["isa"] = i.isa.decode()
        d["weight_mix"] = i.weight_mix.decode()
        d["tokenizer"] = i.tokenizer.decode()
        d["chat_format"] = i.chat_format.decode()
        return d

    def tokenize(self, text: str | bytes, add_bos: bool = True, *, parse_special: bool = False) -> list[int]:
        """Token ids of text. parse_special: control pieces written in the text ("<|eot_id|>")
        become their tokens; without it they are plain text."""
        b = _utf8(text)
        flags = (1 if add_bos else 0) | (2 if parse_special else 0)
        buf, n = _sized(lambda out, cap, n: _lib.qllm_tokenize_ex(self.handle, b, len(b), flags, out, cap, n),
                        c_int32)
        return list(buf[:n])

    @property
    def end_tokens(self) -> list[int]:
        """The ids that end an answer (EOS, and Llama-3's <|eot_id|>, <|end_of_text|>, <|eom_id|>)."""
        buf, n = _sized(lambda out, cap, n: _lib.qllm_model_end_tokens(self.handle, out, cap, n), c_int32)
        return list(buf[:n])

    def chat_format(self, messages: Sequence[Message]) -> str:
        """The dialog as text in this model's chat format (Llama-2 or Llama-3), special pieces
        written out."""
        arr, _keep = _messages(messages)
        buf, n = _sized(lambda b, cap, n: _lib.qllm_chat_format_model(self.handle, arr, len(messages), b, cap, n),
                        c_char)
        return bytes(buf[:n]).decode("utf-8")

    def count_tokens(self, text: str | bytes, add_bos: bool = True) -> int:
        b = _utf8(text)
        n = c_size_t()
        _check(_lib.qllm_count_tokens(self.handle, b, len(b), int(add_bos), byref(n)))
        return n.value

    def detokenize(self, tokens: Iterable[int]) -> str:
        arr, count = _ids(tokens)
        buf, n = _sized(lambda out, cap, n: _lib.qllm_detokenize(self.handle, arr, count, out, cap, n), c_char)
        return bytes(buf[:n]).decode("utf-8")

    def token_piece(self, token: int) -> str:
        buf, n = _sized(lambda out, cap, n: _lib.qllm_token_piece(self.handle, token, out, cap, n), c_char)
        return bytes(buf[:n]).decode("utf-8")

    def chat_tokens(self, messages: Sequence[Message]) -> list[int]:
        """Token ids of a dialog in the model's chat format (Llama-2 or Llama-3):
        [("system", ...), ("user", ...), ...] or dicts."""
        arr, _keep = _messages(messages)
        buf, n = _sized(lambda out, cap, n: _lib.qllm_chat_apply(self.handle, arr, len(messages), out, cap, n),
                        c_int32)
        return list(buf[:n])

    def session(self, **params: Any) -> Session:
        """A new Session on this model (see Session for the parameters)."""
        return Session(self, **params)


class Session(_Handle):
    """KV cache and sampler for one sequence; use from one thread at a time.

    Keyword parameters: n_ctx, n_batch, n_threads, kv ("f16"/"f32"), context_policy ("error",
    "keep-head-and-tail", "keep-tail"), n_keep, context_shift, temperature, top_k, top_p, min_p,
    repeat_penalty, frequency_penalty, presence_penalty, penalty_last_n, seed.
    """
    _what = "session"
    _free_name = "qllm_session_free"

    def __init__(self, model: Model, **params: Any) -> None:
        p = self._params(params)
        self.model = model  # keeps the Python object alive as long as the session
        h = c_void_p()
        _check(_lib.qllm_session_create(model.handle, byref(p), byref(h)))
        self._h = h
        self.last_result = None
        self._lock = threading.Lock()  # one call at a time: the C session is single-threaded
        self._worker = None  # a stream()'s generation thread
        self._cancel = None
        self._spec = (0, 0)  # (draft_tokens, QLLM_SPEC_*) for every generation
        self.draft = None  # the draft model, kept alive with the session

    @staticmethod
    def _params(params):
        p = _SessionParams()
        _check(_lib.qllm_session_params_init(byref(p), ctypes.sizeof(p)))
        for key, value in params.items():
            if key == "kv":
                p.kv_type = {"f32": 0, "f16": 1}[value]
            elif key == "context_policy":
                p.context_policy = POLICIES[value.replace("_", "-")]
            elif key == "context_shift":
                p.context_shift = int(bool(value))
            elif key in dict(_SessionParams._fields_) and key != "struct_size":
                setattr(p, key, value)
            else:
                raise TypeError(f"unknown session parameter {key!r}")
        return p

    def set_sampling(self, **params: Any) -> None:
        """New sampling settings (temperature, top_k, top_p, min_p, penalties, seed) from the next
        token on; unspecified ones take their defaults."""
        _check(self._call(_lib.qllm_session_set_sampling, byref(self._params(params))))

    def _release(self):
        # close() frees the session; a running stream() is cancelled and waited for first
        worker = getattr(self, "_worker", None)
        if worker is not None and worker is not threading.current_thread():
            self._cancel.set()
            worker.join()

    def _call(self, f, *args):
        """Runs a C call on this session unless another one (a stream) is running."""
        if not self._lock.acquire(blocking=False):
            raise QllmError(1, "QLLM_ERR_INVALID_ARGUMENT", "the session is busy (a stream is running)")
        try:
            return f(self.handle, *args)
        finally:
            self._lock.release()

    def reset(self) -> None:
        """Empties the sequence (the KV cache)."""
        _check(self._call(_lib.qllm_session_reset))

    def cancel(self) -> None:
        """Stops a generate() or eval() that another thread is running on this session (its
        prompt too): generate() then ends with finish_reason "cancelled", eval() raises
        QLLM_ERR_CANCELLED. No effect when nothing runs. Thread-safe (needs no session lock)."""
        h = getattr(self, "_h", None)
        if h:
            _check(_lib.qllm_session_cancel(h))

    def eval(self, tokens: Iterable[int]) -> None:
        """Appends tokens to the sequence and evaluates them."""
        arr, n = _ids(tokens)
        _check(self._call(_lib.qllm_session_eval, arr, n))

    def logits(self) -> list[float]:
        """The last evaluated token's logits (n_vocab floats)."""
        ptr = POINTER(c_float)()
        n = c_size_t()
        _check(self._call(_lib.qllm_session_logits, byref(ptr), byref(n)))
        return ptr[:n.value]

    def sample(self) -> int:
        """A token sampled from the last logits with the session's sampling settings."""
        t = c_int32()
        _check(self._call(_lib.qllm_session_sample, byref(t)))
        return t.value

    @property
    def history(self) -> list[int]:
        """The token ids of the sequence."""
        buf, n = _sized(lambda out, cap, n: self._call(_lib.qllm_session_history, out, cap, n), c_int32)
        return list(buf[:n])

    def embed(self, text: str | bytes) -> Any:
        """Mean-pooled final hidden state of text, L2-normalised (replaces the sequence): a NumPy
        float32 array when NumPy can be imported, a list of floats otherwise."""
        b = _utf8(text)
        buf, n = _sized(lambda out, cap, n: self._call(_lib.qllm_embed, b, len(b), out, cap, n), c_float)
        try:
            import numpy
        except ImportError:
            return list(buf[:n])
        return numpy.array(buf[:n], dtype=numpy.float32)

    @staticmethod
    def _callback(on_text, pending):
        """A C stream callback calling on_text(bytes, token); exceptions are kept in pending."""
        if not on_text:
            return _StreamCallback()

        def trampoline(text, length, token, _user):
            try:
                return 1 if on_text(ctypes.string_at(text, length), token) else 0
            except BaseException as e:  # never unwind through C: cancel and re-raise afterwards
                pending.append(e)
                return 1

        return _StreamCallback(trampoline)

    def _generation(self, call, max_tokens, stop, stop_at_eos, on_text, grammar=None):
        """Runs call(handle, *extra..., gp, result) with generate params; returns the output text."""
        if stop is None:
            stop = ()
        elif isinstance(stop, (str, bytes)):
            stop = [stop]
        gp = _GenerateParams()
        _check(_lib.qllm_generate_params_init(byref(gp), ctypes.sizeof(gp)))
        gp.max_tokens = _int32("max_tokens", max_tokens)
        gp.stop_at_eos = int(bool(stop_at_eos))
        gp.draft_tokens, gp.speculation = self._spec
        if grammar is not None:
            if not isinstance(grammar, Grammar):
                raise TypeError("grammar must be a qllm.Grammar")
            gp.grammar = grammar.handle  # the caller's reference keeps it alive during the call
        stops = [_utf8(s) for s in stop]
        stop_arr = (c_char_p * max(1, len(stops)))(*stops)
        gp.stop = stop_arr
        gp.n_stop = len(stops)
        pending = []
        cb = self._callback(on_text, pending)
        gp.callback = cb
        res = _GenerateResult()
        res.struct_size = ctypes.sizeof(res)
        st = call(gp, res, pending)
        if pending:
            raise pending[0]
        _check(st)
        self.last_result = {name: getattr(res, name) for name, _ in _GenerateResult._fields_ if name != "struct_size"}
        self.last_result["finish_reason"] = FINISH.get(res.finish_reason, res.finish_reason)
        return self._text(_lib.qllm_session_output)

    def _text(self, f):
        out = c_char_p()
        n = c_size_t()
        _check(self._call(f, byref(out), byref(n)))
        return ctypes.string_at(out, n.value).decode("utf-8")

    def _run(self, prompt, max_tokens, stop, stop_at_eos, on_text, grammar=None):
        def call(gp, res, _pending):
            if isinstance(prompt, (str, bytes)):
                b = _utf8(prompt)
                return self._call(_lib.qllm_generate, b, len(b), byref(gp), byref(res))
            arr, n = _ids(prompt)
            return self._call(_lib.qllm_generate_tokens, arr, n, byref(gp), byref(res))
        return self._generation(call, max_tokens, stop, stop_at_eos, on_text, grammar)

    def _cot_params(self, answer_tokens, reasoning_cue, answer_cue, answer_request, on_reasoning, pending):
        cp = _CotParams()
        _check(_lib.qllm_cot_params_init(byref(cp), ctypes.sizeof(cp)))
        cp.answer_tokens = _int32("answer_tokens", answer_tokens)
        keep = [self._callback(self._text_cb(on_reasoning), pending)]
        for name, value in (("reasoning_cue", reasoning_cue), ("answer_cue", answer_cue),
                            ("answer_request", answer_request)):
            if value is not None:
                keep.append(_utf8(value))
                setattr(cp, name, keep[-1])
        cp.reasoning_callback = keep[0]
        return cp, keep

    def generate_cot(self, prompt: str | bytes, *, max_tokens: int = 256, answer_tokens: int = 64,
                     reasoning_cue: str | None = None, answer_cue: str | None = None,
                     on_reasoning: Callable[[str], Any] | None = None,
                     on_answer: Callable[[str], Any] | None = None,
                     grammar: Grammar | None = None) -> dict[str, str]:
        """Chain of thought on plain text: returns {"reasoning": ..., "answer": ...}. The model
        reasons after prompt + " Let's think step by step." (max_tokens, fewer if the window needs
        room for the answer stage), then a short answer stage (answer_tokens) continues
        "Therefore, the answer is". on_reasoning / on_answer get the text (str) as it streams;
        their return values are ignored. A grammar constrains the answer, not the reasoning."""
        def call(gp, res, pending):
            cp, _keep = self._cot_params(answer_tokens, reasoning_cue, answer_cue, None, on_reasoning, pending)
            b = _utf8(prompt)
            return self._call(_lib.qllm_generate_cot, b, len(b), byref(gp), byref(cp), byref(res))
        answer = self._generation(call, max_tokens, (), True, self._text_cb(on_answer), grammar)
        return {"reasoning": self._text(_lib.qllm_session_reasoning), "answer": answer}

    def chat_cot(self, messages: Sequence[Message], *, max_tokens: int = 256, answer_tokens: int = 64,
                 reasoning_cue: str | None = None, answer_request: str | None = None,
                 on_reasoning: Callable[[str], Any] | None = None,
                 on_answer: Callable[[str], Any] | None = None,
                 grammar: Grammar | None = None) -> dict[str, str]:
        """Chain of thought in a Llama-2-chat dialog: {"reasoning": ..., "answer": ...}."""
        def call(gp, res, pending):
            cp, _keep = self._cot_params(answer_tokens, reasoning_cue, None, answer_request, on_reasoning, pending)
            arr, keep = _messages(messages)
            return self._call(_lib.qllm_chat_cot, arr, len(messages), byref(gp), byref(cp), byref(res))
        answer = self._generation(call, max_tokens, (), True, self._text_cb(on_answer), grammar)
        return {"reasoning": self._text(_lib.qllm_session_reasoning), "answer": answer}

    @staticmethod
    def _text_cb(f):
        """A user's text callback: called with str; what it returns is ignored (it never stops
        the generation: close a stream() or call cancel() for that)."""
        if not f:
            return None

        def call(b, _token):
            f(b.decode("utf-8"))
            return False
        return call

    def set_speculation(self, spec: str | None, *, draft_tokens: int = 8, draft: Model | None = None) -> None:
        """Speculative decoding for this session's generations from now on: spec "lookup" (drafts
        copied from the prompt and the text so far), "draft" (drafts written by `draft`, a smaller
        model with the same vocabulary) or None (off). Up to draft_tokens (1..64) drafts are checked
        per forward pass; greedy text is the same, sampled text has the same distribution.
        last_result counts n_drafted and n_draft_accepted."""
        if spec not in (None, "lookup", "draft"):
            raise QllmError(1, "QLLM_ERR_INVALID_ARGUMENT", f"spec {spec!r} is not 'lookup', 'draft' or None")
        if (spec == "draft") != (draft is not None):
            raise QllmError(1, "QLLM_ERR_INVALID_ARGUMENT", "a draft model goes with spec 'draft', and only with it")
        n = _int32("draft_tokens", draft_tokens)
        if spec is not None and not 1 <= n <= 64:
            raise QllmError(1, "QLLM_ERR_INVALID_ARGUMENT", "draft_tokens must be in [1, 64]")
        _check(self._call(_lib.qllm_session_set_draft, draft.handle if draft is not None else None))
        self.draft = draft
        self._spec = (0, 0) if spec is None else (n, 1 if spec == "draft" else 0)

    def generate(self, prompt: Prompt, *, max_tokens: int = 256, stop: str | Sequence[str] = (),
                 stop_at_eos: bool = True, grammar: Grammar | None = None) -> str:
        """The whole generated text; prompt is text or token ids (the whole sequence).
        With a grammar the text is a string of its language (or a prefix of one when max_tokens
        ran out: last_result["finish_reason"] says which).
        Statistics of the run: self.last_result (finish_reason, n_dropped, tokens/s, ...)."""
        return self._run(prompt, max_tokens, stop, stop_at_eos, None, grammar)

    def chat(self, messages: Sequence[Message], *, max_tokens: int = 256, stop: str | Sequence[str] = (),
             grammar: Grammar | None = None) -> str:
        """The assistant's answer to a dialog, formatted with the chat template ([("system", ...),
        ("user", ...), ("assistant", ...), ..., ("user", ...)] or dicts with role and content).
        The session's sequence becomes the dialog and the answer."""
        text = self.generate(self.model.chat_tokens(messages), max_tokens=max_tokens, stop=stop, grammar=grammar)
        return text if grammar is not None else text.lstrip(" ")  # a grammar's text is kept whole

    def chat_stream(self, messages: Sequence[Message], *, max_tokens: int = 256,
                    stop: str | Sequence[str] = (), grammar: Grammar | None = None) -> Iterator[str]:
        """chat() as a generator of text pieces (see stream())."""
        first = grammar is None
        for piece in self.stream(self.model.chat_tokens(messages), max_tokens=max_tokens, stop=stop,
                                 grammar=grammar):
            if first:
                piece = piece.lstrip(" ")
                first = not piece
            if piece:
                yield piece

    def stream(self, prompt: Prompt, *, max_tokens: int = 256, stop: str | Sequence[str] = (),
               stop_at_eos: bool = True, grammar: Grammar | None = None) -> Iterator[str]:
        """A generator of text pieces as they are produced. Closing it early cancels the run;
        while it runs, other calls on this session raise "busy" and close() waits for it."""
        if self._worker is not None:
            raise QllmError(1, "QLLM_ERR_INVALID_ARGUMENT", "the session is busy (a stream is running)")
        q = queue.Queue()
        cancel = threading.Event()
        done = object()

        def on_text(data, _token):
            if data:
                q.put(data.decode("utf-8"))
            return cancel.is_set()

        def work():
            try:
                self._run(prompt, max_tokens, stop, stop_at_eos, on_text, grammar)
                q.put(done)
            except BaseException as e:
                q.put(e)

        t = threading.Thread(target=work, daemon=True)
        self._worker, self._cancel = t, cancel
        t.start()
        try:
            while True:
                item = q.get()
                if item is done:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            cancel.set()
            if not sys.is_finalizing():  # at shutdown the worker may never get the GIL back
                t.join()
            self._worker = self._cancel = None


def _schema_text(schema):
    return _utf8(schema if isinstance(schema, (str, bytes)) else json.dumps(schema))


def gbnf_from_json_schema(schema: Union[str, bytes, dict]) -> str:
    """The GBNF that Grammar.from_json_schema compiles for a schema (a dict or its JSON text)."""
    b = _schema_text(schema)
    buf, n = _sized(lambda out, cap, n: _lib.qllm_grammar_gbnf_from_json_schema(b, len(b), out, cap, n), c_char)
    return bytes(buf[:n]).decode("utf-8")


class Grammar(_Handle):
    """A compiled grammar for constrained output: generate(..., grammar=g) writes only strings of
    its language. Grammar(text) compiles GBNF (llama.cpp's syntax, rule `root`);
    Grammar.from_json_schema(schema) a JSON Schema (dict or JSON text; keywords it cannot follow
    exactly raise QLLM_ERR_UNSUPPORTED naming them); Grammar.json_object() any JSON object.
    Immutable: share it between sessions and threads."""
    _what = "grammar"
    _free_name = "qllm_grammar_free"

    def __init__(self, gbnf: Union[str, bytes], *, _handle=None) -> None:
        if _handle is not None:
            self._h = _handle
            return
        b = _utf8(gbnf)
        h = c_void_p()
        _check(_lib.qllm_grammar_from_gbnf(b, len(b), byref(h)))
        self._h = h

    @classmethod
    def from_json_schema(cls, schema: Union[str, bytes, dict]) -> "Grammar":
        b = _schema_text(schema)
        h = c_void_p()
        _check(_lib.qllm_grammar_from_json_schema(b, len(b), byref(h)))
        return cls(b"", _handle=h)

    @classmethod
    def json_object(cls) -> "Grammar":
        h = c_void_p()
        _check(_lib.qllm_grammar_json_object(byref(h)))
        return cls(b"", _handle=h)


class Matcher(_Handle):
    """Follows one output of a grammar token by token, for loops that sample themselves
    (Session.eval / sample): mask_session(s) or mask(logits) before each sampling, accept(token)
    after. Exact: a token is allowed iff some string of the language continues the text with it."""
    _what = "matcher"
    _free_name = "qllm_matcher_free"

    def __init__(self, grammar: Grammar, model: Model) -> None:
        h = c_void_p()
        _check(_lib.qllm_matcher_create(grammar.handle, model.handle, byref(h)))
        self._h = h

    def mask(self, logits: Sequence[float]) -> list[float]:
        """logits with every token that may not come next set to -inf (a new list)."""
        arr = (c_float * max(1, len(logits)))(*logits)
        _check(_lib.qllm_matcher_mask(self.handle, arr, len(logits)))
        return arr[:len(logits)]

    def mask_session(self, session: Session) -> None:
        """Masks the session's last logits in place: its sample() then picks an allowed token."""
        _check(session._call(lambda h: _lib.qllm_matcher_mask_session(self.handle, h)))

    def accept(self, token: int) -> None:
        """Advances past token (EOS ends the output); QLLM_ERR_INVALID_ARGUMENT if not allowed."""
        _check(_lib.qllm_matcher_accept(self.handle, _int32("token", token)))

    def accept_text(self, text: Union[str, bytes]) -> None:
        """Advances past text; QLLM_ERR_INVALID_ARGUMENT (and no change) if not allowed."""
        b = _utf8(text)
        _check(_lib.qllm_matcher_accept_text(self.handle, b, len(b)))

    def _state(self):
        can, must = c_int32(), c_int32()
        _check(_lib.qllm_matcher_state(self.handle, byref(can), byref(must)))
        return bool(can.value), bool(must.value)

    @property
    def can_end(self) -> bool:
        """The text so far is a complete string of the language (EOS may come)."""
        return self._state()[0]

    @property
    def must_end(self) -> bool:
        """Only EOS may come next."""
        return self._state()[1]

    def reset(self) -> None:
        """Back to the empty text."""
        _check(_lib.qllm_matcher_reset(self.handle))


class Rag(_Handle):
    """A retrieval database (one SQLite file): index text/markdown files, answer from them.

        with Rag("docs.db", create=True) as r:
            r.index(model, ["docs/"])
            a = r.ask(session, "What does the warranty cover?", max_tokens=128)
            print(a["answer"], a["report"]["used"])
    """
    _what = "rag"
    _free_name = "qllm_rag_free"

    def __init__(self, path: Union[str, os.PathLike], *, create: bool = False) -> None:
        h = c_void_p()
        _check(_lib.qllm_rag_open(_utf8(os.fspath(path)), int(bool(create)), byref(h)))
        self._h = h

    def index(self, model: Model, paths: Union[str, os.PathLike, Iterable[Union[str, os.PathLike]]], *,
              chunk_tokens: int = 192, overlap_tokens: int = 32) -> dict[str, int]:
        """Indexes files and directories (*.txt, *.md, *.markdown); unchanged files are skipped.
        Returns the counts: files_added, files_changed, files_unchanged, files_removed, ..."""
        if isinstance(paths, (str, bytes, os.PathLike)):
            paths = [paths]
        encoded = [_utf8(os.fspath(p)) for p in paths]
        arr = (c_char_p * max(1, len(encoded)))(*encoded)
        p = _RagIndexParams()
        _check(_lib.qllm_rag_index_params_init(byref(p), ctypes.sizeof(p)))
        p.chunk_tokens, p.overlap_tokens = _int32("chunk_tokens", chunk_tokens), _int32("overlap_tokens", overlap_tokens)
        res = _RagIndexResult()
        res.struct_size = ctypes.sizeof(res)
        _check(_lib.qllm_rag_index(self.handle, model.handle, arr, len(encoded), byref(p), byref(res)))
        return {name: getattr(res, name) for name, _ in _RagIndexResult._fields_ if name != "struct_size"}

    def ask(self, session: Session, question: str, *, top_k: int = 8, system: str | None = None, cot: bool = False,
            max_tokens: int = 256, answer_tokens: int = 64, on_text: Callable[[str], Any] | None = None,
            on_reasoning: Callable[[str], Any] | None = None) -> dict[str, Any]:
        """Retrieves, fits whole chunks into the session's window (lowest-ranked dropped first),
        and answers. Returns {"answer", "reasoning" ("" without cot), "report"}: the report lists
        the chunks given ("used": n, rank, chunk_id, path, seq, tokens, score) and the ones left
        out ("dropped", with the reason). on_text / on_reasoning get the text (str) as it streams;
        their return values are ignored."""

        def call(gp, res, pending):
            ap = _RagAskParams()
            _check(_lib.qllm_rag_ask_params_init(byref(ap), ctypes.sizeof(ap)))
            ap.top_k = _int32("top_k", top_k)
            ap.cot = int(bool(cot))
            keep = []
            if system is not None:
                keep.append(_utf8(system))
                ap.system = keep[-1]
            cp, keep_cp = session._cot_params(answer_tokens, None, None, None, on_reasoning, pending)
            ap.cot_params = ctypes.pointer(cp)
            b = _utf8(question)
            return session._call(lambda h, *a: _lib.qllm_rag_ask(self.handle, h, *a), b, len(b), byref(ap),
                                 byref(gp), byref(res))
        answer = session._generation(call, max_tokens, (), True, Session._text_cb(on_text))
        report = session._text(_lib.qllm_session_rag_report)
        return {"answer": answer, "reasoning": session._text(_lib.qllm_session_reasoning),
                "report": json.loads(report) if report else {}}
