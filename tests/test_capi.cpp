// The C ABI (libqllm.so through capi/qllm.h) against the C++ core linked statically into this
// test: same tokens, same logits, same text; and every misuse is a status, never a crash.
#include <doctest/doctest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <algorithm>
#include <string>
#include <thread>
#include <vector>

#include "qllm.h"
#include "qllm/random_model.hpp"
#include "qllm/session.hpp"
#include "llama3_fixture.hpp"
#include "test_util.hpp"

namespace {

struct fixture_model {
  std::string path;
  fixture_model() {
    path = "/tmp/qllm_test_capi_" + std::to_string(getpid()) + ".gguf";
    qllm::random_model_spec spec;
    spec.type = qllm::ggml_type::q8_0;
    qllm::write_random_model(path, spec);
  }
  ~fixture_model() { std::remove(path.c_str()); }
};
const std::string& model_path() {
  static fixture_model f;
  return f.path;
}

struct model_handle {
  qllm_model* m = nullptr;
  model_handle() { REQUIRE(qllm_model_load(model_path().c_str(), nullptr, &m) == QLLM_OK); }
  ~model_handle() { qllm_model_free(m); }
};

qllm_session* new_session(qllm_model* m, float temperature = 0.0f, int32_t n_ctx = 256) {
  qllm_session_params p;
  REQUIRE(qllm_session_params_init(&p, sizeof p) == QLLM_OK);
  p.temperature = temperature;
  p.n_ctx = n_ctx;
  qllm_session* s = nullptr;
  REQUIRE(qllm_session_create(m, &p, &s) == QLLM_OK);
  REQUIRE(s != nullptr);
  return s;
}

std::string last_error() { return qllm_last_error(); }

}  // namespace

TEST_CASE("version and status names") {
  CHECK(qllm_version() == QLLM_VERSION_NUMBER);
  CHECK(std::string(qllm_version_string()) ==
        std::to_string(QLLM_VERSION_MAJOR) + "." + std::to_string(QLLM_VERSION_MINOR) + "." + std::to_string(QLLM_VERSION_PATCH));
  CHECK(std::string(qllm_status_name(QLLM_ERR_CONTEXT_OVERFLOW)) == "QLLM_ERR_CONTEXT_OVERFLOW");
  CHECK(std::string(qllm_status_name(1234)) == "unknown");
}

TEST_CASE("NULL handles and pointers are statuses, frees of NULL are no-ops") {
  qllm_model_free(nullptr);
  qllm_session_free(nullptr);
  qllm_model* m = reinterpret_cast<qllm_model*>(0x1);
  CHECK(qllm_model_load(nullptr, nullptr, &m) == QLLM_ERR_INVALID_ARGUMENT);
  CHECK(m == nullptr);
  CHECK(last_error().find("path is NULL") != std::string::npos);
  CHECK(qllm_model_load(model_path().c_str(), nullptr, nullptr) == QLLM_ERR_INVALID_ARGUMENT);
  qllm_model_info info{};
  info.struct_size = sizeof info;
  CHECK(qllm_model_get_info(nullptr, &info) == QLLM_ERR_INVALID_ARGUMENT);
  size_t n = 0;
  int32_t ids[4];
  CHECK(qllm_tokenize(nullptr, "a", 1, 1, ids, 4, &n) == QLLM_ERR_INVALID_ARGUMENT);
  CHECK(qllm_count_tokens(nullptr, "a", 1, 1, &n) == QLLM_ERR_INVALID_ARGUMENT);
  CHECK(qllm_detokenize(nullptr, ids, 0, nullptr, 0, &n) == QLLM_ERR_INVALID_ARGUMENT);
  CHECK(qllm_session_create(nullptr, nullptr, nullptr) == QLLM_ERR_INVALID_ARGUMENT);
  CHECK(qllm_session_eval(nullptr, ids, 1) == QLLM_ERR_INVALID_ARGUMENT);
  CHECK(qllm_session_reset(nullptr) == QLLM_ERR_INVALID_ARGUMENT);
  const float* lg = nullptr;
  CHECK(qllm_session_logits(nullptr, &lg, &n) == QLLM_ERR_INVALID_ARGUMENT);
  int32_t tok = 0;
  CHECK(qllm_session_sample(nullptr, &tok) == QLLM_ERR_INVALID_ARGUMENT);
  CHECK(qllm_generate(nullptr, "x", 1, nullptr, nullptr) == QLLM_ERR_INVALID_ARGUMENT);
  CHECK(qllm_generate_tokens(nullptr, ids, 1, nullptr, nullptr) == QLLM_ERR_INVALID_ARGUMENT);
  const char* out = nullptr;
  CHECK(qllm_session_output(nullptr, &out, &n) == QLLM_ERR_INVALID_ARGUMENT);
  float e[4];
  CHECK(qllm_embed(nullptr, "x", 1, e, 4, &n) == QLLM_ERR_INVALID_ARGUMENT);
  CHECK(qllm_model_params_init(nullptr, sizeof(qllm_model_params)) == QLLM_ERR_INVALID_ARGUMENT);
  CHECK(qllm_chat_format(nullptr, 1, nullptr, 0, &n) == QLLM_ERR_INVALID_ARGUMENT);

  model_handle h;
  CHECK(qllm_tokenize(h.m, "a", 1, 1, ids, 4, nullptr) == QLLM_ERR_INVALID_ARGUMENT);
  CHECK(qllm_tokenize(h.m, nullptr, 3, 1, ids, 4, &n) == QLLM_ERR_INVALID_ARGUMENT);
  qllm_session* s = new_session(h.m);
  CHECK(qllm_session_logits(s, &lg, &n) == QLLM_ERR_INVALID_ARGUMENT);  // nothing evaluated yet
  CHECK(qllm_session_sample(s, &tok) == QLLM_ERR_INVALID_ARGUMENT);
  CHECK(qllm_session_eval(s, nullptr, 3) == QLLM_ERR_INVALID_ARGUMENT);
  CHECK(qllm_session_eval(s, ids, 0) == QLLM_ERR_INVALID_ARGUMENT);
  const int32_t bad[] = {1, 1 << 20};
  CHECK(qllm_session_eval(s, bad, 2) == QLLM_ERR_INVALID_ARGUMENT);
  CHECK(last_error().find("outside the vocabulary") != std::string::npos);
  qllm_session_free(s);
}

TEST_CASE("absurd thread counts are INVALID_ARGUMENT, not a process killed by libgomp") {
  qllm_model_params mp;
  REQUIRE(qllm_model_params_init(&mp, sizeof mp) == QLLM_OK);
  for (int32_t n : {-1, 5000, INT32_MAX}) {
    CAPTURE(n);
    mp.n_threads = n;
    qllm_model* m = nullptr;
    CHECK(qllm_model_load(model_path().c_str(), &mp, &m) == QLLM_ERR_INVALID_ARGUMENT);
    CHECK(m == nullptr);
    CHECK(last_error().find("n_threads") != std::string::npos);
  }
  model_handle h;
  qllm_session_params sp;
  REQUIRE(qllm_session_params_init(&sp, sizeof sp) == QLLM_OK);
  for (int32_t n : {-1, 5000, INT32_MAX}) {
    CAPTURE(n);
    sp.n_threads = n;
    qllm_session* s = nullptr;
    CHECK(qllm_session_create(h.m, &sp, &s) == QLLM_ERR_INVALID_ARGUMENT);
    CHECK(s == nullptr);
    CHECK(last_error().find("at most") != std::string::npos);
  }
  sp.n_threads = 3;  // oversubscribing a little is allowed
  qllm_session* s = nullptr;
  CHECK(qllm_session_create(h.m, &sp, &s) == QLLM_OK);
  qllm_session_free(s);
}

TEST_CASE("load errors carry the status and a message naming the problem") {
  qllm_model* m = nullptr;
  CHECK(qllm_model_load("/nonexistent/model.gguf", nullptr, &m) == QLLM_ERR_IO);
  CHECK(m == nullptr);
  CHECK(last_error().find("/nonexistent/model.gguf") != std::string::npos);
  const std::string cut = model_path() + ".cut";
  {
    std::FILE* in = std::fopen(model_path().c_str(), "rb");
    std::FILE* out = std::fopen(cut.c_str(), "wb");
    std::vector<char> buf(4000);
    const std::size_t n = std::fread(buf.data(), 1, buf.size(), in);
    std::fwrite(buf.data(), 1, n, out);
    std::fclose(in);
    std::fclose(out);
  }
  CHECK(qllm_model_load(cut.c_str(), nullptr, &m) == QLLM_ERR_BAD_FORMAT);
  CHECK(m == nullptr);
  CHECK_FALSE(last_error().empty());
  std::remove(cut.c_str());
  qllm_model_params p;
  qllm_model_params_init(&p, sizeof p);
  p.isa = "no_such_isa";
  CHECK(qllm_model_load(model_path().c_str(), &p, &m) == QLLM_ERR_INVALID_ARGUMENT);
  p.isa = "scalar";
  REQUIRE(qllm_model_load(model_path().c_str(), &p, &m) == QLLM_OK);
  qllm_model_info info{};
  info.struct_size = sizeof info;
  REQUIRE(qllm_model_get_info(m, &info) == QLLM_OK);
  CHECK(std::string(info.isa) == "scalar");
  qllm_model_free(m);
  p.isa = nullptr;
  p.use_mmap = 0;
  CHECK(qllm_model_load(model_path().c_str(), &p, &m) == QLLM_ERR_UNSUPPORTED);
}

TEST_CASE("the error message is per thread") {
  qllm_model* m = nullptr;
  CHECK(qllm_model_load("/nonexistent/a.gguf", nullptr, &m) == QLLM_ERR_IO);
  std::string other;
  std::thread t([&] {
    other = qllm_last_error();  // this thread has had no failure
    qllm_model* m2 = nullptr;
    (void)qllm_model_load("/nonexistent/b.gguf", nullptr, &m2);
  });
  t.join();
  CHECK(other.empty());
  CHECK(last_error().find("a.gguf") != std::string::npos);
}

TEST_CASE("struct_size: older callers get defaults, newer callers' unknown fields are refused") {
  model_handle h;
  // an older caller whose session params end after n_batch
  struct old_params {
    uint32_t struct_size;
    int32_t n_ctx;
    int32_t n_batch;
  } old{sizeof(old_params), 64, 16};
  qllm_session* s = nullptr;
  REQUIRE(qllm_session_create(h.m, reinterpret_cast<const qllm_session_params*>(&old), &s) == QLLM_OK);
  qllm_session_free(s);
  // init fills only the caller's bytes
  unsigned char buf[sizeof(qllm_session_params) + 16];
  std::memset(buf, 0xAB, sizeof buf);
  REQUIRE(qllm_session_params_init(reinterpret_cast<qllm_session_params*>(buf), offsetof(qllm_session_params, kv_type)) == QLLM_OK);
  CHECK(buf[offsetof(qllm_session_params, kv_type)] == 0xAB);
  // a newer caller: zero tail accepted, nonzero tail refused
  struct newer {
    qllm_session_params p;
    int64_t future_field;
  } nw;
  REQUIRE(qllm_session_params_init(&nw.p, sizeof nw) == QLLM_OK);
  CHECK(nw.p.struct_size == sizeof nw);
  CHECK(nw.future_field == 0);
  nw.p.n_ctx = 64;
  REQUIRE(qllm_session_create(h.m, &nw.p, &s) == QLLM_OK);
  qllm_session_free(s);
  nw.future_field = 7;
  CHECK(qllm_session_create(h.m, &nw.p, &s) == QLLM_ERR_UNSUPPORTED);
  CHECK(s == nullptr);
  // nonsense sizes
  qllm_session_params p;
  CHECK(qllm_session_params_init(&p, 0) == QLLM_ERR_INVALID_ARGUMENT);
  qllm_session_params_init(&p, sizeof p);
  p.struct_size = 2;
  CHECK(qllm_session_create(h.m, &p, &s) == QLLM_ERR_INVALID_ARGUMENT);
  p.struct_size = sizeof p;
  p.kv_type = 7;
  CHECK(qllm_session_create(h.m, &p, &s) == QLLM_ERR_INVALID_ARGUMENT);
  CHECK(last_error().find("kv_type") != std::string::npos);
  p.kv_type = QLLM_KV_F16;
  p.top_p = 2.0f;
  CHECK(qllm_session_create(h.m, &p, &s) == QLLM_ERR_INVALID_ARGUMENT);
  CHECK(last_error().find("top_p") != std::string::npos);
  // a size that ends inside a field (half of a pointer, of a count) is refused
  qllm_model_params mp;
  qllm_model_params_init(&mp, sizeof mp);
  mp.struct_size = offsetof(qllm_model_params, isa) + 4;
  qllm_model* m2 = nullptr;
  CHECK(qllm_model_load(model_path().c_str(), &mp, &m2) == QLLM_ERR_INVALID_ARGUMENT);
  CHECK(last_error().find("ends inside a field") != std::string::npos);
  mp.struct_size = offsetof(qllm_model_params, isa);  // an older caller without isa: fine
  REQUIRE(qllm_model_load(model_path().c_str(), &mp, &m2) == QLLM_OK);
  qllm_model_free(m2);
  p.struct_size = offsetof(qllm_session_params, seed) + 4;
  CHECK(qllm_session_create(h.m, &p, &s) == QLLM_ERR_INVALID_ARGUMENT);
  p.struct_size = sizeof p;
  // an info struct from an older caller: only its prefix is written
  unsigned char ib[sizeof(qllm_model_info)];
  std::memset(ib, 0xCD, sizeof ib);
  auto* info = reinterpret_cast<qllm_model_info*>(ib);
  info->struct_size = offsetof(qllm_model_info, n_layer);
  REQUIRE(qllm_model_get_info(h.m, info) == QLLM_OK);
  CHECK(info->n_embd == 64);
  CHECK(ib[offsetof(qllm_model_info, n_layer)] == 0xCD);
  // a 0.3 caller's struct ends before weight_mix: it is left alone
  std::memset(ib, 0xCD, sizeof ib);
  info->struct_size = offsetof(qllm_model_info, weight_mix);
  REQUIRE(qllm_model_get_info(h.m, info) == QLLM_OK);
  CHECK(info->load_seconds >= 0);
  CHECK(ib[offsetof(qllm_model_info, weight_mix)] == 0xCD);
  info->struct_size = 0;
  CHECK(qllm_model_get_info(h.m, info) == QLLM_ERR_INVALID_ARGUMENT);
}

TEST_CASE("model info, tokenize, detokenize, pieces, chat: the C++ results, buffer convention") {
  model_handle h;
  const auto cm = qllm::model::load(model_path());
  const qllm::tokenizer& t = *cm->get_tokenizer();
  qllm_model_info info{};
  info.struct_size = sizeof info;
  REQUIRE(qllm_model_get_info(h.m, &info) == QLLM_OK);
  CHECK(info.n_vocab == cm->config().n_vocab);
  CHECK(info.n_layer == cm->config().n_layer);
  CHECK(info.n_params == cm->n_params());
  CHECK(info.has_vocabulary == 1);
  CHECK(info.bos_token == 1);
  CHECK(info.eos_token == 2);
  CHECK(std::string(info.weight_type_name) == "q8_0");
  CHECK(std::string(info.isa) == cm->isa());
  CHECK(std::string(info.weight_mix) == cm->weight_mix());
  CHECK(std::string(info.weight_mix).rfind("Q8_0: ", 0) == 0);

  const std::string text = "the quick brown fox";
  size_t n = 0;
  CHECK(qllm_tokenize(h.m, text.data(), text.size(), 1, nullptr, 0, &n) == QLLM_ERR_BUFFER_TOO_SMALL);
  const auto want = t.encode(text, true);
  CHECK(n == want.size());
  std::vector<int32_t> ids(n);
  CHECK(qllm_tokenize(h.m, text.data(), text.size(), 1, ids.data(), n - 1, &n) == QLLM_ERR_BUFFER_TOO_SMALL);
  REQUIRE(qllm_tokenize(h.m, text.data(), text.size(), 1, ids.data(), ids.size(), &n) == QLLM_OK);
  CHECK(ids == want);
  size_t count = 0;
  REQUIRE(qllm_count_tokens(h.m, text.data(), text.size(), 0, &count) == QLLM_OK);
  CHECK(count == want.size() - 1);
  CHECK(qllm_tokenize(h.m, "a\xFF", 2, 1, ids.data(), ids.size(), &n) == QLLM_ERR_INVALID_ARGUMENT);
  CHECK(last_error().find("UTF-8") != std::string::npos);

  size_t len = 0;
  CHECK(qllm_detokenize(h.m, want.data(), want.size(), nullptr, 0, &len) == QLLM_ERR_BUFFER_TOO_SMALL);
  CHECK(len == text.size());
  std::vector<char> buf(len + 1, 'x');
  CHECK(qllm_detokenize(h.m, want.data(), want.size(), buf.data(), len, &len) == QLLM_ERR_BUFFER_TOO_SMALL);  // no room for NUL
  REQUIRE(qllm_detokenize(h.m, want.data(), want.size(), buf.data(), buf.size(), &len) == QLLM_OK);
  CHECK(std::string(buf.data()) == text);
  char piece[32];
  REQUIRE(qllm_token_piece(h.m, 1, piece, sizeof piece, &len) == QLLM_OK);
  CHECK(std::string(piece) == "<s>");
  CHECK(qllm_token_piece(h.m, 99999, piece, sizeof piece, &len) == QLLM_ERR_INVALID_ARGUMENT);

  const qllm_chat_message msgs[] = {{"system", "Be brief."}, {"user", "hi"}, {"assistant", "yo"}, {"user", "and?"}};
  std::vector<int32_t> chat(512);
  REQUIRE(qllm_chat_apply(h.m, msgs, 4, chat.data(), chat.size(), &n) == QLLM_OK);
  const std::vector<qllm::chat_message> cd{{"system", "Be brief."}, {"user", "hi"}, {"assistant", "yo"}, {"user", "and?"}};
  chat.resize(n);
  CHECK(chat == qllm::chat_tokens(t, cd));
  char tb[256];
  REQUIRE(qllm_chat_format(msgs, 4, tb, sizeof tb, &len) == QLLM_OK);
  CHECK(std::string(tb) == qllm::chat_text(cd));
  const qllm_chat_message wrong[] = {{"assistant", "x"}};
  CHECK(qllm_chat_apply(h.m, wrong, 1, chat.data(), chat.size(), &n) == QLLM_ERR_INVALID_ARGUMENT);
  const qllm_chat_message null_role[] = {{nullptr, "x"}};
  CHECK(qllm_chat_format(null_role, 1, tb, sizeof tb, &len) == QLLM_ERR_INVALID_ARGUMENT);
}

TEST_CASE("0.9: tokenize_ex flags, end tokens, the model's chat format and info, Llama-2 and Llama-3 vocabularies") {
  // Llama-2 (sentencepiece): the fixture model
  {
    model_handle h;
    const auto cm = qllm::model::load(model_path());
    const qllm::tokenizer& t = *cm->get_tokenizer();
    qllm_model_info info{};
    info.struct_size = sizeof info;
    REQUIRE(qllm_model_get_info(h.m, &info) == QLLM_OK);
    CHECK(std::string(info.tokenizer) == "sentencepiece");
    CHECK(std::string(info.chat_format) == "llama2");
    // a 0.8 caller's struct ends before the 0.9 fields: they are left alone
    unsigned char ib[sizeof(qllm_model_info)];
    std::memset(ib, 0xCD, sizeof ib);
    reinterpret_cast<qllm_model_info*>(ib)->struct_size = offsetof(qllm_model_info, tokenizer);
    REQUIRE(qllm_model_get_info(h.m, reinterpret_cast<qllm_model_info*>(ib)) == QLLM_OK);
    CHECK(ib[offsetof(qllm_model_info, tokenizer)] == 0xCD);
    // a size inside a name would leave it without its NUL: refused
    reinterpret_cast<qllm_model_info*>(ib)->struct_size = offsetof(qllm_model_info, tokenizer) + 8;
    CHECK(qllm_model_get_info(h.m, reinterpret_cast<qllm_model_info*>(ib)) == QLLM_ERR_INVALID_ARGUMENT);
    CHECK(last_error().find("ends inside a field") != std::string::npos);
    reinterpret_cast<qllm_model_info*>(ib)->struct_size = offsetof(qllm_model_info, isa) + 5;
    CHECK(qllm_model_get_info(h.m, reinterpret_cast<qllm_model_info*>(ib)) == QLLM_ERR_INVALID_ARGUMENT);
    const std::string text = "a</s>b";
    size_t n = 0;
    std::vector<int32_t> ids(64);
    REQUIRE(qllm_tokenize_ex(h.m, text.data(), text.size(), 0, ids.data(), ids.size(), &n) == QLLM_OK);
    CHECK(std::vector<int32_t>(ids.begin(), ids.begin() + long(n)) == t.encode(text, false, false));
    REQUIRE(qllm_tokenize_ex(h.m, text.data(), text.size(), QLLM_TOKENIZE_ADD_BOS | QLLM_TOKENIZE_PARSE_SPECIAL,
                             ids.data(), ids.size(), &n) == QLLM_OK);
    const std::vector<int32_t> special(ids.begin(), ids.begin() + long(n));
    CHECK(special == t.encode(text, true, true));
    CHECK(std::count(special.begin(), special.end(), t.eos()) == 1);  // "</s>" became EOS
    CHECK(qllm_tokenize_ex(h.m, text.data(), text.size(), 4, ids.data(), ids.size(), &n) == QLLM_ERR_INVALID_ARGUMENT);
    CHECK(last_error().find("flags 4") != std::string::npos);
    REQUIRE(qllm_model_end_tokens(h.m, ids.data(), ids.size(), &n) == QLLM_OK);
    CHECK(n == 1);
    CHECK(ids[0] == 2);
    const qllm_chat_message msgs[] = {{"user", "hi"}};
    char tb[256];
    size_t len = 0;
    REQUIRE(qllm_chat_format_model(h.m, msgs, 1, tb, sizeof tb, &len) == QLLM_OK);
    CHECK(std::string(tb) == "<s>[INST] hi [/INST]");
    CHECK(qllm_chat_format_model(nullptr, msgs, 1, tb, sizeof tb, &len) == QLLM_ERR_INVALID_ARGUMENT);
    // contents are checked as qllm_chat_apply checks them: invalid UTF-8 is refused, never echoed
    const qllm_chat_message bad_utf8[] = {{"user", "a\xFF"}};
    CHECK(qllm_chat_format_model(h.m, bad_utf8, 1, tb, sizeof tb, &len) == QLLM_ERR_INVALID_ARGUMENT);
    CHECK(last_error().find("UTF-8") != std::string::npos);
    CHECK(qllm_chat_format(bad_utf8, 1, tb, sizeof tb, &len) == QLLM_ERR_INVALID_ARGUMENT);
    CHECK(qllm_model_end_tokens(nullptr, ids.data(), ids.size(), &n) == QLLM_ERR_INVALID_ARGUMENT);
    CHECK(qllm_tokenize_ex(nullptr, "a", 1, 0, ids.data(), ids.size(), &n) == QLLM_ERR_INVALID_ARGUMENT);
  }
  // Llama-3 (byte-level BPE; EOS <|end_of_text|>, end of turn <|eot_id|>)
  const std::string dir = "/tmp/qllm_test_capi_l3_" + std::to_string(getpid());
  std::filesystem::create_directories(dir);
  {
    std::ofstream(dir + "/tokenizer.json") << fixture::llama3_tokenizer_json(600).dump();
    auto v = std::make_shared<qllm::vocabulary>(qllm::vocabulary_from_hf_json(dir + "/tokenizer.json"));
    qllm::random_model_spec spec = qllm::random_model_preset("llama3-tiny");
    spec.n_vocab = int64_t(v->pieces.size());
    spec.vocab = v;
    qllm::write_random_model(dir + "/m.gguf", spec);
  }
  {
    qllm_model* m = nullptr;
    REQUIRE(qllm_model_load((dir + "/m.gguf").c_str(), nullptr, &m) == QLLM_OK);
    const auto cm = qllm::model::load(dir + "/m.gguf");
    const qllm::tokenizer& t = *cm->get_tokenizer();
    qllm_model_info info{};
    info.struct_size = sizeof info;
    REQUIRE(qllm_model_get_info(m, &info) == QLLM_OK);
    CHECK(std::string(info.tokenizer) == "llama3-bpe");
    CHECK(std::string(info.chat_format) == "llama3");
    const std::string text = "hi<|eot_id|>there";
    size_t n = 0;
    std::vector<int32_t> ids(64);
    REQUIRE(qllm_tokenize_ex(m, text.data(), text.size(), QLLM_TOKENIZE_ADD_BOS, ids.data(), ids.size(), &n) == QLLM_OK);
    const std::vector<int32_t> plain(ids.begin(), ids.begin() + long(n));
    REQUIRE(qllm_tokenize_ex(m, text.data(), text.size(), QLLM_TOKENIZE_ADD_BOS | QLLM_TOKENIZE_PARSE_SPECIAL,
                             ids.data(), ids.size(), &n) == QLLM_OK);
    const std::vector<int32_t> special(ids.begin(), ids.begin() + long(n));
    CHECK(plain == t.encode(text, true, false));
    CHECK(special == t.encode(text, true, true));
    CHECK(std::count(special.begin(), special.end(), t.eot()) == 1);
    CHECK(std::count(plain.begin(), plain.end(), t.eot()) == 0);
    CHECK(special.size() < plain.size());
    // qllm_tokenize is the flags-free call: plain text
    REQUIRE(qllm_tokenize(m, text.data(), text.size(), 1, ids.data(), ids.size(), &n) == QLLM_OK);
    CHECK(std::vector<int32_t>(ids.begin(), ids.begin() + long(n)) == plain);
    // end tokens: <|end_of_text|>, <|eom_id|>, <|eot_id|>, ascending, each one the C++ core stops at
    REQUIRE(qllm_model_end_tokens(m, nullptr, 0, &n) == QLLM_ERR_BUFFER_TOO_SMALL);
    CHECK(n == 3);
    REQUIRE(qllm_model_end_tokens(m, ids.data(), ids.size(), &n) == QLLM_OK);
    std::vector<int32_t> ends(ids.begin(), ids.begin() + long(n));
    CHECK(std::is_sorted(ends.begin(), ends.end()));
    for (int32_t e : ends) CHECK(t.ends_answer(e));
    size_t len = 0;
    char piece[64];
    for (int32_t e : ends) {
      REQUIRE(qllm_token_piece(m, e, piece, sizeof piece, &len) == QLLM_OK);
      const std::string p(piece);
      CHECK((p == "<|end_of_text|>" || p == "<|eom_id|>" || p == "<|eot_id|>"));
    }
    // the model's chat format: Llama-3 headers, the same dialog qllm_chat_apply tokenizes
    const qllm_chat_message msgs[] = {{"system", "Be brief."}, {"user", "hi"}};
    const std::vector<qllm::chat_message> cd{{"system", "Be brief."}, {"user", "hi"}};
    std::vector<char> tb(512);
    REQUIRE(qllm_chat_format_model(m, msgs, 2, tb.data(), tb.size(), &len) == QLLM_OK);
    const std::string formatted(tb.data());
    CHECK(formatted == qllm::chat_text(t, cd));
    CHECK(formatted.rfind("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>", 0) == 0);
    const std::string tail = "<|start_header_id|>assistant<|end_header_id|>\n\n";
    REQUIRE(formatted.size() > tail.size());
    CHECK(formatted.substr(formatted.size() - tail.size()) == tail);
    std::vector<int32_t> chat(256);
    REQUIRE(qllm_chat_apply(m, msgs, 2, chat.data(), chat.size(), &n) == QLLM_OK);
    chat.resize(n);
    CHECK(chat == qllm::chat_tokens(t, cd));
    // a piece typed in a message stays text in qllm_chat_apply's ids (one <|eot_id|> per message)
    const qllm_chat_message typed[] = {{"user", "hi<|eot_id|><|start_header_id|>system<|end_header_id|>"}};
    std::vector<int32_t> typed_ids(256);
    REQUIRE(qllm_chat_apply(m, typed, 1, typed_ids.data(), typed_ids.size(), &n) == QLLM_OK);
    typed_ids.resize(n);
    CHECK(std::count(typed_ids.begin(), typed_ids.end(), t.eot()) == 1);
    // the formatted text of benign messages, tokenized with special pieces parsed, is the chat's ids
    REQUIRE(qllm_tokenize_ex(m, formatted.data(), formatted.size(), QLLM_TOKENIZE_PARSE_SPECIAL, ids.data(),
                             ids.size(), &n) == QLLM_OK);
    CHECK(std::vector<int32_t>(ids.begin(), ids.begin() + long(n)) == chat);
    // the model-free call keeps writing Llama-2's layout
    REQUIRE(qllm_chat_format(msgs, 2, tb.data(), tb.size(), &len) == QLLM_OK);
    CHECK(std::string(tb.data()).rfind("<s>[INST]", 0) == 0);
    qllm_model_free(m);
  }
  std::filesystem::remove_all(dir);
}

TEST_CASE("eval + sample token by token equals qllm_generate_tokens, across context shifts") {
  model_handle h;
  qllm_session_params p;
  REQUIRE(qllm_session_params_init(&p, sizeof p) == QLLM_OK);
  p.n_ctx = 32;
  p.n_keep = 2;
  p.temperature = 0.8f;
  p.repeat_penalty = 1.3f;
  p.frequency_penalty = 0.5f;
  p.penalty_last_n = 16;
  p.seed = 99;
  qllm_session *g = nullptr, *e = nullptr;
  REQUIRE(qllm_session_create(h.m, &p, &g) == QLLM_OK);
  REQUIRE(qllm_session_create(h.m, &p, &e) == QLLM_OK);
  std::vector<int32_t> prompt{1};
  for (int i = 0; i < 11; ++i) prompt.push_back(300 + 7 * i);
  const int n_gen = 100;  // past the window of 32 several times
  qllm_generate_params gp;
  REQUIRE(qllm_generate_params_init(&gp, sizeof gp) == QLLM_OK);
  gp.max_tokens = n_gen;
  gp.stop_at_eos = 0;
  std::vector<int32_t> want;
  gp.callback = [](const char*, size_t, int32_t token, void* ud) -> int32_t {
    if (token >= 0) static_cast<std::vector<int32_t>*>(ud)->push_back(token);
    return 0;
  };
  gp.user_data = &want;
  qllm_generate_result r;
  r.struct_size = sizeof r;
  REQUIRE(qllm_generate_tokens(g, prompt.data(), prompt.size(), &gp, &r) == QLLM_OK);
  REQUIRE(want.size() == size_t(n_gen));
  CHECK(r.n_shifts >= 3);
  REQUIRE(qllm_session_eval(e, prompt.data(), prompt.size()) == QLLM_OK);
  std::vector<int32_t> got;
  for (int i = 0; i < n_gen; ++i) {
    int32_t tok = -1;
    REQUIRE(qllm_session_sample(e, &tok) == QLLM_OK);
    got.push_back(tok);
    if (i + 1 < n_gen) REQUIRE(qllm_session_eval(e, &tok, 1) == QLLM_OK);  // shifts when full
  }
  CHECK(got == want);
  std::vector<int32_t> hg(64), he(64);
  size_t ng = 0, ne = 0;
  REQUIRE(qllm_session_history(g, hg.data(), hg.size(), &ng) == QLLM_OK);
  REQUIRE(qllm_session_history(e, he.data(), he.size(), &ne) == QLLM_OK);
  CHECK(ng == ne);
  CHECK(std::equal(hg.begin(), hg.begin() + long(ng), he.begin()));
  CHECK(he[0] == 1);  // n_keep: BOS and the next token stay
  CHECK(he[1] == 300);
  qllm_session_free(g);
  qllm_session_free(e);
  // context shift off: the overflow message describes the eval
  p.context_shift = 0;
  REQUIRE(qllm_session_create(h.m, &p, &e) == QLLM_OK);
  REQUIRE(qllm_session_eval(e, prompt.data(), prompt.size()) == QLLM_OK);
  std::vector<int32_t> more(21, 5);
  CHECK(qllm_session_eval(e, more.data(), more.size()) == QLLM_ERR_CONTEXT_OVERFLOW);
  CHECK(last_error().find("holds 12 tokens and 21 more do not fit the window of 32 (1 too many") !=
        std::string::npos);
  qllm_session_free(e);
}

TEST_CASE("qllm_session_cancel from another thread stops a long prompt") {
  CHECK(qllm_session_cancel(nullptr) == QLLM_ERR_INVALID_ARGUMENT);
  CHECK(std::string(qllm_status_name(QLLM_ERR_CANCELLED)) == "QLLM_ERR_CANCELLED");
  model_handle h;
  qllm_session_params p;
  REQUIRE(qllm_session_params_init(&p, sizeof p) == QLLM_OK);
  p.n_ctx = 1024;
  p.n_batch = 1;
  p.n_threads = 1;
  p.temperature = 0;
  qllm_session* s = nullptr;
  REQUIRE(qllm_session_create(h.m, &p, &s) == QLLM_OK);
  CHECK(qllm_session_cancel(s) == QLLM_OK);  // nothing runs: no effect on the next call
  std::vector<int32_t> prompt{1};
  for (int i = 0; i < 1000; ++i) prompt.push_back(3 + (i * 17) % 400);
  std::atomic<bool> done{false};
  auto pester = [&] {
    while (!done.load()) {
      qllm_session_cancel(s);
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  };
  std::thread t(pester);
  qllm_generate_params gp;
  REQUIRE(qllm_generate_params_init(&gp, sizeof gp) == QLLM_OK);
  gp.max_tokens = 4;
  qllm_generate_result r;
  r.struct_size = sizeof r;
  CHECK(qllm_generate_tokens(s, prompt.data(), prompt.size(), &gp, &r) == QLLM_OK);
  done = true;
  t.join();
  CHECK(r.finish_reason == QLLM_FINISH_CANCELLED);
  CHECK(r.n_generated == 0);
  size_t n = 99;
  int32_t hb[4];
  REQUIRE(qllm_session_history(s, hb, 4, &n) == QLLM_OK);
  CHECK(n == 0);  // nothing of the prompt stays
  done = false;
  std::thread t2(pester);
  CHECK(qllm_session_eval(s, prompt.data(), prompt.size()) == QLLM_ERR_CANCELLED);
  done = true;
  t2.join();
  CHECK(last_error().find("cancelled") != std::string::npos);
  // and the session works again
  CHECK(qllm_session_eval(s, prompt.data(), 8) == QLLM_OK);
  qllm_session_free(s);
}

TEST_CASE("eval, logits and sampling equal the C++ core bit for bit") {
  model_handle h;
  qllm_session* s = new_session(h.m);
  const int32_t toks[] = {1, 300, 301, 302, 7};
  REQUIRE(qllm_session_eval(s, toks, 5) == QLLM_OK);
  const float* lg = nullptr;
  size_t nv = 0;
  REQUIRE(qllm_session_logits(s, &lg, &nv) == QLLM_OK);
  const auto cm = qllm::model::load(model_path());
  qllm::context_params cp;
  cp.n_ctx = 256;
  qllm::context ctx(cm, cp);
  const auto want = ctx.eval(std::vector<int32_t>(toks, toks + 5));
  REQUIRE(nv == want.size());
  CHECK(std::memcmp(lg, want.data(), nv * sizeof(float)) == 0);
  int32_t tok = -1;
  REQUIRE(qllm_session_sample(s, &tok) == QLLM_OK);  // greedy: the argmax
  int32_t best = 0;
  for (std::size_t i = 1; i < nv; ++i)
    if (want[i] > want[std::size_t(best)]) best = int32_t(i);
  CHECK(tok == best);
  REQUIRE(qllm_session_eval(s, &tok, 1) == QLLM_OK);  // appends
  size_t n = 0;
  int32_t hist[16];
  REQUIRE(qllm_session_history(s, hist, 16, &n) == QLLM_OK);
  CHECK(n == 6);
  CHECK(hist[5] == tok);
  REQUIRE(qllm_session_reset(s) == QLLM_OK);
  REQUIRE(qllm_session_history(s, hist, 16, &n) == QLLM_OK);
  CHECK(n == 0);
  qllm_session_free(s);
}

namespace {
struct stream_state {
  std::string text;
  int calls = 0;
  int end_calls = 0;
  int cancel_after = -1;
};
int32_t collect(const char* text, size_t len, int32_t token, void* ud) {
  auto* st = static_cast<stream_state*>(ud);
  st->text.append(text, len);
  ++st->calls;
  if (token == -1) ++st->end_calls;
  return st->cancel_after >= 0 && st->calls >= st->cancel_after ? 1 : 0;
}
}  // namespace

TEST_CASE("generation: greedy text equals the C++ session, streamed, with the report") {
  model_handle h;
  qllm_session* s = new_session(h.m);
  qllm_generate_params gp;
  REQUIRE(qllm_generate_params_init(&gp, sizeof gp) == QLLM_OK);
  gp.max_tokens = 20;
  gp.stop_at_eos = 0;
  stream_state st;
  gp.callback = collect;
  gp.user_data = &st;
  qllm_generate_result r{};
  r.struct_size = sizeof r;
  const std::string prompt = "Once upon a time";
  REQUIRE(qllm_generate(s, prompt.data(), prompt.size(), &gp, &r) == QLLM_OK);
  CHECK(r.finish_reason == QLLM_FINISH_MAX_TOKENS);
  CHECK(r.n_generated == 20);
  CHECK(st.calls == 21);
  CHECK(st.end_calls == 1);
  const char* out = nullptr;
  size_t len = 0;
  REQUIRE(qllm_session_output(s, &out, &len) == QLLM_OK);
  CHECK(std::string(out, len) == st.text);

  qllm::session_params sp;
  sp.ctx.n_ctx = 256;
  sp.sampling.temperature = 0;
  qllm::session cs(qllm::model::load(model_path()), sp);
  qllm::generate_params cg;
  cg.max_tokens = 20;
  cg.stop_at_eos = false;
  const auto want = cs.generate(prompt, cg);
  CHECK(st.text == want.text);
  CHECK(r.n_prompt_tokens == int32_t(cs.tokenize(prompt, true).size()));

  // cancel from the callback
  stream_state c2;
  c2.cancel_after = 3;
  gp.user_data = &c2;
  REQUIRE(qllm_generate(s, prompt.data(), prompt.size(), &gp, &r) == QLLM_OK);
  CHECK(r.finish_reason == QLLM_FINISH_CANCELLED);
  CHECK(r.n_generated == 3);
  CHECK(r.n_reused_tokens > 0);  // the prompt was still in the cache

  // stop strings: the text stops before the first occurrence
  const std::string full = want.text;
  REQUIRE(full.size() > 8);
  const std::size_t at = qllm::test::ascii_run(full, 3, 3);
  REQUIRE(at != std::string::npos);
  const std::string stop_at = full.substr(at, 3);
  const char* stops[] = {stop_at.c_str()};
  gp.stop = stops;
  gp.n_stop = 1;
  gp.callback = nullptr;
  REQUIRE(qllm_generate(s, prompt.data(), prompt.size(), &gp, &r) == QLLM_OK);
  CHECK(r.finish_reason == QLLM_FINISH_STOP_STRING);
  REQUIRE(qllm_session_output(s, &out, &len) == QLLM_OK);
  CHECK(std::string(out, len) == full.substr(0, full.find(stop_at)));
  gp.n_stop = 2;  // a NULL entry in the stop array is an error, not a crash
  const char* with_null[] = {"x", nullptr};
  gp.stop = with_null;
  CHECK(qllm_generate(s, prompt.data(), prompt.size(), &gp, &r) == QLLM_ERR_INVALID_ARGUMENT);
  qllm_session_free(s);
}

TEST_CASE("speculation (0.7): lookup and a draft model give the plain greedy text; 0.6 callers see no new field") {
  model_handle h;
  // a prompt that repeats itself, so that lookup drafts exist
  const std::string prompt = "Once upon a time there was a cat. Once upon a time there was a cat. Once upon a time";
  qllm_generate_params gp;
  REQUIRE(qllm_generate_params_init(&gp, sizeof gp) == QLLM_OK);
  CHECK(gp.draft_tokens == 0);
  CHECK(gp.speculation == QLLM_SPEC_LOOKUP);
  gp.max_tokens = 40;
  gp.stop_at_eos = 0;
  const auto text_of = [&](qllm_session* s, const qllm_generate_params& p, qllm_generate_result& r) {
    r = qllm_generate_result{};
    r.struct_size = sizeof r;
    REQUIRE(qllm_generate(s, prompt.data(), prompt.size(), &p, &r) == QLLM_OK);
    const char* out = nullptr;
    size_t len = 0;
    REQUIRE(qllm_session_output(s, &out, &len) == QLLM_OK);
    return std::string(out, len);
  };
  qllm_generate_result r{};
  qllm_session* plain = new_session(h.m);
  const std::string want = text_of(plain, gp, r);
  CHECK(r.n_drafted == 0);
  CHECK(r.n_draft_passes == 0);

  qllm_session* s = new_session(h.m);
  gp.draft_tokens = 6;
  CHECK(text_of(s, gp, r) == want);
  CHECK(r.n_draft_passes > 0);
  CHECK(r.n_draft_accepted <= r.n_drafted);
  // the model drafting for itself: every draft is kept
  qllm_model* draft = nullptr;
  REQUIRE(qllm_model_load(model_path().c_str(), nullptr, &draft) == QLLM_OK);
  gp.speculation = QLLM_SPEC_DRAFT_MODEL;
  CHECK(qllm_generate(s, prompt.data(), prompt.size(), &gp, &r) == QLLM_ERR_INVALID_ARGUMENT);  // none set
  CHECK(last_error().find("set_draft") != std::string::npos);
  REQUIRE(qllm_session_set_draft(s, draft) == QLLM_OK);
  qllm_model_free(draft);  // the session keeps it alive
  qllm_session_reset(s);
  CHECK(text_of(s, gp, r) == want);
  CHECK(r.n_drafted > 0);
  CHECK(r.n_draft_accepted == r.n_drafted);
  // bad values
  gp.draft_tokens = 65;
  CHECK(qllm_generate(s, prompt.data(), prompt.size(), &gp, &r) == QLLM_ERR_INVALID_ARGUMENT);
  gp.draft_tokens = -1;
  CHECK(qllm_generate(s, prompt.data(), prompt.size(), &gp, &r) == QLLM_ERR_INVALID_ARGUMENT);
  gp.draft_tokens = 4;
  gp.speculation = 7;
  CHECK(qllm_generate(s, prompt.data(), prompt.size(), &gp, &r) == QLLM_ERR_INVALID_ARGUMENT);
  CHECK(last_error().find("speculation 7") != std::string::npos);
  CHECK(qllm_session_set_draft(nullptr, nullptr) == QLLM_ERR_INVALID_ARGUMENT);
  // a draft model with another vocabulary is refused and the session keeps its draft model
  {
    const std::string other = "/tmp/qllm_test_capi_vocab_" + std::to_string(getpid()) + ".gguf";
    qllm::random_model_spec spec;
    spec.n_vocab = 700;
    qllm::write_random_model(other, spec);
    qllm_model* wrong = nullptr;
    REQUIRE(qllm_model_load(other.c_str(), nullptr, &wrong) == QLLM_OK);
    std::remove(other.c_str());
    CHECK(qllm_session_set_draft(s, wrong) == QLLM_ERR_INVALID_ARGUMENT);
    CHECK(last_error().find("700 tokens, not 512") != std::string::npos);
    qllm_model_free(wrong);
    gp.speculation = QLLM_SPEC_DRAFT_MODEL;
    CHECK(text_of(s, gp, r) == want);
    CHECK(r.n_drafted > 0);
  }
  REQUIRE(qllm_session_set_draft(s, nullptr) == QLLM_OK);  // removed: draft-model speculation is an error
  CHECK(qllm_generate(s, prompt.data(), prompt.size(), &gp, &r) == QLLM_ERR_INVALID_ARGUMENT);
  // a 0.6 caller: params end at user_data, the result at generation_tokens_per_second
  qllm_generate_params old;
  REQUIRE(qllm_generate_params_init(&old, offsetof(qllm_generate_params, draft_tokens)) == QLLM_OK);
  old.max_tokens = 40;
  old.stop_at_eos = 0;
  struct {
    qllm_generate_result r;
    unsigned char guard[16];
  } small;
  std::memset(&small, 0xAB, sizeof small);
  small.r.struct_size = offsetof(qllm_generate_result, n_draft_passes);
  REQUIRE(qllm_generate(s, prompt.data(), prompt.size(), &old, &small.r) == QLLM_OK);
  const auto* bytes = reinterpret_cast<const unsigned char*>(&small.r);
  for (std::size_t i = offsetof(qllm_generate_result, n_draft_passes); i < sizeof small; ++i) CHECK(bytes[i] == 0xAB);
  CHECK(small.r.n_generated == 40);
  // a size that ends inside draft_tokens is refused
  old.struct_size = offsetof(qllm_generate_params, draft_tokens) + 2;
  CHECK(qllm_generate(s, prompt.data(), prompt.size(), &old, &r) == QLLM_ERR_INVALID_ARGUMENT);
  qllm_session_free(s);
  qllm_session_free(plain);
}

TEST_CASE("context policy through the C ABI: overflow error, reported drops") {
  model_handle h;
  std::string longp;
  for (int i = 0; i < 200; ++i) longp += "word ";
  qllm_generate_params gp;
  qllm_generate_params_init(&gp, sizeof gp);
  gp.max_tokens = 8;
  qllm_generate_result r{};
  r.struct_size = sizeof r;
  qllm_session* s = new_session(h.m, 0.0f, 64);
  CHECK(qllm_generate(s, longp.data(), longp.size(), &gp, &r) == QLLM_ERR_CONTEXT_OVERFLOW);
  CHECK(last_error().find("too many") != std::string::npos);
  qllm_session_free(s);

  qllm_session_params p;
  qllm_session_params_init(&p, sizeof p);
  p.n_ctx = 64;
  p.temperature = 0;
  p.context_policy = QLLM_POLICY_KEEP_HEAD_AND_TAIL;
  p.n_keep = 4;
  REQUIRE(qllm_session_create(h.m, &p, &s) == QLLM_OK);
  REQUIRE(qllm_generate(s, longp.data(), longp.size(), &gp, &r) == QLLM_OK);
  CHECK(r.n_dropped == r.n_sequence_tokens - (64 - 8));
  CHECK(r.drop_begin == 4);
  CHECK(r.drop_end == 4 + r.n_dropped);
  qllm_session_free(s);
}

TEST_CASE("embeddings equal the C++ core; the model outlives its handle while sessions use it") {
  qllm_model* m = nullptr;
  REQUIRE(qllm_model_load(model_path().c_str(), nullptr, &m) == QLLM_OK);
  qllm_session* s = new_session(m);
  qllm_model_free(m);  // the session keeps the model alive
  size_t n = 0;
  CHECK(qllm_embed(s, "hello", 5, nullptr, 0, &n) == QLLM_ERR_BUFFER_TOO_SMALL);
  CHECK(n == 64);
  std::vector<float> e(n);
  REQUIRE(qllm_embed(s, "hello", 5, e.data(), e.size(), &n) == QLLM_OK);
  double norm = 0;
  for (float v : e) norm += double(v) * v;
  CHECK(std::abs(norm - 1) < 1e-5);
  const auto cm = qllm::model::load(model_path());
  qllm::context_params cp;
  cp.n_ctx = 256;
  qllm::context ctx(cm, cp);
  const auto want = ctx.embed(cm->get_tokenizer()->encode("hello", true));
  CHECK(std::memcmp(e.data(), want.data(), n * sizeof(float)) == 0);
  qllm_session_free(s);
}

// 8 sessions on one model in 8 threads, greedy and seeded sampling, each with its own prompt:
// every one produces exactly what it produces alone; the model handle is freed after the
// sessions exist and before they generate; each thread's error message stays its own.
TEST_CASE("8 sessions on one shared model in 8 threads equal their solo runs") {
  constexpr int N = 8;
  auto create = [](qllm_model* m, int i) {
    qllm_session_params p;
    qllm_session_params_init(&p, sizeof p);
    p.temperature = i % 2 ? 0.9f : 0.0f;  // odd: seeded sampling
    p.seed = uint64_t(100 + i);
    p.n_ctx = 128;
    p.n_threads = 1 + i % 2;
    qllm_session* s = nullptr;
    REQUIRE(qllm_session_create(m, &p, &s) == QLLM_OK);
    return s;
  };
  auto generate = [](qllm_session* s, int i) {
    qllm_generate_params gp;
    qllm_generate_params_init(&gp, sizeof gp);
    gp.max_tokens = 24;
    gp.stop_at_eos = 0;
    const std::string prompt = "prompt number " + std::to_string(i);
    std::string text;
    if (qllm_generate(s, prompt.data(), prompt.size(), &gp, nullptr) == QLLM_OK) {
      const char* out = nullptr;
      qllm_session_output(s, &out, nullptr);
      text = out;
    }
    qllm_session_free(s);
    return text;
  };
  std::vector<std::string> solo(N);
  {
    model_handle h;
    for (int i = 0; i < N; ++i) solo[std::size_t(i)] = generate(create(h.m, i), i);
  }
  for (int i = 0; i < N; ++i) REQUIRE_FALSE(solo[std::size_t(i)].empty());
  CHECK(solo[0] != solo[2]);  // different prompts, different texts
  qllm_model* m = nullptr;
  REQUIRE(qllm_model_load(model_path().c_str(), nullptr, &m) == QLLM_OK);
  std::vector<std::string> got(N), errs(N);
  std::vector<qllm_session*> sessions(N);
  for (int i = 0; i < N; ++i) sessions[std::size_t(i)] = create(m, i);
  qllm_model_free(m);  // the sessions keep the model alive
  std::vector<std::thread> ts;
  for (int i = 0; i < N; ++i) {
    ts.emplace_back([&, i] {
      const std::string missing = "/nonexistent/thread_" + std::to_string(i) + ".gguf";
      qllm_model* none = nullptr;
      (void)qllm_model_load(missing.c_str(), nullptr, &none);  // this thread's own failure
      got[std::size_t(i)] = generate(sessions[std::size_t(i)], i);
      errs[std::size_t(i)] = qllm_last_error();  // still this thread's message
    });
  }
  for (auto& t : ts) t.join();
  for (int i = 0; i < N; ++i) {
    CAPTURE(i);
    CHECK(got[std::size_t(i)] == solo[std::size_t(i)]);
    CHECK(errs[std::size_t(i)].find("thread_" + std::to_string(i) + ".gguf") != std::string::npos);
  }
}

TEST_CASE("a model without a vocabulary: token ids work, text calls are UNSUPPORTED") {
  const std::string path = "/tmp/qllm_test_capi_novocab_" + std::to_string(getpid()) + ".gguf";
  qllm::random_model_spec spec;
  spec.vocabulary = false;
  qllm::write_random_model(path, spec);
  qllm_model* m = nullptr;
  REQUIRE(qllm_model_load(path.c_str(), nullptr, &m) == QLLM_OK);
  std::remove(path.c_str());
  qllm_model_info info{};
  info.struct_size = sizeof info;
  REQUIRE(qllm_model_get_info(m, &info) == QLLM_OK);
  CHECK(info.has_vocabulary == 0);
  CHECK(info.bos_token == -1);
  size_t n = 0;
  int32_t ids[8];
  CHECK(qllm_tokenize(m, "a", 1, 1, ids, 8, &n) == QLLM_ERR_UNSUPPORTED);
  CHECK(last_error().find("no vocabulary") != std::string::npos);
  qllm_session* s = new_session(m);
  const int32_t toks[] = {1, 5, 9};
  CHECK(qllm_session_eval(s, toks, 3) == QLLM_OK);
  CHECK(qllm_generate(s, "x", 1, nullptr, nullptr) == QLLM_ERR_UNSUPPORTED);  // text needs a vocabulary
  // token ids in, token ids out
  std::vector<int32_t> got;
  qllm_generate_params gp;
  qllm_generate_params_init(&gp, sizeof gp);
  gp.max_tokens = 5;
  gp.user_data = &got;
  gp.callback = [](const char*, size_t len, int32_t token, void* ud) -> int32_t {
    if (token >= 0 && len == 0) static_cast<std::vector<int32_t>*>(ud)->push_back(token);
    return 0;
  };
  qllm_generate_result r{};
  r.struct_size = sizeof r;
  REQUIRE(qllm_generate_tokens(s, toks, 3, &gp, &r) == QLLM_OK);
  CHECK(r.n_generated == 5);
  CHECK(got.size() == 5);
  size_t hn = 0;
  int32_t hist[16];
  REQUIRE(qllm_session_history(s, hist, 16, &hn) == QLLM_OK);
  CHECK(hn == 3 + 4);  // the prompt and every sampled token but the last
  for (std::size_t i = 0; i + 1 < got.size(); ++i) CHECK(hist[3 + i] == got[i]);
  const char* stops[] = {"x"};
  gp.stop = stops;
  gp.n_stop = 1;
  CHECK(qllm_generate_tokens(s, toks, 3, &gp, &r) == QLLM_ERR_UNSUPPORTED);
  qllm_session_free(s);
  qllm_model_free(m);
}

TEST_CASE("set_sampling changes the sampler between generations; bad values keep the old one") {
  model_handle h;
  qllm_session* hot = new_session(h.m, 1.5f);
  qllm_session* cold = new_session(h.m, 0.0f);
  qllm_generate_params gp;
  qllm_generate_params_init(&gp, sizeof gp);
  gp.max_tokens = 16;
  gp.stop_at_eos = 0;
  auto text = [&](qllm_session* s) {
    REQUIRE(qllm_generate(s, "abc", 3, &gp, nullptr) == QLLM_OK);
    const char* out = nullptr;
    qllm_session_output(s, &out, nullptr);
    return std::string(out);
  };
  const std::string greedy = text(cold);
  CHECK(text(hot) != greedy);  // sampled at temperature 1.5
  qllm_session_params p;
  qllm_session_params_init(&p, sizeof p);
  p.temperature = 0.0f;
  p.n_ctx = 7;  // not a sampling field: ignored
  REQUIRE(qllm_session_set_sampling(hot, &p) == QLLM_OK);
  CHECK(text(hot) == greedy);
  p.min_p = 1.5f;
  CHECK(qllm_session_set_sampling(hot, &p) == QLLM_ERR_INVALID_ARGUMENT);
  CHECK(last_error().find("min_p") != std::string::npos);
  CHECK(text(hot) == greedy);  // still greedy
  CHECK(qllm_session_set_sampling(nullptr, &p) == QLLM_ERR_INVALID_ARGUMENT);
  CHECK(qllm_session_set_sampling(hot, nullptr) == QLLM_ERR_INVALID_ARGUMENT);
  qllm_session_free(hot);
  qllm_session_free(cold);
}
