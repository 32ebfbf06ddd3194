'use strict';
// Node `ws` 8 echo: parses each frame as JSON (as any real server must) and sends it back as-is.
// Runs under Node (`node ws_echo.js PORT`). Health at GET /health.

const http = require('node:http');
const { WebSocketServer } = require('ws');

const port = Number(process.argv[2]);
const server = http.createServer((req, res) => {
  res.writeHead(req.url === '/health' ? 200 : 404).end('ok');
});
const wss = new WebSocketServer({ server, path: '/ws', perMessageDeflate: false });
wss.on('connection', (ws) => {
  ws.on('message', (data, isBinary) => {
    JSON.parse(data);
    ws.send(data, { binary: isBinary });
  });
});
server.listen(port, '127.0.0.1');
