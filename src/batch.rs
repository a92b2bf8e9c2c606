//! Batch inference over JSONL requests: parsing, sharding, resuming, multiple-choice scoring and
//! the summary. Pure functions; `dycoke batch` runs the model over them.
//!
//! A request is one JSON object per line:
//! `{"id": "q1", "video": "clips/a.mp4", "question": "What happens?"}`, with optional `image`
//! (instead of `video`), `options` (a list of answers: multiple choice), `answer` (the correct
//! option: a letter, a 0-based index or the option's text), `task` (a group for accuracy),
//! `max_tokens`, `temperature`, `seed` and `frames`.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};

/// The longest request line read (a question, not a document).
pub const MAX_LINE: usize = 1 << 20;
/// At most this many options (letters A to Z).
pub const MAX_OPTIONS: usize = 26;

/// One request.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Request {
    #[serde(deserialize_with = "id_string")]
    pub id: String,
    pub video: Option<PathBuf>,
    pub image: Option<PathBuf>,
    pub question: String,
    #[serde(default)]
    pub options: Vec<String>,
    pub answer: Option<Value>,
    pub task: Option<String>,
    pub max_tokens: Option<usize>,
    pub temperature: Option<f32>,
    pub seed: Option<u64>,
    pub frames: Option<usize>,
}

fn id_string<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<String, D::Error> {
    match Value::deserialize(d)? {
        Value::String(s) if !s.is_empty() => Ok(s),
        Value::Number(n) => Ok(n.to_string()),
        other => Err(serde::de::Error::custom(format!("id must be a non-empty string or a number, not {other}"))),
    }
}

/// A line of the input: its number (1-based) and the request or why it is unusable, with the
/// id to record it under.
#[derive(Clone, Debug, PartialEq)]
pub struct Item {
    pub line: usize,
    pub id: String,
    pub request: std::result::Result<Request, String>,
}

/// Parses one input line. Relative media paths are taken from `base` (the input's folder).
pub fn parse_line(line_no: usize, text: &str, base: &Path) -> Item {
    let fallback_id = format!("line {line_no}");
    if text.len() > MAX_LINE {
        return Item { line: line_no, id: fallback_id, request: Err(format!("line {line_no} is longer than {MAX_LINE} bytes")) };
    }
    let request = serde_json::from_str::<Request>(text).map_err(|e| format!("line {line_no}: {e}")).and_then(|r| check(r, base));
    // An unparsable line is recorded under its id when the id itself can be read.
    let id = match &request {
        Ok(r) => r.id.clone(),
        Err(_) => serde_json::from_str::<Value>(text)
            .ok()
            .and_then(|v| match v.get("id") {
                Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
                Some(Value::Number(n)) => Some(n.to_string()),
                _ => None,
            })
            .unwrap_or(fallback_id),
    };
    Item { line: line_no, id, request }
}

fn check(mut r: Request, base: &Path) -> std::result::Result<Request, String> {
    let id = r.id.clone();
    let bad = |m: String| Err(format!("{id}: {m}"));
    if r.video.is_some() && r.image.is_some() {
        return bad("give a video or an image, not both".into());
    }
    if r.question.trim().is_empty() {
        return bad("the question is empty".into());
    }
    if r.options.len() == 1 || r.options.len() > MAX_OPTIONS {
        return bad(format!("{} options (multiple choice takes 2 to {MAX_OPTIONS})", r.options.len()));
    }
    if let Some(a) = &r.answer {
        if !r.options.is_empty() && answer_index(a, &r.options).is_none() {
            return bad(format!("the answer {a} is none of the options"));
        }
    }
    for p in [&mut r.video, &mut r.image].into_iter().flatten() {
        if p.is_relative() {
            *p = base.join(&*p);
        }
    }
    Ok(r)
}

/// Reads the input: every non-empty line, numbered from 1.
pub fn read_input(path: &Path) -> Result<Vec<Item>> {
    let text = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let text = String::from_utf8(text).map_err(|e| Error::invalid("input", format!("{}: not UTF-8 text ({e})", path.display())))?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let items: Vec<Item> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| parse_line(i + 1, l, &base))
        .collect();
    let mut seen = HashSet::new();
    for item in &items {
        if !seen.insert(item.id.as_str()) {
            return Err(Error::invalid("input", format!("{}: the id {:?} appears twice (line {})", path.display(), item.id, item.line)));
        }
    }
    Ok(items)
}

/// Shard `index` of `count`: the items at positions index, index + count, ...
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    /// Parses "I/N" (I from 0 to N-1).
    pub fn parse(s: &str) -> Result<Shard> {
        let bad = || Error::invalid("shard", format!("{s:?} is not I/N with 0 <= I < N (e.g. 0/4)"));
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count): (usize, usize) = (i.trim().parse().map_err(|_| bad())?, n.trim().parse().map_err(|_| bad())?);
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }

    pub fn contains(&self, position: usize) -> bool {
        position % self.count == self.index
    }
}

/// The ids already in an output file (so a rerun skips them). A last line cut short by a crash
/// is removed from the file, so its item runs again.
pub fn resume(output: &Path) -> Result<HashSet<String>> {
    let bytes = match std::fs::read(output) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashSet::new()),
        Err(e) => return Err(Error::io(output, e)),
    };
    let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if complete < bytes.len() {
        let f = std::fs::OpenOptions::new().write(true).open(output).map_err(|e| Error::io(output, e))?;
        f.set_len(complete as u64).map_err(|e| Error::io(output, e))?;
    }
    let mut ids = HashSet::new();
    for (i, line) in bytes[..complete].split(|&b| b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let record: Value = serde_json::from_slice(line)
            .map_err(|e| Error::invalid("output", format!("{}: line {} is not a result record ({e}); move the file away to start over", output.display(), i + 1)))?;
        match record.get("id") {
            Some(Value::String(id)) => ids.insert(id.clone()),
            _ => return Err(Error::invalid("output", format!("{}: line {} has no id", output.display(), i + 1))),
        };
    }
    Ok(ids)
}

/// The letter of option `i` (A, B, ...).
pub fn letter(i: usize) -> char {
    (b'A' + i as u8) as char
}

/// The multiple-choice prompt (the lmms-eval convention for LLaVA-OneVision).
pub fn mc_prompt(question: &str, options: &[String]) -> String {
    let mut s = format!("{}\n", question.trim_end());
    for (i, o) in options.iter().enumerate() {
        s.push_str(&format!("{}. {}\n", letter(i), o));
    }
    s.push_str("Answer with the option's letter from the given choices directly.");
    s
}

/// The option a reply picks: the first standalone letter of an option ("B", "(B)", "B. text",
/// "The answer is B"), or an option's text.
pub fn parse_choice(reply: &str, options: &[String]) -> Option<usize> {
    let n = options.len();
    let chars: Vec<char> = reply.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        let standalone = |j: Option<&char>| j.is_none_or(|c| !c.is_alphanumeric());
        if c.is_ascii_uppercase() && ((c as u8 - b'A') as usize) < n && standalone(i.checked_sub(1).map(|j| &chars[j])) && standalone(chars.get(i + 1)) {
            return Some((c as u8 - b'A') as usize);
        }
    }
    let lower = reply.to_lowercase();
    options.iter().position(|o| !o.is_empty() && lower.contains(&o.to_lowercase()))
}

/// Which option a request's `answer` names: a letter, a 0-based index, "(B) text", or the text.
pub fn answer_index(answer: &Value, options: &[String]) -> Option<usize> {
    match answer {
        Value::Number(n) => n.as_u64().map(|i| i as usize).filter(|&i| i < options.len()),
        Value::String(s) => {
            let s = s.trim();
            let by_letter = |c: char| (c.is_ascii_uppercase() && ((c as u8 - b'A') as usize) < options.len()).then(|| (c as u8 - b'A') as usize);
            let mut chars = s.chars();
            match (chars.next(), chars.next(), chars.next()) {
                (Some(c), None, _) => by_letter(c),
                (Some('('), Some(c), Some(')')) => by_letter(c),
                _ => options.iter().position(|o| o.trim() == s),
            }
        }
        _ => None,
    }
}

/// One output line.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Record {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
    /// The option picked (multiple choice).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub choice: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correct: Option<bool>,
    pub tokens: usize,
    pub visual_tokens: usize,
    pub prompt_tokens: usize,
    pub seconds: f64,
    pub error: Option<String>,
}

/// What a run did.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Summary {
    /// Items of this shard in the input.
    pub items: usize,
    /// Already in the output, not run again.
    pub skipped: usize,
    pub done: usize,
    pub failures: usize,
    pub generated_tokens: usize,
    pub decode_seconds: f64,
    pub seconds: f64,
    /// Summed over the items that succeeded.
    pub visual_tokens: usize,
    /// task -> (correct, scored)
    pub accuracy: BTreeMap<String, (usize, usize)>,
}

impl Summary {
    pub fn add(&mut self, r: &Record, decode_seconds: f64) {
        self.done += 1;
        if r.error.is_some() {
            self.failures += 1;
            return;
        }
        self.generated_tokens += r.tokens;
        self.decode_seconds += decode_seconds;
        self.visual_tokens += r.visual_tokens;
        if let Some(c) = r.correct {
            let e = self.accuracy.entry(r.task.clone().unwrap_or_else(|| "all".into())).or_default();
            e.0 += usize::from(c);
            e.1 += 1;
        }
    }

    pub fn mean_visual_tokens(&self) -> f64 {
        let ok = self.done - self.failures;
        if ok == 0 { 0.0 } else { self.visual_tokens as f64 / ok as f64 }
    }

    pub fn tokens_per_second(&self) -> f64 {
        if self.decode_seconds > 0.0 { self.generated_tokens as f64 / self.decode_seconds } else { 0.0 }
    }

    /// A few lines for the terminal.
    pub fn render(&self) -> String {
        let mut s = format!(
            "{} items: {} done now ({} failed), {} already done; {:.1} s, {:.1} tok/s decode, {:.0} visual tokens on average",
            self.items,
            self.done,
            self.failures,
            self.skipped,
            self.seconds,
            self.tokens_per_second(),
            self.mean_visual_tokens()
        );
        let (mut c, mut n) = (0, 0);
        for (task, (ok, total)) in &self.accuracy {
            s.push_str(&format!("\n  {task}: {ok}/{total} correct ({:.1}%)", 100.0 * *ok as f64 / *total as f64));
            c += ok;
            n += total;
        }
        if self.accuracy.len() > 1 {
            s.push_str(&format!("\n  overall: {c}/{n} correct ({:.1}%)", 100.0 * c as f64 / n as f64));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("option {i}")).collect()
    }

    #[test]
    fn requests_parse_and_name_their_problems() {
        let base = Path::new("/data");
        let item = parse_line(1, r#"{"id": 7, "video": "a.mp4", "question": "Why?"}"#, base);
        let r = item.request.unwrap();
        assert_eq!((r.id.as_str(), r.video.unwrap()), ("7", PathBuf::from("/data/a.mp4")));
        let cases = [
            (r#"{"id": "x", "question": "Q", "vidoe": "a.mp4"}"#, "unknown field"),
            (r#"{"id": "x", "question": " "}"#, "empty"),
            (r#"{"id": "x", "question": "Q", "video": "a", "image": "b"}"#, "not both"),
            (r#"{"id": "x", "question": "Q", "options": ["a"]}"#, "1 options"),
            (r#"{"id": "x", "question": "Q", "options": ["a", "b"], "answer": "C"}"#, "none of the options"),
            (r#"{"id": "", "question": "Q"}"#, "non-empty"),
            (r#"{"id": "x", "question": 3}"#, "invalid type"),
            ("not json", "line 4"),
        ];
        for (text, want) in cases {
            let item = parse_line(4, text, base);
            let e = item.request.unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
        assert_eq!(parse_line(4, r#"{"id": "x", "question": 3}"#, base).id, "x", "recorded under its id");
        assert_eq!(parse_line(4, "{", base).id, "line 4");
    }

    #[test]
    fn shards_split_without_overlap_or_loss() {
        assert!(Shard::parse("4/4").is_err() && Shard::parse("1/0").is_err() && Shard::parse("x").is_err());
        let shards: Vec<Shard> = (0..3).map(|i| Shard::parse(&format!("{i}/3")).unwrap()).collect();
        for pos in 0..100 {
            assert_eq!(shards.iter().filter(|s| s.contains(pos)).count(), 1);
        }
    }

    #[test]
    fn resume_drops_a_cut_line_and_reads_the_ids() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.jsonl");
        assert!(resume(&out).unwrap().is_empty());
        std::fs::write(&out, "{\"id\":\"a\"}\n{\"id\":\"b\"}\n{\"id\":\"c\",\"ans").unwrap();
        let ids = resume(&out).unwrap();
        assert_eq!(ids, HashSet::from(["a".to_string(), "b".to_string()]));
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "{\"id\":\"a\"}\n{\"id\":\"b\"}\n");
        std::fs::write(&out, "garbage\n").unwrap();
        assert!(resume(&out).unwrap_err().to_string().contains("line 1"));
    }

    #[test]
    fn choices_are_parsed_from_replies_and_answers() {
        let o = opts(4);
        for (reply, want) in [("B", Some(1)), ("(C) option 2", Some(2)), ("The answer is D.", Some(3)), ("A. option 0", Some(0))] {
            assert_eq!(parse_choice(reply, &o), want, "{reply}");
        }
        assert_eq!(parse_choice("I think option 2 fits", &o), Some(2));
        assert_eq!(parse_choice("E", &o), None, "no such option");
        assert_eq!(parse_choice("Because", &o), None, "a letter inside a word is not a choice");
        assert_eq!(answer_index(&Value::from("B"), &o), Some(1));
        assert_eq!(answer_index(&Value::from("(D)"), &o), Some(3));
        assert_eq!(answer_index(&Value::from(2), &o), Some(2));
        assert_eq!(answer_index(&Value::from("option 1"), &o), Some(1));
        assert_eq!(answer_index(&Value::from(9), &o), None);
        assert_eq!(mc_prompt("Why?", &o[..2]), "Why?\nA. option 0\nB. option 1\nAnswer with the option's letter from the given choices directly.");
    }

    #[test]
    fn the_summary_counts_failures_and_accuracy_per_task() {
        let mut s = Summary { items: 4, ..Summary::default() };
        let ok = |task: &str, correct| Record { id: "x".into(), task: Some(task.into()), correct: Some(correct), tokens: 10, visual_tokens: 100, ..Record::default() };
        s.add(&ok("count", true), 1.0);
        s.add(&ok("count", false), 1.0);
        s.add(&ok("order", true), 2.0);
        s.add(&Record { error: Some("bad".into()), ..Record::default() }, 0.0);
        assert_eq!((s.done, s.failures, s.accuracy["count"], s.accuracy["order"]), (4, 1, (1, 2), (1, 1)));
        assert!((s.tokens_per_second() - 7.5).abs() < 1e-9 && (s.mean_visual_tokens() - 100.0).abs() < 1e-9);
        assert!(s.render().contains("overall: 2/3 correct"));
    }
}
