"""timefast: a TIME Coin masternode that tells wallets of UTXO changes in real time."""

__version__ = "0.1.0"
# The wallet protocol version (Hello, getinfo).
PROTOCOL_VERSION = "1.0"
