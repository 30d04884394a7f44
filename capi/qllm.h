/*
 * qllm.h: the stable C ABI of qllm, CPU inference of quantized Llama models (Llama-2, Code Llama, Llama-3.x).
 *
 * Rules (docs/capi.md has the full text):
 *  - A program built against this header keeps working with any later libqllm of the same
 *    major version (the soname is libqllm.so.<major>). Minor versions only add functions,
 *    append fields at the end of params structs, and add enum values.
 *  - Params and info structs start with `uint32_t struct_size`, which the caller sets to the
 *    sizeof it was compiled with (the *_init functions do it). The library reads and writes only
 *    that many bytes; fields the caller's struct lacks take their defaults. Structs are never
 *    passed or returned by value.
 *  - Every fallible function returns a qllm_status. On failure, qllm_last_error() gives a message
 *    for the calling thread, valid until that thread's next qllm call. No C++ exception crosses
 *    this boundary; NULL handles and NULL out-pointers are QLLM_ERR_INVALID_ARGUMENT.
 *  - Threads: a qllm_model is immutable after load and may be used from any number of threads at
 *    once ("Thread-safe" below). A qllm_session belongs to one thread at a time: calls on one
 *    session must not overlap ("Session thread rule" below); different sessions run in parallel.
 *  - Strings are UTF-8 with an explicit length where it says so; output strings are
 *    NUL-terminated.
 *  - Output buffers follow one convention: the function writes the needed size (elements or
 *    bytes, without the terminating NUL) to *n_out; if capacity is too small it returns
 *    QLLM_ERR_BUFFER_TOO_SMALL and writes nothing else. Call once with capacity 0 to size it.
 */
#ifndef QLLM_H
#define QLLM_H

#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32) && defined(QLLM_BUILDING)
#define QLLM_API __declspec(dllexport)
#elif defined(_WIN32)
#define QLLM_API __declspec(dllimport)
#elif defined(__GNUC__) && defined(QLLM_BUILDING)
#define QLLM_API /* exported with a symbol version by the aliases at the end of qllm.cpp */
#elif defined(__GNUC__)
#define QLLM_API __attribute__((visibility("default")))
#else
#define QLLM_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ---- version ---- */
#define QLLM_VERSION_MAJOR 0
#define QLLM_VERSION_MINOR 9
#define QLLM_VERSION_PATCH 0
#define QLLM_VERSION_NUMBER (QLLM_VERSION_MAJOR * 10000 + QLLM_VERSION_MINOR * 100 + QLLM_VERSION_PATCH)

/* The library's QLLM_VERSION_NUMBER (may be newer than the header's). Thread-safe. */
QLLM_API uint32_t qllm_version(void);
/* "0.7.0": static storage. Thread-safe. */
QLLM_API const char* qllm_version_string(void);

/* ---- status ---- */
typedef int32_t qllm_status;
enum {
  QLLM_OK = 0,
  QLLM_ERR_INVALID_ARGUMENT = 1, /* NULL handle or pointer, value out of range, bad struct_size */
  QLLM_ERR_IO = 2,               /* file missing or unreadable */
  QLLM_ERR_BAD_FORMAT = 3,       /* corrupt or truncated GGUF, wrong shapes, bad vocabulary */
  QLLM_ERR_UNSUPPORTED = 4,      /* valid but not supported (quant type, tokenizer, ISA, field) */
  QLLM_ERR_OUT_OF_MEMORY = 5,
  QLLM_ERR_CONTEXT_OVERFLOW = 6, /* the tokens do not fit the window under the error policy */
  QLLM_ERR_INTERNAL = 7,
  QLLM_ERR_BUFFER_TOO_SMALL = 8, /* *n_out holds the needed size */
  QLLM_ERR_CANCELLED = 9         /* since 0.3: qllm_session_cancel stopped the call */
};
/* "QLLM_OK", "QLLM_ERR_IO", ...; "unknown" for other values. Static storage. Thread-safe. */
QLLM_API const char* qllm_status_name(qllm_status status);
/* Message of the calling thread's last failed call ("" if none). Valid until this thread's next
 * qllm call. Thread-safe (per thread). */
QLLM_API const char* qllm_last_error(void);

/* ---- model ---- */
typedef struct qllm_model qllm_model;

typedef struct qllm_model_params {
  uint32_t struct_size;
  int32_t n_threads;              /* threads for the load-time repack; 0 = all cores (default) */
  int32_t use_mmap;               /* 1 (default); 0 is QLLM_ERR_UNSUPPORTED: weights are mapped */
  int32_t quantize_float_weights; /* 1: F16/BF16/F32 matrices become Q8_0 at load; default 0 */
  const char* isa;                /* kernel table, e.g. "avx2", "neon", "scalar"; NULL = best */
} qllm_model_params;

/* Fills defaults for a struct of struct_size bytes and sets p->struct_size. Thread-safe. */
QLLM_API qllm_status qllm_model_params_init(qllm_model_params* p, size_t struct_size);

/* Loads a GGUF file (Llama, Q4_0/Q8_0/F16/BF16/F32). params may be NULL (defaults). On success
 * *out is a new model; on failure *out is NULL. Errors: IO, BAD_FORMAT (naming the key or tensor),
 * UNSUPPORTED (quant type, tokenizer, ISA), OUT_OF_MEMORY, INVALID_ARGUMENT. Thread-safe. */
QLLM_API qllm_status qllm_model_load(const char* path, const qllm_model_params* params, qllm_model** out);
/* Releases the caller's reference; sessions created from it keep the model alive. NULL: no-op.
 * Not while another thread still uses this handle. */
QLLM_API void qllm_model_free(qllm_model* model);

typedef struct qllm_model_info {
  uint32_t struct_size;
  int32_t n_vocab;
  int32_t n_ctx_train;
  int32_t n_embd;
  int32_t n_layer;
  int32_t n_head;
  int32_t n_head_kv;
  int32_t n_ff;
  int32_t has_vocabulary;   /* 0: the file has no tokenizer; only token-id functions work */
  int32_t bos_token;        /* -1 without a vocabulary */
  int32_t eos_token;
  int64_t n_params;
  uint64_t weight_bytes;    /* bytes streamed per generated token */
  int32_t weight_type;      /* GGUF type id of most matrices (2 = Q4_0, 8 = Q8_0, 12 = Q4_K, 1 = F16, 0 = F32) */
  char weight_type_name[16];
  char isa[32];             /* the kernel table its sessions use */
  double load_seconds;
  /* Since 0.4 (callers built against older headers pass a smaller struct_size and never see it):
   * the file's tensor types, most frequent first, after the scheme its general.file_type names,
   * e.g. "Q4_K_M: 193 q4_k, 65 f32, 33 q6_k"; cut at 95 bytes, always NUL-terminated. */
  char weight_mix[96];
  /* Since 0.9: the vocabulary's kind, "sentencepiece" (Llama-2, Code Llama) or "llama3-bpe"
   * (Llama-3's byte-level BPE), "" without a vocabulary; and the chat format qllm_chat_apply
   * writes, "llama2" ([INST]) or "llama3" (<|start_header_id|>) as the file's
   * tokenizer.chat_template says, "unsupported" where no dialog can be formatted (a template
   * qllm does not know, one of another vocabulary's kind, pieces it needs missing: chat calls
   * then fail, naming why), "" without a vocabulary. */
  char tokenizer[16];
  char chat_format[16];
} qllm_model_info;

/* info->struct_size must be set by the caller (e.g. sizeof(qllm_model_info)). Thread-safe. */
QLLM_API qllm_status qllm_model_get_info(const qllm_model* model, qllm_model_info* info);

/* ---- text ---- */
/* Text (text_len bytes, valid UTF-8, NUL not required) to token ids; BOS first if add_bos.
 * Buffer convention (n_out = number of ids). Invalid UTF-8: INVALID_ARGUMENT. Model without a
 * vocabulary: UNSUPPORTED. Thread-safe. */
QLLM_API qllm_status qllm_tokenize(const qllm_model* model, const char* text, size_t text_len, int32_t add_bos,
                                   int32_t* ids, size_t capacity, size_t* n_out);
/* Since 0.9: qllm_tokenize with flags. QLLM_TOKENIZE_ADD_BOS puts BOS first;
 * QLLM_TOKENIZE_PARSE_SPECIAL turns control and unknown pieces written in the text
 * ("<|eot_id|>", "</s>", "<unk>") into their tokens, where without it they are plain text
 * (qllm_tokenize's behaviour; pieces a vocabulary marks user-defined always match). Never pass
 * untrusted text with QLLM_TOKENIZE_PARSE_SPECIAL: it can end a turn or open a new one. Other
 * bits: INVALID_ARGUMENT. Capacity 0 gives the count. Thread-safe. */
enum { QLLM_TOKENIZE_ADD_BOS = 1, QLLM_TOKENIZE_PARSE_SPECIAL = 2 };
QLLM_API qllm_status qllm_tokenize_ex(const qllm_model* model, const char* text, size_t text_len, uint32_t flags,
                                      int32_t* ids, size_t capacity, size_t* n_out);
/* Since 0.9: the tokens that end an answer, ascending: EOS and, in a Llama-3 vocabulary, each of
 * <|end_of_text|>, <|eot_id|> and <|eom_id|> it has (generation stops at any of them). Buffer
 * convention (n_out = number of ids). Model without a vocabulary: UNSUPPORTED. Thread-safe. */
QLLM_API qllm_status qllm_model_end_tokens(const qllm_model* model, int32_t* ids, size_t capacity, size_t* n_out);
/* The number of tokens qllm_tokenize would produce. Thread-safe. */
QLLM_API qllm_status qllm_count_tokens(const qllm_model* model, const char* text, size_t text_len, int32_t add_bos,
                                       size_t* n_out);
/* Ids to text as a whole sequence (the leading space of the first piece dropped, control tokens
 * silent). Buffer convention in bytes; on success buf is NUL-terminated (capacity >= *n_out + 1).
 * An id outside the vocabulary: INVALID_ARGUMENT. Thread-safe. */
QLLM_API qllm_status qllm_detokenize(const qllm_model* model, const int32_t* ids, size_t n_ids, char* buf,
                                     size_t capacity, size_t* n_out);
/* The piece of one token as stored in the vocabulary ("▁Hello", "<0x0A>", "<s>"). Thread-safe. */
QLLM_API qllm_status qllm_token_piece(const qllm_model* model, int32_t token, char* buf, size_t capacity,
                                      size_t* n_out);

/* The dialog in the model's chat format (qllm_model_info.chat_format): Llama-2-chat (Meta's
 * layout, <s>[INST] <<SYS>> ... [/INST] answer </s> per turn) or Llama-3 (<|begin_of_text|>, a
 * <|start_header_id|>role<|end_header_id|> header and <|eot_id|> per message, then the assistant's
 * header). The array element is two pointers and will stay so: roles "system" (first only),
 * "user", "assistant" alternating, ending with "user"; contents NUL-terminated UTF-8 and always
 * plain text (a typed "<|eot_id|>" stays text). A chat template qllm does not know: UNSUPPORTED,
 * naming it. Buffer convention in tokens. Thread-safe. */
typedef struct qllm_chat_message {
  const char* role;
  const char* content;
} qllm_chat_message;
QLLM_API qllm_status qllm_chat_apply(const qllm_model* model, const qllm_chat_message* messages, size_t n_messages,
                                     int32_t* ids, size_t capacity, size_t* n_out);
/* The same dialog as Llama-2-chat text with <s> and </s> written out (for display). Needs no
 * model, so it is always Llama-2's layout: qllm_chat_format_model writes the model's. Thread-safe. */
QLLM_API qllm_status qllm_chat_format(const qllm_chat_message* messages, size_t n_messages, char* buf,
                                      size_t capacity, size_t* n_out);
/* Since 0.9: the dialog as text in the model's chat format, special pieces written out (for a
 * Llama-3 model "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n..."), for
 * display and logs. The same checks as qllm_chat_apply. A piece typed in a message looks the same
 * here as a real one: tokenizing this text with QLLM_TOKENIZE_PARSE_SPECIAL lets a message
 * inject turns, so take the ids from qllm_chat_apply. Buffer convention in bytes. Thread-safe. */
QLLM_API qllm_status qllm_chat_format_model(const qllm_model* model, const qllm_chat_message* messages,
                                            size_t n_messages, char* buf, size_t capacity, size_t* n_out);

/* ---- session: KV cache + sampler ---- */
typedef struct qllm_session qllm_session;

enum { QLLM_KV_F32 = 0, QLLM_KV_F16 = 1 };
enum { QLLM_POLICY_ERROR = 0, QLLM_POLICY_KEEP_HEAD_AND_TAIL = 1, QLLM_POLICY_KEEP_TAIL = 2 };

typedef struct qllm_session_params {
  uint32_t struct_size;
  int32_t n_ctx;            /* window in tokens; 0 = the model's training context (default) */
  int32_t n_batch;          /* prompt tokens per forward pass (default 512) */
  int32_t n_threads;        /* 0 = all cores (default) */
  int32_t kv_type;          /* QLLM_KV_F16 (default) or QLLM_KV_F32 */
  int32_t context_policy;   /* QLLM_POLICY_*: what happens when a prompt does not fit (default ERROR) */
  int32_t n_keep;           /* tokens at the start (BOS included) never dropped (default 1) */
  int32_t context_shift;    /* 1 (default): a full window drops half after n_keep and goes on */
  /* sampling */
  float temperature;        /* default 0.8; <= 0 greedy */
  int32_t top_k;            /* default 40; 0 = off */
  float top_p;              /* default 0.95 */
  float min_p;              /* default 0.05 */
  float repeat_penalty;     /* default 1 (off) */
  float frequency_penalty;  /* default 0 */
  float presence_penalty;   /* default 0 */
  int32_t penalty_last_n;   /* default 64 */
  uint64_t seed;            /* same seed, same tokens, any thread count */
} qllm_session_params;

/* As qllm_model_params_init. Thread-safe. */
QLLM_API qllm_status qllm_session_params_init(qllm_session_params* p, size_t struct_size);
/* A new session on model (which it keeps alive). params may be NULL. Errors: INVALID_ARGUMENT (a
 * field out of range, named in the message), OUT_OF_MEMORY (KV cache). Thread-safe. */
QLLM_API qllm_status qllm_session_create(const qllm_model* model, const qllm_session_params* params,
                                         qllm_session** out);
/* NULL: no-op. Not while another call on the session runs. */
QLLM_API void qllm_session_free(qllm_session* session);
/* Forgets the sequence and reseeds the sampler. Session thread rule. */
QLLM_API qllm_status qllm_session_reset(qllm_session* session);

/* New sampling settings for the session's next tokens: reads the sampling fields of params
 * (temperature .. seed; the others are ignored) with the struct_size rule. The sampler is
 * reseeded with params->seed; the penalties go on counting the session's sequence (see
 * qllm_session_sample). Out-of-range values: INVALID_ARGUMENT and the previous settings stay.
 * Session thread rule. */
QLLM_API qllm_status qllm_session_set_sampling(qllm_session* session, const qllm_session_params* params);

/* Appends tokens to the session's sequence and evaluates them. Afterwards qllm_session_logits
 * gives the last token's logits. When they do not fit the window and context_shift is on, the
 * cache shifts first as in generation (the first n_keep tokens stay, half of the rest is
 * dropped; qllm_session_history shows what remains); otherwise the error policy fails and the
 * other policies re-fit the whole sequence. Errors: INVALID_ARGUMENT (no tokens, an id outside
 * the vocabulary), CONTEXT_OVERFLOW (error policy, the message describes the eval), CANCELLED
 * (qllm_session_cancel; see there what the cache then holds). Session thread rule. */
QLLM_API qllm_status qllm_session_eval(qllm_session* session, const int32_t* tokens, size_t n_tokens);
/* Logits of the last evaluated token: *logits points to n_vocab floats owned by the session,
 * valid until its next call. Before any eval: INVALID_ARGUMENT. Session thread rule. */
QLLM_API qllm_status qllm_session_logits(qllm_session* session, const float** logits, size_t* n_vocab);
/* Samples a token from the current logits with the session's sampler. The penalties count the
 * last penalty_last_n tokens of the session's sequence (its history), exactly as generation
 * does, so an eval + sample loop picks the tokens qllm_generate_tokens would. The token is not
 * evaluated: pass it to qllm_session_eval to continue. Session thread rule. */
QLLM_API qllm_status qllm_session_sample(qllm_session* session, int32_t* token);
/* Since 0.3. Stops the call running on the session (qllm_generate*, qllm_session_eval) at its
 * next check: before each chunk of n_batch prompt tokens and before each generated token.
 * Generation then returns QLLM_OK with finish_reason QLLM_FINISH_CANCELLED and the tokens
 * generated so far; an eval returns QLLM_ERR_CANCELLED. The cache stays consistent and
 * qllm_session_history lists what it holds: what it held before the call, or, where the call
 * had already replaced part of it (another sequence, a context policy, a shift), only the part
 * the call kept. A call clears the request when it starts: a cancel while nothing runs does
 * nothing. Thread-safe, the one exception to the session thread rule, and async-signal-safe:
 * call it from another thread or a signal handler while the session's owner is inside a call
 * (not after qllm_session_free). */
QLLM_API qllm_status qllm_session_cancel(qllm_session* session);
/* The tokens in the cache, buffer convention. Session thread rule. */
QLLM_API qllm_status qllm_session_history(const qllm_session* session, int32_t* ids, size_t capacity, size_t* n_out);

/* ---- generation ---- */
enum {
  QLLM_FINISH_EOS = 0,
  QLLM_FINISH_STOP_STRING = 1,
  QLLM_FINISH_MAX_TOKENS = 2,
  QLLM_FINISH_CANCELLED = 3,
  QLLM_FINISH_CONTEXT_FULL = 4
};

/* Streaming callback: text (len bytes, valid UTF-8, not NUL-terminated, possibly empty while a
 * character or a possible stop string is held back) for each sampled token, then once more with
 * token -1 for what was held. Return 0 to go on, nonzero to cancel. Runs on the calling thread;
 * it must not call into the same session. */
/* Since 0.8: a compiled grammar (see "constrained output" below). */
typedef struct qllm_grammar qllm_grammar;

typedef int32_t (*qllm_stream_callback)(const char* text, size_t len, int32_t token, void* user_data);

typedef struct qllm_generate_params {
  uint32_t struct_size;
  int32_t max_tokens;                 /* default 256; -1 until EOS, a stop string or a full window */
  int32_t stop_at_eos;                /* default 1 */
  const char* const* stop;            /* n_stop NUL-terminated stop strings (not emitted); may be NULL */
  size_t n_stop;
  qllm_stream_callback callback;      /* may be NULL */
  void* user_data;
  /* Since 0.7: speculative decoding. Up to draft_tokens draft tokens (0 = off, the default; at
   * most 64) are checked in the forward pass of each sampled token; the ones the model keeps cost
   * no pass of their own. speculation (QLLM_SPEC_*) says where drafts come from. Greedy output is
   * the same token for token; sampled output keeps each draft by speculative sampling's rule, so
   * every token is distributed exactly as without speculation (lookup with the same seed: the same
   * tokens). */
  int32_t draft_tokens;
  int32_t speculation;
  /* Since 0.8: constrained output. The generated text is a string of this grammar's language
   * (qllm_grammar_*): tokens it does not allow are never sampled, and EOS only where the text
   * is complete. NULL (the default): unconstrained. Not owned; it must outlive the call. With
   * chain of thought it constrains the answer, not the reasoning. */
  const qllm_grammar* grammar;
} qllm_generate_params;

/* Since 0.7. Draft sources: lookup copies the tokens that followed the sequence's last 2-4 tokens
 * where they occurred before (prompt or output); draft model needs qllm_session_set_draft. */
enum { QLLM_SPEC_LOOKUP = 0, QLLM_SPEC_DRAFT_MODEL = 1 };

typedef struct qllm_generate_result {
  uint32_t struct_size;
  int32_t finish_reason;        /* QLLM_FINISH_* */
  int32_t n_prompt_tokens;      /* tokens evaluated for the prompt */
  int32_t n_reused_tokens;      /* prompt tokens already in the cache */
  int32_t n_generated;          /* tokens sampled */
  int32_t n_sequence_tokens;    /* the sequence before the context policy */
  int32_t n_dropped;            /* tokens the policy removed: [drop_begin, drop_end) */
  int32_t drop_begin;
  int32_t drop_end;
  int32_t n_shifts;             /* context shifts during generation */
  int32_t n_shift_dropped;
  double prompt_seconds;
  double generation_seconds;
  double prompt_tokens_per_second;
  double generation_tokens_per_second;
  /* Since 0.7: what speculation did (0 when it was off) */
  int32_t n_draft_passes;       /* forward passes that carried drafts */
  int32_t n_drafted;            /* draft tokens evaluated */
  int32_t n_draft_accepted;     /* of those, the ones generation kept */
} qllm_generate_result;

/* As qllm_model_params_init. Thread-safe. */
QLLM_API qllm_status qllm_generate_params_init(qllm_generate_params* p, size_t struct_size);

/* Generates after `prompt` (text, tokenized with BOS): the prompt is the whole sequence the model
 * sees; the part already in the cache is reused. result may be NULL; its struct_size must be set.
 * The generated text is also kept: qllm_session_output. Errors: CONTEXT_OVERFLOW (error policy,
 * message with the numbers), INVALID_ARGUMENT (bad UTF-8, params), UNSUPPORTED (no vocabulary).
 * A cancelled generation is QLLM_OK with finish_reason QLLM_FINISH_CANCELLED. Session thread
 * rule; the callback runs on the calling thread. */
QLLM_API qllm_status qllm_generate(qllm_session* session, const char* prompt, size_t prompt_len,
                                   const qllm_generate_params* params, qllm_generate_result* result);
/* The same for a token sequence (e.g. from qllm_chat_apply, or the history plus new tokens).
 * A model without a vocabulary generates token ids only: the callback gets empty text and the
 * ids, there is no EOS stop, and stop strings are UNSUPPORTED. Session thread rule. */
QLLM_API qllm_status qllm_generate_tokens(qllm_session* session, const int32_t* tokens, size_t n_tokens,
                                          const qllm_generate_params* params, qllm_generate_result* result);
/* Since 0.7. The draft model of QLLM_SPEC_DRAFT_MODEL: a smaller model with the same vocabulary
 * (the same pieces and special ids), which the session keeps alive and runs in a cache of its own
 * (the session's window and threads). NULL removes it. Errors: INVALID_ARGUMENT naming the first
 * difference of the vocabularies (the session keeps its previous draft model), OUT_OF_MEMORY.
 * Session thread rule. */
QLLM_API qllm_status qllm_session_set_draft(qllm_session* session, const qllm_model* draft);

/* The text of the last generation (stop string excluded), NUL-terminated, owned by the session,
 * valid until its next call; *len may be NULL. Session thread rule. */
QLLM_API qllm_status qllm_session_output(const qllm_session* session, const char** text, size_t* len);

/* ---- embeddings ---- */
/* Evaluates text (with BOS) as a new sequence in the session (its history is replaced) and writes
 * the mean over tokens of the final hidden state, L2-normalised: n_embd floats, buffer
 * convention. For retrieval: compare by dot product. Session thread rule. */
QLLM_API qllm_status qllm_embed(qllm_session* session, const char* text, size_t text_len, float* out,
                                size_t capacity, size_t* n_out);


/* ---- chain of thought (since 0.5) ---- */
/* Prompt chaining: a first generation reasons after a cue ("Let's think step by step."), a
 * second, short one extracts the answer from that reasoning. The answer is what
 * qllm_session_output, the result and qllm_generate_params.callback see; the reasoning is kept
 * apart (qllm_session_reasoning) and streams through reasoning_callback. */
typedef struct qllm_cot_params {
  uint32_t struct_size;
  int32_t answer_tokens;                    /* max tokens of the answer stage; default 64 */
  const char* reasoning_cue;                /* NULL: "Let's think step by step." */
  const char* answer_cue;                   /* plain text, written after the reasoning; NULL:
                                               "Therefore, the answer is" (the answer ends at a newline) */
  const char* answer_request;               /* chat, the user turn after the reasoning; NULL: asks
                                               for only the final answer */
  qllm_stream_callback reasoning_callback;  /* may be NULL */
  void* reasoning_user_data;
} qllm_cot_params;

/* As qllm_model_params_init. Thread-safe. */
QLLM_API qllm_status qllm_cot_params_init(qllm_cot_params* p, size_t struct_size);
/* Plain text: reasons after prompt + " " + reasoning_cue, then answers after the reasoning and
 * "\n" + answer_cue. params->max_tokens bounds the reasoning (and so does the window: both stages
 * fit it, without a context shift). result (may be NULL) describes the
 * answer stage; a cancelled reasoning skips it (finish_reason QLLM_FINISH_CANCELLED, no answer).
 * Errors as qllm_generate; INVALID_ARGUMENT for answer_tokens <= 0 or an empty cue. Session
 * thread rule. */
QLLM_API qllm_status qllm_generate_cot(qllm_session* session, const char* prompt, size_t prompt_len,
                                       const qllm_generate_params* params, const qllm_cot_params* cot,
                                       qllm_generate_result* result);
/* Chat (Llama-2-chat): the reasoning answers the dialog with reasoning_cue appended to its last
 * user message; the answer answers answer_request after that reasoning turn. */
QLLM_API qllm_status qllm_chat_cot(qllm_session* session, const qllm_chat_message* messages, size_t n_messages,
                                   const qllm_generate_params* params, const qllm_cot_params* cot,
                                   qllm_generate_result* result);
/* The reasoning of the session's last chain-of-thought call ("" after any other generation),
 * NUL-terminated, owned by the session, valid until its next call; *len may be NULL. Session
 * thread rule. */
QLLM_API qllm_status qllm_session_reasoning(const qllm_session* session, const char** text, size_t* len);

/* ---- constrained output: grammars (since 0.8) ---- */
/* A compiled grammar: immutable, thread-safe, shared by any number of generations and matchers
 * at once (each keeps what it needs alive: free it whenever you like after the last call that
 * names it). docs/formats.md lists the GBNF syntax and the JSON Schema keywords supported. */

/* GBNF text (llama.cpp's grammar syntax), starting at the rule `root`. Errors: INVALID_ARGUMENT
 * with the line and column or the rule (syntax, undefined or left-recursive rules, rules that
 * derive no string, sizes over the limits), OUT_OF_MEMORY. Thread-safe. */
QLLM_API qllm_status qllm_grammar_from_gbnf(const char* text, size_t len, qllm_grammar** out);
/* A JSON Schema (its JSON text): every string of the grammar validates against it. Errors:
 * INVALID_ARGUMENT (not JSON, not a schema), UNSUPPORTED naming a keyword or form the grammar
 * could not follow exactly and where it is (never silently dropped). Thread-safe. */
QLLM_API qllm_status qllm_grammar_from_json_schema(const char* schema, size_t len, qllm_grammar** out);
/* Any JSON value whose top level is an object (OpenAI's "json_object" response format).
 * Thread-safe. */
QLLM_API qllm_status qllm_grammar_json_object(qllm_grammar** out);
/* The GBNF that qllm_grammar_from_json_schema compiles for a schema, buffer convention (bytes,
 * NUL-terminated): a starting point for a grammar of one's own. Errors as there. Thread-safe. */
QLLM_API qllm_status qllm_grammar_gbnf_from_json_schema(const char* schema, size_t len, char* buf,
                                                        size_t capacity, size_t* n_out);
/* NULL: no-op. */
QLLM_API void qllm_grammar_free(qllm_grammar* grammar);

/* A matcher follows one output of a grammar token by token, for callers who sample themselves
 * (qllm_session_eval + qllm_session_sample, qllm_batch_*): before each sampling it masks the
 * tokens that may not come next, after it accepts the token chosen. Exact: a token is allowed iff
 * some string of the language starts with the text so far and the token's text; EOS iff the text
 * so far is in the language. Control and unknown tokens are never allowed. One thread at a time
 * per matcher. Every call may fail with UNSUPPORTED when one step of the grammar costs too much
 * (a highly ambiguous or deeply nested grammar; the message says which bound). */
typedef struct qllm_matcher qllm_matcher;

/* A matcher for model's vocabulary (the model and the grammar are kept alive). Thread-safe. */
QLLM_API qllm_status qllm_matcher_create(const qllm_grammar* grammar, const qllm_model* model, qllm_matcher** out);
/* NULL: no-op. */
QLLM_API void qllm_matcher_free(qllm_matcher* matcher);
/* Sets logits[i] to -INFINITY for every token i that may not come next. n_vocab must be the
 * model's vocabulary size (INVALID_ARGUMENT otherwise). */
QLLM_API qllm_status qllm_matcher_mask(qllm_matcher* matcher, float* logits, size_t n_vocab);
/* The same on the session's logits of its last eval, in place: qllm_session_sample and
 * qllm_session_logits then see the masked ones. The session's model must have the matcher's
 * vocabulary (INVALID_ARGUMENT otherwise). Session thread rule. */
QLLM_API qllm_status qllm_matcher_mask_session(qllm_matcher* matcher, qllm_session* session);
/* Advances past token (EOS ends the output). A token the grammar does not allow there:
 * INVALID_ARGUMENT, and the matcher is unchanged. */
QLLM_API qllm_status qllm_matcher_accept(qllm_matcher* matcher, int32_t token);
/* Advances past text (len bytes), e.g. a prefix the output must continue. Text the grammar
 * does not allow there: INVALID_ARGUMENT, and the matcher is unchanged (after EOS no text is
 * allowed, not even ""). */
QLLM_API qllm_status qllm_matcher_accept_text(qllm_matcher* matcher, const char* text, size_t len);
/* *can_end: the text so far is a complete string of the language (EOS allowed); *must_end: no
 * longer string continues it (only EOS may come). After EOS was accepted both are 0: nothing
 * may come. Either pointer may be NULL. */
QLLM_API qllm_status qllm_matcher_state(const qllm_matcher* matcher, int32_t* can_end, int32_t* must_end);
/* Back to the empty text. */
QLLM_API qllm_status qllm_matcher_reset(qllm_matcher* matcher);

/* ---- retrieval over documents (since 0.5) ---- */
/* A retrieval database: one SQLite file with documents, their chunks and a full-text (BM25)
 * index. Thread-safe (calls on one handle are serialised); several processes may open one file. */
typedef struct qllm_rag qllm_rag;

/* Opens the database at path; create != 0 makes it if it does not exist. Errors: IO (missing
 * without create, cannot open), BAD_FORMAT (not SQLite, another application's database, a newer
 * store format, damaged). */
QLLM_API qllm_status qllm_rag_open(const char* path, int32_t create, qllm_rag** out);
/* NULL is a no-op. */
QLLM_API void qllm_rag_free(qllm_rag* rag);

typedef struct qllm_rag_index_params {
  uint32_t struct_size;
  int32_t chunk_tokens;    /* tokens per chunk, counted with the model's tokenizer; default 192 */
  int32_t overlap_tokens;  /* whole sentences repeated between chunks, at most; default 32 */
} qllm_rag_index_params;

typedef struct qllm_rag_index_result {
  uint32_t struct_size;
  int32_t files_added;
  int32_t files_changed;    /* re-chunked: new content or new chunk settings */
  int32_t files_unchanged;  /* same content hash and settings: skipped */
  int32_t files_removed;    /* documents whose file no longer exists */
  int32_t files_skipped;    /* not UTF-8 text, binary or too large */
  int64_t chunks_added;
  int64_t chunks_removed;
} qllm_rag_index_result;

/* As qllm_model_params_init. Thread-safe. */
QLLM_API qllm_status qllm_rag_index_params_init(qllm_rag_index_params* p, size_t struct_size);
/* Indexes n_paths files or directories (a directory: its *.txt, *.md, *.markdown, recursively)
 * with model's tokenizer. Unchanged files are skipped by content hash; a changed file's chunks
 * are replaced in one transaction. params and result may be NULL. Errors: INVALID_ARGUMENT (a
 * path that does not exist, bad chunk sizes: nothing is changed), IO, BAD_FORMAT. Thread-safe. */
QLLM_API qllm_status qllm_rag_index(qllm_rag* rag, const qllm_model* model, const char* const* paths, size_t n_paths,
                                    const qllm_rag_index_params* params, qllm_rag_index_result* result);

typedef struct qllm_rag_ask_params {
  uint32_t struct_size;
  int32_t top_k;                /* chunks to retrieve; default 8 */
  int32_t cot;                  /* nonzero: chain of thought (cot_params or its defaults) */
  const char* system;           /* NULL: answer from the numbered passages and cite them */
  const qllm_cot_params* cot_params;  /* may be NULL */
} qllm_rag_ask_params;

/* As qllm_model_params_init. Thread-safe. */
QLLM_API qllm_status qllm_rag_ask_params_init(qllm_rag_ask_params* p, size_t struct_size);
/* Retrieves the top_k chunks for question, builds a Llama-2-chat prompt with as many whole
 * chunks as fit the session's window (leaving room for params->max_tokens, and with cot for the
 * answer stage), dropping the lowest-ranked first, and generates the answer as qllm_generate_tokens
 * does. qllm_session_rag_report then lists the chunks given and dropped. Errors: as
 * qllm_generate_tokens; CONTEXT_OVERFLOW when the instructions and question alone do not fit
 * (saying by how much). Session thread rule (the rag handle is thread-safe). */
QLLM_API qllm_status qllm_rag_ask(qllm_rag* rag, qllm_session* session, const char* question, size_t question_len,
                                  const qllm_rag_ask_params* ask, const qllm_generate_params* params,
                                  qllm_generate_result* result);
/* The last qllm_rag_ask's report as JSON, NUL-terminated, owned by the session, valid until its
 * next call: {"window", "reserved", "prompt_tokens", "used": [{"n", "rank", "chunk_id", "path",
 * "seq", "tokens", "score"}], "dropped": [{"rank", "chunk_id", "path", "seq", "tokens", "score",
 * "reason"}]}; "" when the session's last generation was not a qllm_rag_ask. *len may be NULL.
 * Session thread rule. */
QLLM_API qllm_status qllm_session_rag_report(const qllm_session* session, const char** json, size_t* len);

/* ---- many sequences in shared forward passes (since 0.6) ---- */
/* A batch holds n_seq sequences, each with its own KV cache, and evaluates them together: one
 * forward pass runs the new tokens of several sequences, so the weights stream from memory once
 * per pass for all of them (continuous batching: a server decodes one token of every user per
 * pass). A sequence's logits are bit-identical to those of a session that evaluated the same
 * tokens alone, whatever else shares the pass. Sampling is the caller's (e.g. one qllm_session
 * per user is not needed: argmax, or your own sampler over the logits). One thread at a time per
 * batch; batches on one model may run on different threads. */
typedef struct qllm_batch qllm_batch;

typedef struct qllm_batch_params {
  uint32_t struct_size;
  int32_t n_seq;      /* sequences, 1 .. 1024 (default 4) */
  int32_t n_ctx;      /* window of each sequence; 0 = the model's training context (default) */
  int32_t n_batch;    /* tokens per forward pass, all sequences together (default 512) */
  int32_t n_threads;  /* 0 = all cores (default) */
  int32_t kv_type;    /* QLLM_KV_F16 (default) or QLLM_KV_F32 */
} qllm_batch_params;

/* One sequence's new tokens for qllm_batch_eval. An array element: its layout is fixed and it
 * has no struct_size. */
typedef struct qllm_batch_entry {
  int32_t seq;            /* 0 .. n_seq - 1; at most one entry per sequence per call */
  int32_t want_logits;    /* nonzero: keep the logits of its last token (qllm_batch_logits) */
  const int32_t* tokens;  /* appended after the sequence's tokens so far */
  size_t n_tokens;        /* >= 1 */
} qllm_batch_entry;

/* As qllm_model_params_init. Thread-safe. */
QLLM_API qllm_status qllm_batch_params_init(qllm_batch_params* p, size_t struct_size);
/* A new batch on model (which it keeps alive); params may be NULL. The KV caches of all n_seq
 * sequences are reserved (pages untouched until used cost no memory); a size that cannot fit
 * this process is OUT_OF_MEMORY with the numbers. Errors: INVALID_ARGUMENT (a field out of
 * range, named). Thread-safe. */
QLLM_API qllm_status qllm_batch_create(const qllm_model* model, const qllm_batch_params* params, qllm_batch** out);
/* NULL: no-op. Not while another call on the batch runs. */
QLLM_API void qllm_batch_free(qllm_batch* batch);
/* Appends each entry's tokens to its sequence and evaluates them, in forward passes of at most
 * n_batch tokens that the sequences share (an entry may straddle two passes). Every entry is
 * checked before anything changes: INVALID_ARGUMENT (no entries, a sequence out of range or
 * repeated, no tokens, an id outside the vocabulary), CONTEXT_OVERFLOW (a sequence's window is
 * full: the message names it; truncate it or start it again). Batch thread rule. */
QLLM_API qllm_status qllm_batch_eval(qllm_batch* batch, const qllm_batch_entry* entries, size_t n_entries);
/* Logits of entry `entry`'s last token in the last qllm_batch_eval (which asked for them):
 * *logits points to n_vocab floats owned by the batch, valid until its next eval. Batch thread
 * rule. */
QLLM_API qllm_status qllm_batch_logits(const qllm_batch* batch, size_t entry, const float** logits, size_t* n_vocab);
/* The number of tokens in sequence seq's cache. Batch thread rule. */
QLLM_API qllm_status qllm_batch_n_past(const qllm_batch* batch, int32_t seq, int64_t* n_past);
/* Keeps the first n tokens of sequence seq (0 <= n <= its n_past; 0 starts it again, e.g. for
 * the next user of that slot). Batch thread rule. */
QLLM_API qllm_status qllm_batch_truncate(qllm_batch* batch, int32_t seq, int64_t n);

#ifdef __cplusplus
}
#endif

#endif /* QLLM_H */
