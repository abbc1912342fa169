// The JS client's side of tests/test_client.py, shared by Node and Chromium: run a
// WalletClient and print every event as one JSON line with the balances after it.
// `run` resolves to the client at once; `answer(client, line, print)` carries out one
// request line of the runner's stdin (see py_runner.py: the same lines, the same
// answers).
export function run(WalletClient, urls, addresses, print) {
  const client = new WalletClient(urls, addresses, { backoffMax: 500 });
  (async () => {
    for await (const ev of client) {
      const line = { ...ev, balances: client.balances() };
      if (ev.type === 'UtxoStateChange') line.transaction = null;
      if (ev.type === 'TransactionPending') line.tx = { txid: ev.tx.txid };
      print(JSON.stringify(line));
    }
  })().catch((e) => print(JSON.stringify({ type: 'Failed', error: String(e) })));
  return client;
}

export async function answer(client, text, print) {
  const cmd = JSON.parse(text);
  const out = { type: 'Reply', op: cmd.op };
  try {
    if (cmd.op === 'history') {
      out.result = await client.history(cmd.address, { limit: cmd.limit, before: cmd.before });
    } else if (cmd.op === 'history_all') {
      out.result = [];
      for await (const tx of client.historyAll(cmd.address, { pageSize: cmd.page_size })) {
        out.result.push(tx);
      }
    }
  } catch (e) {
    if (!e.code) throw e;
    out.error = e.code;
  }
  print(JSON.stringify(out));
}
