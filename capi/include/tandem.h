/* Tandem C ABI: a stable C interface to the Tandem MoE runtime.
 *
 * Conventions (they hold for every call below):
 * - Every call that can fail returns a tandem_status; on failure tandem_last_error() holds a message
 *   naming what went wrong (the file, tensor, key or parameter). No C++ exception crosses this ABI.
 * - Handles (tandem_model, tandem_session, tandem_sampler) are opaque; each has one *_free call,
 *   which accepts NULL.
 * - Ownership: strings returned through `char**` are allocated by Tandem and freed by the caller
 *   with tandem_free_string(). Everything else is written into caller-provided buffers whose
 *   required size is reported (TANDEM_STATUS_BUFFER_TOO_SMALL with the size in *out_count), or is
 *   a pointer borrowed from a handle, valid for as long as the comment says.
 * - Params structs start with `size_t struct_size`: get one from tandem_*_default_params(), change
 *   the fields you need, pass it. Fields are only ever added at the end, so an old caller's smaller
 *   struct keeps working; a struct_size smaller than the first version or implausibly large gives
 *   TANDEM_STATUS_INVALID_ARGUMENT.
 * - Booleans are int32_t (0 = false); sizes are size_t; token ids are int32_t.
 *
 * Thread-safety, per handle:
 * - tandem_model: after loading, any number of threads may use one model at once (info, tokenize,
 *   detokenize, chat rendering, creating sessions). Free it only after all its sessions are freed.
 * - tandem_session: one thread at a time; tandem_session_cancel() may be called from any thread
 *   while another runs prefill/decode/generate on it.
 * - tandem_sampler: one thread at a time.
 * - tandem_last_error() is per thread; the log callback is process-wide.
 *
 * Versioning: TANDEM_ABI_VERSION is the version this header describes; tandem_abi_version() the one
 * the loaded library implements. New calls and new trailing struct fields raise it; existing
 * signatures never change. */
#ifndef TANDEM_H
#define TANDEM_H

#include <stddef.h>
#include <stdint.h>

#define TANDEM_ABI_VERSION 4

#if defined(_WIN32)
#  if defined(TANDEM_BUILDING_LIBRARY)
#    define TANDEM_API __declspec(dllexport)
#  else
#    define TANDEM_API __declspec(dllimport)
#  endif
#elif defined(__GNUC__) || defined(__clang__)
#  define TANDEM_API __attribute__((visibility("default")))
#else
#  define TANDEM_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ---- Status and errors ------------------------------------------------------------------------ */

/* Mirrors tandem::ErrorKind (plus OK and BUFFER_TOO_SMALL). Values never change. */
typedef enum tandem_status {
  TANDEM_STATUS_OK = 0,
  TANDEM_STATUS_INVALID_ARGUMENT = 1, /* a caller passed something wrong (NULL, bad params)       */
  TANDEM_STATUS_IO = 2,               /* a file could not be opened, read or mapped               */
  TANDEM_STATUS_CORRUPT_FILE = 3,     /* a file's contents contradict its format                  */
  TANDEM_STATUS_UNSUPPORTED = 4,      /* valid input Tandem does not handle (architecture, type)  */
  TANDEM_STATUS_OUT_OF_RANGE = 5,     /* a size past a configured limit (context, batch, blocks)  */
  TANDEM_STATUS_OUT_OF_MEMORY = 6,    /* an allocation or pool ran out                            */
  TANDEM_STATUS_CANCELLED = 7,        /* the caller asked to stop                                 */
  TANDEM_STATUS_INTERNAL = 8,         /* a bug in Tandem                                          */
  TANDEM_STATUS_BUFFER_TOO_SMALL = 9  /* a caller buffer is too small; *out_count has the size    */
} tandem_status;

/* The message of the last failed call on this thread ("" if none). Successful calls leave it.
 * Borrowed: valid until the next failing tandem_* call on this thread. Never NULL. */
TANDEM_API const char* tandem_last_error(void);
/* "ok", "invalid_argument", ... (static storage; "unknown" for values outside the enum). */
TANDEM_API const char* tandem_status_name(tandem_status status);

TANDEM_API uint32_t tandem_abi_version(void);
/* "0.1.0" (static storage). */
TANDEM_API const char* tandem_version_string(void);

/* Frees a string returned through a `char**` out-parameter. NULL is fine. */
TANDEM_API void tandem_free_string(char* text);

/* ---- Logging ----------------------------------------------------------------------------------- */

typedef enum tandem_log_level {
  TANDEM_LOG_ERROR = 0,
  TANDEM_LOG_WARN = 1,
  TANDEM_LOG_INFO = 2,
  TANDEM_LOG_DEBUG = 3
} tandem_log_level;

/* `message` is borrowed for the duration of the call. Called from whichever thread logs. */
typedef void (*tandem_log_fn)(tandem_log_level level, const char* message, void* user_data);

/* Process-wide. NULL restores the default (nothing is printed). Messages above `max_level` are
 * dropped. Safe to call from any thread; a callback already running may still finish. */
TANDEM_API void tandem_set_log_callback(tandem_log_fn callback, void* user_data,
                                        tandem_log_level max_level);

/* ---- Models ------------------------------------------------------------------------------------ */

typedef struct tandem_model tandem_model;
typedef struct tandem_session tandem_session;
typedef struct tandem_sampler tandem_sampler;

/* Load progress in [0, 1] with a short stage name (borrowed for the call); on the loading thread. */
typedef void (*tandem_progress_fn)(float fraction, const char* stage, void* user_data);

typedef struct tandem_load_params {
  size_t struct_size;
  const char* placement;          /* placement rules; NULL or "" = defaults (docs/PLACEMENT.md)   */
  int32_t threads;                /* 0 = one per physical core                                    */
  int64_t max_context_tokens;     /* per session; longer requests give OUT_OF_RANGE               */
  int64_t max_sessions;           /* sessions open at once                                        */
  int64_t max_batch_tokens;       /* tokens one forward pass may take; 0 = automatic (the default:
                                   * 4096 when experts stream to a GPU for prefill, else 512)     */
  int32_t load_tokenizer;         /* also load the tokenizer and chat template when shipped       */
  tandem_progress_fn progress;    /* may be NULL                                                  */
  void* progress_user_data;
  /* May be NULL. Another thread stores a nonzero value (with an atomic or volatile store) to stop
   * loading; tandem_model_load then returns TANDEM_STATUS_CANCELLED. Read, never written. */
  const int32_t* cancel_flag;
} tandem_load_params;

TANDEM_API tandem_load_params tandem_load_default_params(void);

/* `path`: a GGUF file (or the first of a split set) or an HF folder (config.json + safetensors).
 * `params` may be NULL (defaults). On success *out_model is a new handle (free with
 * tandem_model_free); on failure it is set to NULL. */
TANDEM_API tandem_status tandem_model_load(const char* path, const tandem_load_params* params,
                                           tandem_model** out_model);
TANDEM_API void tandem_model_free(tandem_model* model);

/* ABI 2. tandem_model_load with GGUF metadata overrides, as `--override-kv` (llama.cpp's
 * spelling): "KEY=TYPE:VALUE" items separated by commas or newlines, TYPE int, float, bool or str,
 * e.g. "qwen2moe.rope.freq_base=float:1000000"; NULL or "" = none. A malformed item, a key the
 * loader reads with another type, or a key neither in the file nor read by the loader gives
 * TANDEM_STATUS_INVALID_ARGUMENT; so does any override for an HF folder.
 * (A function rather than a tandem_load_params field: tandem_load_default_params returns the
 * struct by value, so growing it would overrun the return slot of every ABI 1 caller.) */
TANDEM_API tandem_status tandem_model_load_with_overrides(const char* path, const tandem_load_params* params,
                                                          const char* override_kv, tandem_model** out_model);

/* ABI 4. The KV cache settings added after ABI 1, in a struct that grows safely (it is filled
 * through a pointer, never returned by value): set struct_size = sizeof(tandem_kv_params), call
 * tandem_kv_default_params, change what you need and pass it to tandem_model_load_with_kv. */
typedef struct tandem_kv_params {
  size_t struct_size;
  const char* kv_type;       /* "f16" (default), "bf16", "f32", "fp8", "int8", "int4" (= "int4:32"),
                              * "int4:64" (values in groups of 64; docs/KV.md); NULL = default       */
  int32_t prefix_cache;      /* keep prompts' full KV blocks for later sessions that start alike      */
  /* The prefix cache's SSD tier (docs/KV.md): an existing writable directory, or NULL / "" for none.
   * Blocks written there serve later processes loading the same model with the same KV type. A
   * directory turns prefix_cache on. */
  const char* kv_disk_dir;
  uint64_t kv_disk_bytes;    /* bytes its records may take; 0 = 64 GiB or half the file system      */
} tandem_kv_params;

/* Fills the fields of *params that fit in params->struct_size (which the caller sets) with the
 * defaults: f16, no prefix cache, no SSD tier. */
TANDEM_API tandem_status tandem_kv_default_params(tandem_kv_params* params);

/* ABI 4. tandem_model_load_with_overrides with KV cache settings; `kv` may be NULL (defaults).
 * An unknown kv_type, a kv_disk_dir that is missing, not a directory or not writable, a
 * kv_disk_bytes without a directory or larger than its file system give
 * TANDEM_STATUS_INVALID_ARGUMENT. */
TANDEM_API tandem_status tandem_model_load_with_kv(const char* path, const tandem_load_params* params,
                                                   const char* override_kv, const tandem_kv_params* kv,
                                                   tandem_model** out_model);

typedef struct tandem_model_info {
  size_t struct_size;            /* set by the caller: sizeof(tandem_model_info)                   */
  const char* architecture;      /* "qwen3_moe", ...; borrowed, valid while the model lives        */
  int64_t vocab_size;
  int64_t hidden_size;
  int64_t num_layers;
  int64_t num_experts;           /* routed experts per MoE layer                                   */
  int64_t num_experts_per_tok;
  int64_t num_shared_experts;
  int64_t max_position_embeddings;
  int64_t max_context_tokens;    /* the per-session limit this model was loaded with               */
  int32_t bos_id;                /* -1 when none                                                   */
  int32_t eos_id;                /* -1 when none                                                   */
  int32_t has_tokenizer;
  int32_t has_chat_template;
  uint64_t total_bytes;          /* the memory report's total                                      */
} tandem_model_info;

/* Fills the fields of *out_info that fit in out_info->struct_size (which the caller sets). */
TANDEM_API tandem_status tandem_model_get_info(const tandem_model* model, tandem_model_info* out_info);

/* What went where: a JSON array of {"what", "device", "bytes", "mapped"} objects, one per line of
 * the engine's memory report. Free *out_json with tandem_free_string. */
TANDEM_API tandem_status tandem_model_memory_report_json(const tandem_model* model, char** out_json);

/* ABI 4. What the model's scheduler and KV cache are doing now (counters since load). Every
 * session's forward passes go through one scheduler per model, which batches the passes of
 * sessions used from several threads into shared steps. */
typedef struct tandem_engine_stats {
  size_t struct_size;              /* set by the caller: sizeof(tandem_engine_stats)                */
  int64_t running_sequences;       /* sequences the scheduler decodes (tandem serve's requests)     */
  int64_t waiting_sequences;       /* sequences queued for a running slot                           */
  int64_t steps;                   /* forward passes the scheduler ran                              */
  int64_t batched_steps;           /* of those, passes that ran more than one sequence or session    */
  int64_t session_chunks;          /* sessions' prefill/decode chunks run                           */
  int64_t preemptions;             /* sequences whose blocks were taken back when the pool ran out  */
  int64_t kv_block_tokens;         /* tokens per KV block                                           */
  int64_t kv_blocks_total;         /* the pool: max_sessions x max_context_tokens, in blocks         */
  int64_t kv_blocks_in_use;        /* held by sessions or sequences                                 */
  int64_t kv_blocks_free;          /* total - in use (cached blocks no one holds count as free)      */
  int64_t kv_blocks_cached;        /* held by the prefix cache (some may also be in use)             */
  int64_t prefix_hit_tokens;       /* prompt tokens adopted from the prefix cache instead of run     */
  int64_t kv_disk_records;         /* blocks in the SSD tier (0 without one)                         */
  int64_t kv_disk_loaded;          /* blocks read back from the SSD tier and used                   */
  int64_t kv_disk_written;         /* blocks written to the SSD tier                                */
  int64_t kv_disk_rejected;        /* records found corrupt, truncated or another model's            */
} tandem_engine_stats;

/* Fills the fields of *out_stats that fit in out_stats->struct_size (which the caller sets). Safe
 * from any thread while sessions run; the counters are read one after another, not atomically
 * together. With an SSD tier it waits for the tier's writes in flight. */
TANDEM_API tandem_status tandem_model_get_stats(const tandem_model* model, tandem_engine_stats* out_stats);

/* ---- Text -------------------------------------------------------------------------------------- */

/* Tokenizes `text_len` bytes of UTF-8. `out_ids` may be NULL when capacity is 0 (a size query).
 * *out_count is always set to the number of ids; if it exceeds `capacity` the call returns
 * TANDEM_STATUS_BUFFER_TOO_SMALL and writes nothing. Needs a model with a tokenizer. */
TANDEM_API tandem_status tandem_tokenize(const tandem_model* model, const char* text, size_t text_len,
                                         int32_t add_special, int32_t* out_ids, size_t capacity,
                                         size_t* out_count);

/* Detokenizes `n_ids` ids into a NUL-terminated string (free with tandem_free_string); its length
 * in bytes goes to *out_len when out_len is not NULL. */
TANDEM_API tandem_status tandem_detokenize(const tandem_model* model, const int32_t* ids, size_t n_ids,
                                           int32_t skip_special, char** out_text, size_t* out_len);

typedef struct tandem_chat_params {
  size_t struct_size;
  const char* messages_json;      /* required: a JSON array of {"role", "content", ...}            */
  const char* tools_json;         /* NULL or a JSON array of tool definitions                       */
  const char* extra_json;         /* NULL or a JSON object of template variables (enable_thinking)  */
  int32_t add_generation_prompt;
} tandem_chat_params;

TANDEM_API tandem_chat_params tandem_chat_default_params(void);

/* Renders the model's chat template as transformers' apply_chat_template does. Free *out_text
 * with tandem_free_string. */
TANDEM_API tandem_status tandem_chat_render(const tandem_model* model, const tandem_chat_params* params,
                                            char** out_text);

/* ---- Sampling ---------------------------------------------------------------------------------- */

typedef struct tandem_sampler_params {
  size_t struct_size;
  float temperature;         /* 0 = greedy (argmax, ties to the lowest id)                          */
  int32_t top_k;             /* 0 = off                                                             */
  float top_p;               /* 1 = off                                                             */
  float min_p;               /* 0 = off                                                             */
  float repetition_penalty;  /* 1 = off                                                             */
  float frequency_penalty;
  float presence_penalty;
  int32_t penalty_last_n;    /* -1 = whole history                                                  */
  uint64_t seed;
} tandem_sampler_params;

TANDEM_API tandem_sampler_params tandem_sampler_default_params(void);

TANDEM_API tandem_status tandem_sampler_new(const tandem_sampler_params* params,
                                            tandem_sampler** out_sampler);
TANDEM_API void tandem_sampler_free(tandem_sampler* sampler);
/* Chooses a token from `logits` [n_logits]; `history` (may be NULL when n_history is 0) is the
 * sequence so far, for the penalties. */
TANDEM_API tandem_status tandem_sampler_sample(tandem_sampler* sampler, const float* logits, size_t n_logits,
                                               const int32_t* history, size_t n_history,
                                               int32_t* out_id);
TANDEM_API tandem_status tandem_sampler_reseed(tandem_sampler* sampler, uint64_t seed);

/* ---- Sessions ---------------------------------------------------------------------------------- */

/* A session is one sequence with its own KV cache. Free it before its model. */
TANDEM_API tandem_status tandem_session_new(tandem_model* model, tandem_session** out_session);
TANDEM_API void tandem_session_free(tandem_session* session);

/* Appends `n_ids` ids and runs them; afterwards the logits are those of the last position. */
TANDEM_API tandem_status tandem_session_prefill(tandem_session* session, const int32_t* ids, size_t n_ids);
/* Appends one id and runs it. */
TANDEM_API tandem_status tandem_session_decode(tandem_session* session, int32_t id);

/* The last position's logits [*out_count = vocab]. Borrowed: valid until the next call that
 * changes the session (prefill, decode, generate, reset, free). Fails when nothing ran yet. */
TANDEM_API tandem_status tandem_session_logits(const tandem_session* session, const float** out_logits,
                                               size_t* out_count);
/* The same, copied into `out_logits` [capacity]; BUFFER_TOO_SMALL reports the size in *out_count. */
TANDEM_API tandem_status tandem_session_copy_logits(const tandem_session* session, float* out_logits,
                                                    size_t capacity, size_t* out_count);

/* Tokens in the session's cache. */
TANDEM_API tandem_status tandem_session_position(const tandem_session* session, int64_t* out_position);

/* Forgets every token and frees the session's KV blocks. */
TANDEM_API tandem_status tandem_session_reset(tandem_session* session);

/* From any thread: the running (or, if none runs, the next) prefill/decode/generate on this session
 * stops soon and returns TANDEM_STATUS_CANCELLED. Do not race it with tandem_session_free. */
TANDEM_API tandem_status tandem_session_cancel(tandem_session* session);

/* Streaming: called once per sampled token with the text that became final with it (maybe empty),
 * and once at the end with id -1 and the remaining text. `text` is borrowed for the call and is not
 * NUL-terminated; use text_len. Return nonzero to stop after this token. */
typedef int32_t (*tandem_token_fn)(int32_t id, const char* text, size_t text_len, void* user_data);

typedef struct tandem_generate_params {
  size_t struct_size;
  int64_t max_new_tokens;                  /* capped by the output buffer's capacity            */
  const tandem_sampler_params* sampling;   /* NULL = greedy                                      */
  int32_t stop_at_eos;                     /* stop when the model's EOS id is sampled            */
  const char* const* stop_strings;         /* may be NULL; needs a tokenizer                     */
  size_t n_stop_strings;
  int32_t skip_special_text;               /* leave special tokens out of the streamed text      */
  tandem_token_fn on_token;                /* may be NULL                                        */
  void* user_data;
} tandem_generate_params;

TANDEM_API tandem_generate_params tandem_generate_default_params(void);

typedef enum tandem_stop_reason {
  TANDEM_STOP_MAX_TOKENS = 0,
  TANDEM_STOP_EOS = 1,
  TANDEM_STOP_STOP_STRING = 2,
  TANDEM_STOP_CALLBACK = 3,
  TANDEM_STOP_CANCELLED = 4,
  TANDEM_STOP_CONTEXT_FULL = 5  /* the session reached its max_context_tokens */
} tandem_stop_reason;

typedef struct tandem_generate_stats {
  size_t struct_size;            /* set by the caller: sizeof(tandem_generate_stats)              */
  tandem_stop_reason stop_reason;
  int64_t prompt_tokens;
  int64_t prefilled_tokens;      /* fewer than prompt_tokens when the session held a prefix       */
  int64_t generated_tokens;
  double prefill_seconds;
  double decode_seconds;
  int64_t cached_prompt_tokens;  /* ABI 3: prompt tokens adopted from the prefix cache             */
} tandem_generate_stats;

/* Generates a continuation of `prompt` (when the session already holds a prefix of it, only the
 * rest is prefilled; otherwise the session starts over). The new ids go to `out_ids` [capacity]
 * and their number to *out_count; `out_stats` may be NULL. Returns TANDEM_STATUS_CANCELLED (with
 * the ids produced so far) after tandem_session_cancel. */
TANDEM_API tandem_status tandem_session_generate(tandem_session* session, const int32_t* prompt,
                                                 size_t n_prompt, const tandem_generate_params* params,
                                                 int32_t* out_ids, size_t capacity, size_t* out_count,
                                                 tandem_generate_stats* out_stats);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* TANDEM_H */
