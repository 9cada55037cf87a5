"""Generated protobuf modules (hack/gen_proto.py from proto/). Do not edit."""
