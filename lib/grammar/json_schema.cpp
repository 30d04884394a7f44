// JSON Schema → GBNF. Every string the grammar generates validates against the schema; what the
// grammar cannot express exactly is refused with an error naming the keyword and where it is.
//
// Supported: type (one or a list), enum, const, object (properties, required,
// additionalProperties false / true / a schema when there are no properties), array (items,
// minItems, maxItems), string (minLength, maxLength), integer (minimum, maximum,
// exclusiveMinimum, exclusiveMaximum), number (the same bounds: see number_range), boolean, null, anyOf, oneOf (alternatives of
// disjoint types only), allOf of one schema, $ref to #/$defs/... or #/definitions/..., and the
// annotations (title, description, examples, default, $schema, $id, $comment, deprecated,
// readOnly, writeOnly). A string's \u escapes exclude surrogates, so that every escape is one
// character for minLength and maxLength. Objects' properties are written in the schema's order; properties that
// are not listed are not generated (additionalProperties absent or true allows them, so the output
// is still valid).
#include <algorithm>
#include <cctype>
#include <cstdio>
#include <charconv>
#include <cmath>
#include <map>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "qllm/error.hpp"
#include "qllm/grammar.hpp"

namespace qllm {

namespace {

using json = nlohmann::ordered_json;  // properties keep the schema's order

constexpr int64_t kMaxBound = 1000000000000000000;  // integer bounds: |x| <= 1e18
constexpr int64_t kMaxCount = 10000;                  // minLength, maxItems, ...
constexpr std::size_t kMaxGrammarBytes = std::size_t(4) << 20;  // the GBNF a schema may expand to

// A GBNF literal for `s` (UTF-8 passed through; quotes, backslashes and controls escaped).
std::string literal(const std::string& s) {
  std::string o = "\"";
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') {
      o += '\\';
      o += char(c);
    } else if (c < 0x20 || c == 0x7F) {
      char b[8];
      std::snprintf(b, sizeof b, "\\x%02X", c);
      o += b;
    } else {
      o += char(c);
    }
  }
  return o + "\"";
}

// `a` as a literal with "." before its last `dot` characters (dot 0: none; dot < a.size()).
std::string dotted(const std::string& a, std::size_t dot) {
  if (a.empty()) return "\"\"";
  if (dot == 0 || dot >= a.size()) return literal(a);
  return literal(a.substr(0, a.size() - dot) + "." + a.substr(a.size() - dot));
}

// n free digits with "." before the last `dot` of them.
std::string any_digits(std::size_t n, std::size_t dot) {
  if (n == 0) return "";
  if (dot == 0 || dot > n) return " [0-9]{" + std::to_string(n) + "}";
  if (dot == n) return " \".\" [0-9]{" + std::to_string(n) + "}";
  return " [0-9]{" + std::to_string(n - dot) + "} \".\" [0-9]{" + std::to_string(dot) + "}";
}

// Decimal digit strings of one length, a <= b: an unambiguous grammar for every string between,
// written with "." before the last `dot` digits (0: no point).
std::string digit_range(const std::string& a, const std::string& b, std::size_t dot = 0) {
  if (a.empty()) return "\"\"";
  if (a == b) return dotted(a, dot);
  const std::size_t n = a.size() - 1;
  // the first digit, then "." if the rest is the fraction
  const auto head = [&](char c) { return literal(std::string(1, c) + (dot && n == dot ? "." : "")); };
  if (a[0] == b[0]) return head(a[0]) + " " + digit_range(a.substr(1), b.substr(1), dot);
  const std::string any = any_digits(n, dot == n ? 0 : dot) ;
  const std::string point = dot && n == dot ? " \".\"" : "";
  std::vector<std::string> alts;
  if (std::all_of(a.begin() + 1, a.end(), [](char c) { return c == '0'; }) &&
      std::all_of(b.begin() + 1, b.end(), [](char c) { return c == '9'; }))
    return std::string("[") + a[0] + "-" + b[0] + "]" + point + any;
  alts.push_back(head(a[0]) + " " + (n ? digit_range(a.substr(1), std::string(n, '9'), dot) : "\"\""));
  if (a[0] + 1 <= b[0] - 1) alts.push_back(std::string("[") + char(a[0] + 1) + "-" + char(b[0] - 1) + "]" + point + any);
  alts.push_back(head(b[0]) + " " + (n ? digit_range(std::string(n, '0'), b.substr(1), dot) : "\"\""));
  std::string o = "(";
  for (std::size_t i = 0; i < alts.size(); ++i) o += (i ? " | " : "") + alts[i];
  return o + ")";
}

// Non-negative integers in [lo, hi] written without leading zeros; hi < 0: no upper bound.
std::string uint_range(int64_t lo, int64_t hi) {
  const std::string l = std::to_string(lo);
  std::vector<std::string> alts;
  const std::size_t top = hi < 0 ? l.size() : std::to_string(hi).size();
  for (std::size_t len = l.size(); len <= top; ++len) {
    std::string first = l;
    if (len > l.size()) {  // 10^(len-1), the smallest without a leading zero
      first.assign(len, '0');
      first[0] = '1';
    }
    std::string last = std::string(len, '9');
    if (hi >= 0 && len == top) last = std::to_string(hi);
    if (len == 1 && first == "0" && last == "0") alts.push_back("\"0\"");
    else alts.push_back(digit_range(first, last));
  }
  if (hi < 0) alts.push_back("[1-9] [0-9]{" + std::to_string(l.size()) + ",}");  // more digits than lo
  std::string o = "(";
  for (std::size_t i = 0; i < alts.size(); ++i) o += (i ? " | " : "") + alts[i];
  return o + ")";
}

// A decimal bound: (neg ? -1 : 1) * m / 10^e.
struct decimal {
  bool neg = false;
  __int128 m = 0;
  int e = 0;
};

__int128 pow10(int k) {
  __int128 p = 1;
  for (int i = 0; i < k; ++i) p *= 10;
  return p;
}

// floor or ceil of d * 10^f (f <= 14, m < 10^15: no overflow).
__int128 scaled(const decimal& d, int f, bool up) {
  __int128 q, r;
  if (f >= d.e) {
    q = d.m * pow10(f - d.e);
    r = 0;
  } else if (d.e - f > 30) {
    q = 0;
    r = d.m;
  } else {
    const __int128 p = pow10(d.e - f);
    q = d.m / p;
    r = d.m % p;
  }
  if (!d.neg) return q + (up && r ? 1 : 0);
  return -(q + (!up && r ? 1 : 0));
}

std::string to_string128(__int128 v) {
  if (v == 0) return "0";
  std::string o;
  for (; v > 0; v /= 10) o += char('0' + int(v % 10));
  return std::string(o.rbegin(), o.rend());
}

constexpr int kNumberDigits = 15;  // digits of a bounded number (integer part and fraction)

// Non-negative numbers N / 10^f for integer N in [a, b] with exactly f fraction digits (f = 0: no
// point), at most kNumberDigits digits, the integer part without leading zeros.
std::string scaled_range(__int128 a, __int128 b, int f) {
  std::vector<std::string> alts;
  for (int len = f + 1; len <= kNumberDigits; ++len) {
    // N of len digits: [10^(len-1), 10^len - 1]; at len = f + 1 the integer digit may be 0
    const __int128 lo = std::max(a, len == f + 1 ? __int128(0) : pow10(len - 1));
    const __int128 hi = std::min(b, pow10(len) - 1);
    if (lo > hi) continue;
    std::string l = to_string128(lo), h = to_string128(hi);
    l.insert(0, std::size_t(len) - l.size(), '0');
    h.insert(0, std::size_t(len) - h.size(), '0');
    alts.push_back(digit_range(l, h, std::size_t(f)));
  }
  if (alts.empty()) return "";
  std::string o = "(";
  for (std::size_t i = 0; i < alts.size(); ++i) o += (i ? " | " : "") + alts[i];
  return o + ")";
}

class converter {
 public:
  explicit converter(const json& root) : root_(root) {}

  std::string run() {
    const std::string r = rule_for(root_, "#");
    std::string out = "root ::= " + r + "\n";
    out += R"(ws ::= "" | " " | "\n" [ \t]{0,20}
value ::= object | array | string | number | ("true" | "false" | "null")
object ::= "{" ws ( string ":" ws value ws ("," ws string ":" ws value ws)* )? "}"
array ::= "[" ws ( value ws ("," ws value ws)* )? "]"
string ::= "\"" char* "\""
char ::= [^"\\\x00-\x1F] | "\\" (["\\/bfnrt] | "u" ([0-9a-cA-CeEfF] [0-9a-fA-F]{3} | [dD] [0-7] [0-9a-fA-F]{2}))
number ::= integer ("." [0-9]+)? ([eE] [-+]? [0-9]+)?
integer ::= "-"? ("0" | [1-9] [0-9]*)
)";
    for (const auto& [name, body] : rules_) out += name + " ::= " + body + "\n";
    return out;
  }

 private:
  [[noreturn]] static void refuse(const std::string& where, const std::string& what) {
    throw error(errc::unsupported, "JSON Schema: " + where + ": " + what);
  }

  std::string new_rule(const std::string& hint, const std::string& body) {
    std::string base;
    for (char c : hint) base += std::isalnum(static_cast<unsigned char>(c)) ? char(std::tolower(c)) : '-';
    while (base.find("--") != std::string::npos) base.erase(base.find("--"), 1);
    if (base.empty() || !std::isalpha(static_cast<unsigned char>(base[0]))) base = "s" + base;
    if (base.size() > 40) base.resize(40);
    std::string name = base;
    for (int i = 2; rules_.count(name) || reserved(name); ++i) name = base + "-" + std::to_string(i);
    charge(hint, body.size());
    rules_[name] = body;
    return name;
  }
  // A budget on the grammar's text, checked as it grows: a small schema (thousands of bounded
  // numbers) must not make a server build hundreds of megabytes before refusing it.
  void charge(const std::string& where, std::size_t bytes) {
    size_ += bytes;
    if (size_ > kMaxGrammarBytes)
      refuse(where, "the schema expands to more than " + std::to_string(kMaxGrammarBytes >> 20) +
                        " MiB of grammar (a bounded number costs about 17 KB; numbers with the same bounds share one rule)");
  }
  static bool reserved(const std::string& n) {
    return n == "root" || n == "ws" || n == "value" || n == "object" || n == "array" || n == "string" ||
           n == "char" || n == "number" || n == "integer";
  }

  static int64_t count_of(const json& s, const char* key, const std::string& where, int64_t def) {
    if (!s.contains(key)) return def;
    const json& v = s[key];
    if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > kMaxCount)
      refuse(where, std::string("'") + key + "' must be an integer in [0, " + std::to_string(kMaxCount) + "]");
    return v.get<int64_t>();
  }

  // "X{min,max}" as GBNF; max < 0: unbounded.
  static std::string repeat(const std::string& x, int64_t min, int64_t max) {
    if (max < 0) return "(" + x + "){" + std::to_string(min) + ",}";
    return "(" + x + "){" + std::to_string(min) + "," + std::to_string(max) + "}";
  }

  // The rule (or inline expression) for the schema s at JSON pointer `where`.
  std::string rule_for(const json& s, const std::string& where) {
    if (++depth_ > 64) refuse(where, "nested more than 64 schemas deep");
    struct leave {
      int& d;
      ~leave() { --d; }
    } l{depth_};
    if (s.is_boolean()) {
      if (s.get<bool>()) return "value";
      refuse(where, "the schema false accepts nothing");
    }
    if (!s.is_object()) refuse(where, "a schema must be an object or a boolean");
    static const std::set<std::string> annotations = {"title", "description", "examples", "default", "$schema", "$id",
                                                      "$comment", "deprecated", "readOnly", "writeOnly", "$defs",
                                                      "definitions"};
    static const std::set<std::string> known = {"type", "enum", "const", "properties", "required",
                                                "additionalProperties", "items", "minItems", "maxItems", "minLength",
                                                "maxLength", "minimum", "maximum", "exclusiveMinimum",
                                                "exclusiveMaximum", "anyOf", "oneOf", "allOf", "$ref"};
    for (const auto& [k, v] : s.items())
      if (!annotations.count(k) && !known.count(k)) refuse(where, "'" + k + "' is not supported");
    if (s.contains("$ref")) {
      if (s.size() > 1)
        for (const auto& [k, v] : s.items())
          if (k != "$ref" && !annotations.count(k)) refuse(where, "'$ref' with '" + k + "' beside it is not supported");
      return ref(s["$ref"], where);
    }
    // const, enum and the combinators are the whole schema: another validation keyword beside
    // them would have to hold too, and is refused rather than dropped ("type" beside const or
    // enum is checked against the values)
    const auto alone = [&](const char* key, bool type_ok) {
      for (const auto& [k, v] : s.items())
        if (k != key && !annotations.count(k) && !(type_ok && k == "type"))
          refuse(where, "'" + k + "' beside '" + key + "' is not supported");
    };
    const auto of_type = [&](const json& v) {
      if (!s.contains("type")) return true;
      std::vector<std::string> ts;
      if (s["type"].is_string()) ts.push_back(s["type"].get<std::string>());
      else if (s["type"].is_array())
        for (const auto& t : s["type"])
          if (t.is_string()) ts.push_back(t.get<std::string>());
      for (const auto& t : ts)
        if ((t == "null" && v.is_null()) || (t == "boolean" && v.is_boolean()) || (t == "string" && v.is_string()) ||
            (t == "object" && v.is_object()) || (t == "array" && v.is_array()) || (t == "number" && v.is_number()) ||
            (t == "integer" && (v.is_number_integer() || (v.is_number_float() && std::trunc(v.get<double>()) == v.get<double>()))))
          return true;
      return false;
    };
    if (s.contains("const")) {
      alone("const", true);
      if (!of_type(s["const"])) refuse(where, "'const' is not of the schema's 'type'");
      return literal(s["const"].dump());
    }
    if (s.contains("enum")) {
      alone("enum", true);
      const json& e = s["enum"];
      if (!e.is_array() || e.empty()) refuse(where, "'enum' must be a non-empty array");
      std::string o;
      for (const auto& v : e)
        if (of_type(v)) o += (o.empty() ? "(" : " | ") + literal(v.dump());
      if (o.empty()) refuse(where, "no value of 'enum' is of the schema's 'type'");
      return o + ")";
    }
    for (const char* key : {"allOf", "anyOf", "oneOf"})
      if (s.contains(key)) alone(key, false);
    if (s.contains("allOf")) {
      const json& a = s["allOf"];
      if (!a.is_array() || a.size() != 1) refuse(where, "'allOf' of more than one schema is not supported");
      return rule_for(a[0], where + "/allOf/0");
    }
    for (const char* key : {"anyOf", "oneOf"}) {
      if (!s.contains(key)) continue;
      const json& a = s[key];
      if (!a.is_array() || a.empty()) refuse(where, std::string("'") + key + "' must be a non-empty array");
      if (std::string(key) == "oneOf") disjoint_types(a, where);
      std::string o = "(";
      for (std::size_t i = 0; i < a.size(); ++i)
        o += (i ? " | " : "") + rule_for(a[i], where + "/" + key + "/" + std::to_string(i));
      return new_rule(where + "-" + key, o + ")");
    }
    std::vector<std::string> types;
    if (!s.contains("type")) {
      // no type: the keywords say which one they constrain (values of other types would be valid
      // too, but are not generated); keywords of several types, or bounds, are refused
      std::set<std::string> implied;
      for (const auto& [k, v] : s.items()) {
        if (k == "properties" || k == "required" || k == "additionalProperties") implied.insert("object");
        else if (k == "items" || k == "minItems" || k == "maxItems") implied.insert("array");
        else if (k == "minLength" || k == "maxLength") implied.insert("string");
        else if (!annotations.count(k))
          refuse(where, "'" + k + "' without a 'type' is not supported (say \"type\": \"integer\" or \"number\")");
      }
      if (implied.empty()) return "value";
      if (implied.size() > 1) refuse(where, "keywords of several types without a 'type' are not supported");
      types.push_back(*implied.begin());
    } else if (s["type"].is_string()) {
      types.push_back(s["type"].get<std::string>());
    } else if (s["type"].is_array() && !s["type"].empty()) {
      for (const auto& t : s["type"]) {
        if (!t.is_string()) refuse(where, "'type' must hold strings");
        types.push_back(t.get<std::string>());
      }
    } else {
      refuse(where, "'type' must be a string or a non-empty array of strings");
    }
    std::string o = "(";
    for (std::size_t i = 0; i < types.size(); ++i) o += (i ? " | " : "") + typed(s, types[i], where);
    return new_rule(where + "-" + (types.size() == 1 ? types[0] : "types"), o + ")");
  }

  // oneOf is exact only when no value can match two alternatives: each must name its types, and
  // no type may appear twice (integer counts as number).
  void disjoint_types(const json& a, const std::string& where) {
    std::set<std::string> seen;
    for (const auto& alt : a) {
      if (!alt.is_object() || !alt.contains("type") || alt.contains("enum") || alt.contains("const"))
        refuse(where, "'oneOf' whose alternatives do not each name distinct types is not supported (use anyOf)");
      std::vector<std::string> ts;
      if (alt["type"].is_string()) ts.push_back(alt["type"].get<std::string>());
      else if (alt["type"].is_array())
        for (const auto& t : alt["type"])
          if (t.is_string()) ts.push_back(t.get<std::string>());
      for (std::string t : ts) {
        if (t == "integer") t = "number";
        if (!seen.insert(t).second)
          refuse(where, "'oneOf' with two alternatives of type " + t + " is not supported (use anyOf)");
      }
    }
  }

  std::string ref(const json& r, const std::string& where) {
    if (!r.is_string()) refuse(where, "'$ref' must be a string");
    const std::string p = r.get<std::string>();
    std::string name;
    const char* bases[] = {"#/$defs/", "#/definitions/"};
    const json* defs = nullptr;
    for (const char* b : bases) {
      const std::string base = b;
      if (p.compare(0, base.size(), base) == 0) {
        name = p.substr(base.size());
        const std::string key = base == "#/$defs/" ? "$defs" : "definitions";
        if (root_.is_object() && root_.contains(key)) defs = &root_[key];
      }
    }
    if (name.empty() || name.find('/') != std::string::npos || name.find('~') != std::string::npos)
      refuse(where, "'$ref' \"" + p + "\" is not supported (only #/$defs/NAME and #/definitions/NAME)");
    if (!defs || !defs->is_object() || !defs->contains(name)) refuse(where, "'$ref' \"" + p + "\" names no definition");
    auto it = refs_.find(p);
    if (it != refs_.end()) return it->second;
    const std::string rule = new_rule("def-" + name, "\"\"");  // reserved first: definitions may recurse
    refs_[p] = rule;
    rules_[rule] = rule_for((*defs)[name], p);
    charge(p, rules_[rule].size());
    return rule;
  }

  std::string typed(const json& s, const std::string& t, const std::string& where) {
    auto only = [&](std::initializer_list<const char*> keys) {
      for (const char* k : {"properties", "required", "additionalProperties", "items", "minItems", "maxItems",
                            "minLength", "maxLength", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"})
        if (s.contains(k) && std::find_if(keys.begin(), keys.end(), [&](const char* x) { return std::string(x) == k; }) ==
                                 keys.end())
          refuse(where, "'" + std::string(k) + "' does not apply to type " + t);
    };
    if (t == "null") {
      only({});
      return "\"null\"";
    }
    if (t == "boolean") {
      only({});
      return "(\"true\" | \"false\")";
    }
    if (t == "string") {
      only({"minLength", "maxLength"});
      const int64_t mn = count_of(s, "minLength", where, 0), mx = count_of(s, "maxLength", where, -1);
      if (mx >= 0 && mx < mn) refuse(where, "'maxLength' is below 'minLength'");
      if (mn == 0 && mx < 0) return "string";
      return "\"\\\"\" " + repeat("char", mn, mx) + " \"\\\"\"";
    }
    if (t == "number") {
      only({"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"});
      return number(s, where);
    }
    if (t == "integer") {
      only({"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"});
      return integer(s, where);
    }
    if (t == "array") {
      only({"items", "minItems", "maxItems"});
      const int64_t mn = count_of(s, "minItems", where, 0), mx = count_of(s, "maxItems", where, -1);
      if (mx >= 0 && mx < mn) refuse(where, "'maxItems' is below 'minItems'");
      std::string item = "value";
      if (s.contains("items")) {
        if (s["items"].is_array()) refuse(where, "'items' as an array (tuple) is not supported");
        item = rule_for(s["items"], where + "/items");
      }
      if (mx == 0) return "\"[\" ws \"]\"";
      const std::string more = repeat("\",\" ws " + item + " ws", std::max<int64_t>(0, mn - 1), mx < 0 ? -1 : mx - 1);
      const std::string some = item + " ws " + more;
      return "\"[\" ws " + (mn == 0 ? "(" + some + ")?" : some) + " \"]\"";
    }
    if (t == "object") {
      only({"properties", "required", "additionalProperties"});
      return object(s, where);
    }
    refuse(where, "unknown type '" + t + "'");
  }

  static int64_t bound(const json& s, const char* key, const std::string& where, bool up) {
    const json& v = s[key];
    if (!v.is_number()) refuse(where, "'" + std::string(key) + "' must be a number");
    const double d = v.get<double>();
    if (!(std::fabs(d) <= double(kMaxBound))) refuse(where, "'" + std::string(key) + "' beyond +-1e18 is not supported");
    if (v.is_number_integer()) return v.get<int64_t>();
    return int64_t(up ? std::ceil(d) : std::floor(d));
  }

  std::string integer(const json& s, const std::string& where) {
    bool has_lo = false, has_hi = false;
    int64_t lo = 0, hi = 0;
    auto tighten_lo = [&](int64_t v) { lo = has_lo ? std::max(lo, v) : v, has_lo = true; };
    auto tighten_hi = [&](int64_t v) { hi = has_hi ? std::min(hi, v) : v, has_hi = true; };
    if (s.contains("minimum")) tighten_lo(bound(s, "minimum", where, true));
    // the smallest integer above x is floor(x) + 1, the largest below it ceil(x) - 1
    if (s.contains("exclusiveMinimum")) tighten_lo(bound(s, "exclusiveMinimum", where, false) + 1);
    if (s.contains("maximum")) tighten_hi(bound(s, "maximum", where, false));
    if (s.contains("exclusiveMaximum")) tighten_hi(bound(s, "exclusiveMaximum", where, true) - 1);
    if (!has_lo && !has_hi) return "integer";
    if (has_lo && has_hi && hi < lo) refuse(where, "no integer lies between the bounds");
    std::vector<std::string> alts;
    // negative values: "-" and a magnitude in [max(1, -hi), -lo]
    if (!has_lo || lo < 0) {
      const int64_t mag_lo = has_hi && hi < 0 ? -hi : 1;
      const int64_t mag_hi = has_lo ? -lo : -1;
      alts.push_back("\"-\" " + uint_range(mag_lo, mag_hi));
    }
    if (!has_hi || hi >= 0) alts.push_back(uint_range(has_lo ? std::max<int64_t>(0, lo) : 0, has_hi ? hi : -1));
    std::string o = "(";
    for (std::size_t i = 0; i < alts.size(); ++i) o += (i ? " | " : "") + alts[i];
    return o + ")";
  }

  // A number bound as a decimal: its shortest round-trip digits, at most kNumberDigits significant
  // ones and below 10^kNumberDigits in magnitude.
  static decimal decimal_bound(const json& s, const char* key, const std::string& where) {
    const json& v = s[key];
    if (!v.is_number()) refuse(where, "'" + std::string(key) + "' must be a number");
    decimal d;
    std::string digits;
    int exp10 = 0;  // value = digits * 10^exp10
    if (v.is_number_integer()) {
      const std::string t = v.dump();
      d.neg = t[0] == '-';
      digits = t.substr(d.neg ? 1 : 0);
    } else {
      const double x = v.get<double>();
      if (!std::isfinite(x)) refuse(where, "'" + std::string(key) + "' is not finite");
      char buf[64];
      const auto r = std::to_chars(buf, buf + sizeof buf, x, std::chars_format::scientific);
      const std::string t(buf, r.ptr);  // e.g. -1.25e-03, the shortest digits that round-trip
      d.neg = t[0] == '-';
      const std::size_t epos = t.find('e');
      for (std::size_t i = d.neg ? 1 : 0; i < epos; ++i)
        if (t[i] != '.') digits += t[i];
      exp10 = std::stoi(t.substr(epos + 1)) - int(digits.size()) + 1;
    }
    while (digits.size() > 1 && digits[0] == '0') digits.erase(0, 1);
    while (digits.size() > 1 && digits.back() == '0') digits.pop_back(), ++exp10;
    if (digits == "0") return decimal{};
    const int magnitude = int(digits.size()) + exp10;  // digits before the point
    if (int(digits.size()) > kNumberDigits || magnitude > kNumberDigits)
      refuse(where, "'" + std::string(key) + "' " + v.dump() + " has more than " + std::to_string(kNumberDigits) +
                        " significant digits or is not below 1e15 in magnitude");
    if (exp10 < -20)
      refuse(where, "'" + std::string(key) + "' " + v.dump() + " has more than 20 decimal places");
    for (char c : digits) d.m = d.m * 10 + (c - '0');
    if (exp10 >= 0) d.m *= pow10(exp10);
    d.e = exp10 < 0 ? -exp10 : 0;
    return d;
  }

  // A number between bounds, exactly: written without an exponent, with at most kNumberDigits
  // digits, so that every candidate and every bound is a decimal of at most 15 significant digits
  // and comparing them as decimals (here) and as doubles (a validator) agree. For each count f of
  // fraction digits the values are N / 10^f for an integer range of N, a digit range with a point.
  std::string number(const json& s, const std::string& where) {
    struct side {
      bool has = false, strict = false;
      decimal d;
    } lo, hi;
    auto take = [&](side& b, const char* key, bool strict, bool is_lo) {
      if (!s.contains(key)) return;
      const decimal d = decimal_bound(s, key, where);
      // the tighter bound wins (compared at a common scale: e <= 30 here)
      if (b.has) {
        const int e = std::max(std::max(b.d.e, d.e), 0);
        const __int128 old_v = scaled(b.d, e, false), new_v = scaled(d, e, false);
        const bool tighter = is_lo ? (new_v > old_v || (new_v == old_v && strict)) : (new_v < old_v || (new_v == old_v && strict));
        if (!tighter) return;
      }
      b = side{true, strict, d};
    };
    take(lo, "minimum", false, true);
    take(lo, "exclusiveMinimum", true, true);
    take(hi, "maximum", false, false);
    take(hi, "exclusiveMaximum", true, false);
    if (!lo.has && !hi.has) return "number";
    if (lo.has && hi.has) {
      const int e = std::max(lo.d.e, hi.d.e);
      const __int128 l = scaled(lo.d, e, false), h = scaled(hi.d, e, false);
      if (l > h || (l == h && (lo.strict || hi.strict))) refuse(where, "no number lies between the bounds");
    }
    std::string key;  // the same bounds share one rule
    for (const side* b : {&lo, &hi})
      key += b->has ? std::string(b->d.neg ? "-" : "+") + to_string128(b->d.m) + "e-" + std::to_string(b->d.e) +
                          (b->strict ? "x" : "i") + ";"
                    : std::string("none;");
    if (const auto it = numbers_.find(key); it != numbers_.end()) return it->second;
    const __int128 cap = pow10(kNumberDigits) - 1;  // the largest N of kNumberDigits digits
    std::vector<std::string> alts;
    for (int f = 0; f < kNumberDigits; ++f) {
      // x = N / 10^f, lo <= x <= hi (strict where asked): N in [nlo, nhi]
      const __int128 nlo = !lo.has ? -cap : lo.strict ? scaled(lo.d, f, false) + 1 : scaled(lo.d, f, true);
      const __int128 nhi = !hi.has ? cap : hi.strict ? scaled(hi.d, f, true) - 1 : scaled(hi.d, f, false);
      if (nlo > nhi) continue;
      // x < 0: "-" and |N| in [max(1, -nhi), -nlo]; x >= 0: N in [max(0, nlo), nhi]
      if (nlo < 0) {
        const std::string r = scaled_range(std::max<__int128>(1, -nhi), std::min(cap, -nlo), f);
        if (!r.empty()) alts.push_back("\"-\" " + r);
      }
      if (nhi >= 0) {
        const std::string r = scaled_range(std::max<__int128>(0, nlo), std::min(cap, nhi), f);
        if (!r.empty()) alts.push_back(r);
      }
    }
    if (alts.empty()) refuse(where, "no number of at most 15 digits lies between the bounds");
    std::string o = "(";
    for (std::size_t i = 0; i < alts.size(); ++i) o += (i ? " | " : "") + alts[i];
    return numbers_[key] = new_rule(where + "-number", o + ")");
  }

  std::string object(const json& s, const std::string& where) {
    const json empty = json::object();
    const json& props = s.contains("properties") ? s["properties"] : empty;
    if (!props.is_object()) refuse(where, "'properties' must be an object");
    std::set<std::string> required;
    if (s.contains("required")) {
      if (!s["required"].is_array()) refuse(where, "'required' must be an array");
      for (const auto& r : s["required"]) {
        if (!r.is_string()) refuse(where, "'required' must hold strings");
        if (!props.contains(r.get<std::string>()))
          refuse(where, "required property '" + r.get<std::string>() + "' is not in 'properties'");
        required.insert(r.get<std::string>());
      }
    }
    const json* extra = s.contains("additionalProperties") ? &s["additionalProperties"] : nullptr;
    if (props.empty()) {
      if (extra && extra->is_boolean() && !extra->get<bool>()) return "\"{\" ws \"}\"";
      if (!extra || extra->is_boolean()) return "object";
      const std::string v = rule_for(*extra, where + "/additionalProperties");
      const std::string kv = "string \":\" ws " + v + " ws";
      return "\"{\" ws (" + kv + " (\",\" ws " + kv + ")*)? \"}\"";
    }
    if (extra && !extra->is_boolean())
      refuse(where, "'additionalProperties' as a schema beside 'properties' is not supported");
    // the properties in order: A_i (none written yet) and B_i (one written: a comma first)
    std::vector<std::pair<std::string, bool>> ps;  // (key-value expression, required)
    for (const auto& [k, v] : props.items())
      ps.push_back({literal(json(k).dump()) + " ws \":\" ws " + rule_for(v, where + "/properties/" + k) + " ws",
                    required.count(k) > 0});
    const std::string id = new_rule(where + "-obj", "\"\"");
    std::string a_next = "\"\"", b_next = "\"\"";
    for (std::size_t i = ps.size(); i-- > 0;) {
      const auto& [kv, req] = ps[i];
      const std::string b = new_rule(id + "-b" + std::to_string(i),
                                     "\",\" ws " + kv + " " + b_next + (req ? "" : " | " + b_next));
      const std::string a = new_rule(id + "-a" + std::to_string(i), kv + " " + b_next + (req ? "" : " | " + a_next));
      a_next = a;
      b_next = b;
    }
    rules_[id] = "\"{\" ws " + a_next + " \"}\"";
    charge(where, rules_[id].size());
    return id;
  }

  const json& root_;
  std::map<std::string, std::string> rules_;
  std::map<std::string, std::string> refs_;
  std::map<std::string, std::string> numbers_;  // bounds -> the rule of numbers between them
  std::size_t size_ = 0;
  int depth_ = 0;
};

}  // namespace

namespace {

// A JSON number's value as (negative, significant digits without leading or trailing zeros, power
// of ten of the last one); zero is ("", 0).
struct decimal_text {
  bool neg = false;
  std::string digits;
  long exp10 = 0;
  bool operator==(const decimal_text&) const = default;
};

decimal_text decimal_of(std::string_view t) {
  decimal_text d;
  std::size_t i = 0;
  if (i < t.size() && t[i] == '-') d.neg = true, ++i;
  long frac = 0;
  bool in_frac = false;
  for (; i < t.size() && t[i] != 'e' && t[i] != 'E'; ++i) {
    if (t[i] == '.') {
      in_frac = true;
      continue;
    }
    d.digits += t[i];
    if (in_frac) ++frac;
  }
  long e = 0;
  if (i < t.size()) {
    ++i;
    bool eneg = false;
    if (i < t.size() && (t[i] == '+' || t[i] == '-')) eneg = t[i] == '-', ++i;
    for (; i < t.size(); ++i) e = std::min<long>(e * 10 + (t[i] - '0'), 100000000);  // clamped: only equality matters
    if (eneg) e = -e;
  }
  d.exp10 = e - frac;
  const std::size_t first = d.digits.find_first_not_of('0');
  if (first == std::string::npos) return decimal_text{};
  d.digits.erase(0, first);
  while (d.digits.back() == '0') d.digits.pop_back(), ++d.exp10;
  return d;
}

// Refuses a bound keyword whose number, as written, is not the decimal its double stands for
// (0.30000000000000001 parses as the double of 0.3, 1e-400 as 0): the grammar compares the
// double's shortest digits, so such a bound would be rounded silently.
struct bound_text_check : nlohmann::json_sax<json> {
  std::string pending;  // the key whose value comes next ("" inside arrays and after a value)
  bool null() override { return next(); }
  bool boolean(bool) override { return next(); }
  bool number_integer(number_integer_t) override { return next(); }
  bool number_unsigned(number_unsigned_t) override { return next(); }
  bool number_float(number_float_t v, const string_t& s) override {
    if (pending == "minimum" || pending == "maximum" || pending == "exclusiveMinimum" || pending == "exclusiveMaximum") {
      char buf[64];
      const auto r = std::to_chars(buf, buf + sizeof buf, double(v));
      if (!std::isfinite(double(v)) || !(decimal_of(s) == decimal_of(std::string_view(buf, std::size_t(r.ptr - buf)))))
        throw error(errc::unsupported, "JSON Schema: '" + pending + "' " + s +
                                           " has more digits than a double holds (it would be rounded to " +
                                           std::string(buf, r.ptr) + ")");
    }
    return next();
  }
  bool string(string_t&) override { return next(); }
  bool binary(binary_t&) override { return next(); }
  bool start_object(std::size_t) override { return next(); }
  bool key(string_t& k) override {
    pending = k;
    return true;
  }
  bool end_object() override { return next(); }
  bool start_array(std::size_t) override { return next(); }
  bool end_array() override { return next(); }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception&) override { return false; }

 private:
  bool next() {
    pending.clear();
    return true;
  }
};

}  // namespace

std::string grammar::gbnf_from_json_schema(std::string_view schema) {
  if (schema.find('\0') != std::string_view::npos)
    throw error(errc::invalid_argument, "JSON Schema: not valid JSON (a NUL byte)");
  const json parsed = json::parse(schema, nullptr, false);
  if (parsed.is_discarded()) throw error(errc::invalid_argument, "JSON Schema: not valid JSON");
  bound_text_check check;
  json::sax_parse(schema, &check);
  converter c(parsed);
  return c.run();
}

std::shared_ptr<const grammar> grammar::from_json_schema(std::string_view schema) {
  const std::string gbnf = gbnf_from_json_schema(schema);
  try {
    return from_gbnf(gbnf);
  } catch (const error& e) {  // a limit of the grammar it expands to: the schema is what is refused
    if (e.code() != errc::invalid_argument) throw;
    throw error(errc::unsupported, std::string("JSON Schema: the grammar it expands to is refused: ") + e.what());
  }
}

}  // namespace qllm
