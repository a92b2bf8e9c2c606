#!/usr/bin/env python3
"""Talks to `dycoke serve` with the official `openai` package, as a user's program would.

usage: openai_client.py URL VIDEO [API_KEY]

Asks about VIDEO (sent as a data: URL in a `video_url` part) without and with streaming, checks
that both give the same non-empty text and report usage, then asks a follow-up and checks that
the server took the earlier turn from its cache. Exits non-zero with a message on any failure.
"""

import base64
import mimetypes
import sys

from openai import OpenAI

from client_checks import Failure, check, run

# Few frames and tokens keep the run short; greedy decoding makes the two answers comparable.
FRAMES = 4
MAX_TOKENS = 16
QUESTION = "What happens in this video?"
FOLLOW_UP = "And what colour is it?"


def data_url(path):
    mime = mimetypes.guess_type(path)[0] or "video/mp4"
    with open(path, "rb") as f:
        return f"data:{mime};base64,{base64.b64encode(f.read()).decode('ascii')}"


def usage_dict(usage):
    # The server's extension fields (`usage.dycoke`) are not in openai's types; model_dump keeps them.
    return usage.model_dump() if usage is not None else None


def cached_tokens(usage):
    details = usage.get("prompt_tokens_details") or {}
    check(isinstance(details.get("cached_tokens"), int), f"usage has no prompt_tokens_details.cached_tokens: {usage}")
    return details["cached_tokens"]


def check_usage(usage, what):
    check(usage is not None, f"{what}: no usage")
    for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
        check(isinstance(usage.get(key), int) and usage[key] >= 0, f"{what}: usage.{key} missing: {usage}")
    check(usage["completion_tokens"] >= 1, f"{what}: no completion tokens: {usage}")
    check(usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"], f"{what}: total_tokens is not the sum: {usage}")
    dycoke = usage.get("dycoke")
    check(isinstance(dycoke, dict), f"{what}: usage.dycoke missing: {usage}")
    check(dycoke.get("frames") == FRAMES, f"{what}: asked for {FRAMES} frames, usage.dycoke.frames is {dycoke.get('frames')}")
    before, after = dycoke.get("visual_tokens_before"), dycoke.get("visual_tokens_after")
    check(isinstance(before, int) and isinstance(after, int) and 0 < after <= before,
          f"{what}: visual tokens before/after compression wrong: {before} -> {after}")
    check(usage["prompt_tokens"] > after, f"{what}: prompt_tokens {usage['prompt_tokens']} does not hold the {after} visual tokens")
    # The server evaluates exactly the prompt positions its cache did not hold.
    check(dycoke.get("prompt_evaluated") == usage["prompt_tokens"] - cached_tokens(usage),
          f"{what}: prompt_evaluated is not prompt_tokens - cached_tokens: {usage}")


def main():
    if len(sys.argv) not in (3, 4):
        raise Failure(__doc__.strip().splitlines()[2])
    url, video = sys.argv[1].rstrip("/"), sys.argv[2]
    api_key = sys.argv[3] if len(sys.argv) == 4 else "none"
    client = OpenAI(base_url=url + "/v1", api_key=api_key, timeout=120, max_retries=0)

    models = client.models.list().data
    check(len(models) >= 1 and models[0].id, f"models.list() gave no model: {models}")
    model = models[0].id
    print(f"model: {model}")

    first_turn = {
        "role": "user",
        "content": [
            {"type": "video_url", "video_url": {"url": data_url(video)}},
            {"type": "text", "text": QUESTION},
        ],
    }
    settings = dict(model=model, max_tokens=MAX_TOKENS, temperature=0, seed=1, extra_body={"frames": FRAMES})

    plain = client.chat.completions.create(messages=[first_turn], **settings)
    check(plain.object == "chat.completion", f"object is {plain.object!r}")
    check(len(plain.choices) == 1, f"{len(plain.choices)} choices")
    plain_text = plain.choices[0].message.content
    check(isinstance(plain_text, str) and plain_text, "non-streaming answer is empty")
    check(plain.choices[0].finish_reason in ("stop", "length"), f"finish_reason {plain.choices[0].finish_reason!r}")
    plain_usage = usage_dict(plain.usage)
    check_usage(plain_usage, "non-streaming")
    print(f"non-streaming: {plain_text!r} usage={plain_usage}")

    pieces, finish, stream_usage, chunks_after_usage = [], None, None, 0
    stream = client.chat.completions.create(
        messages=[first_turn], stream=True, stream_options={"include_usage": True}, **settings)
    for chunk in stream:
        check(chunk.object == "chat.completion.chunk", f"chunk object is {chunk.object!r}")
        if stream_usage is not None:
            chunks_after_usage += 1
        if chunk.usage is not None:
            check(chunk.choices == [], f"the usage chunk has choices: {chunk.choices}")
            stream_usage = usage_dict(chunk.usage)
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
            if choice.finish_reason:
                finish = choice.finish_reason
    stream_text = "".join(pieces)
    check(stream_text, "streaming answer is empty")
    check(finish in ("stop", "length"), f"stream ended without a finish_reason ({finish!r})")
    check(chunks_after_usage == 0, f"{chunks_after_usage} chunks came after the usage chunk; it must be the last")
    check_usage(stream_usage, "streaming")
    print(f"streaming: {stream_text!r} usage={stream_usage}")
    check(stream_text == plain_text, f"streaming and non-streaming answers differ:\n  {plain_text!r}\n  {stream_text!r}")
    check(stream_usage["completion_tokens"] == plain_usage["completion_tokens"],
          f"completion_tokens differ: {plain_usage['completion_tokens']} vs {stream_usage['completion_tokens']}")

    follow = client.chat.completions.create(
        messages=[first_turn, {"role": "assistant", "content": plain_text}, {"role": "user", "content": FOLLOW_UP}],
        **settings)
    follow_text = follow.choices[0].message.content
    check(isinstance(follow_text, str) and follow_text, "follow-up answer is empty")
    follow_usage = usage_dict(follow.usage)
    check_usage(follow_usage, "follow-up")
    print(f"follow-up: {follow_text!r} usage={follow_usage}")
    first_cached, follow_cached = cached_tokens(plain_usage), cached_tokens(follow_usage)
    check(follow_cached > first_cached, f"cached_tokens did not grow on the follow-up: {first_cached} -> {follow_cached}")
    # The whole first prompt, video included, is a prefix of the follow-up's: none of it is evaluated again.
    check(follow_cached >= plain_usage["prompt_tokens"],
          f"the follow-up took {follow_cached} tokens from the cache, less than the first turn's prompt ({plain_usage['prompt_tokens']})")
    check(follow_usage["prompt_tokens"] > plain_usage["prompt_tokens"], "the follow-up's prompt is not longer than the first")
    print("ok")


if __name__ == "__main__":
    run(main)
