"""The official OpenAI Python SDK (`openai` on PyPI) as a client of the gateway.

    python ai_sdks.py BASE_URL TOKEN

BASE_URL is the gateway's OpenAI-compatible base (e.g. http://127.0.0.1:8080/v1),
TOKEN the bearer token the gateway checks (the SDK sends it as its API key).
Runs three calls and prints one line each:

    PLAIN <text>              a non-streamed chat completion
    STREAM <n> <text>         a streamed one: n chunks, then their text joined
    BROKEN <ExceptionType>    a stream the upstream breaks off mid-way (model
                              "demo-breaks-mid-stream"): the SDK must raise, never
                              hand back a truncated answer as complete

Exits non-zero if any call does not behave so.
"""

import sys

import openai


def main(base_url: str, token: str) -> int:
    client = openai.OpenAI(base_url=base_url, api_key=token, max_retries=0, timeout=30)
    messages = [{"role": "user", "content": "hi"}]

    plain = client.chat.completions.create(model="demo", messages=messages)
    print(f"PLAIN {plain.choices[0].message.content}", flush=True)

    chunks = []
    for chunk in client.chat.completions.create(model="demo", messages=messages, stream=True):
        if chunk.choices and chunk.choices[0].delta.content:
            chunks.append(chunk.choices[0].delta.content)
    print(f"STREAM {len(chunks)} {''.join(chunks)}", flush=True)

    received = []
    try:
        for chunk in client.chat.completions.create(
            model="demo-breaks-mid-stream", messages=messages, stream=True
        ):
            if chunk.choices and chunk.choices[0].delta.content:
                received.append(chunk.choices[0].delta.content)
    except Exception as error:  # the SDK's own error type is what the test reports
        print(f"BROKEN {type(error).__name__} after {len(received)} chunks", flush=True)
        return 0
    print(f"TRUNCATED {len(received)} chunks ended as if complete", flush=True)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
