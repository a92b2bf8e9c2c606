//! `dycoke chat` on a terminal (a pseudo-terminal, as a person runs it): Ctrl-C while an answer
//! streams stops that answer and returns to the prompt, the next question is answered (and can be
//! stopped again), Ctrl-C at the prompt is ignored, and Ctrl-D leaves with status 0.

mod common;

use std::process::Command;
use std::time::Duration;

use dycoke::ggml::GgmlType;
use gguf_tools::random::Qwen2Spec;
use rexpect::process::WaitStatus;
use rexpect::session::{spawn_command, PtySession};

/// A random model big enough that an answer which only a full context would end (--ignore-eos)
/// takes many seconds, so that it is still streaming when Ctrl-C comes.
fn slow_model() -> std::path::PathBuf {
    let spec = Qwen2Spec { n_embd: 512, n_layer: 8, n_head: 8, n_head_kv: 2, n_ff: 1536, ..Qwen2Spec::default() };
    common::random_model_with(GgmlType::Q8_0, &spec, "slow")
}

/// Asks `question`, lets the answer stream for a moment, then presses Ctrl-C.
fn ask_and_interrupt(p: &mut PtySession, question: &str) {
    p.send_line(question).unwrap();
    p.flush().unwrap();
    // The line editor shows the line; then the answer streams.
    p.exp_string(question).unwrap();
    std::thread::sleep(Duration::from_millis(700));
    p.send_control('c').unwrap();
    let (before, found) = p.exp_regex(r"\(stopped\)|\(the context is full").unwrap();
    let tail: String = before.chars().rev().take(200).collect::<Vec<_>>().into_iter().rev().collect();
    assert_eq!(found, "(stopped)", "the answer was not stopped by Ctrl-C; it ended with ...{tail}");
    assert!(before.trim().len() > 5, "some answer streamed before Ctrl-C: {before:?}");
    p.exp_string("> ").unwrap();
}

#[test]
fn ctrl_c_stops_the_answer_and_the_chat_goes_on() {
    let model = slow_model();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dycoke"));
    cmd.args(["chat", "-m", model.to_str().unwrap(), "-n", "100000", "--ignore-eos", "-t", "1", "-c", "4096"]);
    let mut p = spawn_command(cmd, Some(120_000)).unwrap();
    p.exp_string("/help for commands.").unwrap();
    p.exp_string("> ").unwrap();

    ask_and_interrupt(&mut p, "Tell me a long story.");
    // The stop did not stick: the next answer streams, and stops again.
    ask_and_interrupt(&mut p, "Another one?");

    // At the prompt, Ctrl-C is a key for the line editor: the chat stays.
    p.send_control('c').unwrap();
    p.exp_string("> ").unwrap();
    p.send_line("/stats").unwrap();
    p.exp_string("context: ").unwrap();
    p.exp_string("> ").unwrap();

    p.send_control('d').unwrap();
    p.exp_eof().unwrap();
    match p.process_mut().wait().unwrap() {
        WaitStatus::Exited(_, 0) => {}
        other => panic!("chat did not exit cleanly on Ctrl-D: {other:?}"),
    }
}
