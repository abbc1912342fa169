// The JS client's side of tests/test_client.py, shared by Node and Chromium: run a
// WalletClient and print every event as one JSON line with the balances after it.
export async function run(WalletClient, urls, addresses, print) {
  const client = new WalletClient(urls, addresses, { backoffMax: 500 });
  for await (const ev of client) {
    const line = { ...ev, balances: client.balances() };
    if (ev.type === 'UtxoStateChange') line.transaction = null;
    if (ev.type === 'TransactionPending') line.tx = { txid: ev.tx.txid };
    print(JSON.stringify(line));
  }
}
