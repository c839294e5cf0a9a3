"""The official OpenAI Python SDK (`openai` on PyPI) on a route chosen by model.

    python model_routing.py BASE_URL TOKEN

Prints one line per call:

    ALIAS <model>             a chat completion asking for the alias "fast": the
                              model the upstream answered as (after model_map)
    STREAM <model> <usage>    the same, streamed: the answering model and whether
                              the last chunk carried usage (the gateway asked
                              for it: stream_usage)
    REFUSED <status> <type>   a model no route serves: the SDK's error
    FALLBACK <model>          the alias "smart", whose first upstreams are down
                              or overloaded: answered by the last one

Exits non-zero if a call does not behave so.
"""

import sys

import openai


def main(base_url: str, token: str) -> int:
    client = openai.OpenAI(base_url=base_url, api_key=token, max_retries=0, timeout=30)
    messages = [{"role": "user", "content": "hi"}]

    plain = client.chat.completions.create(model="fast", messages=messages)
    print(f"ALIAS {plain.model}", flush=True)

    usage = None
    model = None
    for chunk in client.chat.completions.create(model="fast", messages=messages, stream=True):
        model = chunk.model
        if chunk.usage is not None:
            usage = chunk.usage.completion_tokens
    print(f"STREAM {model} {usage}", flush=True)

    try:
        client.chat.completions.create(model="gpt-4o ", messages=messages)
        print("REFUSED none", flush=True)
        return 1
    except openai.APIStatusError as e:
        print(f"REFUSED {e.status_code} {type(e).__name__}", flush=True)

    fallback = client.chat.completions.create(model="smart", messages=messages)
    print(f"FALLBACK {fallback.model}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
