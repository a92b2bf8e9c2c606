/* The dycoke C API. Generated from src/capi.rs by build.rs (cbindgen): do not edit. */

#ifndef DYCOKE_H
#define DYCOKE_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

/**
 * What a call did.
 */
typedef enum DycokeStatus {
  DYCOKE_STATUS_OK = 0,
  /**
   * A NULL pointer, a string that is not UTF-8, a parameter out of range.
   */
  DYCOKE_STATUS_INVALID_ARGUMENT = 1,
  /**
   * A file could not be read or written.
   */
  DYCOKE_STATUS_IO = 2,
  /**
   * A model file (LLM or mmproj) is unusable.
   */
  DYCOKE_STATUS_BAD_MODEL = 3,
  /**
   * A video or image cannot be read or decoded.
   */
  DYCOKE_STATUS_BAD_MEDIA = 4,
  /**
   * The conversation no longer fits in the context: reset the session.
   */
  DYCOKE_STATUS_CONTEXT_FULL = 5,
  /**
   * Stopped by `dycoke_session_cancel` or a callback.
   */
  DYCOKE_STATUS_CANCELLED = 6,
  /**
   * ggml could not allocate or compute.
   */
  DYCOKE_STATUS_COMPUTE = 7,
  /**
   * A bug in dycoke (a caught panic); the message says where.
   */
  DYCOKE_STATUS_INTERNAL = 8,
} DycokeStatus;

/**
 * Which slow step a progress callback reports.
 */
typedef enum DycokePhase {
  DYCOKE_PHASE_DECODING_FRAMES = 0,
  DYCOKE_PHASE_ENCODING_FRAMES = 1,
  DYCOKE_PHASE_PREFILL = 2,
} DycokePhase;

/**
 * A loaded model (LLM and optional vision model); shareable by sessions in any threads.
 */
typedef struct DycokeModel DycokeModel;

/**
 * One conversation.
 */
typedef struct DycokeSession DycokeSession;

/**
 * How a model is loaded (`dycoke_model_default_params()` fills the defaults).
 */
typedef struct DycokeModelParams {
  /**
   * The vision model (mmproj GGUF), or NULL for text only.
   */
  const char *mmproj_path;
  /**
   * The compute device: "cpu", or a GPU of a build with a GPU backend ("cuda0", "metal", ...);
   * NULL is "cpu". An unknown name is DYCOKE_STATUS_INVALID_ARGUMENT, naming the devices there are.
   */
  const char *device;
  /**
   * Layers placed on `device` when it is a GPU (0: none); ignored on the CPU.
   */
  uint32_t gpu_layers;
  /**
   * The type the vision matrices are multiplied in: "auto" (NULL: the fastest measured layout:
   * F16 and BF16 widened to F32 where ggml runs AVX-512, others as stored), or "f32", "f16",
   * "bf16", "q8_0", "q4_0", ... (converted once at load). Unknown: DYCOKE_STATUS_INVALID_ARGUMENT.
   */
  const char *vision_type;
  /**
   * RPC servers ("HOST:PORT", comma-separated) whose devices are added before `device` is looked
   * up ("rpc0" is the first server's); NULL or "" for none. The protocol has no authentication:
   * use servers on loopback or a trusted network. An unusable server is DYCOKE_STATUS_IO.
   */
  const char *rpc_servers;
} DycokeModelParams;

/**
 * A session's settings (`dycoke_session_default_params()` fills the defaults).
 */
typedef struct DycokeSessionParams {
  /**
   * Positions of context; 0 picks the default (8192 or the model's, whichever is smaller).
   */
  uint32_t n_ctx;
  /**
   * CPU threads; 0 picks the number of cores.
   */
  uint32_t n_threads;
  /**
   * Frames sampled uniformly from each video (at most `max_frames`).
   */
  uint32_t frames;
  /**
   * The cap on frames per video; 0 takes the default (128), or `frames` when it is larger.
   */
  uint32_t max_frames;
  /**
   * DyCoke compression of videos (true by default).
   */
  bool compress;
  /**
   * TTM prune ratio K in [0, 1) (0.7); negative turns TTM off.
   */
  float ttm_k;
  /**
   * Dynamic pruning ratio P in [0, 1) (0.7); negative turns dynamic pruning off.
   */
  float dp_ratio;
  /**
   * Dynamic pruning layer L; negative picks the default (3).
   */
  int32_t dp_layer;
  /**
   * A folder for the embedding cache, or NULL for none.
   */
  const char *cache_dir;
  /**
   * The system prompt, or NULL for the default.
   */
  const char *system_prompt;
  /**
   * Temporal reuse inside the vision tower for videos: from this tower block on, a frame's
   * position whose hidden state moved less than `vision_reuse_threshold` (relative L2) since it
   * was last computed is not recomputed. Negative (the default) turns it off.
   */
  int32_t vision_reuse_layer;
  /**
   * Temporal reuse's threshold, in [0, 1]; 0 reuses nothing (the same embeddings as off).
   */
  float vision_reuse_threshold;
} DycokeSessionParams;

/**
 * How an answer is generated (`dycoke_generate_default_params()` fills the defaults).
 */
typedef struct DycokeGenerateParams {
  uint32_t max_tokens;
  /**
   * 0 is greedy.
   */
  float temperature;
  uint32_t top_k;
  float top_p;
  /**
   * The random seed; negative takes one from the clock.
   */
  int64_t seed;
} DycokeGenerateParams;

/**
 * Called as slow work advances: `done` of `total` frames or positions.
 */
typedef void (*DycokeProgressFn)(enum DycokePhase phase,
                                 uint64_t done,
                                 uint64_t total,
                                 void *user_data);

/**
 * Called with each piece of the answer's text (UTF-8, NUL-terminated); return false to stop.
 */
typedef bool (*DycokeTokenFn)(const char *piece, void *user_data);

/**
 * Counters of a session (DyCoke, media, the last answer).
 */
typedef struct DycokeStats {
  uint64_t visual_tokens_before_ttm;
  uint64_t visual_tokens_after_ttm;
  uint64_t decode_steps;
  uint64_t fresh_selections;
  uint64_t recalls;
  double mean_kept_fraction;
  uint64_t vision_encodes;
  uint64_t cache_hits;
  /**
   * Prompt positions of the last question taken from the cache and evaluated.
   */
  uint64_t last_prompt_reused;
  uint64_t last_prompt_evaluated;
  /**
   * Tokens of the last answer.
   */
  uint64_t last_answer_tokens;
  /**
   * Video frames run through the vision tower, and repeated frames copied instead.
   */
  uint64_t frames_encoded;
  uint64_t frames_reused;
  /**
   * The share of the vision tower's work (positions times blocks) temporal reuse skipped.
   */
  double vision_reused_share;
} DycokeStats;

#ifdef __cplusplus
extern "C" {
#endif // __cplusplus

/**
 * The version of the library ("0.1.0"); a static string.
 */
const char *dycoke_version(void);

/**
 * The message of the last failed call on this thread ("" after a successful one). The pointer
 * stays valid until the next dycoke call on this thread.
 */
const char *dycoke_last_error(void);

struct DycokeModelParams dycoke_model_default_params(void);

struct DycokeSessionParams dycoke_session_default_params(void);

struct DycokeGenerateParams dycoke_generate_default_params(void);

/**
 * Loads the LLM GGUF at `llm_path` (and the mmproj of `params`, which may be NULL for the
 * defaults) into `*out`. Free it with `dycoke_model_free`.
 */
enum DycokeStatus dycoke_model_load(const char *llm_path,
                                    const struct DycokeModelParams *params,
                                    struct DycokeModel **out);

/**
 * Frees a model (NULL is ignored). Sessions opened on it stay usable.
 */
void dycoke_model_free(struct DycokeModel *model);

/**
 * Opens a session on `model` (`params` may be NULL for the defaults) into `*out`. Free it with
 * `dycoke_session_free`.
 */
enum DycokeStatus dycoke_session_new(const struct DycokeModel *model,
                                     const struct DycokeSessionParams *params,
                                     struct DycokeSession **out);

/**
 * Frees a session (NULL is ignored). No other thread may use it any more.
 */
void dycoke_session_free(struct DycokeSession *session);

/**
 * Decodes and encodes a video for the next question. `progress` may be NULL.
 */
enum DycokeStatus dycoke_session_add_video(struct DycokeSession *session,
                                           const char *path,
                                           DycokeProgressFn progress,
                                           void *user_data);

/**
 * Loads and encodes an image for the next question. `progress` may be NULL.
 */
enum DycokeStatus dycoke_session_add_image(struct DycokeSession *session,
                                           const char *path,
                                           DycokeProgressFn progress,
                                           void *user_data);

/**
 * Asks `question` about the media added so far and the conversation before it, streaming the
 * answer to `on_token`. `params`, `on_token` and `on_progress` may be NULL. A stop by
 * `dycoke_session_cancel` or by `on_token` returning false returns DYCOKE_STATUS_CANCELLED; the
 * text streamed until then stays in the conversation.
 */
enum DycokeStatus dycoke_session_ask(struct DycokeSession *session,
                                     const char *question,
                                     const struct DycokeGenerateParams *params,
                                     DycokeTokenFn on_token,
                                     DycokeProgressFn on_progress,
                                     void *user_data);

/**
 * Stops the session's current work (from any thread; NULL is ignored).
 */
enum DycokeStatus dycoke_session_cancel(const struct DycokeSession *session);

/**
 * Forgets the questions and answers; the media stay, for the next question.
 */
enum DycokeStatus dycoke_session_reset(struct DycokeSession *session);

/**
 * Fills `*out` with the session's counters.
 */
enum DycokeStatus dycoke_session_stats(const struct DycokeSession *session,
                                       struct DycokeStats *out);

#ifdef __cplusplus
}  // extern "C"
#endif  // __cplusplus

#endif  /* DYCOKE_H */
