/* Ask a question about a video through dycoke's C API and stream the answer.
 *
 *   cc examples/c/ask_video.c -Iinclude -Ltarget/release -ldycoke -Wl,-rpath,$PWD/target/release -o ask_video
 *   ./ask_video LLM.gguf MMPROJ.gguf VIDEO "What happens in this video?" [FRAMES]
 */
#include <stdio.h>
#include <stdlib.h>

#include "dycoke.h"

static bool print_piece(const char *piece, void *user_data) {
    (void)user_data;
    fputs(piece, stdout);
    fflush(stdout);
    return true; /* keep going */
}

static void show_progress(DycokePhase phase, uint64_t done, uint64_t total, void *user_data) {
    (void)user_data;
    static const char *names[] = {"decoding frames", "encoding frames", "prompt"};
    if (done == total) fprintf(stderr, "%s: %llu/%llu\n", names[phase], (unsigned long long)done, (unsigned long long)total);
}

static int fail(const char *what, DycokeStatus status) {
    fprintf(stderr, "%s failed (%d): %s\n", what, (int)status, dycoke_last_error());
    return 1;
}

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: %s LLM.gguf MMPROJ.gguf VIDEO QUESTION [FRAMES]\n", argv[0]);
        return 2;
    }
    DycokeModelParams model_params = dycoke_model_default_params();
    model_params.mmproj_path = argv[2];
    DycokeModel *model = NULL;
    DycokeStatus st = dycoke_model_load(argv[1], &model_params, &model);
    if (st != DYCOKE_STATUS_OK) return fail("loading the model", st);

    DycokeSessionParams session_params = dycoke_session_default_params();
    if (argc > 5) session_params.frames = (uint32_t)atoi(argv[5]);
    DycokeSession *session = NULL;
    st = dycoke_session_new(model, &session_params, &session);
    if (st != DYCOKE_STATUS_OK) return fail("opening a session", st);

    st = dycoke_session_add_video(session, argv[3], show_progress, NULL);
    if (st != DYCOKE_STATUS_OK) return fail("adding the video", st);

    DycokeGenerateParams gen = dycoke_generate_default_params();
    gen.max_tokens = 64;
    st = dycoke_session_ask(session, argv[4], &gen, print_piece, show_progress, NULL);
    if (st != DYCOKE_STATUS_OK) return fail("asking", st);
    putchar('\n');

    DycokeStats stats;
    dycoke_session_stats(session, &stats);
    fprintf(stderr, "visual tokens: %llu before TTM, %llu after; %llu answer tokens\n",
            (unsigned long long)stats.visual_tokens_before_ttm, (unsigned long long)stats.visual_tokens_after_ttm,
            (unsigned long long)stats.last_answer_tokens);

    dycoke_session_free(session);
    dycoke_model_free(model);
    return 0;
}
