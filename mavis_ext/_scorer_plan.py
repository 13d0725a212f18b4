"""Which scorer runs which value model in one ``generate`` call (used by ``decoding.py``).

Prefix-mode value models whose trunks have the same architecture and shape run together as one
``StackedScorer`` (one stacked trunk pass per step, ``mavis_ext.stacked_trunks``); every other
value model gets its own ``TrunkScorer``. Stacks are cached across calls and rebuilt when a
trunk's weights change.
"""

from __future__ import annotations

import warnings
from typing import Optional

import torch

from ._value_scoring import StackedScorer, TrunkScorer
from .lean_llama import LeanLlama, unsupported_reason
from .stacked_trunks import StackError, build_stack, stack_signature
from .values import backbone_of

__all__ = ["plan_scorers", "resolve_gemm_dtype"]


def resolve_gemm_dtype(value) -> Optional[torch.dtype]:
    if value is None:
        return None
    if value in (torch.bfloat16, "bf16", "bfloat16"):
        return torch.bfloat16
    raise ValueError(f'trunk_gemm_dtype: expected None or "bf16", got {value!r}')


def plan_scorers(members, prefix_scoring: str, vocab: int, stack_trunks, gemm_dtype, cache: dict,
                 lean: bool = False, capacity: int = 0) -> list:
    """``[(scorer, [member indices])]`` in order of each scorer's first member. ``cache`` maps a
    group of value models (and GEMM dtype) to its runner (``StackedTrunk`` / ``LeanLlama``)
    across calls. ``lean``: groups inside ``lean_llama``'s scope (even of one model) run there.
    ``capacity``: tokens a cache will hold (prompt + new tokens + candidates)."""
    groups: dict = {}
    order = []
    for j, vm in enumerate(members):
        stackable = vm.mode == "prefix" and prefix_scoring == "tree" and (stack_trunks is not False or gemm_dtype
                                                                          or lean)
        key = stack_signature(backbone_of(vm.trunk)) if stackable else ("single", j)
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append(j)
    plan = []
    for key in order:
        idx = groups[key]
        qlean = key[0] == "single" and lean and members[idx[0]].mode == "qhead" and \
            unsupported_reason(backbone_of(members[idx[0]].trunk)) is None
        if qlean:  # a Q-head trunk reads one token per step: the lean forward with m = 1
            vm = members[idx[0]]
            plan.append((TrunkScorer(vm, prefix_scoring, vocab, runner=_cached_lean([vm], None, cache),
                                     capacity=capacity), idx))
            continue
        if key[0] != "single" and lean and unsupported_reason(backbone_of(members[idx[0]].trunk)) is None:
            # lean runs any group whole (one model or many); stack_trunks=False keeps models apart
            parts = [idx] if stack_trunks is not False else [[j] for j in idx]
            for part in parts:
                vms = [members[j] for j in part]
                plan.append((StackedScorer(vms, _cached_lean(vms, gemm_dtype, cache), capacity), part))
            continue
        if key[0] == "single" or (len(idx) < 2 and gemm_dtype is None):
            plan += [(TrunkScorer(members[j], prefix_scoring, vocab), [j]) for j in idx]
            continue
        vms = [members[j] for j in idx]
        st = _cached_stack(vms, gemm_dtype, vocab, cache, stack_trunks)
        if st is None:
            plan += [(TrunkScorer(members[j], prefix_scoring, vocab), [j]) for j in idx]
        else:
            plan.append((StackedScorer(vms, st, capacity), idx))
    plan.sort(key=lambda p: p[1][0])
    return plan


def _cached_lean(vms, gemm_dtype, cache):
    key = ("lean", tuple(id(vm) for vm in vms), gemm_dtype)
    bbs = [backbone_of(vm.trunk) for vm in vms]
    run = cache.get(key)
    if run is None or not run.is_current(bbs):
        run = cache[key] = LeanLlama(bbs, gemm_dtype=gemm_dtype)
    return run


def _cached_stack(vms, gemm_dtype, vocab, cache, stack_trunks):
    key = (tuple(id(vm) for vm in vms), gemm_dtype)
    bbs = [backbone_of(vm.trunk) for vm in vms]
    st = cache.get(key)
    if isinstance(st, _NotStackable):
        return None
    if st is not None and st.is_current(bbs):
        return st
    cache.pop(key, None)
    try:
        st = build_stack(vms, gemm_dtype, vocab)
    except StackError as e:
        names = [o for vm in vms for o in vm.objectives]
        if stack_trunks is True or gemm_dtype is not None:
            what = "trunk_gemm_dtype" if gemm_dtype is not None else "stack_trunks"
            raise ValueError(f"{what}: the trunks of value models {names} cannot run as one stacked pass: {e}") from None
        warnings.warn(f"stack_trunks: the trunks of value models {names} run one after the other (they cannot be "
                      f"stacked: {e}); pass stack_trunks=False to silence this", RuntimeWarning, stacklevel=4)
        cache[key] = _NotStackable()
        return None
    cache[key] = st
    return st


class _NotStackable:
    """Remembers a group that failed to stack, so the warning is given once per generator."""
