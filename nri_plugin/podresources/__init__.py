"""kubelet's pod-resources API: what kubelet allocated to each container.

* ``resources``: the answers as frozen values (no protobuf, no I/O);
* ``devicehints``: a container's allocated devices as topology hints, as
  kubelet's device manager regenerates them (pure);
* ``ratelimit``: the token bucket kubelet limits the API with (pure);
* ``wire``: the protobuf messages (``gen/``, from ``proto/podresources.proto``)
  and their conversion to and from those values;
* ``client``: the asyncio client of kubelet's socket (cached, rate-limited,
  never waiting past a tight deadline);
* ``server``: a pod-resources-compatible socket that adds the plugin's memory
  blocks to kubelet's answers.

Nothing is imported here, so the pure modules stay free of gRPC.
"""
