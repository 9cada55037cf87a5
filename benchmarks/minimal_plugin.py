"""The smallest useful NRI plugin on our transport: it only sets ``cpuset.mems``.

The yardstick for the end-to-end benchmark: the same Stub, Connection and
codecs as nri-memory-manager, but no policy, no state, no checkpoint and no
logs per container, so the difference to it is what our memory manager
itself costs. Every container of a Guaranteed pod gets ``--mems``.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from nri_plugin.frontends.nri_convert import pod_qos
from nri_plugin.nri import Stub, api


class MemsOnly:
    def __init__(self, mems: str) -> None:
        self.mems = mems

    def create_container(
        self, pod: api.PodSandbox, container: api.Container
    ) -> api.ContainerAdjustment | None:
        if pod_qos(pod, container) != "Guaranteed":
            return None
        adjust = api.ContainerAdjustment()
        adjust.linux.resources.cpu.mems = self.mems
        return adjust


async def serve(args: argparse.Namespace) -> None:
    stub = Stub(
        MemsOnly(args.mems), plugin_name=args.name, plugin_idx=args.index, socket_path=args.socket
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stub.stop)
    await stub.run()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--socket", default="/var/run/nri/nri.sock")
    parser.add_argument("--name", default="mems-only")
    parser.add_argument("--index", default="91")
    parser.add_argument("--mems", default="0")
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
