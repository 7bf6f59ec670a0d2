"""Generation engine: KV caches, prefill, the jitted decode loop, rollout-axis search primitives."""
from engine.beam import BeamResult, beam_search
from engine.cache import KVCache, PrefillCache
from engine.checks import check_int, check_prompts, stop_ids
from engine.decode import (append, bucket, decode, decode_loop, decode_step, fork, left_pad, place_model, row_sampler,
                           select, start)
from engine.state import DecodeState
from engine.generate import Rollouts, decode_text, generate, rollouts, stream
from engine.mixture import mix_generate, mix_loop

__all__ = ["KVCache", "PrefillCache", "DecodeState", "Rollouts", "bucket", "left_pad", "check_int", "check_prompts",
           "beam_search", "BeamResult", "place_model", "start", "decode", "decode_step", "decode_loop", "select", "fork", "append",
           "stop_ids", "row_sampler", "rollouts", "generate", "decode_text", "stream", "mix_generate", "mix_loop"]
