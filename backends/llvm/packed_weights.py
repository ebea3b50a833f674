"""Weights that live only in their packed form after lowering: the float32 copy is rebuilt when asked for.

Lowering packs constant GEMM operands (conv weights as A, fully connected weights as B) into microkernel panels
(gemm_driver.py ``ConstA`` / ``ConstB``). The run reads only the panels, yet the plan's graph kept every original
array beside them for what might still ask for it: ``save()`` (weights.bin), lowering again for another shape
specialisation, reports. On ResNet-50 that is 97 MB of weights beside 98 MB of panels, for the whole life of the
model. Panels of float32 are an exact permutation of the weight's bytes (plus zero padding), so the weight can
be rebuilt from them bit for bit; this module makes that the weight's only copy.

How:

1. ``note_packed`` (called by the packing code) records, for every float32 matrix it packs, the matrix as a
   numpy view (where it sits in memory, its strides), the packed array, the offset of its panels there and the
   panel width. Nothing is copied.
2. Once a kernel is generated, :func:`release_after_kernel` looks at the weights that only its node reads
   (every ``use`` is the node or a node of its fused body; not a graph output) and that its code does not load
   as they are (the slots it loads are recorded while it is built). When the recorded views, each a dense
   permutation of one contiguous range of the weight, tile the whole array, and unpacking each panel gives back
   exactly the bytes it came from (compared panel by panel before anything is let go), the weight's ``Value``
   becomes a :class:`PackedWeight`: its ``const`` is rebuilt from the panels on access and kept only while
   somebody holds the rebuilt array (a weak reference), and its slot is left unbound. Kernel by kernel, so that
   one weight's memory is free for the next kernel's panels: lowering peaks near the panels' size, not twice it.
3. Everything that reads ``value.const`` keeps working and sees the same bytes: ``save()`` writes rebuilt
   weights, a new specialisation packs them again, the reference backend could run on them. Assigning
   ``const`` turns the value back into a plain :class:`~graphc.ir.graph.Value`.

Not released: bf16 panels (rounding loses bits), weights packed after a dtype conversion or a copy (the panels
are then not a view of the weight's bytes), weights something else keeps (the run's slots), and small ones.
A model loaded from an artifact never needs this: its weights are views of the mapped file, resident only where
touched.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass

import numpy as np

from ...ir.graph import Graph, Value

MIN_RELEASE_BYTES = 1 << 16  # below this the bookkeeping costs more than the bytes


@dataclass
class PackedView:
    """One matrix a packing function wrote into panels: ``source`` (a float32 numpy view, the matrix) went to
    ``packed[offset:]`` as ``kind`` "a" (panels (ceil(M/tile), K, tile): rows of A across a panel) or "b"
    (panels (ceil(N/tile), K, tile): columns of B across a panel)."""

    source: np.ndarray | None  # None once the weight is released: panel_pairs then needs a target
    packed: np.ndarray
    offset: int
    kind: str
    tile: int

    def detached(self) -> "PackedView":
        """This view without its matrix (which is the weight's memory: keeping it would keep the weight)."""
        return PackedView(None, self.packed, self.offset, self.kind, self.tile)

    def panel_pairs(self, target: np.ndarray | None = None):
        """(panel view, matrix view) pairs covering the matrix, in ``source``'s place or ``target``'s (an
        array of the same shape and strides)."""
        matrix = self.source if target is None else target
        rows, cols = matrix.shape
        if self.kind == "a":
            panels = -(-rows // self.tile)
            grid = self.packed[self.offset:self.offset + panels * cols * self.tile].reshape(panels, cols, self.tile)
            for p in range(panels):
                h = min(self.tile, rows - p * self.tile)
                yield grid[p, :, :h].T, matrix[p * self.tile:p * self.tile + h, :]
        else:
            panels = -(-cols // self.tile)
            grid = self.packed[self.offset:self.offset + panels * rows * self.tile].reshape(panels, rows, self.tile)
            for p in range(panels):
                w = min(self.tile, cols - p * self.tile)
                yield grid[p, :, :w], matrix[:, p * self.tile:p * self.tile + w]

    def exact(self) -> bool:
        """Whether unpacking the panels gives back every byte of ``source`` (no rounding, no other layout)."""
        return all(np.array_equal(panel.view(np.uint32), part.view(np.uint32)) for panel, part in self.panel_pairs())


def note_packed(kb, source: np.ndarray, packed: np.ndarray, offset: int, kind: str, tile: int) -> None:
    """Record that ``source`` was packed into ``packed[offset:]`` (see :class:`PackedView`); float32 only."""
    if source.dtype != np.float32 or packed.dtype != np.float32 or source.ndim != 2:
        return
    views = getattr(kb.program, "packed_views", None)
    if views is not None:
        views.append(PackedView(source, packed, int(offset), kind, int(tile)))


# -- which bytes of a weight a view covers ----------------------------------------------------------------------
def _dense_range(view: np.ndarray, base: np.ndarray) -> tuple[int, int, tuple] | None:
    """(first element, element count, element strides) when ``view`` lies inside ``base`` (a C-contiguous
    float32 array) and visits each element of one contiguous range exactly once, else None."""
    start = view.__array_interface__["data"][0] - base.__array_interface__["data"][0]
    item = base.itemsize
    if start < 0 or start % item or any(s % item for s in view.strides):
        return None
    strides = tuple(s // item for s in view.strides)
    dims = sorted((s, n) for s, n in zip(strides, view.shape) if n > 1)
    expect = 1
    for s, n in dims:  # a dense permutation: the smallest stride 1, each next one the span of those below
        if s != expect:
            return None
        expect *= n
    first, count = start // item, int(view.size)
    if first + count > base.size:
        return None
    return first, count, strides


def _covering_views(array: np.ndarray, views: list[PackedView]) -> list[tuple[PackedView, int, tuple]] | None:
    """The recorded views that tile ``array`` exactly, with their first element and element strides, or None
    when some element is not covered."""
    low, high = array.__array_interface__["data"][0], array.__array_interface__["data"][0] + array.nbytes
    mine = []
    for v in views:
        at = v.source.__array_interface__["data"][0]
        if not low <= at < high:
            continue
        found = _dense_range(v.source, array)
        if found is not None:
            mine.append((v,) + found)
    mine.sort(key=lambda m: m[1])
    covered, out = 0, []
    for v, first, count, strides in mine:
        if first > covered:
            return None  # a gap
        if first + count > covered:
            out.append((v, first, strides))
            covered = first + count
    return out if covered == array.size else None


# -- the weight that is rebuilt when read --------------------------------------------------------------------------
class _Rebuild:
    """How to rebuild one weight from panels (kept in the value's ``const`` slot)."""

    def __init__(self, shape: tuple, views: list[tuple[PackedView, int, tuple, tuple]]):
        self.shape = shape
        self.views = views
        self.lock = threading.Lock()
        self.ref: weakref.ref | None = None

    def array(self) -> np.ndarray:
        with self.lock:
            array = self.ref() if self.ref is not None else None
            if array is None:
                array = self._rebuild()
                self.ref = weakref.ref(array)
            return array

    def _rebuild(self) -> np.ndarray:
        flat = np.empty(int(np.prod(self.shape, dtype=np.int64)), np.float32)
        for view, first, strides, shape in self.views:
            target = np.lib.stride_tricks.as_strided(flat[first:], shape=shape,
                                                     strides=tuple(s * 4 for s in strides))
            for panel, part in view.panel_pairs(target):
                part[...] = panel
        array = flat.reshape(self.shape)
        array.flags.writeable = False  # a weight is read, never written; a write here would be lost anyway
        return array

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * 4


_CONST = Value.const  # the slot itself, under the property PackedWeight puts over it


class PackedWeight(Value):
    """A weight whose bytes live only in packed panels; ``const`` rebuilds the array (see the module
    docstring). Same layout as :class:`Value` (no slots of its own), so a value changes class in place."""

    __slots__ = ()

    @property
    def const(self):
        held = _CONST.__get__(self)
        return held.array() if isinstance(held, _Rebuild) else held

    @const.setter
    def const(self, array) -> None:
        if not isinstance(array, _Rebuild):
            self.__class__ = Value
        _CONST.__set__(self, array)

    @property
    def is_constant(self) -> bool:
        return True

    @property
    def packed_bytes(self) -> int:
        return _CONST.__get__(self).nbytes


def _owned_weights(node):
    """The weights ``node`` reads whose every use is ``node`` itself or a node of its fused body."""
    body = node.attrs.get("body") if node.op_type == "FusedKernel" else None
    nodes = [node] + (list(body.walk()) if isinstance(body, Graph) else [])
    owners = {id(n) for n in nodes}
    seen: set[int] = set()
    for n in nodes:
        for v in n.inputs:
            if v is None or type(v) is not Value or v.const is None or id(v) in seen:
                continue
            seen.add(id(v))
            if all(id(user) in owners for user, _ in v.uses):
                yield v


def release_after_kernel(program, node, slots_read: set[int]) -> int:
    """Called by lowering once the kernel of ``node`` is generated: every weight that only ``node`` reads, that
    its code did not load as it is (``slots_read``: the slots it loads) and that its panels (this kernel's
    ``program.packed_views``) hold exactly becomes a :class:`PackedWeight`, and its slot is left unbound. Done
    kernel by kernel, so that the memory of one weight is free for the next one's panels. The bytes released."""
    views, program.packed_views = program.packed_views, []  # the views hold the weights' memory
    if not views:
        return 0
    outputs = {id(v) for v in program.plan.graph.outputs if v is not None}
    released = 0
    for value in list(_owned_weights(node)):
        array = value.const
        st = program._storage.get(id(value))
        if (id(value) in outputs or (st is not None and st.slot in slots_read) or not isinstance(array, np.ndarray)
                or array.dtype != np.float32 or not array.flags.c_contiguous or array.nbytes < MIN_RELEASE_BYTES):
            continue
        covering = _covering_views(array, views)
        if covering is None or not all(v.exact() for v, _, _ in covering):
            continue
        value.__class__ = PackedWeight
        value.const = _Rebuild(tuple(array.shape), [(v.detached(), first, strides, v.source.shape)
                                                    for v, first, strides in covering])
        if st is not None:
            _unbind(program.slots[st.slot])
        released += array.nbytes
    return released


def _unbind(spec) -> None:
    """A weight's slot that no kernel loads: it keeps only the dtype and shape (layouts and digests name them)."""
    spec.array = np.broadcast_to(np.zeros((), spec.array.dtype), spec.array.shape)
    spec.unread = True


def unbind_released_slots(program) -> None:
    """After lowering: slots of weights released by an earlier specialisation that this program's kernels do not
    load must not keep the array that lowering rebuilt for them."""
    for i, spec in enumerate(program.slots):
        if (spec.kind == "const" and isinstance(spec.value, PackedWeight) and not spec.unread
                and i not in program.slots_read):
            _unbind(spec)
