// The C ABI of chain of thought and retrieval (since 0.5). Every entry point catches everything.
#include <nlohmann/json.hpp>

#include "capi_internal.hpp"
#include "qllm/rag.hpp"

struct qllm_rag {
  std::unique_ptr<qllm::rag::store> st;
};

namespace qllm_capi {

#define QLLM_END(T, f) (offsetof(T, f) + sizeof(T::f))
template <>
inline bool field_boundary<qllm_cot_params>(std::size_t s) {
  using T = qllm_cot_params;
  return s == QLLM_END(T, struct_size) || s == QLLM_END(T, answer_tokens) || s == QLLM_END(T, reasoning_cue) ||
         s == QLLM_END(T, answer_cue) || s == QLLM_END(T, answer_request) || s == QLLM_END(T, reasoning_callback) ||
         s == QLLM_END(T, reasoning_user_data);
}
template <>
inline bool field_boundary<qllm_rag_index_params>(std::size_t s) {
  using T = qllm_rag_index_params;
  return s == QLLM_END(T, struct_size) || s == QLLM_END(T, chunk_tokens) || s == QLLM_END(T, overlap_tokens);
}
template <>
inline bool field_boundary<qllm_rag_ask_params>(std::size_t s) {
  using T = qllm_rag_ask_params;
  return s == QLLM_END(T, struct_size) || s == QLLM_END(T, top_k) || s == QLLM_END(T, cot) ||
         s == QLLM_END(T, system) || s == QLLM_END(T, cot_params);
}
#undef QLLM_END

namespace {

qllm_cot_params cot_defaults() {
  const qllm::cot_params d;
  qllm_cot_params p{};
  p.struct_size = sizeof p;
  p.answer_tokens = int32_t(d.answer_tokens);
  return p;
}

qllm_rag_index_params index_defaults() {
  const qllm::rag::chunk_params d;
  qllm_rag_index_params p{};
  p.struct_size = sizeof p;
  p.chunk_tokens = int32_t(d.max_tokens);
  p.overlap_tokens = int32_t(d.overlap_tokens);
  return p;
}

qllm_rag_ask_params ask_defaults() {
  const qllm::rag::ask_params d;
  qllm_rag_ask_params p{};
  p.struct_size = sizeof p;
  p.top_k = int32_t(d.top_k);
  return p;
}

// The core's cot_params, and the reasoning stream, from a caller's struct (NULL = defaults).
qllm::cot_params cot_of(const qllm_cot_params* in, qllm::token_callback& on_reasoning) {
  const qllm_cot_params c = read_struct(in, cot_defaults(), "qllm_cot_params");
  qllm::cot_params p;
  p.answer_tokens = c.answer_tokens;
  if (c.reasoning_cue) p.reasoning_cue = c.reasoning_cue;
  if (c.answer_cue) p.answer_cue = c.answer_cue;
  if (c.answer_request) p.answer_request = c.answer_request;
  on_reasoning = nullptr;
  if (c.reasoning_callback) {
    on_reasoning = [cb = c.reasoning_callback, user = c.reasoning_user_data](std::string_view text, int32_t token) {
      return cb(text.data(), text.size(), token, user) == 0;
    };
  }
  return p;
}

void begin(qllm_session* s, qllm_generate_result* result) {
  need(s, "session");
  if (result) check_size(result->struct_size, "qllm_generate_result");  // before running
  s->output.clear();
  s->reasoning.clear();
  s->rag_report.clear();
  s->have_logits = false;
}

void finish_cot(qllm_session* s, qllm::cot_result& r, qllm_generate_result* result) {
  s->reasoning = std::move(r.reasoning.text);
  s->output = std::move(r.answer.text);
  put_result(result, r.answer);
}

nlohmann::json hit_json(const qllm::rag::hit& h) {
  return {{"chunk_id", h.chunk_id}, {"path", h.path}, {"seq", h.seq}, {"score", h.score}};
}

std::string report_json(const qllm::rag::prompt& p) {
  nlohmann::json j = {{"window", p.n_ctx}, {"reserved", p.n_reserve}, {"prompt_tokens", p.tokens.size()}};
  j["used"] = nlohmann::json::array();
  j["dropped"] = nlohmann::json::array();
  for (std::size_t i = 0; i < p.used.size(); ++i) {
    auto u = hit_json(p.used[i].h);
    u["n"] = i + 1;
    u["rank"] = p.used[i].rank;
    u["tokens"] = p.used[i].n_tokens;
    j["used"].push_back(std::move(u));
  }
  for (const auto& d : p.dropped) {
    auto x = hit_json(d.h);
    x["rank"] = d.rank;
    x["tokens"] = d.n_tokens;
    x["reason"] = d.reason;
    j["dropped"].push_back(std::move(x));
  }
  // paths need not be UTF-8: replace rather than throw
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

void put_text(const std::string& s, const char** text, std::size_t* len) {
  need(text, "text");
  *text = s.c_str();
  if (len) *len = s.size();
}

}  // namespace
}  // namespace qllm_capi

using namespace qllm_capi;

extern "C" {

QLLM_EXPORT qllm_status qllm_cot_params_init(qllm_cot_params* p, size_t struct_size) {
  return guarded("qllm_cot_params_init", [&] { init_struct(p, struct_size, cot_defaults(), "qllm_cot_params"); });
}

QLLM_EXPORT qllm_status qllm_generate_cot(qllm_session* session, const char* prompt, size_t prompt_len,
                                          const qllm_generate_params* params, const qllm_cot_params* cot,
                                          qllm_generate_result* result) {
  return guarded("qllm_generate_cot", [&] {
    begin(session, result);
    qllm::token_callback cb, on_reasoning;
    const qllm::generate_params gp = generate_of(params, cb);
    const qllm::cot_params cp = cot_of(cot, on_reasoning);
    qllm::cot_result r = qllm::generate_cot(session->s, text_arg(prompt, prompt_len), gp, cp, on_reasoning, cb);
    finish_cot(session, r, result);
  });
}

QLLM_EXPORT qllm_status qllm_chat_cot(qllm_session* session, const qllm_chat_message* messages, size_t n_messages,
                                      const qllm_generate_params* params, const qllm_cot_params* cot,
                                      qllm_generate_result* result) {
  return guarded("qllm_chat_cot", [&] {
    begin(session, result);
    qllm::token_callback cb, on_reasoning;
    const qllm::generate_params gp = generate_of(params, cb);
    const qllm::cot_params cp = cot_of(cot, on_reasoning);
    const auto d = dialog(messages, n_messages);
    qllm::cot_result r = qllm::chat_cot(session->s, d, gp, cp, on_reasoning, cb);
    finish_cot(session, r, result);
  });
}

QLLM_EXPORT qllm_status qllm_session_reasoning(const qllm_session* session, const char** text, size_t* len) {
  return guarded("qllm_session_reasoning", [&] {
    need(session, "session");
    put_text(session->reasoning, text, len);
  });
}

QLLM_EXPORT qllm_status qllm_rag_open(const char* path, int32_t create, qllm_rag** out) {
  return guarded("qllm_rag_open", [&] {
    need(out, "out");
    *out = nullptr;
    need(path, "path");
    auto r = std::make_unique<qllm_rag>();
    r->st = qllm::rag::store::open(path, create != 0);
    *out = r.release();
  });
}

QLLM_EXPORT void qllm_rag_free(qllm_rag* rag) { delete rag; }

QLLM_EXPORT qllm_status qllm_rag_index_params_init(qllm_rag_index_params* p, size_t struct_size) {
  return guarded("qllm_rag_index_params_init",
                 [&] { init_struct(p, struct_size, index_defaults(), "qllm_rag_index_params"); });
}

QLLM_EXPORT qllm_status qllm_rag_index(qllm_rag* rag, const qllm_model* model, const char* const* paths, size_t n_paths,
                                       const qllm_rag_index_params* params, qllm_rag_index_result* result) {
  return guarded("qllm_rag_index", [&] {
    need(rag, "rag");
    const qllm::tokenizer& tok = vocab(model);
    if (n_paths && !paths) raise(QLLM_ERR_INVALID_ARGUMENT, "paths is NULL with n_paths > 0");
    if (result) check_size(result->struct_size, "qllm_rag_index_result");
    const qllm_rag_index_params p = read_struct(params, index_defaults(), "qllm_rag_index_params");
    std::vector<std::string> files;
    for (std::size_t i = 0; i < n_paths; ++i) {
      if (!paths[i]) raise(QLLM_ERR_INVALID_ARGUMENT, "paths[" + std::to_string(i) + "] is NULL");
      files.emplace_back(paths[i]);
    }
    const qllm::rag::index_report r = rag->st->index(files, tok, {p.chunk_tokens, p.overlap_tokens});
    if (result) {
      qllm_rag_index_result out{};
      out.struct_size = sizeof out;
      out.files_added = int32_t(r.files_added);
      out.files_changed = int32_t(r.files_changed);
      out.files_unchanged = int32_t(r.files_unchanged);
      out.files_removed = int32_t(r.files_removed);
      out.files_skipped = int32_t(r.files_skipped);
      out.chunks_added = r.chunks_added;
      out.chunks_removed = r.chunks_removed;
      write_struct(result, out, "qllm_rag_index_result");
    }
  });
}

QLLM_EXPORT qllm_status qllm_rag_ask_params_init(qllm_rag_ask_params* p, size_t struct_size) {
  return guarded("qllm_rag_ask_params_init", [&] { init_struct(p, struct_size, ask_defaults(), "qllm_rag_ask_params"); });
}

QLLM_EXPORT qllm_status qllm_rag_ask(qllm_rag* rag, qllm_session* session, const char* question, size_t question_len,
                                     const qllm_rag_ask_params* ask, const qllm_generate_params* params,
                                     qllm_generate_result* result) {
  return guarded("qllm_rag_ask", [&] {
    need(rag, "rag");
    begin(session, result);
    const qllm_rag_ask_params a = read_struct(ask, ask_defaults(), "qllm_rag_ask_params");
    if (a.top_k <= 0 || a.top_k > 10000)
      raise(QLLM_ERR_INVALID_ARGUMENT, "top_k " + std::to_string(a.top_k) + " is outside [1, 10000]");
    qllm::token_callback cb, on_reasoning;
    const qllm::generate_params gp = generate_of(params, cb);
    qllm::rag::ask_params ap;
    ap.top_k = a.top_k;
    ap.cot = a.cot != 0;
    if (a.system) ap.system = a.system;
    ap.cot_p = cot_of(a.cot_params, on_reasoning);
    qllm::rag::prompt built = qllm::rag::prepare(session->s, *rag->st, text_arg(question, question_len), ap, gp);
    session->rag_report = report_json(built);
    qllm::rag::answer r = qllm::rag::respond(session->s, std::move(built), ap, gp, cb, on_reasoning);
    session->reasoning = std::move(r.reasoning);
    session->output = std::move(r.result.text);
    put_result(result, r.result);
  });
}

QLLM_EXPORT qllm_status qllm_session_rag_report(const qllm_session* session, const char** json, size_t* len) {
  return guarded("qllm_session_rag_report", [&] {
    need(session, "session");
    put_text(session->rag_report, json, len);
  });
}

}  // extern "C"
