// capi/qllm.h included from C++ with strict warnings: it must compile clean and link. The struct
// sizes are pinned here (LP64) and in the Rust declarations (examples/rust/src/lib.rs): a change
// to a struct that is not an append shows up in both.
#include <cstddef>

#include "qllm.h"

#if defined(__LP64__)
static_assert(sizeof(qllm_model_params) == 24, "qllm_model_params layout changed");
static_assert(sizeof(qllm_model_info) == 256, "qllm_model_info layout changed");
static_assert(offsetof(qllm_model_info, tokenizer) == 224, "qllm_model_info: 0.9 fields appended after 0.8's 224 bytes");
static_assert(sizeof(qllm_session_params) == 72, "qllm_session_params layout changed");
static_assert(sizeof(qllm_generate_params) == 64, "qllm_generate_params layout changed");
static_assert(offsetof(qllm_generate_params, grammar) == 56, "qllm_generate_params: 0.8 field appended after 0.7's 56 bytes");
static_assert(offsetof(qllm_generate_params, draft_tokens) == 48, "qllm_generate_params: 0.7 fields appended after 0.6's 48 bytes");
static_assert(sizeof(qllm_generate_result) == 96, "qllm_generate_result layout changed");
static_assert(offsetof(qllm_generate_result, n_draft_passes) == 80, "qllm_generate_result: 0.7 fields appended after 0.6's 80 bytes");
static_assert(sizeof(qllm_chat_message) == 16, "qllm_chat_message must stay two pointers");
static_assert(sizeof(qllm_cot_params) == 48, "qllm_cot_params layout changed");
static_assert(sizeof(qllm_rag_index_params) == 12, "qllm_rag_index_params layout changed");
static_assert(sizeof(qllm_rag_index_result) == 40, "qllm_rag_index_result layout changed");
static_assert(sizeof(qllm_rag_ask_params) == 32, "qllm_rag_ask_params layout changed");
static_assert(sizeof(qllm_batch_params) == 24, "qllm_batch_params layout changed");
static_assert(sizeof(qllm_batch_entry) == 24, "qllm_batch_entry must stay two int32, a pointer and a size");
static_assert(offsetof(qllm_session_params, seed) == 64, "qllm_session_params layout changed");
static_assert(offsetof(qllm_model_info, load_seconds) == 120, "qllm_model_info layout changed");
static_assert(offsetof(qllm_model_info, weight_mix) == 128, "qllm_model_info layout changed");
#endif

int main() { return qllm_version() == QLLM_VERSION_NUMBER ? 0 : 1; }
