"""Generation engine: KV cache, prefill, jitted decode loop, streaming."""
from engine.cache import KVCache
from engine.generate import (DecodeState, Rollouts, bucket, decode_loop, decode_step, generate, left_pad, prefill,
                             stream)

__all__ = ["KVCache", "DecodeState", "Rollouts", "bucket", "prefill", "decode_step", "decode_loop",
           "generate", "left_pad", "stream"]
