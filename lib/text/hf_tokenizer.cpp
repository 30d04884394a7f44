// A Hugging Face tokenizer.json of Llama-3's kind read into a qllm vocabulary.
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "qllm/error.hpp"
#include "qllm/tokenizer.hpp"

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
  std::ifstream in(path, std::ios::binary);
  if (!in) throw error(errc::io, "cannot open tokenizer file '" + path + "'");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
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
    // the pre-tokenizer: Llama-3's split regex, then byte-level without its own regex
    bool split = false, byte_level = false;
    const auto& pt = j.at("pre_tokenizer");
    const nlohmann::json steps = pt.value("type", std::string()) == "Sequence" ? pt.at("pretokenizers") : nlohmann::json::array({pt});
    for (const auto& s : steps) {
      const std::string t = s.value("type", std::string());
      if (t == "Split" && s.contains("pattern") && s["pattern"].contains("Regex") &&
          s["pattern"]["Regex"].get<std::string>() == kLlama3Split && !s.value("invert", false)) {
        split = true;
      } else if (t == "ByteLevel" && !s.value("add_prefix_space", false) && !s.value("use_regex", true)) {
        byte_level = true;
      } else {
        unsupported(path, "pre-tokenizer step " + s.dump().substr(0, 200) + " is not Llama-3's");
      }
    }
    if (!split || !byte_level) unsupported(path, "the pre-tokenizer is not Llama-3's (its split regex, then byte-level)");

    std::map<int64_t, std::pair<std::string, token_type>> by_id;
    const auto add = [&](int64_t id, const std::string& piece, token_type t) {
      if (id < 0 || id >= int64_t(1) << 24) bad(path, "token id " + std::to_string(id) + " is out of range");
      if (!by_id.emplace(id, std::make_pair(piece, t)).second) {
        if (by_id[id].first != piece) bad(path, "token id " + std::to_string(id) + " is given twice");
        by_id[id].second = t;  // an added token repeating a vocabulary entry: the added type wins
      }
    };
    for (const auto& [piece, id] : m.at("vocab").items()) add(id.get<int64_t>(), piece, token_type::normal);
    if (j.contains("added_tokens"))
      for (const auto& a : j["added_tokens"])
        add(a.at("id").get<int64_t>(), a.at("content").get<std::string>(),
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
    const auto named = [&](std::string_view piece) {
      for (std::size_t i = 0; i < v.pieces.size(); ++i)
        if (v.pieces[i] == piece) return int32_t(i);
      return int32_t(-1);
    };
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

}  // namespace qllm
