// The C ABI of grammars (0.8): compile errors are statuses with the C++ core's message, generation
// with a grammar gives the C++ session's text, and a matcher driven by hand (eval, mask, sample,
// accept) gives qllm_generate's tokens; misuse is a status, never a crash.
#include <doctest/doctest.h>
#include <unistd.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "qllm.h"
#include "qllm/error.hpp"
#include "qllm/grammar.hpp"
#include "qllm/model.hpp"
#include "qllm/random_model.hpp"
#include "qllm/session.hpp"
#include "test_util.hpp"

namespace {

const std::string kShipped = std::string(QLLM_MODELS_DIR) + "/tiny-kjv.q8_0.gguf";

const char* kWords = R"(root ::= "The " word (", " word){2,5} "."
word ::= [a-z]{2,8})";

std::string c_error() { return qllm_last_error(); }

// The C++ core's error for the same input ("" when it compiles).
template <class F>
std::string core_error(F&& f, qllm::errc* code) {
  try {
    f();
  } catch (const qllm::error& e) {
    *code = e.code();
    return e.what();
  }
  return "";
}

struct loaded {
  qllm_model* m = nullptr;
  loaded() { REQUIRE(qllm_model_load(kShipped.c_str(), nullptr, &m) == QLLM_OK); }
  ~loaded() { qllm_model_free(m); }
};

qllm_session* session_of(qllm_model* m, float temperature, uint64_t seed) {
  qllm_session_params p;
  REQUIRE(qllm_session_params_init(&p, sizeof p) == QLLM_OK);
  p.temperature = temperature;
  p.seed = seed;
  p.n_ctx = 256;
  qllm_session* s = nullptr;
  REQUIRE(qllm_session_create(m, &p, &s) == QLLM_OK);
  return s;
}

std::string output_of(qllm_session* s) {
  const char* out = nullptr;
  size_t len = 0;
  REQUIRE(qllm_session_output(s, &out, &len) == QLLM_OK);
  return std::string(out, len);
}

// Whether the C++ matcher takes text as a complete string of g's language.
bool complete_in(const std::shared_ptr<const qllm::grammar>& g, const qllm::model& m, const std::string& text) {
  qllm::grammar_matcher gm(g, *m.get_tokenizer());
  return gm.accept_text(text) && gm.can_end();
}

}  // namespace

TEST_CASE("C ABI grammars: errors carry the core's status and message; NULLs are statuses") {
  struct bad {
    const char* text;
    bool schema;
  };
  for (const bad& b : {bad{"root ::= (\"a\"", false}, bad{"root ::= \"a\" b", false}, bad{"root ::= root \"a\"", false},
                       bad{"start ::= \"a\"", false}, bad{"", false}, bad{"{not json", true},
                       bad{R"({"type": "string", "pattern": "^a+$"})", true},
                       bad{R"({"type": "object", "patternProperties": {"a": {}}})", true}}) {
    CAPTURE(b.text);
    qllm::errc code{};
    const std::string want = core_error(
        [&] { b.schema ? (void)qllm::grammar::from_json_schema(b.text) : (void)qllm::grammar::from_gbnf(b.text); },
        &code);
    REQUIRE(!want.empty());
    qllm_grammar* g = reinterpret_cast<qllm_grammar*>(&code);  // must be overwritten with NULL
    const qllm_status st = b.schema ? qllm_grammar_from_json_schema(b.text, std::strlen(b.text), &g)
                                    : qllm_grammar_from_gbnf(b.text, std::strlen(b.text), &g);
    CHECK(g == nullptr);
    CHECK(st == (code == qllm::errc::unsupported ? QLLM_ERR_UNSUPPORTED : QLLM_ERR_INVALID_ARGUMENT));
    CHECK(c_error().find(want) != std::string::npos);
    size_t n = 0;
    if (b.schema) CHECK(qllm_grammar_gbnf_from_json_schema(b.text, std::strlen(b.text), nullptr, 0, &n) == st);
  }
  qllm_grammar* g = nullptr;
  CHECK(qllm_grammar_from_gbnf(nullptr, 3, &g) == QLLM_ERR_INVALID_ARGUMENT);
  CHECK(qllm_grammar_from_gbnf("root ::= \"a\"", 12, nullptr) == QLLM_ERR_INVALID_ARGUMENT);
  CHECK(qllm_grammar_from_json_schema(nullptr, 1, &g) == QLLM_ERR_INVALID_ARGUMENT);
  CHECK(qllm_grammar_json_object(nullptr) == QLLM_ERR_INVALID_ARGUMENT);
  CHECK(qllm_grammar_gbnf_from_json_schema("{}", 2, nullptr, 0, nullptr) == QLLM_ERR_INVALID_ARGUMENT);
  qllm_grammar_free(nullptr);
  qllm_matcher_free(nullptr);
  qllm_matcher* mt = nullptr;
  CHECK(qllm_matcher_create(nullptr, nullptr, &mt) == QLLM_ERR_INVALID_ARGUMENT);
  float f = 0;
  CHECK(qllm_matcher_mask(nullptr, &f, 1) == QLLM_ERR_INVALID_ARGUMENT);
  CHECK(qllm_matcher_mask_session(nullptr, nullptr) == QLLM_ERR_INVALID_ARGUMENT);
  CHECK(qllm_matcher_accept(nullptr, 0) == QLLM_ERR_INVALID_ARGUMENT);
  CHECK(qllm_matcher_accept_text(nullptr, "a", 1) == QLLM_ERR_INVALID_ARGUMENT);
  CHECK(qllm_matcher_state(nullptr, nullptr, nullptr) == QLLM_ERR_INVALID_ARGUMENT);
  CHECK(qllm_matcher_reset(nullptr) == QLLM_ERR_INVALID_ARGUMENT);

  // the text is taken by length: no NUL needed, bytes after len ignored
  const char with_tail[] = "root ::= \"a\"GARBAGE";
  REQUIRE(qllm_grammar_from_gbnf(with_tail, 12, &g) == QLLM_OK);
  qllm_grammar_free(g);

  // a schema's GBNF: buffer convention, the C++ text, and it compiles
  const std::string schema = R"({"type": "object", "properties": {"n": {"type": "integer", "minimum": 3}}, "required": ["n"]})";
  const std::string want = qllm::grammar::gbnf_from_json_schema(schema);
  size_t n = 0;
  CHECK(qllm_grammar_gbnf_from_json_schema(schema.data(), schema.size(), nullptr, 0, &n) == QLLM_ERR_BUFFER_TOO_SMALL);
  CHECK(n == want.size());
  std::vector<char> buf(n + 1, 'x');
  REQUIRE(qllm_grammar_gbnf_from_json_schema(schema.data(), schema.size(), buf.data(), buf.size(), &n) == QLLM_OK);
  CHECK(std::string(buf.data()) == want);
  REQUIRE(qllm_grammar_from_gbnf(buf.data(), n, &g) == QLLM_OK);
  qllm_grammar_free(g);

  // a model without a vocabulary cannot have a matcher
  const std::string path = "/tmp/qllm_test_capi_grammar_" + std::to_string(getpid()) + ".gguf";
  qllm::random_model_spec spec;
  spec.vocabulary = false;
  qllm::write_random_model(path, spec);
  qllm_model* m = nullptr;
  REQUIRE(qllm_model_load(path.c_str(), nullptr, &m) == QLLM_OK);
  std::remove(path.c_str());
  REQUIRE(qllm_grammar_json_object(&g) == QLLM_OK);
  CHECK(qllm_matcher_create(g, m, &mt) == QLLM_ERR_UNSUPPORTED);
  CHECK(mt == nullptr);
  CHECK(c_error().find("no vocabulary") != std::string::npos);
  qllm_grammar_free(g);
  qllm_model_free(m);
}

TEST_CASE("C ABI generation with a grammar: the C++ session's text, greedy and sampled; 0.7 callers are unconstrained") {
  loaded h;
  const auto core_model = qllm::model::load(kShipped);
  const auto core_g = qllm::grammar::from_gbnf(kWords);
  qllm_grammar* g = nullptr;
  REQUIRE(qllm_grammar_from_gbnf(kWords, std::strlen(kWords), &g) == QLLM_OK);
  const std::string prompt = "And the LORD said unto Moses,";
  qllm_generate_params gp;
  REQUIRE(qllm_generate_params_init(&gp, sizeof gp) == QLLM_OK);
  CHECK(gp.grammar == nullptr);
  gp.max_tokens = 60;
  gp.grammar = g;
  for (const float temperature : {0.0f, 0.9f}) {
    for (const uint64_t seed : {1u, 2u, 3u}) {
      CAPTURE(temperature);
      CAPTURE(seed);
      qllm_session* s = session_of(h.m, temperature, seed);
      qllm_generate_result r{};
      r.struct_size = sizeof r;
      REQUIRE(qllm_generate(s, prompt.data(), prompt.size(), &gp, &r) == QLLM_OK);
      const std::string text = output_of(s);
      qllm_session_free(s);
      // the C++ session with the same settings
      qllm::session_params sp;
      sp.ctx.n_ctx = 256;
      sp.sampling.temperature = temperature;
      sp.sampling.seed = seed;
      qllm::session cs(core_model, sp);
      qllm::generate_params cg;
      cg.max_tokens = 60;
      cg.constraint = core_g;
      const auto cr = cs.generate(prompt, cg);
      CHECK(text == cr.text);
      CHECK(r.finish_reason == QLLM_FINISH_EOS);
      CHECK(complete_in(core_g, *core_model, text));
      CHECK(text.rfind("The ", 0) == 0);
      if (temperature == 0.0f) break;  // greedy: one seed is enough
    }
  }
  // a 0.7 caller's struct ends at speculation: whatever lies after it is not read
  qllm_session* s = session_of(h.m, 0.0f, 1);
  qllm_generate_params plain;
  REQUIRE(qllm_generate_params_init(&plain, sizeof plain) == QLLM_OK);
  plain.max_tokens = 24;
  plain.stop_at_eos = 0;
  REQUIRE(qllm_generate(s, prompt.data(), prompt.size(), &plain, nullptr) == QLLM_OK);
  const std::string free_text = output_of(s);
  CHECK_FALSE(complete_in(core_g, *core_model, free_text));
  plain.grammar = g;
  plain.struct_size = offsetof(qllm_generate_params, grammar);
  REQUIRE(qllm_generate(s, prompt.data(), prompt.size(), &plain, nullptr) == QLLM_OK);
  CHECK(output_of(s) == free_text);
  plain.struct_size = offsetof(qllm_generate_params, grammar) + 4;  // inside the pointer
  CHECK(qllm_generate(s, prompt.data(), prompt.size(), &plain, nullptr) == QLLM_ERR_INVALID_ARGUMENT);

  // chain of thought: the grammar shapes the answer, not the reasoning
  qllm_cot_params cot;
  REQUIRE(qllm_cot_params_init(&cot, sizeof cot) == QLLM_OK);
  gp.max_tokens = 24;
  REQUIRE(qllm_generate_cot(s, prompt.data(), prompt.size(), &gp, &cot, nullptr) == QLLM_OK);
  const std::string answer = output_of(s);
  const char* reasoning = nullptr;
  REQUIRE(qllm_session_reasoning(s, &reasoning, nullptr) == QLLM_OK);
  CHECK(complete_in(core_g, *core_model, answer));
  CHECK_FALSE(complete_in(core_g, *core_model, reasoning));
  qllm_session_free(s);
  qllm_grammar_free(g);

  // a JSON Schema: the answer parses and keeps the schema's bounds (nlohmann as the judge)
  const std::string schema = R"({"type": "object", "properties": {
      "name": {"type": "string", "maxLength": 12},
      "age": {"type": "integer", "minimum": 0, "maximum": 150}},
    "required": ["name", "age"], "additionalProperties": false})";
  REQUIRE(qllm_grammar_from_json_schema(schema.data(), schema.size(), &g) == QLLM_OK);
  gp.grammar = g;
  gp.max_tokens = 80;
  int complete = 0;
  for (const uint64_t seed : {1u, 2u, 3u, 4u}) {
    CAPTURE(seed);
    s = session_of(h.m, 0.8f, seed);
    qllm_generate_result r{};
    r.struct_size = sizeof r;
    REQUIRE(qllm_generate(s, prompt.data(), prompt.size(), &gp, &r) == QLLM_OK);
    const std::string text = output_of(s);
    qllm_session_free(s);
    CAPTURE(text);
    if (r.finish_reason != QLLM_FINISH_EOS) {
      CHECK(r.finish_reason == QLLM_FINISH_MAX_TOKENS);
      continue;
    }
    ++complete;
    const auto j = nlohmann::json::parse(text, nullptr, false);
    REQUIRE(j.is_object());
    CHECK(j.size() == 2);
    REQUIRE(j.contains("name"));
    REQUIRE(j.contains("age"));
    CHECK(j["age"].is_number_integer());
    CHECK(j["age"].get<int64_t>() >= 0);
    CHECK(j["age"].get<int64_t>() <= 150);
    REQUIRE(j["name"].is_string());
    // maxLength counts code points
    const std::string name = j["name"].get<std::string>();
    std::size_t cps = 0;
    for (unsigned char c : name) cps += (c & 0xC0) != 0x80;
    CHECK(cps <= 12);
  }
  CHECK(complete >= 2);
  qllm_grammar_free(g);
}

TEST_CASE("C ABI matcher: eval, mask, sample and accept by hand give qllm_generate's tokens") {
  loaded h;
  const auto core_model = qllm::model::load(kShipped);
  const auto core_g = qllm::grammar::from_gbnf(kWords);
  qllm_model_info info{};
  info.struct_size = sizeof info;
  REQUIRE(qllm_model_get_info(h.m, &info) == QLLM_OK);
  const std::string prompt = "In the beginning";
  std::vector<int32_t> ids(64);
  size_t n_ids = 0;
  REQUIRE(qllm_tokenize(h.m, prompt.data(), prompt.size(), 1, ids.data(), ids.size(), &n_ids) == QLLM_OK);
  ids.resize(n_ids);

  for (const float temperature : {0.0f, 0.9f}) {
    CAPTURE(temperature);
    qllm_grammar* g = nullptr;
    REQUIRE(qllm_grammar_from_gbnf(kWords, std::strlen(kWords), &g) == QLLM_OK);
    qllm_matcher* mt = nullptr;
    REQUIRE(qllm_matcher_create(g, h.m, &mt) == QLLM_OK);
    // qllm_generate_tokens with the grammar
    qllm_session* ref = session_of(h.m, temperature, 5);
    qllm_generate_params gp;
    REQUIRE(qllm_generate_params_init(&gp, sizeof gp) == QLLM_OK);
    gp.max_tokens = 60;
    gp.grammar = g;
    REQUIRE(qllm_generate_tokens(ref, ids.data(), ids.size(), &gp, nullptr) == QLLM_OK);
    const std::string want = output_of(ref);
    qllm_session_free(ref);
    qllm_grammar_free(g);  // the matcher keeps it alive

    // by hand
    qllm_session* s = session_of(h.m, temperature, 5);
    CHECK(qllm_matcher_mask_session(mt, s) == QLLM_ERR_INVALID_ARGUMENT);  // no logits yet
    REQUIRE(qllm_session_eval(s, ids.data(), ids.size()) == QLLM_OK);
    std::vector<int32_t> out;
    bool ended = false;
    for (int i = 0; i < 60 && !ended; ++i) {
      REQUIRE(qllm_matcher_mask_session(mt, s) == QLLM_OK);
      const float* logits = nullptr;
      size_t n_vocab = 0;
      REQUIRE(qllm_session_logits(s, &logits, &n_vocab) == QLLM_OK);
      // the session's logits are masked in place, exactly as the C++ matcher's allowed set says
      qllm::grammar_matcher cm(core_g, *core_model->get_tokenizer());
      std::string so_far(64 * 8, '\0');
      size_t len = 0;
      REQUIRE(qllm_detokenize(h.m, out.data(), out.size(), so_far.data(), so_far.size(), &len) == QLLM_OK);
      REQUIRE(cm.accept_text(so_far.substr(0, len)));
      std::vector<bool> allowed;
      cm.allowed(allowed);
      REQUIRE(allowed.size() == n_vocab);
      std::size_t mismatches = 0;
      for (std::size_t t = 0; t < n_vocab; ++t) mismatches += allowed[t] != !std::isinf(logits[t]);
      CHECK(mismatches == 0);
      int32_t tok = -1;
      REQUIRE(qllm_session_sample(s, &tok) == QLLM_OK);
      if (tok == info.eos_token) {  // the grammar's "." ends it: EOS is all that may come
        int32_t can_end = -1, must_end = -1;
        REQUIRE(qllm_matcher_state(mt, &can_end, &must_end) == QLLM_OK);
        CHECK(can_end == 1);
        CHECK(must_end == 1);
      }
      REQUIRE(qllm_matcher_accept(mt, tok) == QLLM_OK);
      if (tok == info.eos_token) {
        ended = true;
      } else {
        out.push_back(tok);
        REQUIRE(qllm_session_eval(s, &tok, 1) == QLLM_OK);
      }
    }
    CHECK(ended);
    std::string text(64 * 8, '\0');
    size_t len = 0;
    REQUIRE(qllm_detokenize(h.m, out.data(), out.size(), text.data(), text.size(), &len) == QLLM_OK);
    text.resize(len);
    CHECK(text == want);
    int32_t can_end = -1, must_end = -1;
    REQUIRE(qllm_matcher_state(mt, &can_end, &must_end) == QLLM_OK);
    CHECK(can_end == 0);  // after EOS nothing more, not even EOS
    CHECK(must_end == 0);
    CHECK(qllm_matcher_accept(mt, out.front()) == QLLM_ERR_INVALID_ARGUMENT);  // nothing after EOS

    // back to the start: refusals leave the matcher as it was
    REQUIRE(qllm_matcher_reset(mt) == QLLM_OK);
    REQUIRE(qllm_matcher_state(mt, &can_end, &must_end) == QLLM_OK);
    CHECK(can_end == 0);
    CHECK(must_end == 0);
    CHECK(qllm_matcher_accept(mt, info.eos_token) == QLLM_ERR_INVALID_ARGUMENT);
    CHECK(c_error().find("EOS") != std::string::npos);
    CHECK(qllm_matcher_accept(mt, -1) == QLLM_ERR_INVALID_ARGUMENT);
    CHECK(qllm_matcher_accept(mt, int32_t(info.n_vocab)) == QLLM_ERR_INVALID_ARGUMENT);
    CHECK(qllm_matcher_accept_text(mt, "A ", 2) == QLLM_ERR_INVALID_ARGUMENT);
    CHECK(qllm_matcher_accept_text(mt, "The ab, cd", 10) == QLLM_OK);
    CHECK(qllm_matcher_accept_text(mt, "!", 1) == QLLM_ERR_INVALID_ARGUMENT);
    CHECK(qllm_matcher_accept_text(mt, ", ef.", 5) == QLLM_OK);
    REQUIRE(qllm_matcher_state(mt, &can_end, nullptr) == QLLM_OK);
    CHECK(can_end == 1);
    // a buffer of the wrong size is refused, one of the right size masked
    std::vector<float> buf(std::size_t(info.n_vocab), 0.0f);
    CHECK(qllm_matcher_mask(mt, buf.data(), buf.size() - 1) == QLLM_ERR_INVALID_ARGUMENT);
    CHECK(qllm_matcher_mask(mt, nullptr, buf.size()) == QLLM_ERR_INVALID_ARGUMENT);
    REQUIRE(qllm_matcher_mask(mt, buf.data(), buf.size()) == QLLM_OK);
    std::size_t open = 0;
    for (std::size_t t = 0; t < buf.size(); ++t) open += !std::isinf(buf[t]);
    CHECK(open == 1);  // only EOS after the final "."
    CHECK(!std::isinf(buf[std::size_t(info.eos_token)]));
    qllm_session_free(s);
    qllm_matcher_free(mt);
  }
}

TEST_CASE("C ABI matcher: a session of another model must have the matcher's vocabulary") {
  loaded h;
  qllm_model_info info{};
  info.struct_size = sizeof info;
  REQUIRE(qllm_model_get_info(h.m, &info) == QLLM_OK);
  qllm_grammar* g = nullptr;
  REQUIRE(qllm_grammar_from_gbnf(kWords, std::strlen(kWords), &g) == QLLM_OK);
  qllm_matcher* mt = nullptr;
  REQUIRE(qllm_matcher_create(g, h.m, &mt) == QLLM_OK);
  qllm_grammar_free(g);
  const int32_t bos = info.bos_token;
  // the same file loaded again: another model, the same vocabulary
  {
    loaded again;
    qllm_session* s = session_of(again.m, 0.0f, 1);
    REQUIRE(qllm_session_eval(s, &bos, 1) == QLLM_OK);
    CHECK(qllm_matcher_mask_session(mt, s) == QLLM_OK);
    CHECK(qllm_matcher_mask_session(mt, s) == QLLM_OK);  // checked once, remembered
    qllm_session_free(s);
  }
  // a vocabulary of the same size with other pieces
  const std::string path = "/tmp/qllm_test_capi_grammar_vocab_" + std::to_string(getpid()) + ".gguf";
  qllm::random_model_spec spec;
  spec.n_vocab = info.n_vocab;
  qllm::write_random_model(path, spec);
  qllm_model* other = nullptr;
  REQUIRE(qllm_model_load(path.c_str(), nullptr, &other) == QLLM_OK);
  std::remove(path.c_str());
  qllm_session* s = session_of(other, 0.0f, 1);
  REQUIRE(qllm_session_eval(s, &bos, 1) == QLLM_OK);
  const float* before = nullptr;
  size_t n = 0;
  REQUIRE(qllm_session_logits(s, &before, &n) == QLLM_OK);
  const std::vector<float> copy(before, before + n);
  CHECK(qllm_matcher_mask_session(mt, s) == QLLM_ERR_INVALID_ARGUMENT);
  CHECK(c_error().find("another vocabulary") != std::string::npos);
  const float* after = nullptr;
  REQUIRE(qllm_session_logits(s, &after, &n) == QLLM_OK);
  CHECK(std::vector<float>(after, after + n) == copy);  // untouched
  qllm_session_free(s);
  qllm_model_free(other);
  qllm_matcher_free(mt);
}
