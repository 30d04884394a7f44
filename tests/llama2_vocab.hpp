// The real Llama-2 vocabulary (tests/data/llama2-vocab.txt, 32,000 pieces) as a GGUF metadata
// blob and a tokenizer, for the tokenizer tests and the fuzzing harnesses.
#pragma once
#include <fstream>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "qllm/gguf.hpp"
#include "qllm/tokenizer.hpp"

namespace qllm::test {

// Scores rebuilt as Meta's file has them: -1e9 for pieces made only of U+2581, -(id - 259) else.
inline vocabulary llama2_vocabulary(const std::string& data_dir) {
  std::ifstream in(data_dir + "/llama2-vocab.txt", std::ios::binary);
  if (!in.good()) throw std::runtime_error("cannot read " + data_dir + "/llama2-vocab.txt");
  vocabulary v;
  std::string line;
  while (std::getline(in, line)) {
    std::string p;
    for (std::size_t i = 0; i < line.size(); ++i) {
      if (line[i] == '\\' && i + 1 < line.size()) {
        p += line[i + 1] == 'r' ? '\r' : line[i + 1];
        ++i;
      } else {
        p += line[i];
      }
    }
    v.pieces.push_back(p);
  }
  if (v.pieces.size() != 32000) throw std::runtime_error("llama2-vocab.txt: not 32,000 pieces");
  for (std::size_t id = 0; id < v.pieces.size(); ++id) {
    const std::string& p = v.pieces[id];
    if (id == 0) {
      v.types.push_back(token_type::unknown);
      v.scores.push_back(0);
    } else if (id < 3) {
      v.types.push_back(token_type::control);
      v.scores.push_back(0);
    } else if (id < 259) {
      v.types.push_back(token_type::byte);
      v.scores.push_back(0);
    } else {
      bool spaces_only = true;
      for (std::size_t k = 0; k < p.size(); k += 3) spaces_only = spaces_only && p.compare(k, 3, "\xE2\x96\x81") == 0;
      v.types.push_back(token_type::normal);
      v.scores.push_back(spaces_only ? -1e9f : -float(id - 259));
    }
  }
  return v;
}

// Through GGUF metadata, the way a model file delivers it.
inline std::shared_ptr<const tokenizer> llama2_tokenizer(const std::string& data_dir) {
  const vocabulary v = llama2_vocabulary(data_dir);
  gguf::writer w;
  w.set_string("tokenizer.ggml.model", "llama");
  w.set_array_string("tokenizer.ggml.tokens", v.pieces);
  w.set_array_f32("tokenizer.ggml.scores", v.scores);
  std::vector<int32_t> types;
  for (auto t : v.types) types.push_back(int32_t(t));
  w.set_array_i32("tokenizer.ggml.token_type", types);
  w.set_u32("tokenizer.ggml.unknown_token_id", 0);
  w.set_u32("tokenizer.ggml.bos_token_id", 1);
  w.set_u32("tokenizer.ggml.eos_token_id", 2);
  const auto bytes = w.to_bytes();
  const auto f = gguf::file::from_memory(bytes.data(), bytes.size());
  return tokenizer::from_gguf(f);
}

}  // namespace qllm::test
