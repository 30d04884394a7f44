// Grammars: the GBNF parser and its errors, the matcher over text, and the token mask's exactness
// against a brute-force oracle (every string of the language up to a length, listed by an
// independent recogniser written in this file: std::regex or a hand-written check).
#include <doctest/doctest.h>

// GCC 12's libstdc++ <regex> trips -Wmaybe-uninitialized inside its own NFA code when built with
// -O2 and the sanitizers (a known false positive in std::function's move); only this file uses it.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include <algorithm>
#include <chrono>
#include <functional>
#include <map>
#include <random>
#include <regex>
#include <set>
#include <string>
#include <vector>

#include <condition_variable>
#include <mutex>

#include <nlohmann/json.hpp>

#include "qllm/engine.hpp"
#include "qllm/error.hpp"
#include "qllm/grammar.hpp"
#include "qllm/session.hpp"
#include "qllm/tokenizer.hpp"

using namespace qllm;

namespace {

std::string error_of(std::string_view gbnf) {
  try {
    (void)grammar::from_gbnf(gbnf);
  } catch (const error& e) {
    CHECK(e.code() == errc::invalid_argument);
    return e.what();
  }
  return "";
}

// A small vocabulary: single characters, pieces spanning several, one with a space, every byte as
// a byte token, and the control tokens.
std::shared_ptr<const tokenizer> small_vocab() {
  vocabulary v;
  auto add = [&](std::string p, token_type t) {
    v.pieces.push_back(std::move(p));
    v.types.push_back(t);
    v.scores.push_back(-float(v.pieces.size()));
  };
  add("<unk>", token_type::unknown);
  add("<s>", token_type::control);
  add("</s>", token_type::control);
  for (const char* p : {"a", "b", "c", "d", "x", "(", ")", "\"", "\\", "0", "1", "-", "\xC3\xA9" /* é */,
                        "\xE2\x82\xAC" /* € */, "\xF0\x9F\x98\x80" /* 😀 */, "ab", "bc", "(x", "x)", "))", "\"a",
                        "\xC3\xA9\"", "a\xC3\xA9", "--", "12", "01-", "\xE2\x96\x81" "a" /* ▁a: " a" */, "cd", "\"\""})
    add(p, token_type::normal);
  for (int b = 0; b < 256; ++b) {
    char buf[8];
    std::snprintf(buf, sizeof buf, "<0x%02X>", b);
    add(buf, token_type::byte);
  }
  return tokenizer::from_vocabulary(std::move(v));
}

// Every string over `alphabet` (code points as UTF-8) of at most n characters that `in_language`
// accepts, sorted.
std::vector<std::string> language(const std::vector<std::string>& alphabet, int n,
                                  const std::function<bool(const std::string&)>& in_language) {
  std::vector<std::string> all, level{""};
  for (int len = 0; len <= n; ++len) {
    for (const auto& s : level)
      if (in_language(s)) all.push_back(s);
    if (len == n) break;
    std::vector<std::string> next;
    for (const auto& s : level)
      for (const auto& c : alphabet) next.push_back(s + c);
    level.swap(next);
  }
  std::sort(all.begin(), all.end());
  return all;
}

bool some_starts_with(const std::vector<std::string>& lang, const std::string& prefix) {
  auto it = std::lower_bound(lang.begin(), lang.end(), prefix);
  return it != lang.end() && it->compare(0, prefix.size(), prefix) == 0;
}

struct oracle_case {
  const char* name;
  const char* gbnf;
  std::vector<std::string> alphabet;
  int max_len;         // strings of the language listed up to this many characters
  // walks stop once the text has this many bytes; the longest text checked plus a token plus the
  // shortest completion must fit max_len characters
  int max_prefix;
  std::function<bool(const std::string&)> in_language;
};

std::function<bool(const std::string&)> regex_of(const char* re) {
  auto r = std::make_shared<std::regex>(re, std::regex::ECMAScript);
  return [r](const std::string& s) { return std::regex_match(s, *r); };
}

// balanced parentheses around x's: item* with item ::= "(" item* ")" | "x"
bool balanced(const std::string& s) {
  int depth = 0;
  for (char c : s) {
    if (c == '(') ++depth;
    else if (c == ')') {
      if (--depth < 0) return false;
    } else if (c != 'x') {
      return false;
    }
  }
  return depth == 0;
}

}  // namespace

TEST_CASE("GBNF: what parses, and errors that say where and what") {
  CHECK(grammar::from_gbnf("root ::= \"a\"")->n_rules() == 1);
  // comments, rules over several lines, alternatives on the next line, escapes
  const auto g = grammar::from_gbnf(R"(# a comment
root ::= greeting ( " " name )?   # trailing comment
greeting ::= "hi"
  | "hello"
name ::= [A-Z] [a-z\u00e9]{1,10} "\x21"? "\n"
)");
  CHECK(g->n_rules() >= 3);
  CHECK(error_of("root ::= \"a").find("not closed") != std::string::npos);
  CHECK(error_of("root ::= [a-").find("line 1") != std::string::npos);
  CHECK(error_of("root ::= \"\\q\"").find("unknown escape \\q") != std::string::npos);
  CHECK(error_of("root ::= x").find("rule 'x' is used but never defined") != std::string::npos);
  CHECK(error_of("x ::= \"a\"").find("no rule named 'root'") != std::string::npos);
  CHECK(error_of("root ::= \"a\"\nroot ::= \"b\"").find("line 2, column 1: rule 'root' is defined twice") !=
        std::string::npos);
  CHECK(error_of("root ::= root \"a\" | \"b\"").find("left-recursive") != std::string::npos);
  CHECK(error_of("root ::= a | \"y\"\na ::= b? root \"x\"\nb ::= \"b\"").find("left-recursive") != std::string::npos);
  CHECK(error_of("root ::= \"a\" root").find("derives no finite string") != std::string::npos);
  CHECK(error_of("root ::= \"a\"{3,2}").find("maximum is below its minimum") != std::string::npos);
  CHECK(error_of("root ::= \"a\"{99999}").find("repetition count above") != std::string::npos);
  CHECK(error_of("root ::= [z-a]").find("ends before it starts") != std::string::npos);
  CHECK(error_of("root ::= (\"a\"").find("expected )") != std::string::npos);
  CHECK(error_of("root ::= \"\\uD800\"").find("not a Unicode scalar value") != std::string::npos);
  CHECK(error_of("root ::= \"\xFF\"").find("not valid UTF-8") != std::string::npos);
  CHECK(error_of("root ::= " + std::string(300, '(')).find("nested too deeply") != std::string::npos);
  CHECK(error_of("root ::= [a]{5000}{5000}").find("too large") != std::string::npos);
  {  // many small alternatives that expand to large ones fail at the limit, before all are in memory
    std::string many = "root ::= ";
    for (int i = 0; i < 2000; ++i) many.append(i ? " | " : "").append("\"aaaaaaaaaa\"{10000}");
    CHECK(error_of(many).find("too large") != std::string::npos);
  }
  // a chain of 200,000 rules listed against their order of dependence compiles in linear time (a
  // quadratic fixed point would not end within the suite's timeout); the text must go all the way
  {
    std::string chain = "root ::= r0\n";
    const int n = 200000;
    for (int i = 0; i < n; ++i) {
      chain.append("r").append(std::to_string(i)).append(" ::= \"a\" ");
      if (i + 1 < n) chain.append("r").append(std::to_string(i + 1)).append("\n");
      else chain.append("\"!\"\n");
    }
    const auto g = grammar::from_gbnf(chain);
    CHECK(g->n_rules() == std::size_t(n) + 1);
    const auto tok = small_vocab();  // the matcher keeps a reference: it must outlive it
    grammar_matcher m(g, *tok);
    CHECK(m.accept_text(std::string(std::size_t(n), 'a')));
    CHECK_FALSE(m.can_end());
    CHECK(m.accept_text("!"));
    CHECK(m.can_end());
  }
  // an unproductive alternative is dropped, not an error, when another remains
  const auto dropped = grammar::from_gbnf("root ::= \"a\" | loop\nloop ::= \"b\" loop");
  const auto tok = small_vocab();
  grammar_matcher m(dropped, *tok);
  CHECK(m.accept_text("a"));
  CHECK(m.can_end());
  m.reset();
  CHECK_FALSE(m.accept_text("b"));
}

TEST_CASE("matcher: text in and out of the language, UTF-8 split anywhere, EOS only at the end") {
  const auto tok = small_vocab();
  const auto g = grammar::from_gbnf(R"(root ::= "\"" ( [^"\\] | "\\" ["\\n] )* "\"")");
  grammar_matcher m(g, *tok);
  CHECK_FALSE(m.can_end());
  CHECK(m.accept_text("\"a\xC3"));  // half of é
  CHECK_FALSE(m.can_end());
  CHECK(m.accept_text("\xA9\\n\xF0\x9F"));
  CHECK_FALSE(m.accept_text("\xF0"));  // not a continuation byte
  CHECK(m.accept_text("\x98\x80\""));
  CHECK(m.can_end());
  CHECK(m.must_end());
  CHECK_FALSE(m.accept_text("a"));
  m.reset();
  CHECK_FALSE(m.accept_text("\"\xED\xA0\x80"));  // a surrogate
  CHECK_FALSE(m.accept_text("\"\xC0\x80"));      // overlong
  CHECK_FALSE(m.accept_text("\"\\q"));
  // tokens
  m.reset();
  std::vector<bool> ok;
  m.allowed(ok);
  const int32_t quote_a = [&] {
    for (int32_t i = 0; i < tok->n_vocab(); ++i)
      if (tok->token_text(i) == "\"a") return i;
    return -1;
  }();
  REQUIRE(quote_a >= 0);
  CHECK(ok[std::size_t(quote_a)]);
  CHECK_FALSE(ok[std::size_t(tok->eos())]);
  CHECK_FALSE(ok[std::size_t(tok->bos())]);
  m.accept(quote_a);
  CHECK_THROWS_AS(m.accept(tok->eos()), error);
  CHECK_THROWS_AS(m.accept(tok->bos()), error);
  CHECK_THROWS_AS(m.accept(-1), error);
  std::vector<float> logits(std::size_t(tok->n_vocab()), 0.0f);
  CHECK_THROWS_AS(m.mask(std::span<float>(logits.data(), 3)), error);
  m.mask(logits);
  CHECK(logits[std::size_t(tok->eos())] == -INFINITY);
  CHECK(logits[std::size_t(quote_a)] == -INFINITY);  // "a"a: nothing after the closing quote
  CHECK(logits[std::size_t(tok->token_text(3) == "a" ? 3 : -1)] == 0.0f);  // "aa
  CHECK(m.accept_text("\""));
  m.allowed(ok);
  CHECK(ok[std::size_t(tok->eos())]);
  CHECK(std::count(ok.begin(), ok.end(), true) == 1);  // only EOS
  m.accept(tok->eos());
  m.allowed(ok);
  CHECK(std::count(ok.begin(), ok.end(), true) == 0);
}

TEST_CASE("the mask is exact: a token is allowed iff some string of the language starts with the text and it") {
  const auto tok = small_vocab();
  const std::vector<oracle_case> cases = {
      {"classes and bounded repetition", "root ::= \"a\" [bc]* (\"d\" | \"\\u00e9\"){1,2}",
       {"a", "b", "c", "d", "\xC3\xA9"}, 7, 2, regex_of("a[bc]*(d|\xC3\xA9){1,2}")},
      {"nesting", "root ::= item*\nitem ::= \"(\" item* \")\" | \"x\"", {"(", ")", "x"}, 12, 3, balanced},
      // every character the grammar admits is in the alphabet, so the listed language is exact
      {"a string with multi-byte characters and escapes",
       R"g(root ::= "\"" ( [a\u00e9\u20ac\U0001F600] | "\\" ["\\] )* "\"")g",
       {"\"", "\\", "a", "\xC3\xA9", "\xE2\x82\xAC", "\xF0\x9F\x98\x80"}, 6, 2,
       regex_of(R"re("(a|\xC3\xA9|\xE2\x82\xAC|\xF0\x9F\x98\x80|\\["\\])*")re")},
      {"nullable rules", "root ::= (\"a\" b?)+\nb ::= \"b\"? \"c\"?", {"a", "b", "c"}, 8, 4, regex_of("(ab?c?)+")},
      {"counts", "root ::= [01]{2,4} (\"-\" [01]{1,2})?", {"0", "1", "-"}, 9, 3, regex_of("[01]{2,4}(-[01]{1,2})?")},
  };
  std::mt19937 rng(7);
  for (const auto& c : cases) {
    CAPTURE(c.name);
    const auto lang = language(c.alphabet, c.max_len, c.in_language);
    REQUIRE(!lang.empty());
    grammar_matcher m(grammar::from_gbnf(c.gbnf), *tok);
    int checked = 0;
    for (int walk = 0; walk < 40; ++walk) {
      m.reset();
      std::string text;
      for (;;) {
        std::vector<bool> ok;
        m.allowed(ok);
        std::vector<int32_t> allowed_tokens;
        for (int32_t t = 0; t < tok->n_vocab(); ++t) {
          const bool expect = t == tok->eos() ? std::binary_search(lang.begin(), lang.end(), text)
                              : tok->vocab().types[std::size_t(t)] == token_type::control ||
                                      tok->vocab().types[std::size_t(t)] == token_type::unknown
                                  ? false
                                  : some_starts_with(lang, text + tok->token_text(t));
          CAPTURE(text);
          CAPTURE(t);
          CHECK(bool(ok[std::size_t(t)]) == expect);
          ++checked;
          if (expect && t != tok->eos()) allowed_tokens.push_back(t);
        }
        CHECK(m.can_end() == std::binary_search(lang.begin(), lang.end(), text));
        if (allowed_tokens.empty() || int(text.size()) >= c.max_prefix) break;
        const int32_t t = allowed_tokens[rng() % allowed_tokens.size()];
        m.accept(t);
        text += tok->token_text(t);
      }
    }
    CHECK(checked > 1000);
  }
}

TEST_CASE("json_object: accepts JSON objects and nothing else") {
  const auto tok = small_vocab();
  grammar_matcher m(grammar::json_object(), *tok);
  for (const char* ok : {"{}", "{\"a\": 1}", "{\"a\":[1,-2.5e+3,true,null,{\"b\":\"\\u00e9\\n\"}]}",
                         "{\n  \"k\": \"v\"\n}", "{\"\xF0\x9F\x98\x80\": 0}"}) {
    CAPTURE(ok);
    m.reset();
    CHECK(m.accept_text(ok));
    CHECK(m.can_end());
  }
  for (const char* bad : {"[]", "{\"a\" 1}", "{\"a\":01}", "{\"a\":tru}", "{'a':1}", "{\"a\":1,}", "{\"a\":\"\x01\"}",
                          "{\"a\":\"\\x\"}", " {}", "{}}"}) {
    CAPTURE(bad);
    m.reset();
    const bool prefix_ok = m.accept_text(bad);
    CHECK_FALSE((prefix_ok && m.can_end()));
  }
  CHECK(grammar::json_object_gbnf().find("root") != std::string_view::npos);
}

namespace {

std::shared_ptr<const model> shipped() {
  static auto m = model::load(std::string(QLLM_MODELS_DIR) + "/tiny-kjv.q8_0.gguf");
  return m;
}

// A generation's text is in the grammar's language when it ended at EOS, a prefix of a string of
// it otherwise.
void check_follows(const std::shared_ptr<const grammar>& g, const generation_result& r) {
  grammar_matcher m(g, *shipped()->get_tokenizer());
  CAPTURE(r.text);
  CHECK(m.accept_text(r.text));
  if (r.finish == finish_reason::eos) CHECK(m.can_end());
}

}  // namespace

TEST_CASE("generation with json_object: sampled answers parse as JSON objects (nlohmann as the judge)") {
  const auto g = grammar::json_object();
  session_params sp;
  sp.ctx.n_ctx = 512;
  sp.sampling.temperature = 1.0f;
  session s(shipped(), sp);
  generate_params gp;
  gp.max_tokens = 160;
  gp.constraint = g;
  int complete = 0;
  const int seeds = QLLM_TEST_QUICK ? 4 : 24;
  for (int seed = 1; seed <= seeds; ++seed) {
    CAPTURE(seed);
    sp.sampling.seed = uint64_t(seed);
    s.set_sampling(sp.sampling);
    s.reset();
    const auto r = s.generate("And God said,", gp);
    check_follows(g, r);
    if (r.finish == finish_reason::eos) {
      ++complete;
      const auto j = nlohmann::json::parse(r.text, nullptr, false);
      CHECK_FALSE(j.is_discarded());
      CHECK(j.is_object());
    } else {
      CHECK(r.finish == finish_reason::max_tokens);
    }
  }
  MESSAGE(complete << " of " << seeds << " answers complete within " << gp.max_tokens << " tokens");
  CHECK(complete > 0);
}

TEST_CASE("generation with a grammar: speculation and the batching engine give the same tokens") {
  const auto g = grammar::from_gbnf(R"(root ::= "The " word (", " word){2,5} "." 
word ::= [a-z]{2,8})");
  session_params sp;
  sp.ctx.n_ctx = 256;
  sp.sampling.temperature = 0;
  generate_params gp;
  gp.max_tokens = 60;
  gp.constraint = g;
  const std::vector<std::string> prompts = {"In the beginning", "And the LORD said unto Moses,", "Blessed are"};
  std::vector<generation_result> plain;
  for (const auto& p : prompts) {
    session s(shipped(), sp);
    plain.push_back(s.generate(p, gp));
    check_follows(g, plain.back());
    CHECK(plain.back().finish == finish_reason::eos);
    CHECK(plain.back().text.substr(0, 4) == "The ");
  }
  // prompt lookup and a draft model (the model itself), greedy: the same tokens
  for (const speculation spec : {speculation::lookup, speculation::draft_model}) {
    for (std::size_t i = 0; i < prompts.size(); ++i) {
      session s(shipped(), sp);
      if (spec == speculation::draft_model) s.set_draft(shipped());
      generate_params sg = gp;
      sg.draft_tokens = 4;
      sg.spec = spec;
      const auto r = s.generate(prompts[i], sg);
      CHECK(r.tokens == plain[i].tokens);
      CHECK(r.finish == plain[i].finish);
      if (spec == speculation::draft_model) CHECK(r.spec.accepted > 0);
    }
  }
  // the engine, all three at once and with speculation by lookup
  engine_params ep;
  ep.ctx.n_ctx = 256;
  ep.n_slots = 3;
  engine e(shipped(), ep);
  std::mutex mu;
  std::condition_variable cv;
  std::vector<engine_result> out(prompts.size());
  std::size_t done = 0;
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    engine_request rq;
    rq.prompt = shipped()->get_tokenizer()->encode(prompts[i], true);
    rq.sampling = sp.sampling;
    rq.gen = gp;
    rq.gen.draft_tokens = i == 1 ? 4 : 0;
    rq.on_done = [&, i](const engine_result& r) {
      std::lock_guard<std::mutex> lk(mu);
      out[i] = r;
      ++done;
      cv.notify_all();
    };
    e.submit(std::move(rq));
  }
  std::unique_lock<std::mutex> lk(mu);
  cv.wait(lk, [&] { return done == prompts.size(); });
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    CAPTURE(i);
    CHECK(out[i].error.empty());
    CHECK(out[i].gen.tokens == plain[i].tokens);
    CHECK(out[i].gen.text == plain[i].text);
  }
}

TEST_CASE("generation with a grammar: sampling keeps the model's distribution over the allowed tokens") {
  // the first token under a grammar of two words is drawn from the model's probabilities
  // renormalised over the tokens the grammar allows (" light" can start with " ", " l", " light",
  // ...): chi-square over those tokens
  const auto* tk = shipped()->get_tokenizer();
  const std::vector<int32_t> prompt = tk->encode("And God said, Let there be", true);
  context_params cp;
  cp.n_ctx = 64;
  context ctx(shipped(), cp);
  const auto row = ctx.eval(prompt);
  const std::vector<float> logits(row.begin(), row.end());
  const auto g = grammar::from_gbnf(R"(root ::= " light" | " water" | " life")");
  grammar_matcher m(g, *tk);
  std::vector<bool> ok;
  m.allowed(ok);
  std::vector<int32_t> allowed;
  double z = 0;
  for (int32_t t = 0; t < tk->n_vocab(); ++t)
    if (ok[std::size_t(t)]) {
      allowed.push_back(t);
      z += std::exp(double(logits[std::size_t(t)]));
    }
  REQUIRE(allowed.size() >= 3);
  session_params sp;
  sp.ctx.n_ctx = 64;
  sp.sampling.temperature = 1.0f;
  sp.sampling.top_k = 0;
  sp.sampling.top_p = 1.0f;
  sp.sampling.min_p = 0.0f;
  session s(shipped(), sp);
  generate_params gp;
  gp.max_tokens = 1;
  gp.constraint = g;
  const int n = QLLM_TEST_QUICK ? 400 : 3000;
  std::map<int32_t, int> seen;
  for (int i = 0; i < n; ++i) {
    const auto r = s.generate(prompt, gp);
    REQUIRE(r.tokens.size() == 1);
    REQUIRE(ok[std::size_t(r.tokens[0])]);
    ++seen[r.tokens[0]];
  }
  // categories expected at least 5 times; the rest pooled into one
  double chi2 = 0, rest_e = 0, rest_o = 0;
  int dof = -1;
  for (int32_t t : allowed) {
    const double e = n * std::exp(double(logits[std::size_t(t)])) / z;
    const double o = seen.count(t) ? seen[t] : 0;
    if (e >= 5) {
      chi2 += (o - e) * (o - e) / e;
      ++dof;
    } else {
      rest_e += e;
      rest_o += o;
    }
  }
  if (rest_e >= 5) {
    chi2 += (rest_o - rest_e) * (rest_o - rest_e) / rest_e;
    ++dof;
  }
  REQUIRE(dof >= 1);
  MESSAGE("chi-square " << chi2 << " with " << dof << " degrees of freedom over " << allowed.size() << " allowed tokens");
  // p = 0.001 critical values for 1..12 degrees of freedom
  const double crit[] = {0, 10.83, 13.82, 16.27, 18.47, 20.52, 22.46, 24.32, 26.12, 27.88, 29.59, 31.26, 32.91};
  REQUIRE(dof <= 12);
  CHECK(chi2 < crit[dof]);
}

namespace {

bool complete(const std::shared_ptr<const grammar>& g, const std::string& text) {
  static const auto tok = small_vocab();
  grammar_matcher m(g, *tok);
  return m.accept_text(text) && m.can_end();
}

std::string schema_error(const char* schema) {
  try {
    (void)grammar::from_json_schema(schema);
  } catch (const error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("JSON Schema: integer bounds are exact (every integer near them, brute force)") {
  std::mt19937 rng(3);
  for (int i = 0; i < 60; ++i) {
    int64_t lo = int64_t(rng() % 2400) - 1200;
    if (i % 7 == 0) lo = 0;
    int64_t hi = lo + int64_t(rng() % 1500);
    if (i % 11 == 0) hi = lo;
    const std::string schema = "{\"type\":\"integer\",\"minimum\":" + std::to_string(lo) + ",\"maximum\":" +
                               std::to_string(hi) + "}";
    CAPTURE(schema);
    const auto g = grammar::from_json_schema(schema);
    for (int64_t v = lo - 40; v <= hi + 40; ++v) {
      CAPTURE(v);
      CHECK(complete(g, std::to_string(v)) == (v >= lo && v <= hi));
    }
    CHECK_FALSE(complete(g, "-0"));
    std::string leading_zero = std::to_string(std::max<int64_t>(1, hi));
    leading_zero.insert(leading_zero.begin(), '0');
    CHECK_FALSE(complete(g, leading_zero));
  }
  // one-sided and exclusive bounds
  const auto above = grammar::from_json_schema(R"({"type":"integer","exclusiveMinimum":99.5})");
  CHECK_FALSE(complete(above, "99"));
  CHECK(complete(above, "100"));
  CHECK(complete(above, "123456789012"));
  const auto below = grammar::from_json_schema(R"({"type":"integer","exclusiveMaximum":-7})");
  CHECK(complete(below, "-8"));
  CHECK(complete(below, "-80000"));
  CHECK_FALSE(complete(below, "-7"));
  CHECK_FALSE(complete(below, "0"));
}

namespace {

// x = sign * digits / 10^frac for a plain decimal "-12.50" (no exponent); false if not one.
bool parse_plain(const std::string& t, bool& neg, __int128& m, int& frac) {
  std::size_t i = 0;
  neg = !t.empty() && t[0] == '-';
  i = neg ? 1 : 0;
  m = 0;
  frac = -1;
  bool any = false;
  for (; i < t.size(); ++i) {
    if (t[i] == '.') {
      if (frac >= 0) return false;
      frac = 0;
      continue;
    }
    if (t[i] < '0' || t[i] > '9') return false;
    m = m * 10 + (t[i] - '0');
    any = true;
    if (frac >= 0) ++frac;
  }
  if (frac < 0) frac = 0;
  return any;
}

// -1, 0, 1: a <=> b for plain decimals, exactly (both at 20 fraction digits).
int compare_plain(const std::string& a, const std::string& b) {
  bool na, nb;
  __int128 ma, mb;
  int fa, fb;
  REQUIRE(parse_plain(a, na, ma, fa));
  REQUIRE(parse_plain(b, nb, mb, fb));
  for (int k = fa; k < 20; ++k) ma *= 10;
  for (int k = fb; k < 20; ++k) mb *= 10;
  if (na) ma = -ma;
  if (nb) mb = -mb;
  return ma < mb ? -1 : ma > mb ? 1 : 0;
}

// Whether t is a JSON number written the way bounded numbers are (no exponent, integer part
// without leading zeros, a digit after the point, no "-0"), with at most 15 digits.
bool plain_form(const std::string& t) {
  std::size_t i = t[0] == '-' ? 1 : 0;
  const std::size_t dot = t.find('.');
  const std::string ip = t.substr(i, dot == std::string::npos ? std::string::npos : dot - i);
  if (ip.empty() || (ip.size() > 1 && ip[0] == '0')) return false;
  if (dot != std::string::npos && dot + 1 == t.size()) return false;
  std::size_t digits = 0;
  for (char c : t) digits += c >= '0' && c <= '9';
  if (digits > 15) return false;
  if (t[0] == '-' && t.find_first_of("123456789") == std::string::npos) return false;  // -0, -0.00
  return true;
}

}  // namespace

TEST_CASE("JSON Schema: number bounds are exact (decimals near them, brute force, and as doubles)") {
  struct bounds {
    const char* schema_bounds;  // the schema's keywords
    const char* lo;             // nullptr: none
    bool lo_strict;
    const char* hi;
    bool hi_strict;
  };
  const bounds cases[] = {
      {R"("minimum": 0, "maximum": 1)", "0", false, "1", false},
      {R"("minimum": -2.5, "maximum": 3.75)", "-2.5", false, "3.75", false},
      {R"("exclusiveMinimum": 0.1, "exclusiveMaximum": 0.3)", "0.1", true, "0.3", true},
      {R"("minimum": -0.05)", "-0.05", false, nullptr, false},
      {R"("exclusiveMaximum": -1.5)", nullptr, false, "-1.5", true},
      {R"("minimum": 12.345, "maximum": 12.35)", "12.345", false, "12.35", false},
      {R"("minimum": 7, "exclusiveMinimum": 7, "maximum": 9.99)", "7", true, "9.99", false},
      {R"("minimum": -100, "maximum": -99.9, "exclusiveMaximum": -99.95)", "-100", false, "-99.95", true},
  };
  // candidates: every plain decimal with up to 3 integer and 3 fraction digits near the bounds
  std::vector<std::string> candidates;
  for (int ip = 0; ip <= 130; ++ip) {
    if (QLLM_TEST_QUICK && ip > 15 && (ip < 98 || ip > 101)) continue;  // the bounds lie in 0..13 and 99..100
    for (int f = 0; f <= 3; ++f) {
      const int top = f == 0 ? 1 : f == 1 ? 10 : f == 2 ? 100 : 1000;
      for (int fr = 0; fr < top; fr += (f == 3 ? 7 : 1)) {
        std::string frac = f ? std::to_string(fr) : "";
        frac.insert(0, std::size_t(f) - frac.size(), '0');
        const std::string t = std::to_string(ip) + (f ? "." + frac : "");
        candidates.push_back(t);
        candidates.push_back("-" + t);
      }
    }
  }
  for (const char* extra : {"0.1000000000001", "0.2999999999999", "12.3450000000001", "12.34499999999999",
                            "-0.0500000000000", "-0.05000000000001", "99999999999999.9", "1e0", "0.", "01", "-0", "-0.0",
                            ".5", "1.5e1", "-99.95", "-99.9500000000001"})
    candidates.push_back(extra);
  for (const bounds& b : cases) {
    const std::string schema = std::string(R"({"type": "number", )") + b.schema_bounds + "}";
    CAPTURE(schema);
    const auto g = grammar::from_json_schema(schema);
    const double dlo = b.lo ? std::strtod(b.lo, nullptr) : 0, dhi = b.hi ? std::strtod(b.hi, nullptr) : 0;
    int in = 0;
    for (const std::string& t : candidates) {
      CAPTURE(t);
      bool want = plain_form(t) && t.find_first_not_of("-.0123456789") == std::string::npos;
      if (want && b.lo) want = b.lo_strict ? compare_plain(t, b.lo) > 0 : compare_plain(t, b.lo) >= 0;
      if (want && b.hi) want = b.hi_strict ? compare_plain(t, b.hi) < 0 : compare_plain(t, b.hi) <= 0;
      const bool got = complete(g, t);
      CHECK(got == want);
      if (got) {
        ++in;
        // a validator compares doubles: the same verdict
        const double x = std::strtod(t.c_str(), nullptr);
        if (b.lo) CHECK((b.lo_strict ? x > dlo : x >= dlo));
        if (b.hi) CHECK((b.hi_strict ? x < dhi : x <= dhi));
      }
    }
    CHECK(in > 0);
  }
}

TEST_CASE("JSON Schema: objects, arrays, strings, alternatives and references") {
  const auto g = grammar::from_json_schema(R"({
    "type": "object",
    "properties": {
      "name": {"type": "string", "minLength": 2, "maxLength": 4},
      "kind": {"enum": ["a", 1, null]},
      "tags": {"type": "array", "items": {"type": "boolean"}, "minItems": 1, "maxItems": 2},
      "next": {"$ref": "#/$defs/node"}
    },
    "required": ["name", "tags"],
    "additionalProperties": false,
    "$defs": {"node": {"anyOf": [{"type": "null"}, {"type": "object", "properties": {"next": {"$ref": "#/$defs/node"}}}]}}
  })");
  CHECK(complete(g, R"({"name":"ab","tags":[true]})"));
  CHECK(complete(g, R"({ "name": "\u00e9\n\"x", "kind": null, "tags": [false, true], "next": {"next": null} })"));
  CHECK(complete(g, R"({"name":"abcd","kind":1,"tags":[true]})"));
  CHECK_FALSE(complete(g, R"({"name":"a","tags":[true]})"));         // minLength
  CHECK_FALSE(complete(g, R"({"name":"abcde","tags":[true]})"));     // maxLength
  CHECK_FALSE(complete(g, R"({"name":"ab\ud83d\ude00","tags":[true]})"));  // surrogate escapes refused
  CHECK_FALSE(complete(g, R"({"name":"ab","tags":[]})"));            // minItems
  CHECK_FALSE(complete(g, R"({"name":"ab","tags":[true,true,true]})"));  // maxItems
  CHECK_FALSE(complete(g, R"({"tags":[true]})"));                    // required
  CHECK_FALSE(complete(g, R"({"name":"ab","tags":[true],"x":1})"));  // additionalProperties false
  CHECK_FALSE(complete(g, R"({"name":"ab","kind":"b","tags":[true]})"));  // enum
  const auto map = grammar::from_json_schema(R"({"type":"object","additionalProperties":{"type":"integer","maximum":3}})");
  CHECK(complete(map, R"({"a":1,"b":-2})"));
  CHECK_FALSE(complete(map, R"({"a":4})"));
  const auto one = grammar::from_json_schema(R"({"oneOf":[{"type":"string"},{"type":["integer","null"]}]})");
  CHECK(complete(one, "null"));
  CHECK(complete(one, "\"x\""));
  CHECK_FALSE(complete(one, "1.5"));
}

TEST_CASE("JSON Schema: what cannot be followed exactly is refused, naming the keyword and where") {
  CHECK(schema_error(R"({"type":"string","pattern":"a+"})").find("#: 'pattern' is not supported") != std::string::npos);
  CHECK(schema_error(R"({"type":"object","properties":{"d":{"type":"string","format":"date"}}})")
            .find("#/properties/d: 'format' is not supported") != std::string::npos);
  CHECK(schema_error(R"({"type":"number","minimum":0.1234567890123456})").find("more than 15 significant digits") !=
        std::string::npos);
  CHECK(schema_error(R"({"type":"number","maximum":1e16})").find("not below 1e15") != std::string::npos);
  CHECK(schema_error(R"({"type":"number","maximum":1e-30})").find("more than 20 decimal places") != std::string::npos);
  CHECK(schema_error(R"({"type":"number","minimum":1,"exclusiveMaximum":1})").find("no number lies") != std::string::npos);
  CHECK(schema_error(R"({"type":"number","minimum":2,"maximum":1.5})").find("no number lies") != std::string::npos);
  // bounds written with more digits than their double holds would be rounded: refused
  CHECK(schema_error(R"({"type":"number","minimum":0.30000000000000001})").find("more digits than a double holds") !=
        std::string::npos);
  CHECK(schema_error(R"({"type":"number","maximum":1e-400})").find("rounded to 0") != std::string::npos);
  CHECK(schema_error(R"({"type":"integer","minimum":2.0000000000000001})").find("'minimum' 2.0000000000000001") !=
        std::string::npos);
  CHECK(schema_error(R"({"type":"number","minimum":0.1,"maximum":5e2,"exclusiveMaximum":1.0E3})").empty());
  CHECK(schema_error(R"({"type":"number","enum":[0.30000000000000001]})").find("double") == std::string::npos);
  // a NUL ends nothing: the text after it is part of the schema
  {
    const std::string with_nul("{\"type\":\"number\"}\0{\"junk", 24);
    try {
      (void)grammar::from_json_schema(with_nul);
      FAIL("a schema with a NUL byte compiled");
    } catch (const error& e) {
      CHECK(e.code() == errc::invalid_argument);
    }
  }
  // the grammar a schema expands to has a budget, checked as it grows: many bounded numbers are
  // refused early and named; the same bounds many times share one rule
  {
    std::string many = R"({"type":"object","properties":{)";
    std::string same = many;
    for (int i = 0; i < 3000; ++i) {
      const std::string key = "\"p" + std::to_string(i) + "\":";
      if (i) many += ",", same += ",";
      many += key;
      many += "{\"type\":\"number\",\"minimum\":";
      many += std::to_string(i);
      many += ".5,\"maximum\":100000}";
      same += key;
      same += "{\"type\":\"number\",\"minimum\":0.5}";
    }
    many += "}}";
    same += "}}";
    const auto t0 = std::chrono::steady_clock::now();
    const std::string why = schema_error(many.c_str());
    CHECK(why.find("MiB of grammar") != std::string::npos);
    MESSAGE("3000 distinct bounded numbers refused after "
            << std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() << " s");
    CHECK(schema_error(same.c_str()).empty());
    const std::string same_gbnf = grammar::gbnf_from_json_schema(same);
    CHECK(same_gbnf.size() < 1000000);  // one number rule, not 3000
  }
  CHECK(schema_error(R"({"oneOf":[{"type":"integer"},{"type":"number"}]})").find("use anyOf") != std::string::npos);
  CHECK(schema_error(R"({"$ref":"#/$defs/x"})").find("names no definition") != std::string::npos);
  CHECK(schema_error(R"({"$ref":"http://x/y"})").find("only #/$defs/NAME") != std::string::npos);
  CHECK(schema_error(R"({"allOf":[{"type":"integer"},{"minimum":1}]})").find("'allOf' of more than one") != std::string::npos);
  CHECK(schema_error(R"({"type":"integer","minimum":5,"maximum":4})").find("no integer lies between") != std::string::npos);
  CHECK(schema_error(R"({"type":"string","minItems":1})").find("'minItems' does not apply to type string") !=
        std::string::npos);
  CHECK(schema_error(R"({"type":"object","properties":{"a":{}},"required":["b"]})").find("'b' is not in 'properties'") !=
        std::string::npos);
  CHECK(schema_error(R"({"type":"integer","maximum":1e30})").find("beyond +-1e18") != std::string::npos);
  CHECK(schema_error("{\"type\":").find("not valid JSON") != std::string::npos);
  CHECK(schema_error("false").find("accepts nothing") != std::string::npos);
  // keywords beside const, enum or a combinator, or without a type, are enforced or refused
  CHECK(schema_error(R"({"type":"string","const":5})").find("'const' is not of the schema's 'type'") != std::string::npos);
  CHECK(schema_error(R"({"const":5,"minimum":6})").find("'minimum' beside 'const'") != std::string::npos);
  CHECK(schema_error(R"({"type":"string","anyOf":[{"type":"integer"}]})").find("'type' beside 'anyOf'") !=
        std::string::npos);
  CHECK(schema_error(R"({"allOf":[{"type":"integer"}],"anyOf":[{"type":"string"}]})").find("beside 'allOf'") !=
        std::string::npos);
  CHECK(schema_error(R"({"minimum":0})").find("'minimum' without a 'type'") != std::string::npos);
  CHECK(schema_error(R"({"minLength":1,"items":{}})").find("several types") != std::string::npos);
  CHECK(schema_error(R"({"type":"integer","exclusiveMinimum":18446744073709551615})").find("beyond +-1e18") !=
        std::string::npos);
  CHECK(schema_error(R"({"type":"integer","exclusiveMaximum":-9223372036854775808})").find("beyond +-1e18") !=
        std::string::npos);
  const auto untyped = grammar::from_json_schema(
      R"({"properties":{"name":{"type":"string"},"age":{"type":"integer","minimum":0}},"required":["name","age"]})");
  CHECK_FALSE(complete(untyped, "{}"));
  CHECK_FALSE(complete(untyped, R"({"name":1})"));
  CHECK(complete(untyped, R"({"name":"x","age":3})"));
  CHECK_FALSE(complete(grammar::from_json_schema(R"({"minLength":5})"), "\"a\""));
  const auto typed_enum = grammar::from_json_schema(R"({"type":"string","enum":["a",1,"b"]})");
  CHECK(complete(typed_enum, "\"b\""));
  CHECK_FALSE(complete(typed_enum, "1"));
  CHECK(schema_error(R"({"type":"integer","enum":["a"]})").find("no value of 'enum'") != std::string::npos);
  std::string deep = "{\"type\":\"integer\"}";
  for (int i = 0; i < 100; ++i) deep = "{\"anyOf\":[" + deep + "]}";
  CHECK(schema_error(deep.c_str()).find("nested more than 64") != std::string::npos);
}

TEST_CASE("a grammar too ambiguous to follow is an error, not a stall") {
  // after n a's, each level may still close with b or with c: 2^n parses of the text
  const auto g = grammar::from_gbnf("root ::= s\ns ::= \"a\" s \"b\" | \"a\" s \"c\" | \"\"");
  const auto tok = small_vocab();  // the matcher keeps a reference: it must outlive it
  grammar_matcher m(g, *tok);
  bool refused = false;
  try {
    for (int i = 0; i < 64 && !refused; ++i) {
      std::vector<bool> ok;
      m.allowed(ok);
      m.accept_text("a");
    }
  } catch (const error& e) {
    CHECK(e.code() == errc::unsupported);
    CHECK((std::string(e.what()).find("too ambiguous") != std::string::npos ||
           std::string(e.what()).find("costs too much") != std::string::npos));
    refused = true;
  }
  CHECK(refused);
}
