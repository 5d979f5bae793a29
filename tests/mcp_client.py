"""An independent MCP client for the relay's /mcp: the Python SDK (`mcp` 2.x).

Run by tests/api/mcp.rs with RELAY_URL, RELAY_SESSION and RELAY_CLIENT_ID set.
It initializes, lists the tools, calls each one, subscribes to the vault it
created, writes to that vault over REST (as another client id) and waits for
the resource update, then prints what it saw as one JSON object on stdout.
"""

import json
import os

import anyio
import httpx2
import mcp.types as types
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

WAIT_SECS = 5


async def main() -> None:
    base = os.environ["RELAY_URL"].rstrip("/")
    session = os.environ["RELAY_SESSION"]
    client_id = os.environ["RELAY_CLIENT_ID"]
    send_update, updates = anyio.create_memory_object_stream[str](100)

    async def on_message(message) -> None:
        if isinstance(message, types.ResourceUpdatedNotification):
            await send_update.send(message.params.uri)

    def text(result: types.CallToolResult) -> str:
        return "\n".join(c.text for c in result.content if isinstance(c, types.TextContent))

    report: dict = {}
    http = httpx2.AsyncClient(
        headers={"Authorization": f"Bearer {session}"},
        timeout=httpx2.Timeout(30, read=300),
    )
    async with http, streamable_http_client(f"{base}/mcp?id={client_id}", http_client=http) as (
        read_stream,
        write_stream,
    ):
        async with ClientSession(read_stream, write_stream, message_handler=on_message) as mcp:
            init = await mcp.initialize()
            report["protocol_version"] = init.protocol_version
            tools = await mcp.list_tools()
            report["tools"] = sorted(t.name for t in tools.tools)

            created = await mcp.call_tool("vault_create", {"summary": "from python"})
            vault_id = created.structured_content["vault_id"]
            report["vault_id"] = vault_id
            await mcp.subscribe_resource(f"vault://{vault_id}")

            wrote = await mcp.call_tool("vault_write", {"vault_id": vault_id, "text": "hello from python"})
            report["write"] = wrote.structured_content
            async with httpx2.AsyncClient() as rest:
                response = await rest.post(
                    f"{base}/api/vault/{vault_id}?id=rest-writer",
                    json={"text": "hello over rest"},
                    headers={"Authorization": f"session {session}"},
                )
                response.raise_for_status()
            heard = []
            with anyio.fail_after(WAIT_SECS):
                while len(heard) < 2:
                    heard.append(await updates.receive())
            report["updates"] = heard

            summary = await mcp.call_tool("vault_set_summary", {"vault_id": vault_id, "text": "renamed"})
            report["set_summary"] = summary.structured_content
            listed = await mcp.call_tool("vault_list", {})
            report["list"] = listed.structured_content
            current = await mcp.call_tool("vault_read", {"vault_id": vault_id})
            report["read"] = current.structured_content
            report["read_text"] = text(current)
            refused = await mcp.call_tool("vault_read", {"vault_id": "v-doesnotexist1"})
            report["refused"] = {"is_error": refused.is_error, "text": text(refused)}
            resource = await mcp.read_resource(f"vault://{vault_id}")
            report["resource"] = resource.contents[0].text
    print(json.dumps(report))


anyio.run(main)
