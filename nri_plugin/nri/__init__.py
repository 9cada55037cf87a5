"""NRI transport: our own ttrpc and connection multiplexer, and the plugin stub.

Layers, bottom up: ``mux`` (frames, sans-I/O), ``ttrpc`` (messages and
events, sans-I/O), ``connection`` (asyncio driver), ``stub`` (handler object
→ NRI plugin). Protobuf messages are in ``nri_plugin.nri.gen.nri_pb2``.
Nothing here imports the rest of nri_plugin except ``nri_plugin.errors``.
"""

from nri_plugin.nri.connection import ConnectionClosedError, RpcError
from nri_plugin.nri.gen import nri_pb2 as api
from nri_plugin.nri.mux import ProtocolError
from nri_plugin.nri.stub import Stub, event_mask
from nri_plugin.nri.ttrpc import Code

__all__ = [
    "Code",
    "ConnectionClosedError",
    "ProtocolError",
    "RpcError",
    "Stub",
    "api",
    "event_mask",
]
