"""Modbus drivers (TCP, RTU over serial, RTU over TCP): pure planning/decoding plus thin I/O."""
