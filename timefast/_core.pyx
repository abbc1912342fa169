# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# distutils: language = c++
"""The compiled hot path of timefast (SPEC 1).

* ``UtxoTable``: outpoint -> record, with the UTXO transition table of SPEC 4.2 as a
  static C table and an all-or-nothing lock of a transaction's inputs.
* ``verify_many``: ed25519 signature checks in bulk, with the GIL released.
* ``SubscriberIndex``: address -> subscribers and subscriber -> addresses, held in C
  vectors; ``route`` yields each subscriber once however many addresses it holds.
* ``Fanout``: one output buffer per connection in C memory.  An event's frame is
  built once; ``publish`` copies the same bytes into every target's buffer and
  ``flush`` writes each dirty buffer once per loop turn, straight to the socket
  with ``send()`` where it can.  No Python object is made per recipient.

Nothing here imports asyncio, JSON or logging (rule 1 of DEVELOPERS).
"""

# The module is made of one file per concept, included here as uvloop includes
# its handles: they compile into this one extension (its classes call each
# other's cdef methods directly), each .pyx beside the .pxd of the same name
# that _core.pxd includes, and C++ in headers (.h).  Module-level statements
# run in the order of these includes.
include "_core_utxo.pyx"            # STATES, allowed, UtxoTable
include "_core_verify.pyx"          # verify_many
include "_core_subscribers.pyx"     # SubscriberIndex
include "_core_fanout.pyx"          # frame_text, read_frames, Fanout
