// Splitting documents into chunks of whole sentences that fit a token budget.
#include <algorithm>
#include <string>
#include <vector>

#include "qllm/error.hpp"
#include "qllm/rag.hpp"

namespace qllm::rag {
namespace {

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

// A piece of the document: [b, e) without surrounding whitespace.
struct unit {
  int64_t b = 0, e = 0;
  int64_t n_tokens = 0;
  int64_t gap = 1;    // tokens of the whitespace before it, when it follows another unit in a chunk
  bool para = false;  // starts a paragraph (follows a blank line)
};

// No token is longer than this many bytes (Llama's longest pieces are about 16), and every token
// covers at least one byte: a text over max_tokens * kMaxTokenBytes bytes is over the budget
// without counting it. Units are cut at that length so that no count tokenizes more.
constexpr int64_t kMaxTokenBytes = 64;

// Sentences and lines of the text: a unit ends at a newline, or after . ! ? (and closing quotes or
// brackets) followed by whitespace, or, in a line longer than `cap` bytes, at its last space
// before the cap (else at a character boundary).
std::vector<unit> sentences(std::string_view t, int64_t cap) {
  std::vector<unit> out;
  int64_t i = 0;
  const int64_t n = int64_t(t.size());
  int newlines = 2;  // the first unit starts a paragraph
  while (i < n) {
    while (i < n && is_space(t[std::size_t(i)])) {
      if (t[std::size_t(i)] == '\n') ++newlines;
      ++i;
    }
    if (i >= n) break;
    unit u;
    u.b = i;
    u.para = newlines >= 2;
    newlines = 0;
    int64_t last_space = -1;
    while (i < n) {
      const char c = t[std::size_t(i)];
      if (c == '\n') break;
      if (i - u.b >= cap) {  // over the cap: back to the last space, or to a character start
        if (last_space > u.b) {
          i = last_space;
        } else {
          while (i > u.b + 1 && (static_cast<unsigned char>(t[std::size_t(i)]) & 0xC0) == 0x80) --i;
        }
        break;
      }
      if (is_space(c)) last_space = i;
      ++i;
      if (c == '.' || c == '!' || c == '?') {
        while (i < n && (t[std::size_t(i)] == '"' || t[std::size_t(i)] == '\'' || t[std::size_t(i)] == ')' ||
                         t[std::size_t(i)] == ']'))
          ++i;
        if (i >= n || is_space(t[std::size_t(i)])) break;
      }
    }
    u.e = i;
    while (u.e > u.b && is_space(t[std::size_t(u.e - 1)])) --u.e;
    out.push_back(u);
  }
  return out;
}

int64_t count(const tokenizer& tok, std::string_view t, const unit& u) {
  return int64_t(tok.count(t.substr(std::size_t(u.b), std::size_t(u.e - u.b)), false));
}

int64_t char_start(std::string_view t, int64_t i, int64_t lo) {  // i moved back to a character's first byte
  while (i > lo && (static_cast<unsigned char>(t[std::size_t(i)]) & 0xC0) == 0x80) --i;
  return i;
}

// Cuts an over-budget unit into runs of at most max tokens: where the tokens run out, back to the
// last whitespace in the run's second half (whole words) or, in a word longer than the budget,
// between characters. Linear: one encode of a window a little longer than the run, then one
// count of the run (re-encoded alone it can differ by a token or so; it then shrinks).
void cut(const tokenizer& tok, std::string_view t, const unit& u, int64_t max, std::vector<unit>& out) {
  auto count_range = [&](int64_t b, int64_t e) { return int64_t(tok.count(t.substr(std::size_t(b), std::size_t(e - b)), false)); };
  bool first = true;
  int64_t p = u.b;
  while (p < u.e) {
    int64_t c = u.e;
    for (int64_t window : {max * 8, max * kMaxTokenBytes}) {
      const int64_t lim = std::min(u.e, p + window);
      const std::string_view w = t.substr(std::size_t(p), std::size_t(lim - p));
      const auto ids = tok.encode(w, false);
      if (int64_t(ids.size()) <= max) {
        if (lim == u.e) break;  // the rest fits
        continue;               // the window is too short to hold max tokens: the longer one
      }
      int64_t total = 0;
      for (int32_t id : ids) total += int64_t(tok.token_text(id).size());
      const int64_t shift = std::clamp<int64_t>(total - int64_t(w.size()), 0, 1);  // the dummy prefix space
      int64_t end = -shift;
      for (std::size_t k = 0; k + 1 < std::size_t(max); ++k) end += int64_t(tok.token_text(ids[k]).size());
      c = std::clamp<int64_t>(p + end, p + 1, lim);
      break;
    }
    if (c < u.e) {
      c = char_start(t, c, p + 1);
      for (int64_t q = c - 1; q > p + (c - p) / 2; --q) {  // whole words where the run has a space
        if (is_space(t[std::size_t(q)])) {
          c = q;
          break;
        }
      }
    }
    while (is_space(t[std::size_t(c - 1)])) --c;  // c > p: t[p] is not a space
    int64_t n = count_range(p, c);
    while (n > max && c - p > 1) {
      c = std::max(char_start(t, p + (c - p) * 7 / 8, p + 1), p + 1);
      n = count_range(p, c);
    }
    if (n > max) {  // one character: its own bytes (a character is at most a few tokens)
      c = p + std::max(1, utf8::sequence_length(t.substr(std::size_t(p), std::size_t(u.e - p))));
      n = count_range(p, c);
    }
    unit v;
    v.b = p;
    v.e = c;
    v.para = first && u.para;
    first = false;
    v.n_tokens = n;
    out.push_back(v);
    p = c;
    while (p < u.e && is_space(t[std::size_t(p)])) ++p;
  }
}

// Units of at most max tokens: a longer sentence becomes runs of whole words, a longer word
// becomes runs of whole characters.
std::vector<unit> fitted(const tokenizer& tok, std::string_view t, const std::vector<unit>& in, int64_t max) {
  std::vector<unit> out;
  for (unit u : in) {
    u.n_tokens = count(tok, t, u);
    if (u.n_tokens <= max) out.push_back(u);
    else cut(tok, t, u, max, out);
  }
  return out;
}

}  // namespace

std::vector<chunk> split(const tokenizer& tok, std::string_view text, const chunk_params& p) {
  if (p.max_tokens < 8 || p.max_tokens > (int64_t(1) << 20))
    throw error(errc::invalid_argument, "chunk size " + std::to_string(p.max_tokens) + " tokens: must be 8 to 1048576");
  if (p.overlap_tokens < 0 || p.overlap_tokens >= p.max_tokens / 2)
    throw error(errc::invalid_argument, "chunk overlap " + std::to_string(p.overlap_tokens) +
                                            " tokens: must be 0 to less than half the chunk size (" +
                                            std::to_string(p.max_tokens) + ")");
  if (const auto bad = utf8::first_invalid(text); bad != std::string_view::npos)
    throw error(errc::invalid_argument, "not UTF-8 text (invalid byte at offset " + std::to_string(bad) + ")");
  std::vector<unit> u = fitted(tok, text, sentences(text, p.max_tokens * kMaxTokenBytes), p.max_tokens);
  // the whitespace between units costs tokens too (a long run of spaces many)
  for (std::size_t k = 1; k < u.size(); ++k) {
    const int64_t g = u[k].b - u[k - 1].e;
    const int64_t g_bytes = std::min<int64_t>(g, p.max_tokens * kMaxTokenBytes);  // enough to exceed any budget
    u[k].gap = g <= 1 ? 1 : int64_t(tok.count(text.substr(std::size_t(u[k - 1].e), std::size_t(g_bytes)), false));
  }
  std::vector<chunk> out;
  const std::size_t n = u.size();
  std::size_t i = 0;
  auto slice = [&](std::size_t a, std::size_t b) {  // units [a, b) as one span of the text
    return text.substr(std::size_t(u[a].b), std::size_t(u[b - 1].e - u[a].b));
  };
  while (i < n) {
    // grow by the units' own counts and their gaps
    std::size_t j = i + 1;
    int64_t est = u[i].n_tokens;
    while (j < n && est + u[j].gap + u[j].n_tokens <= p.max_tokens) est += u[j].gap + u[j].n_tokens, ++j;
    // prefer to end before a paragraph that starts past the middle of the chunk
    if (j < n) {
      int64_t acc = 0;
      std::size_t cut = 0;
      for (std::size_t q = i; q < j; ++q) {
        if (q > i && u[q].para && acc >= p.max_tokens / 2) cut = q;
        acc += (q > i ? u[q].gap : 0) + u[q].n_tokens;
      }
      if (cut) j = cut;
    }
    // the exact count of the joined text decides: the most units that fit (binary search; one
    // unit alone always fits)
    int64_t exact = int64_t(tok.count(slice(i, j), false));
    if (exact > p.max_tokens) {
      std::size_t lo = i + 1, hi = j - 1;  // lo fits; find the largest end in [lo, hi] that fits
      while (lo < hi) {
        const std::size_t mid = (lo + hi + 1) / 2;
        if (int64_t(tok.count(slice(i, mid), false)) <= p.max_tokens) lo = mid;
        else hi = mid - 1;
      }
      j = lo;
      exact = int64_t(tok.count(slice(i, j), false));
    }
    const std::string_view s = slice(i, j);
    out.push_back({std::string(s), exact, u[i].b, u[j - 1].e});
    if (j >= n) break;
    // the next chunk repeats the last whole units that fit the overlap
    std::size_t k = j;
    int64_t ov = 0;
    while (k - 1 > i && ov + u[k - 1].n_tokens + u[k - 1].gap <= p.overlap_tokens) ov += u[k - 1].n_tokens + u[k - 1].gap, --k;
    i = k;
  }
  return out;
}

}  // namespace qllm::rag
