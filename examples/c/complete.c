/* qllm-complete: load a model and stream a completion, through the C ABI only.
 *   qllm-complete MODEL PROMPT [MAX_TOKENS [TEMPERATURE [SEED]]]
 * The generated text goes to stdout as it is produced; a report goes to stderr. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qllm.h"

static int32_t on_text(const char* text, size_t len, int32_t token, void* user_data) {
  size_t* n_tokens = (size_t*)user_data;
  if (token >= 0) ++*n_tokens;
  fwrite(text, 1, len, stdout);
  fflush(stdout);
  return 0; /* go on */
}

static int die(const char* what, qllm_status st) {
  fprintf(stderr, "qllm-complete: %s failed: %s: %s\n", what, qllm_status_name(st), qllm_last_error());
  return 1;
}

int main(int argc, char** argv) {
  qllm_model_params mp;
  qllm_session_params sp;
  qllm_generate_params gp;
  qllm_generate_result result;
  qllm_model* model = NULL;
  qllm_session* session = NULL;
  qllm_status st;
  size_t n_streamed = 0;
  const char* stop[1];

  if (argc < 3) {
    fprintf(stderr, "usage: %s MODEL PROMPT [MAX_TOKENS [TEMPERATURE [SEED]]]\n", argv[0]);
    return 2;
  }
  if (qllm_version() / 10000 != QLLM_VERSION_MAJOR) {
    fprintf(stderr, "qllm-complete: library %s has another ABI major than this program\n", qllm_version_string());
    return 1;
  }
  qllm_model_params_init(&mp, sizeof mp);
  st = qllm_model_load(argv[1], &mp, &model);
  if (st != QLLM_OK) return die("loading the model", st);

  qllm_session_params_init(&sp, sizeof sp);
  sp.temperature = argc > 4 ? (float)atof(argv[4]) : 0.0f;
  if (argc > 5) sp.seed = (uint64_t)strtoull(argv[5], NULL, 10);
  st = qllm_session_create(model, &sp, &session);
  if (st != QLLM_OK) {
    qllm_model_free(model);
    return die("creating a session", st);
  }

  qllm_generate_params_init(&gp, sizeof gp);
  gp.max_tokens = argc > 3 ? atoi(argv[3]) : 64;
  stop[0] = "\n\n\n";
  gp.stop = stop;
  gp.n_stop = 1;
  gp.callback = on_text;
  gp.user_data = &n_streamed;
  memset(&result, 0, sizeof result);
  result.struct_size = sizeof result;
  st = qllm_generate(session, argv[2], strlen(argv[2]), &gp, &result);
  if (st != QLLM_OK) {
    qllm_session_free(session);
    qllm_model_free(model);
    return die("generating", st);
  }
  printf("\n");
  fprintf(stderr, "[prompt %d tokens, %.1f tok/s; generated %d tokens (%lu streamed), %.1f tok/s; dropped %d; finish %d]\n",
          result.n_prompt_tokens, result.prompt_tokens_per_second, result.n_generated, (unsigned long)n_streamed,
          result.generation_tokens_per_second, result.n_dropped, result.finish_reason);
  qllm_session_free(session);
  qllm_model_free(model);
  return 0;
}
