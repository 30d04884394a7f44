// Writes the seed inputs of the fuzz targets (tests/fuzz/corpus/): small valid model files and
// texts. The committed corpus was made by it; run it again after a format change:
//   build/tests/fuzz/fuzz_make_seeds tests/fuzz/corpus
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "qllm/random_model.hpp"

int main(int argc, char** argv) {
  namespace fs = std::filesystem;
  if (argc != 2) {
    std::fprintf(stderr, "usage: fuzz_make_seeds CORPUS_DIR\n");
    return 2;
  }
  const fs::path root = argv[1];
  for (const char* d : {"gguf", "model", "tokenizer", "capi"}) fs::create_directories(root / d);
  struct variant {
    const char* name;
    qllm::ggml_type type;
    bool vocabulary, tied;
    int64_t n_head_kv;
  } variants[] = {
      {"q8_0_vocab", qllm::ggml_type::q8_0, true, false, 2},
      {"q4_0_novocab_tied", qllm::ggml_type::q4_0, false, true, 1},
      {"f16_vocab", qllm::ggml_type::f16, true, false, 2},
  };
  for (const auto& v : variants) {
    qllm::random_model_spec s;
    s.n_vocab = 300;  // the byte-fallback vocabulary needs 259 pieces
    s.n_embd = 32;
    s.n_layer = 1;
    s.n_ff = 64;
    s.n_head = 2;
    s.n_head_kv = v.n_head_kv;
    s.n_ctx = 64;
    s.type = v.type;
    s.vocabulary = v.vocabulary;
    s.tied_output = v.tied;
    const fs::path p = root / "model" / v.name;  // no .gguf: *.gguf is ignored by git
    qllm::write_random_model(p.string(), s);
    fs::copy_file(p, root / "gguf" / p.filename(), fs::copy_options::overwrite_existing);
  }
  auto text = [&](const char* dir, const std::string& name, const std::string& bytes) {
    std::ofstream(root / dir / name, std::ios::binary) << bytes;
  };
  text("tokenizer", "encode_ascii", std::string("\x00", 1) + "Hello world, the llama sat.");
  text("tokenizer", "encode_utf8", std::string("\x00", 1) + "\xC3\xA9t\xC3\xA9 \xE6\x97\xA5\xE6\x9C\xAC \xF0\x9F\xA6\x99 <s>[INST]");
  text("tokenizer", "decode_ids", std::string("\x02\x01\x00\x00\x00\xAC\x3A\x00\x00\x03\x00\x00\x00", 13));
  text("capi", "tokenize", std::string("\x00\x21", 2) + "Once upon a time");
  text("capi", "chat", std::string("\x03\x05", 2) + std::string("Be brief.\0hi\0yo\0and?", 21));
  text("capi", "generate_stop", std::string("\x05\x02", 2) + "ab ab ab");
  std::printf("wrote seeds under %s\n", root.c_str());
  return 0;
}
