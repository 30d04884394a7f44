// The HTTP side of qllm serve that is not an endpoint: noticing a client that left, Prometheus
// histograms, OpenAI-style errors, base64 embeddings.
#pragma once
#include <cstdint>
#include <map>
#include <mutex>
#include <sstream>
#include <string>
#include <vector>

#include <httplib.h>
#include <nlohmann/json.hpp>

namespace qllm::serve {

using json = nlohmann::json;

// True when the client on socket fd has closed its connection (or reset it).
bool client_gone(int fd);

// ---- metrics ----
class histogram {
 public:
  explicit histogram(std::vector<double> bounds) : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {}
  void observe(double v) {
    std::lock_guard<std::mutex> lk(mu_);
    std::size_t i = 0;
    while (i < bounds_.size() && v > bounds_[i]) ++i;
    ++counts_[i];
    sum_ += v;
    ++n_;
  }
  void write(std::ostringstream& o, const char* name, const char* help) const {
    std::lock_guard<std::mutex> lk(mu_);
    o << "# HELP " << name << ' ' << help << "\n# TYPE " << name << " histogram\n";
    uint64_t cum = 0;
    for (std::size_t i = 0; i < bounds_.size(); ++i) {
      cum += counts_[i];
      o << name << "_bucket{le=\"" << bounds_[i] << "\"} " << cum << '\n';
    }
    o << name << "_bucket{le=\"+Inf\"} " << n_ << '\n' << name << "_sum " << sum_ << '\n' << name << "_count " << n_ << '\n';
  }

 private:
  mutable std::mutex mu_;
  std::vector<double> bounds_;
  std::vector<uint64_t> counts_;
  double sum_ = 0;
  uint64_t n_ = 0;
};

struct metrics {
  std::mutex mu;
  std::map<int, uint64_t> by_status;
  histogram ttft{{0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}};
  histogram itl{{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5}};
  histogram duration{{0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300}};
  void count(int status) {
    std::lock_guard<std::mutex> lk(mu);
    ++by_status[status];
  }
};

// ---- errors ----

// An HTTP error answered as OpenAI's error object.
struct http_error {
  int status;
  std::string message;
  std::string type = "invalid_request_error";
  std::string code;
  std::string param;
};

json error_body(const http_error& e);
[[noreturn]] void bad_request(std::string msg, std::string param = {});
// JSON text; invalid UTF-8 replaced, never thrown
std::string dump(const json& j);
// Base64 of little-endian float32 values (OpenAI's encoding_format "base64").
std::string base64_floats(const std::vector<float>& v);

}  // namespace qllm::serve
