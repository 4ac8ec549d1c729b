// @tus/server with a FileStore, for tests/clients/test_cli_upload.py: a tus server that is
// not ours, so the uploader is checked against someone else's reading of the protocol.
// Usage: node tus-server.mjs --port P --dir DIR
// Listens on 127.0.0.1 only; prints one line "listening <port>" once it accepts requests.
import { parseArgs } from 'node:util';
import { Server } from '@tus/server';
import { FileStore } from '@tus/file-store';

const { values } = parseArgs({
  options: { port: { type: 'string' }, dir: { type: 'string' } },
});
if (!values.port || !values.dir) {
  console.error('usage: node tus-server.mjs --port P --dir DIR');
  process.exit(2);
}

const server = new Server({ path: '/files', datastore: new FileStore({ directory: values.dir }) });
const httpServer = server.listen({ host: '127.0.0.1', port: Number(values.port) }, () => {
  console.log(`listening ${values.port}`);
});
for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => { httpServer.close(); process.exit(0); });
}
