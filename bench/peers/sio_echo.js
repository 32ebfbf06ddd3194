'use strict';
// Node socket.io 4 echo with the library's defaults: `echo` is answered through its ack callback.

const http = require('node:http');
const { Server } = require('socket.io');

const port = Number(process.argv[2]);
const server = http.createServer((req, res) => {
  // socket.io answers its own path before this handler runs.
  res.writeHead(req.url === '/health' ? 200 : 404).end('ok');
});
const io = new Server(server);
io.on('connection', (socket) => {
  socket.on('echo', (data, ack) => ack(data));
});
server.listen(port, '127.0.0.1');
