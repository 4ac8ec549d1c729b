// @tus/server + @tus/file-store peer for bench/run.py.
// Usage: node tus_node_server.mjs --host 127.0.0.1 --port 8080 --data-dir DIR --modules DIR
// --modules points at the node_modules folder made by bench/setup.sh
// (bench/.peers/node/node_modules); packages are resolved from there.
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: {
    host: { type: 'string', default: '127.0.0.1' },
    port: { type: 'string' },
    'data-dir': { type: 'string' },
    modules: { type: 'string' },
  },
});
if (!values.port || !values['data-dir'] || !values.modules) {
  console.error('usage: tus_node_server.mjs --port P --data-dir D --modules NODE_MODULES');
  process.exit(2);
}

const require = createRequire(join(values.modules, 'package.json'));
const load = async (name) => import(pathToFileURL(require.resolve(name)).href);
const { Server } = await load('@tus/server');
const { FileStore } = await load('@tus/file-store');

const server = new Server({
  path: '/files',
  datastore: new FileStore({ directory: values['data-dir'] }),
});
const httpServer = server.listen({ host: values.host, port: Number(values.port) }, () => {
  console.log(`tus-node listening on ${values.host}:${values.port}`);
});
for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => { httpServer.close(); process.exit(0); });
}
