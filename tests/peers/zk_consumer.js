'use strict';
// A Dubbo consumer that finds its providers in ZooKeeper only, as sofa-rpc-node's
// ZookeeperRegistry does with Dubbo's layout (/dubbo/<interface>/providers), calling over
// dubbo-remoting: --zk HOST:PORT, --interface NAME, --calls '[{"method": "who"}, ...]'.
// Prints one JSON line: [{"ok": true, "result": ...} | {"ok": false, "error": "..."}].
const { RpcClient } = require('sofa-rpc-node').client;
const { ZookeeperRegistry } = require('sofa-rpc-node').registry;

const args = process.argv.slice(2);
const arg = name => { const i = args.indexOf(name); return i >= 0 ? args[i + 1] : undefined; };
const logger = { info() {}, warn() {}, debug() {}, error() {} };

(async () => {
  const registry = new ZookeeperRegistry({ logger, address: arg('--zk') + '/dubbo' });
  const client = new RpcClient({ logger, registry, protocol: require('dubbo-remoting') });
  const consumer = client.createConsumer({ interfaceName: arg('--interface') });
  await consumer.ready();
  const out = [];
  for (const c of JSON.parse(arg('--calls'))) {
    try {
      out.push({ ok: true, result: await consumer.invoke(c.method, c.args || [], { responseTimeout: 3000 }) });
    } catch (e) {
      out.push({ ok: false, error: String(e && e.message || e) });
    }
  }
  process.stdout.write(JSON.stringify(out) + '\n', () => process.exit(0));
})().catch(e => { process.stdout.write(JSON.stringify({ fatal: String(e && e.stack || e) }) + '\n'); process.exit(2); });
setTimeout(() => { process.stdout.write(JSON.stringify({ fatal: 'timeout' }) + '\n'); process.exit(3); }, 15000);
