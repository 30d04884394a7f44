// Small command-line parsing helpers: every bad value is a one-line qllm::error.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace qllm::cli {

// Parses a whole decimal integer in [lo, hi]; throws naming the flag otherwise.
int64_t parse_int(const std::string& flag, const std::string& text, int64_t lo, int64_t hi);
double parse_float(const std::string& flag, const std::string& text, double lo, double hi);
// "64,512" -> {64, 512}, each in [lo, hi].
std::vector<int64_t> parse_int_list(const std::string& flag, const std::string& text, int64_t lo,
                                    int64_t hi);
// The value after argv[i] (advancing i); throws if the flag is last.
std::string next_value(int argc, char** argv, int& i);
// True for -h and --help.
bool is_help(const std::string& arg);
// Prints a command's help text on stdout; returns exit code 0.
int print_help(const char* text);
// The model used when no -m is given: $QLLM_DEFAULT_MODEL if set; else the shipped default model
// (models/tiny-kjv.q8_0.gguf): for a binary of the build tree, the source tree's; for an installed
// one, <prefix>/<datadir>/qllm/ found relative to the executable (the prefix can move), then the
// configured prefix.
// path is empty if none exists; `looked` lists the places tried.
struct default_model {
  std::string path, origin, looked;
};
default_model find_default_model();
// `path`, or the default model when it is empty; throws naming the places looked if there is none.
std::string model_or_default(const std::string& path, const char* usage);
// Peak resident set size of this process, bytes (since the last successful reset_peak_rss()).
int64_t peak_rss_bytes();
// Sets the peak back to the current resident size (Linux: /proc/self/clear_refs); false if not.
bool reset_peak_rss();
// One progress line on stderr ("[3/39 tensors] 1.2 GiB of 13.5 GiB, 195 MB/s, ETA 61 s"),
// rewritten in place; a newline when done == total.
void print_progress(std::size_t done, std::size_t total, uint64_t bytes_done, uint64_t bytes_total, double seconds);

}  // namespace qllm::cli
