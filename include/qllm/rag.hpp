// Retrieval over private documents: a chunker that counts with the model's tokenizer, a SQLite
// store with FTS5 (BM25) search, and a prompt builder that fits whole chunks into the window and
// reports every chunk it leaves out.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "qllm/session.hpp"
#include "qllm/tokenizer.hpp"

namespace qllm::rag {

struct chunk_params {
  int64_t max_tokens = 192;     // tokens per chunk (no BOS), counted with the model's tokenizer
  int64_t overlap_tokens = 32;  // at most this many tokens of whole sentences repeated from the previous chunk
};

struct chunk {
  std::string text;
  int64_t n_tokens = 0;  // tokenizer.count(text, false) <= max_tokens
  int64_t begin = 0;     // byte range of the text in the document (overlap included)
  int64_t end = 0;
};

// Splits UTF-8 text into chunks of whole paragraphs (blank-line separated), then whole sentences,
// then whole words, cutting inside a word only when one word alone exceeds max_tokens. Each chunk
// after the first starts with up to overlap_tokens of the previous chunk's last sentences.
// Errors: invalid_argument (max_tokens < 8, overlap < 0 or >= max_tokens / 2, text not UTF-8).
std::vector<chunk> split(const tokenizer& tok, std::string_view text, const chunk_params& p);

struct hit {
  int64_t chunk_id = 0;  // stable id of the chunk in the store
  std::string path;      // the document it came from
  int64_t seq = 0;       // its number within the document, from 0
  std::string text;
  int64_t n_tokens = 0;  // as counted when indexed
  double score = 0;      // BM25 relevance, higher is better
};

struct index_report {
  int64_t files_added = 0, files_changed = 0, files_unchanged = 0, files_removed = 0, files_skipped = 0;
  int64_t chunks_added = 0, chunks_removed = 0;
  std::vector<std::string> skipped;  // "path: why" for each file that was not indexed
  std::vector<std::string> removed;  // documents whose file no longer exists
};

// Called after each file: files done, files in all, path.
using index_progress = std::function<void(std::size_t done, std::size_t total, const std::string& path)>;

// A retrieval database: one SQLite file (WAL journal) with the documents, their chunks and an FTS5
// index of the chunks. Thread-safe: calls are serialised on the one connection; several processes
// may read one file while one writes.
class store {
 public:
  // create: make the file if it does not exist. Errors: io (cannot open), bad_format (not a
  // SQLite database, or a database that is not a qllm store, or a newer store format).
  static std::unique_ptr<store> open(const std::string& path, bool create);
  ~store();

  // Indexes text and markdown files; a directory adds its *.txt, *.md and *.markdown files,
  // recursively. A file whose content hash and chunk settings are unchanged is skipped; a changed
  // file's chunks are replaced in one transaction; documents whose file no longer exists are
  // removed, and so is one whose file can no longer be indexed. Files that are not UTF-8 text, hold
  // a NUL byte or exceed 32 MiB are skipped with a reason (the report lists them). Symbolic links
  // are resolved: a file reached twice is one document. A folder that changes while it is listed
  // is indexed as far as it could be listed (reported in `skipped`).
  // Errors: invalid_argument (bad chunk settings, a path that does not exist), io, bad_format.
  index_report index(std::span<const std::string> paths, const tokenizer& tok, const chunk_params& p,
                     const index_progress& progress = {});

  // The k chunks that best match the words of `query` (BM25 over FTS5, any of the words), best first.
  // A query without searchable words gives no hits.
  std::vector<hit> search(std::string_view query, int64_t k);

  int64_t n_documents();
  int64_t n_chunks();
  const std::string& path() const noexcept;

  struct impl;

 private:
  explicit store(std::unique_ptr<impl> p);
  std::unique_ptr<impl> impl_;
};

// The words of a question as an FTS5 query: each word quoted, joined with OR, common English
// words left out; empty when nothing is left.
std::string fts_query(std::string_view question);

struct prompt_params {
  // Before the passages; "" = the default (answer from the numbered passages, cite them).
  std::string system;
  int64_t n_ctx = 0;      // the window
  int64_t n_reserve = 0;  // tokens left free for the answer (generation, and a CoT answer stage)
};

struct used_chunk {
  hit h;
  int64_t rank = 0;      // 1 = best
  int64_t n_tokens = 0;  // tokens of the chunk's text
};

struct dropped_chunk {
  hit h;
  int64_t rank = 0;
  int64_t n_tokens = 0;
  std::string reason;
};

struct prompt {
  std::vector<chat_message> dialog;  // system + one user message (passages, then the question)
  std::vector<int32_t> tokens;       // chat_tokens(dialog): tokens.size() + n_reserve <= n_ctx
  std::vector<used_chunk> used;      // in rank order, numbered [1], [2], ... in the prompt
  std::vector<dropped_chunk> dropped;
  int64_t n_ctx = 0, n_reserve = 0;
};

// Builds the Llama-2-chat prompt with as many of the ranked chunks as fit, whole, in rank order:
// the first chunk that does not fit and every chunk ranked below it are dropped (lowest-ranked
// first, never a cut inside a chunk), each with the reason. Errors: context_overflow when the
// instructions and the question alone leave no room for n_reserve (saying how many tokens too
// many); invalid_argument for an empty question or bad sizes.
prompt build_prompt(const tokenizer& tok, std::string_view question, std::span<const hit> ranked,
                    const prompt_params& p);

// One line per used and dropped chunk, for people ("used [1] chunk 12 GPL-3#4, 180 tokens").
std::string describe(const prompt& p);

struct ask_params {
  int64_t top_k = 8;
  std::string system;  // "" = the default instructions
  bool cot = false;    // reason step by step, then extract the answer (chat_cot)
  cot_params cot_p;
};

struct answer {
  prompt built;            // what the model was given, and what was left out
  generation_result result;  // the answer (with cot: the answer stage)
  std::string reasoning;   // with cot: the reasoning stage's text
  finish_reason reasoning_finish = finish_reason::eos;
};

// search, then build_prompt with the session's window and a reserve of all of gp.max_tokens
// (session::reserve_for when it is -1), plus, with cot, the reasoning cue and the answer stage.
prompt prepare(session& s, store& st, std::string_view question, const ask_params& ap, const generate_params& gp);
// Generates the answer to a prepared prompt, streaming it (and the reasoning, with cot).
answer respond(session& s, prompt built, const ask_params& ap, const generate_params& gp,
               const token_callback& on_answer = {}, const token_callback& on_reasoning = {});
// prepare, then respond.
answer ask(session& s, store& st, std::string_view question, const ask_params& ap, const generate_params& gp,
           const token_callback& on_answer = {}, const token_callback& on_reasoning = {});

}  // namespace qllm::rag
