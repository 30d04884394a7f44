/* Answers a question from documents, then thinks it through step by step: retrieval and chain of
 * thought through the C ABI (strict C99, only qllm.h and libqllm).
 *
 *   qllm-rag-cot MODEL DB QUESTION [DOCS...]
 *
 * Indexes DOCS (files or directories) into the SQLite database DB, answers QUESTION from the best
 * chunks that fit the window (the report on stderr says which were given and which dropped),
 * then answers it again with chain of thought: the reasoning on stderr, the answer on stdout.
 * Greedy decoding: the same input gives the same output as `qllm rag ask --temp 0`. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qllm.h"

static int32_t print_to(const char* text, size_t len, int32_t token, void* user_data) {
  (void)token;
  fwrite(text, 1, len, (FILE*)user_data);
  fflush((FILE*)user_data);
  return 0; /* go on */
}

static int fail(const char* what, qllm_status st) {
  fprintf(stderr, "%s: %s: %s\n", what, qllm_status_name(st), qllm_last_error());
  return 1;
}

int main(int argc, char** argv) {
  qllm_model* model = NULL;
  qllm_session* session = NULL;
  qllm_rag* rag = NULL;
  qllm_session_params sp;
  qllm_generate_params gp;
  qllm_rag_ask_params ap;
  qllm_cot_params cp;
  qllm_rag_index_result ir;
  const char* report = NULL;
  qllm_status st;
  int rc = 1;

  if (argc < 4) {
    fprintf(stderr, "usage: %s MODEL DB QUESTION [DOCS...]\n", argv[0]);
    return 2;
  }
  if ((st = qllm_model_load(argv[1], NULL, &model)) != QLLM_OK) return fail("load", st);
  if ((st = qllm_rag_open(argv[2], 1, &rag)) != QLLM_OK) {
    fail("open database", st);
    goto done;
  }
  if (argc > 4) {
    memset(&ir, 0, sizeof ir);
    ir.struct_size = sizeof ir;
    if ((st = qllm_rag_index(rag, model, (const char* const*)(argv + 4), (size_t)(argc - 4), NULL, &ir)) != QLLM_OK) {
      fail("index", st);
      goto done;
    }
    fprintf(stderr, "indexed: %d added, %d changed, %d unchanged, %d removed, %d skipped\n", ir.files_added,
            ir.files_changed, ir.files_unchanged, ir.files_removed, ir.files_skipped);
  }

  qllm_session_params_init(&sp, sizeof sp);
  sp.temperature = 0.0f;
  if ((st = qllm_session_create(model, &sp, &session)) != QLLM_OK) {
    fail("session", st);
    goto done;
  }
  qllm_generate_params_init(&gp, sizeof gp);
  gp.max_tokens = 48;
  gp.callback = print_to;
  gp.user_data = stdout;
  qllm_rag_ask_params_init(&ap, sizeof ap);
  ap.top_k = 4;

  /* 1. retrieval: the answer streams to stdout, the report goes to stderr */
  printf("answer: ");
  if ((st = qllm_rag_ask(rag, session, argv[3], strlen(argv[3]), &ap, &gp, NULL)) != QLLM_OK) {
    printf("\n");
    fail("ask", st);
    goto done;
  }
  printf("\n");
  qllm_session_rag_report(session, &report, NULL);
  fprintf(stderr, "report: %s\n", report);

  /* 2. the same with chain of thought: reasoning on stderr, answer on stdout */
  qllm_cot_params_init(&cp, sizeof cp);
  cp.answer_tokens = 24;
  cp.reasoning_callback = print_to;
  cp.reasoning_user_data = stderr;
  ap.cot = 1;
  ap.cot_params = &cp;
  fprintf(stderr, "reasoning: ");
  printf("answer after reasoning: ");
  if ((st = qllm_rag_ask(rag, session, argv[3], strlen(argv[3]), &ap, &gp, NULL)) != QLLM_OK) {
    printf("\n");
    fail("ask with chain of thought", st);
    goto done;
  }
  printf("\n");
  fprintf(stderr, "\n");
  rc = 0;
done:
  qllm_session_free(session);
  qllm_rag_free(rag);
  qllm_model_free(model);
  return rc;
}
