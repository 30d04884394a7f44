#include "args.hpp"

#include <sys/resource.h>

#include <cerrno>
#include <cstdlib>

#include "qllm/error.hpp"

namespace qllm::cli {

int64_t parse_int(const std::string& flag, const std::string& text, int64_t lo, int64_t hi) {
  errno = 0;
  char* end = nullptr;
  const long long v = std::strtoll(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || errno == ERANGE || v < lo || v > hi)
    throw error(errc::invalid_argument, flag + ": '" + text + "' is not an integer in [" +
                                            std::to_string(lo) + ", " + std::to_string(hi) + "]");
  return v;
}

double parse_float(const std::string& flag, const std::string& text, double lo, double hi) {
  errno = 0;
  char* end = nullptr;
  const double v = std::strtod(text.c_str(), &end);
  if (text.empty() || *end != '\0' || errno == ERANGE || !(v >= lo && v <= hi))
    throw error(errc::invalid_argument, flag + ": '" + text + "' is not a number in [" + std::to_string(lo) + ", " +
                                            std::to_string(hi) + "]");
  return v;
}

std::vector<int64_t> parse_int_list(const std::string& flag, const std::string& text, int64_t lo,
                                    int64_t hi) {
  std::vector<int64_t> out;
  std::size_t start = 0;
  while (true) {
    const std::size_t comma = text.find(',', start);
    out.push_back(parse_int(flag, text.substr(start, comma - start), lo, hi));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}

std::string next_value(int argc, char** argv, int& i) {
  if (i + 1 >= argc)
    throw error(errc::invalid_argument, std::string(argv[i]) + ": missing value");
  return argv[++i];
}

bool is_help(const std::string& arg) { return arg == "-h" || arg == "--help"; }

int print_help(const char* text) {
  std::fputs(text, stdout);
  return 0;
}

int64_t peak_rss_bytes() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return int64_t(u.ru_maxrss) * 1024;
}

}  // namespace qllm::cli
