"""`zerospeed.checkpointing`: DeepSpeed's activation-checkpointing API over torch.utils.checkpoint.

`checkpoint(function, *args)` recomputes `function` in backward instead of keeping its
activations. It always uses torch's non-reentrant implementation: unlike DeepSpeed's
reentrant default it gives parameters inside the segment their gradients even when no
input requires grad (an embedding fed token ids), and it accepts non-tensor arguments.
The RNG state is restored for the recomputation, so dropout masks match.

The `activation_checkpointing` config keys (and `configure()` arguments) are honoured
where this build can: `cpu_checkpointing` keeps the saved segment inputs on the CPU
(torch.autograd.graph.save_on_cpu), `synchronize_checkpoint_boundary` synchronizes the
device around each segment's forward and backward, `profile` logs each segment's
forward time. `partition_activations` and `contiguous_memory_optimization` (which
splits saved inputs across tensor-parallel ranks into one buffer) are not built: each
warns once, naming the key, and activations stay whole.

`CheckpointFunction` is DeepSpeed's reentrant autograd Function, for code that calls it
directly (`CheckpointFunction.apply(function, all_outputs, *args)`, as optimum-habana does).
Being reentrant, its segment gets gradients only through inputs that require grad.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, replace

import torch
import torch.utils.checkpoint as torch_checkpoint

from zerospeed.utils.logging import log_dist, warn_once


@dataclass(frozen=True)
class CheckpointingOptions:
    partition_activations: bool = False
    contiguous_memory_optimization: bool = False
    number_checkpoints: int | None = None
    cpu_checkpointing: bool = False
    synchronize_checkpoint_boundary: bool = False
    profile: bool = False


_options = CheckpointingOptions()
_configured = False
mpu = None
_UNBUILT = {
    "partition_activations": "activations are kept whole on every rank",
    "contiguous_memory_optimization": "saved activations are not copied into one contiguous buffer",
}


def configure(
    mpu_,
    deepspeed_config=None,
    partition_activations=None,
    contiguous_checkpointing=None,
    num_checkpoints=None,
    checkpoint_in_cpu=None,
    synchronize=None,
    profile=None,
) -> None:
    """Set the options from a config (path, dict or loaded) and/or the keyword overrides."""
    global _options, _configured, mpu
    options = CheckpointingOptions()
    if deepspeed_config is not None:
        options = options_from_config(deepspeed_config)
    overrides = {
        "partition_activations": partition_activations, "contiguous_memory_optimization": contiguous_checkpointing,
        "number_checkpoints": num_checkpoints, "cpu_checkpointing": checkpoint_in_cpu,
        "synchronize_checkpoint_boundary": synchronize, "profile": profile,
    }
    options = replace(options, **{k: v for k, v in overrides.items() if v is not None})
    for key, consequence in _UNBUILT.items():
        if getattr(options, key):
            warn_once(f"activation_checkpointing.{key}=true is not supported by this zerospeed build and is ignored: {consequence}")
    if mpu_ is not None:
        mpu = mpu_
    _options, _configured = options, True


def options_from_config(config) -> CheckpointingOptions:
    """The `activation_checkpointing` section of a config (path, dict, or ZeroSpeedConfig)."""
    from zerospeed.config import load_config

    section = load_config(config).activation_checkpointing
    return CheckpointingOptions(**{f: getattr(section, f) for f in CheckpointingOptions.__dataclass_fields__})


def is_configured() -> bool:
    return _configured


def reset() -> None:
    """Free per-iteration state (DeepSpeed clears its contiguous buffers; nothing is kept here)."""


def set_num_layers(nlayers: int) -> None:
    global _options
    _options = replace(_options, number_checkpoints=nlayers)


def partition_activations_in_checkpoint(partition_activation: bool) -> None:
    configure(None, partition_activations=partition_activation)


def _synchronize() -> None:
    from zerospeed.accelerator import get_accelerator

    get_accelerator().synchronize()


class _SyncInBackward(torch.autograd.Function):
    """Identity whose backward synchronizes the device (the segment's backward boundary)."""

    @staticmethod
    def forward(ctx, *tensors):
        return tensors if len(tensors) != 1 else tensors[0]

    @staticmethod
    def backward(ctx, *grads):
        _synchronize()
        return grads


def _sync_backward_boundary(value):
    if isinstance(value, torch.Tensor) and value.requires_grad:
        return _SyncInBackward.apply(value)
    if isinstance(value, tuple) and any(isinstance(v, torch.Tensor) and v.requires_grad for v in value):
        needs = [i for i, v in enumerate(value) if isinstance(v, torch.Tensor) and v.requires_grad]
        synced = _SyncInBackward.apply(*[value[i] for i in needs])
        synced = synced if isinstance(synced, tuple) else (synced,)
        items = list(value)
        for i, tensor in zip(needs, synced):
            items[i] = tensor
        return tuple(items)
    return value


def checkpoint(function, *args, **kwargs):
    """Run `function(*args)` without keeping its activations; recompute them in backward."""
    options = _options
    sync = options.synchronize_checkpoint_boundary
    if sync:
        _synchronize()
    started = time.perf_counter() if options.profile else 0.0
    saving = torch.autograd.graph.save_on_cpu(pin_memory=torch.cuda.is_available()) if options.cpu_checkpointing else contextlib.nullcontext()
    with saving:
        outputs = torch_checkpoint.checkpoint(function, *args, use_reentrant=False, preserve_rng_state=True, **kwargs)
    if sync:
        _synchronize()
        outputs = _sync_backward_boundary(outputs)
    if options.profile:
        name = getattr(function, "__name__", type(function).__name__)
        log_dist(f"activation checkpoint {name}: forward {1000 * (time.perf_counter() - started):.2f} ms")
    return outputs


def non_reentrant_checkpoint(function, *args):
    """DeepSpeed's name for the non-reentrant variant; `checkpoint` is already non-reentrant."""
    return checkpoint(function, *args)


class CheckpointFunction(torch.autograd.Function):
    """DeepSpeed's reentrant checkpoint: `apply(run_function, all_outputs, *args)` runs
    `run_function(*args)` without a graph, appends its outputs (non-tensors too) to the list
    `all_outputs` and returns the tensor outputs; backward recomputes the segment under the
    forward's RNG states (CPU, device, model-parallel tracker) and back-propagates through it.

    Parameters inside the segment get gradients only if some tensor input requires grad
    (the reentrant rule); `checkpoint()` has no such limit. Honours `cpu_checkpointing`
    (saved inputs wait on the CPU) and `synchronize_checkpoint_boundary`.
    """

    @staticmethod
    def forward(ctx, run_function, all_outputs: list, *args):
        options = _options
        if options.synchronize_checkpoint_boundary:
            _synchronize()
        ctx.run_function = run_function
        ctx.synchronize = options.synchronize_checkpoint_boundary
        ctx.rng_states = _capture_rng_states()
        ctx.tensor_positions = [i for i, arg in enumerate(args) if isinstance(arg, torch.Tensor)]
        ctx.args = [None if isinstance(arg, torch.Tensor) else arg for arg in args]  # the non-tensor ones
        tensors = [args[i] for i in ctx.tensor_positions]
        ctx.input_devices = [t.device for t in tensors]
        ctx.input_requires_grad = [t.requires_grad for t in tensors]
        if options.cpu_checkpointing:
            tensors = [t.detach().to("cpu") for t in tensors]
        ctx.save_for_backward(*tensors)
        with torch.no_grad():
            outputs = run_function(*args)
        if options.synchronize_checkpoint_boundary:
            _synchronize()
        if isinstance(outputs, torch.Tensor):
            if not outputs.is_floating_point():
                ctx.mark_non_differentiable(outputs)
            all_outputs.append(outputs)
            return outputs
        all_outputs.extend(outputs)
        tensor_outputs = tuple(o for o in outputs if isinstance(o, torch.Tensor))
        ctx.mark_non_differentiable(*[o for o in tensor_outputs if not o.is_floating_point()])
        return tensor_outputs

    @staticmethod
    def backward(ctx, *grads):
        if not torch.autograd._is_checkpoint_valid():
            raise RuntimeError("CheckpointFunction (reentrant activation checkpointing) does not work with "
                               "torch.autograd.grad(); use .backward(), or zerospeed.checkpointing.checkpoint")
        if ctx.synchronize:
            _synchronize()
        args = list(ctx.args)
        inputs = []
        for position, saved, device, requires_grad in zip(
            ctx.tensor_positions, ctx.saved_tensors, ctx.input_devices, ctx.input_requires_grad
        ):
            detached = saved.detach().to(device)
            detached.requires_grad_(requires_grad)
            args[position] = detached
            inputs.append(detached)
        with _forward_rng_states(ctx.rng_states), torch.enable_grad():
            outputs = ctx.run_function(*args)
        if isinstance(outputs, torch.Tensor):
            outputs = (outputs,)
        tensor_outputs = [o for o in outputs if isinstance(o, torch.Tensor)]
        pairs = [(o, g) for o, g in zip(tensor_outputs, grads) if o.requires_grad]
        if pairs:
            torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])
        if ctx.synchronize:
            _synchronize()
        input_grads = iter(t.grad for t in inputs)
        arg_grads = [next(input_grads) if isinstance(arg, torch.Tensor) else None for arg in args]
        ctx.run_function = ctx.args = None  # the segment's closure and arguments are not kept past backward
        return (None, None, *arg_grads)


def _capture_rng_states() -> tuple:
    """The CPU, current-device and tracker RNG states a segment's forward ran under."""
    device_state = torch.cuda.get_rng_state() if torch.cuda.is_available() else None
    return torch.get_rng_state(), device_state, _RNG_TRACKER.get_states()


@contextlib.contextmanager
def _forward_rng_states(states: tuple):
    """Run a block under the captured states; every generator is put back afterwards."""
    cpu_state, device_state, tracker_states = states
    backward_tracker_states = _RNG_TRACKER.get_states()
    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if device_state is not None else []):
        torch.set_rng_state(cpu_state)
        if device_state is not None:
            torch.cuda.set_rng_state(device_state)
        _RNG_TRACKER.set_states(tracker_states)
        try:
            yield
        finally:
            _RNG_TRACKER.set_states(backward_tracker_states)


# -- model-parallel RNG (Megatron's tracker): separate, forkable generator states by name ----
class CudaRNGStatesTracker:
    """Named RNG states; `fork(name)` runs a block under that state and advances it."""

    def __init__(self) -> None:
        self.states_: dict[str, torch.Tensor] = {}
        self.seeds_: set[int] = set()

    def reset(self) -> None:
        self.states_, self.seeds_ = {}, set()

    def get_states(self) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self.states_.items()}

    def set_states(self, states: dict[str, torch.Tensor]) -> None:
        self.states_ = dict(states)

    def add(self, name: str, seed: int) -> None:
        if seed in self.seeds_:
            raise ValueError(f"seed {seed} already exists")
        if name in self.states_:
            raise ValueError(f"cuda rng state {name} already exists")
        self.seeds_.add(seed)
        with torch.random.fork_rng(devices=_rng_devices()):
            _manual_seed(seed)
            self.states_[name] = _get_state()

    @contextlib.contextmanager
    def fork(self, name: str = "model-parallel-rng"):
        if name not in self.states_:
            raise KeyError(f"cuda rng state {name} is not added")
        original = _get_state()
        _set_state(self.states_[name])
        try:
            yield
        finally:
            self.states_[name] = _get_state()
            _set_state(original)


def _rng_devices() -> list:
    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []


def _manual_seed(seed: int) -> None:
    if torch.cuda.is_available():
        torch.cuda.manual_seed(seed)
    else:
        torch.manual_seed(seed)


def _get_state() -> torch.Tensor:
    return torch.cuda.get_rng_state() if torch.cuda.is_available() else torch.get_rng_state()


def _set_state(state: torch.Tensor) -> None:
    if torch.cuda.is_available():
        torch.cuda.set_rng_state(state)
    else:
        torch.set_rng_state(state)


_RNG_TRACKER = CudaRNGStatesTracker()


def get_cuda_rng_tracker() -> CudaRNGStatesTracker:
    return _RNG_TRACKER


def model_parallel_cuda_manual_seed(seed: int) -> None:
    """Megatron's seeding: the default generator gets `seed`; the tracker's model-parallel
    state gets `seed + 2718 + tensor-parallel rank`, so dropout differs across tensor slices."""
    tp_rank = 0
    if mpu is not None:
        getter = getattr(mpu, "get_tensor_model_parallel_rank", None) or getattr(mpu, "get_model_parallel_rank")
        tp_rank = getter()
    _RNG_TRACKER.reset()
    _manual_seed(seed)
    _RNG_TRACKER.add("model-parallel-rng", seed + 2718 + tp_rank)
