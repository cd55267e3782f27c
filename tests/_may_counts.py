"""MAY's parameter counts worked out by hand from the official layer list, for tests.

Written from ``mobilenetv3-SEOFF.yaml`` of the authors' repository (the same backbone with every
SE slot off) and ECA's kernel rule, sharing no code with ``mlca.models``.
"""

from __future__ import annotations

import math


def eca_kernel(c: int) -> int:
    """ECA's rule with gamma 2, b 1: t = int(|log2 C + 1| / 2), made odd upwards."""
    t = int(abs(math.log2(c) + 1) / 2)
    return t if t % 2 else t + 1


def official_may_params(nc: int = 20) -> int:
    """Parameters of MAY without attention: conv weights + BN weight/bias; Detect convs have biases."""

    def conv_bn(c1, c2, k=1, g=1):
        return c1 // g * c2 * k * k + 2 * c2

    def mbv3(c1, c2, hid, k):  # expand (absent when hid == c1), depthwise, project
        n = 0 if hid == c1 else conv_bn(c1, hid)
        return n + conv_bn(hid, hid, k, hid) + conv_bn(hid, c2)

    def c3(c1, c2):
        h = c2 // 2
        return 2 * conv_bn(c1, h) + conv_bn(2 * h, c2) + conv_bn(h, h) + conv_bn(h, h, 3)

    table = [(16, 16, 3), (24, 72, 3), (24, 88, 3), (40, 96, 5), (40, 240, 5), (40, 240, 5),
             (48, 120, 5), (48, 144, 5), (96, 288, 5), (96, 576, 5), (96, 576, 5)]
    n, c = conv_bn(3, 16, 3), 16
    for out, hid, k in table:
        n += mbv3(c, out, hid, k)
        c = out
    n += conv_bn(96, 256) + c3(256 + 48, 256) + conv_bn(256, 128) + c3(128 + 24, 128)
    n += conv_bn(128, 128, 3) + c3(128 + 128, 256) + conv_bn(256, 256, 3) + c3(256 + 256, 512)
    n += sum(ch * 3 * (nc + 5) + 3 * (nc + 5) for ch in (128, 256, 512))
    return n
