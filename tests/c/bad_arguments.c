/* The C API given NULLs, bad paths and bad parameters: error codes and messages, never a crash.
 * Built and run by tests/capi.rs: ./bad_arguments LLM.gguf MMPROJ.gguf VIDEO NOT_A_GGUF */
#include <stdio.h>
#include <string.h>

#include "dycoke.h"

static int failures = 0;

static void expect(const char *what, DycokeStatus got, DycokeStatus want, const char *needle) {
    const char *msg = dycoke_last_error();
    if (got != want || (needle && !strstr(msg, needle))) {
        fprintf(stderr, "FAIL %s: status %d (want %d), message \"%s\" (want \"%s\")\n", what, (int)got, (int)want, msg, needle ? needle : "");
        failures++;
    } else {
        printf("ok %s: %d \"%s\"\n", what, (int)got, msg);
    }
}

static bool stop_at_once(const char *piece, void *user_data) {
    (void)piece;
    (void)user_data;
    return false;
}

/* Cancels through the session handle, as another thread would; the answer goes on streaming. */
static bool cancel_session(const char *piece, void *user_data) {
    (void)piece;
    dycoke_session_cancel((const DycokeSession *)user_data);
    return true;
}

int main(int argc, char **argv) {
    if (argc < 5) return 2;
    const char *llm = argv[1], *mmproj = argv[2], *video = argv[3], *not_gguf = argv[4];
    DycokeModel *model = NULL;
    DycokeSession *session = NULL;
    DycokeStats stats;

    expect("load: NULL path", dycoke_model_load(NULL, NULL, &model), DYCOKE_STATUS_INVALID_ARGUMENT, "llm_path");
    expect("load: NULL out", dycoke_model_load(llm, NULL, NULL), DYCOKE_STATUS_INVALID_ARGUMENT, "out");
    expect("load: missing file", dycoke_model_load("/no/such/model.gguf", NULL, &model), DYCOKE_STATUS_IO, "/no/such/model.gguf");
    expect("load: not a GGUF", dycoke_model_load(not_gguf, NULL, &model), DYCOKE_STATUS_BAD_MODEL, not_gguf);
    expect("load: invalid UTF-8", dycoke_model_load("\xff\xfe", NULL, &model), DYCOKE_STATUS_INVALID_ARGUMENT, "UTF-8");
    DycokeModelParams mp = dycoke_model_default_params();
    mp.mmproj_path = not_gguf;
    expect("load: bad mmproj", dycoke_model_load(llm, &mp, &model), DYCOKE_STATUS_BAD_MODEL, not_gguf);
    if (model != NULL) { fprintf(stderr, "FAIL: a failed load left a model\n"); failures++; }

    mp.mmproj_path = mmproj;
    expect("load", dycoke_model_load(llm, &mp, &model), DYCOKE_STATUS_OK, NULL);

    expect("session: NULL model", dycoke_session_new(NULL, NULL, &session), DYCOKE_STATUS_INVALID_ARGUMENT, "model");
    expect("session: NULL out", dycoke_session_new(model, NULL, NULL), DYCOKE_STATUS_INVALID_ARGUMENT, "out");
    DycokeSessionParams sp = dycoke_session_default_params();
    sp.ttm_k = 1.5f;
    expect("session: ttm_k 1.5", dycoke_session_new(model, &sp, &session), DYCOKE_STATUS_INVALID_ARGUMENT, "ttm");
    sp = dycoke_session_default_params();
    sp.frames = 0;
    expect("session: 0 frames", dycoke_session_new(model, &sp, &session), DYCOKE_STATUS_INVALID_ARGUMENT, "frames");
    sp = dycoke_session_default_params();
    sp.frames = 4;
    sp.n_threads = 1;
    sp.dp_layer = 1000;
    expect("session: dp_layer 1000", dycoke_session_new(model, &sp, &session), DYCOKE_STATUS_INVALID_ARGUMENT, "dp_layer");
    sp.dp_layer = -1;
    sp.n_ctx = 1024;
    expect("session", dycoke_session_new(model, &sp, &session), DYCOKE_STATUS_OK, NULL);

    expect("video: NULL session", dycoke_session_add_video(NULL, video, NULL, NULL), DYCOKE_STATUS_INVALID_ARGUMENT, "session");
    expect("video: NULL path", dycoke_session_add_video(session, NULL, NULL, NULL), DYCOKE_STATUS_INVALID_ARGUMENT, "path");
    expect("video: missing", dycoke_session_add_video(session, "/no/such/clip.mp4", NULL, NULL), DYCOKE_STATUS_IO, "/no/such/clip.mp4");
    expect("video: not a video", dycoke_session_add_video(session, not_gguf, NULL, NULL), DYCOKE_STATUS_BAD_MEDIA, not_gguf);
    expect("image: not an image", dycoke_session_add_image(session, not_gguf, NULL, NULL), DYCOKE_STATUS_BAD_MEDIA, not_gguf);
    expect("ask: NULL session", dycoke_session_ask(NULL, "Why?", NULL, NULL, NULL, NULL), DYCOKE_STATUS_INVALID_ARGUMENT, "session");
    expect("ask: NULL question", dycoke_session_ask(session, NULL, NULL, NULL, NULL, NULL), DYCOKE_STATUS_INVALID_ARGUMENT, "question");
    DycokeGenerateParams gp = dycoke_generate_default_params();
    gp.max_tokens = 0;
    expect("ask: 0 tokens", dycoke_session_ask(session, "Why?", &gp, NULL, NULL, NULL), DYCOKE_STATUS_INVALID_ARGUMENT, "max_tokens");
    gp = dycoke_generate_default_params();
    gp.temperature = -1.0f;
    expect("ask: negative temperature", dycoke_session_ask(session, "Why?", &gp, NULL, NULL, NULL), DYCOKE_STATUS_INVALID_ARGUMENT, "temperature");
    expect("ask: placeholder without video", dycoke_session_ask(session, "<video> what?", NULL, NULL, NULL, NULL), DYCOKE_STATUS_INVALID_ARGUMENT, "placeholder");

    /* Still usable after all that. */
    expect("video", dycoke_session_add_video(session, video, NULL, NULL), DYCOKE_STATUS_OK, NULL);
    gp = dycoke_generate_default_params();
    gp.max_tokens = 4;
    expect("ask: stopped by the callback", dycoke_session_ask(session, "What happens?", &gp, stop_at_once, NULL, NULL), DYCOKE_STATUS_CANCELLED, "cancelled");
    expect("ask: dycoke_session_cancel while streaming", dycoke_session_ask(session, "Why?", &gp, cancel_session, NULL, session), DYCOKE_STATUS_CANCELLED, "cancelled");
    expect("ask", dycoke_session_ask(session, "And then?", &gp, NULL, NULL, NULL), DYCOKE_STATUS_OK, NULL);
    expect("stats: NULL out", dycoke_session_stats(session, NULL), DYCOKE_STATUS_INVALID_ARGUMENT, "out");
    expect("stats", dycoke_session_stats(session, &stats), DYCOKE_STATUS_OK, NULL);
    if (stats.vision_encodes != 1 || stats.last_prompt_reused == 0) { fprintf(stderr, "FAIL: stats\n"); failures++; }
    expect("cancel: NULL", dycoke_session_cancel(NULL), DYCOKE_STATUS_INVALID_ARGUMENT, "session");
    expect("reset: NULL", dycoke_session_reset(NULL), DYCOKE_STATUS_INVALID_ARGUMENT, "session");
    expect("reset", dycoke_session_reset(session), DYCOKE_STATUS_OK, NULL);

    dycoke_session_free(NULL);
    dycoke_model_free(NULL);
    dycoke_session_free(session);
    dycoke_model_free(model);
    printf("%d failures\n", failures);
    return failures == 0 ? 0 : 1;
}
