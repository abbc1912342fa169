// Types of timefast-client.js (hand-written: the package ships plain JS, no build step).

export type UtxoState = 'Unspent' | 'Locked' | 'SpentPending' | 'SpentFinalized' | 'Confirmed';

/** A transaction as the upstream format gives it (SPEC 4.1). */
export interface Transaction {
  txid: string;
  version?: number;
  inputs: unknown[];
  outputs: { amount: number; address: string }[];
  lock_time?: number;
  timestamp?: number;
  [field: string]: unknown;
}

/** What an event gives for a transaction whose JSON passes 4 KiB: fetch it with `transaction()`. */
export interface AbbreviatedTransaction { txid: string; size: number }

export interface UtxoStateChange {
  type: 'UtxoStateChange'; seq: number;
  outpoint: { txid: string; vout: number };
  address: string; amount: number; state: UtxoState; prev_state: UtxoState | null;
  spending_txid: string | null; votes: number; quorum: number; block_height: number | null;
  transaction: Transaction | AbbreviatedTransaction | null;
}
export interface TransactionPending { type: 'TransactionPending'; seq: number; tx: Transaction }
export interface TransactionFinalized {
  type: 'TransactionFinalized'; seq: number; txid: string; block_height: number | null;
  votes: number; quorum: number;
}
export interface TransactionConfirmed {
  type: 'TransactionConfirmed'; seq: number; txid: string; block_height: number; block_hash: string;
}
export interface TransactionRejected { type: 'TransactionRejected'; seq: number; txid: string; reason: string }
export interface NewBlock {
  type: 'NewBlock'; seq: number; height: number; hash: string; prev_hash: string;
  timestamp: number; tx_count: number;
}
/** The first sync: every address's state as of `seq` on `node`. */
export interface Snapshot { type: 'Snapshot'; url: string; node: string; seq: number; reason: null; balances: Record<string, number> }
/** The state was rebuilt from a fresh snapshot, not resumed (failover, or the replay window passed). */
export interface Resynced {
  type: 'Resynced'; url: string; node: string; seq: number;
  reason: 'another node' | 'replay window passed' | 'lagged in the replay' | 'node went back';
  balances: Record<string, number>;
}
export interface Connected { type: 'Connected'; url: string; node: string; height: number; seq: number }
export interface Disconnected { type: 'Disconnected'; url: string; reason: string }

export type WalletEvent = UtxoStateChange | TransactionPending | TransactionFinalized
  | TransactionConfirmed | TransactionRejected | NewBlock | Snapshot | Resynced
  | Connected | Disconnected;

export interface Utxo {
  txid: string; vout: number; amount: number; state: UtxoState;
  spending_txid: string | null; votes: number; block_height: number | null;
  /** The seq this UTXO's state is known at. */
  asOf: number;
}

export interface AddressUtxos {
  balance: number;
  utxos: Omit<Utxo, 'asOf'>[];
  utxo_count?: number;
}

/** One transaction of an address's history: what it paid to (`received`) and took from (`sent`) the address. */
export interface HistoryEntry {
  txid: string;
  status: 'pending' | 'finalized' | 'confirmed' | 'rejected';
  block_height: number | null;
  /** The block's, or when the node accepted it while unconfirmed (Unix seconds). */
  timestamp: number;
  received: number;
  sent: number;
}

/** One page of an address's history, newest first; `next` is the `before` of the following page (null on the last). */
export interface History {
  address: string;
  balance: number;
  tx_count: number;
  txs: HistoryEntry[];
  next: number | null;
}

export interface ClientOptions {
  /** A WebSocket class (default: the global one, else the `ws` package). */
  WebSocket?: unknown;
  /** Called for every event; the iterator then gets events only if `queue` is true. */
  onEvent?: (event: WalletEvent, client: WalletClient) => void;
  queue?: boolean;
  /** Resume a view saved earlier: its `seq` and `node`. */
  sinceSeq?: number;
  node?: string;
  /** Milliseconds: reconnect backoff (doubling), request and open timeouts, app-level ping. */
  backoffInitial?: number;
  backoffMax?: number;
  requestTimeout?: number;
  openTimeout?: number;
  pingInterval?: number;
}

/** An `Error` reply from the node. */
export class ClientError extends Error {
  code: string;
  constructor(code: string, message: string);
}

export class WalletClient implements AsyncIterable<WalletEvent> {
  constructor(urls: string | string[], addresses: string[], options?: ClientOptions);
  readonly urls: string[];
  readonly addresses: string[];
  /** The node whose seq space `seq` belongs to, and the last seq delivered. */
  node: string | null;
  seq: number | null;
  url: string | null;
  connected: boolean;
  /** address -> ("txid:vout" -> Utxo), as of `seq`. */
  state: Map<string, Map<string, Utxo>>;
  start(): Promise<void>;
  whenReady(): Promise<void>;
  close(): Promise<void>;
  balance(address: string): number;
  balances(): Record<string, number>;
  submit(tx: Transaction | string): Promise<string>;
  utxos(addresses: string[]): Promise<Record<string, AddressUtxos>>;
  transaction(txid: string): Promise<{ txid: string; status: string; votes: number; quorum: number; block_height: number | null; tx: Transaction }>;
  history(address: string, options?: { limit?: number; before?: number | null }): Promise<History>;
  historyAll(address: string, options?: { pageSize?: number }): AsyncGenerator<HistoryEntry, void, undefined>;
  [Symbol.asyncIterator](): AsyncIterator<WalletEvent>;
}
