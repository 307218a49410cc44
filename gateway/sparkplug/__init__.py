"""Sparkplug B 3.0 output (issue 12 item 1): payload bindings, the pure payload/topic helpers and a
decoder written from the specification. The encoder is gateway/encode_sparkplug.py, the session
(primary host STATE, rebirth, delivery fences) gateway/transport_sparkplug.py; docs/sparkplug.md.

`sparkplug_b_pb2.py` is generated from `sparkplug_b.proto` (`make sparkplug-proto`) and committed, so
running the gateway needs only the `protobuf` runtime, not the compiler.
"""
