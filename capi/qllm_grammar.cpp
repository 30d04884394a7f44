// The C ABI of grammars and matchers (since 0.8). Every entry point catches everything.
#include <cmath>
#include <limits>

#include "capi_internal.hpp"

struct qllm_matcher {
  std::shared_ptr<const qllm::model> m;  // keeps the tokenizer alive
  qllm::grammar_matcher gm;
  std::size_t n_vocab;
  // a session model whose vocabulary equals m's (weak: its control block stays, so another model
  // at the same address is never mistaken for it)
  std::weak_ptr<const qllm::model> checked;
  qllm_matcher(std::shared_ptr<const qllm::model> mp, std::shared_ptr<const qllm::grammar> g, const qllm::tokenizer& t)
      : m(std::move(mp)), gm(std::move(g), t), n_vocab(std::size_t(t.n_vocab())) {}
};

using namespace qllm_capi;

namespace {

std::string_view text_of(const char* text, std::size_t len, const char* what) {
  if (!text && len) raise(QLLM_ERR_INVALID_ARGUMENT, std::string(what) + " is NULL");
  return text ? std::string_view(text, len) : std::string_view();
}

void put_grammar(std::shared_ptr<const qllm::grammar> g, qllm_grammar** out) {
  *out = new qllm_grammar{std::move(g)};
}

}  // namespace

extern "C" {

QLLM_EXPORT qllm_status qllm_grammar_from_gbnf(const char* text, size_t len, qllm_grammar** out) {
  return guarded("qllm_grammar_from_gbnf", [&] {
    need(out, "out");
    *out = nullptr;
    put_grammar(qllm::grammar::from_gbnf(text_of(text, len, "text")), out);
  });
}

QLLM_EXPORT qllm_status qllm_grammar_from_json_schema(const char* schema, size_t len, qllm_grammar** out) {
  return guarded("qllm_grammar_from_json_schema", [&] {
    need(out, "out");
    *out = nullptr;
    put_grammar(qllm::grammar::from_json_schema(text_of(schema, len, "schema")), out);
  });
}

QLLM_EXPORT qllm_status qllm_grammar_json_object(qllm_grammar** out) {
  return guarded("qllm_grammar_json_object", [&] {
    need(out, "out");
    *out = nullptr;
    put_grammar(qllm::grammar::json_object(), out);
  });
}

QLLM_EXPORT qllm_status qllm_grammar_gbnf_from_json_schema(const char* schema, size_t len, char* buf,
                                                           size_t capacity, size_t* n_out) {
  return guarded("qllm_grammar_gbnf_from_json_schema", [&] {
    need(n_out, "n_out");
    const std::string g = qllm::grammar::gbnf_from_json_schema(text_of(schema, len, "schema"));
    put_buffer(g.data(), g.size(), buf, capacity, n_out, true);
  });
}

QLLM_EXPORT void qllm_grammar_free(qllm_grammar* grammar) { delete grammar; }

QLLM_EXPORT qllm_status qllm_matcher_create(const qllm_grammar* grammar, const qllm_model* model, qllm_matcher** out) {
  return guarded("qllm_matcher_create", [&] {
    need(out, "out");
    *out = nullptr;
    need(grammar, "grammar");
    need(model, "model");
    const qllm::tokenizer* t = model->m->get_tokenizer();
    if (!t) raise(QLLM_ERR_UNSUPPORTED, "the model has no vocabulary: a grammar needs the tokens' texts");
    *out = new qllm_matcher(model->m, grammar->g, *t);
  });
}

QLLM_EXPORT void qllm_matcher_free(qllm_matcher* matcher) { delete matcher; }

QLLM_EXPORT qllm_status qllm_matcher_mask(qllm_matcher* matcher, float* logits, size_t n_vocab) {
  return guarded("qllm_matcher_mask", [&] {
    need(matcher, "matcher");
    need(logits, "logits");
    if (n_vocab != matcher->n_vocab)
      raise(QLLM_ERR_INVALID_ARGUMENT, "n_vocab " + std::to_string(n_vocab) + " is not the vocabulary's size " +
                                           std::to_string(matcher->n_vocab));
    matcher->gm.mask(std::span<float>(logits, n_vocab));
  });
}

QLLM_EXPORT qllm_status qllm_matcher_mask_session(qllm_matcher* matcher, qllm_session* session) {
  return guarded("qllm_matcher_mask_session", [&] {
    need(matcher, "matcher");
    need(session, "session");
    if (!session->have_logits) raise(QLLM_ERR_INVALID_ARGUMENT, "the session has no logits: evaluate tokens first");
    if (session->logits.size() != matcher->n_vocab)
      raise(QLLM_ERR_INVALID_ARGUMENT, "the session's model has " + std::to_string(session->logits.size()) +
                                           " logits, the matcher's vocabulary " + std::to_string(matcher->n_vocab));
    // another model (another load of the same file, or a model with the same vocabulary) is fine;
    // one whose token texts differ would be masked by the wrong texts. Checked once per model.
    const bool known = !matcher->checked.owner_before(session->m) && !session->m.owner_before(matcher->checked) &&
                       !matcher->checked.expired();
    if (session->m.get() != matcher->m.get() && !known) {
      const qllm::tokenizer *a = matcher->m->get_tokenizer(), *b = session->m->get_tokenizer();
      if (!b) raise(QLLM_ERR_INVALID_ARGUMENT, "the session's model has no vocabulary");
      if (a->eos() != b->eos()) raise(QLLM_ERR_INVALID_ARGUMENT, "the session's model has another EOS token");
      for (int32_t i = 0; i < a->n_vocab(); ++i)
        if (a->piece(i) != b->piece(i) || a->vocab().types[std::size_t(i)] != b->vocab().types[std::size_t(i)])
          raise(QLLM_ERR_INVALID_ARGUMENT, "the session's model has another vocabulary than the matcher's (token " +
                                               std::to_string(i) + " differs)");
      matcher->checked = session->m;
    }
    matcher->gm.mask(std::span<float>(session->logits));
  });
}

QLLM_EXPORT qllm_status qllm_matcher_accept(qllm_matcher* matcher, int32_t token) {
  return guarded("qllm_matcher_accept", [&] {
    need(matcher, "matcher");
    if (token < 0 || std::size_t(token) >= matcher->n_vocab)
      raise(QLLM_ERR_INVALID_ARGUMENT, "token " + std::to_string(token) + " is outside the vocabulary");
    matcher->gm.accept(token);
  });
}

QLLM_EXPORT qllm_status qllm_matcher_accept_text(qllm_matcher* matcher, const char* text, size_t len) {
  return guarded("qllm_matcher_accept_text", [&] {
    need(matcher, "matcher");
    if (!matcher->gm.accept_text(text_of(text, len, "text")))
      raise(QLLM_ERR_INVALID_ARGUMENT, "the grammar does not allow this text here");
  });
}

QLLM_EXPORT qllm_status qllm_matcher_state(const qllm_matcher* matcher, int32_t* can_end, int32_t* must_end) {
  return guarded("qllm_matcher_state", [&] {
    need(matcher, "matcher");
    if (can_end) *can_end = matcher->gm.can_end() ? 1 : 0;
    if (must_end) *must_end = matcher->gm.must_end() ? 1 : 0;
  });
}

QLLM_EXPORT qllm_status qllm_matcher_reset(qllm_matcher* matcher) {
  return guarded("qllm_matcher_reset", [&] {
    need(matcher, "matcher");
    matcher->gm.reset();
  });
}

}  // extern "C"
