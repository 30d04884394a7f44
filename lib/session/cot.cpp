// Chain-of-thought by prompt chaining: a reasoning generation, then an answer-extraction one.
#include <string>
#include <vector>

#include "qllm/error.hpp"
#include "qllm/session.hpp"

namespace qllm {
namespace {

void check(const cot_params& cp, bool chat) {
  if (cp.answer_tokens <= 0)
    throw error(errc::invalid_argument, "chain of thought: answer_tokens must be > 0, not " + std::to_string(cp.answer_tokens));
  if (cp.reasoning_cue.empty()) throw error(errc::invalid_argument, "chain of thought: empty reasoning cue");
  if (chat ? cp.answer_request.empty() : cp.answer_cue.empty())
    throw error(errc::invalid_argument, chat ? "chain of thought: empty answer request" : "chain of thought: empty answer cue");
}

bool ends_with_space(std::string_view s) {
  return !s.empty() && (s.back() == ' ' || s.back() == '\n' || s.back() == '\t' || s.back() == '\r');
}

generate_params answer_stage(const generate_params& gp, const cot_params& cp) {
  generate_params a = gp;
  a.max_tokens = cp.answer_tokens;
  return a;
}

}  // namespace

cot_result generate_cot(session& s, std::string_view prompt, const generate_params& gp, const cot_params& cp,
                        const token_callback& on_reasoning, const token_callback& on_answer) {
  check(cp, false);
  std::string text(prompt);
  if (!text.empty() && !ends_with_space(text)) text += ' ';
  text += cp.reasoning_cue;
  cot_result r;
  r.reasoning = s.generate(std::string_view(text), gp, on_reasoning);
  if (r.reasoning.finish == finish_reason::cancelled) {
    r.answer.finish = finish_reason::cancelled;
    return r;
  }
  // the reasoning as it was generated, then the cue on a line of its own
  text += r.reasoning.text;
  text += '\n';
  text += cp.answer_cue;
  generate_params a = answer_stage(gp, cp);
  a.stop.push_back("\n");  // the answer is the rest of the cue's line
  r.answer = s.generate(std::string_view(text), a, on_answer);
  return r;
}

cot_result chat_cot(session& s, std::span<const chat_message> dialog, const generate_params& gp, const cot_params& cp,
                    const token_callback& on_reasoning, const token_callback& on_answer) {
  check(cp, true);
  if (dialog.empty()) throw error(errc::invalid_argument, "chain of thought: empty dialog");
  std::vector<chat_message> d(dialog.begin(), dialog.end());
  std::string& last = d.back().content;
  last += ends_with_space(last) ? "" : "\n\n";
  last += cp.reasoning_cue;
  cot_result r;
  r.reasoning = s.generate(chat_tokens(s.tok(), d), gp, on_reasoning);
  if (r.reasoning.finish == finish_reason::cancelled) {
    r.answer.finish = finish_reason::cancelled;
    return r;
  }
  d.push_back({"assistant", r.reasoning.text});
  d.push_back({"user", cp.answer_request});
  r.answer = s.generate(chat_tokens(s.tok(), d), answer_stage(gp, cp), on_answer);
  return r;
}

int64_t cot_answer_reserve(const tokenizer& tok, const cot_params& cp) {
  // the longer of the two stage-2 texts, with the chat template around the request
  // ("</s><s>[INST] request [/INST]"), plus a margin for re-tokenising the reasoning
  const int64_t cue = int64_t(tok.count("\n" + cp.answer_cue, false));
  const int64_t req = int64_t(tok.count("[INST] " + cp.answer_request + " [/INST] ", true)) + 1;
  return cp.answer_tokens + std::max(cue, req) + 8;
}

}  // namespace qllm
