// The live page: /status for the node's state, the wallet client (/client.js, the
// same file as clients/js) for the block feed, an address's events and its history.
import { WalletClient } from '/client.js';

const $ = (id) => document.getElementById(id);
const WS_URL = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/`;
const COIN = 100000000;
const MAX_FEED = 50;
const HISTORY_PAGE = 50;

const time = (units) => `${(units / COIN).toLocaleString('en', { maximumFractionDigits: 8 })} TIME`;
const short = (h) => (h && h.length > 20 ? `${h.slice(0, 10)}…${h.slice(-6)}` : h || '');

function row(cells) {
  const tr = document.createElement('tr');
  for (const c of cells) {
    const td = document.createElement('td');
    td.textContent = c;
    tr.append(td);
  }
  return tr;
}

function feed(list, text, attrs = {}) {
  const li = document.createElement('li');
  li.textContent = text;
  for (const [k, v] of Object.entries(attrs)) li.dataset[k] = v;
  list.prepend(li);
  while (list.children.length > MAX_FEED) list.lastChild.remove();
  return li;
}

async function refresh() {
  let s;
  try {
    s = await (await fetch('/status', { cache: 'no-store' })).json();
  } catch {
    return;
  }
  $('network').textContent = s.network;
  $('height').textContent = s.height;
  $('tip').textContent = short(s.tip);
  $('tip').title = s.tip;
  $('consensus').textContent = `h ${s.consensus.height} · r ${s.consensus.round}`;
  $('quorum').textContent = `step ${s.consensus.step} · quorum ${s.quorum} of ${s.masternodes}`;
  $('peer-count').textContent = s.peers.length;
  $('node').textContent = short(s.node);
  $('seq').textContent = s.seq;
  const peers = $('peers').tBodies[0];
  peers.replaceChildren(...s.peers.map((p) => row([short(p.key), p.connected ? 'yes' : 'no', p.height])));
  if (!s.peers.length) peers.append(row(['no peers: a single masternode', '', '']));
  const pending = $('pending').tBodies[0];
  pending.replaceChildren(
    ...s.pending.map((t) => Object.assign(row([short(t.txid), 'voting',
      `${t.votes}/${t.quorum}${t.against ? ` (${t.against} against)` : ''}`, time(t.amount)]),
    { title: t.txid })),
    ...s.unconfirmed.map((t) => Object.assign(row([short(t.txid), 'finalized, awaiting a block',
      '✓', time(t.amount)]), { title: t.txid })));
  for (const tr of pending.rows) tr.dataset.txid = tr.title;
  const more = s.pending_count + s.unconfirmed_count - s.pending.length - s.unconfirmed.length;
  if (more > 0) pending.append(row([`… and ${more} more`, '', '', '']));
  if (!pending.rows.length) pending.append(row(['none', '', '', '']));
  if (!$('blocks').children.length && s.height >= 0) {
    feed($('blocks'), `#${s.height} ${short(s.tip)}`, { height: s.height });
  }
}

function describe(ev) {
  switch (ev.type) {
    case 'UtxoStateChange':
      return [`${short(ev.outpoint.txid)}:${ev.outpoint.vout} ${time(ev.amount)} ${ev.prev_state || 'new'} → ${ev.state}`, ev.outpoint.txid];
    case 'TransactionPending': return [`pending ${short(ev.tx.txid)}`, ev.tx.txid];
    case 'TransactionFinalized': return [`finalized ${short(ev.txid)} (${ev.votes}/${ev.quorum} votes)`, ev.txid];
    case 'TransactionConfirmed': return [`confirmed ${short(ev.txid)} in block ${ev.block_height}`, ev.txid];
    case 'TransactionRejected': return [`rejected ${short(ev.txid)}: ${ev.reason}`, ev.txid];
    default: return null;
  }
}

// The watched address's history: the first page, and the pages "more" added below
// it.  The node lists an address's transactions in the order it stored them, newest
// first, and never reorders them: a fresh first page goes on top of what is shown
// (replacing the rows it lists again, whose status may have changed), and `next`
// stays the cursor below the last row shown.
let shown = null;

function amount(units) {
  return units ? (units / COIN).toLocaleString('en', { maximumFractionDigits: 8 }) : '';
}

function drawHistory() {
  const body = $('history').tBodies[0];
  if (!shown) {
    body.replaceChildren(row(['type an address to see its history', '', '', '', '']));
    $('history-count').textContent = '';
    $('more').hidden = true;
    return;
  }
  if (shown.error) {
    body.replaceChildren(row([shown.error, '', '', '', '']));
    $('more').hidden = true;
    return;
  }
  body.replaceChildren(...shown.txs.map((t) => {
    const tr = row([short(t.txid), t.status, t.received ? `+${amount(t.received)}` : '',
      t.sent ? `−${amount(t.sent)}` : '', t.block_height === null ? '' : `#${t.block_height}`]);
    tr.className = t.status;
    tr.dataset.txid = t.txid;
    tr.dataset.status = t.status;
    tr.title = `${t.txid}\n${new Date(t.timestamp * 1000).toISOString()}`;
    return tr;
  }));
  if (!shown.txs.length && shown.loaded) body.append(row(['no transactions', '', '', '', '']));
  $('history-count').textContent = shown.loaded ? `${shown.count} tx · showing ${shown.txs.length}` : '';
  $('more').hidden = shown.next === null;
}

// One load at a time (a refresh and "more" would otherwise race for `next`).
function loadHistory(c, address, more) {
  const h = shown;
  h.busy = h.busy.then(async () => {
    if (c !== client || h !== shown) return;
    try {
      if (more) {
        const page = await c.history(address, { limit: HISTORY_PAGE, before: h.next });
        const have = new Set(h.txs.map((t) => t.txid));
        h.txs.push(...page.txs.filter((t) => !have.has(t.txid)));
        h.next = page.next;
        h.count = page.tx_count;
      } else {
        const page = await c.history(address, { limit: HISTORY_PAGE });
        const fresh = new Set(page.txs.map((t) => t.txid));
        h.txs = [...page.txs, ...h.txs.filter((t) => !fresh.has(t.txid))];
        if (!h.loaded) h.next = page.next;
        h.count = page.tx_count;
        h.loaded = true;
      }
      h.error = null;
    } catch (e) {
      h.error = `history: ${e.code || e.message}`;
    }
    if (h === shown) drawHistory();
  });
}

let historyTimer = null;
function refreshHistory(c, address) {
  clearTimeout(historyTimer);
  historyTimer = setTimeout(() => loadHistory(c, address, false), 150);
}

let client = null;
let timer = null;
const schedule = () => { clearTimeout(timer); timer = setTimeout(refresh, 150); };

function watch(addresses) {
  if (client) client.close();
  $('events').replaceChildren();
  shown = addresses.length ? { txs: [], next: null, count: 0, loaded: false, error: null,
                               busy: Promise.resolve() } : null;
  drawHistory();
  const c = new WalletClient([WS_URL], addresses, {
    onEvent(ev) {
      if (c !== client) return;
      if (ev.type === 'Connected') {
        $('link').textContent = `live · seq ${ev.seq}`;
        $('link').className = 'tag on';
        if (addresses.length) refreshHistory(c, addresses[0]);
      } else if (ev.type === 'Disconnected') {
        $('link').textContent = 'reconnecting…';
        $('link').className = 'tag off';
      } else if (ev.type === 'NewBlock') {
        feed($('blocks'), `#${ev.height} ${short(ev.hash)} · ${ev.tx_count} tx`, { height: ev.height });
      } else if (ev.type === 'Snapshot' || ev.type === 'Resynced') {
        if (ev.type === 'Resynced') feed($('events'), `resynced from a snapshot (${ev.reason})`);
      } else {
        const d = describe(ev);
        if (d) {
          feed($('events'), `seq ${ev.seq} · ${d[0]}`, { txid: d[1], seq: ev.seq });
          refreshHistory(c, addresses[0]);  // a new transaction, or a new status
        }
      }
      if (c.connected && ev.type !== 'Disconnected') $('link').textContent = `live · seq ${c.seq}`;
      if (addresses.length) $('balance').textContent = `balance ${time(c.balance(addresses[0]))}`;
      schedule();
    },
  });
  client = c;
  c.start().catch((e) => {
    if (shown && c === client) {
      shown.error = `history: ${e.code || e.message}`;
      drawHistory();
    }
  });
}

$('more').addEventListener('click', () => {
  if (client && shown && shown.next !== null) loadHistory(client, client.addresses[0], true);
});

$('watch').addEventListener('submit', (e) => {
  e.preventDefault();
  const a = $('address').value.trim();
  if (!a) return;
  history.replaceState(null, '', `#${a}`);
  watch([a]);
});

const first = decodeURIComponent(location.hash.slice(1));
if (first) $('address').value = first;
watch(first ? [first] : []);
refresh();
setInterval(refresh, 2000);
