// The cost of grammar-constrained decoding on the Llama-2 vocabulary (32,000 pieces): compiling a
// grammar, and the mask + accept of every token of a JSON answer (items = tokens). Compare the
// time per token with a decode step of the model (docs/performance.md).
#include <benchmark/benchmark.h>

#include <string>
#include <vector>

#include "llama2_vocab.hpp"
#include "qllm/grammar.hpp"
#include "qllm/tokenizer.hpp"

using namespace qllm;

namespace {

const tokenizer& llama2() {
  static const auto t = test::llama2_tokenizer(QLLM_TEST_DATA);
  return *t;
}

// An answer as a model would write it: nested objects, an array, numbers, escapes, non-ASCII.
const char* kAnswer = R"({
  "title": "Die Bibel \u00fcbersetzt, 1534",
  "authors": [{"name": "Martin Luther", "born": 1483, "died": 1546}, {"name": "Philipp Melanchthon", "born": 1497}],
  "pages": 1862,
  "price": -12.5e-1,
  "tags": ["history", "religion", "Reformation", "typography"],
  "available": true,
  "note": "printed in Wittenberg by Hans Lufft; the \"Lutherbibel\" \u2014 first complete edition",
  "ratings": {"average": 4.75, "count": 2893, "sources": ["library", "reviews"]},
  "isbn": null
})";

// A text's tokens as the model would emit them (sentencepiece's dummy-prefix space dropped).
std::vector<std::string> pieces_of(const std::string& text) {
  const auto ids = llama2().encode(text, false);
  std::vector<std::string> out;
  for (int32_t id : ids) out.push_back(llama2().token_text(id));
  if (!out.empty() && !out[0].empty() && out[0][0] == ' ') out[0].erase(0, 1);
  return out;
}


// mask + accept for every piece, a new matcher of g per iteration (items = tokens)
void mask_all(benchmark::State& state, const std::shared_ptr<const grammar>& g, const std::vector<std::string>& pieces) {
  std::vector<float> logits(std::size_t(llama2().n_vocab()));
  for (auto _ : state) {
    grammar_matcher m(g, llama2());
    for (const auto& p : pieces) {
      std::fill(logits.begin(), logits.end(), 0.0f);
      m.mask(logits);
      if (!m.accept_text(p)) state.SkipWithError("the answer does not follow the grammar");
    }
  }
  state.SetItemsProcessed(int64_t(state.iterations()) * int64_t(pieces.size()));
  state.counters["tokens"] = double(pieces.size());
}

void BM_compile_json_object(benchmark::State& state) {
  for (auto _ : state) benchmark::DoNotOptimize(grammar::from_gbnf(grammar::json_object_gbnf()));
}
BENCHMARK(BM_compile_json_object)->Unit(benchmark::kMicrosecond);

// a schema with nesting, bounds, a recursive $ref and alternatives, to a compiled grammar
void BM_compile_json_schema(benchmark::State& state) {
  const char* schema = R"({"type":"object","properties":{
    "name":{"type":"string","minLength":1,"maxLength":40},
    "age":{"type":"integer","minimum":0,"maximum":150},
    "address":{"type":"object","properties":{"city":{"type":"string"},"zip":{"type":"string","maxLength":10}},
               "required":["city"],"additionalProperties":false},
    "tags":{"type":"array","items":{"enum":["a","b","c","d"]},"maxItems":8},
    "tree":{"$ref":"#/$defs/node"},
    "value":{"anyOf":[{"type":"number"},{"type":"string","maxLength":12},{"type":"null"}]}},
    "required":["name","age"],"additionalProperties":false,
    "$defs":{"node":{"type":"object","properties":{"label":{"type":"string"},
             "children":{"type":"array","items":{"$ref":"#/$defs/node"}}},"additionalProperties":false}}})";
  for (auto _ : state) benchmark::DoNotOptimize(grammar::from_json_schema(schema));
}
BENCHMARK(BM_compile_json_schema)->Unit(benchmark::kMicrosecond);

void BM_trie_and_matcher(benchmark::State& state) {  // the first matcher of a vocabulary builds its trie
  const auto g = grammar::json_object();
  for (auto _ : state) {
    grammar_matcher m(g, llama2());
    benchmark::DoNotOptimize(m);
  }
}
BENCHMARK(BM_trie_and_matcher)->Unit(benchmark::kMicrosecond);

// mask + accept for every token of the answer, a new matcher each time (a generation: its masks
// cached by parse state as it goes)
void BM_mask_json_answer(benchmark::State& state) { mask_all(state, grammar::json_object(), pieces_of(kAnswer)); }
BENCHMARK(BM_mask_json_answer)->Unit(benchmark::kMillisecond);

// mask + accept per token of an array of N copies of the answer: the time per token (items/s) must
// not fall as N grows, since the parse state is as deep as the nesting, not as long as the text
void BM_mask_long_answer(benchmark::State& state) {
  std::string text = "[";
  for (int64_t i = 0; i < state.range(0); ++i) {
    if (i) text += ", ";
    text += kAnswer;
  }
  text += "]";
  mask_all(state, grammar::from_gbnf(std::string(grammar::json_object_gbnf()) + "\nanswer ::= array", "answer"),
           pieces_of(text));
}
BENCHMARK(BM_mask_long_answer)->Arg(1)->Arg(8)->Arg(32)->Unit(benchmark::kMillisecond);

// a JSON Schema answer with bounded numbers (the widest digit-range rules)
void BM_mask_bounded_numbers(benchmark::State& state) {
  const auto g = grammar::from_json_schema(R"({"type":"array","items":{"type":"object","properties":{
    "price":{"type":"number","minimum":0,"exclusiveMaximum":1000},"score":{"type":"number","minimum":-1.5,"maximum":1.5}},
    "required":["price","score"],"additionalProperties":false}})");
  std::string text = "[";
  for (int i = 0; i < 40; ++i) {
    if (i) text += ", ";
    text += "{\"price\": ";
    text += std::to_string(i * 23 % 1000);
    text += ".";
    text += std::to_string(i % 10);
    text += ", \"score\": ";
    text += i % 2 ? "-1." : "1.";
    text += std::to_string(i % 5);
    text += std::to_string(i % 7);
    text += "}";
  }
  text += "]";
  mask_all(state, g, pieces_of(text));
}
BENCHMARK(BM_mask_bounded_numbers)->Unit(benchmark::kMillisecond);

// the widest mask: inside a JSON string, where almost every token may come next (a new matcher
// each time: not cached)
void BM_mask_inside_string(benchmark::State& state) {
  std::vector<float> logits(std::size_t(llama2().n_vocab()));
  for (auto _ : state) {
    state.PauseTiming();
    grammar_matcher m(grammar::json_object(), llama2());
    if (!m.accept_text("{\"note\": \"in the")) state.SkipWithError("prefix");
    state.ResumeTiming();
    std::fill(logits.begin(), logits.end(), 0.0f);
    m.mask(logits);
  }
  int allowed = 0;
  for (float x : logits) allowed += x == 0.0f;
  state.counters["allowed"] = allowed;
}
BENCHMARK(BM_mask_inside_string)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
