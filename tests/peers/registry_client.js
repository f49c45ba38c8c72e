'use strict';
// A real sofa-registry-node client (SOFARegistry's Node.js SDK) for sofamesh's tests, driven
// line by line: it reads JSON commands on stdin and prints one JSON line per event on stdout.
//
//   node registry_client.js --endpoint 127.0.0.1 --port 9603 [--zone Z] [--instance-id I]
//
// --endpoint/--port: the session server's HTTP address (the SDK asks GET /api/servers/query
// there for the Bolt addresses, then connects). Commands:
//   {"op": "publish", "dataId": "...", "group": "...", "data": ["127.0.0.1:12200?...", ...]}
//   {"op": "unregister", "dataId": "...", "group": "..."}
//   {"op": "subscribe", "dataId": "...", "group": "...", "scope": "zone"}
//   {"op": "unsubscribe", "dataId": "...", "group": "..."}
//   {"op": "close"}   unregister nothing, close the client politely, exit 0
//   {"op": "crash"}   exit at once, as a killed process would (the server sees the socket close)
// Events: {"event": "ready"}, {"event": "ok", "op": ...},
//   {"event": "data", "dataId": "...", "localZone": "...", "zoneData": {"ZONE": ["..."]}},
//   {"event": "error", "message": "..."}.
const http = require('http');
const querystring = require('querystring');
const readline = require('readline');
// the SDK's data client itself (its APIClient only wraps it in cluster-client for sharing one
// connection between processes); requiring the package registers its hessian class map
require('sofa-registry-node');
const DataClient = require('sofa-registry-node/lib/client');
const RegistryConfig = require('sofa-registry-node/lib/config');

const args = process.argv.slice(2);
const arg = name => { const i = args.indexOf(name); return i >= 0 ? args[i + 1] : undefined; };
const quiet = { info() {}, warn() {}, debug() {}, error() {} };
const logger = args.includes('--verbose') ? console : quiet;

const emit = obj => process.stdout.write(JSON.stringify(obj) + '\n');

// the SDK wants an urllib-like httpclient: request(url, {method, data, dataType}) -> {data}
const httpclient = {
  request(url, opts) {
    const query = querystring.stringify(Object.fromEntries(
      Object.entries(opts.data || {}).filter(([ , v ]) => v !== undefined && v !== null)));
    return new Promise((resolve, reject) => {
      const req = http.get(url + (query ? '?' + query : ''), res => {
        const chunks = [];
        res.on('data', c => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode, data: Buffer.concat(chunks).toString() }));
      });
      req.on('error', reject);
      req.setTimeout(3000, () => req.destroy(new Error('timeout')));
    });
  },
};

(async () => {
  const client = new DataClient({
    logger,
    httpclient,
    config: new RegistryConfig({
      endpoint: arg('--endpoint') || '127.0.0.1',
      port: Number(arg('--port')),
      zone: arg('--zone'),
      instanceId: arg('--instance-id'),
      appname: arg('--app') || 'sofamesh-test',
    }),
  });
  await client.ready();
  // sofa-registry-node 0.0.1's worker sends a task only on its second pass over it, and its
  // RegistryCheck replaces every unfinished task with a fresh one each recheckInterval, the
  // same period as the worker's pass: with nothing else waking the worker a task is never
  // sent. Waking it every 100 ms gives each task its second pass; the bytes are the SDK's.
  setInterval(() => client.worker.signal(), 100).unref();
  emit({ event: 'ready' });

  const rl = readline.createInterface({ input: process.stdin });
  rl.on('line', async line => {
    if (!line.trim()) return;
    let cmd;
    try {
      cmd = JSON.parse(line);
      const reg = { dataId: cmd.dataId, group: cmd.group, appname: cmd.app };
      switch (cmd.op) {
        case 'publish':
          client.register(Object.assign(reg, { data: cmd.data || [] }));
          break;
        case 'unregister':
          client.unregister(reg);
          break;
        case 'subscribe':
          client.subscribe(Object.assign(reg, { type: 'address', scope: cmd.scope || 'zone' }), value => {
            emit({ event: 'data', dataId: cmd.dataId, localZone: value.localZone, zoneData: value.zoneData });
          });
          break;
        case 'unsubscribe':
          client.unSubscribe(Object.assign(reg, { type: 'address' }));
          break;
        case 'close':
          await client.close();
          emit({ event: 'ok', op: 'close' });
          process.exit(0);
          break;
        case 'crash':
          process.exit(3);
          break;
        default:
          throw new Error('unknown op ' + cmd.op);
      }
      emit({ event: 'ok', op: cmd.op });
    } catch (e) {
      emit({ event: 'error', message: String(e && e.message || e) });
    }
  });
  rl.on('close', () => process.exit(0));
})().catch(e => {
  emit({ event: 'error', message: String(e && e.stack || e) });
  process.exit(1);
});
