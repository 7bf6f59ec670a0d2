"""Meta-generators over shared-prefix rollouts, scorers, compute budgets and one result type.

Every meta-generator reads a rollout's answer with ``answer(text)`` (``None``: it has none, and
does not vote); by default the answer is the whole text, stripped. Tasks bring their own
extractors and verifiers: ``meta.tasks.arith.answer`` and ``meta.tasks.arith_verifiers``.
"""
from meta.adaptive import adaptive_self_consistency
from meta.backtrack import backtrack
from meta.best_of_n import best_of_n
from meta.budget import Budget
from meta.common import PromptError
from meta.cascade import agreement, cascade, score_at_least
from meta.draw import draw
from meta.mbr import mbr
from meta.mcts import mcts
from meta.pass_at_k import coverage, pass_at_k
from meta.refine import refine, reward_feedback, self_feedback
from meta.rejection import rejection_sample
from meta.result import Result
from meta.scoring import FunctionScorer, LMJudge, ProcessScorer, RewardModel, sigmoid
from meta.search import dvts, particle_filter, rebase, step_beam_search
from meta.self_consistency import self_consistency, weighted_vote

METHODS = {"best_of_n": best_of_n, "self_consistency": self_consistency, "weighted_vote": weighted_vote,
           "mbr": mbr, "rejection_sample": rejection_sample, "pass_at_k": coverage,
           "adaptive_self_consistency": adaptive_self_consistency, "step_beam_search": step_beam_search,
           "dvts": dvts, "rebase": rebase, "particle_filter": particle_filter, "mcts": mcts,
           "backtrack": backtrack, "refine": refine}

__all__ = ["Budget", "PromptError", "Result", "draw", "best_of_n", "self_consistency", "weighted_vote", "mbr",
           "rejection_sample", "pass_at_k", "coverage", "adaptive_self_consistency", "step_beam_search",
           "dvts", "rebase", "particle_filter", "mcts", "backtrack", "refine", "reward_feedback", "self_feedback",
           "cascade", "agreement", "score_at_least", "ProcessScorer",
           "FunctionScorer", "LMJudge", "RewardModel", "sigmoid", "METHODS"]
