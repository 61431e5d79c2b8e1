"""Pipeline schedules as plain instruction lists (DeepSpeed's instruction names), pure and printable.

A schedule is built for one stage: `steps()` yields lists of instructions, one list per
forward or backward of a micro-batch together with the transfers around it;
`instructions()` flattens them. No process, no tensor: tests check the lists directly.

`TrainSchedule` is 1F1B (PipeDream-flush): stage s runs `min(p - s - 1, m)` warm-up
forwards, then alternates one forward and one backward, then drains the remaining
backwards, so at most `p - s` micro-batches are in flight on stage s. The engine issues
every send asynchronously and every receive as a blocking wait; with that rule the
1F1B order cannot deadlock (a stage only ever waits for a message its neighbour sends
before waiting on anything itself — `simulate()` checks it).
"""

from __future__ import annotations


class PipeInstruction:
    """One step of a schedule; keyword arguments become attributes (`buffer_id`, `micro_batch`)."""

    def __init__(self, **kwargs) -> None:
        self.name = type(self).__name__
        self.kwargs = kwargs
        for key, value in kwargs.items():
            setattr(self, key, value)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.kwargs.items())
        return f"{self.name}({args})"

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and self.kwargs == other.kwargs

    def __hash__(self) -> int:
        return hash((self.name, tuple(sorted(self.kwargs.items()))))


class OptimizerStep(PipeInstruction):
    """Step the optimizer (after ReduceTiedGrads and ReduceGrads)."""


class ReduceGrads(PipeInstruction):
    """Reduce gradients over the data-parallel ranks of this stage."""


class ReduceTiedGrads(PipeInstruction):
    """Sum gradients of tied weights over the stages that hold a copy."""


class BufferOpInstruction(PipeInstruction):
    """An instruction on pipeline buffer `buffer_id`, for micro-batch `micro_batch`."""

    def __init__(self, buffer_id: int, micro_batch: int | None = None, **kwargs) -> None:
        if micro_batch is None:
            super().__init__(buffer_id=buffer_id, **kwargs)
        else:
            super().__init__(buffer_id=buffer_id, micro_batch=micro_batch, **kwargs)


class LoadMicroBatch(BufferOpInstruction):
    """Read the next batch: inputs on the first stage, labels on the last."""


class ForwardPass(BufferOpInstruction):
    """Run this stage's layers on the buffer's inputs."""


class BackwardPass(BufferOpInstruction):
    """Backward from the loss (last stage) or from the received output gradients."""


class SendActivation(BufferOpInstruction):
    """Send the buffer's outputs to the next stage (asynchronous)."""


class RecvActivation(BufferOpInstruction):
    """Receive the buffer's inputs from the previous stage (blocking)."""


class SendGrad(BufferOpInstruction):
    """Send the gradients of the buffer's inputs to the previous stage (asynchronous)."""


class RecvGrad(BufferOpInstruction):
    """Receive the gradients of the buffer's outputs from the next stage (blocking)."""


class PipeSchedule:
    """Instructions for `micro_batches` micro-batches on stage `stage_id` of `stages`."""

    def __init__(self, micro_batches: int, stages: int, stage_id: int) -> None:
        if micro_batches < 1 or stages < 1 or not 0 <= stage_id < stages:
            raise ValueError(f"micro_batches={micro_batches}, stages={stages}, stage_id={stage_id}: need m>=1, 0<=stage<stages")
        self.micro_batches = micro_batches
        self.stages = stages
        self.stage_id = stage_id
        self.prev_stage = stage_id - 1
        self.next_stage = stage_id + 1

    @property
    def is_first_stage(self) -> bool:
        return self.stage_id == 0

    @property
    def is_last_stage(self) -> bool:
        return self.stage_id == self.stages - 1

    @property
    def stage(self) -> int:
        return self.stage_id

    @property
    def num_stages(self) -> int:
        return self.stages

    @property
    def num_micro_batches(self) -> int:
        return self.micro_batches

    def num_pipe_buffers(self) -> int:
        return self.micro_batches

    def _buffer_idx(self, micro_batch: int) -> int:
        return micro_batch % self.num_pipe_buffers()

    def steps(self):
        raise NotImplementedError

    def instructions(self) -> list[PipeInstruction]:
        return [cmd for step in self.steps() for cmd in step]

    def __iter__(self):
        return iter(self.steps())

    def __str__(self) -> str:
        return "\n".join(f"{i:3d}: {', '.join(map(repr, step))}" for i, step in enumerate(self.steps()))

    def _forward_step(self, micro_batch: int) -> list[PipeInstruction]:
        buffer = self._buffer_idx(micro_batch)
        cmds: list[PipeInstruction] = []
        if not self.is_first_stage:
            cmds.append(RecvActivation(buffer, micro_batch))
        if self.is_first_stage or self.is_last_stage:
            cmds.append(LoadMicroBatch(buffer, micro_batch))
        cmds.append(ForwardPass(buffer, micro_batch))
        if not self.is_last_stage:
            cmds.append(SendActivation(buffer, micro_batch))
        return cmds


class TrainSchedule(PipeSchedule):
    """1F1B training: warm-up forwards, one-forward-one-backward, drain, then reduce and step."""

    def num_pipe_buffers(self) -> int:
        return max(1, min(self.stages - self.stage_id, self.micro_batches))

    def warmup(self) -> int:
        return min(self.stages - self.stage_id - 1, self.micro_batches)

    def _backward_step(self, micro_batch: int) -> list[PipeInstruction]:
        buffer = self._buffer_idx(micro_batch)
        cmds: list[PipeInstruction] = []
        if not self.is_last_stage:
            cmds.append(RecvGrad(buffer, micro_batch))
        cmds.append(BackwardPass(buffer, micro_batch))
        if not self.is_first_stage:
            cmds.append(SendGrad(buffer, micro_batch))
        return cmds

    def steps(self):
        warmup, m = self.warmup(), self.micro_batches
        plan = [("F", i) for i in range(warmup)]
        for j in range(m - warmup):
            plan += [("F", warmup + j), ("B", j)]
        plan += [("B", j) for j in range(m - warmup, m)]
        for index, (kind, micro_batch) in enumerate(plan):
            cmds = self._forward_step(micro_batch) if kind == "F" else self._backward_step(micro_batch)
            if index == len(plan) - 1:
                cmds += [ReduceTiedGrads(), ReduceGrads(), OptimizerStep()]
            yield cmds


class InferenceSchedule(PipeSchedule):
    """Forward only: each micro-batch is received, computed and sent on, in order."""

    def num_pipe_buffers(self) -> int:
        return 2

    def steps(self):
        for micro_batch in range(self.micro_batches):
            yield self._forward_step(micro_batch)


class DataParallelSchedule(PipeSchedule):
    """One stage, gradient accumulation: load, forward, backward per micro-batch, then step."""

    def num_pipe_buffers(self) -> int:
        return 1

    def steps(self):
        for micro_batch in range(self.micro_batches):
            cmds: list[PipeInstruction] = [LoadMicroBatch(0, micro_batch), ForwardPass(0, micro_batch), BackwardPass(0, micro_batch)]
            if micro_batch == self.micro_batches - 1:
                cmds += [ReduceGrads(), OptimizerStep()]
            yield cmds


_PAIRS = {SendActivation: (RecvActivation, +1), SendGrad: (RecvGrad, -1)}
_COLLECTIVES = (ReduceTiedGrads, ReduceGrads, OptimizerStep)


def simulate(schedules: list[PipeSchedule]) -> list[tuple[int, PipeInstruction]]:
    """Run every stage's instructions as the engine does: sends never block, receives wait.

    Returns the global order (stage, instruction) in which they completed; raises
    RuntimeError naming each stage's blocked instruction on a deadlock, or a receive
    whose matching send carries another micro-batch.
    """
    programs = [schedule.instructions() for schedule in schedules]
    cursor = [0] * len(programs)
    queues: dict[tuple[type, int], list[int]] = {}  # (recv kind, receiving stage) -> micro-batches sent
    order: list[tuple[int, PipeInstruction]] = []
    while any(c < len(p) for c, p in zip(cursor, programs)):
        progressed = False
        for stage, program in enumerate(programs):
            while cursor[stage] < len(program):
                cmd = program[cursor[stage]]
                if type(cmd) in _PAIRS:
                    recv_kind, direction = _PAIRS[type(cmd)]
                    queues.setdefault((recv_kind, stage + direction), []).append(cmd.micro_batch)
                elif type(cmd) in (RecvActivation, RecvGrad):
                    waiting = queues.get((type(cmd), stage), [])
                    if not waiting:
                        break
                    sent = waiting.pop(0)
                    if sent != cmd.micro_batch:
                        raise RuntimeError(f"stage {stage}: {cmd!r} received micro-batch {sent}")
                elif isinstance(cmd, _COLLECTIVES):
                    pass  # data-parallel / tie collectives: every stage reaches them last
                order.append((stage, cmd))
                cursor[stage] += 1
                progressed = True
        if not progressed:
            blocked = {s: programs[s][c] for s, c in enumerate(cursor) if c < len(programs[s])}
            raise RuntimeError(f"pipeline deadlock: blocked instructions {blocked}")
    return order
