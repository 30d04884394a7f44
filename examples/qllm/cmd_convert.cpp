// qllm convert: a Hugging Face Llama directory → GGUF.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <string>

#include "args.hpp"
#include "commands.hpp"
#include "qllm/convert.hpp"
#include "qllm/error.hpp"
#include "qllm/gguf.hpp"
#include "qllm/resources.hpp"

namespace qllm::cli {

namespace {
const char* const kHelp =
    "usage: qllm convert HF_DIR OUT.gguf [options]\n"
    "Converts a Hugging Face Llama checkpoint (config.json, model.safetensors or sharded\n"
    "model-*.safetensors with model.safetensors.index.json, tokenizer.model (Llama-2) or\n"
    "tokenizer.json (Llama-3)) into GGUF.\n"
    "Reads one tensor at a time from the mapped shards; writes a temporary file next to OUT and\n"
    "renames it when complete, so an interrupted run leaves no output.\n"
    "  --type TYPE     f16 | bf16 | f32 | q8_0 | q4_0 for the weight matrices (default f16;\n"
    "                  norms stay f32)\n"
    "  --strict        NaN/Inf weights are an error (default: a warning naming the tensor)\n"
    "  --dry-run       validate and print the plan (tensors, shapes, types, output size); write nothing\n"
    "  -q, --quiet     no progress bar\n"
    "  -h, --help      this text\n";

ggml_type parse_type(const std::string& t) {
  if (t == "f16") return ggml_type::f16;
  if (t == "bf16") return ggml_type::bf16;
  if (t == "f32") return ggml_type::f32;
  if (t == "q8_0") return ggml_type::q8_0;
  if (t == "q4_0") return ggml_type::q4_0;
  throw error(errc::invalid_argument, "--type: '" + t + "' is not f16, bf16, f32, q8_0 or q4_0");
}
}  // namespace

int cmd_convert(int argc, char** argv) {
  std::string in, out;
  convert::options opt;
  bool dry = false, quiet = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--type") opt.type = parse_type(next_value(argc, argv, i));
    else if (a == "--strict") opt.strict = true;
    else if (a == "--dry-run") dry = true;
    else if (a == "-q" || a == "--quiet") quiet = true;
    else if (is_help(a)) return print_help(kHelp);
    else if (!a.empty() && a[0] == '-') throw error(errc::invalid_argument, "unknown option '" + a + "'");
    else if (in.empty()) in = a;
    else if (out.empty()) out = a;
    else throw error(errc::invalid_argument, "unexpected argument '" + a + "'");
  }
  if (in.empty() || (out.empty() && !dry))
    throw error(errc::invalid_argument, "usage: qllm convert HF_DIR OUT.gguf [--type f16|bf16|f32|q8_0|q4_0] [--strict] [--dry-run]");
  opt.on_warning = [](const std::string& w) { std::fprintf(stderr, "\nqllm convert: warning: %s\n", w.c_str()); };
  if (dry) {
    const convert::plan p = convert::make_plan(in, opt);
    const auto& c = p.config;
    std::printf("%s: Llama, %lld layers, dim %lld, heads %lld (kv %lld), ffn %lld, vocab %lld, ctx %lld%s\n",
                in.c_str(), (long long)c.n_layer, (long long)c.n_embd, (long long)c.n_head, (long long)c.n_head_kv,
                (long long)c.n_ff, (long long)c.n_vocab, (long long)c.n_ctx, c.tied_output ? ", tied output" : "");
    for (const auto& t : p.tensors) {
      std::string shape;
      for (std::size_t i = 0; i < t.ne.size(); ++i) shape += (i ? " x " : "") + std::to_string(t.ne[i]);
      std::printf("  %-28s %-34s %-5s -> %-5s [%s]%s\n", t.gguf_name.c_str(), t.hf_name.c_str(), t.src_dtype.c_str(),
                  gguf::type_name(t.type), shape.c_str(), t.permute_qk ? " (RoPE rows permuted)" : "");
    }
    std::printf("%zu tensors, read %s, write %s of tensor data\n", p.tensors.size(), format_bytes(p.src_bytes).c_str(),
                format_bytes(p.out_bytes).c_str());
    return 0;
  }
  const bool bar = !quiet && isatty(2);
  opt.on_progress = [bar](const convert::progress& p) {
    if (bar) print_progress(p.done, p.total, p.bytes_done, p.bytes_total, p.seconds);
  };
  const auto t0 = std::chrono::steady_clock::now();
  const convert::plan p = convert::convert(in, out, opt);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("wrote %s: %zu tensors (%s), %s read in %.1f s (%.0f MB/s), peak RSS %s\n", out.c_str(), p.tensors.size(),
              gguf::type_name(opt.type), format_bytes(p.src_bytes).c_str(), s, double(p.src_bytes) / 1e6 / s,
              format_bytes(uint64_t(peak_rss_bytes())).c_str());
  return 0;
}

}  // namespace qllm::cli
