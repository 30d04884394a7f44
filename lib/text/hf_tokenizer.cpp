// A Hugging Face tokenizer.json of Llama-3's kind read into a qllm vocabulary.
#include <sys/stat.h>

#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "qllm/error.hpp"
#include "qllm/tokenizer.hpp"
#include "text/bpe.hpp"

namespace qllm {

namespace {

constexpr std::string_view kLlama3Split =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

[[noreturn]] void bad(const std::string& path, const std::string& what) {
  throw error(errc::bad_format, "tokenizer '" + path + "': " + what);
}
[[noreturn]] void unsupported(const std::string& path, const std::string& what) {
  throw error(errc::unsupported, "tokenizer '" + path + "': " + what);
}

}  // namespace

vocabulary vocabulary_from_hf_json(const std::string& path) {
  // a regular file of at most 256 MiB (a FIFO would block, a device never end), nested at most
  // 64 deep (a file of '[' would otherwise build a huge tree before failing)
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) throw error(errc::io, "cannot open tokenizer file '" + path + "'");
  if (!S_ISREG(st.st_mode)) throw error(errc::io, "tokenizer '" + path + "' is not a regular file");
  if (uint64_t(st.st_size) > (uint64_t(256) << 20)) bad(path, "larger than 256 MiB");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw error(errc::io, "cannot open tokenizer file '" + path + "'");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in, [&](int depth, nlohmann::json::parse_event_t, nlohmann::json&) {
      if (depth > 64) bad(path, "JSON nested more than 64 deep");
      return true;
    });
  } catch (const nlohmann::json::exception& e) {
    bad(path, std::string("not JSON: ") + e.what());
  }
  try {
    const auto& m = j.at("model");
    if (m.value("type", std::string()) != "BPE")
      unsupported(path, "model type '" + m.value("type", std::string("(none)")) + "' is not BPE");
    if (m.value("byte_fallback", false)) unsupported(path, "BPE with byte_fallback (a sentencepiece-style BPE) is not supported");
    if (!m.value("ignore_merges", false))
      unsupported(path, "BPE without ignore_merges is not Llama-3's tokenizer (not supported)");
    if (j.contains("normalizer") && !j["normalizer"].is_null()) unsupported(path, "a normalizer is not supported");
    // BPE options Llama-3 leaves unset
    for (const char* key : {"dropout", "continuing_subword_prefix", "end_of_word_suffix", "unk_token"})
      if (m.contains(key) && !m[key].is_null() && !(m[key].is_string() && m[key].get<std::string>().empty()))
        unsupported(path, std::string("BPE with ") + key + " " + m[key].dump() + " is not Llama-3's (not supported)");
    // the pre-tokenizer: Llama-3's split regex (isolating its matches), then byte-level without
    // its own regex, in that order
    const auto& pt = j.at("pre_tokenizer");
    const nlohmann::json steps = pt.value("type", std::string()) == "Sequence" ? pt.at("pretokenizers") : nlohmann::json::array({pt});
    const auto is_split = [](const nlohmann::json& s) {
      return s.value("type", std::string()) == "Split" && s.contains("pattern") && s["pattern"].is_object() &&
             s["pattern"].contains("Regex") && s["pattern"]["Regex"].is_string() &&
             s["pattern"]["Regex"].get<std::string>() == kLlama3Split && s.value("behavior", std::string()) == "Isolated" &&
             !s.value("invert", false);
    };
    const auto is_byte_level = [](const nlohmann::json& s) {
      return s.value("type", std::string()) == "ByteLevel" && !s.value("add_prefix_space", false) && !s.value("use_regex", true);
    };
    if (!steps.is_array() || steps.size() != 2 || !is_split(steps[0]) || !is_byte_level(steps[1]))
      unsupported(path, "the pre-tokenizer " + pt.dump().substr(0, 300) +
                            " is not Llama-3's (its split regex, isolating, then byte-level without a regex)");

    std::map<int64_t, std::pair<std::string, token_type>> by_id;
    const auto add = [&](int64_t id, const std::string& piece, token_type t) {
      if (id < 0 || id >= int64_t(1) << 24) bad(path, "token id " + std::to_string(id) + " is out of range");
      if (!by_id.emplace(id, std::make_pair(piece, t)).second) {
        if (by_id[id].first != piece) bad(path, "token id " + std::to_string(id) + " is given twice");
        by_id[id].second = t;  // an added token repeating a vocabulary entry: the added type wins
      }
    };
    const auto id_of = [&](const nlohmann::json& id) {
      if (!id.is_number_integer()) bad(path, "token id " + id.dump() + " is not an integer");
      return id.get<int64_t>();
    };
    for (const auto& [piece, id] : m.at("vocab").items()) add(id_of(id), piece, token_type::normal);
    if (j.contains("added_tokens"))
      for (const auto& a : j["added_tokens"])
        add(id_of(a.at("id")), a.at("content").get<std::string>(),
            a.value("special", false) ? token_type::control : token_type::user_defined);
    vocabulary v;
    v.kind = tokenizer_kind::llama3_bpe;
    v.add_space_prefix = false;
    int64_t expect = 0;
    for (auto& [id, pt2] : by_id) {
      if (id != expect) bad(path, "no token has id " + std::to_string(expect) + " (ids must be 0..n-1)");
      ++expect;
      v.pieces.push_back(std::move(pt2.first));
      v.types.push_back(pt2.second);
    }
    v.scores.assign(v.pieces.size(), 0.0f);
    for (const auto& mg : m.at("merges")) {
      if (mg.is_string()) {
        v.merges.push_back(mg.get<std::string>());
      } else if (mg.is_array() && mg.size() == 2) {  // newer files: ["A", "B"]
        v.merges.push_back(mg[0].get<std::string>() + " " + mg[1].get<std::string>());
      } else {
        bad(path, "a merge is neither \"A B\" nor [\"A\", \"B\"]");
      }
    }
    const auto named = [&](std::string_view piece) { return text::find_piece(v.pieces, piece); };
    v.bos_id = named("<|begin_of_text|>");
    v.eos_id = named("<|end_of_text|>");
    v.eot_id = named("<|eot_id|>");
    v.unk_id = -1;
    if (v.bos_id < 0 || v.eos_id < 0)
      unsupported(path, "no <|begin_of_text|> / <|end_of_text|> tokens: not a Llama-3 vocabulary");
    return v;
  } catch (const nlohmann::json::exception& e) {
    bad(path, std::string("unexpected structure: ") + e.what());
  }
}

std::string hf_json_of_vocabulary(const vocabulary& v) {
  if (v.kind != tokenizer_kind::llama3_bpe || v.types.size() != v.pieces.size())
    throw error(errc::invalid_argument, "tokenizer.json: only a Llama-3 byte-level BPE vocabulary is written");
  nlohmann::json vocab = nlohmann::json::object(), added = nlohmann::json::array();
  for (std::size_t i = 0; i < v.pieces.size(); ++i) {
    const token_type t = v.types[i];
    if (t == token_type::control || t == token_type::user_defined)
      added.push_back({{"id", i}, {"content", v.pieces[i]}, {"special", t == token_type::control}});
    else
      vocab[v.pieces[i]] = i;
  }
  const nlohmann::json split = {{"type", "Split"}, {"pattern", {{"Regex", std::string(kLlama3Split)}}},
                                {"behavior", "Isolated"}, {"invert", false}};
  const nlohmann::json byte_level = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true},
                                     {"use_regex", false}};
  const nlohmann::json j = {
      {"version", "1.0"},
      {"added_tokens", added},
      {"normalizer", nullptr},
      {"pre_tokenizer", {{"type", "Sequence"}, {"pretokenizers", {split, byte_level}}}},
      {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}}},
      {"model", {{"type", "BPE"}, {"ignore_merges", true}, {"byte_fallback", false}, {"vocab", vocab}, {"merges", v.merges}}}};
  return j.dump() + "\n";
}

}  // namespace qllm
