// The C ABI over the C++ core. Every entry point catches everything: no exception leaves here.
#include "qllm.h"
#include "capi_internal.hpp"

#include <algorithm>
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

using namespace qllm_capi;

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
    check_size(info->struct_size, "qllm_model_info");
    if (info->struct_size < sizeof(qllm_model_info) && !field_boundary<qllm_model_info>(info->struct_size))
      raise(QLLM_ERR_INVALID_ARGUMENT, "qllm_model_info: struct_size " + std::to_string(info->struct_size) +
                                           " ends inside a field (older callers pass a size that ends at a field)");
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
    if (t) {
      std::strncpy(i.tokenizer, t->kind() == qllm::tokenizer_kind::llama3_bpe ? "llama3-bpe" : "sentencepiece",
                   sizeof i.tokenizer - 1);
      const char* format = "unsupported";
      try {  // the format, if a dialog can be written in it (the pieces it needs are there)
        const qllm::chat_message probe[] = {{"user", "x"}};
        (void)qllm::chat_tokens(*t, probe);
        format = qllm::chat_format_of(*t) == qllm::chat_format::llama3 ? "llama3" : "llama2";
      } catch (const qllm::error&) {  // a template qllm does not know: the chat calls name it
      }
      std::strncpy(i.chat_format, format, sizeof i.chat_format - 1);
    }
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

QLLM_EXPORT qllm_status qllm_tokenize_ex(const qllm_model* model, const char* text, size_t text_len, uint32_t flags,
                                         int32_t* ids, size_t capacity, size_t* n_out) {
  return guarded("qllm_tokenize_ex", [&] {
    if (flags & ~uint32_t(QLLM_TOKENIZE_ADD_BOS | QLLM_TOKENIZE_PARSE_SPECIAL))
      raise(QLLM_ERR_INVALID_ARGUMENT, "flags " + std::to_string(flags) + " has bits other than "
                                       "QLLM_TOKENIZE_ADD_BOS (1) and QLLM_TOKENIZE_PARSE_SPECIAL (2)");
    const auto v = vocab(model).encode(text_arg(text, text_len), (flags & QLLM_TOKENIZE_ADD_BOS) != 0,
                                       (flags & QLLM_TOKENIZE_PARSE_SPECIAL) != 0);
    put_buffer(v.data(), v.size(), ids, capacity, n_out, false);
  });
}

QLLM_EXPORT qllm_status qllm_model_end_tokens(const qllm_model* model, int32_t* ids, size_t capacity, size_t* n_out) {
  return guarded("qllm_model_end_tokens", [&] {
    std::vector<int32_t> v = vocab(model).end_tokens();
    std::erase_if(v, [](int32_t id) { return id < 0; });
    std::sort(v.begin(), v.end());
    v.erase(std::unique(v.begin(), v.end()), v.end());
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

QLLM_EXPORT qllm_status qllm_chat_format_model(const qllm_model* model, const qllm_chat_message* messages,
                                               size_t n_messages, char* buf, size_t capacity, size_t* n_out) {
  return guarded("qllm_chat_format_model", [&] {
    const auto d = dialog(messages, n_messages);
    (void)qllm::chat_tokens(vocab(model), d);  // the same checks as qllm_chat_apply (UTF-8, pieces)
    const std::string s = qllm::chat_text(vocab(model), d);
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

QLLM_EXPORT qllm_status qllm_session_set_draft(qllm_session* session, const qllm_model* draft) {
  return guarded("qllm_session_set_draft", [&] {
    need(session, "session");
    session->s.set_draft(draft ? draft->m : nullptr);
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
