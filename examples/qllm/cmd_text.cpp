// qllm run / chat / tokenize / perplexity: the text commands.
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

#include "args.hpp"
#include "commands.hpp"
#include "text_common.hpp"
#include "qllm/error.hpp"
#include "qllm/gguf.hpp"
#include "qllm/model.hpp"
#include "qllm/session.hpp"

namespace qllm::cli {

namespace {

std::atomic<bool> g_interrupted{false};
std::atomic<session*> g_session{nullptr};  // Ctrl-C stops its prompt evaluation too
void on_sigint(int) {
  g_interrupted.store(true);
  if (session* s = g_session.load()) s->cancel();  // one atomic store: async-signal-safe
}

}  // namespace

int cmd_run(int argc, char** argv) {
  const char* usage = "qllm run [-m MODEL] (-p PROMPT | -f FILE | stdin) [options]";
  text_options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (parse_text_flag(o, argc, argv, i)) continue;
    if (a == "-p" || a == "--prompt") {
      o.prompt = next_value(argc, argv, i);
      o.have_prompt = true;
    } else if (a == "-f" || a == "--file") {
      o.prompt = read_file(next_value(argc, argv, i));
      o.have_prompt = true;
    } else if (a == "-h" || a == "--help") {
      std::printf("usage: %s\n  -p, --prompt TEXT\n  -f, --file FILE   prompt from a file ('-' = stdin)\n%s", usage, kTextFlags);
      return 0;
    } else {
      throw error(errc::invalid_argument, "unknown option '" + a + "'");
    }
  }
  if (!o.have_prompt) {
    if (isatty(STDIN_FILENO)) throw error(errc::invalid_argument, std::string("no prompt; usage: ") + usage);
    o.prompt = read_file("-");
  }
  auto m = load_text_model(o.model, usage);
  auto sp_ = make_session(m, o);
  session& s = *sp_;
  warn_window(*m, o.sp.ctx.n_ctx);
  const auto tokens = s.tokenize(o.prompt, s.tok().add_bos());
  warn_fit(s, tokens, o.gp);
  if (o.cot) {  // stdout gets the answer only; the reasoning goes to stderr
    const auto p = cot_streams();
    const cot_result r = generate_cot(s, o.prompt, o.gp, o.cot_p, p.reasoning, p.answer);
    std::fputc('\n', stdout);
    std::fflush(stdout);
    if (!o.quiet) {
      print_report(r.reasoning);
      print_report(r.answer);
    }
    return 0;
  }
  std::fputs(o.prompt.c_str(), stdout);
  std::fflush(stdout);
  const auto r = s.generate(tokens, o.gp, [](std::string_view text, int32_t) {
    std::fwrite(text.data(), 1, text.size(), stdout);
    std::fflush(stdout);
    return true;
  });
  std::fputc('\n', stdout);
  std::fflush(stdout);
  if (!o.quiet) print_report(r);
  return 0;
}

int cmd_chat(int argc, char** argv) {
  const char* usage = "qllm chat [-m MODEL] [--system TEXT] [options]";
  text_options o;
  std::string system;
  o.sp.policy = context_policy::keep_head_and_tail;  // a long chat drops old turns, and says so
  o.gp.max_tokens = -1;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (parse_text_flag(o, argc, argv, i)) continue;
    if (a == "--system") system = next_value(argc, argv, i);
    else if (a == "-h" || a == "--help") {
      std::printf("usage: %s\n  --system TEXT     system prompt (kept when old turns are dropped)\n%s"
                  "In the chat: /reset starts over, /exit or end of input quits; Ctrl-C stops an answer.\n",
                  usage, kTextFlags);
      return 0;
    } else {
      throw error(errc::invalid_argument, "unknown option '" + a + "'");
    }
  }
  auto m = load_text_model(o.model, usage);
  // keep the system block when old turns are dropped, unless --keep says otherwise
  if (!system.empty() && !o.keep_set) o.sp.n_keep = chat_system_tokens(*m->get_tokenizer(), system);
  auto sp_ = make_session(m, o);
  session& s = *sp_;
  warn_window(*m, o.sp.ctx.n_ctx);
  g_session.store(&s);
  struct session_guard {
    ~session_guard() { g_session.store(nullptr); }
  } guard;

  struct sigaction sa {};
  sa.sa_handler = on_sigint;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0;  // no SA_RESTART: Ctrl-C at the prompt ends the read
  sigaction(SIGINT, &sa, nullptr);

  std::vector<chat_message> dialog;
  if (!system.empty()) dialog.push_back({"system", system});
  const bool tty = isatty(STDIN_FILENO);
  std::string line;
  char buf[4096];
  while (true) {
    if (tty) {
      std::fputs("> ", stdout);
      std::fflush(stdout);
    }
    line.clear();
    bool got = false;
    while (std::fgets(buf, sizeof buf, stdin)) {
      got = true;
      line += buf;
      if (!line.empty() && line.back() == '\n') break;
    }
    if (!got) {
      if (errno == EINTR && g_interrupted.exchange(false)) std::fputc('\n', stdout);
      break;
    }
    while (!line.empty() && (line.back() == '\n' || line.back() == '\r')) line.pop_back();
    if (line == "/exit" || line == "/quit") break;
    if (line == "/reset") {
      dialog.resize(system.empty() ? 0 : 1);
      s.reset();
      std::fputs("[conversation reset]\n", stdout);
      continue;
    }
    if (line.find_first_not_of(" \t\r\f\v") == std::string::npos) continue;  // nothing to say
    dialog.push_back({"user", line});
    std::vector<int32_t> tokens;
    try {
      tokens = chat_tokens(s.tok(), dialog);
      warn_fit(s, tokens, o.gp);
    } catch (const error& e) {
      std::fprintf(stderr, "qllm chat: %s\n", e.what());
      dialog.pop_back();
      continue;
    }
    g_interrupted = false;
    generation_result r;
    if (o.cot) {  // the dialog keeps the answer; the reasoning is shown on stderr only
      const auto p = cot_streams(&g_interrupted);
      cot_result c = chat_cot(s, dialog, o.gp, o.cot_p, p.reasoning, p.answer);
      if (!o.quiet) print_report(c.reasoning);
      r = std::move(c.answer);
    } else {
      // the answer's leading space belongs to the template
      r = s.generate(tokens, o.gp, printer(stdout, true, &g_interrupted));
    }
    std::fputc('\n', stdout);
    if (r.finish == finish_reason::cancelled) std::fputs("[stopped]\n", stdout);
    g_interrupted = false;
    dialog.push_back({"assistant", r.text});
    if (!o.quiet) print_report(r);
  }
  return 0;
}

int cmd_tokenize(int argc, char** argv) {
  const char* usage = "qllm tokenize [-m MODEL] (-p TEXT | -f FILE) [--no-bos] [--ids]";
  std::string model_path, text;
  bool have = false, bos = true, ids_only = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "-m" || a == "--model") model_path = next_value(argc, argv, i);
    else if (a == "-p" || a == "--prompt") text = next_value(argc, argv, i), have = true;
    else if (a == "-f" || a == "--file") text = read_file(next_value(argc, argv, i)), have = true;
    else if (a == "--no-bos") bos = false;
    else if (a == "--ids") ids_only = true;
    else if (is_help(a))
      return print_help(
          "usage: qllm tokenize [-m MODEL] (-p TEXT | -f FILE) [options]\n"
          "Prints the token ids and pieces of a text (reads only the vocabulary).\n"
          "  -m, --model FILE    GGUF model with a vocabulary (default: the shipped model)\n"
          "  -p, --prompt TEXT   the text\n"
          "  -f, --file FILE     the text from a file ('-' = stdin)\n"
          "  --no-bos            do not add the BOS token\n"
          "  --ids               ids only, on one line\n"
          "  -h, --help          this text\n");
    else throw error(errc::invalid_argument, "unknown option '" + a + "'; usage: " + usage);
  }
  if (!have) throw error(errc::invalid_argument, std::string("no text; usage: ") + usage);
  model_path = model_or_default(model_path, usage);
  // only the vocabulary is needed: the weights are neither read nor repacked
  const auto f = gguf::file::open(model_path);
  const auto tp = tokenizer::from_gguf(f);
  if (!tp) throw error(errc::unsupported, "'" + model_path + "' has no vocabulary (tokenizer.ggml.*)");
  const tokenizer& t = *tp;
  const auto ids = t.encode(text, bos && t.add_bos());
  if (ids_only) {
    for (std::size_t i = 0; i < ids.size(); ++i) std::printf("%s%d", i ? " " : "", ids[i]);
    std::printf("\n");
  } else {
    for (auto id : ids) std::printf("%6d  '%s'\n", id, t.piece(id).c_str());
    std::printf("%zu tokens\n", ids.size());
  }
  return 0;
}

int cmd_embed(int argc, char** argv) {
  const char* usage = "qllm embed [-m MODEL] (-p TEXT | -f FILE) [-t THREADS] [-c CTX]";
  text_options o;
  std::string text;
  bool have = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "-m" || a == "--model") o.model = next_value(argc, argv, i);
    else if (a == "-p" || a == "--prompt") text = next_value(argc, argv, i), have = true;
    else if (a == "-f" || a == "--file") text = read_file(next_value(argc, argv, i)), have = true;
    else if (a == "-t" || a == "--threads") o.sp.ctx.n_threads = int(parse_int(a, next_value(argc, argv, i), 1, 1024));
    else if (a == "-c" || a == "--ctx-size") o.sp.ctx.n_ctx = parse_int(a, next_value(argc, argv, i), 8, int64_t(1) << 24);
    else if (is_help(a))
      return print_help(
          "usage: qllm embed [-m MODEL] (-p TEXT | -f FILE) [options]\n"
          "Prints a sentence embedding: the mean-pooled final hidden state, L2-normalised.\n"
          "  -m, --model FILE     GGUF model with a vocabulary (default: the shipped model)\n"
          "  -p, --prompt TEXT    the text\n"
          "  -f, --file FILE      the text from a file ('-' = stdin)\n"
          "  -t, --threads N      threads (default: all CPUs)\n"
          "  -c, --ctx-size N     window (default: the text's length)\n"
          "  -h, --help           this text\n");
    else throw error(errc::invalid_argument, "unknown option '" + a + "'; usage: " + usage);
  }
  if (!have) throw error(errc::invalid_argument, std::string("no text; usage: ") + usage);
  auto m = load_text_model(o.model, usage);
  const tokenizer& t = *m->get_tokenizer();
  const auto ids = t.encode(text, t.add_bos());
  if (o.sp.ctx.n_ctx == 0) o.sp.ctx.n_ctx = std::max<int64_t>(8, int64_t(ids.size()));
  context ctx(m, o.sp.ctx);
  // mean-pooled final hidden state, L2-normalised, one line of n_embd numbers
  const auto e = ctx.embed(ids);
  for (std::size_t i = 0; i < e.size(); ++i) std::printf(i ? " %.6g" : "%.6g", double(e[i]));
  std::printf("\n");
  return 0;
}

int cmd_perplexity(int argc, char** argv) {
  const char* usage = "qllm perplexity [-m MODEL] -f TEXT [-c CTX] [-b BATCH] [-t THREADS] [--chunks N]";
  std::string model_path, file;
  context_params cp;
  cp.n_ctx = 512;
  int64_t max_chunks = -1;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "-m" || a == "--model") model_path = next_value(argc, argv, i);
    else if (a == "-f" || a == "--file") file = next_value(argc, argv, i);
    else if (a == "-c" || a == "--ctx-size") cp.n_ctx = parse_int(a, next_value(argc, argv, i), 8, 1 << 20);
    else if (a == "-b" || a == "--batch-size") cp.n_batch = parse_int(a, next_value(argc, argv, i), 1, 1 << 16);
    else if (a == "-t" || a == "--threads") cp.n_threads = int(parse_int(a, next_value(argc, argv, i), 1, 1024));
    else if (a == "--chunks") max_chunks = parse_int(a, next_value(argc, argv, i), 1, int64_t(1) << 30);
    else if (is_help(a))
      return print_help(
          "usage: qllm perplexity [-m MODEL] -f TEXT [options]\n"
          "Perplexity over windows of -c tokens (each starts with BOS; its second half is scored).\n"
          "  -m, --model FILE      GGUF model with a vocabulary (default: the shipped model)\n"
          "  -f, --file FILE       the text (required)\n"
          "  -c, --ctx-size N      window (default 512)\n"
          "  -b, --batch-size N    tokens per forward pass\n"
          "  -t, --threads N       threads (default: all CPUs)\n"
          "  --chunks N            score at most N windows\n"
          "  -h, --help            this text\n");
    else throw error(errc::invalid_argument, "unknown option '" + a + "'; usage: " + usage);
  }
  if (file.empty()) throw error(errc::invalid_argument, std::string("missing -f TEXT; usage: ") + usage);
  const std::string text = read_file(file);
  auto m = load_text_model(model_path, usage);
  const tokenizer& t = *m->get_tokenizer();
  const auto toks = t.encode(text, true);
  const int64_t n_ctx = cp.n_ctx, V = m->config().n_vocab;
  int64_t n_chunks = int64_t(toks.size()) / n_ctx;
  if (n_chunks == 0)
    throw error(errc::invalid_argument, "the text has " + std::to_string(toks.size()) + " tokens; perplexity needs at least -c " +
                                            std::to_string(n_ctx));
  if (max_chunks > 0) n_chunks = std::min(n_chunks, max_chunks);
  // As llama.cpp's perplexity: windows of n_ctx tokens, each starting with BOS, scored on their
  // second half (every scored token sees at least n_ctx/2 tokens of context).
  context ctx(m, cp);
  const int64_t first = n_ctx / 2;
  double nll = 0, nll2 = 0;
  int64_t count = 0;
  std::fprintf(stderr, "perplexity: %lld tokens, %lld chunks of %lld, scoring the last %lld of each\n",
               (long long)toks.size(), (long long)n_chunks, (long long)n_ctx, (long long)(n_ctx - first - 1));
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t c = 0; c < n_chunks; ++c) {
    std::vector<int32_t> w(toks.begin() + c * n_ctx, toks.begin() + (c + 1) * n_ctx);
    w[0] = t.bos();
    ctx.clear();
    const auto logits = ctx.eval(w, true);
    for (int64_t i = first; i + 1 < n_ctx; ++i) {
      const float* l = &logits[std::size_t(i * V)];
      double mx = l[0];
      for (int64_t v = 1; v < V; ++v) mx = std::max(mx, double(l[v]));
      double sum = 0;
      for (int64_t v = 0; v < V; ++v) sum += std::exp(double(l[v]) - mx);
      const double lp = double(l[w[std::size_t(i + 1)]]) - mx - std::log(sum);
      nll -= lp;
      nll2 += lp * lp;
      ++count;
    }
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::fprintf(stderr, "\r[%lld/%lld] ppl %.4f, %.1f s per chunk, %.0f s left   ", (long long)c + 1, (long long)n_chunks,
                 std::exp(nll / double(count)), secs / double(c + 1), secs / double(c + 1) * double(n_chunks - c - 1));
    std::printf("[%lld]%.4f%s", (long long)c + 1, std::exp(nll / double(count)), c + 1 < n_chunks ? "," : "\n");
    std::fflush(stdout);
  }
  const double mean = nll / double(count), var = nll2 / double(count) - mean * mean;
  const double ppl = std::exp(mean), err = ppl * std::sqrt(std::max(0.0, var) / double(count - 1 > 0 ? count - 1 : 1));
  std::fprintf(stderr, "\n");
  std::printf("PPL = %.4f +/- %.4f over %lld tokens\n", ppl, err, (long long)count);
  return 0;
}

}  // namespace qllm::cli
