// The qllm side of tests/llama3_tokenizer.sh: a Llama-3 GGUF's tokenizer against reference
// encodings of a corpus, and the properties no reference gives.
//   llama3_check MODEL.gguf CORPUS.json REF.json [REF.json ...] [--bench LLAMA2_MODEL.gguf]
// For every string and reference: encode (specials parsed, as the references do) equals it; where
// the string holds no "<|", plain encode equals it too. Decode equals the string; streaming
// decode, token by token, emits valid UTF-8 at every step and the same text. Invalid UTF-8 is an
// error. With --bench: encode speed in MB/s against the sentencepiece tokenizer of another model
// on the same text. Exits 1 on any disagreement.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "qllm/error.hpp"
#include "qllm/gguf.hpp"
#include "qllm/tokenizer.hpp"

using namespace qllm;

static nlohmann::json read_json(const char* path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(std::string("cannot read ") + path);
  return nlohmann::json::parse(in);
}

static std::shared_ptr<const tokenizer> load(const char* path) {
  const auto f = gguf::file::open(path);
  auto t = tokenizer::from_gguf(f);
  if (!t) throw std::runtime_error(std::string(path) + " has no vocabulary");
  return t;
}

static std::string show(const std::vector<int32_t>& v) {
  std::string s = "[";
  for (std::size_t i = 0; i < v.size() && i < 40; ++i) {
    if (i) s += ' ';
    s += std::to_string(v[i]);
  }
  s += v.size() > 40 ? " ...]" : "]";
  return s;
}

int main(int argc, char** argv) try {
  if (argc < 4) {
    std::fprintf(stderr, "usage: llama3_check MODEL CORPUS REF [REF ...] [--bench LLAMA2_MODEL]\n");
    return 2;
  }
  const auto t0 = std::chrono::steady_clock::now();
  const auto tok = load(argv[1]);
  std::printf("tokenizer: %d tokens, %zu merges, loaded in %.0f ms\n", tok->n_vocab(), tok->vocab().merges.size(),
              std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  if (tok->kind() != tokenizer_kind::llama3_bpe) throw std::runtime_error("not a Llama-3 vocabulary");
  const auto corpus = read_json(argv[2]).get<std::vector<std::string>>();
  const char* bench = nullptr;
  std::vector<std::pair<std::string, std::vector<std::vector<int32_t>>>> refs;
  for (int i = 3; i < argc; ++i) {
    if (std::string(argv[i]) == "--bench" && i + 1 < argc) {
      bench = argv[++i];
      continue;
    }
    refs.emplace_back(argv[i], read_json(argv[i]).get<std::vector<std::vector<int32_t>>>());
    if (refs.back().second.size() != corpus.size()) throw std::runtime_error(std::string(argv[i]) + ": wrong length");
  }
  int failures = 0;
  const auto fail = [&](std::size_t i, const std::string& what) {
    if (++failures <= 20) std::printf("FAIL string %zu %s: %s\n", i, nlohmann::json(corpus[i]).dump().c_str(), what.c_str());
  };
  std::size_t plain = 0, tokens = 0, bytes = 0;
  std::vector<std::size_t> agree(refs.size());
  for (std::size_t i = 0; i < corpus.size(); ++i) {
    const std::string& s = corpus[i];
    const auto ids = tok->encode(s, false, true);
    tokens += ids.size();
    bytes += s.size();
    for (std::size_t r = 0; r < refs.size(); ++r) {
      if (ids == refs[r].second[i]) ++agree[r];
      else fail(i, refs[r].first + " gives " + show(refs[r].second[i]) + ", qllm " + show(ids));
    }
    const bool has_special = s.find("<|") != std::string::npos;
    if (!has_special) {
      ++plain;
      if (tok->encode(s, false, false) != ids) fail(i, "plain encode differs from the special-parsing one");
    }
    // decode: control tokens are silent, so compare where the string has no special piece
    const std::string back = tok->decode(ids);
    if (!has_special && back != s) fail(i, "decodes to " + nlohmann::json(back).dump());
    stream_decoder d(*tok);
    std::string streamed;
    for (int32_t id : ids) {
      const std::string piece = d.push(id);
      if (utf8::first_invalid(piece) != std::string::npos) fail(i, "streaming decode emitted invalid UTF-8");
      streamed += piece;
    }
    streamed += d.flush();
    if (streamed != back) fail(i, "streaming decode differs from decode");
    const auto with_bos = tok->encode(s, true, true);
    if (with_bos.empty() || with_bos[0] != tok->bos() || std::vector<int32_t>(with_bos.begin() + 1, with_bos.end()) != ids)
      fail(i, "add_bos does not prepend exactly BOS");
  }
  for (const char* badtext : {"\xFF", "ok\xC3", "a\xED\xA0\x80z", "\xF4\x90\x80\x80", "\xC0\xAF"}) {
    try {
      (void)tok->encode(badtext, false);
      ++failures;
      std::printf("FAIL invalid UTF-8 was encoded\n");
    } catch (const error& e) {
      if (e.code() != errc::invalid_argument) ++failures, std::printf("FAIL invalid UTF-8: wrong error %s\n", e.what());
    }
  }
  for (std::size_t r = 0; r < refs.size(); ++r)
    std::printf("%s: %zu of %zu strings agree\n", refs[r].first.c_str(), agree[r], corpus.size());
  std::printf("corpus: %zu strings (%zu without special pieces), %zu bytes, %zu tokens; decode and streaming "
              "decode round-trip: %s\n",
              corpus.size(), plain, bytes, tokens, failures ? "see failures" : "all");
  if (bench) {
    const auto sp = load(bench);
    std::string text;
    for (const auto& s : corpus)
      if (s.find("<|") == std::string::npos) text += s + "\n";
    while (text.size() < (std::size_t(1) << 20)) text += text;
    const auto speed = [&](const tokenizer& t, std::size_t& n) {
      double best = 0;
      for (int rep = 0; rep < 3; ++rep) {
        const auto t0 = std::chrono::steady_clock::now();
        n = t.encode(text, false).size();
        const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        best = std::max(best, double(text.size()) / s / 1e6);
      }
      return best;
    };
    std::size_t n3 = 0, n2 = 0;
    const double bpe = speed(*tok, n3), spm = speed(*sp, n2);
    std::printf("encode speed on %.1f MB of the corpus: Llama-3 BPE %.1f MB/s (%zu tokens), sentencepiece %.1f MB/s "
                "(%zu tokens): %.2fx\n",
                double(text.size()) / 1e6, bpe, n3, spm, n2, bpe / spm);
  }
  if (failures) std::printf("%d failures\n", failures);
  return failures ? 1 : 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "llama3_check: %s\n", e.what());
  return 1;
}
