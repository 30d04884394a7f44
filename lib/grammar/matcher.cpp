// Following a grammar over bytes, and the token mask.
//
// The parse of the text so far is a set of stacks of positions (the innermost rule's position on
// top; a continuation is not pushed when it would be the end of its alternative, so right
// recursion does not grow a stack). Every stack's top is a terminal; an empty stack means the
// text is complete. A character advances each stack whose terminal holds it, then expands the
// next position until a terminal is on top. Bytes of an unfinished UTF-8 character narrow the
// range of code points they can still become: stacks whose terminal meets none of it are dropped.
//
// The mask walks a trie of the vocabulary's token texts depth first from the current state, so a
// prefix shared by many tokens is matched once, and a branch is left as soon as its state is
// empty.
#include <algorithm>
#include <array>
#include <unordered_map>
#include <cmath>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "grammar/compiled.hpp"
#include "qllm/error.hpp"
#include "qllm/grammar.hpp"
#include "qllm/tokenizer.hpp"

namespace qllm {

using namespace grammar_detail;

namespace grammar_detail {

// The vocabulary's token texts as a trie: children sorted by byte in one array per node.
struct token_trie {
  struct node {
    uint32_t first_child = 0, n_children = 0;
    uint32_t first_token = 0, n_tokens = 0;
  };
  std::vector<node> nodes;                          // nodes[0]: the root (the empty prefix)
  std::vector<std::pair<uint8_t, uint32_t>> edges;  // (byte, child)
  std::vector<int32_t> tokens;                      // the tokens ending at each node
  std::size_t depth = 0;                            // the longest token text
  int32_t n_vocab = 0;
  int32_t eos = -1;
  std::vector<int32_t> ends;  // EOS, end of turn and the other end pieces: allowed where EOS is
  std::vector<std::string> texts;  // what the trie was built from (to tell vocabularies apart)
  std::vector<token_type> types;
};

}  // namespace grammar_detail

namespace {

constexpr std::size_t kMaxStacks = 4096;  // parses of one prefix (an ambiguous grammar's bound)
// Stack entries written, copied, hashed or compared for one mask or one accept call: an
// ambiguous or deeply nested grammar could otherwise make one token cost seconds (the server's
// engine thread serves every request) and its states gigabytes. The widest uncached mask of a
// JSON answer on the Llama-2 vocabulary costs about 5 x 10^5.
constexpr uint64_t kMaxWork = uint64_t(1) << 24;
thread_local uint64_t t_work = 0;
void charge(uint64_t n) {
  if ((t_work += n) > kMaxWork)
    throw error(errc::unsupported,
                "grammar: following it here costs too much (more than 2^24 steps for one token: an ambiguous or "
                "deeply nested grammar)");
}

std::shared_ptr<const token_trie> build_trie(const tokenizer& tok) {
  auto t = std::make_shared<token_trie>();
  t->n_vocab = tok.n_vocab();
  t->eos = tok.eos();
  t->ends = tok.end_tokens();
  t->types = tok.vocab().types;
  for (int32_t id = 0; id < tok.n_vocab(); ++id) t->texts.push_back(tok.token_text(id));
  // build with maps, then lay out breadth first in flat arrays
  struct tmp {
    std::map<uint8_t, uint32_t> kids;
    std::vector<int32_t> toks;
  };
  std::vector<tmp> b(1);
  for (int32_t id = 0; id < tok.n_vocab(); ++id) {
    const token_type ty = tok.vocab().types[std::size_t(id)];
    if (ty != token_type::normal && ty != token_type::user_defined && ty != token_type::byte) continue;
    const std::string& s = tok.token_text(id);
    if (s.empty()) continue;
    t->depth = std::max(t->depth, s.size());
    uint32_t at = 0;
    for (unsigned char c : s) {
      auto it = b[at].kids.find(c);
      if (it == b[at].kids.end()) {
        b.emplace_back();
        it = b[at].kids.emplace(c, uint32_t(b.size() - 1)).first;
      }
      at = it->second;
    }
    b[at].toks.push_back(id);
  }
  std::vector<uint32_t> order{0}, where(b.size());
  for (std::size_t i = 0; i < order.size(); ++i)
    for (const auto& [c, k] : b[order[i]].kids) order.push_back(k);
  for (std::size_t i = 0; i < order.size(); ++i) where[order[i]] = uint32_t(i);
  t->nodes.resize(order.size());
  for (std::size_t i = 0; i < order.size(); ++i) {
    const tmp& x = b[order[i]];
    auto& n = t->nodes[i];
    n.first_child = uint32_t(t->edges.size());
    n.n_children = uint32_t(x.kids.size());
    for (const auto& [c, k] : x.kids) t->edges.push_back({c, where[k]});
    n.first_token = uint32_t(t->tokens.size());
    n.n_tokens = uint32_t(x.toks.size());
    t->tokens.insert(t->tokens.end(), x.toks.begin(), x.toks.end());
  }
  return t;
}

// The tries of the last few vocabularies, found by content: a freed tokenizer's address may be
// reused by another, so the texts and types are compared, not the address.
std::shared_ptr<const token_trie> trie_for(const tokenizer& tok) {
  static std::mutex mu;
  static std::vector<std::shared_ptr<const token_trie>> cache;  // most recently used last
  const auto same = [&](const token_trie& t) {
    if (t.n_vocab != tok.n_vocab() || t.eos != tok.eos() || t.ends != tok.end_tokens()) return false;
    for (int32_t id = 0; id < t.n_vocab; ++id)
      if (t.types[std::size_t(id)] != tok.vocab().types[std::size_t(id)] ||
          t.texts[std::size_t(id)] != tok.token_text(id))
        return false;
    return true;
  };
  std::lock_guard<std::mutex> lk(mu);
  for (auto it = cache.begin(); it != cache.end(); ++it)
    if (same(**it)) {
      auto t = *it;
      cache.erase(it);
      cache.push_back(t);
      return t;
    }
  auto t = build_trie(tok);
  cache.push_back(t);
  if (cache.size() > 4) cache.erase(cache.begin());
  return t;
}

}  // namespace


namespace grammar_detail {

// A parse state: the stacks (concatenated; stack i is data[off[i], off[i+1])) and an unfinished
// UTF-8 character: `rem` continuation bytes still to come, `value` its bits so far, [lo, hi] the
// code points it can still become.
struct parse_state {
  std::vector<uint32_t> data;
  std::vector<uint32_t> off{0};
  uint32_t value = 0, lo = 0, hi = 0;
  int rem = 0;

  std::size_t size() const { return off.size() - 1; }
  const uint32_t* begin(std::size_t i) const { return data.data() + off[i]; }
  std::size_t length(std::size_t i) const { return off[i + 1] - off[i]; }
  void clear() {
    data.clear();
    off.assign(1, 0);
    rem = 0;
  }
  void push(const uint32_t* s, std::size_t n) {
    if (size() >= kMaxStacks)
      throw error(errc::unsupported, "grammar: more than " + std::to_string(kMaxStacks) +
                                         " parses of the text so far (the grammar is too ambiguous)");
    charge(n + 1);
    data.insert(data.end(), s, s + n);
    off.push_back(uint32_t(data.size()));
  }
  std::size_t words() const { return data.size() + off.size(); }
  void pop(std::vector<uint32_t>& into) {
    into.assign(data.begin() + off[size() - 1], data.end());
    off.pop_back();
    data.resize(off.back());
  }
  bool operator==(const parse_state& o) const {
    return rem == o.rem && value == o.value && lo == o.lo && hi == o.hi && off == o.off && data == o.data;
  }
  uint64_t hash() const {
    charge(words());
    uint64_t h = 1469598103934665603ull;
    const auto mix = [&](uint64_t x) { h = (h ^ x) * 1099511628211ull; };
    for (uint32_t x : data) mix(x);
    for (uint32_t x : off) mix(x);
    mix(uint64_t(rem) << 48 ^ value), mix(uint64_t(lo) << 32 | hi);
    return h;
  }
  // drops repeated stacks (an ambiguous grammar reaching one place twice)
  void dedupe(std::vector<uint32_t>& idx) {
    const std::size_t n = size();
    if (n < 2) return;
    charge(2 * data.size());
    idx.resize(n);
    for (uint32_t i = 0; i < n; ++i) idx[i] = i;
    auto less = [&](uint32_t a, uint32_t b) {
      return std::lexicographical_compare(begin(a), begin(a) + length(a), begin(b), begin(b) + length(b));
    };
    auto same = [&](uint32_t a, uint32_t b) {
      return length(a) == length(b) && std::equal(begin(a), begin(a) + length(a), begin(b));
    };
    std::sort(idx.begin(), idx.end(), less);
    idx.erase(std::unique(idx.begin(), idx.end(), same), idx.end());
    if (idx.size() == n) return;
    std::vector<uint32_t> d2, o2{0};
    for (uint32_t i : idx) {
      d2.insert(d2.end(), begin(i), begin(i) + length(i));
      o2.push_back(uint32_t(d2.size()));
    }
    data.swap(d2);
    off.swap(o2);
  }
};

// Masks already computed in this generation, by parse state: JSON's strings, numbers and
// whitespace come back to the same state again and again.
struct mask_cache {
  static constexpr std::size_t kEntries = 64;
  std::vector<uint64_t> hashes;
  std::vector<parse_state> states;
  std::vector<std::vector<bool>> masks;
  std::size_t next = 0;  // the entry replaced next, once full

  // Transitions by byte between interned parse states, shared by every mask of the generation:
  // a trie walk inside a JSON string meets the same few states at every node, so each
  // (state, byte) is computed once and then looked up.
  static constexpr std::size_t kMaxStates = 4096;
  std::vector<parse_state> interned;
  std::vector<std::array<int32_t, 256>> next_state;  // -2: not computed yet, -1: no parse
  std::unordered_map<uint64_t, std::vector<int32_t>> by_hash;

  std::size_t interned_words = 0;
  static constexpr std::size_t kMaxInternedWords = std::size_t(1) << 24;  // 64 MiB
  static constexpr std::size_t kMaxCachedWords = std::size_t(1) << 16;    // per cached mask's state

  int32_t intern(const parse_state& s) {
    const uint64_t h = s.hash();
    auto& bucket = by_hash[h];
    for (int32_t i : bucket) {
      charge(s.words());
      if (interned[std::size_t(i)] == s) return i;
    }
    charge(s.words());
    interned_words += s.words();
    interned.push_back(s);
    next_state.emplace_back();
    next_state.back().fill(-2);
    bucket.push_back(int32_t(interned.size() - 1));
    return int32_t(interned.size() - 1);
  }
  void clear_states() {
    interned_words = 0;
    interned.clear();
    next_state.clear();
    by_hash.clear();
  }

  const std::vector<bool>* find(const parse_state& s, uint64_t h) const {
    for (std::size_t i = 0; i < hashes.size(); ++i)
      if (hashes[i] == h && states[i] == s) return &masks[i];
    return nullptr;
  }
  void put(const parse_state& s, uint64_t h, const std::vector<bool>& m) {
    if (s.words() > kMaxCachedWords) return;  // a huge state is not kept (the cache's memory stays bounded)
    if (hashes.size() < kEntries) {
      hashes.push_back(h);
      states.push_back(s);
      masks.push_back(m);
      return;
    }
    hashes[next] = h, states[next] = s, masks[next] = m;
    next = (next + 1) % kEntries;
  }
};

}  // namespace grammar_detail

namespace {

// Buffers reused by every step (no allocation once warm).
struct scratch {
  parse_state work;
  std::vector<uint32_t> cur, idx;
};

// Expands `cur` (its top may be a rule reference) until each resulting stack has a terminal on
// top or is empty, adding them to out. Finite: the grammar has no left recursion.
void expand(const compiled& g, std::vector<uint32_t>& cur, parse_state& out, scratch& sc) {
  sc.work.clear();
  sc.work.push(cur.data(), cur.size());
  while (sc.work.size()) {
    sc.work.pop(cur);
    if (cur.empty()) {
      out.push(nullptr, 0);
      continue;
    }
    const uint32_t pos = cur.back();
    const uint32_t s = g.syms[pos];
    if (!(s & kRule)) {  // a terminal
      out.push(cur.data(), cur.size());
      continue;
    }
    cur.pop_back();
    if (g.syms[pos + 1] != kEnd) cur.push_back(pos + 1);  // the continuation, unless the rule ends
    const auto& alts = g.alts[s & ~kRule];
    for (auto a = alts.rbegin(); a != alts.rend(); ++a) {  // reversed: the first alternative comes out first
      if (g.syms[*a] == kEnd) {
        sc.work.push(cur.data(), cur.size());
      } else {
        cur.push_back(*a);
        sc.work.push(cur.data(), cur.size());
        cur.pop_back();
      }
    }
  }
}

// out = in advanced by the code point c.
void advance_cp(const compiled& g, const parse_state& in, uint32_t c, parse_state& out, scratch& sc) {
  out.clear();
  for (std::size_t i = 0; i < in.size(); ++i) {
    const std::size_t n = in.length(i);
    if (n == 0) continue;  // complete: nothing more fits this parse
    const uint32_t pos = in.begin(i)[n - 1];
    const auto& set = g.sets[g.syms[pos]];
    if (!intersects(set, c, c)) continue;
    sc.cur.assign(in.begin(i), in.begin(i) + n);
    if (g.syms[pos + 1] == kEnd) sc.cur.pop_back();
    else sc.cur.back() = pos + 1;
    expand(g, sc.cur, out, sc);
  }
  out.dedupe(sc.idx);
}

// out = in advanced by one byte of UTF-8; false when nothing of the grammar fits (out is then
// unspecified).
bool advance_byte(const compiled& g, const parse_state& in, uint8_t b, parse_state& out, scratch& sc) {
  uint32_t v, lo, hi;
  int rem;
  if (in.rem == 0) {
    if (b < 0x80) {
      advance_cp(g, in, b, out, sc);
      return out.size() > 0;
    }
    if (b >= 0xC2 && b <= 0xDF) {
      v = b & 0x1Fu, rem = 1, lo = 0x80, hi = 0x7FF;
    } else if (b >= 0xE0 && b <= 0xEF) {
      v = b & 0x0Fu, rem = 2, lo = 0x800, hi = 0xFFFF;
    } else if (b >= 0xF0 && b <= 0xF4) {
      v = b & 0x07u, rem = 3, lo = 0x10000, hi = 0x10FFFF;
    } else {
      return false;  // never starts a character
    }
  } else {
    if ((b & 0xC0) != 0x80) return false;
    v = (in.value << 6) | (b & 0x3Fu), rem = in.rem - 1, lo = in.lo, hi = in.hi;
  }
  // the code points these bytes can still become, without surrogates
  lo = std::max(lo, v << (6 * rem));
  hi = std::min(hi, ((v + 1) << (6 * rem)) - 1);
  if (lo >= 0xD800 && lo <= 0xDFFF) lo = 0xE000;
  if (hi >= 0xD800 && hi <= 0xDFFF) hi = 0xD7FF;
  if (lo > hi) return false;
  if (rem == 0) {
    advance_cp(g, in, v, out, sc);
    return out.size() > 0;
  }
  out.clear();
  for (std::size_t i = 0; i < in.size(); ++i) {
    const std::size_t n = in.length(i);
    if (n && intersects(g.sets[g.syms[in.begin(i)[n - 1]]], lo, hi)) out.push(in.begin(i), n);
  }
  out.value = v, out.rem = rem, out.lo = lo, out.hi = hi;
  return out.size() > 0;
}

bool any_empty(const parse_state& s) {
  for (std::size_t i = 0; i < s.size(); ++i)
    if (s.length(i) == 0) return true;
  return false;
}

thread_local scratch t_scratch;

}  // namespace

grammar_matcher::grammar_matcher(std::shared_ptr<const grammar> g, const tokenizer& tok)
    : g_(std::move(g)), tok_(&tok), st_(std::make_unique<parse_state>()), cache_(std::make_unique<mask_cache>()) {
  if (!g_) throw error(errc::invalid_argument, "grammar_matcher: no grammar");
  trie_ = trie_for(tok);
  reset();
}

grammar_matcher::~grammar_matcher() = default;
grammar_matcher::grammar_matcher(grammar_matcher&&) noexcept = default;
grammar_matcher& grammar_matcher::operator=(grammar_matcher&&) noexcept = default;

void grammar_matcher::reset() {
  const compiled& c = *g_->c_;
  t_work = 0;
  st_->clear();
  std::vector<uint32_t> cur;
  for (uint32_t a : c.alts[c.root]) {
    cur.clear();
    if (c.syms[a] != kEnd) cur.push_back(a);
    expand(c, cur, *st_, t_scratch);
  }
  st_->dedupe(t_scratch.idx);
  ended_ = false;
}

bool grammar_matcher::can_end() const noexcept { return !ended_ && st_->rem == 0 && any_empty(*st_); }

bool grammar_matcher::must_end() const noexcept {
  if (ended_ || st_->rem != 0) return false;
  for (std::size_t i = 0; i < st_->size(); ++i)
    if (st_->length(i) != 0) return false;
  return true;
}

bool grammar_matcher::accept_text(std::string_view bytes) {
  if (ended_) return false;
  const compiled& c = *g_->c_;
  t_work = 0;
  parse_state a = *st_, b;
  for (unsigned char ch : bytes) {
    if (!advance_byte(c, a, ch, b, t_scratch)) return false;
    std::swap(a, b);
  }
  *st_ = std::move(a);
  return true;
}

void grammar_matcher::accept(int32_t id) {
  if (!tok_->valid(id)) throw error(errc::invalid_argument, "grammar: token " + std::to_string(id) + " is outside the vocabulary");
  if (ended_) throw error(errc::invalid_argument, "grammar: a token after the end of the text");
  if (tok_->ends_answer(id)) {  // EOS, or the end of a chat turn
    if (!can_end()) throw error(errc::invalid_argument, "grammar: EOS where the grammar's text is not complete");
    ended_ = true;
    return;
  }
  const token_type ty = tok_->vocab().types[std::size_t(id)];
  const std::string& text = tok_->token_text(id);
  if ((ty != token_type::normal && ty != token_type::user_defined && ty != token_type::byte) || text.empty() ||
      !accept_text(text))
    throw error(errc::invalid_argument, "grammar: token " + std::to_string(id) + " ('" + text + "') is not allowed here");
}

void grammar_matcher::allowed(std::vector<bool>& out) {
  const compiled& c = *g_->c_;
  const token_trie& t = *trie_;
  if (ended_) {
    out.assign(std::size_t(t.n_vocab), false);
    return;
  }
  t_work = 0;
  const uint64_t h = st_->hash();
  if (const auto* m = cache_->find(*st_, h)) {
    out = *m;
    return;
  }
  out.assign(std::size_t(t.n_vocab), false);
  mask_cache& mc = *cache_;
  if (mc.interned.size() > mask_cache::kMaxStates || mc.interned_words > mask_cache::kMaxInternedWords)
    mc.clear_states();
  const int32_t root = mc.intern(*st_);
  // depth first over the trie, iteratively: (node, next edge, state at the node)
  std::vector<std::array<int32_t, 3>> walk{{0, 0, root}};
  parse_state tmp;
  while (!walk.empty()) {
    auto& [node, e, at] = walk.back();
    const auto& nd = t.nodes[std::size_t(node)];
    if (uint32_t(e) == nd.n_children) {
      walk.pop_back();
      continue;
    }
    const auto [byte, child] = t.edges[nd.first_child + uint32_t(e++)];
    int32_t to = mc.next_state[std::size_t(at)][byte];
    if (to == -2) {
      to = advance_byte(c, mc.interned[std::size_t(at)], byte, tmp, t_scratch) ? mc.intern(tmp) : -1;
      mc.next_state[std::size_t(walk.back()[2])][byte] = to;  // (intern may have moved the arrays)
    }
    if (to < 0) continue;
    const auto& cn = t.nodes[child];
    for (uint32_t k = 0; k < cn.n_tokens; ++k) out[std::size_t(t.tokens[cn.first_token + k])] = true;
    if (cn.n_children) walk.push_back({int32_t(child), 0, to});
  }
  if (can_end())
    for (int32_t e : t.ends)
      if (tok_->valid(e)) out[std::size_t(e)] = true;
  cache_->put(*st_, h, out);
}

void grammar_matcher::mask(std::span<float> logits) {
  if (int64_t(logits.size()) != trie_->n_vocab)
    throw error(errc::invalid_argument, "grammar: " + std::to_string(logits.size()) + " logits for a vocabulary of " +
                                            std::to_string(trie_->n_vocab));
  allowed(mask_);
  bool any = false;
  for (std::size_t i = 0; i < logits.size(); ++i) {
    if (!mask_[i]) logits[i] = -INFINITY;
    else any = true;
  }
  if (!any && !ended_)
    throw error(errc::unsupported,
                "grammar: no token of the vocabulary continues the text here (the vocabulary lacks byte tokens the "
                "grammar needs)");
}

}  // namespace qllm
