"""Dynamic batching (issue 16, workers/batching.py): images from several analysis threads go
through the networks together and each gets exactly what it would have got alone."""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

from tests.unit.test_ensemble import _bundle
from workers.batching import InferenceBatcher
from workers.ensemble import Ensemble, LoadedMember
from workers.networks import build_network


def _ensemble() -> Ensemble:
    members = []
    for seed, weight in ((0, 1.0), (1, 0.5)):
        torch.manual_seed(seed)
        network = build_network("densenet121", 1, 3).eval()
        with torch.no_grad():
            for module in network.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.running_mean.uniform_(-0.1, 0.1)
                    module.running_var.uniform_(0.5, 1.5)
        members.append(LoadedMember(_bundle(["A", "B", "C"], 64), weight, network))
    return Ensemble(members, torch.device("cpu"))


def _probabilities(inference: object) -> list[float]:
    return [p.probability for p in inference.predictions]  # type: ignore[attr-defined]


def test_batched_answers_equal_the_answers_alone_and_come_in_fewer_passes() -> None:
    ensemble = _ensemble()
    generator = torch.Generator().manual_seed(7)
    images = [torch.rand(1, 1, 64, 64, generator=generator) * 2048 - 1024 for _ in range(6)]
    alone = [ensemble.infer(image) for image in images]
    batcher = InferenceBatcher(ensemble, max_batch=8, max_batch_wait_ms=500)
    answers: dict[int, object] = {}
    start = threading.Barrier(len(images))

    def analyse(index: int) -> None:
        start.wait()
        answers[index] = batcher.infer(images[index])

    threads = [threading.Thread(target=analyse, args=(i,)) for i in range(len(images))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    batcher.close()
    assert batcher.images == 6 and batcher.forward_passes < 6
    for index, expected in enumerate(alone):
        got = answers[index]
        assert _probabilities(got) == pytest.approx(_probabilities(expected), abs=1e-5)
        maps = ensemble.gradcam(got, ["A", "B"])  # type: ignore[arg-type]
        reference = ensemble.gradcam(expected, ["A", "B"])
        for label in ("A", "B"):
            assert maps[label] == pytest.approx(reference[label], abs=1e-4)


def test_a_failing_batch_fails_each_of_its_analyses_and_the_batcher_goes_on() -> None:
    ensemble = _ensemble()
    batcher = InferenceBatcher(ensemble, max_batch=4, max_batch_wait_ms=1)
    with pytest.raises(RuntimeError):
        batcher.infer(torch.zeros(1, 2, 64, 64))  # wrong channel count: the network refuses it
    assert len(batcher.infer(torch.zeros(1, 1, 64, 64)).predictions) == 3
    batcher.close()


def test_without_batching_there_is_no_thread_and_no_wait() -> None:
    ensemble = _ensemble()
    batcher = InferenceBatcher(ensemble, max_batch=1)
    assert len(batcher.infer(torch.zeros(1, 1, 64, 64)).predictions) == 3
    assert batcher._thread is None and batcher.forward_passes == 1


def test_the_analyzer_batches_as_configured(tmp_path: object) -> None:
    from cxr_node.settings import Settings
    from workers.analysis import Analyzer

    analyzer = Analyzer(Settings(max_batch=8, max_batch_wait_ms=2.0), _ensemble())
    assert analyzer.batcher.max_batch == 8 and analyzer.batcher.max_wait == pytest.approx(0.002)
    assert Analyzer(Settings(), _ensemble()).batcher.max_batch == 1  # off unless asked


def test_batches_are_off_on_a_cpu_and_as_wide_as_the_concurrency_on_a_gpu() -> None:
    from workers.batching import default_max_batch

    assert default_max_batch(None, torch.device("cpu"), 3) == 1
    assert default_max_batch(None, torch.device("cuda"), 16) == 16
    assert default_max_batch(4, torch.device("cuda"), 16) == 4


def test_bf16_is_for_cuda_only_and_a_cpu_batch_stays_as_it_is() -> None:
    from workers.ensemble import to_device

    ensemble = _ensemble()
    assert not Ensemble(ensemble.members, torch.device("cpu"), bf16=True).bf16
    batch = torch.rand(2, 1, 64, 64)
    assert to_device(batch, torch.device("cpu")) is batch


@pytest.mark.gpu
def test_on_cuda_the_answers_are_the_cpu_answers() -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine")
    from workers.ensemble import to_device

    cpu = _ensemble()
    cuda = torch.device("cuda")
    members = [
        LoadedMember(m.bundle, m.weight, m.network.to(cuda, memory_format=torch.channels_last))
        for m in _ensemble().members
    ]
    images = torch.rand(4, 1, 64, 64, generator=torch.Generator().manual_seed(3)) * 2048 - 1024
    moved = to_device(images, cuda)
    assert moved.is_cuda and moved.is_contiguous(memory_format=torch.channels_last)
    expected = [_probabilities(i) for i in cpu.infer_many(images)]
    for bf16, tolerance in ((False, 1e-3), (True, 0.03)):
        got = Ensemble(members, cuda, bf16=bf16).infer_many(images)
        for answer, reference in zip(got, expected, strict=True):
            assert _probabilities(answer) == pytest.approx(reference, abs=tolerance)
