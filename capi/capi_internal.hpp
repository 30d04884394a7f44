// Internals of the C ABI shared by its translation units: the handles, the error plumbing
// (every entry point runs inside guarded()), and the struct_size rules.
#pragma once
#include "qllm.h"

#include <cstddef>
#include <cstring>
#include <exception>
#include <memory>
#include <new>
#include <string>
#include <type_traits>
#include <vector>

#include "qllm/error.hpp"
#include "qllm/grammar.hpp"
#include "qllm/model.hpp"
#include "qllm/resources.hpp"
#include "qllm/session.hpp"
#include "qllm/tokenizer.hpp"
#include "qllm/version.hpp"

// A function that has only one symbol version, its node in capi/qllm.map (see the end of the file).
#if defined(__GNUC__) && !defined(_WIN32)
#define QLLM_EXPORT __attribute__((visibility("default")))
#else
#define QLLM_EXPORT QLLM_API
#endif

static_assert(QLLM_VERSION_MAJOR == QLLM_CXX_VERSION_MAJOR && QLLM_VERSION_MINOR == QLLM_CXX_VERSION_MINOR &&
                  QLLM_VERSION_PATCH == QLLM_CXX_VERSION_PATCH,
              "capi/qllm.h and meson.build disagree on the version");

struct qllm_model {
  std::shared_ptr<const qllm::model> m;
};

struct qllm_grammar {
  std::shared_ptr<const qllm::grammar> g;
};

struct qllm_session {
  std::shared_ptr<const qllm::model> m;
  qllm::session s;
  std::vector<float> logits;  // of the last evaluated token
  bool have_logits = false;
  std::string output;     // the last generation's text (with chain of thought: the answer)
  std::string reasoning;  // the last chain-of-thought generation's reasoning
  std::string rag_report; // the last qllm_rag_ask's sources and drops, JSON
  qllm_session(std::shared_ptr<const qllm::model> mp, const qllm::session_params& p) : m(mp), s(std::move(mp), p) {}
};

namespace qllm_capi {

inline thread_local std::string t_error;

// Sets the thread's message "fn: what"; if even that allocation fails, a fixed text.
inline qllm_status fail(qllm_status st, const char* fn, const char* what) noexcept {
  try {
    t_error.assign(fn);
    t_error.append(": ");
    t_error.append(what);
  } catch (...) {
    try {
      t_error.clear();  // never allocates
    } catch (...) {
    }
    return st == QLLM_OK ? QLLM_ERR_OUT_OF_MEMORY : st;
  }
  return st;
}

inline qllm_status from_errc(qllm::errc c) {
  switch (c) {
    case qllm::errc::invalid_argument: return QLLM_ERR_INVALID_ARGUMENT;
    case qllm::errc::io: return QLLM_ERR_IO;
    case qllm::errc::bad_format: return QLLM_ERR_BAD_FORMAT;
    case qllm::errc::unsupported: return QLLM_ERR_UNSUPPORTED;
    case qllm::errc::out_of_memory: return QLLM_ERR_OUT_OF_MEMORY;
    case qllm::errc::context_overflow: return QLLM_ERR_CONTEXT_OVERFLOW;
    case qllm::errc::internal: return QLLM_ERR_INTERNAL;
    case qllm::errc::cancelled: return QLLM_ERR_CANCELLED;
    case qllm::errc::busy: return QLLM_ERR_INTERNAL;  // only the engine raises it; not in the C ABI
  }
  return QLLM_ERR_INTERNAL;
}

struct status_error {
  qllm_status st;
  std::string msg;
};

[[noreturn]] inline void raise(qllm_status st, std::string msg) { throw status_error{st, std::move(msg)}; }

// libgomp exits the process when it cannot create a thread: refuse absurd counts up front.
inline void check_threads(int32_t n) {
  if (n < 0 || n > qllm::max_threads())
    raise(QLLM_ERR_INVALID_ARGUMENT, "n_threads " + std::to_string(n) +
                                         " is out of range (0 = default, at most " +
                                         std::to_string(qllm::max_threads()) + " on this machine)");
}

// Runs f, turning every exception into a status and the thread's message.
template <class F>
qllm_status guarded(const char* fn, F&& f) noexcept {
  try {
    f();
    return QLLM_OK;
  } catch (const status_error& e) {  // messages are built inside fail(), which cannot throw
    return fail(e.st, fn, e.msg.c_str());
  } catch (const qllm::error& e) {
    return fail(from_errc(e.code()), fn, e.what());
  } catch (const std::bad_alloc&) {
    return fail(QLLM_ERR_OUT_OF_MEMORY, fn, "out of memory");
  } catch (const std::exception& e) {
    return fail(QLLM_ERR_INTERNAL, fn, e.what());
  } catch (...) {
    return fail(QLLM_ERR_INTERNAL, fn, "unknown error");
  }
}

template <class T>
void need(const T* p, const char* what) {
  if (!p) raise(QLLM_ERR_INVALID_ARGUMENT, std::string(what) + " is NULL");
}

// The sizes a params struct can have in a caller compiled against this or an older header: each
// field's end (what sizeof gives for a struct that stops there, padding included) and beyond
// ours. A size inside a field would copy half a pointer or a count.
template <class T>
bool field_boundary(std::size_t size);
#define QLLM_END(T, f) (offsetof(T, f) + sizeof(T::f))
template <>
inline bool field_boundary<qllm_model_params>(std::size_t s) {
  using T = qllm_model_params;
  return s == QLLM_END(T, struct_size) || s == QLLM_END(T, n_threads) || s == QLLM_END(T, use_mmap) ||
         s == QLLM_END(T, quantize_float_weights) || s == QLLM_END(T, isa);
}
template <>
inline bool field_boundary<qllm_session_params>(std::size_t s) {
  using T = qllm_session_params;
  // int32/float fields up to penalty_last_n end every 4 bytes; then the 8-byte seed
  return (s % 4 == 0 && s >= 4 && s <= QLLM_END(T, penalty_last_n)) || s == QLLM_END(T, seed);
}
template <>
inline bool field_boundary<qllm_generate_params>(std::size_t s) {
  using T = qllm_generate_params;
  return s == QLLM_END(T, struct_size) || s == QLLM_END(T, max_tokens) || s == QLLM_END(T, stop_at_eos) ||
         s == QLLM_END(T, stop) || s == QLLM_END(T, n_stop) || s == QLLM_END(T, callback) ||
         s == QLLM_END(T, user_data) || s == QLLM_END(T, draft_tokens) || s == QLLM_END(T, speculation) ||
         s == QLLM_END(T, grammar);
}
template <>
inline bool field_boundary<qllm_model_info>(std::size_t s) {
  using T = qllm_model_info;
  // int32 fields up to eos_token end every 4 bytes; then each field's end (a size inside a name
  // would leave it without its NUL)
  return (s % 4 == 0 && s >= 4 && s <= QLLM_END(T, eos_token)) || s == QLLM_END(T, n_params) ||
         s == QLLM_END(T, weight_bytes) || s == QLLM_END(T, weight_type) || s == QLLM_END(T, weight_type_name) ||
         s == QLLM_END(T, isa) || s == QLLM_END(T, load_seconds) || s == QLLM_END(T, weight_mix) ||
         s == QLLM_END(T, tokenizer) || s == QLLM_END(T, chat_format);
}
#undef QLLM_END

// Every struct_size must be at least the field itself and below 64 KiB: anything else is almost
// always a struct nobody initialised.
inline void check_size(std::size_t size, const char* what) {
  if (size < sizeof(uint32_t) || size > (std::size_t(1) << 16))
    raise(QLLM_ERR_INVALID_ARGUMENT, std::string(what) + ": struct_size " + std::to_string(size) +
                                         " is outside [4, 65536] (was the struct initialised?)");
}

// A caller's struct of `size` bytes: the prefix of ours it covers. Bytes past our struct (a newer
// caller) must be zero, otherwise the caller asks for something this library cannot do.
template <class T>
T read_struct(const T* in, const T& defaults, const char* what) {
  T out = defaults;
  if (!in) return out;
  const std::size_t size = in->struct_size;
  check_size(size, what);
  if (size < sizeof(T) && !field_boundary<T>(size))
    raise(QLLM_ERR_INVALID_ARGUMENT, std::string(what) + ": struct_size " + std::to_string(size) +
                                         " ends inside a field (older callers pass a size that ends at a field)");
  const auto* bytes = reinterpret_cast<const unsigned char*>(in);
  for (std::size_t i = sizeof(T); i < size; ++i) {
    if (bytes[i] != 0)
      raise(QLLM_ERR_UNSUPPORTED, std::string(what) + ": fields after byte " + std::to_string(sizeof(T)) +
                                      " are set, and this library version (" QLLM_CXX_VERSION_STRING ") does not know them");
  }
  std::memcpy(static_cast<void*>(&out), in, std::min(size, sizeof(T)));
  out.struct_size = uint32_t(sizeof(T));
  return out;
}

template <class T>
void write_struct(T* out, const T& value, const char* what) {
  need(out, what);
  const std::size_t size = out->struct_size;
  check_size(size, what);
  std::memcpy(static_cast<void*>(out), &value, std::min(size, sizeof(T)));
  if (size > sizeof(T)) std::memset(reinterpret_cast<unsigned char*>(out) + sizeof(T), 0, size - sizeof(T));
  out->struct_size = uint32_t(size);
}

template <class T>
void init_struct(T* p, std::size_t size, const T& defaults, const char* what) {
  need(p, what);
  check_size(size, what);
  std::memset(static_cast<void*>(p), 0, size);
  std::memcpy(static_cast<void*>(p), &defaults, std::min(size, sizeof(T)));
  p->struct_size = uint32_t(size);
}

// Buffer convention: *n_out = needed; too small → BUFFER_TOO_SMALL, nothing written.
template <class T>
void put_buffer(const T* data, std::size_t n, T* buf, std::size_t capacity, std::size_t* n_out, bool nul) {
  need(n_out, "n_out");
  *n_out = n;
  const std::size_t want = n + (nul ? 1 : 0);
  if (capacity < want) {
    if (capacity == 0 && !nul && n == 0) return;
    raise(QLLM_ERR_BUFFER_TOO_SMALL, "the buffer holds " + std::to_string(capacity) + ", " + std::to_string(want) + " needed");
  }
  need(buf, "buffer");
  if (n) std::memcpy(buf, data, n * sizeof(T));
  if (nul) buf[n] = T(0);
}

inline const qllm::tokenizer& vocab(const qllm_model* m) {
  need(m, "model");
  const qllm::tokenizer* t = m->m->get_tokenizer();
  if (!t) raise(QLLM_ERR_UNSUPPORTED, "the model file has no vocabulary");
  return *t;
}

inline std::string_view text_arg(const char* text, std::size_t len) {
  if (!text && len) raise(QLLM_ERR_INVALID_ARGUMENT, "text is NULL");
  return text ? std::string_view(text, len) : std::string_view();
}

inline qllm_model_params model_defaults() {
  qllm_model_params p{};
  p.struct_size = sizeof p;
  p.n_threads = 0;
  p.use_mmap = 1;
  p.quantize_float_weights = 0;
  p.isa = nullptr;
  return p;
}

inline qllm_session_params session_defaults() {
  const qllm::session_params d;
  qllm_session_params p{};
  p.struct_size = sizeof p;
  p.n_ctx = 0;
  p.n_batch = int32_t(d.ctx.n_batch);
  p.n_threads = 0;
  p.kv_type = QLLM_KV_F16;
  p.context_policy = QLLM_POLICY_ERROR;
  p.n_keep = int32_t(d.n_keep);
  p.context_shift = 1;
  p.temperature = d.sampling.temperature;
  p.top_k = d.sampling.top_k;
  p.top_p = d.sampling.top_p;
  p.min_p = d.sampling.min_p;
  p.repeat_penalty = d.sampling.repeat_penalty;
  p.frequency_penalty = d.sampling.frequency_penalty;
  p.presence_penalty = d.sampling.presence_penalty;
  p.penalty_last_n = d.sampling.penalty_last_n;
  p.seed = d.sampling.seed;
  return p;
}

inline qllm::sampler_params sampling_of(const qllm_session_params& p) {
  qllm::sampler_params s;
  s.temperature = p.temperature;
  s.top_k = p.top_k;
  s.top_p = p.top_p;
  s.min_p = p.min_p;
  s.repeat_penalty = p.repeat_penalty;
  s.frequency_penalty = p.frequency_penalty;
  s.presence_penalty = p.presence_penalty;
  s.penalty_last_n = p.penalty_last_n;
  s.seed = p.seed;
  return s;
}

inline qllm_generate_params generate_defaults() {
  qllm_generate_params p{};
  p.struct_size = sizeof p;
  p.max_tokens = 256;
  p.stop_at_eos = 1;
  return p;
}

inline std::vector<qllm::chat_message> dialog(const qllm_chat_message* msgs, std::size_t n) {
  if (n && !msgs) raise(QLLM_ERR_INVALID_ARGUMENT, "messages is NULL");
  std::vector<qllm::chat_message> d;
  for (std::size_t i = 0; i < n; ++i) {
    if (!msgs[i].role || !msgs[i].content)
      raise(QLLM_ERR_INVALID_ARGUMENT, "message " + std::to_string(i) + " has a NULL role or content");
    d.push_back({msgs[i].role, msgs[i].content});
    if (qllm::utf8::first_invalid(d.back().content) != std::string_view::npos)
      raise(QLLM_ERR_INVALID_ARGUMENT, "message " + std::to_string(i) + ": content is not valid UTF-8");
  }
  return d;
}

// The core's generate_params for a caller's struct (NULL = defaults); cb streams to its callback.
inline qllm::generate_params generate_of(const qllm_generate_params* params, qllm::token_callback& cb) {
  const qllm_generate_params p = read_struct(params, generate_defaults(), "qllm_generate_params");
  if (p.max_tokens < -1) raise(QLLM_ERR_INVALID_ARGUMENT, "max_tokens must be >= -1");
  if (p.n_stop && !p.stop) raise(QLLM_ERR_INVALID_ARGUMENT, "stop is NULL with n_stop > 0");
  if (p.draft_tokens < 0 || p.draft_tokens > 64) raise(QLLM_ERR_INVALID_ARGUMENT, "draft_tokens must be in [0, 64]");
  if (p.speculation != QLLM_SPEC_LOOKUP && p.speculation != QLLM_SPEC_DRAFT_MODEL)
    raise(QLLM_ERR_INVALID_ARGUMENT, "speculation " + std::to_string(p.speculation) + " is not a QLLM_SPEC_* value");
  qllm::generate_params gp;
  gp.draft_tokens = p.draft_tokens;
  gp.spec = qllm::speculation(p.speculation);
  if (p.grammar) gp.constraint = p.grammar->g;
  gp.max_tokens = p.max_tokens;
  gp.stop_at_eos = p.stop_at_eos != 0;
  for (std::size_t i = 0; i < p.n_stop; ++i) {
    if (!p.stop[i]) raise(QLLM_ERR_INVALID_ARGUMENT, "stop[" + std::to_string(i) + "] is NULL");
    gp.stop.emplace_back(p.stop[i]);
  }
  cb = nullptr;
  if (p.callback) {
    cb = [callback = p.callback, user = p.user_data](std::string_view text, int32_t token) {
      return callback(text.data(), text.size(), token, user) == 0;
    };
  }
  return gp;
}

// Fills the caller's result struct (may be NULL).
inline void put_result(qllm_generate_result* result, const qllm::generation_result& r) {
  if (!result) return;
  qllm_generate_result out{};
  out.struct_size = sizeof out;
  out.finish_reason = int32_t(r.finish);
  out.n_prompt_tokens = int32_t(r.timings.n_prompt);
  out.n_reused_tokens = int32_t(r.timings.n_reused);
  out.n_generated = int32_t(r.timings.n_generated);
  out.n_sequence_tokens = int32_t(r.fit.n_tokens);
  out.n_dropped = int32_t(r.fit.n_dropped);
  out.drop_begin = int32_t(r.fit.drop_begin);
  out.drop_end = int32_t(r.fit.drop_end);
  out.n_shifts = int32_t(r.n_shifts);
  out.n_shift_dropped = int32_t(r.n_shift_dropped);
  out.prompt_seconds = r.timings.prompt_seconds;
  out.generation_seconds = r.timings.generation_seconds;
  out.prompt_tokens_per_second = r.timings.prompt_tokens_per_second();
  out.generation_tokens_per_second = r.timings.generation_tokens_per_second();
  out.n_draft_passes = int32_t(r.spec.passes);
  out.n_drafted = int32_t(r.spec.drafted);
  out.n_draft_accepted = int32_t(r.spec.accepted);
  write_struct(result, out, "qllm_generate_result");
}

inline qllm_status run_generation(const char* fn, qllm_session* s, const std::vector<int32_t>* tokens, const char* prompt,
                                  std::size_t prompt_len, const qllm_generate_params* params, qllm_generate_result* result) {
  return guarded(fn, [&] {
    need(s, "session");
    qllm::token_callback cb;
    const qllm::generate_params gp = generate_of(params, cb);
    if (result) check_size(result->struct_size, "qllm_generate_result");  // before running
    s->output.clear();
    s->reasoning.clear();
    s->rag_report.clear();
    s->have_logits = false;
    qllm::generation_result r;
    if (tokens) {
      r = s->s.generate(*tokens, gp, cb);
    } else {
      const std::string_view text = text_arg(prompt, prompt_len);
      const qllm::tokenizer& t = s->s.tok();
      r = s->s.generate(t.encode(text, t.add_bos()), gp, cb);
    }
    s->output = std::move(r.text);
    put_result(result, r);
  });
}

}  // namespace qllm_capi
