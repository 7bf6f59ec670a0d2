"""Generation engine: KV caches, prefill, the jitted decode step and loop (plain or speculative), rollout-axis
search verbs."""
from engine.beam import BeamResult, beam_search
from engine.cache import KVCache, PrefillCache
from engine.decode import append, compact, decode, finish, fork, rewind, select, start, track_scores
from engine.generate import Rollouts, decode_text, generate, rollouts, stream
from engine.mixture import mix_generate
from engine.state import DecodeState, Track
from engine.step import Mixture

__all__ = ["DecodeState", "Track", "Mixture", "KVCache", "PrefillCache", "Rollouts", "BeamResult",
           "start", "decode", "select", "fork", "rewind", "append", "finish", "compact", "track_scores", "rollouts",
           "generate", "stream", "decode_text", "beam_search", "mix_generate"]
