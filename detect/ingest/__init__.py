"""The front door: MQTT (or NATS) in, decode, validate, throttle, reply."""
