"""A streaming chat-completion upstream for benches/load/stream_usage.sh.

    python3 sse_upstream.py PORT CHUNKS

Answers every request with an OpenAI-style `text/event-stream` of CHUNKS
chat.completion.chunk events (about 250 bytes each, `"usage": null` in each as
OpenAI sends them when asked for usage; one write and flush per event, as an
LLM streams its tokens), a final chunk with `usage`, and
`data: [DONE]`. Only for loopback benchmarks; stops with its parent's signal.
"""

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def events(chunks: int) -> list:
    out = []
    for i in range(chunks):
        chunk = {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": 1764806400,
            "model": "gpt-4o-mini-2024-07-18",
            "system_fingerprint": "fp_bench",
            "choices": [{"index": 0, "delta": {"content": f"token{i} "}, "logprobs": None, "finish_reason": None}],
            # As OpenAI sends it when the request asked for the usage
            # (stream_options.include_usage): null in every chunk but the last.
            "usage": None,
        }
        out.append(f"data: {json.dumps(chunk)}\n\n".encode())
    usage = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [],
        "usage": {"prompt_tokens": 12, "completion_tokens": chunks, "total_tokens": 12 + chunks},
    }
    out.append(f"data: {json.dumps(usage)}\n\n".encode())
    out.append(b"data: [DONE]\n\n")
    return out


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    body = []

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for e in self.body:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(e), e))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    do_POST = do_GET

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    Handler.body = events(int(sys.argv[2]))
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
