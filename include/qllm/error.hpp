// The one exception type of the C++ core; the C API turns it into a status code.
#pragma once
#include <stdexcept>
#include <string>

namespace qllm {

enum class errc : int {
  invalid_argument = 1,
  io = 2,
  bad_format = 3,
  unsupported = 4,
  out_of_memory = 5,
  context_overflow = 6,
  internal = 7,
  cancelled = 8,  // a cancel request stopped the call (session::cancel)
  busy = 9,       // a bounded queue is full or shutting down: try again later (engine::submit)
};

class error : public std::runtime_error {
 public:
  error(errc code, const std::string& what) : std::runtime_error(what), code_(code) {}
  errc code() const noexcept { return code_; }

 private:
  errc code_;
};

}  // namespace qllm
