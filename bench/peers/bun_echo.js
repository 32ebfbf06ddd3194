// Bun's built-in WebSocket server (Bun.serve): parses each frame as JSON and sends it back as-is.
// Runs under Bun (`bun bun_echo.js PORT`). Health at GET /health.

const port = Number(process.argv[2]);
Bun.serve({
  hostname: '127.0.0.1',
  port,
  fetch(req, server) {
    const { pathname } = new URL(req.url);
    if (pathname === '/health') return new Response('ok');
    if (pathname === '/ws' && server.upgrade(req)) return undefined;
    return new Response('not found', { status: 404 });
  },
  websocket: {
    perMessageDeflate: false,
    message(ws, message) {
      JSON.parse(message);
      ws.send(message);
    },
  },
});
