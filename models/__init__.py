"""Models: configs, the transformer forward, checkpoints and tokenizers."""
from models.checkpoint import Model, load
from models.config import PRESETS, Config, LlamaConfig, MistralConfig, Qwen2Config, from_hf, preset
from models.tokenizer import HFTokenizer, SentencePieceTokenizer, Tokenizer, continuation, load_tokenizer
from models.transformer import forward, hidden_states, init_params, param_axes, param_shapes, rewards, score

__all__ = ["Model", "load", "forward", "hidden_states", "rewards", "score", "init_params", "param_axes", "param_shapes", "Config", "LlamaConfig",
           "MistralConfig", "Qwen2Config", "PRESETS", "preset", "from_hf", "Tokenizer",
           "SentencePieceTokenizer", "HFTokenizer", "load_tokenizer",
           "continuation"]
