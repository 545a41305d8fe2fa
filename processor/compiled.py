"""torch.compile of a model's forward (MODEL.COMPILE), falling back to eager when it fails.

The compiled callable is kept beside the module, never in its place: checkpoints, evaluation
and DDP's `.module` see the module itself, whose state-dict names stay the reference's (a
compiled wrapper would prefix them with `_orig_mod.`).

torch.compile only wraps; tracing and code generation run at the first call, and AOTAutograd
compiles the backward graph at the first backward. So a model (or a machine without a working
compiler) that cannot be compiled shows it there, and `CompiledForward.run` catches it there.
"""
from __future__ import annotations

import functools
import logging
import weakref
from typing import Callable, Set, Tuple, TypeVar

import torch
from torch import nn

logger = logging.getLogger("transreid.compile")

T = TypeVar("T")
Forward = Callable[..., object]

# (module, purpose) pairs that failed to compile in this process: a later wrapper of the same
# model (evaluation builds one per run) goes eager at once instead of failing and warning again.
_FAILED: "weakref.WeakKeyDictionary[nn.Module, Set[str]]" = weakref.WeakKeyDictionary()


def compile_enabled(cfg, device: torch.device) -> bool:
    """MODEL.COMPILE for `device`: 'auto' compiles on CUDA only (on the CPU compiling the
    training step takes longer than a short run saves). `load_config` checked the value."""
    mode = cfg.MODEL.COMPILE
    return mode == "on" or (mode == "auto" and device.type == "cuda")


@functools.lru_cache(maxsize=None)
def compile_errors() -> Tuple[type, ...]:
    """The exceptions by which torch.compile says it cannot compile: Dynamo's (tracing, and the
    backend's failures, which it wraps as BackendCompilerFailed) and Inductor's own, which
    escape unwrapped from the backward graph compiled at the first backward."""
    from torch._dynamo.exc import TorchDynamoException

    errors = [TorchDynamoException]
    try:
        from torch._inductor import exc as inductor
    except ImportError:  # a torch build without Inductor
        return tuple(errors)
    names = ("OperatorIssue", "InvalidCxxCompiler", "CppCompileError", "CppWrapperCodegenError",
             "SubgraphLoweringException")
    errors += [getattr(inductor, name) for name in names if hasattr(inductor, name)]
    return tuple(errors)


def describe(error: BaseException) -> str:
    """'Type: first line', through BackendCompilerFailed to the backend's own error."""
    inner = getattr(error, "inner_exception", None)
    text = str(error).strip()
    own = f"{type(error).__name__}: {text.splitlines()[0] if text else 'no message'}"
    return own if inner is None else f"{type(error).__name__} from {describe(inner)}"


class CompiledForward:
    """Calls `module` through torch.compile when `enabled`, eagerly otherwise or after
    compilation failed (one warning naming the cause, then eager for good).

    `module` may be a DistributedDataParallel: torch.compile of the DDP module is the way torch
    documents (Dynamo's DDPOptimizer splits the graph at DDP's gradient buckets).
    """

    def __init__(self, module: nn.Module, enabled: bool, purpose: str) -> None:
        self.module = module
        self.purpose = purpose
        failed_before = purpose in _FAILED.get(module, ())
        self.compiled = torch.compile(module) if enabled and not failed_before else None

    @property
    def is_compiled(self) -> bool:
        return self.compiled is not None

    def __call__(self, *args, **kwargs):
        return self.run(lambda forward: forward(*args, **kwargs))

    def run(self, work: Callable[[Forward], T],
            before_retry: Callable[[], None] = lambda: None) -> T:
        """`work(forward)`: with the compiled forward while it compiles; when compilation fails
        inside `work` (in the forward, or in a backward that `work` runs), warn once, go eager
        and run `work` again after `before_retry` (which clears what the failed attempt left,
        such as gradients)."""
        if self.compiled is None:
            return work(self.module)
        try:
            return work(self.compiled)
        except compile_errors() as error:
            self._fall_back(error)
        before_retry()
        return work(self.module)

    def _fall_back(self, error: BaseException) -> None:
        logger.warning("torch.compile failed for the %s forward (%s); it runs eagerly from now "
                       "on. Set MODEL.COMPILE off to skip compiling", self.purpose, describe(error))
        logger.debug("torch.compile failure of the %s forward", self.purpose, exc_info=error)
        self.compiled = None
        _FAILED.setdefault(self.module, set()).add(self.purpose)
