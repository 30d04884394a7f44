// Flags and reports shared by the text commands.
#include "text_common.hpp"

#include <cstdio>
#include <memory>
#include <fstream>
#include <iostream>
#include <iterator>
#include <sstream>

#include "args.hpp"
#include "qllm/error.hpp"

namespace qllm::cli {

std::string read_file(const std::string& path) {
  if (path == "-") return std::string(std::istreambuf_iterator<char>(std::cin), {});
  std::ifstream in(path, std::ios::binary);
  if (!in) throw error(errc::io, "cannot open '" + path + "'");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

const char* kTextFlags =
    "  -m, --model FILE            GGUF model (default: the shipped model, see qllm info)\n"
    "  -t, --threads N             threads (default: all cores)\n"
    "  -c, --ctx-size N            context window in tokens (default: the model's)\n"
    "  -b, --batch-size N          prompt tokens per forward pass (default 512)\n"
    "      --kv f16|f32            KV cache precision (default f16)\n"
    "  -n, --max-tokens N          tokens to generate, -1 = until EOS or stop (default 256)\n"
    "      --temp X                temperature, 0 = greedy (default 0.8)\n"
    "      --top-k N               (default 40, 0 = off)\n"
    "      --top-p X               (default 0.95)\n"
    "      --min-p X               (default 0.05)\n"
    "      --repeat-penalty X      (default 1.0 = off)\n"
    "      --frequency-penalty X   (default 0)\n"
    "      --presence-penalty X    (default 0)\n"
    "      --repeat-last-n N       penalty window (default 64)\n"
    "  -s, --seed N                sampling seed\n"
    "      --stop TEXT             stop string (repeatable; not printed)\n"
    "      --ignore-eos            keep generating after EOS\n"
    "      --context-policy P      prompt longer than the window: error (default for run),\n"
    "                              keep-head-and-tail, keep-tail\n"
    "      --keep N                tokens at the start kept by keep-head-and-tail and shifts\n"
    "      --no-context-shift      stop when the window is full instead of shifting\n"
    "      --spec lookup|draft|off speculative decoding: draft tokens checked several per forward\n"
    "                              pass, copied from the prompt and the text so far (lookup) or\n"
    "                              written by a small model (draft); greedy output is the same,\n"
    "                              sampled output has the same distribution (default off)\n"
    "      --draft MODEL           the draft model for --spec draft (same vocabulary)\n"
    "      --draft-tokens N        most draft tokens per pass (default 8)\n"
    "      --grammar-file F        the answer follows the GBNF grammar in F (rule root): tokens it\n"
    "                              forbids are masked before sampling (docs/formats.md)\n"
    "      --json                  the answer is a JSON object (a built-in grammar)\n"
    "      --json-schema F         the answer is JSON valid against the JSON Schema in F\n"
    "      --cot                   chain of thought: reason step by step (on stderr), then answer\n"
    "      --cot-answer-tokens N   max tokens of the answer after the reasoning (default 64)\n"
    "  -q, --quiet                 no report line\n"
    "  -h, --help                  this text\n";

// Consumes argv[i] if it is a shared flag.
bool parse_text_flag(text_options& o, int argc, char** argv, int& i) {
  const std::string a = argv[i];
  auto val = [&] { return next_value(argc, argv, i); };
  auto& s = o.sp.sampling;
  if (a == "-m" || a == "--model") o.model = val();
  else if (a == "-t" || a == "--threads") o.sp.ctx.n_threads = int(parse_int(a, val(), 1, 1024));
  else if (a == "-c" || a == "--ctx-size") o.sp.ctx.n_ctx = parse_int(a, val(), 8, int64_t(1) << 24);
  else if (a == "-b" || a == "--batch-size") o.sp.ctx.n_batch = parse_int(a, val(), 1, 1 << 16);
  else if (a == "--kv") {
    const std::string v = val();
    if (v == "f16") o.sp.ctx.kv = kv_type::f16;
    else if (v == "f32") o.sp.ctx.kv = kv_type::f32;
    else throw error(errc::invalid_argument, "--kv: '" + v + "' is not f16 or f32");
  } else if (a == "-n" || a == "--max-tokens") o.gp.max_tokens = parse_int(a, val(), -1, int64_t(1) << 30);
  else if (a == "--temp") s.temperature = float(parse_float(a, val(), 0, 100));
  else if (a == "--top-k") s.top_k = int32_t(parse_int(a, val(), 0, 1 << 30));
  else if (a == "--top-p") s.top_p = float(parse_float(a, val(), 1e-6, 1));
  else if (a == "--min-p") s.min_p = float(parse_float(a, val(), 0, 0.999999));
  else if (a == "--repeat-penalty") s.repeat_penalty = float(parse_float(a, val(), 1e-3, 100));
  else if (a == "--frequency-penalty") s.frequency_penalty = float(parse_float(a, val(), -100, 100));
  else if (a == "--presence-penalty") s.presence_penalty = float(parse_float(a, val(), -100, 100));
  else if (a == "--repeat-last-n") s.penalty_last_n = int32_t(parse_int(a, val(), 0, 1 << 20));
  else if (a == "-s" || a == "--seed") s.seed = uint64_t(parse_int(a, val(), 0, INT64_MAX));
  else if (a == "--stop") {
    o.gp.stop.push_back(val());
    if (o.gp.stop.back().empty()) throw error(errc::invalid_argument, "--stop: empty string");
  } else if (a == "--ignore-eos") o.gp.stop_at_eos = false;
  else if (a == "--context-policy") {
    o.sp.policy = parse_context_policy(val());
    o.policy_set = true;
  } else if (a == "--keep") {
    o.sp.n_keep = parse_int(a, val(), 0, int64_t(1) << 24);
    o.keep_set = true;
  }
  else if (a == "--no-context-shift") o.sp.context_shift = false;
  else if (a == "--spec") {
    const std::string v = val();
    if (v != "lookup" && v != "draft" && v != "off")
      throw error(errc::invalid_argument, "--spec: '" + v + "' is not lookup, draft or off");
    o.spec = v;
    o.gp.draft_tokens = v == "off" ? 0 : o.draft_tokens;
    o.gp.spec = v == "draft" ? speculation::draft_model : speculation::lookup;
  } else if (a == "--draft-tokens") {
    o.draft_tokens = int32_t(parse_int(a, val(), 1, 64));
    if (o.spec != "off") o.gp.draft_tokens = o.draft_tokens;
  } else if (a == "--draft") o.draft = val();
  else if (a == "--grammar-file" || a == "--json" || a == "--json-schema") {
    if (o.gp.constraint) throw error(errc::invalid_argument, a + ": one grammar only (--grammar-file, --json or --json-schema)");
    if (a == "--json") {
      o.gp.constraint = grammar::json_object();
    } else {
      const std::string f = val();
      try {  // errors name the file
        const std::string text = read_file(f);
        o.gp.constraint = a == "--json-schema" ? grammar::from_json_schema(text) : grammar::from_gbnf(text);
      } catch (const error& e) {
        throw error(e.code(), f + ": " + e.what());
      }
    }
  } else if (a == "--cot") o.cot = true;
  else if (a == "--cot-answer-tokens") o.cot_p.answer_tokens = parse_int(a, val(), 1, int64_t(1) << 20);
  else if (a == "-q" || a == "--quiet") o.quiet = true;
  else return false;
  return true;
}

std::shared_ptr<const model> load_text_model(const std::string& path, const char* usage) {
  const std::string file = model_or_default(path, usage);
  auto m = model::load(file);
  if (m->cache_status() != "off") std::fprintf(stderr, "qllm: cache: %s\n", m->cache_status().c_str());  // QLLM_CACHE_DIR
  if (!m->get_tokenizer())
    throw error(errc::unsupported, "'" + file + "' has no vocabulary (tokenizer.ggml.*); text commands need one");
  return m;
}

std::unique_ptr<session> make_session(std::shared_ptr<const model> m, const text_options& o) {
  if (o.spec == "draft" && o.draft.empty()) throw error(errc::invalid_argument, "--spec draft needs --draft MODEL");
  if (o.spec != "draft" && !o.draft.empty()) throw error(errc::invalid_argument, "--draft is for --spec draft");
  auto s = std::make_unique<session>(std::move(m), o.sp);
  if (!o.draft.empty()) s->set_draft(model::load(o.draft));
  return s;
}

void warn_window(const model& m, int64_t n_ctx) {
  const model_config& c = m.config();
  if (c.n_ctx_train > 0 && n_ctx > c.n_ctx_train)
    std::fprintf(stderr,
                 "qllm: warning: the window of %lld tokens is longer than the model's training context of %lld; "
                 "past position %lld its output may degrade (memory for the window is committed as it fills)\n",
                 (long long)n_ctx, (long long)c.n_ctx_train, (long long)c.n_ctx_train);
}

std::string mib(int64_t bytes) {
  char b[32];
  std::snprintf(b, sizeof b, "%.0f MiB", double(bytes) / (1 << 20));
  return b;
}

void print_report(const generation_result& r) {
  const auto& t = r.timings;
  std::fprintf(stderr,
               "\n[prompt: %lld tokens (%lld reused), %.2f tok/s | generated: %lld tokens, %.2f tok/s | "
               "dropped by context policy: %lld",
               (long long)t.n_prompt, (long long)t.n_reused, t.prompt_tokens_per_second(), (long long)t.n_generated,
               t.generation_tokens_per_second(), (long long)r.fit.n_dropped);
  if (r.fit.n_dropped)
    std::fprintf(stderr, " (tokens %lld-%lld of %lld)", (long long)r.fit.drop_begin, (long long)r.fit.drop_end - 1,
                 (long long)r.fit.n_tokens);
  if (r.n_shifts) std::fprintf(stderr, " | context shifts: %lld (%lld tokens)", (long long)r.n_shifts, (long long)r.n_shift_dropped);
  if (r.spec.drafted)
    std::fprintf(stderr, " | %s: %lld of %lld drafts accepted in %lld passes", to_string(r.spec.source),
                 (long long)r.spec.accepted, (long long)r.spec.drafted, (long long)r.spec.passes);
  std::fprintf(stderr, " | stop: %s | peak RSS: %s]\n", to_string(r.finish), mib(peak_rss_bytes()).c_str());
}

// Tells about tokens a policy will drop before any output, so the user sees it first.
void warn_fit(const session& s, const std::vector<int32_t>& tokens, const generate_params& gp) {
  std::vector<int32_t> copy = tokens;
  const prompt_fit f = s.fit(copy, s.reserve_for(gp));  // throws for the error policy
  if (f.n_dropped)
    std::fprintf(stderr, "qllm: the prompt has %lld tokens, the window leaves room for %lld: %s drops tokens %lld-%lld (%lld tokens)\n",
                 (long long)f.n_tokens, (long long)copy.size(), to_string(s.params().policy), (long long)f.drop_begin,
                 (long long)f.drop_end - 1, (long long)f.n_dropped);
}

token_callback printer(std::FILE* out, bool strip_first_space, const std::atomic<bool>* stop) {
  auto first = std::make_shared<bool>(strip_first_space);
  return [out, first, stop](std::string_view text, int32_t) {
    if (*first && !text.empty()) {
      if (text.front() == ' ') text.remove_prefix(1);
      *first = false;
    }
    std::fwrite(text.data(), 1, text.size(), out);
    std::fflush(out);
    return !(stop && stop->load());
  };
}

cot_printers cot_streams(const std::atomic<bool>* stop) {
  auto state = std::make_shared<int>(0);  // 0: nothing yet, 1: in the reasoning, 2: in the answer
  auto reasoning = printer(stderr, true, stop), answer = printer(stdout, true, stop);
  return {[state, reasoning](std::string_view text, int32_t tok) {
            if (*state == 0) {
              std::fputs("[reasoning]\n", stderr);
              *state = 1;
            }
            return reasoning(text, tok);
          },
          [state, answer](std::string_view text, int32_t tok) {
            if (*state != 2) {
              std::fputs(*state == 1 ? "\n[end of reasoning]\n" : "[no reasoning]\n", stderr);
              std::fflush(stderr);
              *state = 2;
            }
            return answer(text, tok);
          }};
}

}  // namespace qllm::cli
