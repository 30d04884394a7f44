/* A program compiled against the header of qllm 0.2.0 (tests/abi/qllm_0_2_0.h, never edited):
 * it must keep building and running against every later libqllm.so.0. It also plays an older
 * caller whose params structs are shorter than the library's. Exit 0 = the ABI held. */
#include <stdio.h>
#include <string.h>

#include "qllm_0_2_0.h"

#define CHECK(cond)                                             \
  do {                                                          \
    if (!(cond)) {                                              \
      fprintf(stderr, "frozen ABI check failed: %s (line %d): %s\n", #cond, __LINE__, qllm_last_error()); \
      return 1;                                                 \
    }                                                           \
  } while (0)

/* session params as a caller that only knew the first four fields would have them */
struct old_session_params {
  uint32_t struct_size;
  int32_t n_ctx;
  int32_t n_batch;
  int32_t n_threads;
};

static int32_t count_tokens_cb(const char* text, size_t len, int32_t token, void* user_data) {
  (void)text;
  (void)len;
  if (token >= 0) ++*(int*)user_data;
  return 0;
}

int main(int argc, char** argv) {
  qllm_model* model = NULL;
  qllm_session* session = NULL;
  qllm_model_info info;
  struct old_session_params old;
  qllm_generate_params gp;
  qllm_generate_result result;
  int streamed = 0;
  int32_t ids[64];
  size_t n = 0;
  const char* text = NULL;

  CHECK(argc == 2);
  CHECK(qllm_version() / 10000 == QLLM_VERSION_MAJOR);
  CHECK(qllm_version() >= QLLM_VERSION_NUMBER);
  CHECK(qllm_model_load(argv[1], NULL, &model) == QLLM_OK);
  memset(&info, 0, sizeof info);
  info.struct_size = sizeof info;
  CHECK(qllm_model_get_info(model, &info) == QLLM_OK);
  CHECK(info.n_vocab > 0 && info.has_vocabulary == 1);
  CHECK(qllm_tokenize(model, "hello", 5, 1, ids, 64, &n) == QLLM_OK && n > 1 && ids[0] == info.bos_token);

  old.struct_size = sizeof old;
  old.n_ctx = 128;
  old.n_batch = 32;
  old.n_threads = 1;
  CHECK(qllm_session_create(model, (const qllm_session_params*)&old, &session) == QLLM_OK);

  CHECK(qllm_generate_params_init(&gp, sizeof gp) == QLLM_OK);
  gp.max_tokens = 8;
  gp.stop_at_eos = 0;
  gp.callback = count_tokens_cb;
  gp.user_data = &streamed;
  memset(&result, 0, sizeof result);
  result.struct_size = sizeof result;
  CHECK(qllm_generate(session, "hello", 5, &gp, &result) == QLLM_OK);
  CHECK(result.n_generated == 8 && streamed == 8);
  CHECK(result.finish_reason == QLLM_FINISH_MAX_TOKENS);
  CHECK(qllm_session_output(session, &text, &n) == QLLM_OK && strlen(text) == n);
  CHECK(qllm_generate(NULL, "x", 1, &gp, &result) == QLLM_ERR_INVALID_ARGUMENT);

  qllm_session_free(session);
  qllm_model_free(model);
  printf("frozen 0.2.0 caller: ok against %s\n", qllm_version_string());
  return 0;
}
