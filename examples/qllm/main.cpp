// qllm: command-line front end. Errors are one line on stderr and a non-zero exit code.
#include <cstdio>
#include <cstring>
#include <exception>
#include <new>

#include "commands.hpp"

namespace {
void usage(std::FILE* out) {
  std::fputs(
      "usage: qllm <command> [options]\n"
      "commands:\n"
      "  info        version, build, CPU features, kernel tables, threads\n"
      "  gen-random  write a Llama GGUF (or Hugging Face directory) with seeded random weights\n"
      "  convert     turn a Hugging Face Llama directory (safetensors) into GGUF\n"
      "  quantize    a GGUF with its weights quantized (q4_k_m, q5_k_m, q6_k, q8_0, q4_0, ...)\n"
      "  run         generate text from a prompt, streamed (-p TEXT, -f FILE or stdin)\n"
      "  chat        interactive Llama-2-chat conversation\n"
      "  tokenize    print the token ids and pieces of a text\n"
      "  perplexity  perplexity of a model over a text file\n"
      "  embed       sentence embedding of a text (mean-pooled, L2-normalised)\n"
      "  bench       prompt and generation speed of a model (like llama-bench)\n"
      "  rag         index documents into a SQLite store (rag index) and answer from them (rag ask)\n"
      "  serve       OpenAI-compatible HTTP server with continuous batching\n"
      "'qllm <command> --help' lists a command's options.\n",
      out);
}
}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    usage(stderr);
    return 2;
  }
  const char* cmd = argv[1];
  try {
    if (!std::strcmp(cmd, "info")) return qllm::cli::cmd_info(argc - 1, argv + 1);
    if (!std::strcmp(cmd, "gen-random")) return qllm::cli::cmd_gen_random(argc - 1, argv + 1);
    if (!std::strcmp(cmd, "convert")) return qllm::cli::cmd_convert(argc - 1, argv + 1);
    if (!std::strcmp(cmd, "quantize")) return qllm::cli::cmd_quantize(argc - 1, argv + 1);
    if (!std::strcmp(cmd, "bench")) return qllm::cli::cmd_bench(argc - 1, argv + 1);
    if (!std::strcmp(cmd, "run")) return qllm::cli::cmd_run(argc - 1, argv + 1);
    if (!std::strcmp(cmd, "chat")) return qllm::cli::cmd_chat(argc - 1, argv + 1);
    if (!std::strcmp(cmd, "tokenize")) return qllm::cli::cmd_tokenize(argc - 1, argv + 1);
    if (!std::strcmp(cmd, "perplexity")) return qllm::cli::cmd_perplexity(argc - 1, argv + 1);
    if (!std::strcmp(cmd, "embed")) return qllm::cli::cmd_embed(argc - 1, argv + 1);
    if (!std::strcmp(cmd, "rag")) return qllm::cli::cmd_rag(argc - 1, argv + 1);
    if (!std::strcmp(cmd, "serve")) return qllm::cli::cmd_serve(argc - 1, argv + 1);
    if (!std::strcmp(cmd, "-h") || !std::strcmp(cmd, "--help") || !std::strcmp(cmd, "help")) {
      usage(stdout);
      return 0;
    }
    std::fprintf(stderr, "qllm: unknown command '%s' (try 'qllm help')\n", cmd);
    return 2;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "qllm %s: out of memory\n", cmd);
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "qllm %s: %s\n", cmd, e.what());
    return 1;
  }
}
