// qllm info: what this build is and what it will run on this machine.

#include <cstdio>
#include <cstdlib>
#include <string>

#include "omp_compat.hpp"
#include "args.hpp"
#include "commands.hpp"
#include "qllm/error.hpp"
#include "kernels/kernel_table.hpp"
#include "qllm/cpu_features.hpp"
#include "qllm/gguf.hpp"
#include "qllm/model.hpp"
#include "qllm/resources.hpp"
#include "qllm/session.hpp"
#include "qllm/tokenizer.hpp"
#include "qllm/version.hpp"

namespace qllm::cli {

int cmd_info(int argc, char** argv) {
  std::string model_path;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (is_help(a))
      return print_help(
          "usage: qllm info [-m MODEL]\n"
          "Version, build, CPU features, the kernel table in use and the runnable and compiled\n"
          "ones, thread count. QLLM_ISA forces a table; OMP_NUM_THREADS sets the threads.\n"
          "  -m, --model F   also load F and describe it: shape, tensor types, weight bytes\n"
          "  -h, --help      this text\n");
    if (a == "-m" || a == "--model") {
      model_path = next_value(argc, argv, i);
      continue;
    }
    throw error(errc::invalid_argument, "unknown option '" + a + "'");
  }
  const kernels::kernel_table& active = kernels::active();  // throws first on a bad QLLM_ISA
  std::printf("qllm %s\n", version_string);
  std::printf("build:        %s, %s\n", QLLM_BUILD_COMPILER, QLLM_BUILD_TYPE);
  std::printf("cpu features: %s\n", cpu_features_string(cpu_features_detect()).c_str());
  std::string compiled, runnable;
  for (auto* t : kernels::compiled_tables()) compiled += std::string(" ") + t->name;
  for (auto* t : kernels::runnable_tables()) runnable += std::string(" ") + t->name;
  std::printf("kernels:      %s (QLLM_ISA to force one); decode prefetch %d bytes ahead (QLLM_PREFETCH), "
              "4+ tokens %d (QLLM_PREFETCH_STEP)\n",
              active.name, kernels::q_prefetch_bytes(), kernels::step_prefetch_bytes());
  std::printf("  runnable:  %s\n", runnable.c_str());
  std::printf("  compiled:  %s\n", compiled.c_str());
  std::string why = "CPUs of the affinity mask: " + std::to_string(omp_get_max_threads());
  if (omp_num_threads_set()) why = std::string("OMP_NUM_THREADS=") + std::getenv("OMP_NUM_THREADS");
  if (default_threads() < omp_get_max_threads()) {
    if (omp_get_thread_limit() == default_threads() && std::getenv("OMP_THREAD_LIMIT"))
      why += std::string(", capped by OMP_THREAD_LIMIT=") + std::getenv("OMP_THREAD_LIMIT");
    else
      why += omp_num_threads_set() ? ", capped at the maximum" : ", capped by the cgroup CPU quota";
  }
  const default_model d = find_default_model();
  if (d.path.empty()) std::printf("default model: none found (looked at %s)\n", d.looked.c_str());
  else std::printf("default model: %s (%s)\n", d.path.c_str(), d.origin.c_str());
  std::printf("threads:      %d (%s; -t or OMP_NUM_THREADS to change; at most %d)\n", default_threads(),
              why.c_str(), max_threads());
  if (!model_path.empty()) {
    const auto m = model::load(model_path);
    const auto& c = m->config();
    std::printf("model:        %s\n", model_path.c_str());
    std::printf("  shape:     %lld layers, dim %lld, heads %lld (kv %lld), ffn %lld, vocab %lld, ctx %lld, %.2f %s params\n",
                (long long)c.n_layer, (long long)c.n_embd, (long long)c.n_head, (long long)c.n_head_kv,
                (long long)c.n_ff, (long long)c.n_vocab, (long long)c.n_ctx_train,
                double(m->n_params()) / (m->n_params() >= 1e9 ? 1e9 : 1e6), m->n_params() >= 1e9 ? "B" : "M");
    if (!c.rope_freq_factors.empty())
      std::printf("  rope:      base %g, llama3 frequency factors (rope_freqs.weight)\n", double(c.rope_freq_base));
    else if (c.rope_freq_scale != 1.0f)
      std::printf("  rope:      base %g, linear scaling x%g\n", double(c.rope_freq_base), 1.0 / double(c.rope_freq_scale));
    else
      std::printf("  rope:      base %g, no scaling\n", double(c.rope_freq_base));
    if (const tokenizer* t = m->get_tokenizer()) {
      std::string ends;
      for (int32_t id : t->end_tokens()) ends += (ends.empty() ? "" : " ") + t->piece(id);
      std::string format;
      try {
        format = chat_format_of(*t) == chat_format::llama3 ? "llama3" : "llama2";
      } catch (const error& e) {
        format = "unsupported (";
        format.append(e.what()).append(")");
      }
      std::printf("  tokenizer: %s, %zu pieces; BOS %s, ends at %s; chat format %s\n",
                  t->kind() == tokenizer_kind::llama3_bpe ? "llama3 byte-level BPE" : "sentencepiece",
                  t->vocab().pieces.size(), t->piece(t->bos()).c_str(), ends.c_str(), format.c_str());
    } else {
      std::printf("  tokenizer: none (token ids only)\n");
    }
    std::printf("  tensors:   %s\n", m->weight_mix().c_str());
    std::printf("  weights:   %s streamed per token (%s), loaded in %.2f s\n",
                format_bytes(m->weight_bytes()).c_str(), gguf::type_name(m->weight_type()), m->load_seconds());
    std::printf("  cache:     %s\n", m->cache_status().c_str());
  }
  return 0;
}

}  // namespace qllm::cli
