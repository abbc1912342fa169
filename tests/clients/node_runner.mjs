// Node: node node_runner.mjs URLS ADDRESSES (comma-separated); runs until killed.
import { WalletClient } from '../../clients/js/timefast-client.js';
import { run } from './harness.mjs';

run(WalletClient, process.argv[2].split(','), process.argv[3].split(','),
    (line) => process.stdout.write(line + '\n'))
  .catch((e) => { console.error(e); process.exit(1); });
