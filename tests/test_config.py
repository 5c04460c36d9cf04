import pytest
import torch

from course_lib import config


def test_pick_follows_profile():
    for name, want in [("smoke", 1), ("cpu", 2), ("gpu", 3)]:
        assert config.get_config(name).pick(smoke=1, cpu=2, gpu=3) == want


def test_profile_from_environment(monkeypatch):
    monkeypatch.setenv("COURSE_PROFILE", "cpu")
    assert config.get_config().profile == "cpu"
    monkeypatch.setenv("COURSE_PROFILE", " SMOKE ")
    assert config.get_config().profile == "smoke"


def test_default_profile_depends_on_cuda(monkeypatch):
    monkeypatch.delenv("COURSE_PROFILE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert config.get_config().profile == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert config.default_profile() == "gpu"


def test_unknown_profile_lists_valid_ones(monkeypatch):
    monkeypatch.setenv("COURSE_PROFILE", "laptop")
    with pytest.raises(ValueError, match="smoke, cpu, gpu"):
        config.get_config()


def test_train_split_is_validated(monkeypatch):
    monkeypatch.setenv("COURSE_TRAIN_SPLIT", "validation")
    with pytest.raises(ValueError, match="COURSE_TRAIN_SPLIT"):
        config.get_config("smoke")


def test_seed_everything_reproduces():
    g1 = config.seed_everything(3)
    a = torch.randn(3), torch.randn(3, generator=g1)
    g2 = config.seed_everything(3)
    b = torch.randn(3), torch.randn(3, generator=g2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_device_is_cpu_here_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert config.default_device().type in ("cpu", "mps")


def test_threads_from_environment_are_applied(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("COURSE_THREADS", "1")
        cfg = config.get_config("smoke")
        assert cfg.threads == 1 and torch.get_num_threads() == 1
        assert "1 threads" in cfg.describe()
        monkeypatch.setenv("COURSE_THREADS", "many")
        with pytest.raises(ValueError, match="COURSE_THREADS must be a positive integer"):
            config.get_config("smoke")
        monkeypatch.setenv("COURSE_THREADS", "0")
        with pytest.raises(ValueError, match="COURSE_THREADS"):
            config.get_config("smoke")
        monkeypatch.delenv("COURSE_THREADS")
        assert config.get_config("smoke").threads is None
    finally:
        torch.set_num_threads(before)
