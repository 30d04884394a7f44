// Fuzz target: grammars from untrusted text (the server compiles what clients send). The first
// byte picks GBNF (even) or JSON Schema (odd); the rest is the text. Compiling either succeeds or
// throws qllm::error with a message. A compiled grammar then drives a matcher over the real
// Llama-2 vocabulary for a few tokens picked by the input: every token the mask allows must be
// accepted, the text so far must be accepted by a fresh matcher in one piece, and the mask must
// never be empty before the grammar's end (every byte is a token in this vocabulary, so a viable
// prefix always has a next token).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "llama2_vocab.hpp"
#include "qllm/error.hpp"
#include "qllm/grammar.hpp"

#ifndef QLLM_TEST_DATA
#error "QLLM_TEST_DATA must name tests/data"
#endif

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace qllm;
  static const auto tok = test::llama2_tokenizer(QLLM_TEST_DATA);
  if (size == 0 || size > 4096) return 0;
  const bool schema = data[0] & 1;
  const std::string text(reinterpret_cast<const char*>(data + 1), size - 1);
  std::shared_ptr<const grammar> g;
  try {
    g = schema ? grammar::from_json_schema(text) : grammar::from_gbnf(text);
  } catch (const error& e) {
    if (e.what()[0] == '\0') std::abort();
    return 0;
  }
  try {
    grammar_matcher m(g, *tok);
    std::vector<bool> ok;
    std::string so_far;
    uint32_t pick = 2166136261u;
    for (size_t i = 0; i < size; ++i) pick = (pick ^ data[i]) * 16777619u;
    for (int step = 0; step < 8; ++step) {
      m.allowed(ok);
      std::vector<int32_t> allowed;
      for (int32_t t = 0; t < tok->n_vocab(); ++t)
        if (ok[std::size_t(t)]) allowed.push_back(t);
      if (allowed.empty()) std::abort();  // nothing allowed: not even EOS at the grammar's end
      if (m.can_end() != bool(ok[std::size_t(tok->eos())])) std::abort();
      pick = pick * 1103515245u + 12345u;
      const int32_t t = allowed[(pick >> 8) % allowed.size()];
      m.accept(t);  // allowed: must be accepted (throws otherwise, which aborts below)
      if (t == tok->eos()) break;
      so_far += tok->token_text(t);
      grammar_matcher fresh(g, *tok);
      if (!fresh.accept_text(so_far)) std::abort();
    }
  } catch (const error& e) {
    // a grammar too ambiguous to follow (more parses than the bound) is an error, not a crash
    if (e.code() != errc::unsupported || std::string(e.what()).find("too ambiguous") == std::string::npos) std::abort();
  }
  return 0;
}
