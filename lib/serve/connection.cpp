#include "serve/connection.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cctype>
#include <chrono>
#include <cstring>

namespace qllm::serve {

namespace {

thread_local conn_stream* tl_current = nullptr;

// Bytes a request may read beyond its head: the body for a Content-Length, and for a chunked body
// its data (at most max_body, counted by read_body) plus the chunk framing. A chunk of one byte
// costs six bytes on the wire; more overhead than that is not a client worth waiting for.
int64_t chunked_budget(int64_t max_body) { return 8 * max_body + head_limit; }

bool wait_fd(int fd, short events, int timeout_ms) {
  pollfd p{fd, events, 0};
  for (;;) {
    const int r = ::poll(&p, 1, timeout_ms);
    if (r < 0 && errno == EINTR) continue;
    return r > 0;
  }
}

void ip_and_port(const sockaddr_storage& a, std::string& ip, int& port) {
  char host[INET6_ADDRSTRLEN] = {0};
  if (a.ss_family == AF_INET) {
    const auto* a4 = reinterpret_cast<const sockaddr_in*>(&a);
    ::inet_ntop(AF_INET, &a4->sin_addr, host, sizeof(host));
    port = ntohs(a4->sin_port);
  } else if (a.ss_family == AF_INET6) {
    const auto* a6 = reinterpret_cast<const sockaddr_in6*>(&a);
    ::inet_ntop(AF_INET6, &a6->sin6_addr, host, sizeof(host));
    port = ntohs(a6->sin6_port);
  }
  ip = host;
}

std::string trim(const std::string& s) {
  std::size_t a = 0, b = s.size();
  while (a < b && (s[a] == ' ' || s[a] == '\t')) ++a;
  while (b > a && (s[b - 1] == ' ' || s[b - 1] == '\t')) --b;
  return s.substr(a, b - a);
}

bool iequals(const std::string& a, const char* b) {
  const std::size_t n = std::strlen(b);
  if (a.size() != n) return false;
  for (std::size_t i = 0; i < n; ++i)
    if (std::tolower(static_cast<unsigned char>(a[i])) != b[i]) return false;
  return true;
}

}  // namespace

conn_stream* current_conn() { return tl_current; }

conn_stream::conn_stream(int fd, int read_timeout_s, int write_timeout_s)
    : fd_(fd), read_timeout_s_(read_timeout_s), write_timeout_s_(write_timeout_s), buf_(16 * 1024) {}

bool conn_stream::is_readable() const { return buffered() || wait_fd(fd_, POLLIN, read_timeout_s_ * 1000); }

bool conn_stream::is_writable() const {
  // A client that shut down only its sending side (after its request) still reads the answer:
  // only an error or a connection closed both ways ends the writing.
  pollfd p{fd_, POLLOUT, 0};
  int r;
  do r = ::poll(&p, 1, write_timeout_s_ * 1000);
  while (r < 0 && errno == EINTR);
  return r > 0 && (p.revents & POLLOUT) && !(p.revents & (POLLERR | POLLHUP | POLLNVAL));
}

ssize_t conn_stream::read(char* ptr, std::size_t size) {
  if (size == 0) return 0;
  if (budget_ <= 0) {
    over_ = true;
    return -1;
  }
  size = std::min<std::size_t>(size, std::size_t(budget_));
  if (!inject_.empty()) {
    const std::size_t n = std::min(size, inject_.size());
    std::memcpy(ptr, inject_.data(), n);
    inject_.erase(0, n);
    budget_ -= int64_t(n);
    return ssize_t(n);
  }
  if (off_ == len_) {
    if (!is_readable()) {
      starved_ = true;
      return -1;
    }
    ssize_t n;
    do n = ::recv(fd_, buf_.data(), buf_.size(), 0);
    while (n < 0 && errno == EINTR);
    if (n <= 0) {
      starved_ = true;
      return n;
    }
    off_ = 0;
    len_ = std::size_t(n);
  }
  const std::size_t n = std::min(size, len_ - off_);
  std::memcpy(ptr, buf_.data() + off_, n);
  off_ += n;
  budget_ -= int64_t(n);
  return ssize_t(n);
}

ssize_t conn_stream::write(const char* ptr, std::size_t size) {
  if (!is_writable()) return -1;
  ssize_t n;
  do n = ::send(fd_, ptr, size, MSG_NOSIGNAL);
  while (n < 0 && errno == EINTR);
  return n;
}

void conn_stream::get_remote_ip_and_port(std::string& ip, int& port) const {
  sockaddr_storage a{};
  socklen_t l = sizeof(a);
  port = -1;
  if (::getpeername(fd_, reinterpret_cast<sockaddr*>(&a), &l) == 0) ip_and_port(a, ip, port);
}

void conn_stream::get_local_ip_and_port(std::string& ip, int& port) const {
  sockaddr_storage a{};
  socklen_t l = sizeof(a);
  port = -1;
  if (::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &l) == 0) ip_and_port(a, ip, port);
}

void conn_stream::begin_request() {
  budget_ = head_limit;
  over_ = in_body_ = starved_ = has_decoded_ = false;
  owed_ = true;
  inject_.clear();
  decoded_.clear();
}

void conn_stream::hand_decoded_body(std::string body) {
  decoded_ = std::move(body);
  has_decoded_ = true;
  owed_ = false;
  inject_ = "0\r\n\r\n";
  begin_body(int64_t(inject_.size()));
}

bool conn_stream::read_line(std::string& line, std::size_t max) {
  line.clear();
  char c;
  while (line.size() < max) {
    if (read(&c, 1) != 1) return false;
    line += c;
    if (c == '\n') return line.size() >= 2 && line[line.size() - 2] == '\r';
  }
  return false;
}

int conn_stream::read_chunked(int64_t max_body, std::string& body, std::string& message) {
  body.clear();
  std::string line;
  auto malformed = [&](const std::string& what) {
    message = "the chunked request body is malformed: " + what + " (" + std::to_string(body.size()) +
              " bytes of data read" + (starved_ ? ", then the connection closed or the read timed out)" : ")");
    return over_ ? 413 : 400;
  };
  for (;;) {
    if (!read_line(line, 4096)) return malformed("a chunk-size line that does not end in CRLF within 4 KiB");
    std::size_t i = 0;
    uint64_t size = 0;
    while (i < line.size() && std::isxdigit(static_cast<unsigned char>(line[i]))) {
      if (i >= 15) return malformed("a chunk size of more than 15 hex digits");
      size = size * 16 + uint64_t(std::isdigit(static_cast<unsigned char>(line[i])) ? line[i] - '0'
                                                                                     : (line[i] | 0x20) - 'a' + 10);
      ++i;
    }
    if (i == 0) return malformed("a chunk-size line that does not start with a hex size");
    if (line[i] != ';' && line[i] != '\r') return malformed("a chunk-size line with something after the size");
    if (size == 0) break;
    if (int64_t(body.size() + size) > max_body) {
      message = "the request body is larger than the server's limit of " + std::to_string(max_body) + " bytes";
      return 413;
    }
    const std::size_t at = body.size();
    body.resize(at + std::size_t(size));
    for (std::size_t got = 0; got < size;) {
      const ssize_t n = read(body.data() + at + got, std::size_t(size) - got);
      if (n <= 0) {
        body.resize(at + got);
        return malformed("a chunk shorter than its size");
      }
      got += std::size_t(n);
    }
    char crlf[2];
    if (read(crlf, 1) != 1 || read(crlf + 1, 1) != 1 || crlf[0] != '\r' || crlf[1] != '\n')
      return malformed("a chunk's data not followed by CRLF");
  }
  // trailers (ignored), up to the empty line
  for (int n = 0;; ++n) {
    if (n > 64 || !read_line(line, 4096)) return malformed("trailers that do not end in an empty line");
    if (line == "\r\n") break;
  }
  return 0;
}

void conn_stream::begin_body(int64_t bytes) {
  budget_ = bytes;
  in_body_ = true;
}

bool guarded_server::process_and_close_socket(int sock) {
  conn_stream s(sock, read_s_, write_s_);
  tl_current = &s;
  bool ok = true;
  for (std::size_t count = keep_alive_max_count_; count > 0 && svr_sock_ != INVALID_SOCKET; --count) {
    if (!s.buffered()) {  // the next request: wait for it while the server runs
      const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(keep_alive_s_);
      bool ready = false;
      while (!ready && svr_sock_ != INVALID_SOCKET && std::chrono::steady_clock::now() < until) {
        pollfd p{sock, POLLIN, 0};
        const int r = ::poll(&p, 1, 10);
        if (r < 0 && errno != EINTR) break;
        ready = r > 0;
      }
      if (!ready) break;
    }
    s.begin_request();
    bool closed = false;
    ok = process_request(s, count == 1, closed, nullptr);
    // a request whose body was not read whole leaves bytes no one can frame: never parse them
    if (!ok || closed || s.closing() || s.body_owed()) break;
  }
  tl_current = nullptr;
  if (s.body_owed()) {
    // A response sent before its request was read whole (413, 401, 404): closing now, with the
    // body still arriving, would reset the connection and could destroy the response in the
    // client's buffers before it reads it. So stop writing, and read and discard what still
    // comes, while it comes (a lingering close: at most 2 s, ended by 200 ms of silence;
    // memory: one buffer).
    ::shutdown(sock, SHUT_WR);
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(2);
    char sink[16 * 1024];
    while (std::chrono::steady_clock::now() < until && wait_fd(sock, POLLIN, 200)) {
      const ssize_t n = ::recv(sock, sink, sizeof(sink), 0);
      if (n == 0 || (n < 0 && errno != EINTR)) break;
    }
  }
  ::shutdown(sock, SHUT_RDWR);
  ::close(sock);
  return ok;
}

framing_verdict check_head(const httplib::Request& req, int route, int64_t max_body) {
  conn_stream* conn = current_conn();
  auto refuse = [conn](int status, std::string msg) {
    if (conn) conn->close_after_response();  // the body's end is unknown: nothing after it is trusted
    return framing_verdict{status, std::move(msg)};
  };
  if (route == 404) return refuse(404, "no such endpoint: " + req.method + " " + req.path);
  if (route == 405) return refuse(405, "method " + req.method + " not allowed on " + req.path);
  const std::size_t n_te = req.get_header_value_count("Transfer-Encoding");
  const std::size_t n_cl = req.get_header_value_count("Content-Length");
  if (n_te > 0) {
    if (n_cl > 0) return refuse(400, "the request has both Content-Length and Transfer-Encoding");
    // exactly what httplib takes for chunked: anything else it would read until the connection ends
    const std::string te = req.get_header_value("Transfer-Encoding");
    if (n_te > 1 || !iequals(te, "chunked"))
      return refuse(501, "Transfer-Encoding '" + te.substr(0, 40) + "' is not supported (only chunked)");
  } else if (n_cl > 0) {
    const std::string cl = trim(req.get_header_value("Content-Length"));
    for (std::size_t i = 1; i < n_cl; ++i)
      if (trim(req.get_header_value("Content-Length", i)) != cl)
        return refuse(400, "the request has several different Content-Length headers");
    const bool digits = !cl.empty() && cl.size() <= 18 &&
                        std::all_of(cl.begin(), cl.end(), [](char ch) { return ch >= '0' && ch <= '9'; });
    if (!digits) return refuse(400, "Content-Length '" + cl.substr(0, 40) + "' is not a length in bytes");
    if (std::stoll(cl) > max_body)
      return refuse(413, "the request body (Content-Length " + cl + ") is larger than the server's limit of " +
                             std::to_string(max_body) + " bytes");
  } else if (req.method == "POST" || req.method == "PUT" || req.method == "PATCH") {
    // HTTP/1.1: such a request has no body, but httplib would read one until the connection ends
    return refuse(411, "a " + req.method + " request needs a Content-Length or Transfer-Encoding: chunked");
  }
  if (req.has_header("Content-Encoding") && !iequals(trim(req.get_header_value("Content-Encoding")), "identity"))
    return refuse(415, "Content-Encoding '" + req.get_header_value("Content-Encoding").substr(0, 40) +
                           "' is not supported (send the body uncompressed)");
  const std::string type = req.get_header_value("Content-Type");
  if (type.rfind("multipart/", 0) == 0 || type.rfind("application/x-www-form-urlencoded", 0) == 0)
    return refuse(415, "Content-Type '" + type.substr(0, 60) + "' is not supported (send application/json)");
  return {};
}

framing_verdict check_framing(const httplib::Request& req, int route, int64_t max_body) {
  framing_verdict v = check_head(req, route, max_body);
  conn_stream* conn = current_conn();
  if (v.status != 0 || !conn) return v;
  const bool has_body_method = req.method == "POST" || req.method == "PUT" || req.method == "PATCH";
  if (req.has_header("Transfer-Encoding")) {
    if (!has_body_method) {
      conn->close_after_response();  // a body httplib does not read: the connection cannot go on
      return v;
    }
    conn->begin_body(chunked_budget(max_body));
    std::string body;
    const int st = conn->read_chunked(max_body, body, v.message);
    if (st != 0) {
      conn->close_after_response();
      v.status = st;
      return v;
    }
    conn->hand_decoded_body(std::move(body));
    return v;
  }
  const int64_t len = req.has_header("Content-Length") ? std::stoll(trim(req.get_header_value("Content-Length"))) : 0;
  conn->begin_body(len);
  if (len == 0)
    conn->body_done();
  else if (!has_body_method)
    conn->close_after_response();  // a body httplib does not read: the connection cannot go on
  return v;
}

void guarded_server::install_framing_hooks(std::vector<std::pair<std::string, std::string>> routes,
                                           std::function<void(httplib::Response&, const framing_verdict&)> refuse) {
  auto route_status = [routes = std::move(routes)](const httplib::Request& r) {
    bool known = false;
    for (const auto& [method, path] : routes) {
      if (r.path != path) continue;
      known = true;
      if (r.method == method || (r.method == "HEAD" && method == "GET")) return 0;
    }
    return known ? 405 : 404;
  };
  const int64_t max_body = max_body_;
  set_pre_routing_handler([route_status, refuse, max_body](const httplib::Request& req, httplib::Response& res) {
    const framing_verdict v = check_framing(req, route_status(req), max_body);
    if (v.status == 0) return HandlerResponse::Unhandled;
    refuse(res, v);
    return HandlerResponse::Handled;
  });
  set_expect_100_continue_handler([route_status, refuse, max_body](const httplib::Request& req, httplib::Response& res) {
    const framing_verdict v = check_head(req, route_status(req), max_body);
    if (v.status == 0) return 100;
    refuse(res, v);
    return v.status;
  });
  set_post_routing_handler([](const httplib::Request&, httplib::Response& res) {
    if (conn_stream* c = current_conn(); c && (c->closing() || c->body_owed())) {
      res.headers.erase("Keep-Alive");
      res.set_header("Connection", "close");
    }
  });
}

int read_body(const httplib::Request& req, const httplib::ContentReader& reader, int64_t max_body, std::string& body,
              std::string& message) {
  conn_stream* conn = current_conn();
  if (conn && conn->has_decoded_body()) {  // chunked: decoded strictly by check_framing
    std::string rest;
    if (!reader([&](const char* d, std::size_t n) {
          rest.append(d, n);
          return rest.size() < 16;
        }) ||
        !rest.empty()) {
      conn->close_after_response();
      message = "the chunked request body could not be read";
      return 400;
    }
    body = conn->take_decoded_body();
    return 0;
  }
  body.clear();
  bool over = false;
  const bool ok = reader([&](const char* d, std::size_t n) {
    if (int64_t(body.size() + n) > max_body) {
      over = true;
      return false;
    }
    body.append(d, n);
    return true;
  });
  if (ok) {
    if (conn) conn->body_done();
    return 0;
  }
  if (conn) conn->close_after_response();  // what is left of the body is never read
  if (over || (conn && conn->over_budget())) {
    message = "the request body is larger than the server's limit of " + std::to_string(max_body) + " bytes";
    return 413;
  }
  const bool timed_out = conn && conn->starved();
  if (req.has_header("Content-Length")) {
    message = "the request body ended before its Content-Length of " + req.get_header_value("Content-Length") +
              " bytes (" + std::to_string(body.size()) + " received" + (timed_out ? " when the read timed out)" : ")");
  } else {
    message = "the chunked request body is malformed or ended early (" + std::to_string(body.size()) +
              " bytes received" + (timed_out ? " when the read timed out)" : ")");
  }
  return 400;
}

}  // namespace qllm::serve
