"""Mapping a released checkpoint's tensor names onto an fmriflow module, every tensor accounted for.

A ``KeyMap`` holds rename rules (regular expression -> replacement, the first match wins), the
released tensors that are dropped on purpose (with the reason, e.g. a head the released forward
never calls), the module's tensors that come from elsewhere (e.g. the atlas coordinates) and the
released tensors whose layout differs from the module's (a function that rearranges them, e.g. a
Linear over flattened patches into the equivalent convolution, or channels first to channels last).
``apply`` refuses a checkpoint with any tensor that no rule maps, any module tensor left without a
value, or any shape that differs, and lists them all.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import torch

from ..errors import InputError

_LISTED = 20  # names shown per problem; the count says how many more


@dataclass(frozen=True)
class KeyMap:
    rules: tuple[tuple[str, str], ...]  # (pattern matched against the whole released name, replacement)
    dropped: Mapping[str, str] = field(default_factory=dict)  # released-name pattern -> why it is not used
    supplied: tuple[str, ...] = ()  # module tensors that the checkpoint does not hold
    converted: Mapping[str, Callable[[torch.Tensor], torch.Tensor]] = field(default_factory=dict)  # released-name pattern -> layout change

    def convert(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        for pattern, function in self.converted.items():
            if re.fullmatch(pattern, name):
                return function(tensor)
        return tensor

    def rename(self, name: str) -> str | None:
        """The module's name for a released tensor; None where no rule matches."""
        for pattern, replacement in self.rules:
            if re.fullmatch(pattern, name):
                return re.sub(f"^{pattern}$", replacement, name)
        return None

    def is_dropped(self, name: str) -> bool:
        return any(re.fullmatch(pattern, name) for pattern in self.dropped)

    def apply(self, released: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor],
              source: str | Path) -> dict[str, torch.Tensor]:
        """``released`` under the module's names; ``expected``: the module's state dict (names and shapes)."""
        mapped, unmapped, shapes = {}, [], []
        for name, tensor in released.items():
            if self.is_dropped(name):
                continue
            ours = self.rename(name)
            if ours is None or ours not in expected:
                unmapped.append(name if ours is None else f"{name} (-> {ours}, not in the module)")
                continue
            try:
                converted = self.convert(name, tensor)
            except RuntimeError:  # a layout change that the released shape does not allow
                converted = None
            if converted is None or tuple(converted.shape) != tuple(expected[ours].shape):
                shapes.append(f"{name} {tuple(tensor.shape)} vs {ours} {tuple(expected[ours].shape)}")
                continue
            mapped[ours] = converted
        missing = sorted(set(expected) - set(mapped) - set(self.supplied))
        problems = [f"{what} ({len(names)}): {', '.join(names[:_LISTED])}"
                    + (f", and {len(names) - _LISTED} more" if len(names) > _LISTED else "")
                    for what, names in (("unmapped checkpoint tensors", unmapped),
                                        ("module tensors missing from the checkpoint", missing),
                                        ("shapes that differ", shapes)) if names]
        if problems:
            raise InputError(source, "the checkpoint does not fit the model its config describes; "
                             + "; ".join(problems))
        return mapped
