// Fuzz target: the tokenizer of the real Llama-2 vocabulary, and a byte-level BPE one with
// Llama-3's pre-tokenizer (a synthetic vocabulary: the 256 byte characters, two- and three-letter
// merges, special tokens). The first byte picks the operation: encode the rest as text (invalid
// UTF-8 must be an error; valid text must decode back to itself; BPE: also with special pieces
// parsed), or read it as token ids and decode them whole and streamed (ids outside the vocabulary
// are errors; the streamed pieces must be valid UTF-8 and concatenate to the whole decode).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "gpt2_bytes.hpp"
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
std::string byte_char(int b) { return fixture::gpt2_byte_char(b); }

std::shared_ptr<const qllm::tokenizer> bpe_tokenizer() {
  using namespace qllm;
  vocabulary v;
  v.kind = tokenizer_kind::llama3_bpe;
  v.add_space_prefix = false;
  v.unk_id = -1;
  for (int b = 0; b < 256; ++b) v.pieces.push_back(byte_char(b));
  const std::string letters = "etaoinshr ";
  for (char a : letters)
    for (char b : letters) {
      v.merges.push_back(byte_char(uint8_t(a)) + " " + byte_char(uint8_t(b)));
      v.pieces.push_back(byte_char(uint8_t(a)) + byte_char(uint8_t(b)));
    }
  for (char a : letters)  // three letters: (ab)c
    for (char c : std::string("etn")) {
      v.merges.push_back(byte_char(uint8_t(a)) + byte_char('e') + " " + byte_char(uint8_t(c)));
      v.pieces.push_back(byte_char(uint8_t(a)) + byte_char('e') + byte_char(uint8_t(c)));
    }
  v.types.assign(v.pieces.size(), token_type::normal);
  for (const char* sp : {"<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|start_header_id|>"}) {
    v.pieces.push_back(sp);
    v.types.push_back(token_type::control);
  }
  v.pieces.push_back("<user>");
  v.types.push_back(token_type::user_defined);
  const auto n = int32_t(v.pieces.size());
  v.bos_id = n - 5, v.eos_id = n - 4, v.eot_id = n - 3;
  return tokenizer::from_vocabulary(std::move(v));
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace qllm;
  static const auto sp = test::llama2_tokenizer(QLLM_TEST_DATA);
  static const auto bpe = bpe_tokenizer();
  if (size == 0) return 0;
  const bool use_bpe = data[0] & 0x80;
  const auto& tok = use_bpe ? bpe : sp;
  const uint8_t op = (data[0] & 0x7F) % 3;
  ++data, --size;
  try {
    if (op == 0 && use_bpe) {
      const std::string text(reinterpret_cast<const char*>(data), size);
      if (tok->decode(tok->encode(text, true)) != text) std::abort();
      const auto special = tok->encode(text, false, true);  // specials parsed: must not crash
      for (int32_t id : special)
        if (!tok->valid(id)) std::abort();
    } else if (op == 0) {
      const std::string text(reinterpret_cast<const char*>(data), size);
      const auto ids = tok->encode(text, true);
      // round trip of valid UTF-8 text, unless it holds U+2581, sentencepiece's own space symbol
      // (it decodes to a space, as in every Llama tokenizer)
      const std::string back = tok->decode(ids);
      if (back != text && text.find("\xE2\x96\x81") == std::string::npos) std::abort();
      for (int32_t id : tok->encode(text, true, true))  // <s>, </s> parsed: must not crash
        if (!tok->valid(id)) std::abort();
    } else {
      std::vector<int32_t> ids(size / 4);
      if (!ids.empty()) std::memcpy(ids.data(), data, ids.size() * 4);
      if (op == 2)  // mostly valid ids
        for (auto& id : ids) id = int32_t(uint32_t(id) % (use_bpe ? 512u : 32768u));
      const std::string whole = tok->decode(ids);
      stream_decoder d(*tok, !use_bpe);
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
