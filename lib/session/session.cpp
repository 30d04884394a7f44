#include "qllm/session.hpp"

#include <algorithm>
#include <chrono>
#include <optional>

#include "omp_compat.hpp"
#include "qllm/error.hpp"
#include "session/lookup.hpp"
#include "session/stop_text.hpp"

namespace qllm {

const char* to_string(context_policy p) noexcept {
  switch (p) {
    case context_policy::error: return "error";
    case context_policy::keep_head_and_tail: return "keep-head-and-tail";
    case context_policy::keep_tail: return "keep-tail";
  }
  return "?";
}

const char* to_string(finish_reason r) noexcept {
  switch (r) {
    case finish_reason::eos: return "eos";
    case finish_reason::stop_string: return "stop-string";
    case finish_reason::max_tokens: return "max-tokens";
    case finish_reason::cancelled: return "cancelled";
    case finish_reason::context_full: return "context-full";
  }
  return "?";
}

const char* to_string(speculation s) noexcept {
  switch (s) {
    case speculation::lookup: return "lookup";
    case speculation::draft_model: return "draft";
  }
  return "?";
}

context_policy parse_context_policy(std::string_view s) {
  std::string n(s);
  std::replace(n.begin(), n.end(), '_', '-');
  if (n == "error") return context_policy::error;
  if (n == "keep-head-and-tail") return context_policy::keep_head_and_tail;
  if (n == "keep-tail") return context_policy::keep_tail;
  throw error(errc::invalid_argument, "unknown context policy '" + std::string(s) +
                                          "' (error, keep-head-and-tail, keep-tail)");
}

namespace {
using clock = std::chrono::steady_clock;
double seconds_since(clock::time_point t) { return std::chrono::duration<double>(clock::now() - t).count(); }
}  // namespace

session::session(std::shared_ptr<const model> m, const session_params& p)
    : model_(m), p_(p), ctx_(std::move(m), p.ctx), smp_(p.sampling) {
  ctx_.set_abort_flag(&cancel_);
  if (p_.n_keep < 0 || p_.n_keep >= ctx_.n_ctx())
    throw error(errc::invalid_argument, "session: n_keep " + std::to_string(p_.n_keep) + " must be in [0, n_ctx " +
                                            std::to_string(ctx_.n_ctx()) + ")");
  if (uint32_t(p_.policy) > 2) throw error(errc::invalid_argument, "session: unknown context policy");
}

session::~session() = default;

// The draft model's sampler: the session's settings with a random stream of its own.
static sampler_params draft_sampling(sampler_params p) {
  p.seed ^= 0x9e3779b97f4a7c15ull;
  return p;
}

void session::set_draft(std::shared_ptr<const model> draft) {
  if (!draft) {
    draft_ctx_.reset();
    draft_smp_.reset();
    draft_model_.reset();
    draft_history_.clear();
    return;
  }
  const auto differ = [](const std::string& what) {
    throw error(errc::invalid_argument, "draft model: its vocabulary differs from the model's: " + what);
  };
  if (draft->config().n_vocab != model_->config().n_vocab)
    differ(std::to_string(draft->config().n_vocab) + " tokens, not " + std::to_string(model_->config().n_vocab));
  const tokenizer *a = model_->get_tokenizer(), *b = draft->get_tokenizer();
  if (!a != !b) differ(a ? "it has no vocabulary" : "the model has no vocabulary");
  if (a) {
    if (a->bos() != b->bos() || a->eos() != b->eos() || a->end_tokens() != b->end_tokens() || a->unk() != b->unk()) differ("other special token ids");
    for (int32_t i = 0; i < a->n_vocab(); ++i)
      if (a->piece(i) != b->piece(i)) differ("token " + std::to_string(i) + " is '" + b->piece(i) + "', not '" + a->piece(i) + "'");
  }
  context_params dp = p_.ctx;
  dp.n_ctx = ctx_.n_ctx();  // the session's window, not the draft model's training context
  auto ctx = std::make_unique<context>(draft, dp);
  ctx->set_abort_flag(&cancel_);
  draft_smp_ = std::make_unique<sampler>(draft_sampling(p_.sampling));
  draft_ctx_ = std::move(ctx);
  draft_model_ = std::move(draft);
  draft_history_.clear();
}

std::vector<int32_t> session::draft_from_model(int k, std::vector<std::vector<std::pair<int32_t, float>>>* q) {
  // the draft cache keeps what it shares with history_ and evaluates the rest (at least the last
  // token, whose logits start the draft)
  if (!draft_ctx_) return {};  // removed during the call (a callback breaking the thread rule)
  const std::vector<int32_t>& seq = history_;
  std::size_t c = 0;
  while (c < draft_history_.size() && c < seq.size() && draft_history_[c] == seq[c]) ++c;
  c = std::min(c, seq.size() - 1);
  draft_ctx_->truncate(int64_t(c));
  draft_history_.resize(c);
  std::span<const float> logits = draft_ctx_->eval(std::span(seq).subspan(c));
  draft_history_.insert(draft_history_.end(), seq.begin() + std::ptrdiff_t(c), seq.end());
  const tokenizer* tk = model_->get_tokenizer();
  std::vector<int32_t> d;
  for (int i = 0; i < k; ++i) {
    draft_smp_->set_window(draft_history_);  // the same penalty window as the model's for this position
    int32_t x;
    try {
      x = draft_smp_->sample(logits);
    } catch (const error& e) {
      // a draft model whose logits are not finite drafts nothing; the model's own tokens go on
      if (e.code() != errc::invalid_argument) throw;
      break;
    }
    if (tk && tk->ends_answer(x)) break;  // a draft past the end is never used
    d.push_back(x);
    if (q) {
      const auto cand = draft_smp_->last_candidates();
      q->emplace_back(cand.begin(), cand.end());
    }
    if (i + 1 == k) break;
    logits = draft_ctx_->eval(std::span(&x, 1));
    draft_history_.push_back(x);
  }
  return d;
}

const tokenizer& session::tok() const {
  const tokenizer* t = model_->get_tokenizer();
  if (!t) throw error(errc::unsupported, "the model file has no vocabulary (tokenizer.ggml.*): only token ids work");
  return *t;
}

void session::reset() {
  ctx_.clear();
  smp_.reset();
  history_.clear();
  if (draft_ctx_) {
    draft_ctx_->clear();
    draft_smp_->reset();
    draft_history_.clear();
  }
}

std::vector<float> session::embed(const std::vector<int32_t>& tokens) {
  history_.clear();
  auto e = ctx_.embed(tokens);  // on error the cache is in an unknown state: history_ stays empty
  history_ = tokens;
  return e;
}

void session::set_sampling(const sampler_params& p) {
  sampler s(p);  // validates before anything changes
  smp_ = std::move(s);
  p_.sampling = p;
  if (draft_smp_) *draft_smp_ = sampler(draft_sampling(p));
}

prompt_fit fit_prompt(std::vector<int32_t>& tokens, int64_t n_ctx, int64_t n_reserve, context_policy policy,
                      int64_t n_keep) {
  prompt_fit f;
  const int64_t n = int64_t(tokens.size());
  f.n_tokens = n;
  if (n_reserve < 0 || n_reserve >= n_ctx)
    throw error(errc::invalid_argument, "room for " + std::to_string(n_reserve) + " new tokens does not fit n_ctx " +
                                            std::to_string(n_ctx));
  const int64_t budget = n_ctx - n_reserve;
  if (n <= budget) return f;
  switch (policy) {
    case context_policy::error:
      throw error(errc::context_overflow,
                  "the prompt has " + std::to_string(n) + " tokens; with " + std::to_string(n_reserve) +
                      " to generate the window of " + std::to_string(n_ctx) + " holds " + std::to_string(budget) +
                      " (" + std::to_string(n - budget) +
                      " too many). Shorten it, raise n_ctx, or choose a context policy (keep-head-and-tail, keep-tail)");
    case context_policy::keep_head_and_tail: {
      const int64_t head = std::min(std::max<int64_t>(0, n_keep), budget - 1);  // at least one recent token stays
      f.drop_begin = head;
      f.drop_end = n - (budget - head);
      break;
    }
    case context_policy::keep_tail:
      f.drop_begin = 0;
      f.drop_end = n - budget;
      break;
    default:
      throw error(errc::invalid_argument, "unknown context policy");
  }
  f.n_dropped = f.drop_end - f.drop_begin;
  tokens.erase(tokens.begin() + f.drop_begin, tokens.begin() + f.drop_end);
  return f;
}

prompt_fit session::fit(std::vector<int32_t>& tokens, int64_t n_reserve) const {
  return fit_prompt(tokens, ctx_.n_ctx(), n_reserve, p_.policy, p_.n_keep);
}

void session::check_ids(std::span<const int32_t> tokens) const {
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0 || tokens[i] >= model_->config().n_vocab)
      throw error(errc::invalid_argument, "token " + std::to_string(tokens[i]) + " at index " + std::to_string(i) +
                                              " is outside the vocabulary");
  }
}

std::span<const float> session::sync(std::vector<int32_t>& seq, int64_t n_reserve, prompt_fit& f, generation_timings& t) {
  if (seq.empty()) throw error(errc::invalid_argument, "generate: empty prompt (no tokens)");
  check_ids(seq);
  f = fit(seq, n_reserve);
  // Reuse the cached prefix; the last token is always evaluated again for its logits.
  std::size_t common = 0;
  while (common < history_.size() && common < seq.size() && history_[common] == seq[common]) ++common;
  common = std::min(common, seq.size() - 1);
  ctx_.truncate(int64_t(common));
  history_.resize(common);
  const auto t0 = clock::now();
  const std::span<const int32_t> rest(seq.data() + common, seq.size() - common);
  std::span<const float> logits;
  try {
    logits = ctx_.eval(rest);
  } catch (...) {
    ctx_.truncate(int64_t(common));
    throw;
  }
  history_.insert(history_.end(), rest.begin(), rest.end());
  t.prompt_seconds = seconds_since(t0);
  t.n_prompt = int64_t(rest.size());
  t.n_reused = int64_t(common);
  return logits;
}

std::span<const float> session::evaluate(std::vector<int32_t> sequence, prompt_fit* fit_out) {
  cancel_.store(false, std::memory_order_relaxed);
  return evaluate_uncleared(std::move(sequence), fit_out);
}

// evaluate() without clearing a cancel request (append() has cleared it when it started).
std::span<const float> session::evaluate_uncleared(std::vector<int32_t> sequence, prompt_fit* fit_out) {
  prompt_fit f;
  generation_timings t;
  auto logits = sync(sequence, 0, f, t);
  if (fit_out) *fit_out = f;
  return logits;
}

// Tokens at the start a shift keeps: n_keep, leaving at least two positions to shift through.
int64_t session::shift_keep() const noexcept {
  return std::max<int64_t>(0, std::min(p_.n_keep, ctx_.n_ctx() - 2));
}

// The shift generation makes when the window is full, generalised to n_new tokens: keep the
// first n_keep, drop half of the rest (at least what the new tokens need).
int64_t session::shift_for(int64_t n_new) {
  const int64_t n_ctx = ctx_.n_ctx(), n_past = ctx_.n_past();
  const int64_t keep = shift_keep();
  const int64_t need = n_past + n_new - n_ctx;
  if (need <= 0) return 0;
  const int64_t drop = std::min(n_past - keep, std::max({int64_t(1), need, (n_past - keep) / 2}));
  ctx_.shift(keep, drop);
  if (draft_ctx_) {  // the draft model's cache shifts the same way, so it is not evaluated again
    const std::size_t end = std::size_t(keep + drop);
    if (draft_history_.size() >= end && std::equal(history_.begin(), history_.begin() + std::ptrdiff_t(end),
                                                   draft_history_.begin())) {
      draft_ctx_->shift(keep, drop);
      draft_history_.erase(draft_history_.begin() + keep, draft_history_.begin() + keep + drop);
    } else {
      draft_history_.resize(std::min(draft_history_.size(), std::size_t(keep)));
      draft_ctx_->truncate(int64_t(draft_history_.size()));
    }
  }
  history_.erase(history_.begin() + keep, history_.begin() + keep + drop);
  ++n_shifts_;
  n_shift_dropped_ += drop;
  return drop;
}

std::span<const float> session::append(std::span<const int32_t> tokens) {
  cancel_.store(false, std::memory_order_relaxed);
  if (tokens.empty()) throw error(errc::invalid_argument, "eval: no tokens");
  check_ids(tokens);  // before a shift changes anything
  const int64_t n_ctx = ctx_.n_ctx(), n_new = int64_t(tokens.size());
  const int64_t keep = shift_keep();
  if (int64_t(history_.size()) + n_new > n_ctx && p_.context_shift &&
      std::min<int64_t>(keep, int64_t(history_.size())) + n_new <= n_ctx)
    shift_for(n_new);
  if (int64_t(history_.size()) + n_new <= n_ctx) {
    const auto logits = ctx_.eval(tokens);
    history_.insert(history_.end(), tokens.begin(), tokens.end());
    return logits;
  }
  if (p_.policy == context_policy::error) {
    const int64_t over = int64_t(history_.size()) + n_new - n_ctx;
    throw error(errc::context_overflow,
                "eval: the session holds " + std::to_string(history_.size()) + " tokens and " +
                    std::to_string(n_new) + " more do not fit the window of " + std::to_string(n_ctx) + " (" +
                    std::to_string(over) + " too many" +
                    (p_.context_shift ? ", even after a context shift" : "; context shift is off") +
                    "). Reset the session, raise n_ctx, turn context shift on, or choose a context policy");
  }
  std::vector<int32_t> seq = history_;  // the policy decides what the window keeps
  seq.insert(seq.end(), tokens.begin(), tokens.end());
  return evaluate_uncleared(std::move(seq), nullptr);
}

void session::load_window() {
  smp_.set_window(history_);  // the penalty window is the end of the sequence in the cache
}

int32_t session::sample(std::span<const float> logits) {
  load_window();
  return smp_.sample(logits);
}

int64_t session::reserve_for(const generate_params& gp) const {
  // With context shift, generation goes on past the window, so at most half of it is reserved;
  // without, all max_tokens must fit.
  const int64_t n_ctx = ctx_.n_ctx();
  int64_t reserve = gp.max_tokens < 0 ? 1 : std::max<int64_t>(1, gp.max_tokens);
  if (p_.context_shift) reserve = std::min(reserve, std::max<int64_t>(1, n_ctx / 2));
  if (reserve >= n_ctx)
    throw error(errc::invalid_argument, "generate: max_tokens " + std::to_string(gp.max_tokens) +
                                            " leaves no room for a prompt in n_ctx " + std::to_string(n_ctx) +
                                            " (context shift is off)");
  return reserve;
}

generation_result session::generate(std::string_view prompt, const generate_params& gp, const token_callback& cb) {
  return generate(tok().encode(prompt, tok().add_bos()), gp, cb);
}

generation_result session::generate(std::vector<int32_t> seq, const generate_params& gp, const token_callback& cb) {
  // A whole generation is a thread's parallel work done: its idle workers end with it, so that a
  // generation on another thread next (a binding's stream, a program's worker) runs the only
  // team (omp_compat.hpp). Starting a team again costs 0.14-0.33 ms per call (2-core VM).
  const release_omp_workers_at_exit release;
  // Without a vocabulary the model still generates token ids: no text, no EOS id, no stop strings.
  const tokenizer* tk = model_->get_tokenizer();
  if (!tk && !gp.stop.empty())
    throw error(errc::unsupported, "generate: stop strings need a vocabulary, and the model file has none");
  for (const auto& s : gp.stop) {
    if (s.empty()) throw error(errc::invalid_argument, "generate: empty stop string");
    if (utf8::first_invalid(s) != std::string::npos) throw error(errc::invalid_argument, "generate: stop string is not valid UTF-8");
  }
  if (gp.draft_tokens < 0) throw error(errc::invalid_argument, "generate: draft_tokens < 0");
  if (uint32_t(gp.spec) > 1) throw error(errc::invalid_argument, "generate: unknown speculation source");
  if (gp.spec == speculation::draft_model && gp.draft_tokens > 0 && !draft_model_)
    throw error(errc::invalid_argument, "generate: speculation from a draft model, and the session has none (set_draft)");
  cancel_.store(false, std::memory_order_relaxed);
  generation_result r;
  r.spec.source = gp.spec;
  const int64_t n_ctx = ctx_.n_ctx();
  const int64_t reserve = reserve_for(gp);
  std::span<const float> logits;
  try {
    logits = sync(seq, reserve, r.fit, r.timings);
  } catch (const error& e) {
    if (e.code() != errc::cancelled) throw;
    r.finish = finish_reason::cancelled;  // during the prompt: history_ says what the cache kept
    return r;
  }

  detail::stop_text st(tk, gp.stop);
  std::string out;
  bool stop = false;
  // the grammar's mask on a copy of each row the sampler reads
  std::optional<grammar_matcher> gm;
  if (gp.constraint) gm.emplace(gp.constraint, tok());
  std::vector<float> masked;
  const auto constrained = [&](std::span<const float> row) -> std::span<const float> {
    if (!gm) return row;
    masked.assign(row.begin(), row.end());
    gm->mask(masked);
    return masked;
  };
  auto emit = [&](std::string_view text, int32_t token) {
    r.text += text;
    if (cb && !cb(text, token)) {
      r.finish = finish_reason::cancelled;
      stop = true;
    }
  };

  // Speculation: `ahead` holds draft tokens evaluated after history_ whose logits rows follow
  // `logits` in `rows`; a sampled token equal to ahead[0] takes its row without a pass. A draft
  // model's drafts under random sampling are kept by sampler::sample_draft with the distribution
  // each was drawn from (`ahead_q`). Whenever the loop stops or a draft is rejected, the cache is
  // cut back to history_, so it always ends as plain decoding leaves it.
  const bool greedy = p_.sampling.temperature <= 0.0f || p_.sampling.top_k == 1;
  const bool from_model = gp.spec == speculation::draft_model && gp.draft_tokens > 0;
  std::vector<std::vector<std::pair<int32_t, float>>> ahead_q;
  detail::draft_controller drafts(std::min<int32_t>(gp.draft_tokens, 64));
  std::vector<int32_t> ahead, pass;
  std::span<const float> rows;
  std::size_t row = 0, n_vocab = std::size_t(model_->config().n_vocab);
  std::size_t drafted = 0, accepted = 0;
  const auto drop_ahead = [&] {
    if (!ahead.empty()) {
      ctx_.truncate(int64_t(history_.size()));
      drafts.verified(int(drafted), int(accepted));
      ahead.clear();
      ahead_q.clear();
    }
  };

  const auto t0 = clock::now();
  r.finish = finish_reason::max_tokens;
  while (gp.max_tokens < 0 || r.timings.n_generated < gp.max_tokens) {
    if (cancel_.load(std::memory_order_relaxed)) {
      r.finish = finish_reason::cancelled;
      break;
    }
    // The penalty window is the end of the sequence in the cache, not what earlier calls fed
    // the sampler (a chat re-sends the whole dialog every turn).
    int32_t id;
    if (!ahead_q.empty()) {  // a draft model's token, drawn from ahead_q[0]
      load_window();
      id = smp_.sample_draft(constrained(logits), ahead.front(), ahead_q.front());
    } else {
      id = sample(constrained(logits));
    }
    ++r.timings.n_generated;
    if (gm) gm->accept(id);
    if (tk && tk->ends_answer(id) && (gp.stop_at_eos || gm)) {  // EOS or end of turn
      r.finish = finish_reason::eos;
      break;
    }
    r.tokens.push_back(id);
    const bool hit = st.push(id, out);
    emit(out, id);
    if (stop) break;  // the callback cancelled (before any stop string it would have seen)
    if (hit) {
      r.finish = finish_reason::stop_string;
      break;
    }
    if (gp.max_tokens >= 0 && r.timings.n_generated >= gp.max_tokens) break;
    if (!ahead.empty() && ahead.front() == id) {  // a draft the model chose: its row is computed
      ++accepted;
      ++r.spec.accepted;
      history_.push_back(id);
      ahead.erase(ahead.begin());
      if (!ahead_q.empty()) ahead_q.erase(ahead_q.begin());
      ++row;
      logits = rows.subspan(row * n_vocab, n_vocab);
      if (ahead.empty()) drafts.verified(int(drafted), int(accepted));
      continue;
    }
    drop_ahead();
    if (ctx_.n_past() >= n_ctx) {
      if (!p_.context_shift) {
        r.finish = finish_reason::context_full;
        break;
      }
      r.n_shift_dropped += shift_for(1);
      ++r.n_shifts;
    }
    // drafts fit the window after id and never run past max_tokens
    int64_t k = drafts.next();
    k = std::min<int64_t>(k, n_ctx - ctx_.n_past() - 1);
    if (gp.max_tokens >= 0) k = std::min<int64_t>(k, gp.max_tokens - r.timings.n_generated - 1);
    pass.assign(1, id);
    try {
      if (k > 0) {  // drafted after history_ + id, without copying the history every token
        history_.push_back(id);
        std::vector<int32_t> d;
        try {
          d = from_model ? draft_from_model(int(k), greedy ? nullptr : &ahead_q) : detail::lookup_draft(history_, 2, 4, int(k));
        } catch (...) {
          history_.pop_back();
          throw;
        }
        history_.pop_back();
        pass.insert(pass.end(), d.begin(), d.end());
      }
      rows = ctx_.eval(pass, pass.size() > 1);
    } catch (const error& e) {  // a cancel that came after the check above
      if (e.code() != errc::cancelled) throw;
      r.finish = finish_reason::cancelled;
      break;
    }
    history_.push_back(id);
    row = 0;
    logits = rows.subspan(0, n_vocab);
    if (pass.size() > 1) {
      ahead.assign(pass.begin() + 1, pass.end());
      drafted = ahead.size();
      accepted = 0;
      ++r.spec.passes;
      r.spec.drafted += int64_t(drafted);
    }
  }
  drop_ahead();
  r.timings.generation_seconds = seconds_since(t0);
  if (r.finish != finish_reason::cancelled) {  // what was held back, then the end marker
    if (r.finish != finish_reason::stop_string) {
      bool hit = false;
      out = st.finish(hit);
      if (hit) r.finish = finish_reason::stop_string;
    } else {
      out.clear();
    }
    const finish_reason f = r.finish;
    emit(out, -1);
    r.finish = f;  // a callback returning false at the end cancels nothing
  }
  return r;
}

}  // namespace qllm
