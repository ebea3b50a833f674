"""The *layout* of a lowered program: everything a run needs besides the machine code, as a JSON document.

Lowering a plan (program.py) decides the slot table (what every entry of ``slots`` points at during a run:
the arena, scratch, temporaries, each graph input and output, each weight, each array a code generator packed
at compile time), where the values that Python code touches during a run live (graph inputs and outputs, the
inputs and outputs of fallback steps), the fallback steps, the error messages of ``fail_if`` and the scratch
size. The machine code bakes all of that in. :func:`layout_of` writes it down: a JSON document plus one blob of
the packed constant arrays (raw native bytes, each at a 64-byte aligned offset). :class:`StoredProgram` takes
it back and stands in for :class:`~.program.Program` at run time, so an artifact loads with no lowering, no
LLVM IR and no weight packing: the weights are bound straight from the plan's arrays and the packed constants
from the blob.

Values are named by where they sit in the plan's graph, not by name (names need not be unique across fused
bodies): ``["in", k]`` is the graph's k-th input, ``[path, "i" | "o", k]`` the k-th input or output of the node at
``path`` (a list of indices: ``[i]`` is ``graph.nodes[i]``, ``[i, j]`` node j of the body of the FusedKernel
``graph.nodes[i]``). Each reference also records the value's name, and :class:`StoredProgram` checks it.

This module imports neither LLVM nor the code generators: a load must not pay for them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ...ir.graph import Graph, Node, Value, captured_values
from ...ops import OpContext, lookup

ENTRY = "graphc_entry"
ERROR_OFFSET = 128  # the abort word (count at 0, generation at 64: each on its own cache line)
FIRST_ERROR_CODE = 2  # status 1 = a fallback failed (its exception is kept); 2 + i = error_messages[i]
SYNC_BYTES = 192
ALIGNMENT = 64

ARENA_SLOT = 0
SCRATCH_SLOT = 1
TEMP_SLOT = 2  # values the memory plan left out: each its own place, for the whole run
BODY_TEMP_SLOT = 3  # insides of split fused bodies: each body starts again at 0
SYNC_SLOT = 4  # the sync block (barrier words, status, the error word of KernelBuilder.fail_if)
FIXED_SLOTS = ("arena", "scratch", "temp", "temp", "sync")

LAYOUT_FORMAT = 1
SLOT_KINDS = ("arena", "scratch", "temp", "sync", "input", "output", "const")


@dataclass(frozen=True)
class Storage:
    """Where a tensor lives during a run: ``slots[slot] + offset``, dense and C-contiguous."""

    slot: int
    offset: int
    dtype: np.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


@dataclass
class SlotSpec:
    """What one entry of the slots table points at during a run."""

    kind: str  # "arena" | "scratch" | "temp" | "sync" | "input" | "output" | "const"
    index: int = -1  # input/output position
    array: np.ndarray | None = None  # const
    nbytes: int = 0  # arena/scratch/temp/output size
    value: Value | None = None  # output; for a const slot holding a weight as it is, that weight
    unread: bool = False  # a weight's slot no kernel loads: ``array`` only names its dtype and shape, unbound


@dataclass
class FallbackStep:
    node: Node
    ctx: OpContext
    reason: str


@dataclass
class Step:
    kind: str  # "kernel" | "fallback"
    name: str  # kernel function name, or fallback index as text
    node: Node | None
    fallback: int = -1
    emitter: str = ""
    can_fail: bool = False  # the kernel may set the error word (KernelBuilder.fail_if)


def fallback_ops_of(fallbacks: list[FallbackStep]) -> list[str]:
    out = set()
    for f in fallbacks:
        if f.node.op_type == "FusedKernel":
            out.update(n.op_type for n in f.node.attrs["body"].walk())
        else:
            out.add(f.node.op_type if not f.node.domain else f"{f.node.domain}::{f.node.op_type}")
    return sorted(out)


def _is_fused(node: Node) -> bool:
    return node.domain == "graphc" and node.op_type == "FusedKernel" and isinstance(node.attrs.get("body"), Graph)


def _walk(graph: Graph, prefix: tuple = ()):
    """(path, node) for every node the lowering may see: the graph's and, nested, those of fused bodies."""
    for i, node in enumerate(graph.nodes):
        path = prefix + (i,)
        yield path, node
        if _is_fused(node):
            yield from _walk(node.attrs["body"], path)


def value_refs(graph: Graph) -> dict[int, list]:
    """id(value) -> its first reference (see the module docstring), for every value the walk reaches."""
    refs: dict[int, list] = {}
    for k, v in enumerate(graph.inputs):
        refs.setdefault(id(v), ["in", k])
    for path, node in _walk(graph):
        for where, values in (("o", node.outputs), ("i", node.inputs)):
            for k, v in enumerate(values):
                if v is not None:
                    refs.setdefault(id(v), [list(path), where, k])
    return refs


def node_paths(graph: Graph) -> dict[int, list[int]]:
    return {id(node): list(path) for path, node in _walk(graph)}


def _dtype_name(dtype: np.dtype) -> str:
    """numpy's or ml_dtypes' name of ``dtype`` (ValueError for one that a load could not take back)."""
    from ...ir.serialize import dtype_by_name

    dtype = np.dtype(dtype)
    if dtype_by_name(dtype.name) != dtype:
        raise ValueError(f"dtype {dtype} has no stable name")
    return dtype.name


def captured_values_of(node: Node) -> list[Value]:
    """Values of the enclosing graphs that the subgraphs of ``node`` read (a fallback step reads them)."""
    out: dict[int, Value] = {}
    for sub in node.subgraphs():
        for v in captured_values(sub):
            out[id(v)] = v
    return list(out.values())


def _storage_doc(st: Storage | None) -> list | None:
    if st is None:
        return None
    return [int(st.slot), int(st.offset), _dtype_name(st.dtype), [int(d) for d in st.shape]]


def runtime_values(program) -> list:
    """The values Python code reads or writes during a run (each after aliasing): graph inputs and outputs,
    and every input, output and captured value of a fallback step; constants excepted (a run reads them from
    the plan)."""
    graph = program.plan.graph
    seen: dict[int, Value] = {}
    raw: list[Value] = list(graph.inputs) + [v for v in graph.outputs if v is not None]
    for f in program.fallbacks:
        raw.extend(v for v in list(f.node.inputs) + list(f.node.outputs) if v is not None)
        if f.node.subgraphs():
            raw.extend(captured_values_of(f.node))
    for v in raw:
        v = program._alias.get(id(v), v)
        if not v.is_constant:
            seen.setdefault(id(v), v)
    return list(seen.values())


def layout_of(program) -> tuple[dict, list[tuple[int, np.ndarray]]]:
    """(document, [(offset, array)] of the constants blob) of a lowered program (a Program or a StoredProgram).

    Raises ValueError when the program cannot be described (a value it needs cannot be named): the artifact
    then keeps no layout and a load lowers the plan again."""
    graph = program.plan.graph
    refs = value_refs(graph)
    paths = node_paths(graph)

    def ref(v: Value) -> list:
        r = refs.get(id(v))
        if r is None:
            raise ValueError(f"value {v.name!r} is not reachable from the graph")
        return [r, v.name]

    slots: list[dict] = []
    blob: list[tuple[int, np.ndarray]] = []
    end = 0
    for spec in program.slots:
        entry: dict[str, Any] = {"kind": spec.kind}
        if spec.kind == "input":
            entry["index"] = int(spec.index)
        elif spec.kind == "output":
            entry.update(index=int(spec.index), nbytes=int(spec.nbytes))
        elif spec.kind == "const":
            array = spec.array if spec.array is not None else np.zeros(0, np.uint8)
            entry.update(dtype=_dtype_name(array.dtype), shape=[int(d) for d in array.shape])
            if spec.value is not None and spec.value.is_constant and id(spec.value) in refs:
                entry["weight"] = ref(spec.value)  # bound to the plan's own array on load: not stored twice
            else:
                array = np.ascontiguousarray(array)
                offset = -(-end // ALIGNMENT) * ALIGNMENT
                entry.update(offset=offset, nbytes=int(array.nbytes))
                blob.append((offset, array))
                end = offset + array.nbytes
        else:
            entry["nbytes"] = int(spec.nbytes)
        slots.append(entry)
    values = []
    for v in runtime_values(program):
        try:
            st = program.storage_of(v)
        except KeyError:
            st = None  # never placed: a run keeps it in Python (what Program.storage_of would raise on is unused)
        values.append(ref(v) + [_storage_doc(st)])
    aliases = []
    for f in program.fallbacks:
        for v in list(f.node.inputs) + list(f.node.outputs):
            if v is not None and id(v) in program._alias:
                aliases.append(ref(v) + ref(program._alias[id(v)]))
    fallbacks = []
    for f in program.fallbacks:
        if id(f.node) not in paths:
            raise ValueError(f"fallback node {f.node.name!r} is not reachable from the graph")
        fallbacks.append({"node": paths[id(f.node)], "op": f.node.op_type, "reason": f.reason})
    steps = [[s.kind, s.name, s.emitter, int(s.fallback), bool(s.can_fail)] for s in program.steps]
    doc = {"format": LAYOUT_FORMAT, "entry": ENTRY, "slots": slots, "values": values, "aliases": aliases,
           "fallbacks": fallbacks, "steps": steps, "errors": list(program.error_messages),
           "emitted": dict(program.emitted), "constants_bytes": end}
    return doc, blob


# -- taking a layout back ---------------------------------------------------------------------------------------
def _int(x: Any, where: str, lo: int = 0) -> int:
    if not isinstance(x, int) or isinstance(x, bool) or x < lo:
        raise ValueError(f"{where}: expected an integer >= {lo}, got {x!r}")
    return x


class _Resolver:
    def __init__(self, graph: Graph):
        self.graph = graph

    def node(self, path: Any) -> Node:
        if not isinstance(path, list) or not path:
            raise ValueError(f"bad node path {path!r}")
        graph, node = self.graph, None
        for depth, i in enumerate(path):
            if depth and not _is_fused(node):
                raise ValueError(f"node path {path!r} goes into a node that is not a fused kernel")
            if depth:
                graph = node.attrs["body"]
            _int(i, "node path")
            if i >= len(graph.nodes):
                raise ValueError(f"node path {path!r} is out of range")
            node = graph.nodes[i]
        return node

    def value(self, entry: Any) -> Value:
        if not isinstance(entry, list) or len(entry) < 2 or not isinstance(entry[1], str):
            raise ValueError(f"bad value reference {entry!r}")
        r, name = entry[0], entry[1]
        v = None
        if isinstance(r, list) and len(r) == 2 and r[0] == "in":
            k = _int(r[1], "graph input")
            if k < len(self.graph.inputs):
                v = self.graph.inputs[k]
        elif isinstance(r, list) and len(r) == 3 and r[1] in ("i", "o"):
            node = self.node(r[0])
            values = node.inputs if r[1] == "i" else node.outputs
            k = _int(r[2], "value position")
            if k < len(values):
                v = values[k]
        if v is None or v.name != name:
            raise ValueError(f"value reference {r!r} does not name {name!r} in this plan")
        return v


def static_shape(value: Value, bindings: dict[str, int]) -> tuple[tuple[int, ...], np.dtype] | None:
    """(shape, dtype) of a value that gets storage in a run -- a tensor of a plain numeric dtype whose dims
    are known once the symbolic ones are bound -- else None (the rule of ``Program.static_shape``)."""
    t = value.type
    shape, dtype = getattr(t, "shape", None), getattr(t, "dtype", None)
    if shape is None or dtype is None or np.dtype(dtype).kind not in "biuf" or np.dtype(dtype).itemsize > 8:
        return None
    dims = []
    for d in shape:
        if isinstance(d, (int, np.integer)):
            dims.append(int(d))
        elif isinstance(d, str) and d in bindings:
            dims.append(int(bindings[d]))
        else:
            return None
    return tuple(dims), np.dtype(dtype)


def _bindings(graph: Graph, input_shapes: list) -> dict[str, int]:
    """The symbolic dims the specialisation's input shapes bind (as the executable binds them)."""
    out: dict[str, int] = {}
    for v, shape in zip(graph.inputs, input_shapes):
        dims = getattr(v.type, "shape", None)
        if dims is None or shape is None or len(dims) != len(shape):
            continue
        for d, n in zip(dims, shape):
            if isinstance(d, str):
                out.setdefault(d, int(n))
    return out


def _storage_from(doc: Any, slots: list[SlotSpec]) -> Storage | None:
    from ...ir.serialize import dtype_by_name

    if doc is None:
        return None
    if not isinstance(doc, list) or len(doc) != 4 or not isinstance(doc[3], list):
        raise ValueError(f"bad storage {doc!r}")
    slot, offset = _int(doc[0], "storage slot"), _int(doc[1], "storage offset")
    st = Storage(slot, offset, dtype_by_name(doc[2]), tuple(_int(d, "storage dim") for d in doc[3]))
    if slot >= len(slots):
        raise ValueError(f"storage slot {slot} is out of range")
    spec = slots[slot]
    if spec.kind in ("arena", "temp") and offset + st.nbytes > spec.nbytes:
        raise ValueError(f"storage [{offset}, {offset + st.nbytes}) lies outside slot {slot} ({spec.nbytes} bytes)")
    if spec.kind in ("input", "output", "const") and offset != 0:
        raise ValueError(f"storage in slot {slot} ({spec.kind}) has offset {offset}")
    return st


class StoredProgram:
    """A lowered program taken back from its layout (see the module docstring): what a run needs of
    :class:`~.program.Program` -- slots, storage of the values Python touches, aliases, fallback steps, error
    messages -- and nothing of LLVM. Raises ValueError when the document does not fit the plan."""

    ARENA_SLOT, SCRATCH_SLOT, TEMP_SLOT, BODY_TEMP_SLOT, SYNC_SLOT = (ARENA_SLOT, SCRATCH_SLOT, TEMP_SLOT,
                                                                       BODY_TEMP_SLOT, SYNC_SLOT)

    def __init__(self, plan, doc: Any, constants: np.ndarray | None, input_shapes: list,
                 ir_text: Callable[[], bytes] | None = None):
        from ...ir.serialize import dtype_by_name

        if not isinstance(doc, dict) or doc.get("format") != LAYOUT_FORMAT:
            raise ValueError("unknown layout format")
        if doc.get("entry") != ENTRY:
            raise ValueError(f"entry symbol {doc.get('entry')!r} is not {ENTRY!r}")
        self.plan = plan
        self.input_shapes = list(input_shapes)
        self._ir_text = ir_text
        graph = plan.graph
        find = _Resolver(graph)
        blob = constants if constants is not None else np.zeros(0, np.uint8)
        raw_slots = doc.get("slots")
        if not isinstance(raw_slots, list) or len(raw_slots) < len(FIXED_SLOTS):
            raise ValueError("the slot table is missing")
        self.slots: list[SlotSpec] = []
        for i, s in enumerate(raw_slots):
            if not isinstance(s, dict) or s.get("kind") not in SLOT_KINDS:
                raise ValueError(f"slot {i} is malformed")
            kind = s["kind"]
            if i < len(FIXED_SLOTS) and kind != FIXED_SLOTS[i]:
                raise ValueError(f"slot {i} must be {FIXED_SLOTS[i]}, not {kind}")
            if i >= len(FIXED_SLOTS) and kind not in ("input", "output", "const"):
                raise ValueError(f"slot {i} has kind {kind}")
            if kind == "input":
                index = _int(s.get("index"), f"slot {i} index")
                if index >= len(graph.inputs):
                    raise ValueError(f"slot {i} names graph input {index}")
                self.slots.append(SlotSpec("input", index=index))
            elif kind == "output":
                index = _int(s.get("index"), f"slot {i} index")
                if index >= len(graph.outputs) or graph.outputs[index] is None:
                    raise ValueError(f"slot {i} names graph output {index}")
                self.slots.append(SlotSpec("output", index=index, nbytes=_int(s.get("nbytes"), f"slot {i} size"),
                                           value=graph.outputs[index]))
            elif kind == "const":
                dtype = dtype_by_name(s.get("dtype"))
                shape = s.get("shape")
                if not isinstance(shape, list):
                    raise ValueError(f"slot {i} has no shape")
                shape = tuple(_int(d, f"slot {i} dim") for d in shape)
                if "weight" in s:
                    v = find.value(s["weight"])
                    if not v.is_constant:
                        raise ValueError(f"slot {i} names {v.name!r}, which is not a weight")
                    array = np.ascontiguousarray(v.const).reshape(np.shape(v.const))
                    if array.dtype != dtype or array.shape != shape:
                        raise ValueError(f"weight {v.name!r} is {array.dtype}{list(array.shape)}, the code "
                                         f"expects {dtype}{list(shape)}")
                    self.slots.append(SlotSpec("const", array=array, value=v))
                else:
                    offset, nbytes = _int(s.get("offset"), f"slot {i} offset"), _int(s.get("nbytes"), f"slot {i} size")
                    count = int(np.prod(shape, dtype=np.int64))
                    if nbytes != count * dtype.itemsize or offset % ALIGNMENT or offset + nbytes > blob.size:
                        raise ValueError(f"constant slot {i}: [{offset}, {offset + nbytes}) does not hold "
                                         f"{dtype}{list(shape)} inside the {blob.size}-byte constants part")
                    array = blob[offset:offset + nbytes].view(dtype).reshape(shape)
                    self.slots.append(SlotSpec("const", array=array))
            else:
                self.slots.append(SlotSpec(kind, nbytes=_int(s.get("nbytes"), f"slot {i} size")))
        for slot, shape in ((i, self.input_shapes[s.index] if s.index < len(self.input_shapes) else None)
                            for i, s in enumerate(self.slots) if s.kind == "input"):
            if shape is None:
                raise ValueError(f"slot {slot} is an input the specialisation has no shape for")
        self._storage: dict[int, Storage | None] = {}
        self._alias: dict[int, Value] = {}
        values = doc.get("values")
        if not isinstance(values, list):
            raise ValueError("the value table is missing")
        bindings = _bindings(graph, self.input_shapes)
        for entry in values:
            if not isinstance(entry, list) or len(entry) != 3:
                raise ValueError(f"bad value entry {entry!r}")
            v = find.value(entry[:2])
            st = _storage_from(entry[2], self.slots)
            static = static_shape(v, bindings)
            if (st is None) != (static is None) or (st is not None and (st.shape, st.dtype) != static):
                raise ValueError(f"{v.name!r} is {v.type} in the plan, stored as {entry[2]!r}")
            if st is not None:
                spec = self.slots[st.slot]
                if spec.kind == "input" and (spec.index >= len(graph.inputs) or graph.inputs[spec.index] is not v
                                             or tuple(self.input_shapes[spec.index]) != st.shape):
                    raise ValueError(f"{v.name!r} does not match input slot {st.slot}")
                if spec.kind == "output" and (spec.value is not v or spec.nbytes != st.nbytes):
                    raise ValueError(f"{v.name!r} does not match output slot {st.slot}")
            self._storage[id(v)] = st
        for spec in self.slots:
            if spec.kind == "output" and self._storage.get(id(spec.value)) is None:
                raise ValueError(f"output {spec.value.name!r} has a slot but no storage")
        aliases = doc.get("aliases")
        if not isinstance(aliases, list):
            raise ValueError("the alias table is missing")
        for entry in aliases:
            if not isinstance(entry, list) or len(entry) != 4:
                raise ValueError(f"bad alias entry {entry!r}")
            self._alias[id(find.value(entry[:2]))] = find.value(entry[2:])
        self.fallbacks: list[FallbackStep] = []
        raw_fallbacks = doc.get("fallbacks")
        if not isinstance(raw_fallbacks, list):
            raise ValueError("the fallback list is missing")
        for f in raw_fallbacks:
            if not isinstance(f, dict) or not isinstance(f.get("reason"), str):
                raise ValueError(f"bad fallback entry {f!r}")
            node = find.node(f.get("node"))
            if node.op_type != f.get("op"):
                raise ValueError(f"fallback {len(self.fallbacks)} is a {f.get('op')}, the plan has {node.op_type}")
            self.fallbacks.append(FallbackStep(node, OpContext(node, lookup(node.domain, node.op_type)), f["reason"]))
        raw_steps = doc.get("steps")
        if not isinstance(raw_steps, list):
            raise ValueError("the step list is missing")
        self.steps: list[Step] = []
        for s in raw_steps:
            if (not isinstance(s, list) or len(s) != 5 or s[0] not in ("kernel", "fallback")
                    or not all(isinstance(x, str) for x in s[1:3])):
                raise ValueError(f"bad step {s!r}")
            index = s[3] if s[0] == "fallback" else -1
            if s[0] == "fallback" and (not isinstance(index, int) or not 0 <= index < len(self.fallbacks)):
                raise ValueError(f"step {s!r} names no fallback")
            node = self.fallbacks[index].node if s[0] == "fallback" else None
            self.steps.append(Step(s[0], s[1], node, fallback=index, emitter=s[2], can_fail=bool(s[4])))
        errors = doc.get("errors")
        if not isinstance(errors, list) or not all(isinstance(e, str) for e in errors):
            raise ValueError("the error messages are missing")
        self.error_messages: list[str] = list(errors)
        emitted = doc.get("emitted")
        if not isinstance(emitted, dict):
            raise ValueError("the emitter counts are missing")
        self.emitted = {str(k): int(v) for k, v in emitted.items() if isinstance(v, int)}

    def storage_of(self, value: Value) -> Storage | None:
        value = self._alias.get(id(value), value)
        key = id(value)
        if key in self._storage:
            return self._storage[key]
        if value.is_constant:
            return None  # a run reads weights from the plan; only code reads their slots
        raise KeyError(f"llvm backend: {value.name!r} has no storage in the stored layout")

    def ir_text(self) -> bytes:
        """The LLVM IR this program was lowered to, as kept in the artifact (read when asked)."""
        if self._ir_text is None:
            raise ValueError("the LLVM IR of this program was not kept")
        return self._ir_text()

    @property
    def fallback_ops(self) -> list[str]:
        return fallback_ops_of(self.fallbacks)

    def describe(self) -> dict[str, Any]:
        return {"kernels": sum(s.kind == "kernel" for s in self.steps), "fallbacks": len(self.fallbacks),
                "emitters": dict(self.emitted), "fallback_ops": self.fallback_ops}
