// The C ABI over the C++ core. Every entry point catches everything: no exception leaves here.
#include "qllm.h"

#include <cstddef>
#include <cstring>
#include <exception>
#include <new>
#include <string>
#include <type_traits>
#include <vector>

#include "qllm/resources.hpp"
#include "qllm/error.hpp"
#include "qllm/gguf.hpp"
#include "qllm/model.hpp"
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

struct qllm_session {
  std::shared_ptr<const qllm::model> m;
  qllm::session s;
  std::vector<float> logits;  // of the last evaluated token
  bool have_logits = false;
  std::string output;
  qllm_session(std::shared_ptr<const qllm::model> mp, const qllm::session_params& p) : m(mp), s(std::move(mp), p) {}
};

namespace {

thread_local std::string t_error;

// Sets the thread's message "fn: what"; if even that allocation fails, a fixed text.
qllm_status fail(qllm_status st, const char* fn, const char* what) noexcept {
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

qllm_status from_errc(qllm::errc c) {
  switch (c) {
    case qllm::errc::invalid_argument: return QLLM_ERR_INVALID_ARGUMENT;
    case qllm::errc::io: return QLLM_ERR_IO;
    case qllm::errc::bad_format: return QLLM_ERR_BAD_FORMAT;
    case qllm::errc::unsupported: return QLLM_ERR_UNSUPPORTED;
    case qllm::errc::out_of_memory: return QLLM_ERR_OUT_OF_MEMORY;
    case qllm::errc::context_overflow: return QLLM_ERR_CONTEXT_OVERFLOW;
    case qllm::errc::internal: return QLLM_ERR_INTERNAL;
    case qllm::errc::cancelled: return QLLM_ERR_CANCELLED;
  }
  return QLLM_ERR_INTERNAL;
}

struct status_error {
  qllm_status st;
  std::string msg;
};

[[noreturn]] void raise(qllm_status st, std::string msg) { throw status_error{st, std::move(msg)}; }

// libgomp exits the process when it cannot create a thread: refuse absurd counts up front.
void check_threads(int32_t n) {
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
bool field_boundary<qllm_model_params>(std::size_t s) {
  using T = qllm_model_params;
  return s == QLLM_END(T, struct_size) || s == QLLM_END(T, n_threads) || s == QLLM_END(T, use_mmap) ||
         s == QLLM_END(T, quantize_float_weights) || s == QLLM_END(T, isa);
}
template <>
bool field_boundary<qllm_session_params>(std::size_t s) {
  using T = qllm_session_params;
  // int32/float fields up to penalty_last_n end every 4 bytes; then the 8-byte seed
  return (s % 4 == 0 && s >= 4 && s <= QLLM_END(T, penalty_last_n)) || s == QLLM_END(T, seed);
}
template <>
bool field_boundary<qllm_generate_params>(std::size_t s) {
  using T = qllm_generate_params;
  return s == QLLM_END(T, struct_size) || s == QLLM_END(T, max_tokens) || s == QLLM_END(T, stop_at_eos) ||
         s == QLLM_END(T, stop) || s == QLLM_END(T, n_stop) || s == QLLM_END(T, callback) ||
         s == QLLM_END(T, user_data);
}
#undef QLLM_END

// Every struct_size must be at least the field itself and below 64 KiB: anything else is almost
// always a struct nobody initialised.
void check_size(std::size_t size, const char* what) {
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

const qllm::tokenizer& vocab(const qllm_model* m) {
  need(m, "model");
  const qllm::tokenizer* t = m->m->get_tokenizer();
  if (!t) raise(QLLM_ERR_UNSUPPORTED, "the model file has no vocabulary");
  return *t;
}

std::string_view text_arg(const char* text, std::size_t len) {
  if (!text && len) raise(QLLM_ERR_INVALID_ARGUMENT, "text is NULL");
  return text ? std::string_view(text, len) : std::string_view();
}

qllm_model_params model_defaults() {
  qllm_model_params p{};
  p.struct_size = sizeof p;
  p.n_threads = 0;
  p.use_mmap = 1;
  p.quantize_float_weights = 0;
  p.isa = nullptr;
  return p;
}

qllm_session_params session_defaults() {
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

qllm::sampler_params sampling_of(const qllm_session_params& p) {
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

qllm_generate_params generate_defaults() {
  qllm_generate_params p{};
  p.struct_size = sizeof p;
  p.max_tokens = 256;
  p.stop_at_eos = 1;
  return p;
}

std::vector<qllm::chat_message> dialog(const qllm_chat_message* msgs, std::size_t n) {
  if (n && !msgs) raise(QLLM_ERR_INVALID_ARGUMENT, "messages is NULL");
  std::vector<qllm::chat_message> d;
  for (std::size_t i = 0; i < n; ++i) {
    if (!msgs[i].role || !msgs[i].content)
      raise(QLLM_ERR_INVALID_ARGUMENT, "message " + std::to_string(i) + " has a NULL role or content");
    d.push_back({msgs[i].role, msgs[i].content});
  }
  return d;
}

qllm_status run_generation(const char* fn, qllm_session* s, const std::vector<int32_t>* tokens, const char* prompt,
                           std::size_t prompt_len, const qllm_generate_params* params, qllm_generate_result* result) {
  return guarded(fn, [&] {
    need(s, "session");
    const qllm_generate_params p = read_struct(params, generate_defaults(), "qllm_generate_params");
    if (p.max_tokens < -1) raise(QLLM_ERR_INVALID_ARGUMENT, "max_tokens must be >= -1");
    if (p.n_stop && !p.stop) raise(QLLM_ERR_INVALID_ARGUMENT, "stop is NULL with n_stop > 0");
    if (result) check_size(result->struct_size, "qllm_generate_result");  // before running
    qllm::generate_params gp;
    gp.max_tokens = p.max_tokens;
    gp.stop_at_eos = p.stop_at_eos != 0;
    for (std::size_t i = 0; i < p.n_stop; ++i) {
      if (!p.stop[i]) raise(QLLM_ERR_INVALID_ARGUMENT, "stop[" + std::to_string(i) + "] is NULL");
      gp.stop.emplace_back(p.stop[i]);
    }
    qllm::token_callback cb;
    if (p.callback) {
      cb = [&p](std::string_view text, int32_t token) {
        return p.callback(text.data(), text.size(), token, p.user_data) == 0;
      };
    }
    s->output.clear();
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
    if (result) {
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
      write_struct(result, out, "qllm_generate_result");
    }
  });
}

}  // namespace

extern "C" {

QLLM_API uint32_t qllm_version(void) { return QLLM_VERSION_NUMBER; }
QLLM_API const char* qllm_version_string(void) { return QLLM_CXX_VERSION_STRING; }

QLLM_API const char* qllm_status_name(qllm_status st) {
  switch (st) {
    case QLLM_OK: return "QLLM_OK";
    case QLLM_ERR_INVALID_ARGUMENT: return "QLLM_ERR_INVALID_ARGUMENT";
    case QLLM_ERR_IO: return "QLLM_ERR_IO";
    case QLLM_ERR_BAD_FORMAT: return "QLLM_ERR_BAD_FORMAT";
    case QLLM_ERR_UNSUPPORTED: return "QLLM_ERR_UNSUPPORTED";
    case QLLM_ERR_OUT_OF_MEMORY: return "QLLM_ERR_OUT_OF_MEMORY";
    case QLLM_ERR_CONTEXT_OVERFLOW: return "QLLM_ERR_CONTEXT_OVERFLOW";
    case QLLM_ERR_INTERNAL: return "QLLM_ERR_INTERNAL";
    case QLLM_ERR_BUFFER_TOO_SMALL: return "QLLM_ERR_BUFFER_TOO_SMALL";
    case QLLM_ERR_CANCELLED: return "QLLM_ERR_CANCELLED";
    default: return "unknown";
  }
}

QLLM_API const char* qllm_last_error(void) { return t_error.c_str(); }

QLLM_API qllm_status qllm_model_params_init(qllm_model_params* p, size_t struct_size) {
  return guarded("qllm_model_params_init", [&] { init_struct(p, struct_size, model_defaults(), "qllm_model_params"); });
}

QLLM_API qllm_status qllm_model_load(const char* path, const qllm_model_params* params, qllm_model** out) {
  if (out) *out = nullptr;
  return guarded("qllm_model_load", [&] {
    need(out, "out");
    need(path, "path");
    const qllm_model_params p = read_struct(params, model_defaults(), "qllm_model_params");
    if (p.use_mmap != 1) raise(QLLM_ERR_UNSUPPORTED, "use_mmap must be 1: qllm always maps the file");
    check_threads(p.n_threads);
    qllm::model_options o;
    o.n_threads = p.n_threads;
    o.quantize_float_weights = p.quantize_float_weights != 0;
    if (p.isa) o.isa = p.isa;
    auto h = std::make_unique<qllm_model>();
    h->m = qllm::model::load(path, o);
    *out = h.release();
  });
}

QLLM_API void qllm_model_free(qllm_model* model) { delete model; }

QLLM_API qllm_status qllm_model_get_info(const qllm_model* model, qllm_model_info* info) {
  return guarded("qllm_model_get_info", [&] {
    need(model, "model");
    need(info, "info");
    const auto& m = *model->m;
    const auto& c = m.config();
    qllm_model_info i{};
    i.struct_size = sizeof i;
    i.n_vocab = int32_t(c.n_vocab);
    i.n_ctx_train = int32_t(c.n_ctx_train);
    i.n_embd = int32_t(c.n_embd);
    i.n_layer = int32_t(c.n_layer);
    i.n_head = int32_t(c.n_head);
    i.n_head_kv = int32_t(c.n_head_kv);
    i.n_ff = int32_t(c.n_ff);
    const qllm::tokenizer* t = m.get_tokenizer();
    i.has_vocabulary = t != nullptr;
    i.bos_token = t ? t->bos() : -1;
    i.eos_token = t ? t->eos() : -1;
    i.n_params = m.n_params();
    i.weight_bytes = m.weight_bytes();
    i.weight_type = int32_t(m.weight_type());
    std::strncpy(i.weight_type_name, qllm::gguf::type_name(m.weight_type()), sizeof i.weight_type_name - 1);
    std::strncpy(i.isa, m.isa(), sizeof i.isa - 1);
    i.load_seconds = m.load_seconds();
    std::strncpy(i.weight_mix, m.weight_mix().c_str(), sizeof i.weight_mix - 1);
    write_struct(info, i, "qllm_model_info");
  });
}

QLLM_API qllm_status qllm_tokenize(const qllm_model* model, const char* text, size_t text_len, int32_t add_bos,
                                   int32_t* ids, size_t capacity, size_t* n_out) {
  return guarded("qllm_tokenize", [&] {
    const auto v = vocab(model).encode(text_arg(text, text_len), add_bos != 0);
    put_buffer(v.data(), v.size(), ids, capacity, n_out, false);
  });
}

QLLM_API qllm_status qllm_count_tokens(const qllm_model* model, const char* text, size_t text_len, int32_t add_bos,
                                       size_t* n_out) {
  return guarded("qllm_count_tokens", [&] {
    need(n_out, "n_out");
    *n_out = vocab(model).count(text_arg(text, text_len), add_bos != 0);
  });
}

QLLM_API qllm_status qllm_detokenize(const qllm_model* model, const int32_t* ids, size_t n_ids, char* buf,
                                     size_t capacity, size_t* n_out) {
  return guarded("qllm_detokenize", [&] {
    if (n_ids && !ids) raise(QLLM_ERR_INVALID_ARGUMENT, "ids is NULL");
    const std::string s = vocab(model).decode(std::span<const int32_t>(ids, n_ids));
    put_buffer(s.data(), s.size(), buf, capacity, n_out, true);
  });
}

QLLM_API qllm_status qllm_token_piece(const qllm_model* model, int32_t token, char* buf, size_t capacity,
                                      size_t* n_out) {
  return guarded("qllm_token_piece", [&] {
    const std::string& p = vocab(model).piece(token);
    put_buffer(p.data(), p.size(), buf, capacity, n_out, true);
  });
}

QLLM_API qllm_status qllm_chat_apply(const qllm_model* model, const qllm_chat_message* messages, size_t n_messages,
                                     int32_t* ids, size_t capacity, size_t* n_out) {
  return guarded("qllm_chat_apply", [&] {
    const auto v = qllm::chat_tokens(vocab(model), dialog(messages, n_messages));
    put_buffer(v.data(), v.size(), ids, capacity, n_out, false);
  });
}

QLLM_API qllm_status qllm_chat_format(const qllm_chat_message* messages, size_t n_messages, char* buf,
                                      size_t capacity, size_t* n_out) {
  return guarded("qllm_chat_format", [&] {
    const std::string s = qllm::chat_text(dialog(messages, n_messages));
    put_buffer(s.data(), s.size(), buf, capacity, n_out, true);
  });
}

QLLM_API qllm_status qllm_session_params_init(qllm_session_params* p, size_t struct_size) {
  return guarded("qllm_session_params_init",
                 [&] { init_struct(p, struct_size, session_defaults(), "qllm_session_params"); });
}

QLLM_API qllm_status qllm_session_create(const qllm_model* model, const qllm_session_params* params,
                                         qllm_session** out) {
  if (out) *out = nullptr;
  return guarded("qllm_session_create", [&] {
    need(out, "out");
    need(model, "model");
    const qllm_session_params p = read_struct(params, session_defaults(), "qllm_session_params");
    qllm::session_params sp;
    if (p.n_ctx < 0) raise(QLLM_ERR_INVALID_ARGUMENT, "n_ctx must be >= 0");
    check_threads(p.n_threads);
    if (p.kv_type != QLLM_KV_F16 && p.kv_type != QLLM_KV_F32)
      raise(QLLM_ERR_INVALID_ARGUMENT, "kv_type " + std::to_string(p.kv_type) + " is not QLLM_KV_F16 or QLLM_KV_F32");
    if (p.context_policy < 0 || p.context_policy > 2)
      raise(QLLM_ERR_INVALID_ARGUMENT, "context_policy " + std::to_string(p.context_policy) + " is unknown");
    sp.ctx.n_ctx = p.n_ctx;
    sp.ctx.n_batch = p.n_batch;
    sp.ctx.n_threads = p.n_threads;
    sp.ctx.kv = p.kv_type == QLLM_KV_F16 ? qllm::kv_type::f16 : qllm::kv_type::f32;
    sp.policy = qllm::context_policy(p.context_policy);
    sp.n_keep = p.n_keep;
    sp.context_shift = p.context_shift != 0;
    sp.sampling = sampling_of(p);
    *out = new qllm_session(model->m, sp);
  });
}

QLLM_API qllm_status qllm_session_set_sampling(qllm_session* session, const qllm_session_params* params) {
  return guarded("qllm_session_set_sampling", [&] {
    need(session, "session");
    need(params, "params");
    session->s.set_sampling(sampling_of(read_struct(params, session_defaults(), "qllm_session_params")));
  });
}

QLLM_API void qllm_session_free(qllm_session* session) { delete session; }

QLLM_API qllm_status qllm_session_reset(qllm_session* session) {
  return guarded("qllm_session_reset", [&] {
    need(session, "session");
    session->s.reset();
    session->have_logits = false;
    session->output.clear();
  });
}

QLLM_API qllm_status qllm_session_eval(qllm_session* session, const int32_t* tokens, size_t n_tokens) {
  return guarded("qllm_session_eval", [&] {
    need(session, "session");
    if (n_tokens == 0) raise(QLLM_ERR_INVALID_ARGUMENT, "no tokens");
    need(tokens, "tokens");
    session->have_logits = false;
    const auto l = session->s.append(std::span<const int32_t>(tokens, n_tokens));
    session->logits.assign(l.begin(), l.end());
    session->have_logits = true;
  });
}

QLLM_API qllm_status qllm_session_logits(qllm_session* session, const float** logits, size_t* n_vocab) {
  return guarded("qllm_session_logits", [&] {
    need(session, "session");
    need(logits, "logits");
    need(n_vocab, "n_vocab");
    if (!session->have_logits) raise(QLLM_ERR_INVALID_ARGUMENT, "no logits: evaluate tokens first");
    *logits = session->logits.data();
    *n_vocab = session->logits.size();
  });
}

QLLM_API qllm_status qllm_session_sample(qllm_session* session, int32_t* token) {
  return guarded("qllm_session_sample", [&] {
    need(session, "session");
    need(token, "token");
    if (!session->have_logits) raise(QLLM_ERR_INVALID_ARGUMENT, "no logits: evaluate tokens first");
    *token = session->s.sample(session->logits);
  });
}

QLLM_EXPORT qllm_status qllm_session_cancel(qllm_session* session) {
  if (!session) return QLLM_ERR_INVALID_ARGUMENT;  // no message: must stay async-signal-safe
  session->s.cancel();
  return QLLM_OK;
}

QLLM_API qllm_status qllm_session_history(const qllm_session* session, int32_t* ids, size_t capacity, size_t* n_out) {
  return guarded("qllm_session_history", [&] {
    need(session, "session");
    const auto& h = session->s.history();
    put_buffer(h.data(), h.size(), ids, capacity, n_out, false);
  });
}

QLLM_API qllm_status qllm_generate_params_init(qllm_generate_params* p, size_t struct_size) {
  return guarded("qllm_generate_params_init",
                 [&] { init_struct(p, struct_size, generate_defaults(), "qllm_generate_params"); });
}

QLLM_API qllm_status qllm_generate(qllm_session* session, const char* prompt, size_t prompt_len,
                                   const qllm_generate_params* params, qllm_generate_result* result) {
  return run_generation("qllm_generate", session, nullptr, prompt, prompt_len, params, result);
}

QLLM_API qllm_status qllm_generate_tokens(qllm_session* session, const int32_t* tokens, size_t n_tokens,
                                          const qllm_generate_params* params, qllm_generate_result* result) {
  std::vector<int32_t> seq;
  const qllm_status st = guarded("qllm_generate_tokens", [&] {
    if (n_tokens && !tokens) raise(QLLM_ERR_INVALID_ARGUMENT, "tokens is NULL");
    if (n_tokens) seq.assign(tokens, tokens + n_tokens);
  });
  if (st != QLLM_OK) return st;
  return run_generation("qllm_generate_tokens", session, &seq, nullptr, 0, params, result);
}

QLLM_API qllm_status qllm_session_output(const qllm_session* session, const char** text, size_t* len) {
  return guarded("qllm_session_output", [&] {
    need(session, "session");
    need(text, "text");
    *text = session->output.c_str();
    if (len) *len = session->output.size();
  });
}

QLLM_API qllm_status qllm_embed(qllm_session* session, const char* text, size_t text_len, float* out,
                                size_t capacity, size_t* n_out) {
  return guarded("qllm_embed", [&] {
    need(session, "session");
    need(n_out, "n_out");
    const auto n_embd = std::size_t(session->m->config().n_embd);
    *n_out = n_embd;
    if (capacity < n_embd)
      raise(QLLM_ERR_BUFFER_TOO_SMALL, "the buffer holds " + std::to_string(capacity) + ", " + std::to_string(n_embd) + " needed");
    need(out, "out");
    const qllm::tokenizer& t = session->s.tok();
    const auto ids = t.encode(text_arg(text, text_len), t.add_bos());
    session->have_logits = false;
    const auto e = session->s.embed(ids);
    std::memcpy(out, e.data(), n_embd * sizeof(float));
  });
}

}  // extern "C"

// ---- symbol versions (capi/qllm.map) ----
// (QLLM_EXPORT, for functions added after 0.2.0, is defined at the top of this file.)
// Each function is exported under its minor's node (name@@QLLM_0.N, the default for new links)
// and, if 0.2.0 builds exported it, also as name@QLLM_0 for programs linked against those.
// The functions themselves are hidden; these aliases are what leaves the library.
#define QLLM_VERSIONED(fn, node, tag)                                                        \
  extern "C" __typeof__(fn) fn##_##tag __attribute__((alias(#fn), visibility("default"))); \
  __asm__(".symver " #fn "_" #tag ", " #fn "@@" node);
#define QLLM_COMPAT_0(fn)                                                                   \
  extern "C" __typeof__(fn) fn##_qllm_0 __attribute__((alias(#fn), visibility("default"))); \
  __asm__(".symver " #fn "_qllm_0, " #fn "@QLLM_0");
#define QLLM_SINCE_0_2(fn) QLLM_VERSIONED(fn, "QLLM_0.2", qllm_0_2) QLLM_COMPAT_0(fn)

#if defined(__ELF__) && !defined(_WIN32)
QLLM_SINCE_0_2(qllm_chat_apply)
QLLM_SINCE_0_2(qllm_chat_format)
QLLM_SINCE_0_2(qllm_count_tokens)
QLLM_SINCE_0_2(qllm_detokenize)
QLLM_SINCE_0_2(qllm_embed)
QLLM_SINCE_0_2(qllm_generate)
QLLM_SINCE_0_2(qllm_generate_params_init)
QLLM_SINCE_0_2(qllm_generate_tokens)
QLLM_SINCE_0_2(qllm_last_error)
QLLM_SINCE_0_2(qllm_model_free)
QLLM_SINCE_0_2(qllm_model_get_info)
QLLM_SINCE_0_2(qllm_model_load)
QLLM_SINCE_0_2(qllm_model_params_init)
QLLM_SINCE_0_2(qllm_session_create)
QLLM_SINCE_0_2(qllm_session_eval)
QLLM_SINCE_0_2(qllm_session_free)
QLLM_SINCE_0_2(qllm_session_history)
QLLM_SINCE_0_2(qllm_session_logits)
QLLM_SINCE_0_2(qllm_session_output)
QLLM_SINCE_0_2(qllm_session_params_init)
QLLM_SINCE_0_2(qllm_session_reset)
QLLM_SINCE_0_2(qllm_session_sample)
QLLM_SINCE_0_2(qllm_status_name)
QLLM_SINCE_0_2(qllm_token_piece)
QLLM_SINCE_0_2(qllm_tokenize)
QLLM_SINCE_0_2(qllm_version)
QLLM_SINCE_0_2(qllm_version_string)
// added after the 0.2.0 header was frozen (builds of that time exported it under QLLM_0)
QLLM_VERSIONED(qllm_session_set_sampling, "QLLM_0.3", qllm_0_3)
QLLM_COMPAT_0(qllm_session_set_sampling)
#endif
// Functions without a QLLM_0 past are exported directly (QLLM_EXPORT on the definition); the
// version script gives them their node: qllm_session_cancel (0.3).
