# cython: language_level=3
"""sfu._native: the media node's data path (design.md section 2).

One translation unit: each component lives in a .pxi included here, in dependency order.
"""

include "net.pxi"
include "consts.pxi"
include "hashmap.pxi"
include "rtp.pxi"
include "rtcp.pxi"
include "pyhelpers.pxi"
include "bwe.pxi"
include "bwe_control.pxi"
include "bwe_py.pxi"
include "fec.pxi"
include "rsfec.pxi"
include "jitter.pxi"
include "codec.pxi"
include "engine_types.pxi"
include "engine.pxi"
include "engine_rtp.pxi"
include "engine_rtcp.pxi"
include "engine_recovery.pxi"
include "engine_layers.pxi"
include "reader.pxi"
include "bench_base.pxi"
include "bench_sink.pxi"
include "bench_load.pxi"
