// A compiled grammar: every alternative of every rule as a run of symbols in one array.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace qllm::grammar_detail {

// A symbol is a terminal (an index into `sets`), a rule reference (kRule | rule) or the end of
// an alternative (kEnd). A parse position is the index of a symbol that is not kEnd.
inline constexpr uint32_t kEnd = 0xFFFFFFFFu;
inline constexpr uint32_t kRule = 0x80000000u;

using ranges = std::vector<std::pair<uint32_t, uint32_t>>;  // inclusive code-point ranges, sorted, disjoint

struct compiled {
  std::vector<uint32_t> syms;
  std::vector<std::vector<uint32_t>> alts;  // per rule: the position of each alternative's first symbol
  std::vector<std::string> names;           // per rule (groups and repetitions: parent_N)
  std::vector<ranges> sets;                 // terminals
  uint32_t root = 0;
};

// Whether some code point of [lo, hi] is in r.
inline bool intersects(const ranges& r, uint32_t lo, uint32_t hi) {
  std::size_t a = 0, b = r.size();  // first range whose end >= lo
  while (a < b) {
    const std::size_t m = (a + b) / 2;
    if (r[m].second < lo) a = m + 1;
    else b = m;
  }
  return a < r.size() && r[a].first <= hi;
}

}  // namespace qllm::grammar_detail
