//! Prompts with media: where video and image embeddings go in the token sequence.
//!
//! A user turn may hold `<video>` and `<image>` placeholders; the k-th `<video>` takes the k-th
//! video, the k-th `<image>` the k-th image. A turn without placeholders gets its media before the
//! text, images then videos, each followed by a line break, as transformers' LLaVA-OneVision chat
//! template writes them. The chat template renders the conversation with a private-use sentinel in
//! place of each placeholder; the rendered text is then tokenized piece by piece around them, which
//! is how transformers' processor splits it too (the placeholders are special tokens).

use crate::error::{Error, Result};
use crate::tokenizer::{ChatMessage, Tokenizer};

pub const VIDEO_PLACEHOLDER: &str = "<video>";
pub const IMAGE_PLACEHOLDER: &str = "<image>";

/// The system prompt used with media when none is given: the evaluation convention.
pub const DEFAULT_MEDIA_SYSTEM_PROMPT: &str = "You are a helpful assistant.";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MediaKind {
    Video,
    Image,
}

/// A piece of a tokenized prompt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    Tokens(Vec<u32>),
    /// The embeddings of media number `index` (in the order given).
    Media(usize),
}

// Sentinels that no chat template or tokenizer treats specially.
const OPEN: char = '\u{E000}';
const CLOSE: char = '\u{E001}';

fn sentinel(index: usize) -> String {
    format!("{OPEN}{index}{CLOSE}")
}

/// Refuses text that holds the media sentinels (private-use characters), which would be taken for
/// media when the rendered prompt is split.
pub fn check_text(text: &str) -> Result<()> {
    if text.contains(OPEN) || text.contains(CLOSE) {
        return Err(Error::Prompt("the text contains private-use characters U+E000/U+E001".into()));
    }
    Ok(())
}

/// Places media into the user turn's text: replaces placeholders with sentinels (in order per kind),
/// or prefixes the media when the text has none. `kinds` lists the media in the order given.
pub fn place_media(text: &str, kinds: &[MediaKind]) -> Result<String> {
    place_media_from(text, kinds, 0)
}

/// As `place_media` for a later turn: `kinds` lists every medium of the conversation and this
/// turn takes those from index `first` on.
pub fn place_media_from(text: &str, kinds: &[MediaKind], first: usize) -> Result<String> {
    let of_kind = |kind: MediaKind| -> Vec<usize> { kinds.iter().enumerate().skip(first).filter(|(_, k)| **k == kind).map(|(i, _)| i).collect() };
    let (videos, images) = (of_kind(MediaKind::Video), of_kind(MediaKind::Image));
    let n_video_ph = text.matches(VIDEO_PLACEHOLDER).count();
    let n_image_ph = text.matches(IMAGE_PLACEHOLDER).count();
    check_text(text)?;
    if n_video_ph == 0 && n_image_ph == 0 {
        let mut out = String::new();
        for &i in images.iter().chain(&videos) {
            out.push_str(&sentinel(i));
            out.push('\n');
        }
        out.push_str(text);
        return Ok(out);
    }
    if n_video_ph != videos.len() || n_image_ph != images.len() {
        return Err(Error::Prompt(format!(
            "the prompt has {n_video_ph} {VIDEO_PLACEHOLDER} and {n_image_ph} {IMAGE_PLACEHOLDER} placeholders for {} videos and {} images",
            videos.len(),
            images.len()
        )));
    }
    let mut out = String::with_capacity(text.len());
    let (mut vi, mut ii) = (videos.iter(), images.iter());
    let mut rest = text;
    while !rest.is_empty() {
        let next_v = rest.find(VIDEO_PLACEHOLDER);
        let next_i = rest.find(IMAGE_PLACEHOLDER);
        let (at, len, index) = match (next_v, next_i) {
            (Some(v), Some(i)) if v < i => (v, VIDEO_PLACEHOLDER.len(), vi.next()),
            (Some(v), None) => (v, VIDEO_PLACEHOLDER.len(), vi.next()),
            (_, Some(i)) => (i, IMAGE_PLACEHOLDER.len(), ii.next()),
            (None, None) => {
                out.push_str(rest);
                break;
            }
        };
        out.push_str(&rest[..at]);
        out.push_str(&sentinel(*index.expect("counts were checked")));
        rest = &rest[at + len..];
    }
    Ok(out)
}

/// Renders a conversation (whose user turns were prepared with `place_media`) through the chat
/// template and splits it into token runs and media.
pub fn tokenize_with_media(tokenizer: &Tokenizer, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<Vec<Piece>> {
    let text = tokenizer.apply_chat_template(messages, add_generation_prompt)?;
    split_media(tokenizer, &text)
}

/// Tokenizes text prepared with `place_media` (special tokens parsed), splitting it at the media.
pub fn split_media(tokenizer: &Tokenizer, text: &str) -> Result<Vec<Piece>> {
    let mut pieces = Vec::new();
    let mut rest = text;
    // Only the very first text may get a BOS token (when the model asks for one).
    let tokens = |s: &str, pieces: &mut Vec<Piece>| {
        if !s.is_empty() {
            let add_bos = pieces.is_empty();
            pieces.push(Piece::Tokens(tokenizer.encode(s, add_bos, true)));
        }
    };
    while let Some(open) = rest.find(OPEN) {
        let marker_error = || Error::Prompt("the chat template altered a media marker".into());
        let close = rest[open..].find(CLOSE).map(|c| open + c).ok_or_else(marker_error)?;
        let index: usize = rest[open + OPEN.len_utf8()..close].parse().map_err(|_| marker_error())?;
        tokens(&rest[..open], &mut pieces);
        pieces.push(Piece::Media(index));
        rest = &rest[close + CLOSE.len_utf8()..];
    }
    tokens(rest, &mut pieces);
    Ok(pieces)
}

#[cfg(test)]
mod tests {
    use super::*;
    use MediaKind::*;

    fn show(s: &str) -> String {
        s.replace(OPEN, "[").replace(CLOSE, "]")
    }

    #[test]
    fn media_go_before_the_text_without_placeholders() {
        assert_eq!(show(&place_media("What happens?", &[Video]).unwrap()), "[0]\nWhat happens?");
        assert_eq!(show(&place_media("Compare.", &[Video, Image, Image]).unwrap()), "[1]\n[2]\n[0]\nCompare.");
        assert_eq!(place_media("plain", &[]).unwrap(), "plain");
    }

    #[test]
    fn placeholders_take_media_in_order_per_kind() {
        let s = place_media("A <image> then <video> and <image>.", &[Image, Video, Image]).unwrap();
        assert_eq!(show(&s), "A [0] then [1] and [2].");
        let s = place_media("<video><video>", &[Video, Image, Video]);
        assert!(s.is_err(), "an image without its placeholder");
    }

    #[test]
    fn a_later_turn_takes_only_its_own_media() {
        let s = place_media_from("And this <image>?", &[Video, Image, Image], 2).unwrap();
        assert_eq!(show(&s), "And this [2]?");
        assert_eq!(place_media_from("Text only.", &[Video], 1).unwrap(), "Text only.");
        assert!(place_media_from("<video>", &[Video], 1).is_err(), "that video belongs to an earlier turn");
    }

    #[test]
    fn too_many_placeholders_is_an_error() {
        let e = place_media("<video> and <video>", &[Video]).unwrap_err();
        assert!(e.to_string().contains("2 <video>"), "{e}");
        assert!(place_media("x\u{E000}0\u{E001}", &[]).is_err());
    }
}
