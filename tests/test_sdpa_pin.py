"""The SDPA backend's kernel pin (backends/sdpa.py ``_run_sdpa``): during the call exactly the
pinned kernel is enabled, afterwards every flag is as the user left it -- also when the kernel
raises, and whatever the user's flags were."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from anyattn.backends import sdpa as S

KERNELS = list(S._FLAGS)


def _state():
    return tuple(get() for get, _, _ in S._pin_plan("MATH"))


def _set(state):
    for (_, set_, _), on in zip(S._pin_plan("MATH"), state):
        set_(on)


@pytest.mark.parametrize("kernel", KERNELS)
def test_pin_enables_one_kernel_and_restores_any_user_state(kernel, monkeypatch):
    seen = []

    def fake(*a, **kw):
        seen.append(_state())
        return a[0]

    monkeypatch.setattr(F, "scaled_dot_product_attention", fake)
    saved = _state()
    names = [n for n in S._FLAGS][:len(saved)]
    x = torch.zeros(1, 1, 2, 4)
    try:
        for user in itertools.product((False, True), repeat=len(saved)):
            _set(user)
            S._run_sdpa(kernel, x, x, x, None, False, None, False)
            assert seen[-1] == tuple(n == kernel for n in names)
            assert _state() == user
    finally:
        _set(saved)


def test_pin_restores_flags_when_the_kernel_raises(monkeypatch):
    def boom(*a, **kw):
        raise RuntimeError("no kernel")

    monkeypatch.setattr(F, "scaled_dot_product_attention", boom)
    saved = _state()
    x = torch.zeros(1, 1, 2, 4)
    with pytest.raises(RuntimeError, match="no kernel"):
        S._run_sdpa("CUDNN_ATTENTION", x, x, x, None, False, None, False)
    assert _state() == saved
    with pytest.raises(RuntimeError, match="no kernel"):
        with S._PinKernel("FLASH_ATTENTION"):
            F.scaled_dot_product_attention(x, x, x)
    assert _state() == saved
