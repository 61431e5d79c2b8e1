"""1F1B and inference schedules, checked as plain instruction lists (no processes)."""

import pytest

from zerospeed.pipe import schedule as s

CASES = [(p, m) for p in (1, 2, 3, 4) for m in (1, 2, 3, 4, 8)]


def _program(p, m, stage):
    return s.TrainSchedule(micro_batches=m, stages=p, stage_id=stage).instructions()


def _micro_batches(program, kind):
    return [cmd.micro_batch for cmd in program if type(cmd) is kind]


@pytest.mark.parametrize("p,m", CASES)
def test_every_micro_batch_runs_forward_then_backward_once_in_order(p, m):
    for stage in range(p):
        program = _program(p, m, stage)
        assert _micro_batches(program, s.ForwardPass) == list(range(m))
        assert _micro_batches(program, s.BackwardPass) == list(range(m))
        position = {(type(c), c.micro_batch): i for i, c in enumerate(program) if hasattr(c, "micro_batch")}
        for mb in range(m):
            assert position[(s.ForwardPass, mb)] < position[(s.BackwardPass, mb)]


@pytest.mark.parametrize("p,m", CASES)
def test_one_f_one_b_keeps_at_most_p_minus_stage_in_flight(p, m):
    for stage in range(p):
        in_flight, peak, buffers = 0, 0, {}
        for cmd in _program(p, m, stage):
            if isinstance(cmd, s.ForwardPass):
                in_flight += 1
                assert cmd.buffer_id not in buffers, f"buffer {cmd.buffer_id} reused while micro-batch {buffers.get(cmd.buffer_id)} in flight"
                buffers[cmd.buffer_id] = cmd.micro_batch
            elif isinstance(cmd, s.BackwardPass):
                in_flight -= 1
                assert buffers.pop(cmd.buffer_id) == cmd.micro_batch
            peak = max(peak, in_flight)
        assert peak == min(p - stage, m) <= p
        assert s.TrainSchedule(m, p, stage).num_pipe_buffers() == max(1, min(p - stage, m))


@pytest.mark.parametrize("p,m", CASES)
def test_every_send_has_its_receive_on_the_neighbour_in_the_same_order(p, m):
    programs = [_program(p, m, stage) for stage in range(p)]
    for stage in range(p - 1):
        assert _micro_batches(programs[stage], s.SendActivation) == _micro_batches(programs[stage + 1], s.RecvActivation) == list(range(m))
        assert _micro_batches(programs[stage + 1], s.SendGrad) == _micro_batches(programs[stage], s.RecvGrad) == list(range(m))
    assert not _micro_batches(programs[0], s.RecvActivation) and not _micro_batches(programs[0], s.SendGrad)
    assert not _micro_batches(programs[-1], s.SendActivation) and not _micro_batches(programs[-1], s.RecvGrad)


@pytest.mark.parametrize("p,m", CASES)
def test_async_sends_and_blocking_receives_cannot_deadlock(p, m):
    order = s.simulate([s.TrainSchedule(m, p, stage) for stage in range(p)])
    assert len(order) == sum(len(_program(p, m, stage)) for stage in range(p))
    order = s.simulate([s.InferenceSchedule(m, p, stage) for stage in range(p)])
    assert len(order) == sum(len(s.InferenceSchedule(m, p, st).instructions()) for st in range(p))


def test_simulate_names_a_deadlock():
    class Backwards(s.TrainSchedule):  # receives a gradient before anything was sent
        def steps(self):
            yield [s.RecvGrad(0, 0)] if self.stage_id == 0 else [s.RecvActivation(0, 0)]

    with pytest.raises(RuntimeError, match="deadlock"):
        s.simulate([Backwards(1, 2, 0), Backwards(1, 2, 1)])


@pytest.mark.parametrize("p,m", CASES)
def test_data_loaded_only_on_first_and_last_stage_and_step_ends_the_schedule(p, m):
    for stage in range(p):
        program = _program(p, m, stage)
        loads = _micro_batches(program, s.LoadMicroBatch)
        assert loads == (list(range(m)) if stage in (0, p - 1) else [])
        assert program[-3:] == [s.ReduceTiedGrads(), s.ReduceGrads(), s.OptimizerStep()]
        assert sum(isinstance(c, s.OptimizerStep) for c in program) == 1


def test_schedule_prints_deepspeed_instruction_names():
    text = str(s.TrainSchedule(micro_batches=2, stages=2, stage_id=0))
    assert text.splitlines()[0] == "  0: LoadMicroBatch(buffer_id=0, micro_batch=0), ForwardPass(buffer_id=0, micro_batch=0), SendActivation(buffer_id=0, micro_batch=0)"
    assert "RecvGrad(buffer_id=0, micro_batch=0), BackwardPass(buffer_id=0, micro_batch=0)" in text
    assert text.splitlines()[-1].endswith("ReduceTiedGrads(), ReduceGrads(), OptimizerStep()")
    last = s.TrainSchedule(2, 2, 1).instructions()
    assert [c.name for c in last[:5]] == ["RecvActivation", "LoadMicroBatch", "ForwardPass", "BackwardPass", "SendGrad"]


def test_inference_and_data_parallel_schedules():
    middle = s.InferenceSchedule(3, 3, 1).instructions()
    assert [c.name for c in middle[:3]] == ["RecvActivation", "ForwardPass", "SendActivation"]
    assert not any(isinstance(c, (s.BackwardPass, s.OptimizerStep)) for c in middle)
    dp = s.DataParallelSchedule(2, 1, 0).instructions()
    assert [c.name for c in dp] == ["LoadMicroBatch", "ForwardPass", "BackwardPass"] * 2 + ["ReduceGrads", "OptimizerStep"]
    with pytest.raises(ValueError):
        s.TrainSchedule(0, 2, 0)
