// Chain-of-thought by prompt chaining: a reasoning generation, then an answer-extraction one.
#include <algorithm>
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

// Stage 1's budget: what the window leaves after its prompt and the answer stage.
generate_params reasoning_stage(const session& s, const std::vector<int32_t>& prompt, const generate_params& gp,
                                const cot_params& cp, int64_t n_ctx) {
  const int64_t room = n_ctx - int64_t(prompt.size()) - cot_answer_reserve(s.tok(), cp);
  if (room < 1)
    throw error(errc::context_overflow,
                "chain of thought: the prompt has " + std::to_string(prompt.size()) + " tokens; with the answer stage (" +
                    std::to_string(cot_answer_reserve(s.tok(), cp)) + " tokens) that is " + std::to_string(1 - room) +
                    " tokens more than the window of " + std::to_string(n_ctx) + " leaves for any reasoning");
  generate_params r = gp;
  r.max_tokens = gp.max_tokens < 0 ? room : std::min(gp.max_tokens, room);
  r.constraint.reset();  // a grammar is the answer's; the reasoning is free text
  return r;
}

// Stage 2 on `seq`: answer_tokens, or what is left of the window if re-tokenising the reasoning
// took more than the reserve's margin.
generation_result answer_stage(session& s, std::vector<int32_t> seq, const generate_params& gp, const cot_params& cp,
                               bool plain, const token_callback& on_answer) {
  const int64_t n_ctx = s.ctx().n_ctx();
  generate_params a = gp;
  a.max_tokens = std::min<int64_t>(cp.answer_tokens, n_ctx - int64_t(seq.size()));
  if (a.max_tokens < 1)
    throw error(errc::context_overflow, "chain of thought: the reasoning fills the window of " + std::to_string(n_ctx) +
                                            " tokens; no room is left for the answer");
  if (plain && !gp.constraint) a.stop.push_back("\n");  // the answer is the rest of the cue's line (a grammar ends it itself)
  return s.generate(std::move(seq), a, on_answer);
}

}  // namespace

cot_result generate_cot(session& s, std::string_view prompt, const generate_params& gp, const cot_params& cp,
                        const token_callback& on_reasoning, const token_callback& on_answer) {
  check(cp, false);
  std::string text(prompt);
  if (!text.empty() && !ends_with_space(text)) text += ' ';
  text += cp.reasoning_cue;
  cot_result r;
  const auto stage1 = s.tokenize(text, s.tok().add_bos());
  r.reasoning = s.generate(stage1, reasoning_stage(s, stage1, gp, cp, s.ctx().n_ctx()), on_reasoning);
  if (r.reasoning.finish == finish_reason::cancelled || s.cancel_requested()) {
    r.answer.finish = finish_reason::cancelled;
    return r;
  }
  // the reasoning as it was generated, then the cue on a line of its own
  text += r.reasoning.text;
  text += '\n';
  text += cp.answer_cue;
  r.answer = answer_stage(s, s.tokenize(text, s.tok().add_bos()), gp, cp, true, on_answer);
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
  const auto stage1 = chat_tokens(s.tok(), d);
  r.reasoning = s.generate(stage1, reasoning_stage(s, stage1, gp, cp, s.ctx().n_ctx()), on_reasoning);
  if (r.reasoning.finish == finish_reason::cancelled || s.cancel_requested()) {
    r.answer.finish = finish_reason::cancelled;
    return r;
  }
  d.push_back({"assistant", r.reasoning.text});
  d.push_back({"user", cp.answer_request});
  r.answer = answer_stage(s, chat_tokens(s.tok(), d), gp, cp, false, on_answer);
  return r;
}

int64_t cot_answer_reserve(const tokenizer& tok, const cot_params& cp) {
  // the longer of the two stage-2 texts, with the chat template around the request
  // ("</s><s>[INST] request [/INST]"), plus a margin for re-tokenising the reasoning
  const int64_t cue = int64_t(tok.count("\n" + cp.answer_cue, false));
  int64_t req = int64_t(tok.count("[INST] " + cp.answer_request + " [/INST] ", true)) + 1;
  if (chat_format_of(tok) == chat_format::llama3)  // <|eot_id|> closing the reasoning, then the request's block
    req = int64_t(tok.count("\n\n" + cp.answer_request, false)) + 1 + 3 + int64_t(tok.count("user", false)) +
          int64_t(tok.count("assistant", false)) + 3 + int64_t(tok.count("\n\n", false));
  return cp.answer_tokens + std::max(cue, req) + 8;
}

}  // namespace qllm
