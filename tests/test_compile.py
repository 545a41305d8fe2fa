"""MODEL.COMPILE: compiled training and evaluation give eager's numbers, keep the reference's
state-dict names, and fall back to eager with one warning when compilation fails.

On the CPU the compiled runs use the 'aot_eager' backend: Dynamo's graph capture and
AOTAutograd's forward and backward graphs, without Inductor's C++ code generation, which takes
minutes on a small CPU. On a GPU the last test compiles with Inductor.
"""
import functools
import logging

import pytest
import torch

from benchmarks.bench_train import build_trainer, random_batch
from config import ConfigError, load_config
from processor.compiled import compile_enabled
from processor.inference import FeatureExtractor

SIZES = (8, 3, 1)  # classes, cameras, views
# No stochastic depth: compiled code draws its random numbers differently from eager.
DETERMINISTIC = ["MODEL.DROP_PATH", "0.0", "MODEL.METRIC_LOSS_TYPE", "triplet_center"]


@pytest.fixture
def aot_eager(monkeypatch):
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))


def config(tiny_opts, *opts):
    return load_config("", tiny_opts + DETERMINISTIC + list(opts))


def step_once(trainer, batch):
    loss, _ = trainer.train_step(batch, epoch=1, n_iter=1)
    return loss, {name: value.detach().clone() for name, value in trainer.model.named_parameters()}


def features(cfg, model, batch, compile_):
    images, _, cams, views = batch
    extractor = FeatureExtractor(cfg, model, torch.device("cpu"), compile=compile_)
    return extractor.features(images, cams, views), extractor


def test_the_choice_is_checked_and_auto_means_cuda_only(tiny_opts):
    with pytest.raises(ConfigError, match="MODEL.COMPILE.*'sometimes'.*'auto', 'on', 'off'"):
        load_config("", tiny_opts + ["MODEL.COMPILE", "sometimes"])
    cfg = load_config("", tiny_opts)
    assert cfg.MODEL.COMPILE == "auto"
    assert not compile_enabled(cfg, torch.device("cpu"))
    assert compile_enabled(cfg, torch.device("cuda"))
    on = load_config("", tiny_opts + ["MODEL.COMPILE", "on"])
    assert compile_enabled(on, torch.device("cpu"))
    off = load_config("", tiny_opts + ["MODEL.COMPILE", "off"])
    assert not compile_enabled(off, torch.device("cuda"))


def test_compiled_training_and_features_match_eager_and_keep_the_names(tiny_opts, aot_eager):
    cfg = config(tiny_opts)
    batch = random_batch(cfg, 16, SIZES, torch.device("cpu"))
    eager = build_trainer(cfg, SIZES, compile_model=False)
    compiled = build_trainer(cfg, SIZES, compile_model=True)
    assert compiled.forward.is_compiled and not eager.forward.is_compiled
    eager_loss, eager_params = step_once(eager, batch)
    compiled_loss, compiled_params = step_once(compiled, batch)
    assert compiled.forward.is_compiled  # it compiled, no fallback
    assert compiled_loss.item() == pytest.approx(eager_loss.item(), rel=1e-5)
    for name, value in eager_params.items():
        torch.testing.assert_close(compiled_params[name], value, rtol=1e-4, atol=1e-6)

    # The trainer's model, and so checkpoints, keep the reference's names.
    names = set(compiled.model.state_dict())
    assert names == set(eager.model.state_dict())
    path = compiled.checkpointer.save_weights(1)
    compiled.checkpointer.writer.wait()  # written in the background
    saved = torch.load(path, weights_only=True)
    assert set(saved) == names and not any("_orig_mod" in name for name in names)

    eval_batch = random_batch(cfg, 8, SIZES, torch.device("cpu"), train=False)
    expected, _ = features(cfg, eager.model, eval_batch, compile_=False)
    actual, extractor = features(cfg, eager.model, eval_batch, compile_=True)
    assert extractor.backend.forward.is_compiled and extractor.backend.model is eager.model
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)


def compile_error(message):
    cause = RuntimeError(message)
    return torch._dynamo.exc.BackendCompilerFailed(lambda *a: None, cause, None)


def failing_compile(monkeypatch, when):
    """torch.compile wraps without complaint and fails at the first call ('forward') or in the
    first backward ('backward'), as real compile errors do; counts its wrappers."""
    made = []

    class FailsInBackward(torch.autograd.Function):
        @staticmethod
        def forward(ctx, tensor):
            return tensor.clone()

        @staticmethod
        def backward(ctx, grad):
            raise torch._dynamo.exc.TorchDynamoException("backward graph: unsupported op")

    def fake_compile(module, **kwargs):
        def call(*args, **kw):
            if when == "forward":
                raise compile_error("no working C++ compiler")
            score, feat = module(*args, **kw)
            return [FailsInBackward.apply(s) for s in score], feat
        made.append(module)
        return call
    monkeypatch.setattr(torch, "compile", fake_compile)
    return made


def warnings_of(caplog):
    return [record for record in caplog.records
            if record.name == "transreid.compile" and record.levelno == logging.WARNING]


@pytest.mark.parametrize("when", ["forward", "backward"])
def test_a_failing_compile_trains_eagerly_after_one_warning(tiny_opts, monkeypatch, caplog, when):
    cfg = config(tiny_opts)
    batch = random_batch(cfg, 16, SIZES, torch.device("cpu"))
    eager_loss, eager_params = step_once(build_trainer(cfg, SIZES, compile_model=False), batch)
    failing_compile(monkeypatch, when)
    trainer = build_trainer(cfg, SIZES, compile_model=True)
    with caplog.at_level(logging.WARNING):
        loss, params = step_once(trainer, batch)
        trainer.train_step(batch, epoch=1, n_iter=2)
    warnings = warnings_of(caplog)
    assert len(warnings) == 1 and not trainer.forward.is_compiled
    cause = "no working C++ compiler" if when == "forward" else "backward graph: unsupported op"
    assert "training forward" in warnings[0].getMessage() and cause in warnings[0].getMessage()
    # The retried step is an eager step from cleared gradients.
    assert loss.item() == pytest.approx(eager_loss.item(), rel=1e-6)
    for name, value in eager_params.items():
        torch.testing.assert_close(params[name], value, rtol=1e-5, atol=1e-7)


def test_a_failing_compile_extracts_eagerly_and_warns_once_per_model(tiny_opts, monkeypatch,
                                                                     caplog):
    cfg = config(tiny_opts)
    model = build_trainer(cfg, SIZES, compile_model=False).model
    batch = random_batch(cfg, 8, SIZES, torch.device("cpu"), train=False)
    expected, _ = features(cfg, model, batch, compile_=False)
    made = failing_compile(monkeypatch, "forward")
    with caplog.at_level(logging.WARNING):
        first, _ = features(cfg, model, batch, compile_=True)
        # Training's evaluation builds an extractor per evaluation: no second attempt.
        second, extractor = features(cfg, model, batch, compile_=True)
    assert len(made) == 1 and not extractor.backend.forward.is_compiled
    assert len(warnings_of(caplog)) == 1
    assert "evaluation forward" in warnings_of(caplog)[0].getMessage()
    assert torch.equal(first, expected) and torch.equal(second, expected)


def test_errors_that_are_not_compile_errors_are_raised(tiny_opts, monkeypatch):
    cfg = config(tiny_opts)

    def out_of_memory(module, **kwargs):
        def call(*args, **kw):
            raise torch.OutOfMemoryError("CUDA out of memory")
        return call
    monkeypatch.setattr(torch, "compile", out_of_memory)
    trainer = build_trainer(cfg, SIZES, compile_model=True)
    with pytest.raises(torch.OutOfMemoryError):
        trainer.train_step(random_batch(cfg, 16, SIZES, torch.device("cpu")), epoch=1, n_iter=1)
    assert trainer.forward.is_compiled


@pytest.mark.skipif(not torch.cuda.is_available(), reason="Inductor on a GPU")
def test_inductor_on_the_gpu_matches_eager(tiny_opts):
    cuda = torch.device("cuda")
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        cfg = config(tiny_opts, "MODEL.DEVICE", "cuda", "SOLVER.AMP_DTYPE", "fp32")
        batch = random_batch(cfg, 16, SIZES, cuda)
        eager_loss, eager_params = step_once(build_trainer(cfg, SIZES, compile_model=False), batch)
        compiled = build_trainer(cfg, SIZES, compile_model=True)
        loss, params = step_once(compiled, batch)
        assert compiled.forward.is_compiled
        assert loss.item() == pytest.approx(eager_loss.item(), rel=1e-4)
        for name, value in eager_params.items():
            torch.testing.assert_close(params[name], value, rtol=1e-3, atol=1e-5)
        images, _, cams, views = random_batch(cfg, 8, SIZES, cuda, train=False)
        plain = FeatureExtractor(cfg, compiled.model, cuda, compile=False)
        fast = FeatureExtractor(cfg, compiled.model, cuda, compile=True)
        torch.testing.assert_close(fast.features(images, cams, views),
                                   plain.features(images, cams, views), rtol=1e-3, atol=1e-4)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
