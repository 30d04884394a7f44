// Byte-level BPE (GGUF tokenizer.ggml.model "gpt2") with the Llama-3 pre-tokenizer ("llama-bpe").
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "qllm/tokenizer.hpp"

namespace qllm::gguf {
class writer;
}

namespace qllm::text {

// Writes a byte-level BPE vocabulary as llama.cpp's converter writes Llama-3's: tokenizer.ggml.
// model "gpt2", pre "llama-bpe", tokens, token_type, merges, bos/eos (and eot) ids, add_bos.
void write_bpe_vocabulary(gguf::writer& w, const vocabulary& v);

// The id of the piece written exactly so (a special token found by its name), or -1.
int32_t find_piece(const std::vector<std::string>& pieces, std::string_view piece) noexcept;

// The Unicode classes of the pre-tokenizer's regex (tables generated from the Unicode Character
// Database by scripts/gen_unicode_tables.py; white space is Unicode's White_Space property).
bool is_letter(uint32_t cp) noexcept;
bool is_number(uint32_t cp) noexcept;
bool is_space(uint32_t cp) noexcept;
const char* unicode_version() noexcept;

// Splits valid UTF-8 as Llama-3's pre-tokenizer regex does
//   (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|
//   \s*[\r\n]+|\s+(?!\S)|\s+
// (leftmost alternative first, each greedy with backtracking), written out by hand: linear time,
// no regex engine. The pieces cover the text in order.
std::vector<std::string_view> llama3_pretokenize(std::string_view text);

// GPT-2's byte ↔ character map: printable Latin-1 bytes stand for themselves, the others for
// U+0100 onwards in byte order.
uint32_t byte_to_char(uint8_t b) noexcept;
int char_to_byte(uint32_t cp) noexcept;  // -1 when cp stands for no byte

class bpe {
 public:
  // Validates the vocabulary's pieces and merges (error(bad_format) naming the problem): every
  // byte's character is a token, each merge "A B" has tokens A, B and AB, normal tokens are
  // byte-level text.
  explicit bpe(const vocabulary& v);
  // Appends the ids of plain text (no special tokens), pre-tokenized then merged by rank; a
  // pre-token that is a token is taken whole (Llama-3's ignore_merges).
  void encode(std::string_view text, std::vector<int32_t>& out) const;
  // The bytes a normal token stands for.
  static std::string token_bytes(std::string_view piece, bool& ok);

 private:
  void merge_word(std::string_view word, std::vector<int32_t>& out) const;
  int32_t find(std::string_view piece) const noexcept;  // a normal token's id, or -1
  struct merge_to {
    int32_t rank;
    int32_t id;
  };
  const merge_to* find_merge(int32_t left, int32_t right) const noexcept;
  // open addressing with linear probing, capacities powers of two at most half full (a 128k
  // vocabulary and 280k merges load in tens of milliseconds, not a node allocation per entry)
  struct piece_slot {
    uint32_t hash;
    int32_t id;  // -1: empty
  };
  struct merge_slot {
    uint64_t key;  // (left id << 32) | right id
    merge_to to;   // to.rank -1: empty
  };
  const std::vector<std::string>* pieces_;
  std::vector<piece_slot> ids_;  // byte-level piece → id (normal tokens)
  std::vector<merge_slot> merges_;
  int32_t byte_id_[256] = {};
};

}  // namespace qllm::text
