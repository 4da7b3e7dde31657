// The lab's Node.js server: the image at every path, Node's own keep-alive handling.
// Run as `node node_server.js '<options JSON>'`; prints "ready" on stderr once it listens.
'use strict';
const fs = require('fs');
const http = require('http');
const https = require('https');
const http2 = require('http2');

const opts = JSON.parse(process.argv[2]);
const image = fs.readFileSync(opts.image);
const headers = {'content-type': 'image/png', 'cache-control': 'no-store', 'content-length': image.length};

function handler(req, res) {
  req.resume();
  req.on('end', () => {
    res.writeHead(200, headers);
    res.end(image);
  });
}

function create() {
  if (opts.tls) {
    const tls = {
      cert: fs.readFileSync(opts.tls.cert), key: fs.readFileSync(opts.tls.key),
      minVersion: opts.tls.version, maxVersion: opts.tls.version,
    };
    if (opts.http2) return http2.createSecureServer({...tls, allowHTTP1: true}, handler);
    return https.createServer({...tls, ALPNProtocols: ['http/1.1']}, handler);
  }
  if (opts.http2) return http2.createServer(handler);
  return http.createServer(handler);
}

let waiting = opts.listen.length;
for (const host of opts.listen) {
  const server = create();
  // HTTP/1.1 (also the fallback of the HTTP/2 server over TLS): Node's keep-alive timer.
  server.keepAliveTimeout = opts.keepAliveTimeout;
  // HTTP/2 sessions: idle for this long, Node closes them (GOAWAY, then the socket).
  if (opts.http2) server.setTimeout(opts.sessionTimeout);
  server.on('error', (err) => {
    console.error(`cannot listen: ${err.message}`);
    process.exit(2);
  });
  server.listen({host, port: opts.port, ipv6Only: host.includes(':')}, () => {
    waiting -= 1;
    if (waiting === 0) console.error('ready');
  });
}
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => process.exit(0));
