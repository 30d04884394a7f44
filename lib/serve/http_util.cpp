#include "serve/http_util.hpp"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>

namespace qllm::serve {

bool client_gone(int fd) {
  if (fd < 0) return false;
  pollfd p{fd, POLLIN | POLLRDHUP, 0};
  if (::poll(&p, 1, 0) <= 0) return false;
  if (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) return true;
  char c;
  const ssize_t n = ::recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
  return n == 0;  // orderly shutdown; > 0 is a pipelined request, < 0 nothing to read
}

json error_body(const http_error& e) {
  json err = {{"message", e.message}, {"type", e.type}, {"param", nullptr}, {"code", nullptr}};
  if (!e.param.empty()) err["param"] = e.param;
  if (!e.code.empty()) err["code"] = e.code;
  return json{{"error", err}};
}

[[noreturn]] void bad_request(std::string msg, std::string param) {
  throw http_error{400, std::move(msg), "invalid_request_error", "", std::move(param)};
}

std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }


std::string base64_floats(const std::vector<float>& v) {
  static const char* tbl = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string bytes(v.size() * 4, '\0');
  for (std::size_t i = 0; i < v.size(); ++i) {
    uint32_t u;
    std::memcpy(&u, &v[i], 4);
    for (int b = 0; b < 4; ++b) bytes[i * 4 + std::size_t(b)] = char((u >> (8 * b)) & 0xff);
  }
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  for (std::size_t i = 0; i < bytes.size(); i += 3) {
    const uint32_t a = uint8_t(bytes[i]), b = i + 1 < bytes.size() ? uint8_t(bytes[i + 1]) : 0,
                   c = i + 2 < bytes.size() ? uint8_t(bytes[i + 2]) : 0;
    const uint32_t t = (a << 16) | (b << 8) | c;
    out += tbl[(t >> 18) & 63];
    out += tbl[(t >> 12) & 63];
    out += i + 1 < bytes.size() ? tbl[(t >> 6) & 63] : '=';
    out += i + 2 < bytes.size() ? tbl[t & 63] : '=';
  }
  return out;
}

}  // namespace qllm::serve
