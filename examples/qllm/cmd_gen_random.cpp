// qllm gen-random: writes a Llama GGUF with seeded random weights.
#include <sys/stat.h>

#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>

#include "args.hpp"
#include "commands.hpp"
#include "qllm/error.hpp"
#include "qllm/random_model.hpp"

namespace qllm::cli {

namespace {
const char* const kHelp =
    "usage: qllm gen-random --out FILE [options]\n"
    "Writes a Llama GGUF with seeded random weights (for tests and benchmarks).\n"
    "  -o, --out PATH    output GGUF (required), or a directory with --format hf\n"
    "  --format F        gguf (default) | hf: a Hugging Face Llama directory (config.json,\n"
    "                    safetensors, tokenizer.model, or tokenizer.json with --vocab)\n"
    "                    for 'qllm convert'\n"
    "  --shards N        with --format hf: weights in N safetensors shards plus an index (default 1)\n"
    "  --shape NAME      tiny | small | 7b | codellama-7b | codellama-tiny | llama3-8b |\n"
    "                    llama3-1b | llama3-tiny (default tiny)\n"
    "  --vocab FILE      a Hugging Face tokenizer.json of Llama-3's kind: its byte-level BPE\n"
    "                    vocabulary, merges and special tokens (the vocabulary size follows it)\n"
    "  --type TYPE       q4_0 | q8_0 | q4_k | q5_k | q6_k | f16 | bf16 | f32: every matrix;\n"
    "                    q4_k_m | q5_k_m | q4_k_s | q5_k_s: llama.cpp's per-tensor mixes\n"
    "                    (default q4_0; hf: f16 | bf16 | f32)\n"
    "  --seed N          random seed (default 1)\n"
    "  --layers N        override the shape's layer count\n"
    "  --ctx N           override the training context (llama.context_length)\n"
    "  --no-vocab        write no tokenizer.ggml.* vocabulary (token ids only)\n"
    "  -h, --help        this text\n";
}  // namespace

int cmd_gen_random(int argc, char** argv) {
  std::string shape = "tiny", type = "q4_0", out, format = "gguf", vocab_file;
  int64_t shards = 1;
  int64_t seed = 1, layers = 0, ctx = 0;
  bool vocab = true;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--shape") shape = next_value(argc, argv, i);
    else if (a == "--type") type = next_value(argc, argv, i);
    else if (a == "--out" || a == "-o") out = next_value(argc, argv, i);
    else if (a == "--seed") seed = parse_int(a, next_value(argc, argv, i), 0, 0xffffffffll);
    else if (a == "--layers") layers = parse_int(a, next_value(argc, argv, i), 1, 4096);
    else if (a == "--ctx") ctx = parse_int(a, next_value(argc, argv, i), 1, int64_t(1) << 24);
    else if (a == "--no-vocab") vocab = false;
    else if (a == "--vocab") vocab_file = next_value(argc, argv, i);
    else if (a == "--format") format = next_value(argc, argv, i);
    else if (a == "--shards") shards = parse_int(a, next_value(argc, argv, i), 1, 1000);
    else if (is_help(a)) return print_help(kHelp);
    else throw error(errc::invalid_argument, "unknown option '" + a + "'");
  }
  if (out.empty())
    throw error(errc::invalid_argument,
                "usage: qllm gen-random --shape tiny|small|7b --type q4_0|q8_0|q4_k_m|...|f32 --out FILE "
                "[--seed N] [--layers N] [--no-vocab]");
  random_model_spec s = random_model_preset(shape);
  s.vocabulary = vocab;
  if (!vocab_file.empty()) {
    if (!vocab) throw error(errc::invalid_argument, "--vocab and --no-vocab contradict each other");
    s.vocab = std::make_shared<const vocabulary>(vocabulary_from_hf_json(vocab_file));
    (void)tokenizer::from_vocabulary(*s.vocab);  // refused here rather than when the file is loaded
    s.n_vocab = int64_t(s.vocab->pieces.size());
  }
  if (format == "hf") {
    if (!vocab) throw error(errc::invalid_argument, "--no-vocab: --format hf always writes a tokenizer");
    std::string dt = type == "q4_0" ? "f16" : type;  // q4_0 is only the GGUF default
    for (char& c : dt) c = char(std::toupper(static_cast<unsigned char>(c)));
    s.seed = uint32_t(seed);
    if (layers) s.n_layer = layers;
    if (ctx) s.n_ctx = ctx;
    if (::mkdir(out.c_str(), 0777) != 0 && errno != EEXIST)
      throw error(errc::io, "cannot create directory '" + out + "': " + std::strerror(errno));
    write_random_hf(out, s, dt, int(shards));
    std::printf("wrote %s: Hugging Face Llama directory, %s shape, %s, %lld shard(s)\n", out.c_str(), shape.c_str(),
                dt.c_str(), (long long)shards);
    return 0;
  }
  if (format != "gguf") throw error(errc::invalid_argument, "--format: '" + format + "' is not gguf or hf");
  if (type == "q4_0") s.type = ggml_type::q4_0;
  else if (type == "q8_0") s.type = ggml_type::q8_0;
  else if (type == "f16") s.type = ggml_type::f16;
  else if (type == "bf16") s.type = ggml_type::bf16;
  else if (type == "f32") s.type = ggml_type::f32;
  else if (type == "q4_k") s.type = ggml_type::q4_k;
  else if (type == "q5_k") s.type = ggml_type::q5_k;
  else if (type == "q6_k") s.type = ggml_type::q6_k;
  else if (type == "q4_k_m" || type == "q5_k_m" || type == "q4_k_s" || type == "q5_k_s") s.scheme = type;
  else
    throw error(errc::invalid_argument, "--type: '" + type +
                                            "' is not q4_0, q8_0, q4_k, q5_k, q6_k, q4_k_m, q5_k_m, q4_k_s, "
                                            "q5_k_s, f16, bf16 or f32");
  s.seed = uint32_t(seed);
  if (layers) s.n_layer = layers;
  if (ctx) s.n_ctx = ctx;
  write_random_model(out, s);
  std::printf("wrote %s: %s shape, %s, %lld layers, dim %lld, vocab %lld\n", out.c_str(), shape.c_str(),
              type.c_str(), (long long)s.n_layer, (long long)s.n_embd, (long long)s.n_vocab);
  return 0;
}

}  // namespace qllm::cli
