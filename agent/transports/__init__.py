"""Transports that carry reports off the device."""
