// Fuzz target: the C ABI's text entry points on a small generated model. The first byte picks
// the call; the rest is its input. Every call returns a status (never crashes, never throws), and
// the buffer convention holds for every capacity.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "qllm.h"
#include "qllm/random_model.hpp"

namespace {
qllm_model* model() {
  static qllm_model* m = [] {
    const std::string path = "/tmp/qllm_fuzz_capi_" + std::to_string(getpid()) + ".gguf";
    qllm::random_model_spec spec;  // tiny, with a byte-fallback vocabulary of 512 pieces
    qllm::write_random_model(path, spec);
    qllm_model_params p;
    qllm_model_params_init(&p, sizeof p);
    p.n_threads = 1;
    qllm_model* h = nullptr;
    if (qllm_model_load(path.c_str(), &p, &h) != QLLM_OK) std::abort();
    std::remove(path.c_str());  // the mapping stays valid
    return h;
  }();
  return m;
}

void check(qllm_status st) {
  if (st < QLLM_OK || st > QLLM_ERR_CANCELLED) std::abort();
  if (st != QLLM_OK && qllm_last_error()[0] == '\0') std::abort();  // every error has a message
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  const uint8_t op = data[0] % 6, arg = data[1];
  data += 2, size -= 2;
  const char* text = reinterpret_cast<const char*>(data);
  qllm_model* m = model();
  size_t n = 0;
  switch (op) {
    case 0: {  // tokenize with every capacity the byte asks for
      std::vector<int32_t> ids(arg % 64);
      const qllm_status st = qllm_tokenize(m, text, size, arg & 1, ids.data(), ids.size(), &n);
      check(st);
      if (st == QLLM_OK && n > ids.size()) std::abort();
      if (st == QLLM_ERR_BUFFER_TOO_SMALL && n <= ids.size()) std::abort();
      size_t c = 0;
      check(qllm_count_tokens(m, text, size, arg & 1, &c));
      break;
    }
    case 1: {  // detokenize arbitrary ids
      std::vector<int32_t> ids(size / 4);
      if (!ids.empty()) std::memcpy(ids.data(), data, ids.size() * 4);
      std::vector<char> buf(arg);
      check(qllm_detokenize(m, ids.data(), ids.size(), buf.data(), buf.size(), &n));
      break;
    }
    case 2: {
      int32_t id = 0;
      std::memcpy(&id, data, size < 4 ? size : 4);
      char buf[16];
      check(qllm_token_piece(m, id, buf, arg % sizeof buf, &n));
      break;
    }
    case 3: {  // a dialog: NUL-separated contents, roles from the byte's bits
      std::vector<std::string> parts(1);
      for (size_t i = 0; i < size && parts.size() < 8; ++i) {
        if (text[i] == '\0') parts.emplace_back();
        else parts.back() += text[i];
      }
      static const char* roles[] = {"system", "user", "assistant", "user", "tool", nullptr};
      std::vector<qllm_chat_message> msgs;
      for (size_t k = 0; k < parts.size(); ++k)
        msgs.push_back({roles[(arg >> (k % 4)) % 6], parts[k].c_str()});
      std::vector<int32_t> ids(256);
      check(qllm_chat_apply(m, msgs.data(), msgs.size(), ids.data(), ids.size(), &n));
      std::vector<char> buf(512);
      check(qllm_chat_format(msgs.data(), msgs.size(), buf.data(), buf.size(), &n));
      break;
    }
    case 4:
    case 5: {  // generate from the text, with a stop string cut from it
      qllm_session_params sp;
      qllm_session_params_init(&sp, sizeof sp);
      sp.n_ctx = 64;
      sp.n_threads = 1;
      sp.context_policy = arg % 3;
      sp.temperature = float(arg % 4) * 0.5f;
      qllm_session* s = nullptr;
      check(qllm_session_create(m, &sp, &s));
      if (!s) std::abort();
      qllm_generate_params gp;
      qllm_generate_params_init(&gp, sizeof gp);
      gp.max_tokens = 3;
      std::string stop(text, size < 3 ? size : 3);
      const char* stops[] = {stop.c_str()};
      if (op == 5 && !stop.empty() && stop.find('\0') == std::string::npos) {
        gp.stop = stops;
        gp.n_stop = 1;
      }
      qllm_generate_result r;
      r.struct_size = sizeof r;
      check(qllm_generate(s, text, size, &gp, &r));
      const char* out = nullptr;
      check(qllm_session_output(s, &out, &n));
      qllm_session_free(s);
      break;
    }
  }
  return 0;
}
