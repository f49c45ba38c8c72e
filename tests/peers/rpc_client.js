'use strict';
// A real sofa-rpc-node RPC client for sofamesh's tests: Bolt v1 (default), Bolt v2 with CRC
// (--bolt2-crc), or Dubbo (--dubbo, dubbo-remoting). Runs the calls given as JSON
// (--calls '[{"method": "plus", "args": [1, 2], "timeout": 3000}, ...]') concurrently
// and prints one JSON line: [{"ok": true, "result": ...} | {"ok": false, "error": "..."}].
// --props '{"k": "v"}': request props sent with every call (Dubbo: attachments).
const bolt = require('sofa-bolt-node');
const { RpcClient } = require('sofa-rpc-node').client;

const args = process.argv.slice(2);
const arg = name => { const i = args.indexOf(name); return i >= 0 ? args[i + 1] : undefined; };
const target = arg('--target');
const calls = JSON.parse(arg('--calls') || '[]');
const repeat = Number(arg('--repeat') || 1);
const props = arg('--props') ? JSON.parse(arg('--props')) : undefined;
const logger = { info() {}, warn() {}, debug() {}, error() {} };

let protocol = bolt;
if (args.includes('--dubbo')) {
  protocol = require('dubbo-remoting');
} else if (args.includes('--bolt2-crc')) {
  protocol = Object.assign({}, bolt, {
    encoder(options) {
      const e = bolt.encoder(options);
      e.boltVersion = 2;
      e.crcEnable = true;
      return e;
    },
  });
}

(async () => {
  const client = new RpcClient({ logger, protocol });
  const consumer = client.createConsumer({
    interfaceName: 'com.nodejs.test.TestService', serverHost: target,
  });
  await consumer.ready();
  const out = [];
  for (let r = 0; r < repeat; r++) {
    const results = await Promise.all(calls.map(async c => {
      try {
        const result = await consumer.invoke(c.method, c.args || [], { responseTimeout: c.timeout || 3000, requestProps: props });
        return { ok: true, result };
      } catch (e) {
        return { ok: false, error: String(e && e.message || e), name: e && e.name };
      }
    }));
    out.push(...results);
  }
  // exit only once the (possibly large) line is flushed to the pipe
  process.stdout.write(JSON.stringify(out) + '\n', () => process.exit(0));
})().catch(e => { process.stdout.write(JSON.stringify({ fatal: String(e && e.stack || e) }) + '\n'); process.exit(2); });
