//! Token usage read from AI providers' responses as they stream through,
//! without holding the stream back: the model that answered and the input and
//! output tokens it counted, in each provider's dialect.
//!
//! - **OpenAI** (OpenAI, Azure, Mistral, compatible servers): `model` and
//!   `usage.prompt_tokens` / `completion_tokens` (or the Responses API's
//!   `input_tokens` / `output_tokens`) of a JSON answer; in a stream, the last
//!   chunk's `usage` (sent when the request asks `stream_options.include_usage`).
//! - **Anthropic** Messages: `usage.input_tokens` / `output_tokens`; in a stream,
//!   `message_start` (input, model) and `message_delta` (output so far).
//! - **Gemini**: `usageMetadata.promptTokenCount` / `candidatesTokenCount` and
//!   `modelVersion`; in a stream, the last chunk's.
//!
//! A JSON answer is kept as the frames it arrived in (reference-counted, not
//! copied) up to [`MAX_JSON_BYTES`] and read at its end; an event stream is read
//! line by line, and only `data:` lines that mention `usage` (or, until the
//! model is known, `model`) are parsed. Nothing here can fail a response: what
//! cannot be read is simply not counted.

use bytes::Bytes;
use portcullis_config::UsageDialect;
use std::borrow::Cow;

use serde::Deserialize;

/// Largest JSON answer read for its usage; larger ones are not counted.
pub const MAX_JSON_BYTES: usize = 4 << 20;

/// Longest event-stream line kept across frames; longer lines are skipped.
const MAX_LINE_BYTES: usize = 256 << 10;

/// What a response said of its token usage.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    /// The model that answered.
    pub model: Option<String>,
    /// Input (prompt) tokens.
    pub input_tokens: Option<u64>,
    /// Output (completion) tokens.
    pub output_tokens: Option<u64>,
}

impl Usage {
    /// Input and output tokens together (what a token budget is charged);
    /// `None` when neither was reported.
    pub fn total_tokens(&self) -> Option<u64> {
        match (self.input_tokens, self.output_tokens) {
            (None, None) => None,
            (i, o) => Some(i.unwrap_or(0).saturating_add(o.unwrap_or(0))),
        }
    }

    /// Whether anything was found.
    pub fn is_empty(&self) -> bool {
        self.model.is_none() && self.input_tokens.is_none() && self.output_tokens.is_none()
    }

    /// Takes what `doc` (an answer, a stream chunk or event) says, in `dialect`.
    fn read(&mut self, dialect: UsageDialect, doc: &Doc<'_>) {
        match dialect {
            UsageDialect::OpenAi => {
                if self.model.is_none() {
                    self.model = model_name(doc.model.as_deref());
                }
                if let Some(u) = &doc.usage {
                    self.input_tokens = u.prompt_tokens.or(u.input_tokens).or(self.input_tokens);
                    self.output_tokens = u
                        .completion_tokens
                        .or(u.output_tokens)
                        .or(self.output_tokens);
                }
                // The Responses API streams a `response.completed` event whose
                // `response` holds the model and usage.
                if let Some(r) = &doc.response {
                    self.read(dialect, r);
                }
            }
            UsageDialect::Anthropic => {
                // `message_start` carries the message; a plain answer is one.
                let message = doc.message.as_deref().unwrap_or(doc);
                if self.model.is_none() {
                    self.model = model_name(message.model.as_deref());
                }
                if let Some(u) = message.usage.as_ref().or(doc.usage.as_ref()) {
                    self.input_tokens = u.input_tokens.or(self.input_tokens);
                    self.output_tokens = u.output_tokens.or(self.output_tokens);
                }
            }
            UsageDialect::Gemini => {
                if let Some(m) = model_name(doc.model_version.as_deref()) {
                    self.model = Some(m);
                }
                if let Some(u) = &doc.usage_metadata {
                    self.input_tokens = u.prompt_token_count.or(self.input_tokens);
                    self.output_tokens = u.candidates_token_count.or(self.output_tokens);
                }
            }
        }
    }
}

/// The members of an answer, chunk or event that carry a model or usage, in
/// every dialect; everything else is skipped unread (no allocation for it).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Doc<'a> {
    #[serde(borrow)]
    model: Option<Cow<'a, str>>,
    #[serde(rename = "modelVersion", borrow)]
    model_version: Option<Cow<'a, str>>,
    usage: Option<Counts>,
    #[serde(rename = "usageMetadata")]
    usage_metadata: Option<GeminiCounts>,
    /// Anthropic's `message_start`.
    #[serde(borrow)]
    message: Option<Box<Doc<'a>>>,
    /// OpenAI Responses API's `response.completed`.
    #[serde(borrow)]
    response: Option<Box<Doc<'a>>>,
}

/// OpenAI's and Anthropic's usage object.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Counts {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
}

/// Gemini's `usageMetadata`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct GeminiCounts {
    prompt_token_count: Option<u64>,
    candidates_token_count: Option<u64>,
}

/// A model name worth a log field: not empty, at most 256 bytes.
fn model_name(name: Option<&str>) -> Option<String> {
    name.filter(|s| !s.is_empty() && s.len() <= 256)
        .map(str::to_owned)
}

/// Usage of a complete JSON answer.
pub fn from_json(dialect: UsageDialect, body: &[u8]) -> Usage {
    let mut usage = Usage::default();
    if let Ok(v) = serde_json::from_slice::<Doc<'_>>(body) {
        usage.read(dialect, &v);
    }
    usage
}

/// Reads a response's usage as its frames pass.
pub enum UsageReader {
    /// A JSON answer: its frames, kept until the end.
    Json {
        /// The dialect.
        dialect: UsageDialect,
        /// The frames so far.
        frames: Vec<Bytes>,
        /// Their total size.
        bytes: usize,
    },
    /// An event stream, read line by line.
    Events(EventReader),
}

impl UsageReader {
    /// A reader for a response of `content_type`, `None` when it carries no
    /// usage (neither JSON nor an event stream).
    pub fn for_response(dialect: UsageDialect, content_type: Option<&str>) -> Option<Self> {
        let media = content_type?.split(';').next()?.trim().to_ascii_lowercase();
        match media.as_str() {
            "application/json" => Some(UsageReader::Json {
                dialect,
                frames: Vec::new(),
                bytes: 0,
            }),
            "text/event-stream" => Some(UsageReader::Events(EventReader::new(dialect))),
            _ => None,
        }
    }

    /// Whether this is an event stream.
    pub fn is_stream(&self) -> bool {
        matches!(self, UsageReader::Events(_))
    }

    /// Sees one data frame.
    pub fn feed(&mut self, data: &Bytes) {
        match self {
            UsageReader::Json { frames, bytes, .. } => {
                if *bytes <= MAX_JSON_BYTES {
                    *bytes += data.len();
                    frames.push(data.clone());
                }
            }
            UsageReader::Events(reader) => reader.feed(data),
        }
    }

    /// What was found, at the response's end.
    pub fn finish(self) -> Usage {
        match self {
            UsageReader::Json {
                dialect,
                frames,
                bytes,
            } => {
                if bytes > MAX_JSON_BYTES {
                    return Usage::default();
                }
                if frames.len() == 1 {
                    return from_json(dialect, &frames[0]);
                }
                from_json(dialect, &frames.concat())
            }
            UsageReader::Events(reader) => reader.finish(),
        }
    }
}

/// An event stream's usage, read line by line.
///
/// Cheap per event: an OpenAI or Gemini stream's frames are not searched at
/// all. Those dialects report the usage in their last data event (OpenAI's
/// final chunk; Gemini's cumulative counts), so the reader keeps a handle on
/// the last frame with data (no copy) and reads it at the end, and on the
/// first for the model in case the last does not name it. Anthropic reports
/// input and output at two events, so each of its frames is searched for a
/// usage object once the model is known.
pub struct EventReader {
    dialect: UsageDialect,
    /// The start of a line split across frames.
    partial: Vec<u8>,
    /// Whether the current line is too long to keep (skipped to its end).
    skipping: bool,
    usage: Usage,
    /// OpenAI and Gemini: the last frame seen on the fast path that has more
    /// than `data: [DONE]`, whose complete lines are read at the end.
    last: Option<Bytes>,
    /// OpenAI and Gemini: the first such frame while the model is unknown,
    /// read at the end for the model if the last one does not name it.
    first: Option<Bytes>,
}

impl EventReader {
    /// A reader for `dialect`.
    pub fn new(dialect: UsageDialect) -> Self {
        EventReader {
            dialect,
            partial: Vec::new(),
            skipping: false,
            usage: Usage::default(),
            last: None,
            first: None,
        }
    }

    /// What was found, once the stream has ended.
    pub fn finish(mut self) -> Usage {
        if let Some(frame) = self.last.take() {
            // Its complete lines (a line it ended inside of was read with the
            // frames after it).
            for line in complete_lines(&frame) {
                self.line(line);
            }
        }
        if let (None, Some(frame)) = (&self.usage.model, self.first.take()) {
            // Only the model: the counts of an earlier event are older.
            for line in complete_lines(&frame) {
                let Some(payload) = line.strip_prefix(b"data:") else {
                    continue;
                };
                if MODEL.find(payload).is_none() {
                    continue;
                }
                let mut scratch = Usage::default();
                if let Ok(doc) = serde_json::from_slice::<Doc<'_>>(payload) {
                    scratch.read(self.dialect, &doc);
                }
                if scratch.model.is_some() {
                    self.usage.model = scratch.model;
                    break;
                }
            }
        }
        self.usage
    }

    /// Sees one frame of the stream.
    pub fn feed(&mut self, data: &Bytes) {
        if self.skipping || !self.partial.is_empty() {
            // First the line an earlier frame ended inside of.
            if let Some(rest) = self.complete_partial(data) {
                self.feed_at_line(&rest);
            }
            return;
        }
        self.feed_at_line(data);
    }

    /// Completes the line an earlier frame ended inside of with the start of
    /// `data` (reading it); what follows it, if anything.
    #[cold]
    fn complete_partial(&mut self, data: &Bytes) -> Option<Bytes> {
        let Some(end) = memchr::memchr(b'\n', data) else {
            self.keep_partial(data);
            return None;
        };
        if self.skipping {
            self.skipping = false;
        } else {
            // Join, read, and keep the buffer's capacity for the next one.
            self.partial.extend_from_slice(&data[..end]);
            let whole = std::mem::take(&mut self.partial);
            self.line(&whole);
            self.partial = whole;
            self.partial.clear();
        }
        (end + 1 < data.len()).then(|| data.slice(end + 1..))
    }

    /// A frame, or the rest of one, that starts at a line.
    #[inline]
    fn feed_at_line(&mut self, data: &Bytes) {
        // A frame that starts at a line. OpenAI and Gemini: keep a handle on
        // it for the end, nothing searched. Anthropic: once the model is
        // known, only a frame with a usage object (an OpenAI-style
        // `"usage":null` is not one) is read line by line.
        let fast = match self.dialect {
            UsageDialect::OpenAi | UsageDialect::Gemini => {
                if has_data(data) {
                    if self.first.is_none() && self.usage.model.is_none() {
                        self.first = Some(data.clone());
                    }
                    self.last = Some(data.clone());
                }
                true
            }
            UsageDialect::Anthropic => self.usage.model.is_some() && !has_usage_object(data),
        };
        if fast {
            // Most frames end with their event: nothing to carry over.
            if data.last() != Some(&b'\n') {
                let tail = match memchr::memrchr(b'\n', data) {
                    Some(end) => &data[end + 1..],
                    None => &data[..],
                };
                self.keep_partial(tail);
            }
            return;
        }
        let mut rest: &[u8] = data;
        while let Some(end) = memchr::memchr(b'\n', rest) {
            let (line, after) = rest.split_at(end);
            rest = &after[1..];
            self.line(line);
        }
        self.keep_partial(rest);
    }

    /// Keeps the start of a line the frame ends inside of (a line too long
    /// to keep is skipped to its end instead).
    fn keep_partial(&mut self, rest: &[u8]) {
        if !rest.is_empty() && !self.skipping {
            if self.partial.len() + rest.len() > MAX_LINE_BYTES {
                self.partial.clear();
                self.skipping = true;
            } else {
                self.partial.extend_from_slice(rest);
            }
        }
    }

    /// What was found so far.
    pub fn usage(&self) -> &Usage {
        &self.usage
    }

    fn line(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(payload) = line.strip_prefix(b"data:") else {
            return;
        };
        let wanted = has_usage_object(payload)
            || (self.usage.model.is_none() && MODEL.find(payload).is_some());
        if !wanted {
            return;
        }
        if let Ok(v) = serde_json::from_slice::<Doc<'_>>(payload) {
            self.usage.read(self.dialect, &v);
            // Read now, it comes after the frame kept for the end.
            if v.usage.is_some() || v.usage_metadata.is_some() {
                self.last = None;
            }
        }
    }
}

/// The lines of `frame` that end in it (without their `\n`).
fn complete_lines(frame: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = frame;
    std::iter::from_fn(move || {
        let end = memchr::memchr(b'\n', rest)?;
        let (line, after) = rest.split_at(end);
        rest = &after[1..];
        Some(line)
    })
}

/// Whether a frame that starts at a line has data worth keeping for the end:
/// a `data:` line first (after blank lines), and not only OpenAI's closing
/// `data: [DONE]` (nor a comment or a blank line alone).
fn has_data(frame: &[u8]) -> bool {
    // The common frame: one event, longer than the closing line.
    if frame.len() > 24 && frame.starts_with(b"data:") {
        return true;
    }
    let start = frame
        .iter()
        .position(|b| !matches!(b, b'\n' | b'\r'))
        .unwrap_or(frame.len());
    let frame = &frame[start..];
    frame.starts_with(b"data:") && !(frame.len() <= 24 && frame.trim_ascii() == b"data: [DONE]")
}

/// Whether `text` has a member named `usage…` (`usage`, Gemini's
/// `usageMetadata`) whose value is an object: `"usage":null`, which OpenAI
/// puts in every chunk of a stream that asked for its usage, is not.
fn has_usage_object(text: &[u8]) -> bool {
    // `usage` without its quote: JSON is full of quotes, and a search that
    // verifies a candidate at each one costs several times more.
    for at in USAGE.find_iter(text) {
        if at == 0 || text[at - 1] != b'"' {
            continue;
        }
        // The rest of the key, its closing quote, then `:` and `{`.
        let after = &text[at + 5..];
        let Some(quote) = memchr::memchr(b'"', after) else {
            return false;
        };
        let mut value = after[quote + 1..]
            .iter()
            .copied()
            .filter(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n'));
        if value.next() == Some(b':') && value.next() == Some(b'{') {
            return true;
        }
    }
    false
}

/// The words that make a stream's line worth parsing (`"usage` also finds
/// Gemini's `"usageMetadata`).
static USAGE: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"usage"));
static MODEL: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\"model"));

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(dialect: UsageDialect, text: &str, chunk: usize) -> Usage {
        let mut r = EventReader::new(dialect);
        for piece in text.as_bytes().chunks(chunk) {
            r.feed(&Bytes::copy_from_slice(piece));
        }
        r.finish()
    }

    fn usage(model: &str, input: u64, output: u64) -> Usage {
        Usage {
            model: Some(model.to_owned()),
            input_tokens: Some(input),
            output_tokens: Some(output),
        }
    }

    #[test]
    fn a_usage_member_counts_only_when_it_is_an_object() {
        assert!(has_usage_object(br#"{"usage":{"prompt_tokens":1}}"#));
        assert!(has_usage_object(br#"{"usage" : { "a":1}}"#));
        assert!(has_usage_object(
            br#"{"usageMetadata":{"promptTokenCount":1}}"#
        ));
        assert!(!has_usage_object(br#"{"usage":null,"x":1}"#));
        assert!(!has_usage_object(br#"{"content":"the usage"}"#));
        assert!(has_usage_object(
            br#"{"usage":null,"then":{"usage":{"a":1}}}"#
        ));
        assert!(!has_usage_object(br#"{"usage"#));
    }

    #[test]
    fn a_stream_with_usage_null_in_every_chunk_is_read_at_its_last() {
        let mut text = String::new();
        text.push_str("data: {\"model\":\"gpt-4o\",\"choices\":[],\"usage\":null}\n\n");
        for i in 0..50 {
            text.push_str(&format!(
                "data: {{\"model\":\"gpt-4o\",\"choices\":[{{\"delta\":{{\"content\":\"t{i}\"}}}}],\"usage\":null}}\n\n"
            ));
        }
        text.push_str("data: {\"model\":\"gpt-4o\",\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":50}}\n\ndata: [DONE]\n\n");
        for chunk in [1, 7, 64, 300, text.len()] {
            assert_eq!(
                stream(UsageDialect::OpenAi, &text, chunk),
                usage("gpt-4o", 7, 50),
                "frames of {chunk} bytes"
            );
        }
    }

    #[test]
    fn any_split_of_a_stream_into_frames_reads_the_same_usage() {
        let mut openai =
            String::from("data: {\"model\":\"gpt-4o\",\"choices\":[],\"usage\":null}\n\n");
        for i in 0..30 {
            openai.push_str(&format!(
                "data: {{\"model\":\"gpt-4o\",\"choices\":[{{\"delta\":{{\"content\":\"w{i} \"}}}}],\"usage\":null}}\n\n"
            ));
        }
        openai.push_str("data: {\"model\":\"gpt-4o\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":30}}\n\ndata: [DONE]\n\n");
        let anthropic = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-x\",\"usage\":{\"input_tokens\":11,\"output_tokens\":1}}}\n\nevent: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"hi\"}}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":22}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
        let gemini = "data: {\"modelVersion\":\"g-2\",\"usageMetadata\":{\"promptTokenCount\":3,\"candidatesTokenCount\":2}}\r\n\r\ndata: {\"usageMetadata\":{\"promptTokenCount\":3,\"candidatesTokenCount\":7}}\r\n\r\n";
        let cases = [
            (
                UsageDialect::OpenAi,
                openai.as_str(),
                usage("gpt-4o", 9, 30),
            ),
            (
                UsageDialect::Anthropic,
                anthropic,
                usage("claude-x", 11, 22),
            ),
            (UsageDialect::Gemini, gemini, usage("g-2", 3, 7)),
        ];
        // A fixed pseudo-random sequence of cut points (xorshift).
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        for (dialect, text, expected) in cases {
            for _ in 0..300 {
                let mut r = EventReader::new(dialect);
                let bytes = text.as_bytes();
                let mut at = 0;
                while at < bytes.len() {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let len = 1 + (seed % 120) as usize;
                    let end = (at + len).min(bytes.len());
                    r.feed(&Bytes::copy_from_slice(&bytes[at..end]));
                    at = end;
                }
                assert_eq!(r.finish(), expected, "{dialect:?}");
            }
        }
    }

    #[test]
    fn a_usage_chunk_in_a_frame_that_ends_inside_the_next_line_is_read() {
        let mut r = EventReader::new(UsageDialect::OpenAi);
        for frame in [
            "data: {\"model\":\"m\",\"choices\":[{}],\"usage\":null}\n\n",
            "data: {\"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":6}}\n\ndata: [DO",
            "NE]\n\n",
        ] {
            r.feed(&Bytes::from(frame));
        }
        assert_eq!(r.finish(), usage("m", 5, 6));
    }

    #[test]
    fn the_model_comes_from_the_first_event_when_the_last_does_not_name_it() {
        let text = "data: {\"model\":\"m-1\",\"choices\":[]}\n\ndata: {\"choices\":[]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":3}}\n\ndata: [DONE]\n\n";
        for chunk in [1, 5, 16, 40, text.len()] {
            assert_eq!(
                stream(UsageDialect::OpenAi, text, chunk),
                usage("m-1", 2, 3),
                "{chunk}"
            );
        }
        // Gemini: cumulative counts; the first event's are older, only its
        // model is taken.
        let gemini = "data: {\"usageMetadata\":{\"promptTokenCount\":4,\"candidatesTokenCount\":1},\"modelVersion\":\"g-1\"}\n\ndata: {\"usageMetadata\":{\"promptTokenCount\":4,\"candidatesTokenCount\":9}}\n\n";
        for chunk in [3, 50, gemini.len()] {
            assert_eq!(
                stream(UsageDialect::Gemini, gemini, chunk),
                usage("g-1", 4, 9),
                "{chunk}"
            );
        }
    }

    #[test]
    fn json_answers_of_each_dialect() {
        let openai = br#"{"id":"x","model":"gpt-4o-2024","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":34,"total_tokens":46}}"#;
        assert_eq!(
            from_json(UsageDialect::OpenAi, openai),
            usage("gpt-4o-2024", 12, 34)
        );
        let responses = br#"{"model":"gpt-5","usage":{"input_tokens":3,"output_tokens":4}}"#;
        assert_eq!(
            from_json(UsageDialect::OpenAi, responses),
            usage("gpt-5", 3, 4)
        );
        let anthropic = br#"{"type":"message","model":"claude-haiku","content":[],"usage":{"input_tokens":7,"output_tokens":9}}"#;
        assert_eq!(
            from_json(UsageDialect::Anthropic, anthropic),
            usage("claude-haiku", 7, 9)
        );
        let gemini = br#"{"candidates":[],"usageMetadata":{"promptTokenCount":5,"candidatesTokenCount":6,"totalTokenCount":11},"modelVersion":"gemini-2.0-flash"}"#;
        assert_eq!(
            from_json(UsageDialect::Gemini, gemini),
            usage("gemini-2.0-flash", 5, 6)
        );
        // Nothing readable: nothing counted, no panic.
        for bad in [
            &b"not json"[..],
            b"{}",
            b"[]",
            br#"{"usage":"many"}"#,
            br#"{"usage":{"prompt_tokens":-1}}"#,
        ] {
            let u = from_json(UsageDialect::OpenAi, bad);
            assert_eq!((u.input_tokens, u.output_tokens), (None, None));
        }
    }

    #[test]
    fn streams_of_each_dialect_in_any_split() {
        let openai = "data: {\"model\":\"gpt-4o\",\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n\
            data: {\"model\":\"gpt-4o\",\"choices\":[],\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":2}}\n\n\
            data: [DONE]\n\n";
        let anthropic = "event: message_start\r\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-sonnet\",\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\r\n\r\n\
            event: content_block_delta\r\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"Hello\"}}\r\n\r\n\
            event: message_delta\r\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":15}}\r\n\r\n";
        let gemini = "data: {\"candidates\":[],\"usageMetadata\":{\"promptTokenCount\":4,\"candidatesTokenCount\":1},\"modelVersion\":\"gemini-2.0-flash\"}\n\n\
            data: {\"candidates\":[],\"usageMetadata\":{\"promptTokenCount\":4,\"candidatesTokenCount\":8},\"modelVersion\":\"gemini-2.0-flash\"}\n\n";
        for chunk in [1, 3, 7, 64, 10_000] {
            assert_eq!(
                stream(UsageDialect::OpenAi, openai, chunk),
                usage("gpt-4o", 10, 2),
                "{chunk}"
            );
            assert_eq!(
                stream(UsageDialect::Anthropic, anthropic, chunk),
                usage("claude-sonnet", 25, 15),
                "{chunk}"
            );
            assert_eq!(
                stream(UsageDialect::Gemini, gemini, chunk),
                usage("gemini-2.0-flash", 4, 8),
                "{chunk}"
            );
        }
    }

    #[test]
    fn malformed_streams_count_what_they_can() {
        // No usage at all (the client did not ask for it): the model only.
        let u = stream(
            UsageDialect::OpenAi,
            "data: {\"model\":\"m\",\"choices\":[]}\n\ndata: [DONE]\n\n",
            5,
        );
        assert_eq!((u.model.as_deref(), u.input_tokens), (Some("m"), None));
        // Broken JSON, a huge line, garbage bytes: no panic, later lines still read.
        let huge = format!(
            "data: {{\"usage\":\"{}\"}}\n",
            "x".repeat(MAX_LINE_BYTES + 10)
        );
        let text = format!(
            "data: {{\"usage\": {{\n{huge}\u{1}\u{2}\n\ndata: {{\"model\":\"m\",\"usage\":{{\"prompt_tokens\":1,\"completion_tokens\":2}}}}\n\n"
        );
        for chunk in [1, 100, 1 << 20] {
            assert_eq!(
                stream(UsageDialect::OpenAi, &text, chunk),
                usage("m", 1, 2),
                "{chunk}"
            );
        }
    }

    #[test]
    fn readers_follow_the_content_type() {
        let d = UsageDialect::OpenAi;
        assert!(UsageReader::for_response(d, Some("application/json; charset=utf-8")).is_some());
        assert!(
            UsageReader::for_response(d, Some("text/event-stream")).is_some_and(|r| r.is_stream())
        );
        assert!(UsageReader::for_response(d, Some("text/html")).is_none());
        assert!(UsageReader::for_response(d, None).is_none());
        let mut r = UsageReader::for_response(d, Some("application/json")).unwrap();
        for piece in br#"{"model":"m","usage":{"prompt_tokens":1,"completion_tokens":2}}"#.chunks(5)
        {
            r.feed(&Bytes::copy_from_slice(piece));
        }
        assert_eq!(r.finish(), usage("m", 1, 2));
    }
}
