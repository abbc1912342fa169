# cython: language_level=3
# Declarations of the compiled core, so that other Cython modules (and readers)
# see the C layout of each class without reading its implementation: one file
# per concept, beside the .pyx of the same name that _core.pyx includes.

include "_core_utxo.pxd"
include "_core_verify.pxd"
include "_core_subscribers.pxd"
include "_core_fanout.pxd"      # after the index: a Fanout holds a SubscriberIndex
