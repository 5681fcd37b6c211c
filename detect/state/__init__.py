"""The engine's state: the store (SQL only) and its schema migrations."""
