// The C ABI of multi-sequence batches (0.6): greedy decoding of several sequences in shared
// passes gives the tokens of sessions run alone; bad entries and handles are statuses.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "qllm.h"
#include "test_util.hpp"

namespace {

const std::string kModel = std::string(QLLM_MODELS_DIR) + "/tiny-kjv.q8_0.gguf";

int32_t argmax(const float* l, size_t n) {
  return int32_t(std::max_element(l, l + n) - l);  // lowest id on ties, as the greedy sampler
}

std::vector<int32_t> tokenize(qllm_model* m, const std::string& text) {
  std::vector<int32_t> ids(256);
  size_t n = 0;
  REQUIRE(qllm_tokenize(m, text.data(), text.size(), 1, ids.data(), ids.size(), &n) == QLLM_OK);
  ids.resize(n);
  return ids;
}

}  // namespace

TEST_CASE("C ABI batch: four sequences decoded together give each session's greedy tokens") {
  qllm_model* m = nullptr;
  REQUIRE(qllm_model_load(kModel.c_str(), nullptr, &m) == QLLM_OK);
  const std::vector<std::string> prompts = {"In the beginning", "And the LORD said unto Moses", "Blessed are",
                                            "Now the serpent was more subtil"};
  const int n_gen = 16;
  // alone: one session each, greedy
  std::vector<std::vector<int32_t>> alone;
  for (const auto& p : prompts) {
    qllm_session_params sp;
    REQUIRE(qllm_session_params_init(&sp, sizeof sp) == QLLM_OK);
    sp.temperature = 0;
    sp.n_ctx = 128;
    qllm_session* s = nullptr;
    REQUIRE(qllm_session_create(m, &sp, &s) == QLLM_OK);
    const auto ids = tokenize(m, p);
    REQUIRE(qllm_session_eval(s, ids.data(), ids.size()) == QLLM_OK);
    std::vector<int32_t> out;
    for (int i = 0; i < n_gen; ++i) {
      int32_t t = 0;
      REQUIRE(qllm_session_sample(s, &t) == QLLM_OK);
      out.push_back(t);
      REQUIRE(qllm_session_eval(s, &t, 1) == QLLM_OK);
    }
    alone.push_back(out);
    qllm_session_free(s);
  }
  // together: one batch of 4 sequences, prompts in one call, then one token of each per call
  qllm_batch_params bp;
  REQUIRE(qllm_batch_params_init(&bp, sizeof bp) == QLLM_OK);
  CHECK(bp.n_seq == 4);
  bp.n_ctx = 128;
  bp.n_batch = 16;  // the prompts straddle passes
  qllm_batch* b = nullptr;
  REQUIRE(qllm_batch_create(m, &bp, &b) == QLLM_OK);
  std::vector<std::vector<int32_t>> ids;
  for (const auto& p : prompts) ids.push_back(tokenize(m, p));
  std::vector<qllm_batch_entry> es;
  for (int s = 0; s < 4; ++s) es.push_back({s, 1, ids[size_t(s)].data(), ids[size_t(s)].size()});
  REQUIRE(qllm_batch_eval(b, es.data(), es.size()) == QLLM_OK);
  std::vector<std::vector<int32_t>> together(4);
  std::vector<int32_t> next(4);
  for (int i = 0; i < n_gen; ++i) {
    for (size_t e = 0; e < 4; ++e) {
      const float* l = nullptr;
      size_t nv = 0;
      REQUIRE(qllm_batch_logits(b, e, &l, &nv) == QLLM_OK);
      next[size_t(es[e].seq)] = argmax(l, nv);
      together[size_t(es[e].seq)].push_back(next[size_t(es[e].seq)]);
    }
    es.clear();
    for (int s = 3; s >= 0; --s) es.push_back({s, 1, &next[size_t(s)], 1});  // another order
    REQUIRE(qllm_batch_eval(b, es.data(), es.size()) == QLLM_OK);
  }
  for (size_t s = 0; s < 4; ++s) CHECK(together[s] == alone[s]);
  int64_t past = 0;
  REQUIRE(qllm_batch_n_past(b, 2, &past) == QLLM_OK);
  CHECK(past == int64_t(ids[2].size()) + n_gen);

  // misuse: statuses, and nothing changes
  const int32_t bad_id = 1 << 30;
  qllm_batch_entry bad[2] = {{0, 1, &bad_id, 1}, {1, 1, next.data(), 1}};
  CHECK(qllm_batch_eval(b, bad, 2) == QLLM_ERR_INVALID_ARGUMENT);
  qllm_batch_entry twice[2] = {{1, 1, next.data(), 1}, {1, 1, next.data(), 1}};
  CHECK(qllm_batch_eval(b, twice, 2) == QLLM_ERR_INVALID_ARGUMENT);
  CHECK(std::string(qllm_last_error()).find("twice") != std::string::npos);
  qllm_batch_entry out_of_range = {7, 1, next.data(), 1};
  CHECK(qllm_batch_eval(b, &out_of_range, 1) == QLLM_ERR_INVALID_ARGUMENT);
  qllm_batch_entry empty = {0, 1, next.data(), 0};
  CHECK(qllm_batch_eval(b, &empty, 1) == QLLM_ERR_INVALID_ARGUMENT);
  qllm_batch_entry null_tokens = {0, 1, nullptr, 3};
  CHECK(qllm_batch_eval(b, &null_tokens, 1) == QLLM_ERR_INVALID_ARGUMENT);
  CHECK(qllm_batch_eval(b, nullptr, 1) == QLLM_ERR_INVALID_ARGUMENT);
  CHECK(qllm_batch_eval(nullptr, es.data(), 1) == QLLM_ERR_INVALID_ARGUMENT);
  qllm_batch_entry huge = {0, 1, next.data(), SIZE_MAX};  // never read: refused by its size
  CHECK(qllm_batch_eval(b, &huge, 1) == QLLM_ERR_CONTEXT_OVERFLOW);
  const float* stale = nullptr;
  size_t stale_n = 0;
  CHECK(qllm_batch_logits(b, 0, &stale, &stale_n) == QLLM_ERR_INVALID_ARGUMENT);  // no logits after a failure
  std::vector<int32_t> many(200, 5);
  qllm_batch_entry overflow = {3, 1, many.data(), many.size()};
  CHECK(qllm_batch_eval(b, &overflow, 1) == QLLM_ERR_CONTEXT_OVERFLOW);
  REQUIRE(qllm_batch_n_past(b, 2, &past) == QLLM_OK);
  CHECK(past == int64_t(ids[2].size()) + n_gen);
  const float* l = nullptr;
  size_t nv = 0;
  CHECK(qllm_batch_logits(b, 9, &l, &nv) == QLLM_ERR_INVALID_ARGUMENT);
  CHECK(qllm_batch_logits(b, 0, nullptr, &nv) == QLLM_ERR_INVALID_ARGUMENT);
  CHECK(qllm_batch_n_past(b, -1, &past) == QLLM_ERR_INVALID_ARGUMENT);
  CHECK(qllm_batch_truncate(b, 0, 10000) == QLLM_ERR_INVALID_ARGUMENT);
  REQUIRE(qllm_batch_truncate(b, 0, 0) == QLLM_OK);
  REQUIRE(qllm_batch_n_past(b, 0, &past) == QLLM_OK);
  CHECK(past == 0);
  qllm_batch_params badp = bp;
  badp.n_seq = 0;
  qllm_batch* nb = reinterpret_cast<qllm_batch*>(&badp);
  CHECK(qllm_batch_create(m, &badp, &nb) == QLLM_ERR_INVALID_ARGUMENT);
  CHECK(nb == nullptr);
  badp = bp;
  badp.n_threads = 1 << 20;
  CHECK(qllm_batch_create(m, &badp, &nb) == QLLM_ERR_INVALID_ARGUMENT);
  badp = bp;
  badp.struct_size = 3;
  CHECK(qllm_batch_create(m, &badp, &nb) == QLLM_ERR_INVALID_ARGUMENT);
  CHECK(qllm_batch_create(nullptr, &bp, &nb) == QLLM_ERR_INVALID_ARGUMENT);
  qllm_batch_free(nullptr);
  qllm_batch_free(b);
  qllm_model_free(m);
}
