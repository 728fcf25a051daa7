"""Named ranges of a generator's ws: the words `--layers` and `explore.layers` accept.

Layer ranges are half-open ranges [first, stop) of the generator's ws, named as in the StyleGAN papers by
the resolution of the convolutions they drive: coarse 4-8 px, middle 16-32 px, fine 64 px and up. In our
generator w index 0 drives the 4x4 conv and index j >= 1 the conv at 4 * 2**ceil(j / 2) px (the last w
feeds only the final toRGB), so coarse is [0, 3), middle [3, 7) and fine [7, num_ws).

A fact of this generator's ws layout, so it lives with the model; it needs nothing but `re`, so params.py
can check a spec without importing torch.
"""

from __future__ import annotations

import re

LAYER_NAMES = ("all", "coarse", "middle", "fine")
LAYERS_HELP = "all | coarse (4-8 px) | middle (16-32 px) | fine (64 px and up) | FIRST-STOP (ws indices)"
_NAMED = {"coarse": (0, 3), "middle": (3, 7), "fine": (7, None)}
_RANGE = re.compile(r"^(\d+)-(\d+)$")


def is_layers_spec(spec: str) -> bool:
    """Whether `spec` is a layer-range name or a 'FIRST-STOP' range (not yet checked against a model)."""
    return spec in LAYER_NAMES or _RANGE.match(spec) is not None


def layer_range(spec: str, num_ws: int) -> tuple[int, int]:
    """The half-open ws range [first, stop) named by `spec` for a generator with `num_ws` ws.

    Raises ValueError when the name is unknown or the range is empty for this generator (a 16-px model has
    no fine layers).
    """
    if spec == "all":
        return 0, num_ws
    if spec in _NAMED:
        first, stop = _NAMED[spec]
        first, stop = min(first, num_ws), num_ws if stop is None else min(stop, num_ws)
    elif (m := _RANGE.match(spec)) is not None:
        first, stop = int(m.group(1)), int(m.group(2))
        if stop > num_ws:
            raise ValueError(f"layers {spec!r}: this generator has ws 0..{num_ws - 1} (stop <= {num_ws})")
    else:
        raise ValueError(f"layers {spec!r}: must be {LAYERS_HELP}")
    if first >= stop:
        raise ValueError(f"layers {spec!r}: no ws in this range for a generator with {num_ws} ws")
    return first, stop
