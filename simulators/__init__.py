"""Meter simulators for tests, demos and commissioning (Modbus TCP and RTU, OPC UA)."""
