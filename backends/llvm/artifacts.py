"""What an llvm executable keeps in a ``.gcx`` artifact, and how it takes it back.

Parts (under ``backend/`` in the artifact, each with its SHA-256 in the manifest like every other part):

- ``llvm/index.json``: the triple, CPU name and LLVM features the code was made for, and per specialisation
  its input shapes, the SHA-256 of its (unoptimised) LLVM IR, and the names of the two parts below;
- ``llvm/specN.o``: the relocatable machine code MCJIT produced (ELF here);
- ``llvm/specN.ll``: the LLVM IR, the portable form (readable; what the code was made from).

On load the program is lowered again from the plan (Python building IR, which also rebuilds the slot table and
packed weights the code expects) and its *layout digest* compared with the kept one: a SHA-256 over what the
machine code assumes of the program -- every slot's kind, size, dtype and shape, the kernel functions and
their order, the fallback steps, the error messages, the scratch size. Hashing the IR text itself would be
stricter but costs a third of a load (0.2 s of 0.7 s for ResNet-50); the artifact's graphc version check
already refuses code made by another graphc. The kept machine code is loaded only when the digests match and
this CPU has every feature the code was made for; otherwise the IR is compiled afresh for this CPU (re-JIT),
and ``describe()["load"]`` says why. A missing CPU feature
is therefore not an error for the llvm target: the plan is portable, only the machine code is not.
"""

from __future__ import annotations

import hashlib
import json

from .jit import host_cpu, host_features


def ir_digest(program) -> str:
    """The layout digest of a lowered program (see the module docstring)."""
    slots = [[spec.kind, spec.index, int(spec.nbytes),
              [spec.array.dtype.str, list(spec.array.shape)] if spec.array is not None else None]
             for spec in program.slots]
    steps = [[step.kind, step.name, step.emitter, step.fallback] for step in program.steps]
    doc = {"slots": slots, "steps": steps, "errors": program.error_messages,
           "scratch": int(program.slots[program.SCRATCH_SLOT].nbytes)}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def artifact_parts(executable) -> dict[str, bytes]:
    triple, cpu, _ = host_cpu()
    parts: dict[str, bytes] = {}
    specs = []
    for i, (shapes, compiled) in enumerate(executable.specializations.items()):
        code = compiled.jit.object_code
        if code is None:
            continue
        ir_text = str(compiled.program.module).encode()
        parts[f"llvm/spec{i}.o"] = code
        parts[f"llvm/spec{i}.ll"] = ir_text
        specs.append({"input_shapes": [list(s) if s is not None else None for s in shapes],
                      "ir_sha256": hashlib.sha256(ir_text).hexdigest(),
                      "layout_sha256": ir_digest(compiled.program),
                      "object": f"llvm/spec{i}.o", "ir": f"llvm/spec{i}.ll"})
    index = {"format": 1, "triple": triple, "cpu": cpu, "features": host_features(), "specializations": specs}
    parts["llvm/index.json"] = json.dumps(index, indent=1, sort_keys=True).encode()
    return parts


def prebuilt_from_parts(parts: dict[str, bytes]) -> tuple[dict, list[str]]:
    """({input shapes: (IR digest, object code)}, notes) from an artifact's backend parts."""
    raw = parts.get("llvm/index.json")
    if raw is None:
        return {}, ["the artifact holds no machine code; JIT"]
    try:
        index = json.loads(raw)
        specs = index["specializations"]
        triple, features = index["triple"], set(index["features"])
    except (ValueError, KeyError, TypeError):
        return {}, ["the artifact's llvm/index.json is malformed; re-JIT"]
    here_triple = host_cpu()[0]
    missing = sorted(features - set(host_features()))
    if triple != here_triple:
        return {}, [f"the machine code is for {triple}, this machine is {here_triple}; re-JIT from the IR"]
    if missing:
        return {}, [f"this CPU lacks {', '.join(missing[:8])}{'...' if len(missing) > 8 else ''} that the "
                    f"machine code was made for; re-JIT from the IR"]
    prebuilt = {}
    for spec in specs:
        try:
            shapes = tuple(tuple(s) if s is not None else None for s in spec["input_shapes"])
            prebuilt[shapes] = (spec["layout_sha256"], parts[spec["object"]])
        except (KeyError, TypeError):
            continue
    return prebuilt, []
