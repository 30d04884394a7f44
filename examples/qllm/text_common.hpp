// Flags and reports shared by the text commands (run, chat, rag ask, ...).
#pragma once
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "qllm/model.hpp"
#include "qllm/session.hpp"

namespace qllm::cli {

// The contents of a file ('-' = stdin); errc::io if it cannot be opened.
std::string read_file(const std::string& path);

// Flags shared by run and chat.
struct text_options {
  std::string model;
  std::string prompt;
  bool have_prompt = false;
  session_params sp;
  generate_params gp;
  bool quiet = false;
  bool policy_set = false;
  bool keep_set = false;
  bool cot = false;  // chain of thought: reason, then extract the answer
  cot_params cot_p;
  std::string spec = "off";   // --spec lookup|draft|off
  int32_t draft_tokens = 8;   // --draft-tokens
  std::string draft;          // --draft MODEL
};

extern const char* kTextFlags;

// Consumes argv[i] (and its value) if it is a shared flag.
bool parse_text_flag(text_options& o, int argc, char** argv, int& i);
// `path` or the default model, with a vocabulary; prints the weight cache's status.
std::shared_ptr<const model> load_text_model(const std::string& path, const char* usage);
// A session over `m` with the options' parameters and, for --spec draft, the draft model loaded.
std::unique_ptr<session> make_session(std::shared_ptr<const model> m, const text_options& o);
// One line on stderr when a window (-c) is longer than the model's training context: allowed (RoPE
// scaling is the user's choice), but positions past it are ones the model never saw.
void warn_window(const model& m, int64_t n_ctx);
std::string mib(int64_t bytes);
// The report line after a generation, on stderr.
void print_report(const generation_result& r);
// Tells on stderr about tokens the session's policy will drop (or throws for the error policy).
void warn_fit(const session& s, const std::vector<int32_t>& tokens, const generate_params& gp);

// Streams generated text to `out` (flushing); strip_first_space drops the leading space of the first
// text (it belongs to the template); returns false to stop once *stop is set (may be null).
token_callback printer(std::FILE* out, bool strip_first_space, const std::atomic<bool>* stop = nullptr);
// Chain of thought on a terminal: the reasoning streams to stderr between markers, the answer to stdout.
struct cot_printers {
  token_callback reasoning, answer;
};
cot_printers cot_streams(const std::atomic<bool>* stop = nullptr);

}  // namespace qllm::cli
