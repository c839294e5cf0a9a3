"""The official Anthropic Python SDK (`anthropic` on PyPI) as a client of the gateway.

    python anthropic_sdk.py BASE_URL TOKEN

BASE_URL is where the gateway serves Anthropic's API (the SDK appends /v1/messages),
TOKEN the bearer token the gateway checks (sent as `auth_token`: Authorization: Bearer;
the gateway swaps it for the provider key). Prints one line per call:

    PLAIN <input> <output> <text>     a message, with the usage the SDK read
    STREAM <input> <output> <text>    a streamed one, via the SDK's stream helper
    BROKEN <ExceptionType>            a stream the upstream breaks off: the SDK raises

Exits non-zero if any call does not behave so.
"""

import sys

import anthropic


def main(base_url: str, token: str) -> int:
    client = anthropic.Anthropic(
        base_url=base_url, auth_token=token, api_key=None, max_retries=0, timeout=30
    )
    messages = [{"role": "user", "content": "hi"}]

    message = client.messages.create(model="claude-demo", max_tokens=64, messages=messages)
    text = "".join(block.text for block in message.content if block.type == "text")
    print(f"PLAIN {message.usage.input_tokens} {message.usage.output_tokens} {text}", flush=True)

    with client.messages.stream(model="claude-demo", max_tokens=64, messages=messages) as stream:
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    print(f"STREAM {final.usage.input_tokens} {final.usage.output_tokens} {streamed}", flush=True)

    try:
        with client.messages.stream(
            model="claude-breaks-mid-stream", max_tokens=64, messages=messages
        ) as stream:
            "".join(stream.text_stream)
            stream.get_final_message()
    except Exception as error:  # the SDK's own error type is what the test reports
        print(f"BROKEN {type(error).__name__}", flush=True)
        return 0
    print("TRUNCATED a broken stream ended as if complete", flush=True)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
