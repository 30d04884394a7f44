// The connections of qllm serve: httplib parses requests, qllm owns the socket's reading.
//
// cpp-httplib 0.11 reads each request through a stream made anew per request (so a pipelined
// second request already read into the first one's buffer was lost) and applies no limit to a
// chunked body, a chunk-size line or the request head (so a client could grow the server's
// memory without bound). Here one buffered stream lives as long as its connection, keeps what a
// client pipelined for the next request, and counts the bytes each request may still read: the
// head (request line and headers) and the body each have a budget, and a read past it fails.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <httplib.h>

namespace qllm::serve {

// Bytes of a request's head (request line + headers) at most; more: 431 and the connection closed.
inline constexpr int64_t head_limit = 64 * 1024;

class conn_stream final : public httplib::Stream {
 public:
  conn_stream(int fd, int read_timeout_s, int write_timeout_s);

  bool is_readable() const override;
  bool is_writable() const override;
  ssize_t read(char* ptr, std::size_t size) override;
  ssize_t write(const char* ptr, std::size_t size) override;
  void get_remote_ip_and_port(std::string& ip, int& port) const override;
  void get_local_ip_and_port(std::string& ip, int& port) const override;
  int socket() const override { return fd_; }

  // A new request: its head may read head_limit bytes.
  void begin_request();
  // The head has been parsed: the body may read `bytes` more (what the framing allows).
  void begin_body(int64_t bytes);
  bool buffered() const { return off_ < len_; }
  // The budget ran out (the head or the body was larger than allowed).
  bool over_budget() const { return over_; }
  bool in_body() const { return in_body_; }
  // The last read waited out the read timeout, or met the end of the connection.
  bool starved() const { return starved_; }
  // After this response the connection is closed (its framing can no longer be trusted).
  void close_after_response() { close_ = true; }
  bool closing() const { return close_; }

 private:
  int fd_;
  int read_timeout_s_, write_timeout_s_;
  std::vector<char> buf_;
  std::size_t off_ = 0, len_ = 0;
  int64_t budget_ = head_limit;
  bool over_ = false, in_body_ = false, starved_ = false, close_ = false;
};

// The stream of the request this thread is handling (its handler, error handler and streamed
// content provider all run on the connection's thread), or nullptr outside one.
conn_stream* current_conn();

// httplib::Server whose connections are conn_streams. The request's framing is checked once the
// head is read (see check_framing); endpoints read their bodies with read_body.
class guarded_server : public httplib::Server {
 public:
  explicit guarded_server(int64_t max_body) : max_body_(max_body) {}
  int64_t max_body() const { return max_body_; }
  void set_timeouts(int read_s, int write_s, int keep_alive_s) {
    read_s_ = read_s;
    write_s_ = write_s;
    keep_alive_s_ = keep_alive_s;
  }

 private:
  bool process_and_close_socket(int sock) override;
  int64_t max_body_;
  int read_s_ = 30, write_s_ = 30, keep_alive_s_ = 5;
};

// A framing error found in the head: status and message; status 0 means the framing is sound and
// the body budget has been given to the connection.
struct framing_verdict {
  int status = 0;
  std::string message;
};
// Checks Content-Length and Transfer-Encoding of a request before any of its body is read:
// malformed or conflicting lengths are 400, a transfer coding other than chunked 501, a body with
// no length 411, a length over max_body 413 (all at once, without reading the body).
framing_verdict check_framing(const httplib::Request& req, int64_t max_body);

// Reads a request's body through httplib's reader, at most max_body bytes. Returns 0 and fills
// `body`, or an HTTP status (413 over the limit, 400 cut short or malformed) with `message` set;
// either way memory holds at most max_body bytes of it.
int read_body(const httplib::Request& req, const httplib::ContentReader& reader, int64_t max_body, std::string& body,
              std::string& message);

}  // namespace qllm::serve
