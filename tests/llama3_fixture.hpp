// A small tokenizer.json of Llama-3's kind for tests: the 256 byte characters (GPT-2's byte map),
// two-letter merges of lower-case letters, then eight added special tokens, <|eot_id|> last.
// `vocab` tokens in all (at least 264 + 1).
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "gpt2_bytes.hpp"

namespace fixture {

inline nlohmann::json llama3_tokenizer_json(int64_t vocab) {
  using json = nlohmann::json;
  const auto byte_char = [](int b) { return gpt2_byte_char(b); };
  json v = json::object(), merges = json::array(), added = json::array();
  int64_t id = 0;
  for (int b = 0; b < 256; ++b) v[byte_char(b)] = id++;
  const std::string letters = "etaoinshrdlucmfwypvbgkqjxz";
  for (std::size_t a = 0; a < letters.size() && id < vocab - 8; ++a)
    for (std::size_t b = 0; b < letters.size() && id < vocab - 8; ++b) {
      const std::string l(1, letters[a]), r(1, letters[b]);
      if (v.contains(l + r)) continue;
      v[l + r] = id++;
      merges.push_back(l + " " + r);
    }
  for (const char* sp : {"<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
                         "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>"})
    added.push_back({{"id", id++}, {"content", sp}, {"special", true}});
  const std::string split =
      "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
      "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
  return {{"version", "1.0"}, {"added_tokens", added}, {"normalizer", nullptr},
          {"pre_tokenizer", {{"type", "Sequence"}, {"pretokenizers", {{{"type", "Split"}, {"pattern", {{"Regex", split}}},
                                                                        {"behavior", "Isolated"}, {"invert", false}},
                                                                       {{"type", "ByteLevel"}, {"add_prefix_space", false},
                                                                        {"trim_offsets", true}, {"use_regex", false}}}}}},
          {"model", {{"type", "BPE"}, {"ignore_merges", true}, {"byte_fallback", false}, {"vocab", v}, {"merges", merges}}}};
}

}  // namespace fixture
