// The tokenizers of Llama models: Llama-2's sentencepiece BPE over the vocabulary stored in the
// GGUF file (or a tokenizer.model), with byte fallback; Llama-3's byte-level BPE (GGUF
// tokenizer.ggml.model "gpt2", pre-tokenizer "llama-bpe") with its merges; and a streaming
// decoder that never splits a UTF-8 character.
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace qllm {

namespace gguf {
class file;
}

// Token types, numbered as in sentencepiece and in GGUF's tokenizer.ggml.token_type.
enum class token_type : int32_t { normal = 1, unknown = 2, control = 3, user_defined = 4, unused = 5, byte = 6 };

enum class tokenizer_kind : int32_t {
  sentencepiece = 0,  // GGUF "llama": pieces with U+2581 for a space, merges by score, byte fallback
  llama3_bpe = 1,     // GGUF "gpt2" + pre "llama-bpe": byte-level pieces (GPT-2's byte map), ranked merges
};

struct vocabulary {
  tokenizer_kind kind = tokenizer_kind::sentencepiece;
  std::vector<std::string> pieces;  // UTF-8; sentencepiece: U+2581 for a space; BPE: byte-level
  std::vector<float> scores;        // sentencepiece merge priority: higher merges first (BPE: unused)
  std::vector<token_type> types;
  std::vector<std::string> merges;  // BPE: "A B" per merge, highest priority first (GGUF tokenizer.ggml.merges)
  int32_t unk_id = 0;               // BPE vocabularies may have none: -1
  int32_t bos_id = 1;
  int32_t eos_id = 2;
  int32_t eot_id = -1;  // end of a chat turn (Llama-3's <|eot_id|>), -1: none; generation stops there too
  bool add_bos = true;          // encode() for a new sequence starts with BOS
  bool add_space_prefix = true;  // sentencepiece's dummy prefix: "Hi" is encoded as " Hi" (BPE: false)
  std::string chat_template;     // GGUF tokenizer.chat_template, "" when the file has none
};

// A Hugging Face tokenizer.json of Llama-3's kind (BPE with ignore_merges, Llama-3's split regex,
// byte-level), as it lies next to a checkpoint: pieces, merges, added tokens (special: control,
// else user-defined), BOS <|begin_of_text|>, EOS <|end_of_text|>, end of turn <|eot_id|>. Another
// kind of tokenizer: error(unsupported) naming what differs; a malformed file: error(bad_format).
vocabulary vocabulary_from_hf_json(const std::string& path);
// The inverse, for a Llama-3 byte-level BPE vocabulary: the text of a tokenizer.json that
// vocabulary_from_hf_json reads back as v (pieces, types, merges). Another kind:
// error(invalid_argument).
std::string hf_json_of_vocabulary(const vocabulary& v);

class tokenizer {
 public:
  // From GGUF keys tokenizer.ggml.* (model "llama", or "gpt2" with pre "llama-bpe" / "llama3").
  // No "tokenizer.ggml.model" key: nullptr. Another tokenizer model or pre-tokenizer, inconsistent
  // arrays, a missing <unk> (sentencepiece), a merge of pieces that are not tokens (BPE), duplicate
  // or empty pieces: error(bad_format or unsupported) naming the problem.
  static std::shared_ptr<const tokenizer> from_gguf(const gguf::file& f);
  // A sentencepiece tokenizer.model file (BPE with byte fallback, as Llama-2 ships it).
  static std::shared_ptr<const tokenizer> from_file(const std::string& path);
  static std::shared_ptr<const tokenizer> from_vocabulary(vocabulary v);
  ~tokenizer();

  // Text → ids; BOS first when add_bos. Text that is not valid UTF-8 is error(invalid_argument)
  // naming the byte offset. Control pieces (<s>, </s>, <|eot_id|>) written in the text stay plain
  // text, unless parse_special: then control and unknown pieces in the text become their tokens
  // (llama.cpp's set; at each position the longest piece, leftmost first, as Hugging Face's
  // added-token matching), and with sentencepiece each stretch of text between them is encoded
  // on its own, with its dummy prefix (as llama.cpp does). User-defined (added, not special)
  // pieces are always matched, as Hugging Face and llama.cpp do.
  std::vector<int32_t> encode(std::string_view text, bool add_bos, bool parse_special = false) const;
  std::size_t count(std::string_view text, bool add_bos) const { return encode(text, add_bos).size(); }

  // Ids → text as sentencepiece decodes a whole sequence: control tokens produce nothing, byte
  // tokens their byte, and the space of the dummy prefix is dropped from the first piece.
  // Ids outside the vocabulary: error(invalid_argument). Bytes that do not form UTF-8 → U+FFFD.
  std::string decode(std::span<const int32_t> ids) const;

  const vocabulary& vocab() const noexcept { return v_; }
  int32_t n_vocab() const noexcept { return int32_t(v_.pieces.size()); }
  int32_t bos() const noexcept { return v_.bos_id; }
  int32_t eos() const noexcept { return v_.eos_id; }
  int32_t unk() const noexcept { return v_.unk_id; }
  int32_t eot() const noexcept { return v_.eot_id; }  // -1: none
  // The token ends the model's answer: EOS, the end of a chat turn, or (byte-level BPE) any of
  // Llama-3's end pieces <|end_of_text|>, <|eot_id|>, <|eom_id|> the vocabulary has as control
  // tokens (an instruct model's EOS is <|eot_id|>, yet it may still write <|end_of_text|>).
  bool ends_answer(int32_t id) const noexcept {
    if (id == v_.eos_id || (id >= 0 && id == v_.eot_id)) return true;
    for (int32_t e : ends_)
      if (e == id) return true;
    return false;
  }
  const std::vector<int32_t>& end_tokens() const noexcept { return end_all_; }  // every id ends_answer accepts
  tokenizer_kind kind() const noexcept { return v_.kind; }
  bool add_bos() const noexcept { return v_.add_bos; }
  bool valid(int32_t id) const noexcept { return id >= 0 && id < n_vocab(); }
  const std::string& piece(int32_t id) const;  // error(invalid_argument) if !valid(id)
  // The bytes this token adds to the text (before any leading-space removal), e.g. " world".
  const std::string& token_text(int32_t id) const;
  bool is_control(int32_t id) const noexcept {
    return valid(id) && v_.types[std::size_t(id)] == token_type::control;
  }

 private:
  struct sp_state;
  struct bpe_state;
  explicit tokenizer(vocabulary v, std::unique_ptr<sp_state> loaded = nullptr);
  void init_bpe();
  vocabulary v_;
  std::vector<std::string> text_;
  std::vector<int32_t> ends_;     // end pieces besides EOS and EOT (byte-level BPE)
  std::vector<int32_t> end_all_;  // EOS, EOT and ends_
  std::unique_ptr<sp_state> sp_;
  std::unique_ptr<bpe_state> bpe_;
};

// Token-by-token decoding for streaming: push() returns the text that is complete so far.
// Bytes of a UTF-8 character split across tokens are held until the character is complete;
// bytes that can never complete one come out as U+FFFD, so every returned string is valid UTF-8
// and their concatenation equals decode() of the pushed ids (with strip_leading_space).
class stream_decoder {
 public:
  // strip_leading_space: drop the dummy-prefix space of the first piece (true when the first
  // pushed token starts the text; false when continuing after a prompt).
  explicit stream_decoder(const tokenizer& tok, bool strip_leading_space = false)
      : tok_(&tok), strip_(strip_leading_space) {}
  std::string push(int32_t id);
  std::string flush();  // the held-back bytes, each invalid byte as U+FFFD
  std::size_t pending() const noexcept { return held_.size(); }

 private:
  const tokenizer* tok_;
  bool strip_;
  std::string held_;
};

// Validation shared by the tokenizer and the streaming decoder.
namespace utf8 {
// Offset of the first byte that is not part of a valid UTF-8 sequence, or npos. A sequence cut
// short at the end counts as invalid here.
std::size_t first_invalid(std::string_view s) noexcept;
// Length of the valid sequence starting at s[0]: 1-4; 0 if s is a valid but incomplete prefix
// of a sequence; -1 if s[0] can never start a valid sequence with the bytes that follow.
int sequence_length(std::string_view s) noexcept;
// Appends s to out with every invalid byte replaced by U+FFFD.
void append_sanitized(std::string& out, std::string_view s);
}  // namespace utf8

}  // namespace qllm
