// GPT-2's byte map, which byte-level BPE vocabularies (Llama-3's) write their pieces in: the
// printable bytes stand for themselves, the others for U+0100 onwards in byte order.
#pragma once
#include <string>

namespace fixture {

inline std::string gpt2_byte_char(int b) {
  const auto printable = [](int x) { return (x >= '!' && x <= '~') || (x >= 0xA1 && x <= 0xAC) || x >= 0xAE; };
  int cp = b;
  if (!printable(b)) {
    cp = 256;
    for (int x = 0; x < b; ++x) cp += !printable(x);
  }
  std::string s;
  if (cp < 0x80) s += char(cp);
  else s += char(0xC0 | (cp >> 6)), s += char(0x80 | (cp & 0x3F));
  return s;
}

}  // namespace fixture
