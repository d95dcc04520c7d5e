"""A front-end's registry of lowerings: operator name -> the function that lowers one node of that operator
into a typed IR operation (``..ir``). Each front-end keeps one (``torch_lowerings.TORCH_LOWERINGS``,
``onnx_lowerings.ONNX_LOWERINGS``), filled by a decorator per operator family; its names are the list of
supported operators."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from nnprobe_services.vision.receptive_fields.ir import Operation

#: What a lowering reads: the front-end's view of one node.
Site = TypeVar("Site")
Lowering = Callable[[Site], Operation]


class Registry(Generic[Site]):
    """Lowerings by operator name, for one front-end."""

    def __init__(self, frontend: str) -> None:
        self.frontend = frontend
        self._lowerings: dict[str, Callable[[Site], Operation]] = {}
        #: Names whose in-place spellings (a trailing ``_``: ``add_``, ``mean_``) lower the same way.
        self._in_place: set[str] = set()

    def lowers(
        self, *names: str, in_place: bool = False
    ) -> Callable[[Callable[[Site], Operation]], Callable[[Site], Operation]]:
        """Register the decorated function as the lowering of the operators ``names``."""

        def register(function: Callable[[Site], Operation]) -> Callable[[Site], Operation]:
            for name in names:
                if name in self._lowerings:
                    raise ValueError(f"{self.frontend} operator {name!r} is lowered twice")
                self._lowerings[name] = function
                if in_place:
                    self._in_place.add(name)
            return function

        return register

    def get(self, name: str, base: str = "") -> Callable[[Site], Operation] | None:
        """The lowering of operator ``name``, else of ``base`` (its out-of-place spelling) when that one
        lowers its in-place spellings too; None when neither is registered."""
        found = self._lowerings.get(name)
        if found is None and base in self._in_place:
            found = self._lowerings[base]
        return found

    @property
    def names(self) -> tuple[str, ...]:
        """Every registered operator name, sorted."""
        return tuple(sorted(self._lowerings))
