// qllm rag index / ask / search: answers from private documents through a SQLite store.
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "args.hpp"
#include "commands.hpp"
#include "qllm/error.hpp"
#include "qllm/gguf.hpp"
#include "qllm/rag.hpp"
#include "text_common.hpp"

namespace qllm::cli {
namespace {

const char* kUsage =
    "usage: qllm rag index DOCS... --db FILE [-m MODEL] [--chunk-tokens N] [--overlap N]\n"
    "       qllm rag ask --db FILE [-k CHUNKS] [--cot] [options] QUESTION\n"
    "       qllm rag search --db FILE [-k N] QUERY\n";

std::string base_name(const std::string& p) {
  const auto s = p.find_last_of('/');
  return s == std::string::npos ? p : p.substr(s + 1);
}

int rag_index(int argc, char** argv) {
  std::string db, model_path;
  rag::chunk_params cp;
  std::vector<std::string> docs;
  bool quiet = false, overlap_set = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--db") db = next_value(argc, argv, i);
    else if (a == "-m" || a == "--model") model_path = next_value(argc, argv, i);
    else if (a == "--chunk-tokens") cp.max_tokens = parse_int(a, next_value(argc, argv, i), 8, 1 << 20);
    else if (a == "--overlap") cp.overlap_tokens = parse_int(a, next_value(argc, argv, i), 0, 1 << 20), overlap_set = true;
    else if (a == "-q" || a == "--quiet") quiet = true;
    else if (is_help(a))
      return print_help(
          "usage: qllm rag index DOCS... --db FILE [options]\n"
          "Indexes text and markdown files (a directory: its *.txt, *.md, *.markdown, recursively) into a\n"
          "SQLite retrieval database. Unchanged files are skipped by content hash; a changed file's chunks\n"
          "are replaced in one transaction; documents whose file is gone are removed.\n"
          "  --db FILE            the database (created if missing)\n"
          "  -m, --model FILE     the model whose tokenizer counts chunk sizes (default: the shipped model)\n"
          "  --chunk-tokens N     tokens per chunk (default 192)\n"
          "  --overlap N          tokens of whole sentences repeated between chunks (default 32, at most\n"
          "                       a quarter of the chunk size)\n"
          "  -q, --quiet          no progress line\n"
          "  -h, --help           this text\n");
    else if (!a.empty() && a[0] == '-') throw error(errc::invalid_argument, "unknown option '" + a + "'");
    else docs.push_back(a);
  }
  if (db.empty()) throw error(errc::invalid_argument, std::string("missing --db FILE\n") + kUsage);
  if (docs.empty()) throw error(errc::invalid_argument, std::string("no documents to index\n") + kUsage);
  if (!overlap_set) cp.overlap_tokens = std::min<int64_t>(cp.overlap_tokens, cp.max_tokens / 4);
  for (const auto& d : docs)  // before the database is created
    if (access(d.c_str(), F_OK) != 0) throw error(errc::invalid_argument, "'" + d + "' does not exist");
  // only the vocabulary is needed: the weights are neither read nor repacked
  const std::string mp = model_or_default(model_path, kUsage);
  const auto f = gguf::file::open(mp);
  const auto tok = tokenizer::from_gguf(f);
  if (!tok) throw error(errc::unsupported, "'" + mp + "' has no vocabulary (tokenizer.ggml.*)");
  (void)rag::split(*tok, "", cp);  // bad chunk settings: an error before the database is created
  auto st = rag::store::open(db, true);
  const bool tty = isatty(STDERR_FILENO) && !quiet;
  const auto r = st->index(docs, *tok, cp, [&](std::size_t done, std::size_t total, const std::string& p) {
    if (!tty) return;
    const int width = 30, filled = int(double(done) / double(total) * width);
    std::fprintf(stderr, "\r[%.*s%*s] %zu/%zu %-40.40s", filled, "##############################", width - filled, "",
                 done, total, base_name(p).c_str());
    if (done == total) std::fputc('\n', stderr);
  });
  for (const auto& s : r.skipped) std::fprintf(stderr, "qllm rag: skipped %s\n", s.c_str());
  for (const auto& s : r.removed) std::fprintf(stderr, "qllm rag: removed %s (the file is gone)\n", s.c_str());
  std::printf("indexed: %lld added, %lld changed, %lld unchanged, %lld removed, %lld skipped; chunks: +%lld -%lld; "
              "%s now holds %lld documents, %lld chunks\n",
              (long long)r.files_added, (long long)r.files_changed, (long long)r.files_unchanged, (long long)r.files_removed,
              (long long)r.files_skipped, (long long)r.chunks_added, (long long)r.chunks_removed, db.c_str(),
              (long long)st->n_documents(), (long long)st->n_chunks());
  return 0;
}

int rag_search(int argc, char** argv) {
  std::string db, query;
  int64_t k = 8;
  bool have = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--db") db = next_value(argc, argv, i);
    else if (a == "-k" || a == "--top-k") k = parse_int(a, next_value(argc, argv, i), 1, 10000);
    else if (is_help(a))
      return print_help(
          "usage: qllm rag search --db FILE [-k N] QUERY\n"
          "Prints the chunks BM25 ranks best for the words of QUERY (no model is run).\n"
          "  --db FILE        the database\n"
          "  -k, --top-k N    chunks to print (default 8)\n");
    else if (!a.empty() && a[0] == '-') throw error(errc::invalid_argument, "unknown option '" + a + "'");
    else query += (have ? " " : "") + a, have = true;
  }
  if (db.empty() || !have) throw error(errc::invalid_argument, std::string("need --db FILE and a query\n") + kUsage);
  auto st = rag::store::open(db, false);
  const auto hits = st->search(query, k);
  if (hits.empty()) std::printf("no chunk matches the words of the query (search: %s)\n", rag::fts_query(query).c_str());
  for (std::size_t i = 0; i < hits.size(); ++i) {
    const auto& h = hits[i];
    std::printf("%zu. chunk %lld (%s#%lld), score %.3f, %lld tokens\n%s\n\n", i + 1, (long long)h.chunk_id,
                base_name(h.path).c_str(), (long long)h.seq, h.score, (long long)h.n_tokens, h.text.c_str());
  }
  return 0;
}

int rag_ask(int argc, char** argv) {
  const char* usage = "qllm rag ask --db FILE [-k CHUNKS] [--cot] [options] QUESTION";
  text_options o;
  o.gp.max_tokens = 128;
  std::string db, question;
  rag::ask_params ap;
  bool have = false, show_prompt = false;
  // the answer never shifts the passages out of the window: it stops when the window is full
  o.sp.context_shift = false;
  // answers copy from their passages (and small models from themselves): speculation by prompt
  // lookup is on unless --spec says otherwise (docs/performance.md has what it gained)
  o.spec = "lookup";
  o.gp.draft_tokens = o.draft_tokens;
  o.gp.spec = speculation::lookup;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    // before the shared flags: --top-k there is the sampler's
    if (a == "-k" || a == "--chunks") {
      ap.top_k = parse_int(a, next_value(argc, argv, i), 1, 10000);
      continue;
    }
    if (parse_text_flag(o, argc, argv, i)) continue;
    if (a == "--db") db = next_value(argc, argv, i);
    else if (a == "--system") ap.system = next_value(argc, argv, i);
    else if (a == "--show-prompt") show_prompt = true;
    else if (a == "-p" || a == "--prompt") question = next_value(argc, argv, i), have = true;
    else if (a == "-f" || a == "--file") question = read_file(next_value(argc, argv, i)), have = true;
    else if (is_help(a)) {
      std::printf("usage: %s\n"
                  "Retrieves the top-k chunks, fits as many whole chunks as the window allows (lowest-ranked\n"
                  "dropped first, each drop reported), answers with the Llama-2-chat template and lists the\n"
                  "chunks it was given as sources.\n"
                  "  --db FILE                   the database (qllm rag index)\n"
                  "  -k, --chunks N              chunks to retrieve (default 8; --top-k is the sampler's)\n"
                  "  --system TEXT               instructions (default: answer from the passages, cite them)\n"
                  "  --show-prompt               print the prompt given to the model on stderr\n"
                  "  -p TEXT | -f FILE           the question (or as the last argument)\n"
                  "(-n defaults to 128 here, all of it kept free in the window, and the answer stops when the\n"
                  "window is full rather than shift the passages out. --spec defaults to lookup here: the same\n"
                  "answer, drafts copied from the passages and the answer so far. Chunk sizes were counted with the\n"
                  "tokenizer given to rag index: index with the model you ask with.)\n%s",
                  usage, kTextFlags);
      return 0;
    } else if (!a.empty() && a[0] == '-') throw error(errc::invalid_argument, "unknown option '" + a + "'");
    else question += (have ? " " : "") + a, have = true;
  }
  if (db.empty() || !have) throw error(errc::invalid_argument, std::string("need --db FILE and a question; usage: ") + usage);
  auto st = rag::store::open(db, false);  // before the model: a bad database fails fast
  auto m = load_text_model(o.model, usage);
  auto sp_ = make_session(m, o);
  session& s = *sp_;
  warn_window(*m, o.sp.ctx.n_ctx);
  ap.cot = o.cot;
  ap.cot_p = o.cot_p;
  // the report comes before the answer, so the user sees first what was left out
  rag::prompt built = rag::prepare(s, *st, question, ap, o.gp);
  std::fprintf(stderr, "qllm rag: %zu chunks retrieved, %zu given to the model, %zu dropped\n%s",
               built.used.size() + built.dropped.size(), built.used.size(), built.dropped.size(),
               rag::describe(built).c_str());
  if (show_prompt) std::fprintf(stderr, "--- prompt ---\n%s\n--- end of prompt ---\n", chat_text(*m->get_tokenizer(), built.dialog).c_str());
  const auto p = cot_streams();
  const rag::answer ans = rag::respond(s, std::move(built), ap, o.gp, o.cot ? p.answer : printer(stdout, true), p.reasoning);
  std::fputc('\n', stdout);
  std::printf("sources:");
  if (ans.built.used.empty())
    std::printf(ans.built.dropped.empty() ? " none (no chunk matched the question)"
                                          : " none (chunks matched, but none fit the window: see the report above)");
  std::printf("\n");
  for (std::size_t i = 0; i < ans.built.used.size(); ++i) {
    const auto& u = ans.built.used[i];
    std::printf("  [%zu] chunk %lld: %s#%lld\n", i + 1, (long long)u.h.chunk_id, u.h.path.c_str(), (long long)u.h.seq);
  }
  if (!o.quiet) print_report(ans.result);
  return 0;
}

}  // namespace

int cmd_rag(int argc, char** argv) {
  if (argc < 2 || is_help(argv[1])) {
    std::fputs(kUsage, argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  const std::string sub = argv[1];
  if (sub == "index") return rag_index(argc - 1, argv + 1);
  if (sub == "ask") return rag_ask(argc - 1, argv + 1);
  if (sub == "search") return rag_search(argc - 1, argv + 1);
  throw error(errc::invalid_argument, "unknown rag command '" + sub + "'\n" + kUsage);
}

}  // namespace qllm::cli
