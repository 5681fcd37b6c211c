"""The wire contract: what device and engine must agree on (report fields, names, topics, replies, limits, codecs)."""
