// The JS client against a scripted node (node --test): what a real node does rarely.
// The same client against real nodes, killed and restarted, in Node and in Chromium:
// tests/test_client.py in the repository.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { WebSocketServer } from 'ws';
import { WalletClient } from '../timefast-client.js';

// A server answering from script(connectionNumber, message) -> messages to send
// (replies and pushed events alike; 'CLOSE' closes the connection).
async function scriptedNode(script) {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  await new Promise((r) => wss.on('listening', r));
  const node = { received: [], connections: 0, url: `ws://127.0.0.1:${wss.address().port}`,
                 close: () => new Promise((r) => { for (const c of wss.clients) c.terminate(); wss.close(r); }) };
  wss.on('connection', (ws) => {
    const n = ++node.connections;
    ws.on('message', (text) => {
      const msg = JSON.parse(text);
      node.received.push([n, msg]);
      for (const out of script(n, msg)) {
        if (out === 'CLOSE') { ws.close(); return; }
        ws.send(JSON.stringify(out));
      }
    });
  });
  return node;
}

const reply = (msg, type, data) => ({ type, id: msg.id, data });
const hello = (msg, seq) => reply(msg, 'Hello', { protocol: '1.0', network: 'regtest',
  node: 'aa'.repeat(32), height: 0, seq, limits: {} });
const utxo = (txid, amount, state = 'Unspent') => ({ txid, vout: 0, amount, state,
  spending_txid: null, votes: 0, block_height: null });
const change = (seq, txid, amount, state, prev, transaction = null) => ({
  type: 'UtxoStateChange', data: { outpoint: { txid, vout: 0 }, address: 'addr', amount, state,
    prev_state: prev, spending_txid: null, votes: 0, quorum: 1, block_height: null, transaction, seq } });

async function take(client, n) {
  const out = [];
  const timer = setTimeout(() => client.close(), 20000);
  for await (const ev of client) {
    if (ev.type !== 'Connected' && ev.type !== 'Disconnected') out.push(ev);
    if (out.length === n) break;
  }
  clearTimeout(timer);
  return out;
}

test('pages a snapshot with GetUtxos after, and takes abbreviated transactions', { timeout: 30000 }, async () => {
  const page1 = [utxo('c'.repeat(64), 500), utxo('b'.repeat(64), 300)];
  const page2 = [utxo('a'.repeat(64), 200)];
  const node = await scriptedNode((n, msg) => {
    switch (msg.type) {
      case 'Hello': return [hello(msg, 10)];
      case 'Subscribe': return [reply(msg, 'Subscribed', { addresses: ['addr'], seq: 10,
        snapshot: { addr: { balance: 1000, utxos: page1, more: true, utxo_count: 3 } } })];
      case 'GetUtxos':
        if (msg.data.after === `${'b'.repeat(64)}:0`) {
          return [reply(msg, 'Utxos', { addr: { balance: 1000, utxos: page2 }, seq: 11 })];
        }
        return [reply(msg, 'Utxos', { addr: { balance: 1000, utxos: page1, more: true, utxo_count: 3 }, seq: 11 })];
      case 'Ping': return [reply(msg, 'Pong'),
        change(11, 'd'.repeat(64), 50, 'Unspent', null, { txid: 'd'.repeat(64), size: 9000 })];
      default: return [];
    }
  });
  const c = new WalletClient(node.url, ['addr'], { queue: true });
  try {
    const [snap, ch] = await take(c, 2);
    assert.equal(snap.type, 'Snapshot');
    assert.deepEqual(snap.balances, { addr: 1000 });
    assert.equal(ch.type, 'UtxoStateChange');
    assert.deepEqual(ch.transaction, { txid: 'd'.repeat(64), size: 9000 });
    assert.equal(c.balance('addr'), 1050);
    assert.equal(c.seq, 11);
    const all = await c.utxos(['addr']);
    assert.deepEqual(all.addr.utxos.map((u) => u.txid[0]), ['c', 'b', 'a']);
  } finally {
    await c.close();
    await node.close();
  }
});

test('drops a repeated event, and snapshots after lagging in a replay', { timeout: 30000 }, async () => {
  const node = await scriptedNode((n, msg) => {
    const t = msg.type;
    if (t === 'Hello') return [hello(msg, 30)];
    if (n === 1 && t === 'Subscribe') {
      return [reply(msg, 'Subscribed', { addresses: ['addr'], seq: 20, snapshot: { addr: { balance: 0, utxos: [] } } })];
    }
    if (n === 1 && t === 'Ping') {
      return [reply(msg, 'Pong'), change(21, 'e'.repeat(64), 70, 'Unspent', null),
              change(21, 'e'.repeat(64), 70, 'Unspent', null), 'CLOSE'];
    }
    if (n === 2 && t === 'Subscribe') return [{ type: 'Lagged', data: { resume_from: 21 } }, 'CLOSE'];
    if (t === 'Subscribe') {
      return [reply(msg, 'Subscribed', { addresses: ['addr'], seq: 40,
        snapshot: { addr: { balance: 90, utxos: [utxo('f'.repeat(64), 90)] } } })];
    }
    if (t === 'Ping') return [reply(msg, 'Pong'), change(41, 'f'.repeat(64), 90, 'Locked', 'Unspent')];
    return [];
  });
  const c = new WalletClient(node.url, ['addr'], { queue: true, backoffInitial: 20 });
  try {
    const evs = await take(c, 4);
    assert.deepEqual(evs.map((e) => e.type), ['Snapshot', 'UtxoStateChange', 'Resynced', 'UtxoStateChange']);
    assert.deepEqual(evs.map((e) => e.seq), [20, 21, 40, 41]);
    assert.equal(evs[2].reason, 'lagged in the replay');
    assert.deepEqual(evs[2].balances, { addr: 90 });
    const subs = node.received.filter(([, m]) => m.type === 'Subscribe').map(([, m]) => m.data);
    assert.deepEqual(subs[1], { addresses: ['addr'], since_seq: 21, snapshot: false });
    assert.equal(subs[2].since_seq, undefined);
    assert.equal(c.balance('addr'), 0);
  } finally {
    await c.close();
    await node.close();
  }
});

test('an Error reply rejects the request with its code', { timeout: 30000 }, async () => {
  const node = await scriptedNode((n, msg) => {
    if (msg.type === 'Hello') return [hello(msg, 1)];
    if (msg.type === 'Subscribe') return [reply(msg, 'Subscribed', { addresses: ['addr'], seq: 1, snapshot: { addr: { balance: 0, utxos: [] } } })];
    if (msg.type === 'Ping') return [reply(msg, 'Pong')];
    if (msg.type === 'SubmitTransaction') return [reply(msg, 'Error', { code: 'TX_INVALID', message: 'no inputs' })];
    return [];
  });
  const c = new WalletClient(node.url, ['addr']);
  try {
    await c.start();
    await assert.rejects(c.submit({ txid: 'x' }), (e) => e.code === 'TX_INVALID');
  } finally {
    await c.close();
    await node.close();
  }
});

test('a refused Subscribe ends the client with its error instead of retrying forever', { timeout: 30000 }, async () => {
  const node = await scriptedNode((n, msg) => {
    if (msg.type === 'Hello') return [hello(msg, 1)];
    if (msg.type === 'Subscribe') return [reply(msg, 'Error', { code: 'INVALID_ADDRESS', message: 'bad' })];
    if (msg.type === 'Ping') return [reply(msg, 'Pong')];
    return [];
  });
  const c = new WalletClient(node.url, ['bad-address'], { backoffInitial: 20 });
  try {
    await assert.rejects(c.start(), (e) => e.code === 'INVALID_ADDRESS');
    await assert.rejects(c[Symbol.asyncIterator]().next(), (e) => e.code === 'INVALID_ADDRESS');
    assert.equal(node.connections, 1);
  } finally {
    await c.close();
    await node.close();
  }
});

// The history walk after a failover: node A's cursor means nothing to node B (its
// own storage order), so the walk starts again from B's top and skips what A gave.
test('historyAll starts again from the top on another node and gives each transaction once', { timeout: 30000 }, async () => {
  const entry = (txid) => ({ txid, status: 'finalized', block_height: null, timestamp: 1, received: 5, sent: 0 });
  const page = (msg, txs, next) => reply(msg, 'History', { address: 'addr', balance: 15, tx_count: 3, txs: txs.map(entry), next });
  const a = await scriptedNode((n, msg) => {
    if (msg.type === 'Hello') return [hello(msg, 1)];
    if (msg.type === 'GetHistory' && msg.data.before === undefined) return [page(msg, ['t3', 't2'], 5)];
    return ['CLOSE'];  // gone before the second page
  });
  const b = await scriptedNode((n, msg) => {
    if (msg.type === 'Hello') return [reply(hello(msg, 1), 'Hello', { ...hello(msg, 1).data, node: 'bb'.repeat(32) })];
    if (msg.type !== 'GetHistory') return [];
    if (msg.data.before === 5) return [page(msg, ['t9'], null)];  // A's cursor: B's t9
    if (msg.data.before === undefined) return [page(msg, ['t2', 't3'], 7)];
    return [page(msg, ['t1'], null)];
  });
  const c = new WalletClient([a.url, b.url], [], { backoffInitial: 20 });
  try {
    const got = [];
    for await (const tx of c.historyAll('addr', { pageSize: 2 })) got.push(tx.txid);
    assert.deepEqual(got, ['t3', 't2', 't1']);
    assert.deepEqual(b.received.filter(([, m]) => m.type === 'GetHistory').map(([, m]) => m.data),
      [{ address: 'addr', limit: 2, before: 5 }, { address: 'addr', limit: 2 }, { address: 'addr', limit: 2, before: 7 }]);
  } finally {
    await c.close();
    await a.close();
    await b.close();
  }
});
