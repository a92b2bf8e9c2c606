//! Chat templates: the GGUF's `tokenizer.chat_template` (Jinja, rendered with minijinja and its
//! Python-compatibility methods), or ChatML when the file has none or it does not compile.

use minijinja::{context, Environment, Error as JinjaError, ErrorKind};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::gguf::names::tokenizer as keys;
use crate::gguf::GgufFile;

/// One turn of a conversation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: &str, content: impl Into<String>) -> ChatMessage {
        ChatMessage { role: role.to_string(), content: content.into() }
    }
    pub fn system(content: impl Into<String>) -> ChatMessage {
        ChatMessage::new("system", content)
    }
    pub fn user(content: impl Into<String>) -> ChatMessage {
        ChatMessage::new("user", content)
    }
    pub fn assistant(content: impl Into<String>) -> ChatMessage {
        ChatMessage::new("assistant", content)
    }
}

pub enum ChatTemplate {
    Jinja { env: Box<Environment<'static>> },
    ChatMl { reason: String },
}

const NAME: &str = "chat";

fn raise_exception(message: String) -> std::result::Result<String, JinjaError> {
    Err(JinjaError::new(ErrorKind::InvalidOperation, message))
}

fn strftime_now(format: String) -> String {
    // Templates use it for "today's date" in system prompts; UTC is good enough.
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = secs / 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format.replace("%Y", &format!("{y:04}")).replace("%m", &format!("{m:02}")).replace("%d", &format!("{d:02}"))
}

/// Instructions a template may execute per rendering.
pub const TEMPLATE_FUEL: u64 = 10_000_000;

impl ChatTemplate {
    /// The template of a GGUF file (ChatML when it has none, or when it does not compile; the
    /// reason is kept for a warning).
    pub fn from_gguf(file: &GgufFile) -> Result<ChatTemplate> {
        match file.get_str(keys::CHAT_TEMPLATE)? {
            None => Ok(ChatTemplate::ChatMl { reason: "the model file has no chat template".into() }),
            Some(src) => Ok(ChatTemplate::from_source(src)),
        }
    }

    pub fn from_source(src: &str) -> ChatTemplate {
        let mut env = Environment::new();
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        // A template comes from a model file, which may be hostile: bound its work (a real chat
        // template spends a few dozen instructions per message) so that it cannot hang.
        env.set_fuel(Some(TEMPLATE_FUEL));
        match env.add_template_owned(NAME, src.to_string()) {
            Ok(()) => ChatTemplate::Jinja { env: Box::new(env) },
            Err(e) => ChatTemplate::ChatMl { reason: format!("the model's chat template does not compile ({e})") },
        }
    }

    /// Why ChatML is used instead of the model's template, if it is.
    pub fn fallback_reason(&self) -> Option<&str> {
        match self {
            ChatTemplate::Jinja { .. } => None,
            ChatTemplate::ChatMl { reason } => Some(reason),
        }
    }

    /// The prompt text for a conversation; with `add_generation_prompt`, ready for the assistant's
    /// answer.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool, bos: &str, eos: &str) -> Result<String> {
        match self {
            ChatTemplate::ChatMl { .. } => Ok(chatml(messages, add_generation_prompt)),
            ChatTemplate::Jinja { env } => {
                let t = env.get_template(NAME).map_err(|e| Error::Template(e.to_string()))?;
                t.render(context! {
                    messages => messages,
                    add_generation_prompt => add_generation_prompt,
                    bos_token => bos,
                    eos_token => eos,
                })
                .map_err(|e| Error::Template(format!("rendering failed: {e}")))
            }
        }
    }
}

/// `<|im_start|>role\ncontent<|im_end|>\n` per turn.
pub fn chatml(messages: &[ChatMessage], add_generation_prompt: bool) -> String {
    let mut out = String::new();
    for m in messages {
        out.push_str(&format!("<|im_start|>{}\n{}<|im_end|>\n", m.role, m.content));
    }
    if add_generation_prompt {
        out.push_str("<|im_start|>assistant\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const QWEN_LIKE: &str = "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}{%- else %}{{- '<|im_start|>system\\nDefault.<|im_end|>\\n' }}{%- endif %}{%- for message in messages %}{%- if (message.role == 'user') or (message.role == 'system' and not loop.first) or (message.role == 'assistant' and not message.tool_calls) %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}{%- endif %}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}";

    #[test]
    fn renders_a_qwen_style_template() {
        let t = ChatTemplate::from_source(QWEN_LIKE);
        assert!(t.fallback_reason().is_none());
        let out = t.render(&[ChatMessage::user("Hi")], true, "", "").unwrap();
        assert_eq!(out, "<|im_start|>system\nDefault.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
        let out = t.render(&[ChatMessage::system("S"), ChatMessage::user("Q"), ChatMessage::assistant("A")], false, "", "").unwrap();
        assert_eq!(out, "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\nA<|im_end|>\n");
    }

    #[test]
    fn a_template_that_would_run_for_ever_is_stopped() {
        let t = ChatTemplate::from_source("{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}");
        let e = t.render(&[ChatMessage::user("hi")], true, "", "").unwrap_err();
        assert!(e.to_string().contains("fuel"), "{e}");
    }

    #[test]
    fn python_methods_and_exceptions() {
        let t = ChatTemplate::from_source("{{ messages[0].content.strip().upper() }}{% if messages|length > 1 %}{{ raise_exception('one message only') }}{% endif %}");
        assert_eq!(t.render(&[ChatMessage::user("  hi ")], false, "", "").unwrap(), "HI");
        let err = t.render(&[ChatMessage::user("a"), ChatMessage::user("b")], false, "", "").unwrap_err();
        assert!(err.to_string().contains("one message only"), "{err}");
    }

    #[test]
    fn broken_templates_fall_back_to_chatml() {
        let t = ChatTemplate::from_source("{% for x in %}");
        assert!(t.fallback_reason().unwrap().contains("does not compile"));
        assert_eq!(t.render(&[ChatMessage::user("Q")], true, "", "").unwrap(), "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n");
    }

    #[test]
    fn date_helper_formats() {
        let s = strftime_now("%Y-%m-%d".into());
        assert_eq!(s.len(), 10);
        assert!(s.starts_with("20"));
    }
}
