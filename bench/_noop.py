"""A no-op ForwarderService on grpc.aio: the ceiling our server's figures are compared with.

It parses each request (as any server must) and answers at once, with no validation, no
store and no auth. Run as ``python bench/_noop.py PORT_FILE``.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
from elido.forwarder.v1 import forwarder_pb2 as pb
from elido.forwarder.v1 import forwarder_pb2_grpc as pb_grpc


class NoopForwarder(pb_grpc.ForwarderServiceServicer):
    async def ForwardClick(
        self, request: pb.ForwardClickRequest, context: Any
    ) -> pb.ForwardClickResponse:
        return pb.ForwardClickResponse(disposition=pb.CLICK_DISPOSITION_QUEUED)

    async def StreamClicks(
        self, request_iterator: AsyncIterator[pb.StreamClicksRequest], context: Any
    ) -> AsyncIterator[pb.StreamClicksResponse]:
        async for request in request_iterator:
            yield pb.StreamClicksResponse(batch_id=request.batch_id)


async def main(port_file: Path) -> None:
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 8 * 1024 * 1024)])
    pb_grpc.add_ForwarderServiceServicer_to_server(NoopForwarder(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    port_file.write_text(str(port))  # noqa: ASYNC240 - once, before serving; nothing to block
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1])))
