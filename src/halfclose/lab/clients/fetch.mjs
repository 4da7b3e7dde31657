// The lab's Node.js client: the built-in fetch (undici), requests separated by idle gaps.
// Usage: node fetch.mjs URL REQUESTS GAP_S
// One JSON line per request on stdout (the fields of halfclose's RequestRecord it can tell);
// undici's diagnostics channel tells which socket carried each request.
import dc from 'node:diagnostics_channel';
import { setTimeout as sleep } from 'node:timers/promises';

const [url, requests, gapS] = [process.argv[2], Number(process.argv[3]), Number(process.argv[4])];
const used = new WeakSet();
let current = null;
dc.subscribe('undici:client:sendHeaders', (message) => { current = message.socket; });

const nowNs = () => BigInt(Math.round((performance.timeOrigin + performance.now()) * 1000)) * 1000n;

function describe(error) {
  let text = `${error.name}: ${error.message}`;
  for (let cause = error.cause; cause; cause = cause.cause) {
    text += ` (${cause.code ? cause.code + ': ' : ''}${cause.message})`;
  }
  return text;
}

for (let index = 0; index < requests; index++) {
  if (index) await sleep(gapS * 1000);
  current = null;
  const start = nowNs();
  const t0 = performance.now();
  const out = { index, start_ns: 0, latency_ns: 0, status: 0, body_bytes: 0, error: '', local_port: 0,
                reused: false, http_version: '', keep_alive: '' };
  try {
    const response = await fetch(`${url}?n=${index}`, { cache: 'no-store' });
    const body = await response.arrayBuffer();
    out.status = response.status;
    out.body_bytes = body.byteLength;
    out.http_version = '1.1';  // Node's fetch speaks HTTP/1.1 only
    out.keep_alive = response.headers.get('keep-alive') || '';
  } catch (error) {
    out.error = describe(error);
  }
  if (current) {
    out.local_port = current.localPort || 0;
    out.reused = used.has(current);
    used.add(current);
  }
  out.start_ns = Number(start);
  out.latency_ns = Math.round((performance.now() - t0) * 1e6);
  process.stdout.write(JSON.stringify(out) + '\n');
}
