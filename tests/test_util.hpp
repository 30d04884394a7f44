// Helpers shared by the test suites.
#pragma once
#include <unistd.h>

#include <bit>
#include <filesystem>
#include <cstdint>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

namespace qllm::test {

// A temporary directory (mkdtemp under /tmp), removed with everything in it.
struct tmpdir {
  std::string path;
  explicit tmpdir(const char* prefix = "qllm_test") {
    std::string t = std::string("/tmp/") + prefix + "_XXXXXX";
    if (!mkdtemp(t.data())) throw std::runtime_error("mkdtemp failed");
    path = t;
  }
  ~tmpdir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  tmpdir(const tmpdir&) = delete;
  tmpdir& operator=(const tmpdir&) = delete;
  std::string operator/(const std::string& f) const { return path + "/" + f; }
};

inline std::vector<float> gaussian(std::size_t n, uint32_t seed, float sigma = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, sigma);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

inline bool same_bits(float a, float b) { return std::bit_cast<uint32_t>(a) == std::bit_cast<uint32_t>(b); }

// Number of positions where two float arrays differ bitwise.
inline std::size_t count_bit_differences(const float* a, const float* b, std::size_t n) {
  std::size_t d = 0;
  for (std::size_t i = 0; i < n; ++i) d += !same_bits(a[i], b[i]);
  return d;
}

// Position of the first run of n ASCII bytes in text at or after `from` (a stop string cut from
// generated text must be valid UTF-8), or std::string::npos.
inline std::size_t ascii_run(const std::string& text, std::size_t from, std::size_t n) {
  for (std::size_t at = from; at + n < text.size(); ++at) {
    bool ascii = true;
    for (std::size_t i = 0; i < n; ++i) ascii = ascii && static_cast<unsigned char>(text[at + i]) < 0x80;
    if (ascii) return at;
  }
  return std::string::npos;
}

}  // namespace qllm::test
