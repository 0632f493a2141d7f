/* Loads a model through the C ABI and prints the greedy continuation ids of a prompt.
 * Usage: greedy_c MODEL_PATH PROMPT_TEXT MAX_NEW_TOKENS */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tandem.h"

static int fail(const char* what, tandem_status status) {
  fprintf(stderr, "%s failed: %s: %s\n", what, tandem_status_name(status), tandem_last_error());
  return 1;
}

int main(int argc, char** argv) {
  tandem_model* model = NULL;
  tandem_session* session = NULL;
  tandem_load_params load = tandem_load_default_params();
  tandem_generate_params generate = tandem_generate_default_params();
  tandem_status status;
  int32_t* prompt = NULL;
  int32_t* output = NULL;
  size_t n_prompt = 0;
  size_t n_output = 0;
  size_t capacity;
  size_t i;
  int rc = 1;

  if (argc != 4) {
    fprintf(stderr, "usage: %s MODEL_PATH PROMPT_TEXT MAX_NEW_TOKENS\n", argv[0]);
    return 2;
  }
  if (tandem_abi_version() != TANDEM_ABI_VERSION) {
    fprintf(stderr, "libtandem ABI %u, header %d\n", (unsigned)tandem_abi_version(), TANDEM_ABI_VERSION);
    return 1;
  }
  capacity = (size_t)strtoul(argv[3], NULL, 10);
  load.threads = 1;
  status = tandem_model_load(argv[1], &load, &model);
  if (status != TANDEM_STATUS_OK) return fail("tandem_model_load", status);

  /* Size query first, then the real call: the buffer convention of every copy-out call. */
  status = tandem_tokenize(model, argv[2], strlen(argv[2]), 1, NULL, 0, &n_prompt);
  if (status != TANDEM_STATUS_BUFFER_TOO_SMALL && status != TANDEM_STATUS_OK) {
    rc = fail("tandem_tokenize", status);
    goto done;
  }
  prompt = (int32_t*)malloc((n_prompt + 1) * sizeof(int32_t));
  output = (int32_t*)malloc((capacity + 1) * sizeof(int32_t));
  if (prompt == NULL || output == NULL) goto done;
  status = tandem_tokenize(model, argv[2], strlen(argv[2]), 1, prompt, n_prompt, &n_prompt);
  if (status != TANDEM_STATUS_OK) {
    rc = fail("tandem_tokenize", status);
    goto done;
  }
  status = tandem_session_new(model, &session);
  if (status != TANDEM_STATUS_OK) {
    rc = fail("tandem_session_new", status);
    goto done;
  }
  generate.max_new_tokens = (int64_t)capacity;
  generate.stop_at_eos = 0;
  status = tandem_session_generate(session, prompt, n_prompt, &generate, output, capacity, &n_output, NULL);
  if (status != TANDEM_STATUS_OK) {
    rc = fail("tandem_session_generate", status);
    goto done;
  }
  for (i = 0; i < n_output; ++i) printf(i == 0 ? "%d" : " %d", (int)output[i]);
  printf("\n");
  rc = 0;

done:
  free(prompt);
  free(output);
  tandem_session_free(session);
  tandem_model_free(model);
  return rc;
}
