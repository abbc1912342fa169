// timefast wallet client for browsers and Node (ES module, no build step).
//
// Reconnects with backoff, resumes by `since_seq` (SPEC 3.5), never delivers an event
// twice, keeps the wallet's UTXOs consistent with the stream (snapshot "as of seq",
// then every event after it), and fails over across several masternode URLs: `seq`
// is per node, so on another node it rebuilds the state from a snapshot there and
// says so with a `Resynced` event instead of silently skipping.
//
// Browsers (and Node 22+) have a global WebSocket; older Node uses the `ws` package.
// This file is also served by the node at /client.js for its live page.

const DEFAULTS = { backoffInitial: 100, backoffMax: 5000, requestTimeout: 30000,
                   pingInterval: 15000, openTimeout: 10000 };

/** An `Error` reply from the node (`code` is one of SPEC 3.4's codes). */
export class ClientError extends Error {
  constructor(code, message) {
    super(`${code}: ${message}`);
    this.name = 'ClientError';
    this.code = code;
  }
}

class Dropped extends Error {}

async function socketClass(given) {
  if (given) return given;
  if (typeof globalThis.WebSocket === 'function') return globalThis.WebSocket;
  const mod = await import('ws');
  return mod.default || mod.WebSocket;
}

function key(txid, vout) { return `${txid}:${vout}`; }

function historyRequest(address, limit, before) {
  const data = { address, limit };
  if (before !== null && before !== undefined) data.before = before;
  return data;
}

/**
 * A wallet's live view of its addresses on one or more masternodes.
 *
 *   const c = new WalletClient(['ws://a:8765', 'ws://b:8765'], [address]);
 *   for await (const ev of c) { ... }          // or new WalletClient(..., {onEvent})
 */
export class WalletClient {
  constructor(urls, addresses, options = {}) {
    this.urls = typeof urls === 'string' ? [urls] : [...urls];
    if (!this.urls.length) throw new TypeError('at least one URL is needed');
    this.addresses = [...new Set(addresses || [])];
    this.options = { ...DEFAULTS, ...options };
    /** Index in `urls` of the node in use (or being tried). */
    this.index = 0;
    /** The node's public key (Hello.node) whose seq space `seq` belongs to. */
    this.node = options.node ?? null;
    /** The last seq delivered (or taken from a snapshot); null before any. */
    this.seq = options.sinceSeq ?? null;
    /** address -> Map("txid:vout" -> utxo), as of `seq`. */
    this.state = new Map();
    this.url = null;
    this.connected = false;
    this._ws = null;
    this._ids = 0;
    this._requests = new Map();
    this._queue = [];
    this._waiters = [];
    this._ready = [];
    this._closed = false;
    this._synced = false;
    this._task = null;
    this._snapshotNext = false;
    this._fatal = null;
  }

  // -- lifecycle ---------------------------------------------------------------------

  /** Start connecting (idempotent); resolves when the first sync is done. */
  start() {
    if (!this._task) this._task = this._run();
    return this.whenReady();
  }

  /** Resolves when the client is connected and in sync. */
  whenReady() {
    if (this.connected && this._synced) return Promise.resolve();
    return new Promise((resolve, reject) => this._ready.push({ resolve, reject }));
  }

  /** Stop for good; the event iterator ends. */
  async close() {
    this._closed = true;
    if (this._ws) this._ws.close(1000, 'client closed');
    for (const w of this._ready.splice(0)) w.reject(new Error('client closed'));
    for (const w of this._waiters.splice(0)) w.resolve({ value: undefined, done: true });
    if (this._task) await this._task.catch(() => {});
  }

  [Symbol.asyncIterator]() {
    this.start().catch(() => {});
    return {
      next: () => {
        if (this._queue.length) return Promise.resolve({ value: this._queue.shift(), done: false });
        if (this._fatal) return Promise.reject(this._fatal);
        if (this._closed) return Promise.resolve({ value: undefined, done: true });
        return new Promise((resolve, reject) => this._waiters.push({ resolve, reject }));
      },
      // Leaving a for-await loop ends that loop only: the client runs on (close() stops it).
      return: async () => ({ value: undefined, done: true }),
    };
  }

  // -- wallet state ------------------------------------------------------------------

  /** Sum of the address's Unspent UTXOs, as of `seq`. */
  balance(address) {
    let sum = 0;
    for (const u of (this.state.get(address) || new Map()).values()) {
      if (u.state === 'Unspent') sum += u.amount;
    }
    return sum;
  }

  /** Every address's balance. */
  balances() {
    const out = {};
    for (const a of this.addresses) out[a] = this.balance(a);
    return out;
  }

  // -- requests (retried on the next connection: all of them are idempotent) ---------

  /** Submit a signed transaction (object or JSON text); resolves to its txid. */
  async submit(tx) {
    const body = typeof tx === 'string' ? JSON.parse(tx) : tx;
    return (await this._retrying('SubmitTransaction', { tx: body })).txid;
  }

  /** `{address: {balance, utxos, more?, utxo_count?}}`, every page fetched. */
  async utxos(addresses) {
    for (;;) {
      const reply = await this._retrying('GetUtxos', { addresses });
      try {
        for (const a of addresses) await this._pageOn(a, reply[a], null);
      } catch (e) {
        if (e instanceof Dropped) continue;
        throw e;
      }
      delete reply.seq;
      return reply;
    }
  }

  /** `{txid, status, votes, quorum, block_height, tx}` (raises NOT_FOUND). */
  transaction(txid) { return this._retrying('GetTransaction', { txid }); }

  /**
   * One page of `address`'s history, newest first: at most `limit` (1 to 1,000,
   * default 50) transactions below `before` (the `next` of the page before).
   * Resolves to `{address, balance, tx_count, txs, next}`; rejects with a
   * ClientError (INVALID_ADDRESS, BAD_REQUEST) when refused.
   */
  async history(address, { limit = 50, before = null } = {}) {
    return (await this._retryingAt('GetHistory', historyRequest(address, limit, before))).reply;
  }

  /**
   * Every transaction of `address`'s history, newest first, page by page (`next`
   * followed), each once. A page lost with the link is asked again; a cursor means
   * something only to the node that gave it, so after a failover the walk starts
   * again from the top on the new node and skips what it already gave.
   */
  async *historyAll(address, { pageSize = 200 } = {}) {
    const given = new Set();
    let before = null;
    let node = null;
    for (;;) {
      const { reply, node: at } = await this._retryingAt('GetHistory',
        historyRequest(address, pageSize, before));
      if (before !== null && at !== node) {  // another node: its own order, from the top
        before = null;
        node = at;
        continue;
      }
      node = at;
      for (const tx of reply.txs) {
        if (!given.has(tx.txid)) {
          given.add(tx.txid);
          yield tx;
        }
      }
      if (reply.next === null || reply.next === undefined) return;
      before = reply.next;
    }
  }

  async _retrying(type, data) {
    for (;;) {
      if (this._closed) throw new Error('client closed');
      if (!this.connected) await this.start();
      try {
        return await this._request(type, data);
      } catch (e) {
        if (!(e instanceof Dropped)) throw e;
      }
    }
  }

  // The reply and the node (Hello.node) that gave it: the request waits until the
  // client is in sync, when `node` is that of the connection it goes out on.
  async _retryingAt(type, data) {
    for (;;) {
      if (this._closed) throw this._fatal || new Error('client closed');
      await this.start();
      const node = this.node;
      try {
        return { reply: await this._request(type, data), node };
      } catch (e) {
        if (!(e instanceof Dropped)) throw e;
      }
    }
  }

  _request(type, data) {
    const ws = this._ws;
    if (!ws || ws.readyState !== 1) return Promise.reject(new Dropped('not connected'));
    const id = ++this._ids;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._requests.delete(id);
        reject(new Dropped(`no reply to ${type} in ${this.options.requestTimeout} ms`));
        try { ws.close(4000, 'request timeout'); } catch { /* closing anyway */ }
      }, this.options.requestTimeout);
      this._requests.set(id, { resolve, reject, timer });
      const msg = { type, id };
      if (data !== undefined) msg.data = data;
      ws.send(JSON.stringify(msg));
    });
  }

  // -- events ------------------------------------------------------------------------

  _emit(ev) {
    if (this.options.onEvent) {
      try { this.options.onEvent(ev, this); } catch (e) { console.error(e); }
    }
    const w = this._waiters.shift();
    if (w) w.resolve({ value: ev, done: false });
    else if (!this.options.onEvent || this.options.queue) this._queue.push(ev);
  }

  _deliver(msg) {
    const ev = { type: msg.type, ...msg.data };
    if (typeof ev.seq !== 'number') { this._emit(ev); return; }
    if (this.seq !== null && ev.seq <= this.seq) return;  // had it already
    this._apply(ev);
    this.seq = ev.seq;
    this._emit(ev);
  }

  _apply(ev) {
    if (ev.type !== 'UtxoStateChange') return;
    let m = this.state.get(ev.address);
    if (!m) this.state.set(ev.address, (m = new Map()));
    const k = key(ev.outpoint.txid, ev.outpoint.vout);
    const known = m.get(k);
    if (known && known.asOf >= ev.seq) return;  // a later page already has it
    if (ev.state === 'Confirmed') { m.delete(k); return; }
    m.set(k, { txid: ev.outpoint.txid, vout: ev.outpoint.vout, amount: ev.amount,
               state: ev.state, spending_txid: ev.spending_txid, votes: ev.votes,
               block_height: ev.block_height, asOf: ev.seq });
  }

  _load(address, entry, asOf) {
    let m = this.state.get(address);
    if (!m) this.state.set(address, (m = new Map()));
    for (const u of entry.utxos || []) {
      const k = key(u.txid, u.vout);
      const known = m.get(k);
      if (!known || known.asOf <= asOf) m.set(k, { ...u, asOf });
    }
  }

  // Snapshots and Utxos replies list at most 1,000 UTXOs an address: follow `more`
  // with GetUtxos `after` (the last one listed) until the node has given them all.
  // `asOf` null: gather the pages into `entry`; else load them into the state.
  async _pageOn(address, entry, asOf) {
    let page = entry;
    while (page && page.more && page.utxos && page.utxos.length) {
      const last = page.utxos[page.utxos.length - 1];
      const reply = await this._request('GetUtxos',
        { addresses: [address], after: key(last.txid, last.vout) });
      page = reply[address];
      if (!page) break;
      if (asOf !== null) this._load(address, page, reply.seq ?? asOf);
      else entry.utxos.push(...page.utxos);
    }
    if (asOf === null && entry) delete entry.more;
  }

  // -- the connection loop -----------------------------------------------------------

  async _run() {
    const WS = await socketClass(this.options.WebSocket);
    let delay = this.options.backoffInitial;
    let failures = 0;
    while (!this._closed) {
      const url = this.urls[this.index];
      let synced = false;
      try {
        synced = await this._session(WS, url);
      } catch (e) {
        this._lastError = e;
      }
      this.connected = false;
      this._synced = false;
      for (const [, r] of this._requests) { clearTimeout(r.timer); r.reject(new Dropped('connection lost')); }
      this._requests.clear();
      if (this._fatal) {
        this._closed = true;
        for (const w of this._ready.splice(0)) w.reject(this._fatal);
        for (const w of this._waiters.splice(0)) w.reject(this._fatal);
      }
      if (this._closed) break;
      if (!synced && this._lastReason && this._lastReason.startsWith('lagged')) {
        // The replay since our seq was more than the node would queue: take a
        // snapshot next time rather than ask for the same replay forever.
        this._snapshotNext = true;
      }
      if (synced) {
        this._emit({ type: 'Disconnected', url, reason: String(this._lastReason || 'closed') });
        delay = this.options.backoffInitial;
        failures = 0;
      }
      // The node in use is gone: try the next one; wait once every URL failed.
      this.index = (this.index + 1) % this.urls.length;
      failures += synced ? 0 : 1;
      if (!synced && failures % this.urls.length === 0) {
        await new Promise((r) => setTimeout(r, delay));
        delay = Math.min(delay * 2, this.options.backoffMax);
      }
    }
  }

  // One connection; resolves true if it got in sync before it ended.
  _session(WS, url) {
    return new Promise((resolve, reject) => {
      let ws;
      try { ws = new WS(url); } catch (e) { reject(e); return; }
      this._ws = ws;
      this._lastReason = null;
      let synced = false;
      let pinger = null;
      const openTimer = setTimeout(() => { try { ws.close(); } catch { /* ignore */ } }, this.options.openTimeout);
      const buffer = [];   // pushed events held until the sync is complete
      let syncing = true;
      const onMessage = (text) => {
        let msg;
        try { msg = JSON.parse(text); } catch { return; }
        if (msg.id !== undefined && this._requests.has(msg.id)) {
          const r = this._requests.get(msg.id);
          this._requests.delete(msg.id);
          clearTimeout(r.timer);
          if (msg.type === 'Error') r.reject(new ClientError(msg.data.code, msg.data.message));
          else r.resolve(msg.type === 'Pong' ? null : msg.data);
          return;
        }
        if (msg.type === 'Lagged') { this._lastReason = `lagged (resume from ${msg.data.resume_from})`; return; }
        if (msg.type === 'Error' || msg.type === 'Pong') return;
        if (syncing) buffer.push(msg);
        else this._deliver(msg);
      };
      const sync = async () => {
        const hello = await this._request('Hello');
        const sameNode = this.node !== null && hello.node === this.node
          && this.seq !== null && hello.seq >= this.seq && !this._snapshotNext;
        const wasSynced = this.node !== null;
        let sub = null;
        if (this.addresses.length) {
          const data = { addresses: this.addresses };
          if (sameNode) { data.since_seq = this.seq; data.snapshot = false; }
          // Replies and replayed events come in order: once this Ping is answered
          // every replayed event is in `buffer`.
          [sub] = await Promise.all([this._request('Subscribe', data), this._request('Ping')]);
        }
        let reason = null;
        if (!sameNode || (sub && sub.resync)) {
          reason = !wasSynced ? null : hello.node !== this.node ? 'another node'
            : this.seq !== null && hello.seq < this.seq ? 'node went back'
            : this._snapshotNext ? 'lagged in the replay' : 'replay window passed';
          const at = sub ? sub.seq : hello.seq;
          this.state = new Map();
          if (sub && sub.snapshot) {
            for (const a of this.addresses) {
              this._load(a, sub.snapshot[a] || { utxos: [] }, at);
              await this._pageOn(a, sub.snapshot[a], at);
            }
          }
          this.node = hello.node;
          this.seq = at;
          this._emit({ type: wasSynced ? 'Resynced' : 'Snapshot', url, node: hello.node,
                       seq: at, reason, balances: this.balances() });
        }
        this.node = hello.node;
        this.url = url;
        this._snapshotNext = false;
        this._emit({ type: 'Connected', url, node: hello.node, height: hello.height, seq: hello.seq });
        buffer.sort((x, y) => (x.data?.seq ?? 0) - (y.data?.seq ?? 0));
        syncing = false;
        for (const m of buffer.splice(0)) this._deliver(m);
        this.connected = true;
        this._synced = true;
        synced = true;
        for (const w of this._ready.splice(0)) w.resolve();
        pinger = setInterval(() => {
          this._request('Ping').catch(() => {});  // a dead link times the request out
        }, this.options.pingInterval);
      };
      ws.onopen = () => {
        clearTimeout(openTimer);
        this.connected = true;  // requests may flow; the app sees it after the sync
        sync().catch((e) => {
          // A refusal (an invalid address, say) would be refused again: it ends the client.
          if (e instanceof ClientError) this._fatal = e;
          if (!this._lastReason) this._lastReason = String(e);
          try { ws.close(); } catch { /* closing anyway */ }
        });
      };
      ws.onmessage = (e) => onMessage(typeof e.data === 'string' ? e.data : String(e.data));
      ws.onerror = () => {};
      ws.onclose = (e) => {
        clearTimeout(openTimer);
        if (pinger) clearInterval(pinger);
        if (!this._lastReason) this._lastReason = `closed ${e.code}${e.reason ? ' ' + e.reason : ''}`;
        this._ws = null;
        resolve(synced);
      };
    });
  }
}
