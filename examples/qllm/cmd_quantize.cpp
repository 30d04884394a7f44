// qllm quantize: a GGUF → the same model in another weight type or a k-quant mix.
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "args.hpp"
#include "commands.hpp"
#include "qllm/error.hpp"
#include "qllm/quantize.hpp"
#include "qllm/resources.hpp"

namespace qllm::cli {

namespace {
const char* const kHelp =
    "usage: qllm quantize IN.gguf OUT.gguf --type TYPE [options]\n"
    "Writes the model of IN.gguf (F32, F16 or BF16 weights) with its matrices quantized.\n"
    "Reads one tensor at a time from the mapped file; writes a temporary file next to OUT and\n"
    "renames it when complete, so an interrupted run leaves no output.\n"
    "  --type TYPE          q4_k_m (llama.cpp's usual recommendation) | q5_k_m | q4_k_s | q5_k_s |\n"
    "                       q6_k | q8_0 | q4_0 | f16 | bf16 | f32. The _m mixes keep output.weight\n"
    "                       and the attn_v / ffn_down of the layers llama.cpp picks in Q6_K\n"
    "  --allow-requantize   accept an already quantized IN (each requantization adds error)\n"
    "  -t, --threads N      threads (default: the CPUs this process may use)\n"
    "  -q, --quiet          no progress bar\n"
    "  -h, --help           this text\n";
}  // namespace

int cmd_quantize(int argc, char** argv) {
  std::string in, out, type;
  quant::options opt;
  bool quiet = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--type") type = next_value(argc, argv, i);
    else if (a == "--allow-requantize") opt.allow_requantize = true;
    else if (a == "-t" || a == "--threads") opt.n_threads = int(parse_int(a, next_value(argc, argv, i), 1, 1024));
    else if (a == "-q" || a == "--quiet") quiet = true;
    else if (is_help(a)) return print_help(kHelp);
    else if (!a.empty() && a[0] == '-') throw error(errc::invalid_argument, "unknown option '" + a + "'");
    else if (in.empty()) in = a;
    else if (out.empty()) out = a;
    else throw error(errc::invalid_argument, "unexpected argument '" + a + "'");
  }
  if (in.empty() || out.empty() || type.empty())
    throw error(errc::invalid_argument, "usage: qllm quantize IN.gguf OUT.gguf --type q4_k_m|q5_k_m|q6_k|q8_0|q4_0|... [--allow-requantize]");
  opt.type = quant::parse_scheme(type);
  const bool bar = !quiet && isatty(2);
  opt.on_progress = [bar](const quant::progress& p) {
    if (bar) print_progress(p.done, p.total, p.bytes_done, p.bytes_total, p.seconds);
  };
  const quant::report r = quant::quantize_file(in, out, opt);
  std::vector<std::pair<int, std::string>> by_count;  // most frequent first, as qllm info
  for (const auto& [name, n] : r.types) by_count.emplace_back(-n, name);
  std::sort(by_count.begin(), by_count.end());
  std::string mix;
  for (const auto& [n, name] : by_count) mix += (mix.empty() ? "" : ", ") + std::to_string(-n) + " " + name;
  std::printf("wrote %s: %s, %zu tensors (%s), %s -> %s in %.1f s (%.0f MB/s), peak RSS %s\n", out.c_str(),
              quant::scheme_name(opt.type), r.tensors, mix.c_str(), format_bytes(r.bytes_in).c_str(),
              format_bytes(r.bytes_out).c_str(), r.seconds, double(r.bytes_in) / 1e6 / std::max(r.seconds, 1e-9),
              format_bytes(uint64_t(peak_rss_bytes())).c_str());
  return 0;
}

}  // namespace qllm::cli
