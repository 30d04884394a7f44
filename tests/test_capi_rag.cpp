// The C ABI of chain of thought and retrieval (0.5) against the C++ core: the same answers,
// reports and counts; misuse is a status.
#include <doctest/doctest.h>

#include <cstddef>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "qllm.h"
#include "qllm/model.hpp"
#include "qllm/rag.hpp"
#include "qllm/session.hpp"
#include "test_util.hpp"

namespace {

const std::string kShipped = std::string(QLLM_MODELS_DIR) + "/tiny-kjv.q8_0.gguf";

struct shipped_handle {
  qllm_model* m = nullptr;
  shipped_handle() { REQUIRE(qllm_model_load(kShipped.c_str(), nullptr, &m) == QLLM_OK); }
  ~shipped_handle() { qllm_model_free(m); }
};

qllm_session* greedy_session(qllm_model* m) {
  qllm_session_params p;
  REQUIRE(qllm_session_params_init(&p, sizeof p) == QLLM_OK);
  p.temperature = 0;
  p.n_threads = 1;
  qllm_session* s = nullptr;
  REQUIRE(qllm_session_create(m, &p, &s) == QLLM_OK);
  return s;
}

qllm::session cxx_session() {
  qllm::session_params sp;
  sp.sampling.temperature = 0;
  sp.ctx.n_threads = 1;
  static auto m = qllm::model::load(kShipped);
  return qllm::session(m, sp);
}

std::string text_of(qllm_status (*f)(const qllm_session*, const char**, size_t*), const qllm_session* s) {
  const char* t = nullptr;
  size_t n = 0;
  REQUIRE(f(s, &t, &n) == QLLM_OK);
  REQUIRE(t != nullptr);
  CHECK(std::strlen(t) == n);
  return std::string(t, n);
}

int32_t collect(const char* text, size_t len, int32_t, void* user) {
  static_cast<std::string*>(user)->append(text, len);
  return 0;
}

std::vector<std::string> corpus(const std::string& dir) {
  std::filesystem::create_directories(dir);
  for (const char* n : {"GPL-3", "Apache-2.0", "MPL-2.0", "BSD"})
    std::filesystem::copy_file(std::string("/usr/share/common-licenses/") + n, dir + "/" + n + ".txt");
  return {dir};
}

}  // namespace

TEST_CASE("retrieval and chain of thought: NULLs, bad sizes and bad files are statuses") {
  qllm_rag_free(nullptr);
  qllm_rag* r = reinterpret_cast<qllm_rag*>(0x1);
  CHECK(qllm_rag_open(nullptr, 1, &r) == QLLM_ERR_INVALID_ARGUMENT);
  CHECK(r == nullptr);
  CHECK(qllm_rag_open("/tmp/x.db", 1, nullptr) == QLLM_ERR_INVALID_ARGUMENT);
  CHECK(qllm_rag_index(nullptr, nullptr, nullptr, 0, nullptr, nullptr) == QLLM_ERR_INVALID_ARGUMENT);
  CHECK(qllm_rag_ask(nullptr, nullptr, "q", 1, nullptr, nullptr, nullptr) == QLLM_ERR_INVALID_ARGUMENT);
  CHECK(qllm_generate_cot(nullptr, "x", 1, nullptr, nullptr, nullptr) == QLLM_ERR_INVALID_ARGUMENT);
  CHECK(qllm_chat_cot(nullptr, nullptr, 0, nullptr, nullptr, nullptr) == QLLM_ERR_INVALID_ARGUMENT);
  const char* t = nullptr;
  CHECK(qllm_session_reasoning(nullptr, &t, nullptr) == QLLM_ERR_INVALID_ARGUMENT);
  CHECK(qllm_session_rag_report(nullptr, &t, nullptr) == QLLM_ERR_INVALID_ARGUMENT);
  CHECK(qllm_cot_params_init(nullptr, sizeof(qllm_cot_params)) == QLLM_ERR_INVALID_ARGUMENT);
  qllm_rag_ask_params ap;
  CHECK(qllm_rag_ask_params_init(&ap, 2) == QLLM_ERR_INVALID_ARGUMENT);

  qllm::test::tmpdir d("qllm_capi_rag");
  CHECK(qllm_rag_open((d / "missing.db").c_str(), 0, &r) == QLLM_ERR_IO);
  CHECK(r == nullptr);
  std::ofstream(d / "text.db") << "not a database at all, but long enough to be read as a header by SQLite\n";
  CHECK(qllm_rag_open((d / "text.db").c_str(), 0, &r) == QLLM_ERR_BAD_FORMAT);
  CHECK(std::string(qllm_last_error()).find("not a database") != std::string::npos);

  shipped_handle h;
  REQUIRE(qllm_rag_open((d / "r.db").c_str(), 1, &r) == QLLM_OK);
  const char* paths[] = {nullptr};
  CHECK(qllm_rag_index(r, h.m, paths, 1, nullptr, nullptr) == QLLM_ERR_INVALID_ARGUMENT);
  CHECK(qllm_rag_index(r, h.m, nullptr, 1, nullptr, nullptr) == QLLM_ERR_INVALID_ARGUMENT);
  CHECK(qllm_rag_index(r, nullptr, nullptr, 0, nullptr, nullptr) == QLLM_ERR_INVALID_ARGUMENT);
  const std::string none = d / "no-such-dir";
  const char* missing[] = {none.c_str()};
  CHECK(qllm_rag_index(r, h.m, missing, 1, nullptr, nullptr) == QLLM_ERR_INVALID_ARGUMENT);
  qllm_rag_index_params ip;
  REQUIRE(qllm_rag_index_params_init(&ip, sizeof ip) == QLLM_OK);
  CHECK(ip.chunk_tokens == 192);
  ip.chunk_tokens = 4;
  const std::string dir = d.path;
  const char* here[] = {dir.c_str()};
  CHECK(qllm_rag_index(r, h.m, here, 1, &ip, nullptr) == QLLM_ERR_INVALID_ARGUMENT);

  qllm_session* s = greedy_session(h.m);
  REQUIRE(qllm_rag_ask_params_init(&ap, sizeof ap) == QLLM_OK);
  CHECK(ap.top_k == 8);
  ap.top_k = 0;
  CHECK(qllm_rag_ask(r, s, "question", 8, &ap, nullptr, nullptr) == QLLM_ERR_INVALID_ARGUMENT);
  CHECK(qllm_rag_ask(r, s, nullptr, 8, nullptr, nullptr, nullptr) == QLLM_ERR_INVALID_ARGUMENT);
  CHECK(qllm_rag_ask(r, s, "  ", 2, nullptr, nullptr, nullptr) == QLLM_ERR_INVALID_ARGUMENT);
  qllm_generate_params gp;
  REQUIRE(qllm_generate_params_init(&gp, sizeof gp) == QLLM_OK);
  std::string system;  // instructions alone longer than the 512-token window
  for (int i = 0; i < 300; ++i) system += "Always answer carefully. ";
  REQUIRE(qllm_rag_ask_params_init(&ap, sizeof ap) == QLLM_OK);
  ap.system = system.c_str();
  CHECK(qllm_rag_ask(r, s, "patent", 6, &ap, &gp, nullptr) == QLLM_ERR_CONTEXT_OVERFLOW);
  CHECK(std::string(qllm_last_error()).find("more than the window") != std::string::npos);
  qllm_cot_params cp;
  REQUIRE(qllm_cot_params_init(&cp, sizeof cp) == QLLM_OK);
  CHECK(cp.answer_tokens == 64);
  cp.answer_tokens = 0;
  CHECK(qllm_generate_cot(s, "x", 1, nullptr, &cp, nullptr) == QLLM_ERR_INVALID_ARGUMENT);
  // a newer caller's struct with a field this library does not know
  struct {
    qllm_cot_params p;
    int64_t future;
  } big{};
  REQUIRE(qllm_cot_params_init(&big.p, sizeof big) == QLLM_OK);
  big.future = 1;
  CHECK(qllm_generate_cot(s, "x", 1, nullptr, &big.p, nullptr) == QLLM_ERR_UNSUPPORTED);
  // an older caller's struct that stops after answer_tokens: the rest are defaults
  qllm_cot_params small;
  REQUIRE(qllm_cot_params_init(&small, offsetof(qllm_cot_params, answer_tokens) + sizeof(int32_t)) == QLLM_OK);
  small.answer_tokens = 4;
  gp.max_tokens = 4;
  CHECK(qllm_generate_cot(s, "In the beginning", 16, &gp, &small, nullptr) == QLLM_OK);
  qllm_session_free(s);
  qllm_rag_free(r);
}

TEST_CASE("retrieval through the C ABI: the C++ store's counts, prompts, report and answers") {
  qllm::test::tmpdir d("qllm_capi_rag2");
  const auto docs = corpus(d / "docs");
  shipped_handle h;
  qllm_rag* r = nullptr;
  REQUIRE(qllm_rag_open((d / "r.db").c_str(), 1, &r) == QLLM_OK);
  qllm_rag_index_params ip;
  REQUIRE(qllm_rag_index_params_init(&ip, sizeof ip) == QLLM_OK);
  ip.chunk_tokens = 96;
  ip.overlap_tokens = 16;
  const char* paths[] = {docs[0].c_str()};
  qllm_rag_index_result ir{};
  ir.struct_size = sizeof ir;
  REQUIRE(qllm_rag_index(r, h.m, paths, 1, &ip, &ir) == QLLM_OK);
  CHECK(ir.files_added == 4);
  CHECK(ir.chunks_added > 50);
  REQUIRE(qllm_rag_index(r, h.m, paths, 1, &ip, &ir) == QLLM_OK);
  CHECK(ir.files_unchanged == 4);
  CHECK(ir.chunks_added == 0);

  const std::string q = "Who grants a patent license to make and sell?";
  qllm_session* s = greedy_session(h.m);
  qllm_generate_params gp;
  REQUIRE(qllm_generate_params_init(&gp, sizeof gp) == QLLM_OK);
  gp.max_tokens = 32;
  std::string streamed;
  gp.callback = collect;
  gp.user_data = &streamed;
  qllm_rag_ask_params ap;
  REQUIRE(qllm_rag_ask_params_init(&ap, sizeof ap) == QLLM_OK);
  ap.top_k = 6;
  qllm_generate_result res{};
  res.struct_size = sizeof res;
  REQUIRE(qllm_rag_ask(r, s, q.data(), q.size(), &ap, &gp, &res) == QLLM_OK);
  const std::string answer = text_of(qllm_session_output, s);
  CHECK(streamed == answer);
  CHECK(res.n_generated > 0);
  const auto report = nlohmann::json::parse(text_of(qllm_session_rag_report, s));

  // the same through the C++ core
  auto st = qllm::rag::store::open(d / "r.db", false);
  qllm::session cs = cxx_session();
  qllm::rag::ask_params cap;
  cap.top_k = 6;
  qllm::generate_params cgp;
  cgp.max_tokens = 32;
  const auto want = qllm::rag::ask(cs, *st, q, cap, cgp);
  CHECK(answer == want.result.text);
  CHECK(report["window"] == 512);
  CHECK(report["reserved"] == 32);
  CHECK(report["prompt_tokens"] == want.built.tokens.size());
  REQUIRE(report["used"].size() == want.built.used.size());
  REQUIRE(report["dropped"].size() == want.built.dropped.size());
  CHECK(report["used"].size() + report["dropped"].size() == 6);
  CHECK(!report["used"].empty());
  for (std::size_t i = 0; i < want.built.used.size(); ++i) {
    CHECK(report["used"][i]["chunk_id"] == want.built.used[i].h.chunk_id);
    CHECK(report["used"][i]["n"] == i + 1);
  }
  for (std::size_t i = 0; i < want.built.dropped.size(); ++i)
    CHECK(report["dropped"][i]["reason"] == want.built.dropped[i].reason);

  // with chain of thought: the reasoning apart, streamed through its own callback
  qllm_cot_params cp;
  REQUIRE(qllm_cot_params_init(&cp, sizeof cp) == QLLM_OK);
  cp.answer_tokens = 12;
  std::string reasoning_stream;
  cp.reasoning_callback = collect;
  cp.reasoning_user_data = &reasoning_stream;
  ap.cot = 1;
  ap.cot_params = &cp;
  streamed.clear();
  REQUIRE(qllm_rag_ask(r, s, q.data(), q.size(), &ap, &gp, &res) == QLLM_OK);
  cap.cot = true;
  cap.cot_p.answer_tokens = 12;
  qllm::session cs2 = cxx_session();
  const auto want2 = qllm::rag::ask(cs2, *st, q, cap, cgp);
  CHECK(text_of(qllm_session_output, s) == want2.result.text);
  CHECK(text_of(qllm_session_reasoning, s) == want2.reasoning);
  CHECK(reasoning_stream == want2.reasoning);
  CHECK(streamed == want2.result.text);
  CHECK(!want2.reasoning.empty());
  // another generation clears the report and the reasoning
  REQUIRE(qllm_generate(s, "And", 3, nullptr, nullptr) == QLLM_OK);
  CHECK(text_of(qllm_session_rag_report, s).empty());
  CHECK(text_of(qllm_session_reasoning, s).empty());
  qllm_session_free(s);
  qllm_rag_free(r);
}

TEST_CASE("chain of thought through the C ABI equals the C++ core, plain and chat") {
  shipped_handle h;
  qllm_session* s = greedy_session(h.m);
  qllm_generate_params gp;
  REQUIRE(qllm_generate_params_init(&gp, sizeof gp) == QLLM_OK);
  gp.max_tokens = 24;
  qllm_cot_params cp;
  REQUIRE(qllm_cot_params_init(&cp, sizeof cp) == QLLM_OK);
  cp.answer_tokens = 10;
  std::string reasoning_stream, answer_stream;
  cp.reasoning_callback = collect;
  cp.reasoning_user_data = &reasoning_stream;
  gp.callback = collect;
  gp.user_data = &answer_stream;
  const std::string prompt = "And Moses said unto the people,";
  qllm_generate_result res{};
  res.struct_size = sizeof res;
  REQUIRE(qllm_generate_cot(s, prompt.data(), prompt.size(), &gp, &cp, &res) == QLLM_OK);
  qllm::session cs = cxx_session();
  qllm::generate_params cgp;
  cgp.max_tokens = 24;
  qllm::cot_params ccp;
  ccp.answer_tokens = 10;
  const auto want = qllm::generate_cot(cs, prompt, cgp, ccp);
  CHECK(text_of(qllm_session_reasoning, s) == want.reasoning.text);
  CHECK(text_of(qllm_session_output, s) == want.answer.text);
  CHECK(reasoning_stream == want.reasoning.text);
  CHECK(answer_stream == want.answer.text);
  CHECK(res.n_generated == int32_t(want.answer.tokens.size()));

  const qllm_chat_message msgs[] = {{"system", "Answer briefly."}, {"user", "Who parted the sea?"}};
  cp.reasoning_cue = "Think it through first.";
  reasoning_stream.clear();
  answer_stream.clear();
  REQUIRE(qllm_chat_cot(s, msgs, 2, &gp, &cp, &res) == QLLM_OK);
  qllm::session cs2 = cxx_session();
  ccp.reasoning_cue = "Think it through first.";
  const std::vector<qllm::chat_message> dialog{{"system", "Answer briefly."}, {"user", "Who parted the sea?"}};
  const auto want2 = qllm::chat_cot(cs2, dialog, cgp, ccp);
  CHECK(text_of(qllm_session_reasoning, s) == want2.reasoning.text);
  CHECK(text_of(qllm_session_output, s) == want2.answer.text);
  CHECK(reasoning_stream == want2.reasoning.text);
  qllm_session_free(s);
}
