// Fuzz target: a whole model file (metadata, tensor table, vocabulary, weights) through
// model::load, then a context and a short evaluation, and the vocabulary's tokenizer. Every input
// loads or throws qllm::error; nothing may crash, hang or read out of bounds.
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "qllm/error.hpp"
#include "qllm/model.hpp"
#include "qllm/tokenizer.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace qllm;
  // model::load takes a path: an anonymous in-memory file
  static const int fd = memfd_create("qllm_fuzz_model", 0);
  if (fd < 0) return 0;
  if (ftruncate(fd, 0) != 0 || pwrite(fd, data, size, 0) != ssize_t(size)) return 0;
  const std::string path = "/proc/self/fd/" + std::to_string(fd);
  try {
    model_options o;
    o.n_threads = 1;
    const auto m = model::load(path, o);
    context_params cp;
    cp.n_ctx = 8;
    cp.n_threads = 1;
    context ctx(m, cp);
    const int64_t v = m->config().n_vocab;
    std::vector<int32_t> toks{0, int32_t(v - 1), int32_t(v / 2)};
    (void)ctx.eval(toks);
    if (const tokenizer* t = m->get_tokenizer()) {
      const auto ids = t->encode("Hello world, \xC3\xA9t\xC3\xA9!", true);
      (void)t->decode(ids);
    }
  } catch (const error&) {
  }
  return 0;
}
