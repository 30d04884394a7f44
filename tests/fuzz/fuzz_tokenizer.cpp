// Fuzz target: the tokenizer of the real Llama-2 vocabulary. The first byte picks the operation:
// encode the rest as text (invalid UTF-8 must be an error; valid text must decode back to itself),
// or read it as token
// ids and decode them whole and streamed (ids outside the vocabulary are errors; the streamed
// pieces must be valid UTF-8 and concatenate to the whole decode).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "llama2_vocab.hpp"
#include "qllm/error.hpp"

#ifndef QLLM_TEST_DATA
#error "QLLM_TEST_DATA must name tests/data"
#endif

namespace {
bool valid_utf8(const std::string& s) {
  std::size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    const int n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (n == 0 || i + std::size_t(n) > s.size()) return false;
    for (int k = 1; k < n; ++k)
      if ((static_cast<unsigned char>(s[i + std::size_t(k)]) >> 6) != 2) return false;
    i += std::size_t(n);
  }
  return true;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace qllm;
  static const auto tok = test::llama2_tokenizer(QLLM_TEST_DATA);
  if (size == 0) return 0;
  const uint8_t op = data[0] % 3;
  ++data, --size;
  try {
    if (op == 0) {
      const std::string text(reinterpret_cast<const char*>(data), size);
      const auto ids = tok->encode(text, true);
      // round trip of valid UTF-8 text, unless it holds U+2581, sentencepiece's own space symbol
      // (it decodes to a space, as in every Llama tokenizer)
      const std::string back = tok->decode(ids);
      if (back != text && text.find("\xE2\x96\x81") == std::string::npos) std::abort();
    } else {
      std::vector<int32_t> ids(size / 4);
      if (!ids.empty()) std::memcpy(ids.data(), data, ids.size() * 4);
      if (op == 2)  // mostly valid ids
        for (auto& id : ids) id = int32_t(uint32_t(id) % 32768u);
      const std::string whole = tok->decode(ids);
      stream_decoder d(*tok, true);
      std::string streamed;
      for (int32_t id : ids) {
        const std::string piece = d.push(id);
        if (!valid_utf8(piece)) std::abort();
        streamed += piece;
      }
      streamed += d.flush();
      if (!valid_utf8(whole) || streamed != whole) std::abort();
    }
  } catch (const error&) {
  }
  return 0;
}
