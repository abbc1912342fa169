// Node: node node_runner.mjs URLS ADDRESSES (comma-separated); runs until killed.
// Request lines on stdin: see harness.mjs.
import readline from 'node:readline';
import { WalletClient } from '../../clients/js/timefast-client.js';
import { answer, run } from './harness.mjs';

const print = (line) => process.stdout.write(line + '\n');
const client = run(WalletClient, process.argv[2].split(','), process.argv[3].split(','), print);
for await (const line of readline.createInterface({ input: process.stdin })) {
  answer(client, line, print).catch((e) => { console.error(e); process.exit(1); });
}
