"""yektaws: YektaYar's real-time gateway (Socket.IO and native WebSocket on one port)."""

__version__ = "0.1.0"
