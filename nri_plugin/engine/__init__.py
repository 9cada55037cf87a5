"""The pure engine: kubelet's static memory policy and topology manager over one state.

No I/O, no asyncio, no transport (enforced by tests/test_architecture.py): every
front end (the NRI plugin, the CRI proxy, ``simulate``) feeds it plain values.
"""
