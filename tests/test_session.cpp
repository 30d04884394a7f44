// Sessions on small random-weight models: context policies, context shift, streaming generation.
#include <doctest/doctest.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "qllm/error.hpp"
#include "qllm/gguf.hpp"
#include "qllm/random_model.hpp"
#include "qllm/session.hpp"
#include "session/lookup.hpp"
#include "test_util.hpp"

using namespace qllm;

namespace {

struct temp_model {
  std::string path;
  std::shared_ptr<const model> m;
  explicit temp_model(const std::string& tag, random_model_spec spec) {
    path = "/tmp/qllm_test_session_" + std::to_string(getpid()) + "_" + tag + ".gguf";
    write_random_model(path, spec);
    m = model::load(path);
  }
  ~temp_model() { std::remove(path.c_str()); }
};

const temp_model& tiny() {
  static temp_model t("tiny", random_model_spec{});
  return t;
}

// Draft models for tiny(): the same weights in Q8_0 (a near distribution) and other weights.
const temp_model& tiny_near() {
  random_model_spec s;
  s.type = ggml_type::q8_0;
  static temp_model t("tiny_near", s);
  return t;
}
const temp_model& tiny_other() {
  random_model_spec s;
  s.seed = 7;
  static temp_model t("tiny_other", s);
  return t;
}

double rel_rms(std::span<const float> a, std::span<const float> b) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  return std::sqrt(num / den);
}

std::vector<int32_t> some_tokens(int n, int32_t salt = 0) {
  std::vector<int32_t> t{1};
  for (int i = 1; i < n; ++i) t.push_back(int32_t(3 + (i * 37 + salt * 11) % 500));
  return t;
}

session_params greedy(int64_t n_ctx = 128) {
  session_params p;
  p.ctx.n_ctx = n_ctx;
  p.sampling.temperature = 0;
  return p;
}

}  // namespace

// With one layer, keys and values depend only on each token and its position, so a shift that
// re-rotates the keys must reproduce a fresh evaluation of the kept tokens. (With more layers the
// later layers' entries still carry the dropped tokens' influence: the usual approximation.)
TEST_CASE("context shift: logits equal a fresh evaluation of the kept tokens") {
  for (const auto type : {ggml_type::f32, ggml_type::q8_0}) {
    random_model_spec spec;
    spec.type = type;
    spec.n_layer = 1;
    spec.n_head_kv = 2;  // GQA: the shift rotates kv heads
    temp_model tm("shift" + std::to_string(int(type)), spec);
    for (const auto kv : {kv_type::f32, kv_type::f16}) {
      CAPTURE(int(type));
      CAPTURE(int(kv));
      context_params cp;
      cp.n_ctx = 64;
      cp.kv = kv;
      const auto toks = some_tokens(40);
      const int64_t keep = 5, drop = 17;
      context a(tm.m, cp);
      a.eval(toks);
      a.shift(keep, drop);
      CHECK(a.n_past() == 40 - drop);
      const int32_t next = 77;
      const auto la = a.eval(std::span<const int32_t>(&next, 1));
      const std::vector<float> shifted(la.begin(), la.end());

      std::vector<int32_t> kept(toks.begin(), toks.begin() + keep);
      kept.insert(kept.end(), toks.begin() + keep + drop, toks.end());
      kept.push_back(next);
      context b(tm.m, cp);
      const auto lb = b.eval(kept);
      const double err = rel_rms(shifted, lb);
      MESSAGE("shift error: ", err);
      // f16 keys are rounded twice (before and after the rotation); through Q8_0 activations that
      // rounding moves logits by about 1e-2 (the model's whole Q8_0 budget is 3e-2)
      const double budget = kv == kv_type::f32 ? 1e-5 : (type == ggml_type::f32 ? 2e-3 : 2e-2);
      CHECK(err < budget);
      // without the re-rotation the keys are at the wrong positions: clearly different
      context c(tm.m, cp);
      std::vector<int32_t> wrong(toks.begin(), toks.begin() + keep);
      c.eval(wrong);
      CHECK(rel_rms(shifted, c.eval(std::span<const int32_t>(&next, 1))) > 1e-2);
    }
  }
  {  // llama3 RoPE scaling: the shift's rotation by -d uses the same per-frequency factors
    random_model_spec spec;
    spec.type = ggml_type::f32;
    spec.n_layer = 1;
    spec.n_head_kv = 2;
    spec.rope_freqs = {1.0f, 1.7f, 8.0f, 8.0f, 8.0f, 8.0f, 8.0f, 8.0f};  // head dim 16: 8 frequencies
    temp_model tm("shift_llama3", spec);
    context_params cp;
    cp.n_ctx = 64;
    cp.kv = kv_type::f32;
    const auto toks = some_tokens(40);
    context a(tm.m, cp);
    a.eval(toks);
    a.shift(5, 17);
    const int32_t next = 77;
    const auto la = a.eval(std::span<const int32_t>(&next, 1));
    const std::vector<float> shifted(la.begin(), la.end());
    std::vector<int32_t> kept(toks.begin(), toks.begin() + 5);
    kept.insert(kept.end(), toks.begin() + 22, toks.end());
    kept.push_back(next);
    context b(tm.m, cp);
    CHECK(rel_rms(shifted, b.eval(kept)) < 1e-5);
  }
  context_params cp;
  cp.n_ctx = 32;
  context a(tiny().m, cp);
  a.eval(some_tokens(10));
  CHECK_THROWS_AS(a.shift(5, 6), error);
  CHECK_THROWS_AS(a.shift(-1, 2), error);
  CHECK_THROWS_AS(a.truncate(11), error);
  a.truncate(4);
  CHECK(a.n_past() == 4);
}

TEST_CASE("context policies: error names the numbers; head+tail and tail report what they drop") {
  session_params p = greedy(64);
  session s(tiny().m, p);
  auto toks = some_tokens(100);
  try {
    (void)s.fit(toks, 16);
    FAIL("no error");
  } catch (const error& e) {
    CHECK(e.code() == errc::context_overflow);
    const std::string w = e.what();
    CHECK(w.find("100 tokens") != std::string::npos);
    CHECK(w.find("holds 48") != std::string::npos);
    CHECK(w.find("52 too many") != std::string::npos);
  }
  CHECK(toks.size() == 100);

  p.policy = context_policy::keep_head_and_tail;
  p.n_keep = 6;
  session h(tiny().m, p);
  auto orig = some_tokens(100);
  toks = orig;
  auto f = h.fit(toks, 16);
  CHECK(f.n_tokens == 100);
  CHECK(f.n_dropped == 52);
  CHECK(f.drop_begin == 6);
  CHECK(f.drop_end == 58);
  REQUIRE(toks.size() == 48);
  CHECK(std::equal(toks.begin(), toks.begin() + 6, orig.begin()));
  CHECK(std::equal(toks.begin() + 6, toks.end(), orig.begin() + 58));

  p.policy = context_policy::keep_tail;
  session t(tiny().m, p);
  toks = orig;
  f = t.fit(toks, 16);
  CHECK(f.n_dropped == 52);
  CHECK(f.drop_begin == 0);
  CHECK(f.drop_end == 52);
  CHECK(std::equal(toks.begin(), toks.end(), orig.begin() + 52));

  toks = some_tokens(48);  // fits exactly: nothing dropped
  f = t.fit(toks, 16);
  CHECK(f.n_dropped == 0);
  CHECK(toks.size() == 48);
  CHECK_THROWS_AS((void)t.fit(toks, 64), error);  // no room at all

  // generate() applies the policy and reports it
  generate_params gp;
  gp.max_tokens = 4;
  const auto r = h.generate(some_tokens(100), gp);
  CHECK(r.fit.n_dropped == 100 - (64 - 4));
  CHECK(r.timings.n_prompt == 60);
  CHECK(parse_context_policy("keep_head_and_tail") == context_policy::keep_head_and_tail);
  CHECK(parse_context_policy("keep-tail") == context_policy::keep_tail);
  CHECK_THROWS_AS(parse_context_policy("middle"), error);
}

TEST_CASE("generation: greedy is deterministic, streams the same text it returns, and reuses the cache") {
  session s(tiny().m, greedy());
  generate_params gp;
  gp.max_tokens = 24;
  gp.stop_at_eos = false;
  std::string streamed;
  int calls = 0, end_calls = 0;
  const auto r = s.generate("Hello world", gp, [&](std::string_view text, int32_t token) {
    streamed += text;
    ++calls;
    end_calls += token == -1;
    return true;
  });
  CHECK(r.finish == finish_reason::max_tokens);
  CHECK(r.tokens.size() == 24);
  CHECK(r.timings.n_generated == 24);
  CHECK(calls == 25);
  CHECK(end_calls == 1);
  CHECK(streamed == r.text);
  stream_decoder d(s.tok(), false);  // a continuation keeps the leading space of its first piece
  std::string want;
  for (auto id : r.tokens) want += d.push(id);
  CHECK(r.text == want + d.flush());
  CHECK_FALSE(r.text.empty());
  const auto prompt = s.tokenize("Hello world", true);
  CHECK(r.timings.n_prompt == int64_t(prompt.size()));
  CHECK(s.history().size() == prompt.size() + 23);  // the last sampled token is not evaluated yet

  session s2(tiny().m, greedy());
  const auto r2 = s2.generate("Hello world", gp);
  CHECK(r2.tokens == r.tokens);

  // continuing the same sequence: the prompt's cache entries are reused, tokens unchanged
  std::vector<int32_t> seq = prompt;
  seq.insert(seq.end(), r.tokens.begin(), r.tokens.begin() + 10);
  const auto r3 = s.generate(seq, gp);
  CHECK(r3.timings.n_reused == int64_t(seq.size()) - 1);
  CHECK(r3.timings.n_prompt == 1);
  session fresh(tiny().m, greedy());
  CHECK(fresh.generate(seq, gp).tokens == r3.tokens);
  CHECK(std::equal(r3.tokens.begin(), r3.tokens.begin() + 14, r.tokens.begin() + 10));
}

TEST_CASE("generation: same seed, same tokens with 1 and 3 threads") {
  std::vector<int32_t> first;
  for (int nt : {1, 3}) {
    session_params p;
    p.ctx.n_ctx = 128;
    p.ctx.n_threads = nt;
    p.sampling.temperature = 1.0f;
    p.sampling.top_k = 0;
    p.sampling.top_p = 1.0f;
    p.sampling.min_p = 0.0f;
    p.sampling.seed = 1234;
    session s(tiny().m, p);
    generate_params gp;
    gp.max_tokens = 32;
    gp.stop_at_eos = false;
    const auto r = s.generate(some_tokens(9), gp);
    if (first.empty()) first = r.tokens;
    else CHECK(r.tokens == first);
  }
  REQUIRE(first.size() == 32);
  std::size_t distinct = 0;
  for (std::size_t i = 1; i < first.size(); ++i) distinct += first[i] != first[i - 1];
  CHECK(distinct > 8);  // sampled, not stuck on one token
}

TEST_CASE("generation: stop strings across token boundaries are cut and not emitted") {
  generate_params gp;
  gp.max_tokens = 40;
  gp.stop_at_eos = false;
  session s(tiny().m, greedy());
  const auto full = s.generate(some_tokens(5), gp);
  // a stop string made of the end of one token's text and the start of the next
  std::size_t at = 0, k = 0;
  std::string stop;
  for (k = 6; k + 1 < full.tokens.size() && stop.empty(); ++k) {
    const std::string a = s.tok().token_text(full.tokens[k]), b = s.tok().token_text(full.tokens[k + 1]);
    if (a.size() >= 2 && b.size() >= 2) stop = a.substr(a.size() - 2) + b.substr(0, 2);
  }
  REQUIRE_FALSE(stop.empty());
  at = full.text.find(stop);
  REQUIRE(at != std::string::npos);
  gp.stop = {"never-appears-xyz", stop};
  session s2(tiny().m, greedy());
  std::string streamed;
  const auto r = s2.generate(some_tokens(5), gp, [&](std::string_view t, int32_t) {
    streamed += t;
    return true;
  });
  CHECK(r.finish == finish_reason::stop_string);
  CHECK(r.text == full.text.substr(0, at));
  CHECK(streamed == r.text);
  CHECK(r.tokens.size() < full.tokens.size());

  gp.stop = {""};
  CHECK_THROWS_AS(s2.generate(some_tokens(5), gp), error);
}

TEST_CASE("generation: EOS, cancellation, context full and context shift") {
  generate_params gp;
  gp.max_tokens = 20;
  {
    session_params p = greedy();
    p.sampling.logit_bias = {{2, 1e4f}};  // EOS always wins
    session s(tiny().m, p);
    const auto r = s.generate(some_tokens(4), gp);
    CHECK(r.finish == finish_reason::eos);
    CHECK(r.tokens.empty());
    CHECK(r.text.empty());
    gp.stop_at_eos = false;
    const auto r2 = s.generate(some_tokens(4), gp);
    CHECK(r2.finish == finish_reason::max_tokens);
    CHECK(r2.tokens == std::vector<int32_t>(20, 2));
    gp.stop_at_eos = true;
  }
  {
    session s(tiny().m, greedy());
    int n = 0;
    const auto r = s.generate(some_tokens(4), gp, [&](std::string_view, int32_t) { return ++n < 3; });
    CHECK(r.finish == finish_reason::cancelled);
    CHECK(r.tokens.size() == 3);
  }
  gp.max_tokens = 100;
  gp.stop_at_eos = false;
  {
    session_params p = greedy(32);
    p.context_shift = false;
    session s(tiny().m, p);
    gp.max_tokens = -1;
    const auto r = s.generate(some_tokens(10), gp);
    gp.max_tokens = 100;
    CHECK(r.finish == finish_reason::context_full);
    CHECK(r.tokens.size() == 32 - 10 + 1);
    CHECK(r.n_shifts == 0);
  }
  {
    session_params p = greedy(32);
    p.n_keep = 3;
    session s(tiny().m, p);
    const auto prompt = some_tokens(10);
    const auto r = s.generate(prompt, gp);
    CHECK(r.finish == finish_reason::max_tokens);
    CHECK(r.tokens.size() == 100);
    CHECK(r.n_shifts >= 3);
    CHECK(r.n_shift_dropped >= 3 * 14);
    REQUIRE(s.history().size() <= 32);
    CHECK(std::equal(s.history().begin(), s.history().begin() + 3, prompt.begin()));  // head kept
    CHECK(s.history().back() == r.tokens[r.tokens.size() - 2]);
  }
  {
    session_params p = greedy(32);
    p.context_shift = false;
    session s(tiny().m, p);
    gp.max_tokens = 40;  // reserve larger than the window, no shift to make room
    CHECK_THROWS_AS(s.generate(some_tokens(4), gp), error);
    gp.max_tokens = 4;
    CHECK_THROWS_AS(s.generate(std::vector<int32_t>{}, gp), error);
    CHECK_THROWS_AS(s.generate(std::vector<int32_t>{1, 99999}, gp), error);
    CHECK_THROWS_AS(s.generate("bad \xFF utf-8", gp), error);
  }
}

// Logits are W_out · h for the normalized final hidden state h of each token, so the mean of the
// logits over a sequence is W_out · mean(h): parallel to W_out · embedding.
TEST_CASE("embeddings: mean-pooled final hidden state, L2-normalised") {
  random_model_spec spec;
  spec.type = ggml_type::f32;
  temp_model tm("embed", spec);
  const auto f = gguf::file::open(tm.path);
  const auto* out = f.find_tensor("output.weight");
  REQUIRE(out);
  const auto* W = reinterpret_cast<const float*>(f.tensor_data(*out));
  const int64_t E = tm.m->config().n_embd, V = tm.m->config().n_vocab;
  context_params cp;
  cp.n_ctx = 64;
  cp.kv = kv_type::f32;
  cp.n_batch = 4;  // several passes
  context ctx(tm.m, cp);
  const auto toks = some_tokens(11);
  const auto e = ctx.embed(toks);
  REQUIRE(int64_t(e.size()) == E);
  double norm = 0;
  for (float v : e) norm += double(v) * v;
  CHECK(std::abs(norm - 1.0) < 1e-5);
  CHECK(ctx.n_past() == 11);

  context ref(tm.m, cp);
  const auto all = ref.eval(toks, true);
  std::vector<double> mean(static_cast<std::size_t>(V), 0.0), proj(static_cast<std::size_t>(V), 0.0);
  for (std::size_t t = 0; t < toks.size(); ++t)
    for (int64_t v = 0; v < V; ++v) mean[std::size_t(v)] += all[t * std::size_t(V) + std::size_t(v)];
  for (int64_t v = 0; v < V; ++v)
    for (int64_t i = 0; i < E; ++i) proj[std::size_t(v)] += double(W[v * E + i]) * e[std::size_t(i)];
  double dot = 0, a = 0, b = 0;
  for (int64_t v = 0; v < V; ++v) {
    dot += mean[std::size_t(v)] * proj[std::size_t(v)];
    a += mean[std::size_t(v)] * mean[std::size_t(v)];
    b += proj[std::size_t(v)] * proj[std::size_t(v)];
  }
  const double cosine = dot / std::sqrt(a * b);
  MESSAGE("cosine: ", cosine);
  CHECK(cosine > 0.99999);
  // the same text gives the same vector; another text a different one
  CHECK(ctx.embed(toks) == e);
  const auto other = ctx.embed(some_tokens(11, 5));
  double same = 0;
  for (int64_t i = 0; i < E; ++i) same += double(other[std::size_t(i)]) * e[std::size_t(i)];
  CHECK(same < 0.9999);
  CHECK_THROWS_AS((void)ctx.embed(some_tokens(65)), error);
  CHECK_THROWS_AS((void)ctx.embed(std::vector<int32_t>{}), error);
}

TEST_CASE("per-model kernel table: scalar and the default give the same logits bit for bit") {
  random_model_spec spec;
  spec.type = ggml_type::q4_0;
  temp_model tm("isa", spec);
  model_options o;
  o.isa = "scalar";
  const auto ms = model::load(tm.path, o);
  CHECK(std::string(ms->isa()) == "scalar");
  context a(tm.m, {}), b(ms, {});
  const auto toks = some_tokens(9);
  const auto la = a.eval(toks);
  const std::vector<float> va(la.begin(), la.end());
  const auto lb = b.eval(toks);
  CHECK(std::equal(va.begin(), va.end(), lb.begin()));
  o.isa = "no_such_isa";
  CHECK_THROWS_WITH_AS((void)model::load(tm.path, o), doctest::Contains("unknown kernel table"), error);
}

// A damaged file never crashes the loader, the tokenizer built from it, or a first generation:
// random bytes flipped in the metadata (header, vocabulary, tensor infos) either load or throw.
TEST_CASE("model files with flipped metadata bytes load or throw qllm::error, never crash") {
  const std::string src = "/tmp/qllm_test_session_" + std::to_string(getpid()) + "_fuzz_src.gguf";
  const std::string dst = "/tmp/qllm_test_session_" + std::to_string(getpid()) + "_fuzz.gguf";
  random_model_spec spec;
  spec.n_vocab = 300;
  write_random_model(src, spec);
  std::vector<uint8_t> bytes;
  {
    std::FILE* f = std::fopen(src.c_str(), "rb");
    REQUIRE(f);
    int c;
    while ((c = std::fgetc(f)) != EOF) bytes.push_back(uint8_t(c));
    std::fclose(f);
  }
  const auto f0 = gguf::file::open(src);
  const std::size_t data_start = bytes.size() - [&] {
    std::size_t total = 0;
    for (const auto& t : f0.tensors()) total = std::max<std::size_t>(total, std::size_t(t.offset + t.bytes));
    return total;
  }();
  std::mt19937 rng(99);
  int loaded = 0, rejected = 0;
  for (int iter = 0; iter < 300; ++iter) {
    auto m = bytes;
    const int flips = 1 + int(rng() % 3);
    for (int k = 0; k < flips; ++k) {
      uint8_t& b = m[rng() % data_start];
      b = rng() % 2 ? uint8_t(b ^ (1u << (rng() % 8))) : uint8_t(rng());
    }
    {
      std::FILE* f = std::fopen(dst.c_str(), "wb");
      REQUIRE(f);
      std::fwrite(m.data(), 1, m.size(), f);
      std::fclose(f);
    }
    try {
      const auto mp = model::load(dst);
      session_params p = greedy(64);
      session s(mp, p);
      generate_params gp;
      gp.max_tokens = 4;
      if (mp->get_tokenizer()) (void)s.generate("hello world", gp);
      else (void)s.evaluate(std::vector<int32_t>{1, 2, 3});
      ++loaded;
    } catch (const error&) {
      ++rejected;
    }
  }
  std::remove(src.c_str());
  std::remove(dst.c_str());
  MESSAGE("loaded ", loaded, ", rejected ", rejected);
  CHECK(loaded + rejected == 300);
  CHECK(rejected > 30);
  CHECK(loaded > 10);  // most flips hit vocabulary strings, which validation rejects
}

TEST_CASE("penalties see the sequence, not what earlier turns fed the sampler") {
  session_params p = greedy(256);
  p.sampling.frequency_penalty = 0.5f;
  generate_params gp;
  gp.max_tokens = 12;
  gp.stop_at_eos = false;
  session chat(tiny().m, p);
  auto seq = some_tokens(10);
  const auto r1 = chat.generate(seq, gp);
  seq.insert(seq.end(), r1.tokens.begin(), r1.tokens.end());
  seq.push_back(2);
  const auto more = some_tokens(6, 3);
  seq.insert(seq.end(), more.begin(), more.end());
  const auto second = chat.generate(seq, gp);  // a second turn, cache reused
  session fresh(tiny().m, p);
  const auto third = fresh.generate(seq, gp);
  CHECK(third.tokens == second.tokens);
  // the window: this call's sequence and samples only, as in a fresh session
  auto a = std::vector<int32_t>(chat.smp().window().begin(), chat.smp().window().end());
  auto b = std::vector<int32_t>(fresh.smp().window().begin(), fresh.smp().window().end());
  std::sort(a.begin(), a.end());
  std::sort(b.begin(), b.end());
  CHECK(a.size() == seq.size() + 12);
  CHECK(a == b);
}

TEST_CASE("a callback that cancels wins over a stop string found in the same text") {
  generate_params gp;
  gp.max_tokens = 16;
  gp.stop_at_eos = false;
  session s(tiny().m, greedy());
  const auto full = s.generate(some_tokens(5), gp);
  const std::size_t at = test::ascii_run(full.text, 0, 2);
  REQUIRE(at != std::string::npos);
  gp.stop = {full.text.substr(at, 2)};
  int calls = 0, end_calls = 0;
  session s2(tiny().m, greedy());
  const auto r = s2.generate(some_tokens(5), gp, [&](std::string_view, int32_t token) {
    ++calls;
    end_calls += token == -1;
    return false;
  });
  CHECK(r.finish == finish_reason::cancelled);
  CHECK(calls == 1);
  CHECK(end_calls == 0);
}

TEST_CASE("append evaluates only the new tokens and equals evaluating the whole sequence") {
  session a(tiny().m, greedy(32)), b(tiny().m, greedy(32));
  const auto toks = some_tokens(20);
  a.evaluate(std::vector<int32_t>(toks.begin(), toks.begin() + 5));
  std::span<const float> la;
  for (std::size_t i = 5; i < toks.size(); ++i) la = a.append(std::span<const int32_t>(&toks[i], 1));
  const std::vector<float> got(la.begin(), la.end());
  const auto lb = b.evaluate(toks);
  CHECK(std::equal(got.begin(), got.end(), lb.begin()));
  CHECK(a.history() == toks);
  CHECK_THROWS_AS(a.append(std::vector<int32_t>{99999}), error);
  CHECK(a.history() == toks);
  // past the window with context shift on: the shift generation makes (keep n_keep = 1, drop
  // half of the rest or what the tokens need: max(8, 19 / 2) = 9)
  const auto more = some_tokens(20, 7);
  a.append(more);
  std::vector<int32_t> want{toks[0]};
  want.insert(want.end(), toks.begin() + 10, toks.end());
  want.insert(want.end(), more.begin(), more.end());
  CHECK(a.history() == want);
  CHECK(a.n_shifts() == 1);
  CHECK(a.n_shift_dropped() == 9);
  // with context shift off the error policy says what happened to the eval
  session_params p = greedy(32);
  p.context_shift = false;
  session c(tiny().m, p);
  c.evaluate(toks);
  try {
    c.append(more);
    FAIL("no overflow");
  } catch (const error& e) {
    CHECK(e.code() == errc::context_overflow);
    const std::string msg = e.what();
    CHECK(msg.find("eval: the session holds 20 tokens and 20 more") != std::string::npos);
    CHECK(msg.find("8 too many") != std::string::npos);
  }
  CHECK(c.history() == toks);  // unchanged
}

// The token-by-token API and generate() must agree: same sampler, same penalty window (the end
// of the sequence in the cache), same shifts.
TEST_CASE("an append + sample loop picks the tokens generate() picks, with penalties and shifts") {
  for (bool shift_hits : {false, true}) {
    CAPTURE(shift_hits);
    session_params p;
    p.ctx.n_ctx = shift_hits ? 24 : 128;
    p.sampling.temperature = 0.9f;
    p.sampling.top_k = 20;
    p.sampling.repeat_penalty = 1.3f;
    p.sampling.frequency_penalty = 0.4f;
    p.sampling.presence_penalty = 0.2f;
    p.sampling.penalty_last_n = 8;
    p.sampling.seed = 1234;
    p.n_keep = 2;
    const auto prompt = some_tokens(12, 3);
    session g(tiny().m, p), e(tiny().m, p);
    generate_params gp;
    gp.max_tokens = 40;
    gp.stop_at_eos = false;
    const auto r = g.generate(prompt, gp);
    REQUIRE(r.tokens.size() == 40);
    CHECK((r.n_shifts > 0) == shift_hits);
    std::span<const float> logits = e.evaluate(prompt);
    std::vector<int32_t> got;
    for (int i = 0; i < 40; ++i) {
      const int32_t id = e.sample(logits);
      got.push_back(id);
      if (i + 1 < 40) logits = e.append(std::span<const int32_t>(&id, 1));
    }
    CHECK(got == r.tokens);
    CHECK(e.history() == g.history());
    CHECK(e.n_shifts() == g.n_shifts());
  }
}

TEST_CASE("a cancel during generation ends it as cancelled, never as an error") {
  // from inside the stream callback: the next token's eval sees the request first
  session s(tiny().m, greedy(128));
  generate_params gp;
  gp.max_tokens = 20;
  gp.stop_at_eos = false;
  int calls = 0;
  const auto r = s.generate(some_tokens(8), gp, [&](std::string_view, int32_t) {
    if (++calls == 3) s.cancel();
    return true;
  });
  CHECK(r.finish == finish_reason::cancelled);
  CHECK(r.tokens.size() == 3);
  CHECK(s.history().size() == 8 + 2);  // the third token was sampled, never evaluated
  CHECK(std::equal(r.tokens.begin(), r.tokens.begin() + 2, s.history().begin() + 8));
}

TEST_CASE("a window of 1 or 2 positions with context shift on") {
  for (int64_t n_ctx : {1, 2}) {
    CAPTURE(n_ctx);
    session_params p = greedy(n_ctx);
    p.n_keep = 0;
    p.policy = context_policy::keep_tail;
    session s(tiny().m, p);
    const auto toks = some_tokens(6);
    for (int32_t id : toks) (void)s.append(std::span<const int32_t>(&id, 1));  // shifts each time
    CHECK(int64_t(s.history().size()) <= n_ctx);
    CHECK(s.history().back() == toks.back());
  }
}

TEST_CASE("cancel stops a long prompt between chunks and leaves the cache as before the call") {
  random_model_spec spec = random_model_preset("small");
  static temp_model small("small_cancel", spec);
  session_params p = greedy(1024);
  p.ctx.n_batch = 1;  // one chunk per token: many checks
  p.ctx.n_threads = 1;
  session s(small.m, p);
  const auto head = some_tokens(8);
  s.evaluate(head);
  std::vector<int32_t> longer = head;
  for (int i = 0; i < 900; ++i) longer.push_back(int32_t(3 + (i * 13) % 2000));
  generate_params gp;
  gp.max_tokens = 4;
  // a request made before the call has no effect: each call clears it when it starts
  s.cancel();
  session twin(small.m, p);
  (void)twin.evaluate(head);
  // another thread keeps asking until the call returns (the first request lands mid-prompt)
  std::atomic<bool> done{false};
  std::thread t([&] {
    while (!done.load()) {
      s.cancel();
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  });
  const auto r = s.generate(longer, gp);
  done = true;
  t.join();
  CHECK(r.finish == finish_reason::cancelled);
  CHECK(r.tokens.empty());
  CHECK(s.history() == head);  // the prompt's evaluated chunks are forgotten
  CHECK(s.ctx().n_past() == int64_t(head.size()));
  // the session works afterwards and equals one that was never cancelled
  const auto a = s.generate(some_tokens(30), gp);
  const auto b = twin.generate(some_tokens(30), gp);
  CHECK(a.tokens == b.tokens);
  CHECK(a.finish == finish_reason::max_tokens);
  // append: errc::cancelled, history unchanged
  const auto before = s.history();
  done = false;
  std::thread t2([&] {
    while (!done.load()) {
      s.cancel();
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  });
  std::vector<int32_t> extra(600, 5);
  try {
    (void)s.append(extra);
    FAIL("not cancelled");
  } catch (const error& e) {
    CHECK(e.code() == errc::cancelled);
  }
  done = true;
  t2.join();
  CHECK(s.history() == before);
}

TEST_CASE("speculation: the same tokens, stream, cache and finish as plain decoding, greedy and lookup-sampled") {
  // sources: prompt lookup (greedy, then sampled: a lookup draft is kept when the sampled token is
  // the draft, so the same seed gives the same tokens), draft models (greedy) whose weights are
  // the model's in Q8_0, the model itself, and other weights
  struct source {
    const char* name;
    speculation spec;
    const temp_model* draft;
    bool sampled;
  };
  const source sources[] = {{"lookup", speculation::lookup, nullptr, false},
                            {"lookup sampled", speculation::lookup, nullptr, true},
                            {"draft near", speculation::draft_model, &tiny_near(), false},
                            {"draft same", speculation::draft_model, &tiny(), false},
                            {"draft other", speculation::draft_model, &tiny_other(), false}};
  for (const source& src : sources) {
  const std::string src_name = src.name;
  CAPTURE(src_name);
  int64_t drafted = 0, accepted = 0, passes = 0;
  int cases = 0;
  for (int64_t n_ctx : {int64_t(128), int64_t(24)}) {
    for (int32_t salt : {0, 1, 2, 5}) {
      for (int64_t max_tokens : {int64_t(7), int64_t(60)}) {
        for (int32_t k : {1, 3, 8}) {
          for (bool penalties : {false, true}) {
            CAPTURE(n_ctx);
            CAPTURE(salt);
            CAPTURE(max_tokens);
            CAPTURE(k);
            CAPTURE(penalties);
            session_params p = greedy(n_ctx);
            p.policy = context_policy::keep_head_and_tail;  // the small window drops and shifts
            if (penalties) {
              p.sampling.repeat_penalty = 1.2f;
              p.sampling.penalty_last_n = 6;
            }
            if (src.sampled) {
              p.sampling.temperature = 1.0f;
              p.sampling.seed = uint64_t(salt * 131 + k);
            }
            // a prompt that repeats itself, so that drafts exist
            auto prompt = some_tokens(8, salt);
            const auto again = prompt;
            prompt.insert(prompt.end(), again.begin() + 1, again.end());
            session plain(tiny().m, p), spec(tiny().m, p);
            if (src.draft) spec.set_draft(src.draft->m);
            generate_params gp;
            gp.max_tokens = max_tokens;
            gp.stop_at_eos = salt != 5;
            gp.spec = src.spec;
            std::vector<std::pair<std::string, int32_t>> s1, s2;
            const auto r1 = plain.generate(prompt, gp, [&](std::string_view t, int32_t id) {
              s1.emplace_back(t, id);
              return true;
            });
            gp.draft_tokens = k;
            const auto r2 = spec.generate(prompt, gp, [&](std::string_view t, int32_t id) {
              s2.emplace_back(t, id);
              return true;
            });
            CHECK(r2.tokens == r1.tokens);
            CHECK(r2.text == r1.text);
            CHECK(s2 == s1);
            CHECK(r2.finish == r1.finish);
            CHECK(r2.n_shifts == r1.n_shifts);
            CHECK(spec.history() == plain.history());
            CHECK(spec.ctx().n_past() == int64_t(spec.history().size()));
            CHECK(r1.spec.passes == 0);
            CHECK(r2.spec.accepted <= r2.spec.drafted);
            // the cache is left as plain decoding leaves it: what follows is the same too
            gp.max_tokens = 5;
            const auto next = spec.generate(spec.history(), gp).tokens;
            gp.draft_tokens = 0;
            CHECK(next == plain.generate(plain.history(), gp).tokens);
            if (src.draft == &tiny() && n_ctx == 128) CHECK(r2.spec.accepted == r2.spec.drafted);
            drafted += r2.spec.drafted;
            accepted += r2.spec.accepted;
            passes += r2.spec.passes;
            ++cases;
          }
        }
      }
    }
  }
  MESSAGE(src_name << ": " << cases << " cases: " << passes << " passes with drafts, " << drafted << " drafted, "
                   << accepted << " accepted");
  if (src.draft == &tiny()) {  // the model drafting for itself: rejected only after shifts
    CHECK(double(accepted) > 0.7 * double(drafted));
  } else {
    if (src.draft != &tiny_other()) CHECK(accepted > 0);  // drafts were taken ...
    CHECK(drafted - accepted > 0);                        // ... and rejected
  }
  }
}

TEST_CASE("speculation with sampling: a draft model's text is distributed exactly as the model's (chi-square)") {
  // top-k 3 at temperature 1: four tokens from the model's own distribution, 81 possible texts,
  // whose probabilities are computed here from the model's logits; texts sampled with a draft model
  // (two drafts after the first token: the second and third tokens come from the verification
  // rule, the fourth from the row after the drafts or a new pass) must follow them. Plain sampling
  // is the control of the harness.
  session_params p;
  p.ctx.n_ctx = 64;
  p.sampling.temperature = 1.0f;
  p.sampling.top_k = 3;
  p.sampling.top_p = 1.0f;
  p.sampling.min_p = 0.0f;
  const auto prompt = some_tokens(6, 4);
  std::map<std::vector<int32_t>, double> expected;
  {
    session e(tiny().m, p);
    sampler smp(p.sampling);
    const auto dist = [&](const std::vector<int32_t>& seq) {
      (void)smp.sample(e.evaluate(seq));
      const auto c = smp.last_candidates();
      return std::vector<std::pair<int32_t, float>>(c.begin(), c.end());
    };
    for (const auto& [a, pa] : dist(prompt)) {
      auto s1 = prompt;
      s1.push_back(a);
      for (const auto& [b, pb] : dist(s1)) {
        auto s2 = s1;
        s2.push_back(b);
        for (const auto& [c, pc] : dist(s2)) {
          auto s3 = s2;
          s3.push_back(c);
          for (const auto& [d, pd] : dist(s3)) expected[{a, b, c, d}] = double(pa) * pb * pc * pd;
        }
      }
    }
  }
  REQUIRE(expected.size() == 81);
  const int n = 4000;
  for (const temp_model* draft : {static_cast<const temp_model*>(nullptr), &tiny_near(), &tiny_other()}) {
    CAPTURE(draft ? draft->path : std::string("plain"));
    session s(tiny().m, p);
    generate_params gp;
    gp.max_tokens = 4;
    gp.stop_at_eos = false;
    if (draft) {
      s.set_draft(draft->m);
      gp.spec = speculation::draft_model;
      gp.draft_tokens = 2;
    }
    std::map<std::vector<int32_t>, int> seen;
    int64_t drafted = 0, accepted = 0;
    for (int i = 0; i < n; ++i) {
      sampler_params sp = p.sampling;
      sp.seed = uint64_t(1000 + i);
      s.set_sampling(sp);
      const auto r = s.generate(prompt, gp);
      REQUIRE(r.tokens.size() == 4);
      ++seen[r.tokens];
      drafted += r.spec.drafted;
      accepted += r.spec.accepted;
    }
    // Pearson chi-square, texts expected fewer than 5 times pooled
    double x2 = 0, pool_e = 0, pool_o = 0;
    int cells = 0;
    for (const auto& [t, pr] : expected) {
      const double e = pr * n;
      const double o = seen.count(t) ? seen[t] : 0;
      if (e < 5) {
        pool_e += e;
        pool_o += o;
        continue;
      }
      x2 += (o - e) * (o - e) / e;
      ++cells;
    }
    if (pool_e > 0) {
      x2 += (pool_o - pool_e) * (pool_o - pool_e) / pool_e;
      ++cells;
    }
    int unexpected = 0;
    for (const auto& [t, c] : seen) unexpected += expected.count(t) ? 0 : c;
    const int df = cells - 1;
    // p = 0.001 critical value by Wilson-Hilferty (z = 3.09)
    const double crit = df * std::pow(1 - 2.0 / (9 * df) + 3.09 * std::sqrt(2.0 / (9 * df)), 3);
    MESSAGE((draft ? draft->path : std::string("plain")) << ": " << drafted << " drafted, " << accepted
                                                          << " kept; chi2 " << x2 << " for " << df
                                                          << " dof (critical " << crit << ")");
    CHECK(unexpected == 0);
    CHECK(x2 < crit);
    if (draft) {
      CHECK(drafted >= 2 * n);  // two after the first token, one more after a rejection
      if (draft == &tiny_near()) CHECK(accepted > drafted / 4);
      CHECK(accepted < drafted);
    }
  }
}

TEST_CASE("speculation: stop strings, a cancelling callback and sampling behave as without it") {
  session_params p = greedy(128);
  auto prompt = some_tokens(10, 3);
  const auto again = prompt;
  prompt.insert(prompt.end(), again.begin() + 1, again.end());
  generate_params gp;
  gp.max_tokens = 50;
  gp.stop_at_eos = false;
  // the callback stops after 9 tokens, in the middle of accepted drafts or not
  for (int stop_after : {1, 4, 9})
  for (speculation sp : {speculation::lookup, speculation::draft_model}) {
    CAPTURE(stop_after);
    CAPTURE(to_string(sp));
    session a(tiny().m, p), b(tiny().m, p);
    b.set_draft(tiny_near().m);
    int n = 0;
    gp.draft_tokens = 0;
    const auto r1 = a.generate(prompt, gp, [&](std::string_view, int32_t) { return ++n < stop_after; });
    n = 0;
    gp.draft_tokens = 6;
    gp.spec = sp;
    const auto r2 = b.generate(prompt, gp, [&](std::string_view, int32_t) { return ++n < stop_after; });
    CHECK(r1.finish == finish_reason::cancelled);
    CHECK(r2.tokens == r1.tokens);
    CHECK(b.history() == a.history());
    CHECK(b.ctx().n_past() == int64_t(b.history().size()));
  }
  // a stop string made of generated text
  {
    session a(tiny().m, p);
    gp.draft_tokens = 0;
    const auto full = a.generate(prompt, gp);
    REQUIRE(full.text.size() > 12);
    std::size_t at = full.text.size() / 2;
    while (at + 4 < full.text.size() && utf8::first_invalid(full.text.substr(at, 4)) != std::string::npos) ++at;
    REQUIRE(at + 4 < full.text.size());
    gp.stop = {full.text.substr(at, 4)};
    for (speculation sp : {speculation::lookup, speculation::draft_model}) {
      session c(tiny().m, p), d(tiny().m, p);
      d.set_draft(tiny_near().m);
      gp.draft_tokens = 0;
      const auto r1 = c.generate(prompt, gp);
      gp.draft_tokens = 5;
      gp.spec = sp;
      const auto r2 = d.generate(prompt, gp);
      CHECK(r1.finish == finish_reason::stop_string);
      CHECK(r2.text == r1.text);
      CHECK(r2.tokens == r1.tokens);
      CHECK(d.history() == c.history());
    }
    gp.stop.clear();
    gp.spec = speculation::lookup;
  }
  gp.draft_tokens = 0;
  session s(tiny().m, p);
  gp.draft_tokens = -1;
  CHECK_THROWS_AS(s.generate(prompt, gp), error);
  // a draft model is required for speculation::draft_model, and must share the vocabulary
  gp.draft_tokens = 4;
  gp.spec = speculation::draft_model;
  CHECK_THROWS_WITH_AS(s.generate(prompt, gp), doctest::Contains("has none (set_draft)"), error);
  gp.draft_tokens = 0;
  CHECK_NOTHROW(s.generate(prompt, gp));  // off: no draft model needed
  random_model_spec other_vocab;
  other_vocab.n_vocab = 600;
  const temp_model wider("wider", other_vocab);
  CHECK_THROWS_WITH_AS(s.set_draft(wider.m), doctest::Contains("600 tokens, not 512"), error);
  random_model_spec no_vocab;
  no_vocab.vocabulary = false;
  const temp_model bare("bare", no_vocab);
  CHECK_THROWS_WITH_AS(s.set_draft(bare.m), doctest::Contains("it has no vocabulary"), error);
  CHECK(s.draft_model() == nullptr);
  // a draft model trained on a shorter context runs in the session's window
  {
    random_model_spec long_spec, short_spec;
    long_spec.n_ctx = 400;
    short_spec.n_ctx = 32;
    const temp_model long_ctx("long_ctx", long_spec), short_ctx("short_ctx", short_spec);
    session_params lp;
    lp.ctx.n_ctx = 0;  // the model's training context: 400
    lp.sampling.temperature = 0;
    session a(long_ctx.m, lp), b(long_ctx.m, lp);
    b.set_draft(short_ctx.m);
    generate_params g;
    g.max_tokens = 40;
    g.stop_at_eos = false;
    const auto want = a.generate(some_tokens(120, 2), g);
    g.draft_tokens = 4;
    g.spec = speculation::draft_model;
    const auto got = b.generate(some_tokens(120, 2), g);
    CHECK(got.tokens == want.tokens);
    CHECK(got.spec.drafted > 0);
  }
  // a draft model whose logits are not finite (an output matrix of 1e38) drafts nothing, and the
  // generation goes on with the model's own tokens
  {
    random_model_spec fs;
    fs.type = ggml_type::f32;
    fs.seed = 3;
    const std::string path = "/tmp/qllm_test_session_" + std::to_string(getpid()) + "_nan.gguf";
    write_random_model(path, fs);
    std::vector<uint8_t> bytes;
    {
      std::FILE* in = std::fopen(path.c_str(), "rb");
      REQUIRE(in);
      int c;
      while ((c = std::fgetc(in)) != EOF) bytes.push_back(uint8_t(c));
      std::fclose(in);
    }
    {
      const auto f = gguf::file::from_memory(bytes.data(), bytes.size());
      const auto* t = f.find_tensor("output.weight");
      REQUIRE(t);
      REQUIRE(t->type == ggml_type::f32);
      float* w = reinterpret_cast<float*>(bytes.data() + (f.tensor_data(*t) - bytes.data()));
      for (uint64_t i = 0; i < t->bytes / 4; ++i) w[i] = i % 2 ? 1e38f : -1e38f;
    }
    {
      std::FILE* out = std::fopen(path.c_str(), "wb");
      REQUIRE(out);
      REQUIRE(std::fwrite(bytes.data(), 1, bytes.size(), out) == bytes.size());
      std::fclose(out);
    }
    const auto bad_draft = model::load(path);
    std::remove(path.c_str());
    session a(tiny().m, p), b(tiny().m, p);
    b.set_draft(bad_draft);
    generate_params g;
    g.max_tokens = 30;
    g.stop_at_eos = false;
    const auto want = a.generate(prompt, g);
    g.draft_tokens = 4;
    g.spec = speculation::draft_model;
    const auto got = b.generate(prompt, g);
    CHECK(got.tokens == want.tokens);
    CHECK(got.spec.drafted == 0);
  }
  s.set_draft(tiny_other().m);
  CHECK(s.draft_model() == tiny_other().m.get());
  s.set_draft(nullptr);
  CHECK(s.draft_model() == nullptr);
}

TEST_CASE("lookup_draft: the longest recurring suffix's most recent occurrence (against a plain search)") {
  // the plain search: for n from n_max down to n_min, the latest earlier occurrence of the last n
  // tokens that some token follows
  const auto reference = [](const std::vector<int32_t>& seq, int n_min, int n_max, int k) {
    const int64_t len = int64_t(seq.size());
    for (int64_t n = std::min<int64_t>(n_max, len - 1); n >= n_min; --n)
      for (int64_t start = len - n - 1; start >= 0; --start)
        if (std::equal(seq.end() - n, seq.end(), seq.begin() + start))
          return std::vector<int32_t>(seq.begin() + start + n, seq.begin() + std::min<int64_t>(len, start + n + k));
    return std::vector<int32_t>{};
  };
  std::mt19937 rng(5);
  int found = 0;
  for (int i = 0; i < 3000; ++i) {
    std::vector<int32_t> seq(std::size_t(rng() % 40));
    const int32_t alphabet = 2 + int32_t(rng() % 5);
    for (auto& t : seq) t = int32_t(rng() % uint32_t(alphabet));
    const int n_min = 1 + int(rng() % 3), n_max = n_min + int(rng() % 3), k = 1 + int(rng() % 6);
    const auto want = reference(seq, n_min, n_max, k);
    CAPTURE(i);
    CHECK(detail::lookup_draft(seq, n_min, n_max, k) == want);
    found += !want.empty();
  }
  CHECK(found > 1000);
  // the controller: drafts rejected twice pause drafting, for longer each time
  detail::draft_controller c(8);
  CHECK(c.next() == 2);
  c.verified(2, 0);
  CHECK(c.next() == 1);
  c.verified(1, 0);
  int paused = 0;
  while (c.next() == 0) ++paused;
  CHECK(paused == 4);
  c.verified(1, 0);
  c.verified(1, 0);
  paused = 0;
  while (c.next() == 0) ++paused;
  CHECK(paused == 8);
  c.verified(1, 1);  // kept: the size doubles again
  CHECK(c.next() == 2);
}
