// qllm bench: prompt processing (pp) and generation (tg) speed, like llama-bench.
#include <algorithm>
#include <condition_variable>
#include <mutex>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "omp_compat.hpp"
#include "args.hpp"
#include "commands.hpp"
#include "kernels/kernel_table.hpp"
#include "qllm/error.hpp"
#include "qllm/gguf.hpp"
#include "qllm/engine.hpp"
#include "qllm/model.hpp"
#include "qllm/resources.hpp"
#include "qllm/session.hpp"
#include "text_common.hpp"
#include "perf/read_bandwidth.hpp"

namespace qllm::cli {

namespace {
void print_bandwidth(const char* what, const std::vector<int>& threads, const std::vector<double>& bw,
                     std::size_t bytes) {
  std::printf("%s (best of 10 passes over %.2f GiB, huge pages):", what, double(bytes) / double(1 << 30));
  for (std::size_t i = 0; i < threads.size(); ++i)
    std::printf("%s %d thread%s %.1f GB/s", i ? "," : "", threads[i], threads[i] == 1 ? "" : "s", bw[i]);
  std::printf("\n");
  std::fflush(stdout);
}

struct stats {
  double mean = 0, sd = 0;
};
stats summarize(const std::vector<double>& v) {
  stats s;
  for (double x : v) s.mean += x;
  s.mean /= double(v.size());
  for (double x : v) s.sd += (x - s.mean) * (x - s.mean);
  s.sd = v.size() > 1 ? std::sqrt(s.sd / double(v.size() - 1)) : 0.0;
  return s;
}
double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
// Continuous batching: `n` requests submitted at once to an engine of n slots, each a random
// prompt of n_prompt tokens and n_gen generated tokens (greedy, EOS ignored). Per run: aggregate
// generated tok/s over the wall time from submit to the last token (prompts included), each
// stream's decode rate, the decode rate of all streams together once every prompt is done, and
// every request's time to first token.
int bench_parallel(const std::shared_ptr<const model>& m, const std::vector<int64_t>& parallel, int64_t nt,
                   int64_t n_prompt, int64_t n_gen, int64_t reps, bool warmup, kv_type kv) {
  const model_config& c = m->config();
  if (n_prompt < 1 || n_gen < 1) throw error(errc::invalid_argument, "--parallel needs -p and -n of at least 1");
  std::printf("continuous batching: prompt %lld tokens, %lld generated per request, %lld run(s) each\n",
              (long long)n_prompt, (long long)n_gen, (long long)reps);
  std::printf("| streams | aggregate t/s | x 1 stream | decode t/s, all streams | x 1 stream | per-stream decode t/s | TTFT p50 s | TTFT p99 s |\n");
  std::printf("|--------:|--------------:|-----------:|------------------------:|-----------:|----------------------:|-----------:|-----------:|\n");
  uint32_t seed = 7;
  auto token = [&] { return int32_t((seed = seed * 1664525u + 1013904223u) >> 8) % int32_t(c.n_vocab); };
  double base = 0, dbase = 0;
  for (int64_t n : parallel) {
    engine_params ep;
    ep.ctx.n_ctx = n_prompt + n_gen + 8;
    ep.ctx.n_batch = std::max<int64_t>(512, n);
    ep.ctx.n_threads = int(nt);
    ep.ctx.kv = kv;
    ep.n_slots = int(n);
    ep.max_waiting = n;
    engine e(m, ep);
    std::vector<double> aggregate, decode, decode_all, ttft;
    for (int64_t r = warmup ? -1 : 0; r < reps; ++r) {
      std::mutex mu;
      std::condition_variable cv;
      int64_t done = 0;
      std::vector<engine_result> res(static_cast<std::size_t>(n));
      const double t0 = now();
      for (int64_t i = 0; i < n; ++i) {
        engine_request q;
        q.prompt.resize(static_cast<std::size_t>(n_prompt));
        for (auto& t : q.prompt) t = token();
        q.sampling.temperature = 0;
        q.gen.max_tokens = n_gen;
        q.gen.stop_at_eos = false;
        q.on_done = [&, i](const engine_result& er) {
          std::lock_guard<std::mutex> lk(mu);
          res[static_cast<std::size_t>(i)] = er;
          ++done;
          cv.notify_all();
        };
        e.submit(std::move(q));
      }
      {
        std::unique_lock<std::mutex> lk(mu);
        cv.wait(lk, [&] { return done == n; });
      }
      const double wall = now() - t0;
      if (r < 0) continue;
      aggregate.push_back(double(n * n_gen) / wall);
      // decode, all streams: tokens after each stream's first, over the time from the last first
      // token to the end (every stream decoding: prompts are done)
      double last_first = 0, after = 0;
      for (const auto& er : res) {
        if (!er.error.empty()) throw error(errc::internal, "bench request failed: " + er.error);
        decode.push_back(er.gen.timings.generation_tokens_per_second());
        ttft.push_back(er.first_token_seconds);
        last_first = std::max(last_first, er.first_token_seconds);
      }
      for (const auto& er : res) {
        const double end = er.first_token_seconds + er.gen.timings.generation_seconds;
        const double span = er.gen.timings.generation_seconds;
        // the share of this stream's decode tokens produced after last_first
        if (end > last_first && span > 0)
          after += double(er.gen.timings.n_generated - 1) * std::min(1.0, (end - last_first) / span);
      }
      if (wall > last_first) decode_all.push_back(after / (wall - last_first));
    }
    std::sort(ttft.begin(), ttft.end());
    auto pct = [&](double q) { return ttft[std::min(ttft.size() - 1, std::size_t(q * double(ttft.size() - 1) + 0.5))]; };
    const stats a = summarize(aggregate), d = summarize(decode), da = summarize(decode_all);
    if (base == 0) base = a.mean / double(n);  // the 1-stream (or first) rate per stream
    if (dbase == 0) dbase = da.mean / double(n);
    std::printf("| %7lld | %7.2f ± %4.2f | %10.2f | %15.2f ± %5.2f | %10.2f | %13.2f ± %5.2f | %10.3f | %10.3f |\n",
                (long long)n, a.mean, a.sd, a.mean / base, da.mean, da.sd, da.mean / dbase, d.mean, d.sd, pct(0.5),
                pct(0.99));
    std::fflush(stdout);
  }
  std::printf("peak RSS: %.2f GB\n", double(peak_rss_bytes()) / 1e9);
  return 0;
}

// Speculative decoding against plain decoding on task prompts: greedy generation of n_gen tokens
// after each prompt file, plain and speculative runs alternating (a shared machine's speed moves),
// the same text checked, acceptance and tokens per pass of the weights reported.
int bench_spec(const std::shared_ptr<const model>& m, const std::vector<std::string>& tasks, const std::string& spec,
               const std::string& draft_path, int32_t draft_tokens, const std::vector<int64_t>& threads,
               int64_t n_gen, int64_t reps, bool warmup, kv_type kv) {
  if (tasks.empty()) throw error(errc::invalid_argument, "--spec needs at least one task: --prompt-file FILE");
  if (spec == "draft" && draft_path.empty()) throw error(errc::invalid_argument, "--spec draft needs --draft MODEL");
  if (spec != "draft" && !draft_path.empty()) throw error(errc::invalid_argument, "--draft is for --spec draft");
  if (n_gen < 1) throw error(errc::invalid_argument, "--spec needs -n of at least 1");
  std::shared_ptr<const model> draft;
  if (!draft_path.empty()) {
    draft = model::load(draft_path);
    std::printf("draft model: %s, %.3f GB per token\n", draft_path.c_str(), double(draft->weight_bytes()) / 1e9);
  }
  std::printf("speculation %s, at most %d drafts per pass, greedy, %lld tokens, %lld run(s) each\n", spec.c_str(),
              draft_tokens, (long long)n_gen, (long long)reps);
  std::printf("| threads | task | plain t/s | %s t/s | speed-up | drafts kept | tokens per pass | same text |\n", spec.c_str());
  std::printf("|--------:|------|----------:|----------:|---------:|------------:|----------------:|-----------|\n");
  bool all_same = true;
  for (int64_t nt : threads) {
    for (const auto& path : tasks) {
      const std::string prompt = read_file(path);
      session_params sp;
      sp.ctx.n_threads = int(nt);
      sp.ctx.kv = kv;
      sp.sampling.temperature = 0;
      session plain(m, sp), fast(m, sp);
      if (draft) fast.set_draft(draft);
      generate_params gp;
      gp.max_tokens = n_gen;
      gp.stop_at_eos = false;
      generate_params gs = gp;
      gs.draft_tokens = draft_tokens;
      gs.spec = spec == "draft" ? speculation::draft_model : speculation::lookup;
      const auto tokens = plain.tokenize(prompt, plain.tok().add_bos());
      std::vector<double> r_plain, r_spec;
      int64_t drafted = 0, kept = 0, generated = 0;
      bool same = true;
      for (int64_t r = warmup ? -1 : 0; r < reps; ++r) {
        plain.reset();  // the prompt is evaluated each run (not timed in the rate)
        fast.reset();
        const auto a = plain.generate(tokens, gp);
        const auto b = fast.generate(tokens, gs);
        same = same && a.tokens == b.tokens;
        if (r < 0) continue;
        r_plain.push_back(a.timings.generation_tokens_per_second());
        r_spec.push_back(b.timings.generation_tokens_per_second());
        drafted += b.spec.drafted;
        kept += b.spec.accepted;
        generated += b.timings.n_generated;
      }
      all_same = all_same && same;
      const stats a = summarize(r_plain), b = summarize(r_spec);
      // passes of the weights while generating: one per token, less the drafts kept
      const double per_pass = generated > kept ? double(generated) / double(generated - kept) : 0;
      std::string name = path.substr(path.find_last_of('/') + 1);
      std::printf("| %7lld | %s | %6.2f ± %4.2f | %6.2f ± %4.2f | %8.2f | %5lld / %-5lld | %15.2f | %s |\n",
                  (long long)(nt ? nt : default_threads()), name.c_str(), a.mean, a.sd, b.mean, b.sd, b.mean / a.mean,
                  (long long)kept, (long long)drafted, per_pass, same ? "yes" : "NO");
      std::fflush(stdout);
    }
  }
  std::printf("peak RSS: %.2f GB\n", double(peak_rss_bytes()) / 1e9);
  if (!all_same) throw error(errc::internal, "speculative and plain greedy text differ");
  return 0;
}

}  // namespace

const char* const kHelp =
    "usage: qllm bench -m MODEL [options]\n"
    "Prompt (pp) and generation (tg) speed, mean +- sd over repetitions, like llama-bench.\n"
    "  -m, --model FILE        GGUF model (default: the shipped model, see qllm info)\n"
    "  -t, --threads LIST      thread counts, e.g. 1,2 (default: all CPUs)\n"
    "  -p, --n-prompt LIST     prompt lengths (default 64,512)\n"
    "  -n, --n-gen LIST        generated token counts (default 32,128)\n"
    "  -r, --repetitions N     runs of each test (default 3)\n"
    "  -d, --depth N           tokens already in the KV cache before each test (default 0)\n"
    "  --kv f16|f32            KV cache type (default f16)\n"
    "  --no-warmup             skip the warm-up run\n"
    "  --membw GIB             before the tests, measure the best memory read bandwidth with each\n"
    "                          thread count over GIB GiB (default 2; 0: skip) and print every tg\n"
    "                          rate as a fraction of it; measured again after the tests (not with\n"
    "                          --parallel); at most an eighth of the memory the process may have\n"
    "  --parallel LIST         continuous batching instead: N concurrent requests (e.g. 1,2,4,8,16),\n"
    "                          each a prompt of the first -p length and the first -n generated tokens;\n"
    "                          aggregate and per-stream tok/s, time to first token p50/p99\n"
    "  --spec lookup|draft     speculative decoding instead: greedy generation of the first -n\n"
    "                          tokens after each --prompt-file, plain and speculative runs\n"
    "                          alternating; speed-up, drafts kept, tokens per pass of the weights\n"
    "  --prompt-file FILE      a task for --spec (repeatable; named by the file name)\n"
    "  --draft MODEL           the draft model for --spec draft\n"
    "  --draft-tokens N        most drafts per pass with --spec (default 8)\n"
    "  -h, --help              this text\n";

int cmd_bench(int argc, char** argv) {
  std::string path;
  std::vector<int64_t> threads = {0}, pp = {64, 512}, tg = {32, 128};
  int64_t reps = 3, depth = 0;
  bool warmup = true;
  kv_type kv = kv_type::f16;
  std::vector<int64_t> parallel;
  double membw_gib = 2;
  std::string spec, draft;
  std::vector<std::string> tasks;
  int32_t draft_tokens = 8;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "-m" || a == "--model") path = next_value(argc, argv, i);
    else if (a == "-t" || a == "--threads") threads = parse_int_list(a, next_value(argc, argv, i), 1, 1024);
    else if (a == "-p" || a == "--n-prompt") pp = parse_int_list(a, next_value(argc, argv, i), 0, 1 << 16);
    else if (a == "-n" || a == "--n-gen") tg = parse_int_list(a, next_value(argc, argv, i), 0, 1 << 16);
    else if (a == "-r" || a == "--repetitions") reps = parse_int(a, next_value(argc, argv, i), 1, 1000);
    else if (a == "-d" || a == "--depth") depth = parse_int(a, next_value(argc, argv, i), 0, 1 << 20);
    else if (a == "--no-warmup") warmup = false;
    else if (a == "--membw") membw_gib = parse_float(a, next_value(argc, argv, i), 0, 64);
    else if (a == "--parallel") parallel = parse_int_list(a, next_value(argc, argv, i), 1, 256);
    else if (a == "--spec") {
      spec = next_value(argc, argv, i);
      if (spec != "lookup" && spec != "draft") throw error(errc::invalid_argument, "--spec: '" + spec + "' is not lookup or draft");
    } else if (a == "--prompt-file") tasks.push_back(next_value(argc, argv, i));
    else if (a == "--draft") draft = next_value(argc, argv, i);
    else if (a == "--draft-tokens") draft_tokens = int32_t(parse_int(a, next_value(argc, argv, i), 1, 64));
    else if (is_help(a)) return print_help(kHelp);
    else if (a == "--kv") {
      const std::string v = next_value(argc, argv, i);
      if (v == "f16") kv = kv_type::f16;
      else if (v == "f32") kv = kv_type::f32;
      else throw error(errc::invalid_argument, "--kv: '" + v + "' is not f16 or f32");
    } else {
      throw error(errc::invalid_argument, "unknown option '" + a + "'");
    }
  }
  if (spec.empty() && (!tasks.empty() || !draft.empty()))
    throw error(errc::invalid_argument, "--prompt-file and --draft are for --spec");
  if (!spec.empty() && !parallel.empty()) throw error(errc::invalid_argument, "--spec and --parallel are separate benchmarks");
  // before the model is loaded and the bandwidth probed: the context would refuse it after both
  for (int64_t nt : threads) {
    if (nt > max_threads())
      throw error(errc::invalid_argument, "-t: " + std::to_string(nt) + " threads is more than " +
                                              std::to_string(max_threads()) + ", the most this machine allows");
    if (nt > omp_get_thread_limit())  // the runs would have fewer threads than their label says
      throw error(errc::invalid_argument, "-t: " + std::to_string(nt) + " threads, but a parallel region here gets at most " +
                                              std::to_string(omp_get_thread_limit()) + " (OMP_THREAD_LIMIT, or a build without OpenMP)");
  }
  path = model_or_default(path, "qllm bench [-m FILE] [-t 2] [-p 64,512] [-n 32,128] [-r 3] [-d DEPTH] [--kv f16|f32] "
                                "[--no-warmup]");

  auto m = model::load(path);
  const model_config& c = m->config();
  const double gb = double(m->weight_bytes()) / 1e9;
  const auto st = m->load_stage_seconds();
  std::printf("model: %s, %s, %.2f GB streamed per token, %.2f B params, kernels %s\n",
              path.c_str(), gguf::type_name(m->weight_type()), gb, double(m->n_params()) / 1e9,
              kernels::active().name);
  std::printf("load: %.2f s (parse %.2f, allocate %.2f, repack %.2f)\n", m->load_seconds(), st[0],
              st[1], st[2]);
  if (m->cache_status() != "off") std::printf("cache: %s\n", m->cache_status().c_str());
  // The roofline, measured once the model is loaded (a bad file fails first); the probe's buffer
  // is gone again when the tests run, and the peak RSS printed at the end is the model's and the
  // tests', where the kernel lets the peak be reset.
  std::vector<int> bw_threads;
  for (int64_t nt : threads) bw_threads.push_back(nt > 0 ? std::min(int(nt), max_threads()) : default_threads());
  std::vector<double> bw;
  bool rss_reset = true;
  int64_t load_peak = 0;  // the load's peak, before the probe's buffer
  const std::size_t bw_bytes = perf::probe_bytes(std::size_t(membw_gib * double(1 << 30)));
  // empty, with a note, when it cannot be measured (e.g. no room for the buffer): no column then
  const auto probe = [&](const char* what) -> std::vector<double> {
    try {
      std::vector<double> v = perf::best_read_bandwidth(bw_threads, bw_bytes, 10);
      print_bandwidth(what, bw_threads, v, bw_bytes);
      return v;
    } catch (const error& e) {
      std::printf("%s not measured: %s\n", what, e.what());
      return {};
    }
  };
  if (membw_gib > 0 && parallel.empty() && spec.empty()) {
    load_peak = peak_rss_bytes();
    bw = probe("read bandwidth");
    if (!bw.empty()) rss_reset = reset_peak_rss();
  }

  if (!spec.empty()) {
    if (!m->get_tokenizer()) throw error(errc::unsupported, "--spec needs a model with a vocabulary");
    return bench_spec(m, tasks, spec, draft, draft_tokens, threads, tg.front(), reps, warmup, kv);
  }
  if (!parallel.empty()) return bench_parallel(m, parallel, threads.front(), pp.front(), tg.front(), reps, warmup, kv);
  std::printf("| threads | test         |           t/s |   GB/s |%s\n", bw.empty() ? "" : " of bw |");
  std::printf("|--------:|--------------|--------------:|-------:|%s\n", bw.empty() ? "" : "------:|");
  uint32_t seed = 1;
  auto token = [&] { return int32_t((seed = seed * 1664525u + 1013904223u) >> 8) % int32_t(c.n_vocab); };
  for (std::size_t ti = 0; ti < threads.size(); ++ti) {
    const int64_t nt = threads[ti];
    const auto run = [&](int64_t n, bool prompt) {
      context_params cp;
      cp.n_ctx = depth + n + 1;
      cp.n_batch = prompt ? std::max<int64_t>(n, 512) : 512;
      cp.n_threads = int(nt);
      cp.kv = kv;
      context ctx(m, cp);
      std::vector<double> rates;
      for (int64_t r = warmup ? -1 : 0; r < reps; ++r) {  // r = -1: warm-up
        ctx.clear();
        std::vector<int32_t> toks(static_cast<std::size_t>(depth));
        for (auto& t : toks) t = token();
        if (depth > 0) ctx.eval(toks);  // context already holding `depth` tokens: not timed
        toks.resize(static_cast<std::size_t>(n));
        for (auto& t : toks) t = token();
        const double t0 = now();
        if (prompt) {
          ctx.eval(toks);
        } else {
          for (int32_t t : toks) ctx.eval(std::span<const int32_t>(&t, 1));
        }
        if (r >= 0) rates.push_back(double(n) / (now() - t0));
      }
      const stats s = summarize(rates);
      char test[48];
      std::snprintf(test, sizeof test, depth ? "%s%lld@d%lld" : "%s%lld", prompt ? "pp" : "tg",
                    (long long)n, (long long)depth);
      char gbs[32] = "", frac[32] = "";
      if (!prompt) std::snprintf(gbs, sizeof gbs, "%6.1f", s.mean * gb);
      if (!bw.empty())  // GB/s streamed over the measured bandwidth of this thread count
        std::snprintf(frac, sizeof frac, prompt || !(bw[ti] > 0) ? "       |" : " %5.2f |", s.mean * gb / bw[ti]);
      std::printf("| %7lld | %-12s | %7.2f ± %4.2f | %6s |%s\n", (long long)(nt ? nt : 0), test, s.mean, s.sd, gbs, frac);
      std::fflush(stdout);
    };
    for (int64_t n : pp)
      if (n > 0) run(n, true);
    for (int64_t n : tg)
      if (n > 0) run(n, false);
  }
  std::printf("peak RSS: %.2f GB%s\n", double(std::max(load_peak, peak_rss_bytes())) / 1e9,
              rss_reset ? "" : " (includes the bandwidth probe: this kernel cannot reset the peak)");
  if (!bw.empty()) {  // the bracket: a shared machine's bandwidth moves during a run
    m.reset();
    probe("read bandwidth after the tests");
  }
  return 0;
}

}  // namespace qllm::cli
