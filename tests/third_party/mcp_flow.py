"""The official MCP Python SDK (`mcp` on PyPI) on both sides of Portcullis.

    python mcp_flow.py server
        The SDK's own MCP server (MCPServer, streamable HTTP at /mcp) on a free
        loopback port, with one tool `add`. It has no authentication of its
        own: the gateway in front of it is the OAuth resource server. Prints
        "READY <port>" once it listens; stops when its standard input closes.

    python mcp_flow.py client MCP_URL ISSUER
        The SDK's OAuth client (ClientCredentialsOAuthProvider: client
        credentials, client `app` of the test authorization server) connects to
        MCP_URL with no token, reads the gateway's 401 challenge and its RFC 9728
        protected resource metadata, discovers ISSUER's metadata, gets a token
        for the resource (RFC 8707), and calls the tool through the gateway.
        Prints "RESULT <text>" and "TOKEN_REQUESTS <n>"; exits non-zero on any
        failure.
"""

import asyncio
import sys
import threading


def serve() -> None:
    import uvicorn
    from mcp.server.mcpserver import MCPServer

    server = MCPServer("portcullis-e2e")

    @server.tool()
    def add(a: int, b: int) -> str:
        """Adds two numbers."""
        return str(a + b)

    app = server.streamable_http_app(streamable_http_path="/mcp", json_response=True)
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning")
    running = uvicorn.Server(config)

    def stop_on_stdin_close() -> None:
        sys.stdin.read()
        running.should_exit = True

    threading.Thread(target=stop_on_stdin_close, daemon=True).start()

    async def main() -> None:
        task = asyncio.create_task(running.serve())
        while not running.started:
            await asyncio.sleep(0.05)
        port = running.servers[0].sockets[0].getsockname()[1]
        print(f"READY {port}", flush=True)
        await task

    asyncio.run(main())


class MemoryStorage:
    """Token storage kept in memory (the SDK's TokenStorage protocol)."""

    def __init__(self) -> None:
        self.tokens = None
        self.client_info = None

    async def get_tokens(self):
        return self.tokens

    async def set_tokens(self, tokens) -> None:
        self.tokens = tokens

    async def get_client_info(self):
        return self.client_info

    async def set_client_info(self, client_info) -> None:
        self.client_info = client_info


async def client(mcp_url: str, issuer: str) -> None:
    import httpx2
    from mcp.client.auth.extensions.client_credentials import ClientCredentialsOAuthProvider
    from mcp.client.session import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    token_requests = 0

    async def count(request: httpx2.Request) -> None:
        nonlocal token_requests
        if request.method == "POST" and request.url.path == "/token":
            token_requests += 1

    provider = ClientCredentialsOAuthProvider(
        server_url=mcp_url,
        storage=MemoryStorage(),
        client_id="app",
        client_secret="app-secret",
        scope="mcp",
        issuer=issuer,
    )
    async with httpx2.AsyncClient(
        auth=provider, event_hooks={"request": [count]}, timeout=30
    ) as http:
        async with streamable_http_client(mcp_url, http_client=http) as streams:
            read, write = streams[0], streams[1]
            async with ClientSession(read, write) as session:
                await session.initialize()
                result = await session.call_tool("add", {"a": 2, "b": 3})
                text = "".join(
                    getattr(part, "text", "") for part in result.content
                )
                print(f"RESULT {text}", flush=True)
    print(f"TOKEN_REQUESTS {token_requests}", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        serve()
    else:
        asyncio.run(client(sys.argv[2], sys.argv[3]))
