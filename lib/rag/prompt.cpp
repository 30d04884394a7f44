// From a question to a prompt that fits: the search query, the window budget, and ask().
#include <algorithm>
#include <cctype>
#include <set>
#include <string>
#include <vector>

#include "qllm/error.hpp"
#include "qllm/rag.hpp"
#include "qllm/tokenizer.hpp"

namespace qllm::rag {
namespace {

const char* kDefaultSystem =
    "Answer the question using only the numbered passages in the user's message. Cite the passages you "
    "use by their number, like [2]. If the passages do not contain the answer, say that you do not know.";

// Words that carry no topic: left out of the search so they do not dilute BM25.
const std::set<std::string>& stopwords() {
  static const std::set<std::string> s = {
      "a",     "about", "after", "all",   "also",  "an",    "and",   "any",   "are",   "as",    "at",    "be",
      "been",  "but",   "by",    "can",   "could", "did",   "do",    "does",  "for",   "from",  "had",   "has",
      "have",  "he",    "her",   "his",   "how",   "i",     "if",    "in",    "into",  "is",    "it",    "its",
      "me",    "my",    "no",    "not",   "of",    "on",    "or",    "our",   "she",   "should","so",    "some",
      "than",  "that",  "the",   "their", "them",  "then",  "there", "these", "they",  "this",  "those", "to",
      "us",    "was",   "we",    "were",  "what",  "when",  "where", "which", "who",   "whom",  "why",   "will",
      "with",  "would", "you",   "your"};
  return s;
}

// The file's name and chunk number. File names are bytes: one that is not UTF-8 is shown with
// U+FFFD in place of the bad bytes (the prompt must be valid UTF-8).
std::string label(const hit& h) {
  const auto slash = h.path.find_last_of('/');
  std::string out;
  utf8::append_sanitized(out, slash == std::string::npos ? std::string_view(h.path) : std::string_view(h.path).substr(slash + 1));
  return out + "#" + std::to_string(h.seq);
}

std::string user_message(std::string_view question, std::span<const hit> chunks, bool none_fit) {
  std::string u;
  if (chunks.empty()) {
    u = none_fit ? "No passages fit in the window for this question.\n\n" : "No passages were found for this question.\n\n";
  } else {
    u = "Passages:\n\n";
    for (std::size_t i = 0; i < chunks.size(); ++i)
      u.append("[").append(std::to_string(i + 1)).append("] (").append(label(chunks[i])).append(")\n")
          .append(chunks[i].text).append("\n\n");
  }
  u.append("Question: ").append(question);
  return u;
}

std::vector<chat_message> dialog_for(std::string_view system, std::string_view question, std::span<const hit> chunks,
                                     bool none_fit = false) {
  return {{"system", std::string(system)}, {"user", user_message(question, chunks, none_fit)}};
}

}  // namespace

std::string fts_query(std::string_view q) {
  std::vector<std::string> order;  // the kept words in question order
  std::vector<std::string> all;    // every word, for the whole-phrase term
  std::string w;
  auto flush = [&] {  // a question of thousands of words searches by its first 64
    if (!w.empty() && all.size() < 64) all.push_back(w);
    if (!w.empty() && order.size() < 64 && !stopwords().count(w)) order.push_back(w);
    w.clear();
  };
  for (char ch : q) {
    const auto c = static_cast<unsigned char>(ch);
    if (std::isalnum(c) || c >= 0x80) w.push_back(c < 0x80 ? char(std::tolower(c)) : ch);
    else flush();
  }
  flush();
  // each word once, then each pair of neighbouring words near each other: a pair is rarer than
  // its words, so BM25 ranks passages that use the question's wording above ones that scatter it
  std::set<std::string> seen;
  std::string out;
  auto add = [&](const std::string& term) {
    if (seen.insert(term).second) out.append(out.empty() ? "" : " OR ").append(term);
  };
  for (const auto& x : order) add("\"" + x + "\"");
  for (std::size_t i = 0; i + 1 < order.size() && i < 32; ++i)
    if (order[i] != order[i + 1]) add("NEAR(\"" + order[i] + "\" \"" + order[i + 1] + "\", 3)");
  // and the words as one phrase: a quoted passage finds where it is written
  if (all.size() >= 3 && all.size() <= 32 && order.size() < all.size()) {
    std::string phrase;
    for (const auto& x : all) phrase.append(phrase.empty() ? "" : " ").append(x);
    add("\"" + phrase + "\"");
  }
  if (order.empty()) return {};
  return out;
}

prompt build_prompt(const tokenizer& tok, std::string_view question, std::span<const hit> ranked, const prompt_params& pp) {
  if (question.find_first_not_of(" \t\r\n") == std::string_view::npos)
    throw error(errc::invalid_argument, "rag: empty question");
  if (pp.n_ctx <= 0 || pp.n_reserve < 0)
    throw error(errc::invalid_argument, "rag: window " + std::to_string(pp.n_ctx) + " and reserve " +
                                            std::to_string(pp.n_reserve) + " (need a window > 0 and a reserve >= 0)");
  const std::string system = pp.system.empty() ? kDefaultSystem : pp.system;
  prompt p;
  p.n_ctx = pp.n_ctx;
  p.n_reserve = pp.n_reserve;
  p.dialog = dialog_for(system, question, {});
  p.tokens = chat_tokens(tok, p.dialog);
  const int64_t need = int64_t(p.tokens.size()) + pp.n_reserve;
  if (need > pp.n_ctx)
    throw error(errc::context_overflow,
                "rag: the instructions and the question take " + std::to_string(p.tokens.size()) + " tokens; with " +
                    std::to_string(pp.n_reserve) + " left for the answer that is " + std::to_string(need - pp.n_ctx) +
                    " tokens more than the window of " + std::to_string(pp.n_ctx));
  std::vector<hit> taken;
  std::size_t i = 0;
  for (; i < ranked.size(); ++i) {
    taken.push_back(ranked[i]);
    auto d = dialog_for(system, question, taken);
    auto t = chat_tokens(tok, d);
    if (int64_t(t.size()) + pp.n_reserve > pp.n_ctx) {
      taken.pop_back();
      break;
    }
    p.dialog = std::move(d);
    p.tokens = std::move(t);
    p.used.push_back({ranked[i], int64_t(i) + 1, int64_t(tok.count(ranked[i].text, false))});
  }
  if (p.used.empty() && !ranked.empty()) {  // say so in the prompt: not "nothing was found"
    p.dialog = dialog_for(system, question, {}, true);
    p.tokens = chat_tokens(tok, p.dialog);
    if (int64_t(p.tokens.size()) + pp.n_reserve > pp.n_ctx) {  // a few tokens longer than "found"
      p.dialog = dialog_for(system, question, {});
      p.tokens = chat_tokens(tok, p.dialog);
    }
  }
  const int64_t left = pp.n_ctx - pp.n_reserve - int64_t(p.tokens.size());
  for (std::size_t j = i; j < ranked.size(); ++j) {
    dropped_chunk d{ranked[j], int64_t(j) + 1, int64_t(tok.count(ranked[j].text, false)), {}};
    if (j == i)
      d.reason = "does not fit: needs its " + std::to_string(d.n_tokens) + " tokens and a header, " +
                 std::to_string(left) + " left (window " + std::to_string(pp.n_ctx) + ", prompt " +
                 std::to_string(p.tokens.size()) + ", reserved for the answer " + std::to_string(pp.n_reserve) + ")";
    else
      d.reason = "ranked below chunk rank " + std::to_string(i + 1) + ", which did not fit (lowest-ranked are dropped first)";
    p.dropped.push_back(std::move(d));
  }
  return p;
}

std::string describe(const prompt& p) {
  std::string s;
  for (std::size_t i = 0; i < p.used.size(); ++i) {
    const auto& u = p.used[i];
    s += "  used    [" + std::to_string(i + 1) + "] rank " + std::to_string(u.rank) + ", chunk " +
         std::to_string(u.h.chunk_id) + " (" + label(u.h) + "), " + std::to_string(u.n_tokens) + " tokens\n";
  }
  for (const auto& d : p.dropped)
    s += "  dropped rank " + std::to_string(d.rank) + ", chunk " + std::to_string(d.h.chunk_id) + " (" + label(d.h) +
         "), " + std::to_string(d.n_tokens) + " tokens: " + d.reason + "\n";
  s += "  prompt " + std::to_string(p.tokens.size()) + " tokens + " + std::to_string(p.n_reserve) +
       " reserved for the answer <= window " + std::to_string(p.n_ctx) + "\n";
  return s;
}

prompt prepare(session& s, store& st, std::string_view question, const ask_params& ap, const generate_params& gp) {
  if (ap.top_k <= 0) throw error(errc::invalid_argument, "rag: top_k must be > 0");
  const std::vector<hit> hits = st.search(question, ap.top_k);
  prompt_params pp;
  pp.system = ap.system;
  pp.n_ctx = s.ctx().n_ctx();
  // all of max_tokens stays free (reserve_for gives at most half the window when the session
  // shifts: the answer would then push the passages out)
  pp.n_reserve = gp.max_tokens > 0 ? gp.max_tokens : s.reserve_for(gp);
  if (ap.cot)  // the cue appended to the question, then the answer stage after the reasoning
    pp.n_reserve += int64_t(s.tok().count(ap.cot_p.reasoning_cue, false)) + 2 + cot_answer_reserve(s.tok(), ap.cot_p);
  return build_prompt(s.tok(), question, hits, pp);
}

answer respond(session& s, prompt built, const ask_params& ap, const generate_params& gp, const token_callback& on_answer,
               const token_callback& on_reasoning) {
  answer a;
  a.built = std::move(built);
  if (ap.cot) {
    cot_result r = chat_cot(s, a.built.dialog, gp, ap.cot_p, on_reasoning, on_answer);
    a.reasoning = std::move(r.reasoning.text);
    a.reasoning_finish = r.reasoning.finish;
    a.result = std::move(r.answer);
  } else {
    a.result = s.generate(a.built.tokens, gp, on_answer);
  }
  return a;
}

answer ask(session& s, store& st, std::string_view question, const ask_params& ap, const generate_params& gp,
           const token_callback& on_answer, const token_callback& on_reasoning) {
  return respond(s, prepare(s, st, question, ap, gp), ap, gp, on_answer, on_reasoning);
}

}  // namespace qllm::rag
