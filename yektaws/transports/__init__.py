"""The two transports: native RFC 6455 WebSocket, and Socket.IO (python-socketio)."""
