"""Protocol drivers. They return RawSample lists and know nothing about tagging, storage or MQTT.

Allowed imports from the core: gateway.model and gateway.errors only (checked by a test).
"""
