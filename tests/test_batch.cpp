// Multi-sequence batches and the continuous-batching engine on small random-weight models:
// batched logits equal solo logits bit for bit, and a request's output does not depend on what
// else runs.
#include <doctest/doctest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "omp_compat.hpp"
#include "qllm/engine.hpp"
#include "qllm/error.hpp"
#include "qllm/random_model.hpp"
#include "qllm/session.hpp"
#include "test_util.hpp"

using namespace qllm;

namespace {

struct temp_model {
  std::string path;
  std::shared_ptr<const model> m;
  temp_model(const std::string& tag, random_model_spec spec) {
    path = "/tmp/qllm_test_batch_" + std::to_string(getpid()) + "_" + tag + ".gguf";
    write_random_model(path, spec);
    m = model::load(path);
  }
  ~temp_model() { std::remove(path.c_str()); }
};

const temp_model& small_gqa() {  // dim 256, 4 layers, 8 query heads over 2 KV heads
  static temp_model t("small", random_model_preset("small"));
  return t;
}

const temp_model& tiny() {
  static temp_model t("tiny", random_model_spec{});
  return t;
}

std::vector<int32_t> tokens(int n, int32_t salt, int32_t n_vocab) {
  std::vector<int32_t> t{1};
  for (int i = 1; i < n; ++i) t.push_back(int32_t(3 + (i * 37 + salt * 101) % (n_vocab - 3)));
  return t;
}

// What one request gives, and its streamed text.
struct outcome {
  engine_result r;
  std::string streamed;
  int ends = 0;  // on_token calls with -1
  int done = 0;  // on_done calls
};

// Submits every request, then waits for all of them.
std::vector<outcome> run_all(engine& e, std::vector<engine_request> reqs) {
  std::vector<outcome> out(reqs.size());
  std::mutex mu;
  std::condition_variable cv;
  std::size_t finished = 0;
  for (std::size_t i = 0; i < reqs.size(); ++i) {
    reqs[i].on_token = [&out, i](std::string_view text, int32_t tok) {
      out[i].streamed += text;
      out[i].ends += tok < 0;
      return true;
    };
    reqs[i].on_done = [&, i](const engine_result& r) {
      std::lock_guard<std::mutex> lk(mu);
      out[i].r = r;
      ++out[i].done;
      ++finished;
      cv.notify_all();
    };
    e.submit(std::move(reqs[i]));
  }
  std::unique_lock<std::mutex> lk(mu);
  cv.wait(lk, [&] { return finished == out.size(); });
  return out;
}

#ifdef _OPENMP
// Threads of this process now (entries of /proc/self/task).
int process_threads() {
  int n = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator("/proc/self/task")) ++n;
  return n;
}

// Waits up to 2 s for the thread count to become `want` (a joined thread leaves /proc a moment
// after pthread_join returns); the count then.
int wait_threads(int want) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  int n = process_threads();
  while (n != want && std::chrono::steady_clock::now() < end) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    n = process_threads();
  }
  return n;
}

// The thread count once two readings 20 ms apart agree (at most 2 s).
int settled_threads() {
  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  int n = process_threads();
  for (;;) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    const int again = process_threads();
    if (again == n || std::chrono::steady_clock::now() >= end) return again;
    n = again;
  }
}

// Starts this thread's OpenMP team of two (one idle worker stays after the region); true if it ran.
bool start_team_of_two() {
  std::atomic<int> ran{0};
#pragma omp parallel num_threads(2)
  ran += 1;
  return ran == 2;
}
#endif

engine_request greedy_request(std::vector<int32_t> prompt, int64_t max_tokens) {
  engine_request r;
  r.prompt = std::move(prompt);
  r.sampling.temperature = 0;
  r.gen.max_tokens = max_tokens;
  return r;
}

}  // namespace

TEST_CASE("batch_context: each sequence's logits equal a solo context's, bit for bit") {
  for (const kv_type kv : {kv_type::f16, kv_type::f32}) {
    for (const temp_model* tm : {&tiny(), &small_gqa()}) {
      CAPTURE(int(kv));
      const int64_t V = tm->m->config().n_vocab;
      context_params cp;
      cp.n_ctx = 96;
      cp.n_batch = 13;  // entries straddle passes
      cp.kv = kv;
      const int n_seq = 5;
      batch_context b(tm->m, cp, n_seq);
      context_params solo_p = cp;
      solo_p.n_batch = 512;
      std::vector<std::unique_ptr<context>> solo;
      for (int s = 0; s < n_seq; ++s) solo.push_back(std::make_unique<context>(tm->m, solo_p));
      // prompts of different lengths, then decode steps in which sequences come and go
      std::vector<std::vector<int32_t>> seqs;
      for (int s = 0; s < n_seq; ++s) seqs.push_back(tokens(3 + 7 * s, s, int32_t(V)));
      std::vector<batch_context::entry> first;
      for (int s = 0; s < n_seq; ++s) first.push_back({s, seqs[std::size_t(s)], s != 2});
      b.eval(first);
      for (int s = 0; s < n_seq; ++s) {
        const auto want = solo[std::size_t(s)]->eval(seqs[std::size_t(s)]);
        CHECK(b.n_past(s) == int64_t(seqs[std::size_t(s)].size()));
        if (s == 2) {
          CHECK_THROWS_AS(b.logits(std::size_t(s)), error);
          continue;
        }
        const auto got = b.logits(std::size_t(s));
        REQUIRE(got.size() == std::size_t(V));
        CHECK(test::count_bit_differences(got.data(), want.data(), got.size()) == 0);
      }
      for (int step = 0; step < 12; ++step) {
        std::vector<batch_context::entry> es;
        std::vector<int32_t> next(n_seq);
        std::vector<int> who;
        for (int s = n_seq - 1; s >= 0; --s) {  // order differs from sequence order
          if ((step + s) % 3 == 0) continue;    // not every sequence every step
          next[std::size_t(s)] = int32_t(5 + (step * 13 + s * 7) % (V - 5));
          es.push_back({s, std::span<const int32_t>(&next[std::size_t(s)], 1), true});
          who.push_back(s);
        }
        if (step == 5) {  // a prompt chunk among the decoding tokens
          seqs[2] = tokens(9, 77, int32_t(V));
          b.clear(2);
          solo[2]->clear();
        }
        b.eval(es);
        for (std::size_t i = 0; i < es.size(); ++i) {
          const int s = who[i];
          const auto want = solo[std::size_t(s)]->eval(std::span<const int32_t>(&next[std::size_t(s)], 1));
          CHECK(test::count_bit_differences(b.logits(i).data(), want.data(), want.size()) == 0);
          CHECK(b.n_past(s) == solo[std::size_t(s)]->n_past());
        }
      }
    }
  }
}

TEST_CASE("batch_context: all_logits entries give every token's logits, equal to a solo context's") {
  const auto& m = small_gqa().m;
  const int64_t V = m->config().n_vocab;
  context_params cp;
  cp.n_ctx = 96;
  cp.n_batch = 13;  // entries straddle passes
  batch_context b(m, cp, 4);
  context_params solo_p = cp;
  solo_p.n_batch = 512;
  std::vector<std::vector<int32_t>> seqs;
  std::vector<batch_context::entry> es;
  for (int s = 0; s < 4; ++s) seqs.push_back(tokens(5 + 4 * s, s + 9, int32_t(V)));
  for (int s = 0; s < 4; ++s) {
    batch_context::entry e{s, seqs[std::size_t(s)], s != 3};
    e.all_logits = s % 2 == 1;  // 1 and 3: every row; 0 and 2: the last; 3 asks for no last row but all
    es.push_back(e);
  }
  b.eval(es);
  for (int s = 0; s < 4; ++s) {
    CAPTURE(s);
    context solo(m, solo_p);
    const auto all = solo.eval(seqs[std::size_t(s)], true);
    const std::size_t n = seqs[std::size_t(s)].size();
    if (s % 2 == 1) {
      for (std::size_t j = 0; j < n; ++j)
        CHECK(test::count_bit_differences(b.logits(std::size_t(s), j).data(), all.data() + j * std::size_t(V),
                                          std::size_t(V)) == 0);
      CHECK_THROWS_AS(b.logits(std::size_t(s), n), error);
      CHECK(test::count_bit_differences(b.logits(std::size_t(s)).data(), all.data() + (n - 1) * std::size_t(V),
                                        std::size_t(V)) == 0);
    } else {
      CHECK(test::count_bit_differences(b.logits(std::size_t(s)).data(), all.data() + (n - 1) * std::size_t(V),
                                        std::size_t(V)) == 0);
      CHECK_THROWS_AS(b.logits(std::size_t(s), 0), error);
    }
  }
}

TEST_CASE("batch_context: bad entries change nothing; cancel restores every sequence") {
  const auto& m = tiny().m;
  context_params cp;
  cp.n_ctx = 32;
  cp.n_batch = 8;
  batch_context b(m, cp, 3);
  const auto t = tokens(10, 1, 512);
  b.eval(std::vector<batch_context::entry>{{0, t, true}, {1, t, true}});
  auto past = [&] { return std::vector<int64_t>{b.n_past(0), b.n_past(1), b.n_past(2)}; };
  const auto before = past();
  const std::vector<int32_t> bad{1, 600};
  const std::vector<int32_t> none;
  const std::vector<int32_t> many(30, 5);
  CHECK_THROWS_WITH_AS(b.eval(std::vector<batch_context::entry>{{0, t, true}, {3, t, true}}),
                       doctest::Contains("sequence 3 out of range"), error);
  CHECK_THROWS_WITH_AS(b.eval(std::vector<batch_context::entry>{{1, t, true}, {1, t, true}}),
                       doctest::Contains("appears twice"), error);
  CHECK_THROWS_WITH_AS(b.eval(std::vector<batch_context::entry>{{2, t, true}, {0, bad, true}}),
                       doctest::Contains("outside the vocabulary"), error);
  CHECK_THROWS_AS(b.eval(std::vector<batch_context::entry>{{2, none, true}}), error);
  CHECK_THROWS_AS(b.eval(std::vector<batch_context::entry>{}), error);
  try {
    b.eval(std::vector<batch_context::entry>{{2, t, true}, {0, many, true}});
    FAIL("no overflow");
  } catch (const error& e) {
    CHECK(e.code() == errc::context_overflow);
  }
  CHECK(past() == before);
  std::atomic<bool> stop{true};
  b.set_abort_flag(&stop);
  try {
    b.eval(std::vector<batch_context::entry>{{2, t, true}, {0, t, true}});
    FAIL("not cancelled");
  } catch (const error& e) {
    CHECK(e.code() == errc::cancelled);
  }
  CHECK(past() == before);
  stop = false;
  b.eval(std::vector<batch_context::entry>{{2, t, true}});
  CHECK(b.n_past(2) == 10);
  CHECK_NOTHROW(b.logits(0));
  CHECK_THROWS_AS(b.eval(std::vector<batch_context::entry>{{0, bad, true}}), error);
  CHECK_THROWS_AS(b.logits(0), error);  // a failed eval leaves no stale logits
  // a size no buffer can have is refused before it is used as a count
  CHECK_THROWS_AS(b.eval(std::vector<batch_context::entry>{{0, std::span<const int32_t>(t.data(), SIZE_MAX / 8), true}}),
                  error);
  CHECK(past() == std::vector<int64_t>{10, 10, 10});
  CHECK_THROWS_AS(b.truncate(2, 11), error);
  CHECK_THROWS_AS(b.n_past(-1), error);
  CHECK_THROWS_AS(batch_context(m, cp, 0), error);
  CHECK_THROWS_AS(batch_context(m, cp, 100000), error);
}

TEST_CASE("engine: greedy and seeded answers are the same alone, batched with 7 others, and as a session's") {
  const auto& m = small_gqa().m;
  const int32_t V = int32_t(m->config().n_vocab);
  engine_params ep;
  ep.ctx.n_ctx = 160;
  ep.ctx.n_batch = 64;
  ep.n_slots = 8;
  ep.prompt_chunk = 5;  // prompts interleave with decoding in small chunks
  std::vector<engine_request> reqs;
  for (int i = 0; i < 8; ++i) {
    engine_request r = greedy_request(tokens(4 + 9 * i, i, V), 20 + 3 * i);
    if (i % 2) {  // seeded sampling with penalties
      r.sampling.temperature = 0.9f;
      r.sampling.seed = 1000 + uint64_t(i);
      r.sampling.repeat_penalty = 1.2f;
      r.sampling.frequency_penalty = 0.1f;
    }
    reqs.push_back(r);
  }
  std::vector<outcome> alone;
  {
    engine_params one = ep;
    one.n_slots = 1;
    engine e(m, one);
    for (const auto& r : reqs) alone.push_back(run_all(e, {r})[0]);
  }
  engine e(m, ep);
  const auto together = run_all(e, reqs);
  for (std::size_t i = 0; i < reqs.size(); ++i) {
    CAPTURE(i);
    CHECK(together[i].done == 1);
    CHECK(together[i].ends == 1);
    CHECK(together[i].r.error.empty());
    CHECK(together[i].r.gen.tokens == alone[i].r.gen.tokens);
    CHECK(together[i].r.gen.text == alone[i].r.gen.text);
    CHECK(together[i].streamed == together[i].r.gen.text);
    CHECK(together[i].r.gen.finish == alone[i].r.gen.finish);
    CHECK(together[i].r.gen.timings.n_generated == int64_t(together[i].r.gen.tokens.size()) +
                                                       (together[i].r.gen.finish == finish_reason::eos));
    // a fresh session with the same settings picks the same tokens
    session_params sp;
    sp.ctx.n_ctx = ep.ctx.n_ctx;
    sp.sampling = reqs[i].sampling;
    sp.context_shift = false;
    session s(m, sp);
    const auto g = s.generate(reqs[i].prompt, reqs[i].gen);
    CHECK(g.tokens == together[i].r.gen.tokens);
    CHECK(g.text == together[i].r.gen.text);
  }
  const auto st = e.get_stats();
  CHECK(st.active == 0);
  CHECK(st.waiting == 0);
  CHECK(st.finished == 8);
  CHECK(st.steps > 0);
}

TEST_CASE("engine: speculation by lookup gives every request the tokens it gets without, alone or batched") {
  const auto& m = tiny().m;
  const int32_t V = int32_t(m->config().n_vocab);
  engine_params ep;
  ep.ctx.n_ctx = 256;
  ep.ctx.n_batch = 24;  // drafts compete with prompt chunks for the step
  ep.n_slots = 6;
  ep.prompt_chunk = 7;
  std::vector<engine_request> plain;
  for (int i = 0; i < 6; ++i) {
    auto prompt = tokens(6 + 5 * i, i + 20, V);  // a prompt that repeats itself: drafts exist
    const auto again = prompt;
    prompt.insert(prompt.end(), again.begin() + 1, again.end());
    engine_request r = greedy_request(prompt, 120 + 9 * i);
    if (i % 3 == 1) {
      r.sampling.temperature = 0.8f;
      r.sampling.seed = 77 + uint64_t(i);
      r.sampling.repeat_penalty = 1.1f;
    }
    if (i == 5) r.gen.stop = {"e"};
    plain.push_back(r);
  }
  auto spec = plain;
  for (auto& r : spec) r.gen.draft_tokens = 4 + int32_t(r.prompt.size() % 5);
  engine e(m, ep);
  const auto want = run_all(e, plain);
  const auto got = run_all(e, spec);
  std::vector<outcome> alone;
  {
    engine_params one = ep;
    one.n_slots = 1;
    engine e1(m, one);
    for (const auto& r : spec) alone.push_back(run_all(e1, {r})[0]);
  }
  int64_t drafted = 0, accepted = 0;
  for (std::size_t i = 0; i < spec.size(); ++i) {
    CAPTURE(i);
    CHECK(got[i].r.error.empty());
    CHECK(got[i].r.gen.tokens == want[i].r.gen.tokens);
    CHECK(got[i].r.gen.text == want[i].r.gen.text);
    CHECK(got[i].streamed == want[i].streamed);
    CHECK(got[i].r.gen.finish == want[i].r.gen.finish);
    CHECK(alone[i].r.gen.tokens == got[i].r.gen.tokens);
    CHECK(want[i].r.gen.spec.drafted == 0);
    CHECK(got[i].r.gen.spec.accepted <= got[i].r.gen.spec.drafted);
    drafted += got[i].r.gen.spec.drafted;
    accepted += got[i].r.gen.spec.accepted;
  }
  MESSAGE("engine lookup: " << accepted << " of " << drafted << " drafts kept");
  CHECK(accepted > 0);
  CHECK(drafted > accepted);
  // the caches were cut back to what each request kept: a request continuing one reuses it and
  // decodes as a fresh engine does
  auto next = greedy_request(want[0].r.gen.tokens, 10);
  next.prompt.insert(next.prompt.begin(), plain[0].prompt.begin(), plain[0].prompt.end());
  engine fresh(m, ep);
  const auto a = run_all(e, {next});
  const auto b = run_all(fresh, {next});
  CHECK(a[0].r.gen.tokens == b[0].r.gen.tokens);
  CHECK(a[0].r.gen.timings.n_reused > 0);
  // a draft model is not the engine's
  auto bad = spec[0];
  bad.gen.spec = speculation::draft_model;
  CHECK_THROWS_AS(e.submit(bad), error);
  bad.gen.spec = speculation::lookup;
  bad.gen.draft_tokens = -1;
  CHECK_THROWS_AS(e.submit(bad), error);
}

TEST_CASE("engine: stop strings, limits, full windows, cancels and a bounded queue") {
  const auto& m = tiny().m;
  const int32_t V = int32_t(m->config().n_vocab);
  engine_params ep;
  ep.ctx.n_ctx = 48;
  ep.ctx.n_batch = 16;
  ep.n_slots = 2;
  ep.max_waiting = 1;
  engine e(m, ep);

  SUBCASE("a stop string cuts the text where a session cuts it") {
    auto base = run_all(e, {greedy_request(tokens(5, 3, V), 30)})[0];
    REQUIRE(base.r.gen.text.size() > 6);
    const std::size_t at = test::ascii_run(base.r.gen.text, 2, 2);
    REQUIRE(at != std::string::npos);
    auto r = greedy_request(tokens(5, 3, V), 30);
    r.gen.stop = {base.r.gen.text.substr(at, 2)};
    const auto got = run_all(e, {r})[0];
    CHECK(got.r.gen.finish == finish_reason::stop_string);
    CHECK(got.r.gen.text == base.r.gen.text.substr(0, base.r.gen.text.find(r.gen.stop[0])));
    CHECK(got.streamed == got.r.gen.text);
  }
  SUBCASE("the window fills: context_full; max_tokens beyond it: the prompt does not fit") {
    auto r = greedy_request(tokens(40, 1, V), -1);
    r.gen.stop_at_eos = false;
    const auto got = run_all(e, {r})[0];
    CHECK(got.r.gen.finish == finish_reason::context_full);
    CHECK(got.r.gen.timings.n_generated == 48 - 40 + 1);
    try {
      e.submit(greedy_request(tokens(40, 1, V), 20));
      FAIL("no overflow");
    } catch (const error& ex) {
      CHECK(ex.code() == errc::context_overflow);
      CHECK(std::string(ex.what()).find("the prompt has 40 tokens; with 20 to generate the window of 48 holds 28 (12 too many)") == 0);
    }
    auto keep = greedy_request(tokens(40, 1, V), 20);
    keep.policy = context_policy::keep_tail;
    const auto kept = run_all(e, {keep})[0];
    CHECK(kept.r.gen.fit.n_dropped == 12);
    CHECK(kept.r.gen.timings.n_generated == 20);
  }
  SUBCASE("bad requests are refused before anything is queued") {
    CHECK_THROWS_AS(e.submit(greedy_request({}, 5)), error);
    CHECK_THROWS_AS(e.submit(greedy_request({1, V}, 5)), error);
    auto r = greedy_request(tokens(5, 1, V), 5);
    r.sampling.top_p = 2;
    CHECK_THROWS_AS(e.submit(r), error);
    r = greedy_request(tokens(5, 1, V), 5);
    r.gen.stop = {std::string("\xff")};
    CHECK_THROWS_AS(e.submit(r), error);
    CHECK_THROWS_AS(e.submit(greedy_request(tokens(5, 1, V), 48)), error);
    CHECK(e.get_stats().submitted == 0);
  }
  SUBCASE("cancel by id and by callback; a full queue answers busy") {
    std::mutex mu;
    std::condition_variable cv;
    int done = 0;
    std::vector<engine_result> results(4);
    std::atomic<bool> release{false};
    auto make = [&](int i) {
      auto r = greedy_request(tokens(5, i, V), -1);
      r.gen.stop_at_eos = false;
      r.on_token = [&, i](std::string_view, int32_t) {
        if (i == 1) return false;  // cancels itself at its first token
        while (i == 0 && !release.load()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
        return true;
      };
      r.on_done = [&, i](const engine_result& res) {
        std::lock_guard<std::mutex> lk(mu);
        results[std::size_t(i)] = res;
        ++done;
        cv.notify_all();
      };
      return r;
    };
    const auto a = e.submit(make(0));  // blocks the engine in its callback
    e.submit(make(1));
    e.submit(make(2));  // waits: one queued beyond the slots
    try {
      e.submit(make(3));
      FAIL("queue not bounded");
    } catch (const error& ex) {
      CHECK(ex.code() == errc::busy);
    }
    e.cancel(a.id);
    release = true;
    {
      std::unique_lock<std::mutex> lk(mu);
      cv.wait(lk, [&] { return done >= 2; });
    }
    CHECK(results[0].gen.finish == finish_reason::cancelled);
    CHECK(results[1].gen.finish == finish_reason::cancelled);
    CHECK(results[1].gen.tokens.size() == 1);
    // request 2 runs until its window is full
    {
      std::unique_lock<std::mutex> lk(mu);
      cv.wait(lk, [&] { return done == 3; });
    }
    CHECK(results[2].gen.finish == finish_reason::context_full);
    CHECK(e.get_stats().active == 0);
  }
  SUBCASE("a queued request cancelled before it has a slot leaves the queue at once") {
    std::atomic<bool> release{false};
    std::atomic<int> done{0};
    std::vector<finish_reason> why(4, finish_reason::eos);
    auto make = [&](int i) {
      auto r = greedy_request(tokens(5, i, V), 8);
      r.gen.stop_at_eos = false;
      r.on_token = [&, i](std::string_view, int32_t) {
        while (i < 2 && !release.load()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
        return true;
      };
      r.on_done = [&, i](const engine_result& res) {
        why[std::size_t(i)] = res.gen.finish;
        ++done;
      };
      return r;
    };
    e.submit(make(0));
    e.submit(make(1));  // two slots, both blocked in their callbacks
    const auto queued = e.submit(make(2));
    CHECK_THROWS_AS(e.submit(make(3)), error);  // the queue (1) is full
    e.cancel(queued.id);
    // the engine thread is blocked in a callback: the queue is emptied by the next step at the
    // latest; release, then the cancelled request must end without having run
    release = true;
    for (int i = 0; i < 5000 && done < 3; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    CHECK(done == 3);
    CHECK(why[2] == finish_reason::cancelled);
    CHECK(why[0] == finish_reason::max_tokens);
    CHECK(e.get_stats().waiting == 0);
  }
}

TEST_CASE("engine: shutdown lets running requests finish; destruction cancels what waits") {
  const auto& m = tiny().m;
  const int32_t V = int32_t(m->config().n_vocab);
  engine_params ep;
  ep.ctx.n_ctx = 64;
  ep.ctx.n_batch = 16;
  ep.n_slots = 1;
  std::atomic<int> done{0};
  std::vector<finish_reason> why(3);
  {
    engine e(m, ep);
    for (int i = 0; i < 3; ++i) {
      auto r = greedy_request(tokens(5, i, V), 10);
      r.gen.stop_at_eos = false;
      r.on_done = [&, i](const engine_result& res) {
        why[std::size_t(i)] = res.gen.finish;
        ++done;
      };
      e.submit(std::move(r));
    }
    e.shutdown(std::chrono::seconds(60));
    CHECK(done == 3);
    for (auto f : why) CHECK(f == finish_reason::max_tokens);
    CHECK_THROWS_AS(e.submit(greedy_request(tokens(5, 1, V), 5)), error);
  }
  done = 0;
  {
    engine e(m, ep);
    for (int i = 0; i < 3; ++i) {
      auto r = greedy_request(tokens(5, i, V), -1);
      r.gen.stop_at_eos = false;
      r.on_done = [&, i](const engine_result& res) {
        why[std::size_t(i)] = res.gen.finish;
        ++done;
      };
      e.submit(std::move(r));
    }
  }  // destroyed while they run and wait
  CHECK(done == 3);
  CHECK(why[2] == finish_reason::cancelled);
}

// libgomp lets idle workers spin only while the threads it manages are no more than the CPUs; a
// team left on the loading thread put the engine's workers to sleep between parallel regions
// (omp_compat.hpp). Each check of a thread count below fails without the release.
TEST_CASE("model::load, engine, session::generate: a thread done with its parallel work keeps no idle OpenMP workers") {
#ifndef _OPENMP
  MESSAGE("built without OpenMP: no workers to release");
#else
  omp_set_dynamic(0);
  const auto& m = tiny().m;
  const int32_t V = int32_t(m->config().n_vocab);
  if (!start_team_of_two()) {
    MESSAGE("no team of two threads here (OMP_THREAD_LIMIT or OMP_MAX_ACTIVE_LEVELS): skipped");
    return;
  }
  // This thread's earlier team (a bigger one shrinks in the background) ended, and the count
  // settled; then the runtime must end a team of two on request (libgomp does; LLVM's libomp
  // preloaded in its place does not).
  omp_pause_resource_all(omp_pause_soft);
  const int alone = settled_threads();
  REQUIRE(start_team_of_two());
  omp_pause_resource_all(omp_pause_soft);
  if (wait_threads(alone) != alone) {
    MESSAGE("this OpenMP runtime keeps a paused thread's workers: skipped");
    return;
  }
  REQUIRE(start_team_of_two());
  const int with_team = wait_threads(alone + 1);
  REQUIRE(with_team == alone + 1);
  engine_params ep;
  ep.ctx.n_ctx = 64;
  ep.ctx.n_batch = 16;
  ep.ctx.n_threads = 1;  // a team of one: the engine's thread adds no workers
  ep.n_slots = 1;
  {
    engine e(m, ep);
    CHECK(wait_threads(with_team) == with_team);  // this thread's worker joined; the engine's thread started
    const auto out = run_all(e, {greedy_request(tokens(5, 1, V), 4)});
    CHECK(out[0].r.error.empty());
    CHECK(!out[0].r.gen.tokens.empty());
    CHECK(wait_threads(with_team) == with_team);
  }
  CHECK(wait_threads(with_team - 1) == with_team - 1);  // the engine's thread joined

  REQUIRE(start_team_of_two());
  const int before_load = process_threads();
  temp_model loaded("omp", random_model_spec{});
  REQUIRE(loaded.m);
  CHECK(wait_threads(before_load - 1) == before_load - 1);

  // a generation on this thread and then one on another: each ends its team, and the answers agree
  session_params sp;
  sp.ctx.n_ctx = 32;
  sp.ctx.n_threads = 2;
  sp.sampling.temperature = 0;
  generate_params g;
  g.max_tokens = 3;
  const auto prompt = tokens(4, 2, int32_t(loaded.m->config().n_vocab));
  session s(loaded.m, sp);
  const auto here = s.generate(prompt, g).tokens;
  CHECK(!here.empty());
  CHECK(wait_threads(before_load - 1) == before_load - 1);
  std::vector<int32_t> there;
  int during = 0;
  std::thread other([&] {
    omp_set_dynamic(0);  // per thread: a team of two here as well
    s.reset();
    there = s.generate(prompt, g).tokens;
    during = wait_threads(before_load);  // its team ended too
  });
  other.join();
  CHECK(there == here);
  CHECK(during == before_load);  // the other thread alone beside this one (before_load - 1 + 1)
#endif
}
