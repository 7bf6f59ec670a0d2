"""Sharding: device meshes, logical-axis rules, multi-host start-up (used by models/ and engine/)."""
from sharding.distributed import gather_prompts, initialize, shutdown
from sharding.mesh import AXES, DATA, TENSOR, make_mesh, mesh_shape, parse_mesh
from sharding.rules import RULES, Rules, constrain, logical_to_sharding, logical_to_spec, place, put, replicate

__all__ = ["make_mesh", "mesh_shape", "parse_mesh", "AXES", "DATA", "TENSOR", "RULES", "Rules",
           "logical_to_spec", "logical_to_sharding", "constrain", "place", "put", "replicate", "initialize",
           "shutdown", "gather_prompts"]
