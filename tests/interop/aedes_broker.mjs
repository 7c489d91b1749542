// Aedes (npm) on loopback for the interoperability tests: a plain and a TLS listener.
//
//   node aedes_broker.mjs --aedes .tools/node_modules/aedes/aedes.js --port P
//        [--tls-port Q --cert server.crt --key server.key]
//
// Aedes's default persistence (aedes-persistence, in memory) keeps sessions,
// subscriptions and QoS 1 messages of offline clients while this process runs;
// nothing survives a restart. Prints "aedes ready" once both listeners are up,
// closes them on SIGTERM/SIGINT and exits 0.
import fs from 'node:fs'
import net from 'node:net'
import tls from 'node:tls'
import { pathToFileURL } from 'node:url'
import { parseArgs } from 'node:util'

const { values: opts } = parseArgs({
  options: {
    aedes: { type: 'string' },
    host: { type: 'string', default: '127.0.0.1' },
    port: { type: 'string' },
    'tls-port': { type: 'string' },
    cert: { type: 'string' },
    key: { type: 'string' }
  }
})
if (!opts.aedes || !opts.port) {
  console.error('usage: aedes_broker.mjs --aedes PATH/aedes.js --port P [--tls-port Q --cert F --key F]')
  process.exit(2)
}

const { Aedes } = await import(pathToFileURL(opts.aedes).href)
const broker = await Aedes.createBroker()
broker.on('clientError', (client, err) => console.log('client error', client.id, err.message))
broker.on('connectionError', (client, err) => console.log('connection error', client.id, err.message))

function listen (server, port) {
  return new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen(Number(port), opts.host, resolve)
  })
}

const servers = [net.createServer(broker.handle)]
try {
  await listen(servers[0], opts.port)
  if (opts['tls-port']) {
    const secure = tls.createServer(
      { cert: fs.readFileSync(opts.cert), key: fs.readFileSync(opts.key) },
      broker.handle
    )
    servers.push(secure)
    await listen(secure, opts['tls-port'])
  }
} catch (err) {
  console.error(`aedes: cannot listen: ${err.code || ''} ${err.message}`)
  process.exit(1)
}
console.log(`aedes ready on ${opts.host}:${opts.port}` + (opts['tls-port'] ? ` (TLS ${opts['tls-port']})` : ''))

function stop () {
  for (const s of servers) s.close()
  broker.close(() => process.exit(0))
}
process.on('SIGTERM', stop)
process.on('SIGINT', stop)
