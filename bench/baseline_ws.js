// Baseline: the wallet protocol on Node's `ws` (what many JavaScript nodes use).
// A Map index address -> Set of sockets, one send per message per connection.
//     node bench/baseline_ws.js WS_PORT RPC_PORT      (127.0.0.1 only)
const http = require('http');
const { WebSocketServer } = require(process.env.WS_MODULE || 'ws');

const subs = new Map();
const all = new Set();
let height = 0;
let seq = 0;

// The listen queue every server here gets (Node's default is 511): with 10,000
// wallets connecting at once a shorter one measures SYN retransmits, not `ws`.
const wsHttp = http.createServer();
wsHttp.listen(Number(process.argv[2]), '127.0.0.1', 4096);
const wss = new WebSocketServer({ server: wsHttp, perMessageDeflate: false });
wss.on('connection', (ws) => {
  all.add(ws);
  const mine = [];
  ws.on('message', (raw) => {
    const msg = JSON.parse(raw);
    if (msg.type === 'Subscribe') {
      for (const a of msg.data.addresses) {
        if (!subs.has(a)) subs.set(a, new Set());
        subs.get(a).add(ws);
        mine.push(a);
      }
      ws.send(JSON.stringify({ type: 'Subscribed', data: { addresses: msg.data.addresses, seq } }));
    } else if (msg.type === 'Ping') {
      ws.send('{"type":"Pong"}');
    }
  });
  ws.on('close', () => { all.delete(ws); for (const a of mine) subs.get(a)?.delete(ws); });
});

function generate() {
  height += 1;
  const h = height.toString(16).padStart(64, '0');
  const text = JSON.stringify({ type: 'NewBlock', data: { height, hash: h, prev_hash: h,
    timestamp: Math.floor(Date.now() / 1000), tx_count: 0, seq: ++seq } });
  for (const ws of all) ws.send(text);
  return h;
}

function faucet(address, amount) {
  const txid = amount.toString(16).padStart(64, '0');
  const tx = { txid, version: 1, inputs: [{ previous_output: { txid, vout: 0 }, public_key: txid,
    signature: txid + txid, sequence: 4294967295 }], outputs: [{ amount, address }],
    lock_time: 0, timestamp: Math.floor(Date.now() / 1000) };
  const targets = subs.get(address) || new Set();
  const msgs = [
    { type: 'TransactionPending', data: { tx, seq: ++seq } },
    { type: 'UtxoStateChange', data: { outpoint: { txid, vout: 0 }, address, amount, state: 'Unspent',
      prev_state: null, spending_txid: null, votes: 1, quorum: 1, block_height: null, transaction: tx, seq: ++seq } },
    { type: 'TransactionFinalized', data: { txid, block_height: null, votes: 1, quorum: 1, seq: ++seq } },
  ];
  for (const m of msgs) { const text = JSON.stringify(m); for (const ws of targets) ws.send(text); }
  return txid;
}

http.createServer((req, res) => {
  let body = '';
  req.on('data', (c) => { body += c; });
  req.on('end', () => {
    const r = JSON.parse(body);
    let result = height;
    if (r.method === 'generate') result = [generate()];
    else if (r.method === 'faucet') result = faucet(r.params[0], r.params[1]);
    res.setHeader('Content-Type', 'application/json');
    res.end(JSON.stringify({ jsonrpc: '2.0', id: r.id, result }));
  });
}).listen(Number(process.argv[3]), '127.0.0.1', () => console.log('ready'));
