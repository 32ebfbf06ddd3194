"""Helpers shared by the test modules: a gateway in a subprocess, tokens, Node clients."""
