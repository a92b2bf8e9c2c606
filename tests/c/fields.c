/* Every field of the C API's parameter structs has the effect the header documents: one check per
 * field, each against what the field changes (counters, status codes, messages, answers).
 * Built and run by tests/capi.rs: ./fields LLM.gguf MMPROJ.gguf VIDEO CACHE_DIR */
#include <stdio.h>
#include <string.h>

#include "dycoke.h"

static int failures = 0;

static void check(const char *what, int ok, const char *detail) {
    if (ok) {
        printf("ok %s\n", what);
    } else {
        fprintf(stderr, "FAIL %s: %s (last error \"%s\")\n", what, detail, dycoke_last_error());
        failures++;
    }
}

static void expect(const char *what, DycokeStatus got, DycokeStatus want, const char *needle) {
    const char *msg = dycoke_last_error();
    char detail[256];
    snprintf(detail, sizeof detail, "status %d, want %d with \"%s\"", (int)got, (int)want, needle ? needle : "");
    check(what, got == want && (!needle || strstr(msg, needle)), detail);
}

/* Collects an answer's text. */
typedef struct {
    char text[4096];
} Answer;

static bool collect(const char *piece, void *user_data) {
    Answer *a = (Answer *)user_data;
    size_t n = strlen(a->text);
    if (n + strlen(piece) < sizeof a->text) strcat(a->text, piece);
    return true;
}

static const char *llm, *mmproj, *video, *cache_dir;

static DycokeSessionParams base(void) {
    DycokeSessionParams sp = dycoke_session_default_params();
    sp.frames = 4;
    sp.n_threads = 1;
    sp.n_ctx = 2048;
    return sp;
}

/* Opens a session with `sp`, adds the video, asks one question; fills `st` and `answer`. */
static DycokeStatus ask_video(DycokeModel *model, DycokeSessionParams sp, const DycokeGenerateParams *gp, DycokeStats *st, Answer *answer) {
    DycokeSession *s = NULL;
    DycokeStatus r = dycoke_session_new(model, &sp, &s);
    if (r != DYCOKE_STATUS_OK) return r;
    Answer scratch;
    if (!answer) answer = &scratch;
    answer->text[0] = 0;
    r = dycoke_session_add_video(s, video, NULL, NULL);
    if (r == DYCOKE_STATUS_OK) r = dycoke_session_ask(s, "What happens in this video?", gp, collect, NULL, answer);
    if (r == DYCOKE_STATUS_OK && st) r = dycoke_session_stats(s, st);
    dycoke_session_free(s);
    return r;
}

int main(int argc, char **argv) {
    if (argc < 5) return 2;
    llm = argv[1], mmproj = argv[2], video = argv[3], cache_dir = argv[4];
    char detail[256];
    DycokeStats st, st2;
    Answer a, b;
    DycokeGenerateParams gp = dycoke_generate_default_params();
    gp.max_tokens = 4;

    /* DycokeModelParams.mmproj_path: without it a video is a usage error. */
    DycokeModel *text_only = NULL, *model = NULL;
    expect("mmproj_path NULL: loads", dycoke_model_load(llm, NULL, &text_only), DYCOKE_STATUS_OK, NULL);
    DycokeSessionParams sp = base();
    expect("mmproj_path NULL: a video needs it", ask_video(text_only, sp, &gp, NULL, NULL), DYCOKE_STATUS_INVALID_ARGUMENT, "mmproj_path");
    dycoke_model_free(text_only);

    /* DycokeModelParams.device: named, or an error that lists the devices there are. */
    DycokeModelParams mp = dycoke_model_default_params();
    mp.mmproj_path = mmproj;
    mp.device = "no-such-device";
    expect("device unknown", dycoke_model_load(llm, &mp, &model), DYCOKE_STATUS_INVALID_ARGUMENT, "no-such-device");
    check("device unknown: lists the devices", strstr(dycoke_last_error(), "cpu") != NULL || strstr(dycoke_last_error(), "CPU") != NULL, "no device list");
    /* DycokeModelParams.rpc_servers: a server that cannot be used is an I/O error naming the field
     * (port 1 on loopback: nothing listens there), and a malformed entry too. */
    mp.rpc_servers = "127.0.0.1:1";
    expect("rpc_servers refused", dycoke_model_load(llm, &mp, &model), DYCOKE_STATUS_IO, "rpc_servers");
    mp.rpc_servers = "no-port";
    expect("rpc_servers malformed", dycoke_model_load(llm, &mp, &model), DYCOKE_STATUS_IO, "rpc_servers");
    mp.rpc_servers = NULL;
    mp.device = "cpu";
    expect("device cpu", dycoke_model_load(llm, &mp, &model), DYCOKE_STATUS_OK, NULL);
    expect("ask", ask_video(model, base(), &gp, &st, &a), DYCOKE_STATUS_OK, NULL);

    /* DycokeModelParams.vision_type: a name ggml knows, or an error naming the field; "f32" on the
     * fixture's F32 vision model is what "auto" picks (the same answer). */
    DycokeModel *typed = NULL;
    mp.vision_type = "f7";
    expect("vision_type unknown", dycoke_model_load(llm, &mp, &typed), DYCOKE_STATUS_INVALID_ARGUMENT, "vision_type");
    mp.vision_type = "f32";
    expect("vision_type f32: loads", dycoke_model_load(llm, &mp, &typed), DYCOKE_STATUS_OK, NULL);
    expect("vision_type f32: answers", ask_video(typed, base(), &gp, NULL, &b), DYCOKE_STATUS_OK, NULL);
    check("vision_type f32: the same answer as auto", strcmp(a.text, b.text) == 0, b.text);
    dycoke_model_free(typed);
    mp.vision_type = NULL;

    /* DycokeSessionParams.vision_reuse_layer / vision_reuse_threshold: off by default; threshold 0
     * reuses nothing (the same answer); threshold 1 skips tower work on the clip's later frames;
     * a layer beyond the tower or a threshold outside [0, 1] is an error naming the field. */
    sp = base();
    check("vision_reuse_layer: off by default", sp.vision_reuse_layer < 0 && st.vision_reused_share == 0.0, "reuse on by default");
    sp.vision_reuse_layer = 1;
    sp.vision_reuse_threshold = 0.0f;
    expect("vision_reuse_threshold 0: answers", ask_video(model, sp, &gp, &st2, &b), DYCOKE_STATUS_OK, NULL);
    check("vision_reuse_threshold 0: the same answer, nothing skipped", strcmp(a.text, b.text) == 0 && st2.vision_reused_share == 0.0, b.text);
    sp.vision_reuse_threshold = 1.0f;
    expect("vision_reuse_threshold 1: answers", ask_video(model, sp, &gp, &st2, NULL), DYCOKE_STATUS_OK, NULL);
    snprintf(detail, sizeof detail, "share skipped %f, frames encoded %llu", st2.vision_reused_share, (unsigned long long)st2.frames_encoded);
    check("vision_reuse_layer 1 with threshold 1: tower work skipped", st2.vision_reused_share > 0.0 && st2.frames_encoded == 4, detail);
    sp.vision_reuse_layer = 999;
    expect("vision_reuse_layer beyond the tower", ask_video(model, sp, &gp, NULL, NULL), DYCOKE_STATUS_INVALID_ARGUMENT, "vision_reuse_layer");
    sp.vision_reuse_layer = 1;
    sp.vision_reuse_threshold = 2.0f;
    expect("vision_reuse_threshold above 1", ask_video(model, sp, &gp, NULL, NULL), DYCOKE_STATUS_INVALID_ARGUMENT, "vision_reuse_threshold");

    /* DycokeModelParams.gpu_layers: ignored on the CPU device (the same answer). */
    DycokeModel *offload = NULL;
    mp.gpu_layers = 99;
    expect("gpu_layers on cpu: loads", dycoke_model_load(llm, &mp, &offload), DYCOKE_STATUS_OK, NULL);
    expect("gpu_layers on cpu: answers", ask_video(offload, base(), &gp, NULL, &b), DYCOKE_STATUS_OK, NULL);
    check("gpu_layers on cpu: the same answer", strcmp(a.text, b.text) == 0, b.text);
    dycoke_model_free(offload);

    /* DycokeSessionParams.frames: frames x 196 visual tokens before TTM. */
    snprintf(detail, sizeof detail, "%llu tokens before TTM", (unsigned long long)st.visual_tokens_before_ttm);
    check("frames 4: 4 x 196 tokens", st.visual_tokens_before_ttm == 4 * 196, detail);
    sp = base();
    sp.frames = 8;
    expect("frames 8", ask_video(model, sp, &gp, &st2, NULL), DYCOKE_STATUS_OK, NULL);
    check("frames 8: 8 x 196 tokens", st2.visual_tokens_before_ttm == 8 * 196, "wrong count");

    /* DycokeSessionParams.max_frames: 0 lets frames above the default cap of 128 through; an
     * explicit cap below frames refuses them. (The clip has 24 frames: all are used.) */
    sp = base();
    sp.frames = 200;
    sp.max_frames = 0;
    sp.n_ctx = 4096;
    expect("max_frames 0 with frames 200", ask_video(model, sp, &gp, &st2, NULL), DYCOKE_STATUS_OK, NULL);
    check("max_frames 0: every frame of the clip", st2.visual_tokens_before_ttm == 24 * 196, "wrong count");
    sp.max_frames = 100;
    expect("max_frames 100 with frames 200", ask_video(model, sp, &gp, NULL, NULL), DYCOKE_STATUS_INVALID_ARGUMENT, "frames");
    sp.max_frames = 5000;
    expect("max_frames 5000", ask_video(model, sp, &gp, NULL, NULL), DYCOKE_STATUS_INVALID_ARGUMENT, "max_frames");

    /* DycokeSessionParams.compress: false keeps every token and prunes nothing. */
    sp = base();
    sp.compress = false;
    expect("compress false", ask_video(model, sp, &gp, &st2, NULL), DYCOKE_STATUS_OK, NULL);
    check("compress false: no TTM", st2.visual_tokens_after_ttm == st2.visual_tokens_before_ttm, "tokens were dropped");
    check("compress false: no pruning", st2.decode_steps == 0, "pruning ran");
    check("compress true: TTM ran", st.visual_tokens_after_ttm < st.visual_tokens_before_ttm, "no tokens dropped");
    check("compress true: pruning ran", st.decode_steps > 0, "no pruned steps");

    /* DycokeSessionParams.ttm_k: 4 frames keep 196 + 3 x floor((1 - K) 196). */
    snprintf(detail, sizeof detail, "%llu tokens after TTM", (unsigned long long)st.visual_tokens_after_ttm);
    check("ttm_k 0.7 (default): 196 + 3 x 58", st.visual_tokens_after_ttm == 196 + 3 * 58, detail);
    sp = base();
    sp.ttm_k = 0.5f;
    expect("ttm_k 0.5", ask_video(model, sp, &gp, &st2, NULL), DYCOKE_STATUS_OK, NULL);
    check("ttm_k 0.5: 196 + 3 x 98", st2.visual_tokens_after_ttm == 196 + 3 * 98, "wrong count");
    sp.ttm_k = -1.0f;
    expect("ttm_k negative", ask_video(model, sp, &gp, &st2, NULL), DYCOKE_STATUS_OK, NULL);
    check("ttm_k negative: TTM off", st2.visual_tokens_after_ttm == st2.visual_tokens_before_ttm, "tokens were dropped");
    sp.ttm_k = 1.0f;
    expect("ttm_k 1", ask_video(model, sp, &gp, NULL, NULL), DYCOKE_STATUS_INVALID_ARGUMENT, "ttm_k");

    /* DycokeSessionParams.dp_ratio: the kept share of video tokens is about 1 - P. */
    sp = base();
    sp.dp_ratio = 0.5f;
    expect("dp_ratio 0.5", ask_video(model, sp, &gp, &st2, NULL), DYCOKE_STATUS_OK, NULL);
    snprintf(detail, sizeof detail, "kept %.3f and %.3f", st.mean_kept_fraction, st2.mean_kept_fraction);
    check("dp_ratio: 0.5 keeps more than 0.7", st2.mean_kept_fraction > st.mean_kept_fraction + 0.1, detail);
    sp.dp_ratio = -1.0f;
    expect("dp_ratio negative", ask_video(model, sp, &gp, &st2, NULL), DYCOKE_STATUS_OK, NULL);
    check("dp_ratio negative: pruning off", st2.decode_steps == 0, "pruning ran");
    sp.dp_ratio = 1.5f;
    expect("dp_ratio 1.5", ask_video(model, sp, &gp, NULL, NULL), DYCOKE_STATUS_INVALID_ARGUMENT, "dp_ratio");

    /* DycokeSessionParams.dp_layer: checked against the model's layers. */
    sp = base();
    sp.dp_layer = 1;
    expect("dp_layer 1", ask_video(model, sp, &gp, &st2, NULL), DYCOKE_STATUS_OK, NULL);
    check("dp_layer 1: pruning ran", st2.decode_steps > 0, "no pruned steps");
    sp.dp_layer = 0;
    DycokeSession *s = NULL;
    expect("dp_layer 0", dycoke_session_new(model, &sp, &s), DYCOKE_STATUS_INVALID_ARGUMENT, "dp_layer");

    /* DycokeSessionParams.n_ctx: a context too small for the video; one beyond the model's. */
    sp = base();
    sp.n_ctx = 256;
    expect("n_ctx 256: the video does not fit", ask_video(model, sp, &gp, NULL, NULL), DYCOKE_STATUS_CONTEXT_FULL, "n_ctx");
    sp.n_ctx = 100000000;
    expect("n_ctx too large", dycoke_session_new(model, &sp, &s), DYCOKE_STATUS_INVALID_ARGUMENT, "n_ctx");

    /* DycokeSessionParams.n_threads: any count gives the same greedy answer; a huge one is refused. */
    sp = base();
    sp.n_threads = 2;
    expect("n_threads 2", ask_video(model, sp, &gp, NULL, &b), DYCOKE_STATUS_OK, NULL);
    check("n_threads 2: the same answer", strcmp(a.text, b.text) == 0, b.text);
    sp.n_threads = 100000;
    expect("n_threads 100000", dycoke_session_new(model, &sp, &s), DYCOKE_STATUS_INVALID_ARGUMENT, "n_threads");

    /* DycokeSessionParams.cache_dir: a second session on the same video reads the cache. */
    sp = base();
    sp.cache_dir = cache_dir;
    expect("cache_dir: first", ask_video(model, sp, &gp, &st2, NULL), DYCOKE_STATUS_OK, NULL);
    check("cache_dir: first encodes", st2.vision_encodes == 1 && st2.cache_hits == 0, "counters");
    expect("cache_dir: second", ask_video(model, sp, &gp, &st2, &b), DYCOKE_STATUS_OK, NULL);
    check("cache_dir: second hits", st2.vision_encodes == 0 && st2.cache_hits == 1, "counters");
    check("cache_dir: the same answer", strcmp(a.text, b.text) == 0, b.text);

    /* DycokeSessionParams.system_prompt: a longer system turn is a longer prompt. */
    sp = base();
    sp.system_prompt = "You are a helpful assistant who describes videos with great care and in detail.";
    expect("system_prompt", ask_video(model, sp, &gp, &st2, NULL), DYCOKE_STATUS_OK, NULL);
    snprintf(detail, sizeof detail, "%llu vs %llu positions", (unsigned long long)st2.last_prompt_evaluated, (unsigned long long)st.last_prompt_evaluated);
    check("system_prompt: a longer prompt", st2.last_prompt_evaluated > st.last_prompt_evaluated, detail);

    /* DycokeGenerateParams.max_tokens. */
    check("max_tokens 4: at most 4 tokens", st.last_answer_tokens <= 4 && st.last_answer_tokens > 0, "count");
    DycokeGenerateParams g2 = gp;
    g2.max_tokens = 2;
    expect("max_tokens 2", ask_video(model, base(), &g2, &st2, NULL), DYCOKE_STATUS_OK, NULL);
    check("max_tokens 2: at most 2 tokens", st2.last_answer_tokens <= 2, "count");

    /* DycokeGenerateParams.temperature, seed, top_k, top_p: sampling with a seed repeats itself;
     * out-of-range values are refused by name. */
    g2 = gp;
    g2.max_tokens = 8;
    g2.temperature = 1.5f;
    g2.top_k = 0;
    g2.top_p = 1.0f;
    g2.seed = 1234;
    expect("temperature 1.5 seed 1234", ask_video(model, base(), &g2, NULL, &a), DYCOKE_STATUS_OK, NULL);
    expect("again", ask_video(model, base(), &g2, NULL, &b), DYCOKE_STATUS_OK, NULL);
    check("seed: the same seed, the same answer", strcmp(a.text, b.text) == 0, b.text);
    int differs = 0;
    for (int seed = 1; seed <= 5 && !differs; seed++) {
        g2.seed = seed;
        expect("another seed", ask_video(model, base(), &g2, NULL, &b), DYCOKE_STATUS_OK, NULL);
        differs = strcmp(a.text, b.text) != 0;
    }
    check("seed and temperature: other seeds sample other answers", differs, "always the same");
    g2.top_k = 1;
    g2.seed = 1;
    expect("top_k 1", ask_video(model, base(), &g2, NULL, &a), DYCOKE_STATUS_OK, NULL);
    g2.temperature = 0.0f;
    expect("greedy", ask_video(model, base(), &g2, NULL, &b), DYCOKE_STATUS_OK, NULL);
    check("top_k 1: sampling is greedy", strcmp(a.text, b.text) == 0, a.text);
    g2.top_p = 0.0f;
    expect("top_p 0", ask_video(model, base(), &g2, NULL, NULL), DYCOKE_STATUS_INVALID_ARGUMENT, "top_p");
    g2 = gp;
    g2.temperature = -1.0f;
    expect("temperature -1", ask_video(model, base(), &g2, NULL, NULL), DYCOKE_STATUS_INVALID_ARGUMENT, "temperature");

    dycoke_model_free(model);
    printf("%d failures\n", failures);
    return failures == 0 ? 0 : 1;
}
