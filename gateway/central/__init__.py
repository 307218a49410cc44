"""The central side (issue 12 item 3): a reference consumer that writes many gateways into PostgreSQL.

Downstream of everything: nothing in the gateway imports this package (tests/unit/test_layers.py); it
imports only the wire formats (gateway.encode, gateway.encode_compact, gateway.replay's topic names).
"""
