#include "text/bpe.hpp"

#include <algorithm>
#include <queue>

#include "qllm/error.hpp"
#include "qllm/gguf.hpp"

namespace qllm::text {

namespace {

struct code_range {
  uint32_t lo, hi;
};
#include "text/unicode_tables.inc"

template <std::size_t N>
bool in_ranges(const code_range (&r)[N], uint32_t cp) noexcept {
  const auto it = std::upper_bound(std::begin(r), std::end(r), cp, [](uint32_t c, const code_range& x) { return c < x.lo; });
  return it != std::begin(r) && cp <= std::prev(it)->hi;
}

// Decodes one code point of valid UTF-8 at s[i] (the caller has validated the text).
uint32_t decode_at(std::string_view s, std::size_t i, int& len) noexcept {
  const auto b = [&](std::size_t k) { return uint32_t(uint8_t(s[i + k])); };
  const uint32_t b0 = b(0);
  if (b0 < 0x80) return len = 1, b0;
  if (b0 < 0xE0) return len = 2, ((b0 & 0x1F) << 6) | (b(1) & 0x3F);
  if (b0 < 0xF0) return len = 3, ((b0 & 0x0F) << 12) | ((b(1) & 0x3F) << 6) | (b(2) & 0x3F);
  return len = 4, ((b0 & 0x07) << 18) | ((b(1) & 0x3F) << 12) | ((b(2) & 0x3F) << 6) | (b(3) & 0x3F);
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += char(cp);
  } else if (cp < 0x800) {
    out += char(0xC0 | (cp >> 6));
    out += char(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += char(0xE0 | (cp >> 12));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  } else {
    out += char(0xF0 | (cp >> 18));
    out += char(0x80 | ((cp >> 12) & 0x3F));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  }
}

struct byte_map {
  uint32_t to_char[256];
  int16_t from_char[512];  // the characters are all below U+0200
  byte_map() {
    std::fill(std::begin(from_char), std::end(from_char), int16_t(-1));
    uint32_t extra = 256;
    for (uint32_t b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      to_char[b] = printable ? b : extra++;
      from_char[to_char[b]] = int16_t(b);
    }
  }
};
const byte_map& bytes() {
  static const byte_map m;
  return m;
}

[[noreturn]] void bad(const std::string& what) { throw error(errc::bad_format, "vocabulary: " + what); }

uint64_t hash_bytes(std::string_view s) noexcept {  // FNV-1a, then a finalizer for the low bits
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ull;
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdull;
  return h ^ (h >> 33);
}
uint64_t hash_key(uint64_t k) noexcept {
  k ^= k >> 33;
  k *= 0xff51afd7ed558ccdull;
  k ^= k >> 33;
  k *= 0xc4ceb9fe1a85ec53ull;
  return k ^ (k >> 33);
}
std::size_t capacity_for(std::size_t n) {
  std::size_t c = 16;
  while (c < 2 * n) c *= 2;
  return c;
}

}  // namespace

void write_bpe_vocabulary(gguf::writer& w, const vocabulary& v) {
  std::vector<int32_t> types;
  for (token_type t : v.types) types.push_back(int32_t(t));
  w.set_string("tokenizer.ggml.model", "gpt2");
  w.set_string("tokenizer.ggml.pre", "llama-bpe");
  w.set_array_string("tokenizer.ggml.tokens", v.pieces);
  w.set_array_i32("tokenizer.ggml.token_type", types);
  w.set_array_string("tokenizer.ggml.merges", v.merges);
  w.set_u32("tokenizer.ggml.bos_token_id", uint32_t(v.bos_id));
  w.set_u32("tokenizer.ggml.eos_token_id", uint32_t(v.eos_id));
  if (v.eot_id >= 0) w.set_u32("tokenizer.ggml.eot_token_id", uint32_t(v.eot_id));
  w.set_bool("tokenizer.ggml.add_bos_token", v.add_bos);
}

int32_t find_piece(const std::vector<std::string>& pieces, std::string_view piece) noexcept {
  for (std::size_t i = 0; i < pieces.size(); ++i)
    if (pieces[i] == piece) return int32_t(i);
  return -1;
}

bool is_letter(uint32_t cp) noexcept { return in_ranges(k_letter_ranges, cp); }
bool is_number(uint32_t cp) noexcept { return in_ranges(k_number_ranges, cp); }
bool is_space(uint32_t cp) noexcept {
  return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}
const char* unicode_version() noexcept { return QLLM_UNICODE_VERSION; }

uint32_t byte_to_char(uint8_t b) noexcept { return bytes().to_char[b]; }
int char_to_byte(uint32_t cp) noexcept { return cp < 512 ? bytes().from_char[cp] : -1; }

std::vector<std::string_view> llama3_pretokenize(std::string_view text) {
  std::vector<uint32_t> cp;
  std::vector<std::size_t> off;
  cp.reserve(text.size());
  off.reserve(text.size() + 1);
  for (std::size_t i = 0; i < text.size();) {
    int len = 1;
    cp.push_back(decode_at(text, i, len));
    off.push_back(i);
    i += std::size_t(len);
  }
  const std::size_t n = cp.size();
  off.push_back(text.size());
  // classes once per code point: letter, number, space
  enum : uint8_t { other = 0, letter = 1, number = 2, space = 3 };
  std::vector<uint8_t> cls(n + 1, other);
  for (std::size_t i = 0; i < n; ++i)
    cls[i] = is_letter(cp[i]) ? letter : is_number(cp[i]) ? number : is_space(cp[i]) ? space : other;
  const auto L = [&](std::size_t k) { return k < n && cls[k] == letter; };
  const auto N = [&](std::size_t k) { return k < n && cls[k] == number; };
  const auto S = [&](std::size_t k) { return k < n && cls[k] == space; };
  const auto O = [&](std::size_t k) { return k < n && cls[k] == other; };  // [^\s\p{L}\p{N}]
  const auto nl = [&](std::size_t k) { return k < n && (cp[k] == '\r' || cp[k] == '\n'); };
  // (?i) folds case as Unicode does: 's' also matches U+017F (long s)
  const auto is = [&](std::size_t k, char lower) {
    if (k >= n) return false;
    const uint32_t c = cp[k];
    return c == uint32_t(lower) || c == uint32_t(lower - 'a' + 'A') || (lower == 's' && c == 0x17F);
  };

  const auto match = [&](std::size_t i) -> std::size_t {
    // (?i:'s|'t|'re|'ve|'m|'ll|'d)
    if (cp[i] == '\'') {
      if (is(i + 1, 's') || is(i + 1, 't') || is(i + 1, 'm') || is(i + 1, 'd')) return i + 2;
      if ((is(i + 1, 'r') && is(i + 2, 'e')) || (is(i + 1, 'v') && is(i + 2, 'e')) || (is(i + 1, 'l') && is(i + 2, 'l')))
        return i + 3;
    }
    // [^\r\n\p{L}\p{N}]?\p{L}+
    if (L(i) || (!nl(i) && !N(i) && L(i + 1))) {
      std::size_t j = i + 1;
      while (L(j)) ++j;
      return j;
    }
    // \p{N}{1,3}
    if (N(i)) {
      std::size_t j = i + 1;
      while (j < i + 3 && N(j)) ++j;
      return j;
    }
    // ' '?[^\s\p{L}\p{N}]+[\r\n]*
    {
      std::size_t j = cp[i] == ' ' ? i + 1 : i;
      if (O(j)) {
        while (O(j)) ++j;
        while (nl(j)) ++j;
        return j;
      }
    }
    // what is left starts with white space: its run is [i, e)
    std::size_t e = i;
    while (S(e)) ++e;
    // \s*[\r\n]+ : up to the run's last line break
    for (std::size_t k = e; k > i; --k)
      if (nl(k - 1)) return k;
    // \s+(?!\S) : the run, less its last character when text follows
    if (e == n || e - i == 1) return e;  // (a one-character run before text: \s+)
    return e - 1;
  };

  std::vector<std::string_view> out;
  for (std::size_t i = 0; i < n;) {
    const std::size_t j = match(i);
    out.push_back(text.substr(off[i], off[j] - off[i]));
    i = j;
  }
  return out;
}

std::string bpe::token_bytes(std::string_view piece, bool& ok) {
  std::string out;
  ok = true;
  for (std::size_t i = 0; i < piece.size();) {
    int len = 1;
    const int b = char_to_byte(decode_at(piece, i, len));
    if (b < 0) {
      ok = false;
      return {};
    }
    out += char(b);
    i += std::size_t(len);
  }
  return out;
}

int32_t bpe::find(std::string_view piece) const noexcept {
  const uint64_t h = hash_bytes(piece);
  const std::size_t mask = ids_.size() - 1;
  for (std::size_t i = std::size_t(h) & mask;; i = (i + 1) & mask) {
    const piece_slot& s = ids_[i];
    if (s.id < 0) return -1;
    if (s.hash == uint32_t(h >> 32) && (*pieces_)[std::size_t(s.id)] == piece) return s.id;
  }
}

const bpe::merge_to* bpe::find_merge(int32_t left, int32_t right) const noexcept {
  const uint64_t key = (uint64_t(uint32_t(left)) << 32) | uint32_t(right);
  const std::size_t mask = merges_.size() - 1;
  for (std::size_t i = std::size_t(hash_key(key)) & mask;; i = (i + 1) & mask) {
    const merge_slot& s = merges_[i];
    if (s.to.rank < 0) return nullptr;
    if (s.key == key) return &s.to;
  }
}

bpe::bpe(const vocabulary& v) : pieces_(&v.pieces) {
  const std::size_t n = v.pieces.size();
  ids_.assign(capacity_for(n), piece_slot{0, -1});
  const std::size_t pmask = ids_.size() - 1;
  for (std::size_t i = 0; i < n; ++i) {
    if (v.types[i] != token_type::normal) continue;
    bool ok;
    (void)token_bytes(v.pieces[i], ok);
    if (!ok) bad("token " + std::to_string(i) + " ('" + v.pieces[i] + "') is not byte-level BPE text");
    const uint64_t h = hash_bytes(v.pieces[i]);
    std::size_t k = std::size_t(h) & pmask;
    while (ids_[k].id >= 0) k = (k + 1) & pmask;  // (pieces are unique: the tokenizer checked)
    ids_[k] = {uint32_t(h >> 32), int32_t(i)};
  }
  for (int b = 0; b < 256; ++b) {
    std::string c;
    append_utf8(c, byte_to_char(uint8_t(b)));
    const int32_t id = find(c);
    if (id < 0) bad("byte-level BPE needs a token for every byte; byte " + std::to_string(b) + " ('" + c + "') has none");
    byte_id_[b] = id;
  }
  merges_.assign(capacity_for(v.merges.size()), merge_slot{0, {-1, -1}});
  const std::size_t mmask = merges_.size() - 1;
  std::string joined;
  for (std::size_t r = 0; r < v.merges.size(); ++r) {
    const std::string& m = v.merges[r];
    const std::size_t sp = m.find(' ');
    if (sp == std::string::npos || sp == 0 || sp + 1 >= m.size() || m.find(' ', sp + 1) != std::string::npos)
      bad("merge " + std::to_string(r) + " ('" + m + "') is not two tokens separated by one space");
    const std::string_view a(m.data(), sp), b(m.data() + sp + 1, m.size() - sp - 1);
    joined.assign(a).append(b);
    const int32_t ia = find(a), ib = find(b), iab = find(joined);
    if (ia < 0 || ib < 0 || iab < 0)
      bad("merge " + std::to_string(r) + " ('" + m + "'): '" +
          std::string(ia < 0 ? a : ib < 0 ? b : std::string_view(joined)) + "' is not a token");
    const uint64_t key = (uint64_t(uint32_t(ia)) << 32) | uint32_t(ib);
    std::size_t k = std::size_t(hash_key(key)) & mmask;
    while (merges_[k].to.rank >= 0 && merges_[k].key != key) k = (k + 1) & mmask;
    if (merges_[k].to.rank < 0) merges_[k] = {key, {int32_t(r), iab}};  // a repeated pair keeps its first rank
  }
}

void bpe::merge_word(std::string_view word, std::vector<int32_t>& out) const {
  std::string mapped;
  mapped.reserve(word.size() * 2);
  for (char c : word) append_utf8(mapped, byte_to_char(uint8_t(c)));
  if (const int32_t whole = find(mapped); whole >= 0) {
    out.push_back(whole);
    return;
  }
  const std::size_t n = word.size();
  if (n == 1) {
    out.push_back(byte_id_[uint8_t(word[0])]);
    return;
  }
  // symbols as a linked list; candidate merges in a heap by (rank, position), checked when taken
  std::vector<int32_t> id(n), next(n), prev(n);
  for (std::size_t k = 0; k < n; ++k) {
    id[k] = byte_id_[uint8_t(word[k])];
    next[k] = k + 1 < n ? int32_t(k + 1) : -1;
    prev[k] = int32_t(k) - 1;
  }
  struct cand {
    int32_t rank, pos, left, right, merged;
    bool operator>(const cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::priority_queue<cand, std::vector<cand>, std::greater<cand>> heap;
  const auto push = [&](int32_t p) {
    if (p < 0 || next[std::size_t(p)] < 0) return;
    const int32_t l = id[std::size_t(p)], r = id[std::size_t(next[std::size_t(p)])];
    if (const merge_to* m = find_merge(l, r)) heap.push({m->rank, p, l, r, m->id});
  };
  for (std::size_t k = 0; k + 1 < n; ++k) push(int32_t(k));
  while (!heap.empty()) {
    const cand c = heap.top();
    heap.pop();
    const auto p = std::size_t(c.pos);
    const int32_t q = next[p];
    // stale: the left symbol has merged since (its id changed, or it was absorbed: id -1) or its
    // right neighbour has (ids only ever grow into longer tokens, so equal ids mean the same pair)
    if (id[p] != c.left || q < 0 || id[std::size_t(q)] != c.right) continue;
    id[p] = c.merged;
    id[std::size_t(q)] = -1;
    next[p] = next[std::size_t(q)];
    if (next[p] >= 0) prev[std::size_t(next[p])] = int32_t(p);
    push(prev[p]);
    push(int32_t(p));
  }
  for (int32_t k = 0; k >= 0; k = next[std::size_t(k)]) out.push_back(id[std::size_t(k)]);
}

void bpe::encode(std::string_view text, std::vector<int32_t>& out) const {
  for (const std::string_view w : llama3_pretokenize(text)) merge_word(w, out);
}

}  // namespace qllm::text
