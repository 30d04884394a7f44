#include "qllm/tokenizer.hpp"

#include <sentencepiece_processor.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <unordered_map>
#include <unordered_set>

#include "qllm/error.hpp"
#include "qllm/gguf.hpp"
#include "text/bpe.hpp"
#include "text/sp_proto.hpp"

namespace qllm {

namespace utf8 {

int sequence_length(std::string_view s) noexcept {
  if (s.empty()) return 0;
  const auto b0 = uint8_t(s[0]);
  if (b0 < 0x80) return 1;
  int n;
  uint8_t lo = 0x80, hi = 0xBF;  // allowed range of the second byte (excludes overlongs etc.)
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    n = 2;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    n = 3;
    if (b0 == 0xE0) lo = 0xA0;
    if (b0 == 0xED) hi = 0x9F;  // no UTF-16 surrogates
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    n = 4;
    if (b0 == 0xF0) lo = 0x90;
    if (b0 == 0xF4) hi = 0x8F;  // nothing above U+10FFFF
  } else {
    return -1;
  }
  for (int i = 1; i < n; ++i) {
    if (std::size_t(i) >= s.size()) return 0;  // valid so far, incomplete
    const auto b = uint8_t(s[std::size_t(i)]);
    const uint8_t l = i == 1 ? lo : 0x80, h = i == 1 ? hi : 0xBF;
    if (b < l || b > h) return -1;
  }
  return n;
}

std::size_t first_invalid(std::string_view s) noexcept {
  std::size_t i = 0;
  while (i < s.size()) {
    const int n = sequence_length(s.substr(i));
    if (n <= 0) return i;
    i += std::size_t(n);
  }
  return std::string_view::npos;
}

void append_sanitized(std::string& out, std::string_view s) {
  std::size_t i = 0;
  while (i < s.size()) {
    const int n = sequence_length(s.substr(i));
    if (n > 0) {
      out.append(s.substr(i, std::size_t(n)));
      i += std::size_t(n);
    } else {
      out += "\xEF\xBF\xBD";  // U+FFFD
      ++i;
    }
  }
}

}  // namespace utf8

namespace {

// The pieces encode() finds in text before the model's own encoder sees it: control pieces (with
// parse_special) and, for BPE, user-defined ones (always).
struct special_pieces {
  struct special {
    std::string_view piece;
    int32_t id;
    bool control;  // matched only with parse_special (user-defined pieces always)
  };
  // by their first two bytes (one-byte pieces under their byte and 0x100), longest first
  std::unordered_map<uint32_t, std::vector<special>> by_prefix;
  bool starts[256] = {};  // a special piece starts with this byte
  bool any_user_defined = false;

  void add(std::string_view p, int32_t id, bool control) {
    const uint32_t key = p.size() == 1 ? 0x100u | uint8_t(p[0]) : uint32_t(uint8_t(p[0])) << 8 | uint8_t(p[1]);
    by_prefix[key].push_back({p, id, control});
    starts[uint8_t(p[0])] = true;
    any_user_defined |= !control;
  }
  void sort() {
    for (auto& [key, list] : by_prefix)
      std::stable_sort(list.begin(), list.end(), [](const auto& a, const auto& b) { return a.piece.size() > b.piece.size(); });
  }
  // Calls plain(text piece) for the text between matches and ids.push_back(id) for each match.
  template <class Plain>
  void split(std::string_view text, bool parse_special, std::vector<int32_t>& ids, Plain&& plain) const {
    std::size_t from = 0;  // start of the plain text not yet encoded
    const auto match = [&](std::size_t i, uint32_t key) {
      const auto it = by_prefix.find(key);
      if (it == by_prefix.end()) return false;
      for (const auto& sp : it->second) {
        if ((sp.control && !parse_special) || text.compare(i, sp.piece.size(), sp.piece) != 0) continue;
        if (i > from) plain(text.substr(from, i - from));
        ids.push_back(sp.id);
        from = i + sp.piece.size();
        return true;
      }
      return false;
    };
    for (std::size_t i = 0; i < text.size();) {
      const auto c = uint8_t(text[i]);
      if (starts[c] && ((i + 1 < text.size() && match(i, uint32_t(c) << 8 | uint8_t(text[i + 1]))) || match(i, 0x100u | c))) {
        i = from;
        continue;
      }
      ++i;
    }
    if (from < text.size()) plain(text.substr(from));
  }
};

}  // namespace

// Sentencepiece: the processor, and the control pieces parse_special looks for.
struct tokenizer::sp_state {
  sentencepiece::SentencePieceProcessor proc;
  special_pieces specials;
};

// Byte-level BPE: the merges, and the special pieces.
struct tokenizer::bpe_state {
  explicit bpe_state(const vocabulary& v) : merges(v) {}
  text::bpe merges;
  special_pieces specials;
};

namespace {

bool parse_byte_piece(const std::string& p, int& byte) {
  if (p.size() != 6 || p.compare(0, 3, "<0x") != 0 || p[5] != '>') return false;
  auto hex = [](char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  const int h = hex(p[3]), l = hex(p[4]);
  if (h < 0 || l < 0) return false;
  byte = h * 16 + l;
  return true;
}

[[noreturn]] void bad(const std::string& what) { throw error(errc::bad_format, "vocabulary: " + what); }

}  // namespace

tokenizer::~tokenizer() = default;

tokenizer::tokenizer(vocabulary v, std::unique_ptr<sp_state> loaded) : v_(std::move(v)) {
  if (v_.kind == tokenizer_kind::llama3_bpe) {
    init_bpe();
    return;
  }
  if (v_.kind != tokenizer_kind::sentencepiece)
    throw error(errc::unsupported, "vocabulary: unknown tokenizer kind " + std::to_string(int32_t(v_.kind)));
  if (!v_.merges.empty()) bad("a sentencepiece vocabulary has no merges list");
  if (v_.eot_id != -1 && (v_.eot_id < 0 || std::size_t(v_.eot_id) >= v_.pieces.size()))
    bad("end-of-turn id " + std::to_string(v_.eot_id) + " is outside the vocabulary");
  const bool from_model_file = loaded != nullptr;
  sp_ = loaded ? std::move(loaded) : std::make_unique<sp_state>();
  const std::size_t n = v_.pieces.size();
  if (n == 0) bad("no tokens");
  if (n > std::size_t(INT32_MAX)) bad("too many tokens");
  if (v_.scores.size() != n) bad("scores has " + std::to_string(v_.scores.size()) + " entries for " + std::to_string(n) + " tokens");
  if (v_.types.size() != n) bad("token_type has " + std::to_string(v_.types.size()) + " entries for " + std::to_string(n) + " tokens");
  auto check_id = [&](int32_t id, const char* name, token_type want) {
    if (id < 0 || std::size_t(id) >= n) bad(std::string(name) + " id " + std::to_string(id) + " is outside the vocabulary");
    if (v_.types[std::size_t(id)] != want)
      bad(std::string(name) + " id " + std::to_string(id) + " ('" + v_.pieces[std::size_t(id)] + "') has the wrong token type");
  };
  check_id(v_.unk_id, "unknown-token", token_type::unknown);
  check_id(v_.bos_id, "BOS", token_type::control);
  check_id(v_.eos_id, "EOS", token_type::control);

  std::unordered_set<std::string_view> seen;
  seen.reserve(n);
  int n_unknown = 0;
  bool have_byte[256] = {};
  text_.resize(n);
  for (std::size_t i = 0; i < n; ++i) {
    const std::string& p = v_.pieces[i];
    const auto t = v_.types[i];
    if (p.empty()) bad("token " + std::to_string(i) + " is empty");
    if (utf8::first_invalid(p) != std::string_view::npos) bad("token " + std::to_string(i) + " is not valid UTF-8");
    if (!seen.insert(p).second) bad("token " + std::to_string(i) + " ('" + p + "') appears twice");
    if (!std::isfinite(v_.scores[i])) bad("token " + std::to_string(i) + " has a non-finite score");
    switch (t) {
      case token_type::normal:
      case token_type::user_defined:
        for (std::size_t k = 0; k < p.size(); ++k) {  // U+2581 → ' '
          if (p.compare(k, 3, "\xE2\x96\x81") == 0) {
            text_[i] += ' ';
            k += 2;
          } else {
            text_[i] += p[k];
          }
        }
        break;
      case token_type::unknown:
        ++n_unknown;
        text_[i] = " \xE2\x81\x87 ";  // " ⁇ ", sentencepiece's surface for <unk>
        break;
      case token_type::control:
        // sentencepiece splits text into characters first: a character that is a control piece
        // is never emitted and its encode fails ("all normalized characters are not consumed")
        if (utf8::sequence_length(p) == int(p.size()))
          bad("control token " + std::to_string(i) + " ('" + p + "') is a single character, which sentencepiece "
              "cannot encode text around");
        break;
      case token_type::unused:
        break;
      case token_type::byte: {
        int b;
        if (!parse_byte_piece(p, b)) bad("byte token " + std::to_string(i) + " ('" + p + "') is not of the form <0xNN>");
        if (have_byte[b]) bad("byte token " + p + " appears twice");
        have_byte[b] = true;
        text_[i] = std::string(1, char(b));
        break;
      }
      default:
        throw error(errc::unsupported, "vocabulary: token " + std::to_string(i) + " has unknown token type " +
                                           std::to_string(int32_t(t)));
    }
  }
  if (n_unknown != 1) bad("needs exactly one unknown token, has " + std::to_string(n_unknown));
  int n_bytes = 0;
  for (bool b : have_byte) n_bytes += b;
  if (n_bytes != 0 && n_bytes != 256)  // sentencepiece's byte fallback needs all or none
    bad("has " + std::to_string(n_bytes) + " of the 256 byte tokens; byte fallback needs all of them");
  const bool all_bytes = n_bytes == 256;

  end_all_ = {v_.eos_id};
  if (v_.eot_id >= 0) end_all_.push_back(v_.eot_id);
  // with parse_special, llama.cpp's set: control and unknown pieces, and user-defined ones
  // (which sentencepiece matches by itself otherwise) so that the longest piece wins
  for (std::size_t i = 0; i < n; ++i) {
    const token_type t = v_.types[i];
    if (t == token_type::control || t == token_type::unknown || t == token_type::user_defined)
      sp_->specials.add(v_.pieces[i], int32_t(i), t != token_type::user_defined);
  }
  sp_->specials.sort();
  if (from_model_file) return;  // a tokenizer.model file: its own normalizer and options
  const auto st = sp_->proc.LoadFromSerializedProto(text::serialize_model_proto(v_, all_bytes));
  if (!st.ok()) bad("sentencepiece rejected it: " + st.ToString());
}

void tokenizer::init_bpe() {
  const std::size_t n = v_.pieces.size();
  if (n == 0) bad("no tokens");
  if (n > std::size_t(INT32_MAX)) bad("too many tokens");
  if (v_.scores.empty()) v_.scores.assign(n, 0.0f);
  if (v_.scores.size() != n) bad("scores has " + std::to_string(v_.scores.size()) + " entries for " + std::to_string(n) + " tokens");
  if (v_.types.size() != n) bad("token_type has " + std::to_string(v_.types.size()) + " entries for " + std::to_string(n) + " tokens");
  if (v_.merges.empty()) bad("byte-level BPE needs tokenizer.ggml.merges");
  if (v_.add_space_prefix) bad("byte-level BPE adds no space prefix");
  auto check_id = [&](int32_t id, const char* name, bool optional) {
    if (optional && id == -1) return;
    if (id < 0 || std::size_t(id) >= n) bad(std::string(name) + " id " + std::to_string(id) + " is outside the vocabulary");
    const token_type t = v_.types[std::size_t(id)];
    if (t != token_type::control && !(optional && t == token_type::unknown))
      bad(std::string(name) + " id " + std::to_string(id) + " ('" + v_.pieces[std::size_t(id)] + "') is not a control token");
  };
  check_id(v_.bos_id, "BOS", false);
  check_id(v_.eos_id, "EOS", false);
  check_id(v_.eot_id, "end-of-turn", true);
  if (v_.unk_id != -1 && (v_.unk_id < 0 || std::size_t(v_.unk_id) >= n))
    bad("unknown-token id " + std::to_string(v_.unk_id) + " is outside the vocabulary");
  std::unordered_set<std::string_view> seen;
  seen.reserve(n);
  text_.resize(n);
  for (std::size_t i = 0; i < n; ++i) {
    const std::string& p = v_.pieces[i];
    if (p.empty()) bad("token " + std::to_string(i) + " is empty");
    if (utf8::first_invalid(p) != std::string_view::npos) bad("token " + std::to_string(i) + " is not valid UTF-8");
    if (!seen.insert(p).second) bad("token " + std::to_string(i) + " ('" + p + "') appears twice");
    if (!std::isfinite(v_.scores[i])) bad("token " + std::to_string(i) + " has a non-finite score");
    switch (v_.types[i]) {
      case token_type::normal: {
        bool ok;
        text_[i] = text::bpe::token_bytes(p, ok);
        if (!ok) bad("token " + std::to_string(i) + " ('" + p + "') is not byte-level BPE text");
        break;
      }
      case token_type::user_defined:  // added tokens: their text as written
        text_[i] = p;
        break;
      case token_type::unknown:
        text_[i] = " \xE2\x81\x87 ";
        break;
      case token_type::control:
      case token_type::unused:
        break;
      case token_type::byte:
        bad("token " + std::to_string(i) + " ('" + p + "') is a byte token, which byte-level BPE has none of");
      default:
        throw error(errc::unsupported, "vocabulary: token " + std::to_string(i) + " has unknown token type " +
                                           std::to_string(int32_t(v_.types[i])));
    }
  }
  bpe_ = std::make_unique<bpe_state>(v_);
  for (std::size_t i = 0; i < n; ++i) {
    const token_type t = v_.types[i];
    if (t != token_type::control && t != token_type::unknown && t != token_type::user_defined) continue;
    bpe_->specials.add(v_.pieces[i], int32_t(i), t != token_type::user_defined);
  }
  bpe_->specials.sort();
  // Llama-3's end pieces: an instruct model names <|eot_id|> as EOS, yet may end with the others
  const auto lt = bpe_->specials.by_prefix.find(uint32_t('<') << 8 | uint8_t('|'));
  if (lt != bpe_->specials.by_prefix.end())
    for (const char* end : {"<|end_of_text|>", "<|eot_id|>", "<|eom_id|>"})
      for (const auto& sp : lt->second)
        if (sp.control && sp.piece == end && sp.id != v_.eos_id && sp.id != v_.eot_id) ends_.push_back(sp.id);
  end_all_ = ends_;
  end_all_.push_back(v_.eos_id);
  if (v_.eot_id >= 0) end_all_.push_back(v_.eot_id);
}

std::shared_ptr<const tokenizer> tokenizer::from_vocabulary(vocabulary v) {
  return std::shared_ptr<const tokenizer>(new tokenizer(std::move(v)));
}

std::shared_ptr<const tokenizer> tokenizer::from_gguf(const gguf::file& f) {
  if (!f.find("tokenizer.ggml.model")) return nullptr;
  const std::string& kind = f.get_string("tokenizer.ggml.model");
  vocabulary v;
  if (kind == "gpt2") {
    const std::string pre = f.find("tokenizer.ggml.pre") ? f.get_string("tokenizer.ggml.pre") : std::string();
    if (pre != "llama-bpe" && pre != "llama3" && pre != "llama-v3")
      throw error(errc::unsupported,
                  "vocabulary: byte-level BPE with pre-tokenizer " + (pre.empty() ? std::string("(none given)") : "'" + pre + "'") +
                      " is not supported; qllm reads Llama-3's ('llama-bpe')");
    v.kind = tokenizer_kind::llama3_bpe;
  } else if (kind != "llama") {
    throw error(errc::unsupported, "vocabulary: tokenizer.ggml.model is '" + kind +
                                       "'; qllm reads sentencepiece ('llama') and Llama-3 byte-level BPE ('gpt2') vocabularies");
  }
  const bool is_bpe = v.kind == tokenizer_kind::llama3_bpe;
  v.pieces = f.get_array_string("tokenizer.ggml.tokens");
  const std::size_t n = v.pieces.size();
  if (f.find("tokenizer.ggml.scores")) {
    const auto& s = f.get_array_float("tokenizer.ggml.scores");
    v.scores.assign(s.begin(), s.end());
  } else if (!is_bpe) {
    bad("tokenizer.ggml.scores is missing (BPE merges need the scores)");
  }
  if (is_bpe) {
    if (!f.find("tokenizer.ggml.merges")) bad("tokenizer.ggml.merges is missing (byte-level BPE needs its merges)");
    v.merges = f.get_array_string("tokenizer.ggml.merges");
  }
  // range-checked as int64 before narrowing: 2^32 + 1 must not pass as 1
  auto id = [&](const char* key, int64_t fallback) {
    const int64_t x = f.get_int(key, fallback);
    if (x < 0 || x >= int64_t(n))
      bad(std::string(key) + " = " + std::to_string(x) + " is not a token id (the vocabulary has " +
          std::to_string(n) + " tokens)");
    return int32_t(x);
  };
  if (is_bpe) {
    // Llama-3 has no unknown token; its specials are found by name when the file names none
    const auto named = [&](std::string_view piece) { return text::find_piece(v.pieces, piece); };
    v.unk_id = f.find("tokenizer.ggml.unknown_token_id") ? id("tokenizer.ggml.unknown_token_id", 0) : -1;
    if (!f.find("tokenizer.ggml.bos_token_id")) bad("tokenizer.ggml.bos_token_id is missing");
    if (!f.find("tokenizer.ggml.eos_token_id")) bad("tokenizer.ggml.eos_token_id is missing");
    v.bos_id = id("tokenizer.ggml.bos_token_id", 0);
    v.eos_id = id("tokenizer.ggml.eos_token_id", 0);
    v.eot_id = f.find("tokenizer.ggml.eot_token_id") ? id("tokenizer.ggml.eot_token_id", 0) : named("<|eot_id|>");
    if (v.eot_id == v.eos_id) v.eot_id = -1;
    v.add_space_prefix = false;
    if (f.find("tokenizer.ggml.add_space_prefix") && f.get_bool("tokenizer.ggml.add_space_prefix", false))
      throw error(errc::unsupported, "vocabulary: byte-level BPE with add_space_prefix is not supported");
  } else {
    v.unk_id = id("tokenizer.ggml.unknown_token_id", 0);
    v.bos_id = id("tokenizer.ggml.bos_token_id", 1);
    v.eos_id = id("tokenizer.ggml.eos_token_id", 2);
    v.add_space_prefix = f.get_bool("tokenizer.ggml.add_space_prefix", true);
  }
  v.add_bos = f.get_bool("tokenizer.ggml.add_bos_token", true);
  if (f.find("tokenizer.chat_template")) v.chat_template = f.get_string("tokenizer.chat_template");
  if (f.find("tokenizer.ggml.token_type")) {
    for (int64_t t : f.get_array_int("tokenizer.ggml.token_type")) {
      if (t < 1 || t > 6) throw error(errc::unsupported, "vocabulary: unknown token type " + std::to_string(t));
      v.types.push_back(token_type(t));
    }
  } else {  // older files: infer the types
    v.types.resize(n, token_type::normal);
    for (std::size_t i = 0; i < n; ++i) {
      int b;
      if (parse_byte_piece(v.pieces[i], b)) v.types[i] = token_type::byte;
    }
    auto set = [&](int32_t id, token_type t) {
      if (id >= 0 && std::size_t(id) < n) v.types[std::size_t(id)] = t;
    };
    set(v.unk_id, token_type::unknown);
    set(v.bos_id, token_type::control);
    set(v.eos_id, token_type::control);
  }
  return from_vocabulary(std::move(v));
}

std::shared_ptr<const tokenizer> tokenizer::from_file(const std::string& path) {
  if (std::FILE* fp = std::fopen(path.c_str(), "rb")) {
    std::fclose(fp);
  } else {
    throw error(errc::io, "cannot open tokenizer file '" + path + "'");
  }
  auto state = std::make_unique<sp_state>();
  sentencepiece::SentencePieceProcessor& sp = state->proc;
  const auto st = sp.Load(path);
  if (!st.ok()) throw error(errc::bad_format, "'" + path + "' is not a sentencepiece model: " + st.ToString());
  vocabulary v;
  const int n = sp.GetPieceSize();
  for (int i = 0; i < n; ++i) {
    v.pieces.push_back(sp.IdToPiece(i));
    v.scores.push_back(sp.GetScore(i));
    token_type t = token_type::normal;
    if (sp.IsUnknown(i)) t = token_type::unknown;
    else if (sp.IsControl(i)) t = token_type::control;
    else if (sp.IsByte(i)) t = token_type::byte;
    else if (sp.IsUnused(i)) t = token_type::unused;
    v.types.push_back(t);
  }
  v.unk_id = sp.unk_id();
  v.bos_id = sp.bos_id();
  v.eos_id = sp.eos_id();
  // The file's normalizer stays in charge of encoding; whether it adds the dummy prefix (which
  // decoding must drop again) shows in how it encodes a single letter.
  std::vector<std::string> probe;
  if (sp.Encode("a", &probe).ok() && !probe.empty())
    v.add_space_prefix = probe.front().rfind("\xE2\x96\x81", 0) == 0;
  return std::shared_ptr<const tokenizer>(new tokenizer(std::move(v), std::move(state)));
}

std::vector<int32_t> tokenizer::encode(std::string_view text, bool add_bos, bool parse_special) const {
  const std::size_t bad_at = utf8::first_invalid(text);
  if (bad_at != std::string_view::npos)
    throw error(errc::invalid_argument, "text is not valid UTF-8 (byte " + std::to_string(bad_at) + ")");
  std::vector<int32_t> ids;
  if (add_bos) ids.push_back(v_.bos_id);
  if (text.empty()) return ids;
  if (bpe_) {
    if (!parse_special && !bpe_->specials.any_user_defined) {
      bpe_->merges.encode(text, ids);
      return ids;
    }
    bpe_->specials.split(text, parse_special, ids, [&](std::string_view plain) { bpe_->merges.encode(plain, ids); });
    return ids;
  }
  // sentencepiece: each stretch of text between control pieces is encoded on its own (with its
  // dummy prefix, as llama.cpp does after a special token)
  const auto sp_encode = [&](std::string_view plain) {
    std::vector<int> out;
    const auto st = sp_->proc.Encode(std::string(plain), &out);
    if (!st.ok()) throw error(errc::internal, "sentencepiece encode failed: " + st.ToString());
    ids.insert(ids.end(), out.begin(), out.end());
  };
  if (parse_special) sp_->specials.split(text, true, ids, sp_encode);
  else sp_encode(text);
  return ids;
}

const std::string& tokenizer::piece(int32_t id) const {
  if (!valid(id)) throw error(errc::invalid_argument, "token id " + std::to_string(id) + " is outside the vocabulary");
  return v_.pieces[std::size_t(id)];
}

const std::string& tokenizer::token_text(int32_t id) const {
  if (!valid(id)) throw error(errc::invalid_argument, "token id " + std::to_string(id) + " is outside the vocabulary");
  return text_[std::size_t(id)];
}

std::string tokenizer::decode(std::span<const int32_t> ids) const {
  stream_decoder d(*this, v_.add_space_prefix);
  std::string out;
  for (int32_t id : ids) out += d.push(id);
  out += d.flush();
  return out;
}

std::string stream_decoder::push(int32_t id) {
  const std::string& t = tok_->token_text(id);
  if (t.empty()) return {};
  std::string_view add = t;
  if (strip_) {  // sentencepiece drops the dummy prefix from the first piece, not from bytes
    strip_ = false;
    const token_type ty = tok_->vocab().types[std::size_t(id)];
    if ((ty == token_type::normal || ty == token_type::user_defined) && add.front() == ' ') add.remove_prefix(1);
  }
  held_ += add;
  // Emit everything up to the last position where a complete character ends; a tail that is a
  // valid but unfinished sequence stays held.
  std::string out;
  std::size_t i = 0;
  while (i < held_.size()) {
    const int n = utf8::sequence_length(std::string_view(held_).substr(i));
    if (n > 0) {
      out.append(held_, i, std::size_t(n));
      i += std::size_t(n);
    } else if (n == 0) {
      break;  // incomplete: wait for the next token
    } else {
      out += "\xEF\xBF\xBD";
      ++i;
    }
  }
  held_.erase(0, i);
  return out;
}

std::string stream_decoder::flush() {
  std::string out;
  utf8::append_sanitized(out, held_);
  held_.clear();
  return out;
}

}  // namespace qllm
