// The few fields of sentencepiece's ModelProto that a Llama vocabulary needs, serialized in the
// protobuf wire format, so a tokenizer can be built from GGUF metadata without protobuf headers.
#pragma once
#include <string>

#include "qllm/tokenizer.hpp"

namespace qllm::text {

// ModelProto { pieces (1), trainer_spec (2): BPE, byte fallback, unk/bos/eos ids, no pad,
// split_digits, whitespace-only pieces allowed; normalizer_spec (3): identity, dummy prefix as
// v.add_space_prefix, extra whitespace kept, whitespace escaped to U+2581 }.
std::string serialize_model_proto(const vocabulary& v, bool byte_fallback);

}  // namespace qllm::text
