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
#include <functional>
#include <string>
#include <utility>
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
  // Reads a chunked body strictly (hex sizes, CRLF after every chunk's data, the last chunk,
  // trailers), at most max_body bytes of data. Returns 0, or 413 / 400 with `message` set.
  // Afterwards httplib's own chunked reader is handed an empty body ("0\r\n\r\n"), so that
  // nothing of the next request can ever be taken for this one's.
  int read_chunked(int64_t max_body, std::string& body, std::string& message);
  // Keeps a body read_chunked decoded for read_body, and hands httplib's chunked reader an
  // empty body in its place.
  void hand_decoded_body(std::string body);
  // A body read_chunked decoded, handed to read_body once.
  bool has_decoded_body() const { return has_decoded_; }
  std::string take_decoded_body() {
    has_decoded_ = false;
    return std::move(decoded_);
  }
  // Body bytes of this request that may still be on the connection, unread: until the body has
  // been read whole (or the request declared none), the connection cannot carry another request.
  bool body_owed() const { return owed_; }
  void body_done() { owed_ = false; }
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
  bool over_ = false, in_body_ = false, starved_ = false, close_ = false, owed_ = true;
  std::string inject_;  // served before the socket's bytes (the empty chunked body for httplib)
  std::string decoded_;
  bool has_decoded_ = false;
  bool read_line(std::string& line, std::size_t max);
};

// The stream of the request this thread is handling (its handler, error handler and streamed
// content provider all run on the connection's thread), or nullptr outside one.
conn_stream* current_conn();

struct framing_verdict;

// httplib::Server whose connections are conn_streams. The request's framing is checked once the
// head is read (see check_framing); endpoints read their bodies with read_body.
class guarded_server : public httplib::Server {
 public:
  // Checks each request's head and framing before its body (pre-routing; and for Expect:
  // 100-continue before the client sends it) against `routes` ({method, path}; 404/405 for
  // others), answering refusals through `refuse`; a response whose request was not read whole
  // says Connection: close (post-routing).
  void install_framing_hooks(std::vector<std::pair<std::string, std::string>> routes,
                             std::function<void(httplib::Response&, const framing_verdict&)> refuse);
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

// A refusal found in the head: status and message; status 0 means the request may go on.
struct framing_verdict {
  int status = 0;
  std::string message;
};
// Checks a request's head before any of its body is read (also for Expect: 100-continue, before
// the client sends it): `route` (0, 404 or 405 for the method and path); Content-Length and
// Transfer-Encoding: malformed or conflicting lengths are 400, a transfer coding other than
// exactly "chunked" 501, a POST with neither 411, a length over max_body 413; a Content-Encoding
// other than identity, or a multipart or form body, 415.
framing_verdict check_head(const httplib::Request& req, int route, int64_t max_body);
// check_head, then the body's budget for the connection; a chunked body is read and decoded here
// (read_chunked), since httplib's reader is not strict about its framing.
framing_verdict check_framing(const httplib::Request& req, int route, int64_t max_body);

// Reads a request's body through httplib's reader, at most max_body bytes. Returns 0 and fills
// `body`, or an HTTP status (413 over the limit, 400 cut short or malformed) with `message` set;
// either way memory holds at most max_body bytes of it.
int read_body(const httplib::Request& req, const httplib::ContentReader& reader, int64_t max_body, std::string& body,
              std::string& message);

}  // namespace qllm::serve
