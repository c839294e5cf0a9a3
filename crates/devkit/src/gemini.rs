//! The demo upstream's Gemini API: `POST /v1beta/models/{model}:generateContent`
//! and `:streamGenerateContent` (server-sent events with `?alt=sse`), with
//! usage as Gemini reports it (`usageMetadata.promptTokenCount` /
//! `candidatesTokenCount`, cumulative in each streamed chunk) and the model in
//! `modelVersion`. Tokens are counted as words, as the other demo endpoints do.

use std::time::Duration;

use serde_json::{Value, json};

use crate::serve::{DevBody, json_response};
use crate::upstream::sse_then;

/// Answers `path` (`/v1beta/models/{model}:{method}`) for the JSON `request`;
/// `None` when the path is not a Gemini generation call.
pub fn generate(path: &str, request: &Value) -> Option<hyper::Response<DevBody>> {
    let call = path.strip_prefix("/v1beta/models/")?;
    let (model, method) = call.split_once(':')?;
    let streamed = match method {
        "generateContent" => false,
        "streamGenerateContent" => true,
        _ => return None,
    };
    let prompt = request
        .pointer("/contents/0/parts/0/text")
        .and_then(Value::as_str)
        .unwrap_or("");
    let reply = format!("Hello from the Portcullis demo upstream! You said: {prompt}");
    let prompt_tokens = prompt.split_whitespace().count().max(1);
    let chunk = |text: &str, output: usize, last: bool| {
        let mut c = json!({
            "candidates": [{"content": {"role": "model", "parts": [{"text": text}]}, "index": 0}],
            "usageMetadata": {
                "promptTokenCount": prompt_tokens,
                "candidatesTokenCount": output,
                "totalTokenCount": prompt_tokens + output,
            },
            "modelVersion": model,
        });
        if last {
            c["candidates"][0]["finishReason"] = json!("STOP");
        }
        c
    };
    if !streamed {
        return Some(json_response(
            200,
            &chunk(&reply, reply.split_whitespace().count(), true),
        ));
    }
    let words: Vec<&str> = reply.split_inclusive(' ').collect();
    let events = words
        .iter()
        .enumerate()
        .map(|(i, word)| {
            let data = chunk(word, i + 1, i + 1 == words.len());
            format!("data: {data}\r\n\r\n")
        })
        .collect();
    Some(sse_then(events, Duration::from_millis(30), false, false))
}
