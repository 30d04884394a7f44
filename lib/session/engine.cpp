#include "qllm/engine.hpp"

#include <algorithm>
#include <atomic>

#include "omp_compat.hpp"
#include "qllm/error.hpp"
#include "qllm/tokenizer.hpp"
#include "session/lookup.hpp"
#include "session/stop_text.hpp"

namespace qllm {

namespace {
using clock = std::chrono::steady_clock;
double seconds(clock::time_point a, clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }
}  // namespace

struct engine::pending {
  uint64_t id = 0;
  engine_request req;
  prompt_fit fit;
  std::shared_ptr<std::atomic<bool>> cancel;
  clock::time_point submitted;
};

struct engine::slot {
  int32_t seq = 0;
  bool busy = false;
  std::vector<int32_t> history;  // tokens in this sequence's cache (kept after a request for reuse)
  // the request in the slot
  std::unique_ptr<pending> p;
  std::unique_ptr<sampler> smp;
  std::unique_ptr<detail::stop_text> st;
  std::unique_ptr<grammar_matcher> gm;  // the request's grammar (generate_params::constraint)
  std::vector<float> masked;            // a logits row with the grammar's mask
  std::vector<int32_t>* prompt = nullptr;
  int64_t n_done = 0;     // prompt tokens in the cache
  bool decoding = false;  // prompt done; `last` is the token to run next
  int32_t last = 0;
  uint64_t order = 0;     // admission order: older prompts get the step's budget first
  // speculation by prompt lookup: `pass` is this step's tokens of a decoding request (`last`,
  // then its drafts)
  std::unique_ptr<detail::draft_controller> drafts;
  std::vector<int32_t> pass;
  engine_result r;
  clock::time_point t_admit, t_prompt, t_gen;
  std::string out;
};

engine::engine(std::shared_ptr<const model> m, const engine_params& p) : model_(std::move(m)), p_(p) {
  if (!model_) throw error(errc::invalid_argument, "engine: no model");
  if (p_.n_slots < 1 || p_.n_slots > 256)
    throw error(errc::invalid_argument, "engine: n_slots " + std::to_string(p_.n_slots) + " out of range [1, 256]");
  if (p_.max_waiting < 0 || p_.max_waiting > 1000000)
    throw error(errc::invalid_argument, "engine: max_waiting " + std::to_string(p_.max_waiting) + " out of range");
  if (p_.prompt_chunk < 1)
    throw error(errc::invalid_argument, "engine: prompt_chunk " + std::to_string(p_.prompt_chunk) + " must be >= 1");
  if (p_.ctx.n_batch < p_.n_slots)
    throw error(errc::invalid_argument, "engine: n_batch " + std::to_string(p_.ctx.n_batch) +
                                            " must be at least n_slots " + std::to_string(p_.n_slots) +
                                            " (one token of every decoding request per step)");
  batch_ = std::make_unique<batch_context>(model_, p_.ctx, p_.n_slots);
  if (batch_->n_batch() < p_.n_slots)
    throw error(errc::invalid_argument, "engine: n_ctx " + std::to_string(batch_->n_ctx()) +
                                            " is smaller than n_slots (tokens per step are at most n_ctx)");
  for (int i = 0; i < p_.n_slots; ++i) {
    slots_.push_back(std::make_unique<slot>());
    slots_.back()->seq = i;
  }
  release_omp_workers();  // the engine's thread computes from now on: one team of workers
  thread_ = std::thread([this] { run(); });
}

engine::~engine() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
    draining_ = true;
    for (auto& [id, flag] : cancel_flags_) flag->store(true);
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

int64_t engine::n_ctx() const noexcept { return batch_->n_ctx(); }

engine::submitted engine::submit(engine_request r) {
  const model_config& c = model_->config();
  const tokenizer* tk = model_->get_tokenizer();
  if (r.prompt.empty()) throw error(errc::invalid_argument, "empty prompt (no tokens)");
  for (std::size_t i = 0; i < r.prompt.size(); ++i)
    if (r.prompt[i] < 0 || r.prompt[i] >= c.n_vocab)
      throw error(errc::invalid_argument, "token " + std::to_string(r.prompt[i]) + " at index " + std::to_string(i) +
                                              " is outside the vocabulary");
  if (!tk && !r.gen.stop.empty())
    throw error(errc::unsupported, "stop strings need a vocabulary, and the model file has none");
  for (const auto& s : r.gen.stop) {
    if (s.empty()) throw error(errc::invalid_argument, "empty stop string");
    if (utf8::first_invalid(s) != std::string::npos) throw error(errc::invalid_argument, "stop string is not valid UTF-8");
  }
  if (r.n_keep < 0) throw error(errc::invalid_argument, "n_keep must be >= 0");
  sampler check(r.sampling);  // validates the settings
  (void)check;
  if (r.gen.draft_tokens < 0) throw error(errc::invalid_argument, "draft_tokens must be >= 0");
  if (r.gen.draft_tokens > 0 && r.gen.spec != speculation::lookup)
    throw error(errc::unsupported, "the engine speculates by prompt lookup only (no draft model)");
  const int64_t n_ctx = batch_->n_ctx();
  const int64_t reserve = r.gen.max_tokens < 0 ? 1 : std::max<int64_t>(1, r.gen.max_tokens);
  if (reserve >= n_ctx)
    throw error(errc::invalid_argument, "max_tokens " + std::to_string(r.gen.max_tokens) +
                                            " leaves no room for a prompt in the window of " + std::to_string(n_ctx));
  auto p = std::make_unique<pending>();
  p->fit = fit_prompt(r.prompt, n_ctx, reserve, r.policy, r.n_keep);
  p->req = std::move(r);
  p->cancel = std::make_shared<std::atomic<bool>>(false);
  p->submitted = clock::now();
  submitted out;
  out.fit = p->fit;
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (draining_) throw error(errc::busy, "the server is shutting down");
    const int64_t free_slots = p_.n_slots - active_;
    if (int64_t(waiting_.size()) >= p_.max_waiting + std::max<int64_t>(0, free_slots))
      throw error(errc::busy, "all " + std::to_string(p_.n_slots) + " slots are busy and " +
                                  std::to_string(waiting_.size()) + " requests are waiting");
    p->id = next_id_++;
    out.id = p->id;
    cancel_flags_[p->id] = p->cancel;
    waiting_.push_back(std::move(p));
    ++st_.submitted;
  }
  cv_.notify_all();
  return out;
}

void engine::cancel(uint64_t id) noexcept {
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (auto it = cancel_flags_.find(id); it != cancel_flags_.end()) it->second->store(true);
  }
  cv_.notify_all();  // a queued request leaves the queue now, not when a slot frees
}

void engine::shutdown(std::chrono::steady_clock::duration deadline) {
  const auto until = clock::now() + deadline;
  std::unique_lock<std::mutex> lk(mu_);
  draining_ = true;
  if (!idle_cv_.wait_until(lk, until, [&] { return active_ == 0 && finishing_ == 0 && waiting_.empty(); })) {
    for (auto& [id, flag] : cancel_flags_) flag->store(true);
    cv_.notify_all();
    idle_cv_.wait(lk, [&] { return active_ == 0 && finishing_ == 0 && waiting_.empty(); });
  }
}

engine::stats engine::get_stats() const {
  std::lock_guard<std::mutex> lk(mu_);
  stats s = st_;
  s.active = active_;
  s.waiting = int64_t(waiting_.size());
  return s;
}

// Ends the request in `s` (on the engine's thread): the held-back text, then on_done.
void engine::finish(slot& s, const std::string& err) {
  engine_result& r = s.r;
  const clock::time_point now = clock::now();
  if (s.decoding) r.gen.timings.generation_seconds = seconds(s.t_gen, now);
  if (!err.empty()) {
    r.error = err;
    r.gen.finish = finish_reason::cancelled;
  } else if (r.gen.finish != finish_reason::cancelled) {
    std::string rest;
    if (r.gen.finish != finish_reason::stop_string) {
      bool hit = false;
      rest = s.st->finish(hit);
      if (hit) r.gen.finish = finish_reason::stop_string;
    }
    r.gen.text += rest;
    if (s.p->req.on_token) {
      try {
        s.p->req.on_token(rest, -1);  // its return value cancels nothing now
      } catch (...) {
      }
    }
  }
  // counted as ended before on_done runs, so a caller woken by it sees the stats it expects;
  // shutdown() still waits for the callback (finishing_)
  {
    std::lock_guard<std::mutex> lk(mu_);
    cancel_flags_.erase(s.p->id);
    --active_;
    ++finishing_;
    ++st_.finished;
    st_.generated_tokens += uint64_t(r.gen.timings.n_generated);
  }
  if (s.p->req.on_done) {
    try {
      s.p->req.on_done(r);
    } catch (...) {
    }
  }
  {
    std::lock_guard<std::mutex> lk(mu_);
    --finishing_;
  }
  s.busy = false;
  s.p.reset();
  s.smp.reset();
  s.st.reset();
  s.gm.reset();
  s.r = engine_result{};
  idle_cv_.notify_all();
}

void engine::run() {
  std::vector<slot*> active;
  uint64_t order = 0;
  for (;;) {
    {
      std::unique_lock<std::mutex> lk(mu_);
      cv_.wait(lk, [&] { return stop_ || !waiting_.empty() || active_ > 0; });
      if (stop_) {
        // every request still here ends as cancelled
        for (auto& s : slots_)
          if (s->busy) {
            lk.unlock();
            s->r.gen.finish = finish_reason::cancelled;
            finish(*s, "");
            lk.lock();
          }
        while (!waiting_.empty()) {
          auto p = std::move(waiting_.front());
          waiting_.pop_front();
          cancel_flags_.erase(p->id);
          ++st_.finished;
          lk.unlock();
          engine_result r;
          r.gen.finish = finish_reason::cancelled;
          r.gen.fit = p->fit;
          if (p->req.on_done) {
            try {
              p->req.on_done(r);
            } catch (...) {
            }
          }
          lk.lock();
        }
        idle_cv_.notify_all();
        return;
      }
      // queued requests cancelled before they got a slot end now (their place in the queue and
      // their callers' threads are freed)
      for (auto it = waiting_.begin(); it != waiting_.end();) {
        if (!(*it)->cancel->load(std::memory_order_relaxed)) {
          ++it;
          continue;
        }
        auto p = std::move(*it);
        it = waiting_.erase(it);
        cancel_flags_.erase(p->id);
        ++st_.finished;
        ++finishing_;
        lk.unlock();
        engine_result r;
        r.gen.finish = finish_reason::cancelled;
        r.gen.fit = p->fit;
        r.queue_seconds = seconds(p->submitted, clock::now());
        if (p->req.on_done) {
          try {
            p->req.on_done(r);
          } catch (...) {
          }
        }
        lk.lock();
        --finishing_;
        it = waiting_.begin();  // the queue may have changed while unlocked
        idle_cv_.notify_all();
      }
      // admit waiting requests into free slots: the free slot whose cached sequence shares the
      // longest prefix with the prompt (a chat re-sends its whole dialog)
      while (!waiting_.empty() && active_ < p_.n_slots) {
        auto p = std::move(waiting_.front());
        waiting_.pop_front();
        slot* best = nullptr;
        std::size_t best_common = 0;
        for (auto& s : slots_) {
          if (s->busy) continue;
          const auto& h = s->history;
          const auto& q = p->req.prompt;
          std::size_t common = 0;
          while (common < h.size() && common < q.size() && h[common] == q[common]) ++common;
          if (!best || common > best_common) {
            best = s.get();
            best_common = common;
          }
        }
        slot& s = *best;
        s.busy = true;
        ++active_;
        s.p = std::move(p);
        s.prompt = &s.p->req.prompt;
        best_common = std::min(best_common, s.prompt->size() - 1);  // the last token runs again for its logits
        batch_->truncate(s.seq, int64_t(best_common));
        s.history.resize(best_common);
        s.n_done = int64_t(best_common);
        s.decoding = false;
        s.order = order++;
        s.r = engine_result{};
        s.r.gen.fit = s.p->fit;
        s.r.gen.timings.n_reused = int64_t(best_common);
        s.t_admit = clock::now();
        s.r.queue_seconds = seconds(s.p->submitted, s.t_admit);
      }
    }
    active.clear();
    for (auto& s : slots_)
      if (s->busy) active.push_back(s.get());
    // new slots need their sampler and text state (outside the lock: allocation)
    for (slot* s : active) {
      if (s->smp) continue;
      try {
        s->smp = std::make_unique<sampler>(s->p->req.sampling);
        s->st = std::make_unique<detail::stop_text>(model_->get_tokenizer(), s->p->req.gen.stop);
        s->drafts = std::make_unique<detail::draft_controller>(std::min<int32_t>(s->p->req.gen.draft_tokens, 64));
        if (s->p->req.gen.constraint) {
          const tokenizer* tk = model_->get_tokenizer();
          if (!tk) throw error(errc::unsupported, "a grammar needs a vocabulary, and the model file has none");
          s->gm = std::make_unique<grammar_matcher>(s->p->req.gen.constraint, *tk);
        }
      } catch (const std::exception& e) {
        finish(*s, e.what());
      }
    }
    active.erase(std::remove_if(active.begin(), active.end(), [](slot* s) { return !s->busy; }), active.end());
    if (!active.empty()) step(active);
  }
}

// One forward pass: a token of every decoding request, then prompt chunks (oldest first).
void engine::step(std::vector<slot*>& active) {
  // cancellations first
  for (slot* s : active) {
    if (s->p->cancel->load(std::memory_order_relaxed)) {
      s->r.gen.finish = finish_reason::cancelled;
      finish(*s, "");
    }
  }
  active.erase(std::remove_if(active.begin(), active.end(), [](slot* s) { return !s->busy; }), active.end());
  if (active.empty()) return;
  std::sort(active.begin(), active.end(), [](const slot* a, const slot* b) { return a->order < b->order; });

  std::vector<batch_context::entry> entries;
  std::vector<slot*> who;
  std::vector<int64_t> chunk;
  entries.reserve(active.size());
  int64_t n_decoding = 0;
  for (slot* s : active) n_decoding += s->decoding;
  int64_t budget = batch_->n_batch() - n_decoding;
  const int64_t n_ctx = batch_->n_ctx();
  for (slot* s : active) {
    if (s->decoding) {
      // drafts after `last` from the request's own sequence: they fit its window, never run past
      // max_tokens and share the step's budget with prompt chunks (decoding requests first)
      s->pass.assign(1, s->last);
      const generate_params& g = s->p->req.gen;
      int64_t k = s->drafts->next();
      k = std::min<int64_t>({k, n_ctx - int64_t(s->history.size()) - 1, budget});
      if (g.max_tokens >= 0) k = std::min<int64_t>(k, g.max_tokens - s->r.gen.timings.n_generated - 1);
      if (k > 0) {
        s->history.push_back(s->last);
        const auto d = detail::lookup_draft(s->history, 2, 4, int(k));
        s->history.pop_back();
        s->pass.insert(s->pass.end(), d.begin(), d.end());
        budget -= int64_t(d.size());
      }
      batch_context::entry en{s->seq, std::span<const int32_t>(s->pass), true};
      en.all_logits = s->pass.size() > 1;
      entries.push_back(en);
      who.push_back(s);
      chunk.push_back(int64_t(s->pass.size()));
      continue;
    }
    const int64_t left = int64_t(s->prompt->size()) - s->n_done;
    int64_t take = std::min(left, budget);
    if (n_decoding > 0) take = std::min(take, p_.prompt_chunk);
    if (take <= 0) continue;
    budget -= take;
    if (s->n_done == s->r.gen.timings.n_reused) s->t_prompt = clock::now();
    entries.push_back({s->seq, std::span<const int32_t>(s->prompt->data() + s->n_done, std::size_t(take)),
                       take == left});
    who.push_back(s);
    chunk.push_back(take);
  }
  if (entries.empty()) return;
  try {
    batch_->eval(entries);
  } catch (const std::exception& e) {
    // nothing was run (eval checks first): fail the requests of this step, forget their caches
    for (slot* s : who) {
      batch_->clear(s->seq);
      s->history.clear();
      finish(*s, std::string("evaluation failed: ") + e.what());
    }
    return;
  }
  {
    std::lock_guard<std::mutex> lk(mu_);
    ++st_.steps;
  }
  const tokenizer* tk = model_->get_tokenizer();
  for (std::size_t i = 0; i < entries.size(); ++i) {
    slot& s = *who[i];
    engine_result& r = s.r;
    const auto toks = entries[i].tokens;
    if (!s.decoding) {
      s.history.insert(s.history.end(), toks.begin(), toks.end());
      s.n_done += chunk[i];
      {
        std::lock_guard<std::mutex> lk(mu_);
        st_.prompt_tokens += uint64_t(chunk[i]);
      }
      if (!entries[i].logits) continue;
      const auto now = clock::now();
      r.gen.timings.n_prompt = s.n_done - r.gen.timings.n_reused;
      r.gen.timings.prompt_seconds = seconds(s.t_prompt, now);
      s.decoding = true;
      s.t_gen = now;
      sample_from(s, batch_->logits(i), tk, n_ctx);
      continue;
    }
    // a decoding request: `last` and its drafts ran; each draft the sampled token equals is kept
    // with the next row of logits, the rest are cut from the cache
    // (the counts go into the result before a token can finish the request and hand it over)
    s.history.push_back(toks[0]);
    const std::size_t n_drafts = toks.size() - 1;
    if (n_drafts) {
      ++r.gen.spec.passes;
      r.gen.spec.drafted += int64_t(n_drafts);
    }
    std::size_t kept = 0;
    for (;;) {
      const auto logits = n_drafts ? batch_->logits(i, kept) : batch_->logits(i);
      const int32_t id = sample_from(s, logits, tk, n_ctx);
      if (id < 0 || kept == n_drafts || toks[1 + kept] != id) break;  // finished, or no draft left to keep
      s.history.push_back(id);
      ++kept;
      ++r.gen.spec.accepted;
    }
    if (n_drafts) {
      batch_->truncate(s.seq, int64_t(s.history.size()));  // also after the request ended: reuse
      s.drafts->verified(int(n_drafts), int(kept));
    }
  }
}

int32_t engine::sample_from(slot& s, std::span<const float> logits, const tokenizer* tk, int64_t n_ctx) {
  engine_result& r = s.r;
  try {
    // the penalty window is the end of the sequence in the cache, as in session::sample
    s.smp->set_window(s.history);
    if (s.gm) {  // the grammar's mask on a copy of the row, as in session::generate
      s.masked.assign(logits.begin(), logits.end());
      s.gm->mask(s.masked);
      logits = s.masked;
    }
    const int32_t id = s.smp->sample(logits);
    if (s.gm) s.gm->accept(id);
    ++r.gen.timings.n_generated;
    if (r.gen.timings.n_generated == 1) r.first_token_seconds = seconds(s.p->submitted, clock::now());
    const generate_params& gp = s.p->req.gen;
    if ((gp.stop_at_eos || s.gm) && tk && tk->ends_answer(id)) {  // EOS or end of turn
      r.gen.finish = finish_reason::eos;
      finish(s, "");
      return -1;
    }
    r.gen.tokens.push_back(id);
    const bool hit = s.st->push(id, s.out);
    r.gen.text += s.out;
    bool go_on = true;
    if (s.p->req.on_token) {
      try {
        go_on = s.p->req.on_token(s.out, id);
      } catch (...) {
        go_on = false;
      }
    }
    if (!go_on) {
      r.gen.finish = finish_reason::cancelled;
      finish(s, "");
    } else if (hit) {
      r.gen.finish = finish_reason::stop_string;
      finish(s, "");
    } else if (gp.max_tokens >= 0 && r.gen.timings.n_generated >= gp.max_tokens) {
      r.gen.finish = finish_reason::max_tokens;
      finish(s, "");
    } else if (int64_t(s.history.size()) >= n_ctx) {
      r.gen.finish = finish_reason::context_full;
      finish(s, "");
    } else {
      s.last = id;
      return id;
    }
  } catch (const std::exception& e) {
    finish(s, std::string("sampling failed: ") + e.what());
  }
  return -1;
}

}  // namespace qllm
