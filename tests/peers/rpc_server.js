'use strict';
// A real sofa-rpc-node RPC server (Bolt by default, Dubbo with --dubbo) for sofamesh's tests.
// Bound to 127.0.0.1, or --host ADDR (sofa-rpc-node listens on all interfaces: net.Server.listen
// is wrapped). Prints {"port": N} on stdout once listening. Service com.nodejs.test.TestService:
//   plus(a, b)  echo(s)  slow(ms) -> "slept"  fail(msg) throws  who() -> this server's tag
//   props() -> the call's request props as JSON (Dubbo: its attachments, as received)
const net = require('net');
const hostIdx = process.argv.indexOf('--host');
const host = hostIdx >= 0 ? process.argv[hostIdx + 1] : '127.0.0.1';
const origListen = net.Server.prototype.listen;
net.Server.prototype.listen = function (port, ...rest) {
  if (typeof port === 'number') {
    const cb = rest.find(x => typeof x === 'function');
    return origListen.call(this, port, host, cb);
  }
  return origListen.call(this, port, ...rest);
};
const { RpcServer } = require('sofa-rpc-node').server;

const args = process.argv.slice(2);
const dubbo = args.includes('--dubbo');
const tagIdx = args.indexOf('--tag');
const tag = tagIdx >= 0 ? args[tagIdx + 1] : 'server';
const logger = { info() {}, warn() {}, debug() {}, error: (...a) => console.error(...a) };
const opts = { logger, port: 0 };
if (dubbo) opts.protocol = require('dubbo-remoting');
const server = new RpcServer(opts);
server.createContext = req => ({ req });  // the service methods' `this`: props() reads it
server.addService({ interfaceName: 'com.nodejs.test.TestService' }, {
  async plus(a, b) { return a + b; },
  async echo(s) { return s; },
  async slow(ms) { await new Promise(r => setTimeout(r, ms)); return 'slept'; },
  async fail(msg) { throw new Error(msg); },
  async who() { return tag; },
  async props() { return JSON.stringify(this.req.data.requestProps || null); },
});
server.on('error', err => console.error(err));
server.start().then(() => {
  const check = () => {
    const s = server._servers && server._servers[0];
    const addr = s && s.address && s.address();
    if (addr && addr.port) {
      process.stdout.write(JSON.stringify({ port: addr.port }) + '\n');
    } else {
      setTimeout(check, 10);
    }
  };
  check();
});
process.on('SIGTERM', () => process.exit(0));
