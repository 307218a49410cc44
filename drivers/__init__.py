"""Protocol drivers. They return RawSample lists and know nothing about tagging, storage or MQTT.

One package per protocol, registered through its `plugin` module (docs/architecture.md). Allowed imports
from the core: gateway.model, errors, schema_base, units and settings only (tests/unit/test_layers.py).
"""
