"""Operating a fleet: PKI, production broker config, the local broker launcher, the demo."""
