// GBNF → compiled grammar: the parser, repetitions as rules, and the checks that keep matching
// exact and finite (no rule that derives nothing, no left recursion, bounded sizes).
#include <algorithm>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "grammar/compiled.hpp"
#include "qllm/error.hpp"
#include "qllm/grammar.hpp"

namespace qllm {

using namespace grammar_detail;

namespace {

constexpr std::size_t kMaxSymbols = std::size_t(1) << 20;  // all alternatives together
constexpr uint32_t kMaxRepeat = 10000;                     // m and n of {m,n}
constexpr int kMaxNesting = 256;                           // parentheses

// A symbol before rules are numbered: a terminal's index, or a rule reference by index.
struct sym {
  bool rule;
  uint32_t index;
};
using seq = std::vector<sym>;

class parser {
 public:
  explicit parser(std::string_view t) : t_(t) {}

  void parse() {
    for (;;) {
      skip(true);
      if (at_end()) break;
      const std::size_t name_at = p_;
      const std::string name = parse_name();
      skip(false);
      if (t_.substr(p_, 3) != "::=") fail("expected ::= after the rule name '" + name + "'");
      p_ += 3;
      skip(true);
      const uint32_t r = rule_index(name, name_at);
      if (defined_[r]) fail_at(name_at, "rule '" + name + "' is defined twice");
      defined_[r] = true;
      rules_[r] = parse_alternatives(name, 0);
      skip(false);
      if (!at_end() && t_[p_] != '\n' && t_[p_] != '\r') fail("unexpected character '" + std::string(1, t_[p_]) + "'");
    }
    for (uint32_t r = 0; r < rules_.size(); ++r)
      if (!defined_[r]) fail_at(first_use_[r], "rule '" + names_[r] + "' is used but never defined");
  }

  std::vector<std::vector<seq>> rules_;
  std::vector<std::string> names_;
  std::vector<ranges> sets_;
  std::map<std::string, uint32_t> by_name_;

 private:
  bool at_end() const { return p_ >= t_.size(); }

  [[noreturn]] void fail_at(std::size_t at, const std::string& msg) const {
    std::size_t line = 1, col = 1;
    for (std::size_t i = 0; i < at && i < t_.size(); ++i) {
      if (t_[i] == '\n') {
        ++line;
        col = 1;
      } else {
        ++col;
      }
    }
    throw error(errc::invalid_argument,
                "grammar: line " + std::to_string(line) + ", column " + std::to_string(col) + ": " + msg);
  }
  [[noreturn]] void fail(const std::string& msg) const { fail_at(p_, msg); }

  // Spaces, tabs and comments; newlines too when `lines`.
  void skip(bool lines) {
    while (!at_end()) {
      const char c = t_[p_];
      if (c == ' ' || c == '\t' || (lines && (c == '\n' || c == '\r'))) {
        ++p_;
      } else if (c == '#') {
        while (!at_end() && t_[p_] != '\n') ++p_;
      } else {
        break;
      }
    }
  }

  static bool name_char(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
  }

  std::string parse_name() {
    const std::size_t b = p_;
    while (!at_end() && name_char(t_[p_])) ++p_;
    if (p_ == b) fail("expected a rule name");
    return std::string(t_.substr(b, p_ - b));
  }

  uint32_t rule_index(const std::string& name, std::size_t at) {
    auto it = by_name_.find(name);
    if (it != by_name_.end()) return it->second;
    const uint32_t r = new_rule(name);
    by_name_[name] = r;
    first_use_[r] = at;
    return r;
  }

  uint32_t new_rule(std::string name) {
    if (rules_.size() >= kMaxSymbols) fail("too many rules");
    rules_.emplace_back();
    names_.push_back(std::move(name));
    defined_.push_back(false);
    first_use_.push_back(p_);
    return uint32_t(rules_.size() - 1);
  }

  // A rule of its own for a group or a repetition, named after the rule it appears in.
  uint32_t helper_rule(const std::string& parent, std::vector<seq> alts, bool counted = false) {
    const uint32_t r = new_rule(parent + "_" + std::to_string(rules_.size()));
    defined_[r] = true;
    rules_[r] = std::move(alts);
    if (!counted) count(rules_[r]);
    return r;
  }

  void count(const std::vector<seq>& alts) {
    for (const auto& a : alts) n_syms_ += a.size() + 1;
    if (n_syms_ > kMaxSymbols) fail("the grammar is too large (more than 2^20 symbols once repetitions are expanded)");
  }

  uint32_t terminal(ranges r) {
    sets_.push_back(std::move(r));
    return uint32_t(sets_.size() - 1);
  }

  // One code point of the grammar's text (UTF-8).
  uint32_t next_code_point() {
    const unsigned char c = static_cast<unsigned char>(t_[p_]);
    int n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (n == 0 || p_ + std::size_t(n) > t_.size()) fail("the grammar is not valid UTF-8");
    uint32_t v = n == 1 ? c : c & (0x7F >> n);
    for (int i = 1; i < n; ++i) {
      const unsigned char d = static_cast<unsigned char>(t_[p_ + std::size_t(i)]);
      if ((d & 0xC0) != 0x80) fail("the grammar is not valid UTF-8");
      v = (v << 6) | (d & 0x3F);
    }
    static const uint32_t min_of[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (v < min_of[n] || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) fail("the grammar is not valid UTF-8");
    p_ += std::size_t(n);
    return v;
  }

  uint32_t hex(int digits) {
    uint32_t v = 0;
    for (int i = 0; i < digits; ++i) {
      if (at_end()) fail("an escape ends early");
      const char c = t_[p_];
      const int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
      if (d < 0) fail("expected a hexadecimal digit");
      v = v * 16 + uint32_t(d);
      ++p_;
    }
    if (v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) fail("the escape is not a Unicode scalar value");
    return v;
  }

  // A character of a literal or a class, escapes resolved.
  uint32_t parse_char() {
    if (at_end()) fail("unexpected end of the grammar");
    if (t_[p_] != '\\') return next_code_point();
    ++p_;
    if (at_end()) fail("an escape ends early");
    const char c = t_[p_++];
    switch (c) {
      case 'n': return '\n';
      case 'r': return '\r';
      case 't': return '\t';
      case '\\': case '"': case '[': case ']': case '-': case '/': case '^': case '.': case '\'': return uint32_t(c);
      case 'x': return hex(2);
      case 'u': return hex(4);
      case 'U': return hex(8);
      default: fail(std::string("unknown escape \\") + c);
    }
  }

  static ranges normalise(ranges r, bool negate) {
    std::sort(r.begin(), r.end());
    ranges m;
    for (const auto& x : r) {
      if (!m.empty() && x.first <= m.back().second + 1) m.back().second = std::max(m.back().second, x.second);
      else m.push_back(x);
    }
    if (!negate) return m;
    ranges c;
    uint32_t next = 0;
    for (const auto& x : m) {
      if (x.first > next) c.push_back({next, x.first - 1});
      next = x.second + 1;
    }
    if (next <= 0x10FFFF) c.push_back({next, 0x10FFFF});
    return c;
  }

  std::vector<seq> parse_alternatives(const std::string& rule, int depth) {
    if (depth > kMaxNesting) fail("parentheses nested too deeply");
    std::vector<seq> alts;
    // each alternative is counted as soon as it is parsed: many small alternatives that expand
    // to large ones must fail at the limit, not after all of them are in memory
    const auto add = [&](seq a) {
      n_syms_ += a.size() + 1;
      if (n_syms_ > kMaxSymbols) fail("the grammar is too large (more than 2^20 symbols once repetitions are expanded)");
      alts.push_back(std::move(a));
    };
    add(parse_sequence(rule, depth));
    for (;;) {
      const std::size_t save = p_;
      skip(true);  // an alternative may start on the next line with |
      if (!at_end() && t_[p_] == '|') {
        ++p_;
        skip(true);
        add(parse_sequence(rule, depth));
      } else {
        if (depth == 0) p_ = save;
        break;
      }
    }
    return alts;
  }

  seq parse_sequence(const std::string& rule, int depth) {
    seq s;
    for (;;) {
      skip(depth > 0);
      if (at_end()) break;
      const char c = t_[p_];
      seq item;
      if (c == '"') {
        ++p_;
        while (!at_end() && t_[p_] != '"') {
          const uint32_t ch = parse_char();
          item.push_back({false, terminal({{ch, ch}})});
        }
        if (at_end()) fail("a literal is not closed with \"");
        ++p_;
        if (item.empty()) continue;  // "" is the empty string
      } else if (c == '[') {
        ++p_;
        bool negate = false;
        if (!at_end() && t_[p_] == '^') {
          negate = true;
          ++p_;
        }
        ranges r;
        while (!at_end() && t_[p_] != ']') {
          const uint32_t lo = parse_char();
          uint32_t hi = lo;
          if (p_ + 1 < t_.size() && t_[p_] == '-' && t_[p_ + 1] != ']') {
            ++p_;
            hi = parse_char();
            if (hi < lo) fail("a character range ends before it starts");
          }
          r.push_back({lo, hi});
        }
        if (at_end()) fail("a character class is not closed with ]");
        ++p_;
        item.push_back({false, terminal(normalise(std::move(r), negate))});
      } else if (c == '.') {
        ++p_;
        item.push_back({false, terminal({{0, 0x10FFFF}})});
      } else if (c == '(') {
        ++p_;
        auto alts = parse_alternatives(rule, depth + 1);
        skip(true);
        if (at_end() || t_[p_] != ')') fail("expected )");
        ++p_;
        item.push_back({true, helper_rule(rule, std::move(alts), true)});
      } else if (name_char(c)) {
        const std::size_t at = p_;
        const std::string name = parse_name();
        skip(depth > 0);
        if (t_.substr(p_, 3) == "::=") {  // the next rule: this sequence ended at a line break
          p_ = at;
          break;
        }
        p_ = at + name.size();
        item.push_back({true, rule_index(name, at)});
      } else {
        break;
      }
      postfix(rule, item);
      s.insert(s.end(), item.begin(), item.end());
      if (s.size() > kMaxSymbols) fail("the grammar is too large");
    }
    return s;
  }

  // * + ? {m} {m,} {m,n} after an item: the item becomes a reference to a rule of its own.
  void postfix(const std::string& rule, seq& item) {
    for (;;) {
      std::size_t q = p_;
      while (q < t_.size() && (t_[q] == ' ' || t_[q] == '\t')) ++q;
      if (q >= t_.size()) return;
      const char c = t_[q];
      uint32_t lo = 0, hi = 0;
      bool unbounded = false;
      if (c == '*') {
        unbounded = true;
      } else if (c == '+') {
        lo = 1;
        unbounded = true;
      } else if (c == '?') {
        hi = 1;
      } else if (c == '{') {
        p_ = q + 1;
        skip(false);
        lo = parse_count();
        skip(false);
        if (!at_end() && t_[p_] == ',') {
          ++p_;
          skip(false);
          if (!at_end() && t_[p_] == '}') unbounded = true;
          else hi = parse_count();
        } else {
          hi = lo;
        }
        skip(false);
        if (at_end() || t_[p_] != '}') fail("expected } after a repetition count");
        if (!unbounded && hi < lo) fail("a repetition's maximum is below its minimum");
        q = p_;
      } else {
        return;
      }
      p_ = q + 1;
      item = repeat(rule, item, lo, hi, unbounded);
    }
  }

  uint32_t parse_count() {
    const std::size_t b = p_;
    uint64_t v = 0;
    while (!at_end() && t_[p_] >= '0' && t_[p_] <= '9') {
      v = v * 10 + uint64_t(t_[p_] - '0');
      if (v > kMaxRepeat) fail("a repetition count above " + std::to_string(kMaxRepeat));
      ++p_;
    }
    if (p_ == b) fail("expected a repetition count");
    return uint32_t(v);
  }

  seq repeat(const std::string& rule, const seq& item, uint32_t lo, uint32_t hi, bool unbounded) {
    if (uint64_t(item.size()) * (uint64_t(unbounded ? lo : hi) + 1) > kMaxSymbols) fail("the grammar is too large");
    seq out;
    for (uint32_t i = 0; i < lo; ++i) out.insert(out.end(), item.begin(), item.end());
    if (unbounded) {  // R ::= item R | ε  (right recursion: the matcher's stack does not grow)
      const uint32_t r = helper_rule(rule, {});
      seq again = item;
      again.push_back({true, r});
      rules_[r] = {again, {}};
      count(rules_[r]);
      out.push_back({true, r});
    } else if (hi > lo) {  // O1 ::= item | ε, Ok ::= item O(k-1) | ε: at most hi - lo more
      uint32_t inner = helper_rule(rule, {item, {}});
      for (uint32_t k = 2; k <= hi - lo; ++k) {
        seq more = item;
        more.push_back({true, inner});
        inner = helper_rule(rule, {more, {}});
      }
      out.push_back({true, inner});
    }
    return out;
  }

  std::string_view t_;
  std::size_t p_ = 0;
  std::vector<bool> defined_;
  std::vector<std::size_t> first_use_;
  std::size_t n_syms_ = 0;
};

// Rules that derive no finite string lose the alternatives that use them; then left recursion
// (a rule reaching itself before any character, through rules that may be empty) is refused.
void check(std::vector<std::vector<seq>>& rules, const std::vector<std::string>& names, const std::vector<ranges>& sets,
           uint32_t root) {
  const std::size_t n = rules.size();
  // Least fixed points by work lists, linear in the grammar's size (a pass-until-nothing-changes
  // loop is quadratic on a chain of rules listed in reverse, which a client could send).
  // holds(s): whether symbol s counts (productive: a terminal with characters, or a productive
  // rule; nullable: a nullable rule); an alternative counts when all its symbols do.
  const auto fixpoint = [&](auto terminal_counts) {
    std::vector<bool> done(n, false);
    std::vector<std::vector<std::pair<uint32_t, uint32_t>>> uses(n);  // rule -> (rule, alt) using it
    std::vector<std::vector<uint32_t>> missing(n);                     // per alt: symbols not yet counted
    std::vector<uint32_t> queue;
    for (uint32_t r = 0; r < n; ++r) {
      missing[r].resize(rules[r].size());
      for (uint32_t a = 0; a < rules[r].size(); ++a) {
        uint32_t m = 0;
        bool dead = false;
        for (const sym& x : rules[r][a]) {
          if (x.rule) {
            ++m;
            uses[x.index].push_back({r, a});
          } else if (!terminal_counts(x)) {
            dead = true;
          }
        }
        missing[r][a] = dead ? UINT32_MAX : m;
        if (m == 0 && !dead && !done[r]) {
          done[r] = true;
          queue.push_back(r);
        }
      }
    }
    while (!queue.empty()) {
      const uint32_t s = queue.back();
      queue.pop_back();
      for (const auto& [r, a] : uses[s]) {
        uint32_t& m = missing[r][a];
        if (m == UINT32_MAX || m == 0) continue;
        if (--m == 0 && !done[r]) {
          done[r] = true;
          queue.push_back(r);
        }
      }
    }
    return done;
  };
  const std::vector<bool> productive = fixpoint([&](const sym& x) { return !sets[x.index].empty(); });
  if (!productive[root])
    throw error(errc::invalid_argument, "grammar: rule '" + names[root] + "' derives no finite string");
  for (auto& alts : rules)
    alts.erase(std::remove_if(alts.begin(), alts.end(),
                              [&](const seq& a) {
                                return std::any_of(a.begin(), a.end(), [&](const sym& s) {
                                  return s.rule ? !productive[s.index] : sets[s.index].empty();
                                });
                              }),
               alts.end());
  const std::vector<bool> nullable = fixpoint([](const sym&) { return false; });
  // edges r -> s where s can be the first thing r expands to
  std::vector<std::vector<uint32_t>> first(n);
  for (std::size_t r = 0; r < n; ++r)
    for (const auto& a : rules[r])
      for (const sym& s : a) {
        if (!s.rule) break;
        first[r].push_back(s.index);
        if (!nullable[s.index]) break;
      }
  std::vector<uint8_t> mark(n, 0);  // 0 unseen, 1 on the path, 2 done
  std::vector<uint32_t> path;
  // iterative depth-first search (grammars may have many rules)
  for (uint32_t start = 0; start < n; ++start) {
    if (mark[start]) continue;
    std::vector<std::pair<uint32_t, std::size_t>> st{{start, 0}};
    mark[start] = 1;
    path.assign(1, start);
    while (!st.empty()) {
      auto& [r, i] = st.back();
      if (i < first[r].size()) {
        const uint32_t s = first[r][i++];
        if (mark[s] == 1) {
          std::string cycle;
          const auto it = std::find(path.begin(), path.end(), s);
          for (auto p = it; p != path.end(); ++p) cycle += names[*p] + " -> ";
          throw error(errc::invalid_argument,
                      "grammar: rule '" + names[s] + "' is left-recursive (" + cycle + names[s] +
                          "): write the repetition with * or + instead");
        }
        if (mark[s] == 0) {
          mark[s] = 1;
          st.push_back({s, 0});
          path.push_back(s);
        }
      } else {
        mark[r] = 2;
        st.pop_back();
        path.pop_back();
      }
    }
  }
}

}  // namespace

grammar::grammar(std::unique_ptr<grammar_detail::compiled> c) : c_(std::move(c)) {}
grammar::~grammar() = default;
std::size_t grammar::n_rules() const noexcept { return c_->alts.size(); }

std::shared_ptr<const grammar> grammar::from_gbnf(std::string_view text, std::string_view root) {
  parser p(text);
  p.parse();
  const auto it = p.by_name_.find(std::string(root));
  if (it == p.by_name_.end())
    throw error(errc::invalid_argument, "grammar: no rule named '" + std::string(root) + "' (the root)");
  check(p.rules_, p.names_, p.sets_, it->second);
  auto c = std::make_unique<compiled>();
  c->root = it->second;
  c->names = std::move(p.names_);
  c->sets = std::move(p.sets_);
  c->alts.resize(p.rules_.size());
  for (std::size_t r = 0; r < p.rules_.size(); ++r)
    for (const auto& a : p.rules_[r]) {
      c->alts[r].push_back(uint32_t(c->syms.size()));
      for (const sym& s : a) c->syms.push_back(s.rule ? (kRule | s.index) : s.index);
      c->syms.push_back(kEnd);
    }
  return std::shared_ptr<const grammar>(new grammar(std::move(c)));
}

std::string_view grammar::json_object_gbnf() {
  return R"(# any JSON object (RFC 8259), whitespace bounded so that it cannot run on forever
root   ::= object
value  ::= object | array | string | number | ("true" | "false" | "null") ws
object ::= "{" ws ( string ":" ws value ("," ws string ":" ws value)* )? "}" ws
array  ::= "[" ws ( value ("," ws value)* )? "]" ws
string ::= "\"" ( [^"\\\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4}) )* "\"" ws
number ::= "-"? ("0" | [1-9] [0-9]*) ("." [0-9]+)? ([eE] [-+]? [0-9]+)? ws
ws     ::= "" | " " | "\n" [ \t]{0,20}
)";
}

std::shared_ptr<const grammar> grammar::json_object() {
  static const std::shared_ptr<const grammar> g = from_gbnf(json_object_gbnf());
  return g;
}

}  // namespace qllm
