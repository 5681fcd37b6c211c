"""Garrison device agent: Device Defender reports from the kernel's view, published over MQTT."""

__version__ = "0.1.0"
