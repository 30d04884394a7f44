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
  bool para = false;  // starts a paragraph (follows a blank line)
};

// Sentences and lines of the text: a unit ends at a newline, or after . ! ? (and closing quotes or
// brackets) followed by whitespace.
std::vector<unit> sentences(std::string_view t) {
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
    while (i < n) {
      const char c = t[std::size_t(i)];
      if (c == '\n') break;
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

// End of the longest prefix of [b, e) that is whole UTF-8 characters and has at most max tokens
// (at least one character, so the split always advances). The text is valid UTF-8.
int64_t fit_prefix(const tokenizer& tok, std::string_view t, int64_t b, int64_t e, int64_t max) {
  e = std::min(e, b + max * 256);  // no token is that long: bounds the work on a huge word
  std::vector<int64_t> ends;  // the end of each character
  for (int64_t q = b; q < e;) {
    const int len = utf8::sequence_length(t.substr(std::size_t(q), std::size_t(e - q)));
    q += len > 0 ? len : 1;
    ends.push_back(std::min(q, e));
  }
  std::size_t lo = 0, hi = ends.size() - 1;  // ends[lo] is taken even if one character is too many
  while (lo < hi) {
    const std::size_t mid = lo + (hi - lo + 1) / 2;
    if (int64_t(tok.count(t.substr(std::size_t(b), std::size_t(ends[mid] - b)), false)) <= max) lo = mid;
    else hi = mid - 1;
  }
  return ends[lo];
}

// Units of at most max tokens: a longer sentence becomes runs of whole words, a longer word
// becomes runs of whole characters.
std::vector<unit> fitted(const tokenizer& tok, std::string_view t, std::vector<unit> in, int64_t max) {
  std::vector<unit> out;
  for (unit u : in) {
    u.n_tokens = count(tok, t, u);
    if (u.n_tokens <= max) {
      out.push_back(u);
      continue;
    }
    bool first = true;
    int64_t p = u.b;
    while (p < u.e) {
      // greedily take words while the run fits; at least part of one word
      int64_t end = p, best = -1;
      while (end < u.e) {
        int64_t w = end;
        while (w < u.e && is_space(t[std::size_t(w)])) ++w;
        while (w < u.e && !is_space(t[std::size_t(w)])) ++w;
        if (int64_t(tok.count(t.substr(std::size_t(p), std::size_t(w - p)), false)) > max) break;
        best = end = w;
      }
      if (best < 0) best = fit_prefix(tok, t, p, u.e, max);  // one word longer than max
      unit v;
      v.b = p;
      v.e = best;
      while (v.e > v.b && is_space(t[std::size_t(v.e - 1)])) --v.e;
      v.para = first && u.para;
      first = false;
      v.n_tokens = count(tok, t, v);
      out.push_back(v);
      p = best;
      while (p < u.e && is_space(t[std::size_t(p)])) ++p;
    }
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
  const std::vector<unit> u = fitted(tok, text, sentences(text), p.max_tokens);
  std::vector<chunk> out;
  const std::size_t n = u.size();
  std::size_t i = 0;
  auto slice = [&](std::size_t a, std::size_t b) {  // units [a, b) as one span of the text
    return text.substr(std::size_t(u[a].b), std::size_t(u[b - 1].e - u[a].b));
  };
  while (i < n) {
    // grow by the units' own counts (the joined text usually has no more tokens than their sum)
    std::size_t j = i + 1;
    int64_t est = u[i].n_tokens;
    while (j < n && est + u[j].n_tokens + 1 <= p.max_tokens) est += u[j++].n_tokens + 1;
    // prefer to end before a paragraph that starts past the middle of the chunk
    if (j < n) {
      int64_t acc = 0;
      std::size_t cut = 0;
      for (std::size_t q = i; q < j; ++q) {
        if (q > i && u[q].para && acc >= p.max_tokens / 2) cut = q;
        acc += u[q].n_tokens + 1;
      }
      if (cut) j = cut;
    }
    // the exact count of the joined text decides
    int64_t exact = int64_t(tok.count(slice(i, j), false));
    while (exact > p.max_tokens && j > i + 1) exact = int64_t(tok.count(slice(i, --j), false));
    const std::string_view s = slice(i, j);
    out.push_back({std::string(s), exact, u[i].b, u[j - 1].e});
    if (j >= n) break;
    // the next chunk repeats the last whole units that fit the overlap
    std::size_t k = j;
    int64_t ov = 0;
    while (k - 1 > i && ov + u[k - 1].n_tokens <= p.overlap_tokens) ov += u[--k].n_tokens;
    i = k;
  }
  return out;
}

}  // namespace qllm::rag
