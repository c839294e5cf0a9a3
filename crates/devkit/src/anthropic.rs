//! The demo upstream's Anthropic Messages API (`POST /v1/messages`), streamed
//! and not, with usage as Anthropic reports it: `usage.input_tokens` /
//! `output_tokens` in a message, and in a stream `message_start` (input) and
//! `message_delta` (output). Tokens are counted as words, as the OpenAI
//! endpoint does; a model named `…breaks-mid-stream` breaks its stream off
//! after a few events.

use std::time::Duration;

use serde_json::{Value, json};

use crate::serve::DevBody;
use crate::serve::json_response;
use crate::upstream::sse_then;

/// Answers a Messages request whose body is `request`.
pub fn messages(request: &Value) -> hyper::Response<DevBody> {
    let model = request
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("claude-demo")
        .to_owned();
    let prompt = request
        .pointer("/messages/0/content")
        .and_then(|c| match c {
            Value::String(s) => Some(s.clone()),
            // Content blocks: the text of the first one.
            Value::Array(blocks) => blocks
                .first()
                .and_then(|b| b.get("text"))
                .and_then(Value::as_str)
                .map(str::to_owned),
            _ => None,
        })
        .unwrap_or_default();
    let reply = format!("Hello from the Portcullis demo upstream! You said: {prompt}");
    let input_tokens = prompt.split_whitespace().count().max(1);
    let output_tokens = reply.split_whitespace().count();
    if request.get("stream").and_then(Value::as_bool) != Some(true) {
        return json_response(
            200,
            &json!({
                "id": "msg_demo", "type": "message", "role": "assistant", "model": model,
                "content": [{"type": "text", "text": reply}],
                "stop_reason": "end_turn", "stop_sequence": null,
                "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
            }),
        );
    }
    let event = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
    let mut events = vec![
        event(
            "message_start",
            json!({"type": "message_start", "message": {
                "id": "msg_demo", "type": "message", "role": "assistant", "model": model,
                "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": input_tokens, "output_tokens": 1},
            }}),
        ),
        event(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0,
                   "content_block": {"type": "text", "text": ""}}),
        ),
    ];
    for word in reply.split_inclusive(' ') {
        events.push(event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0,
                   "delta": {"type": "text_delta", "text": word}}),
        ));
    }
    if model.contains("breaks-mid-stream") {
        events.truncate(5);
        return sse_then(events, Duration::from_millis(30), false, true);
    }
    events.push(event(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    ));
    events.push(event(
        "message_delta",
        json!({"type": "message_delta",
               "delta": {"stop_reason": "end_turn", "stop_sequence": null},
               "usage": {"output_tokens": output_tokens}}),
    ));
    events.push(event("message_stop", json!({"type": "message_stop"})));
    sse_then(events, Duration::from_millis(30), false, false)
}
