#include "text/sp_proto.hpp"

#include <cstdint>
#include <cstring>

namespace qllm::text {
namespace {

// protobuf wire types
constexpr uint32_t kVarint = 0, kLengthDelimited = 2, kFixed32 = 5;

void put_varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(char(uint8_t(v) | 0x80));
    v >>= 7;
  }
  out.push_back(char(v));
}
void put_tag(std::string& out, uint32_t field, uint32_t wire) { put_varint(out, (uint64_t(field) << 3) | wire); }
// int32 fields are sign-extended to 64 bits on the wire (-1 takes ten bytes).
void put_int32(std::string& out, uint32_t field, int32_t v) {
  put_tag(out, field, kVarint);
  put_varint(out, uint64_t(int64_t(v)));
}
void put_bool(std::string& out, uint32_t field, bool v) {
  put_tag(out, field, kVarint);
  put_varint(out, v ? 1 : 0);
}
void put_bytes(std::string& out, uint32_t field, const std::string& s) {
  put_tag(out, field, kLengthDelimited);
  put_varint(out, s.size());
  out += s;
}
void put_float(std::string& out, uint32_t field, float f) {
  put_tag(out, field, kFixed32);
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  for (int i = 0; i < 4; ++i) out.push_back(char(uint8_t(bits >> (8 * i))));  // little endian
}

}  // namespace

std::string serialize_model_proto(const vocabulary& v, bool byte_fallback) {
  std::string out;
  std::string msg;
  for (std::size_t i = 0; i < v.pieces.size(); ++i) {  // ModelProto.SentencePiece
    msg.clear();
    put_bytes(msg, 1, v.pieces[i]);
    put_float(msg, 2, v.scores[i]);
    put_int32(msg, 3, int32_t(v.types[i]));
    put_bytes(out, 1, msg);
  }
  msg.clear();  // TrainerSpec
  put_int32(msg, 3, 2);  // model_type = BPE
  put_int32(msg, 4, int32_t(v.pieces.size()));  // vocab_size
  put_bool(msg, 25, true);  // split_digits
  put_bool(msg, 26, true);  // allow_whitespace_only_pieces
  put_bool(msg, 35, byte_fallback);
  put_int32(msg, 40, v.unk_id);
  put_int32(msg, 41, v.bos_id);
  put_int32(msg, 42, v.eos_id);
  put_int32(msg, 43, -1);  // pad_id: none
  put_bytes(out, 2, msg);
  msg.clear();  // NormalizerSpec
  put_bytes(msg, 1, "identity");
  put_bool(msg, 3, v.add_space_prefix);
  put_bool(msg, 4, false);  // remove_extra_whitespaces
  put_bool(msg, 5, true);   // escape_whitespaces
  put_bytes(out, 3, msg);
  return out;
}

}  // namespace qllm::text
