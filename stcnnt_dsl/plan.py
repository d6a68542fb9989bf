"""From a spec to a plan: every stage of a backbone with its block, channels, scale and
option layers, before any module exists.

The plan is the one description that the compiler (modules), shape inference, explain,
profiling tables and diagrams all read, so they cannot disagree about what a spec means.
Per-stage lists are broadcast here; the cascade of options is kept as layers so that
`explain` can say where each value came from.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from .blockspec import BlockSpec
from .errors import ShapeError, SpecError, did_you_mean
from .nn.block import resolve_cell
from .options import resolve_options
from .rules import SizeRule, cell_size_rule, check_size, nearest_multiples
from .spec import ArchSpec, HRNetSpec, LLMSpec, StageSpec, UNetSpec, load_spec
from .window_sizing import level_sizes

__all__ = ["Plan", "StagePlan", "make_plan"]

Layer = tuple[str, Mapping[str, Any]]


@dataclass(frozen=True)
class StagePlan:
    """One block of the backbone.

    `key`: module name inside the backbone (`encoder.1`); `path`: where it is set in the
    spec (`unet.encoder[1]`); `label`: how messages and diagrams name it; `scale`: it
    runs at H/scale x W/scale; `layers`: the option cascade below inline options.
    """

    key: str
    path: str
    label: str
    block: BlockSpec
    in_channels: int
    out_channels: int
    scale: int
    level: int
    layers: tuple[Layer, ...]

    def cell_options(self) -> list[dict[str, Any]]:
        """Resolved options of every cell (values only)."""
        return [resolve_cell(cell, self.layers) for cell in self.block.cells]

    def size_rules(self) -> list[tuple[str, SizeRule]]:
        """(where, rule) of every cell, at this stage's own resolution."""
        rules = []
        for i, (cell, opts) in enumerate(zip(self.block.cells, self.cell_options(), strict=True)):
            cin = self.in_channels if i == 0 else self.out_channels
            rule = cell_size_rule(
                cell.kind, opts, mixer=cell.mixer, changes_channels=cin != self.out_channels
            )
            rules.append((f"{self.label} cell {i} ({cell})", rule))
        return rules


@dataclass(frozen=True)
class Plan:
    """All stages of a backbone in execution order, plus what the topology adds."""

    spec: ArchSpec
    stages: tuple[StagePlan, ...]
    out_channels: int
    feature_info: tuple[dict[str, Any], ...]
    resample_scale: int  # H and W must be divisible by this (down-sampling steps)
    extras: dict[str, Any] = field(default_factory=dict)

    def stage(self, key: str) -> StagePlan:
        return next(s for s in self.stages if s.key == key)

    def global_rule(self) -> SizeRule:
        """The rule on the *input* (T, H, W): every stage's rule scaled up."""
        mh = mw = self.resample_scale
        minimum, min_frames, exact = 1, 1, None
        for stage in self.stages:
            for _, rule in stage.size_rules():
                mh = math.lcm(mh, rule.multiple[0] * stage.scale)
                mw = math.lcm(mw, rule.multiple[1] * stage.scale)
                if rule.minimum > 1:
                    minimum = max(minimum, rule.minimum * stage.scale)
                min_frames = max(min_frames, rule.min_frames)
                if rule.exact is not None and exact is None:
                    exact = (rule.exact[0] * stage.scale, rule.exact[1] * stage.scale)
        return SizeRule((mh, mw), "", exact, minimum, min_frames)

    def check(self, t: int, h: int, w: int) -> None:
        """Raise a `ShapeError` naming the first stage and cell that cannot run on an
        input of T frames and H x W pixels, with the nearest valid input sizes."""
        if t < 1 or h < 1 or w < 1:
            raise ShapeError(
                f"T, H and W must be >= 1, got T={t}, H={h}, W={w}", rule="positive size"
            )
        glob = self.global_rule()
        nearest = _nearest(glob, h, w)
        hint = "; ".join(
            f"nearest valid {k}: {' or '.join(map(str, v))}" for k, v in nearest.items()
        )
        s = self.resample_scale
        if h % s or w % s:
            steps = int(math.log2(s))
            raise ShapeError(
                f"{steps} down-sampling step(s) of 2x need H and W "
                f"divisible by {s}, got H={h}, W={w} ({hint})",
                self.spec.topology,
                rule=f"{s} must divide H and W",
                nearest=nearest,
            )
        for stage in self.stages:
            sh, sw = h // stage.scale, w // stage.scale
            for where, rule in stage.size_rules():
                try:
                    check_size(rule, sh, sw, where=where, path=stage.path, t=t)
                except ShapeError as err:
                    at = (
                        f" (the input's {h}x{w} is {sh}x{sw} at 1/{stage.scale} scale)"
                        if (stage.scale > 1)
                        else ""
                    )
                    reason = f"{where}: {err.rule}{at}; valid inputs: {_describe(glob)}"
                    if nearest:
                        reason += f"; {hint}"
                    raise ShapeError(
                        reason, stage.path, rule=err.rule, nearest=nearest or err.nearest
                    ) from None
        if glob.exact is not None and (h, w) != glob.exact:  # pragma: no cover - caught above
            raise ShapeError(f"input must be {glob.exact}", self.spec.topology)


def _describe(rule: SizeRule) -> str:
    if rule.exact is not None:
        return f"exactly H={rule.exact[0]}, W={rule.exact[1]}"
    mh, mw = rule.multiple
    text = f"H a multiple of {mh}" if mh == mw else f"H a multiple of {mh}, W of {mw}"
    if mh == mw:
        text = f"H and W multiples of {mh}"
    if rule.minimum > 1:
        text += f", at least {rule.minimum}"
    if rule.min_frames > 1:
        text += f", T >= {rule.min_frames}"
    return text


def _nearest(rule: SizeRule, h: int, w: int) -> dict[str, list[int]]:
    if rule.exact is not None:
        out = {}
        if h != rule.exact[0]:
            out["H"] = [rule.exact[0]]
        if w != rule.exact[1]:
            out["W"] = [rule.exact[1]]
        return out
    out = {}
    for name, value, m in (("H", h, rule.multiple[0]), ("W", w, rule.multiple[1])):
        base = max(m, math.ceil(rule.minimum / m) * m)
        if value % m or value < base:
            out[name] = sorted({max(base, v) for v in nearest_multiples(value, m)})
    return out


# --------------------------------------------------------------------------- helpers


def _broadcast(value: Any, n: int) -> list[Any]:
    return list(value) if isinstance(value, list) else [value] * n


def _base_layers(spec: ArchSpec) -> list[Layer]:
    return [("defaults", spec.defaults.options()), ("topology", spec.body.options())]


def _window_sizing_layer(spec: ArchSpec, scale: int) -> Layer | None:
    """`window` and `patch` of the level running at 1/scale (topology `window_sizing`)."""
    method = getattr(spec.body, "window_sizing", "fixed")
    if method == "fixed":
        return None
    if spec.input_size is None:
        raise SpecError(
            f"window_sizing: {method} derives each level's window from the nominal input "
            "size; set input_size: [H, W] at the top level (or use window_sizing: fixed)",
            f"{spec.topology}.window_sizing",
        )
    base = resolve_options(("window", "patch"), _base_layers(spec))
    sizes = level_sizes(
        method, base["window"].value, base["patch"].value, spec.input_size,
        scale.bit_length() - 1,
    )  # fmt: skip
    return ("window_sizing", sizes)


def _stage_layers(spec: ArchSpec, stage: StageSpec | None, scale: int) -> tuple[Layer, ...]:
    layers = _base_layers(spec)
    sizing = _window_sizing_layer(spec, scale)
    if sizing is not None:
        layers.append(sizing)
    if stage is not None:
        layers.append(("stage", stage.options()))
    if spec.input_size is not None:
        h, w = spec.input_size
        if h % scale or w % scale:
            raise SpecError(
                f"input_size {h}x{w} is not divisible by {scale} (the stage runs at "
                f"1/{scale}); use a multiple of {scale}",
                "input_size",
            )
        layers.append(("input_size", {"input_size": (h // scale, w // scale)}))
    return tuple(layers)


def _stage_block(stage: StageSpec | None, default: BlockSpec) -> BlockSpec:
    return stage.blocks if stage is not None and stage.blocks is not None else default


# --------------------------------------------------------------------------- topologies


def _plan_unet(spec: ArchSpec, body: UNetSpec) -> Plan:
    n = body.num_levels
    ch = _broadcast(body.channels, n)
    blocks = _broadcast(body.blocks, n + 1)
    if len(blocks) == n:  # one per level: the bridge uses the last
        blocks.append(blocks[-1])
    enc = body.encoder or [None] * n
    dec = body.decoder or enc  # decoder levels default to their encoder's overrides
    stages: list[StagePlan] = []
    for i in range(n):
        scale = 2**i
        stages.append(StagePlan(
            key=f"encoder.{i}", path=f"unet.encoder[{i}]", label=f"encoder level {i}",
            block=_stage_block(enc[i], blocks[i]),
            in_channels=spec.in_channels if i == 0 else ch[i - 1], out_channels=ch[i],
            scale=scale, level=i, layers=_stage_layers(spec, enc[i], scale),
        ))  # fmt: skip
    stages.append(StagePlan(
        key="bridge", path="unet.bridge", label="bridge",
        block=_stage_block(body.bridge, blocks[n]), in_channels=ch[-1], out_channels=ch[-1],
        scale=2**n, level=n, layers=_stage_layers(spec, body.bridge, 2**n),
    ))  # fmt: skip
    for i in reversed(range(n)):
        scale = 2**i
        stages.append(StagePlan(
            key=f"decoder.{i}", path=f"unet.decoder[{i}]", label=f"decoder level {i}",
            block=_stage_block(dec[i], blocks[i]), in_channels=2 * ch[i],
            out_channels=ch[i - 1] if i > 0 else ch[0], scale=scale, level=i,
            layers=_stage_layers(spec, dec[i], scale),
        ))  # fmt: skip
    features = tuple(
        {"channels": ch[i - 1] if i > 0 else ch[0], "reduction": 2**i, "module": f"decoder.{i}"}
        for i in range(n)
    )
    return Plan(spec, tuple(stages), ch[0], features, resample_scale=2**n, extras={"channels": ch})


def _plan_hrnet(spec: ArchSpec, body: HRNetSpec) -> Plan:
    n, s = body.num_levels, body.num_stages
    ch = _broadcast(body.channels, n)
    blocks = _broadcast(body.blocks, n)
    branches = body.branches or [None] * n
    stages: list[StagePlan] = []
    for j in range(s):
        for i in range(min(j, n - 1) + 1):
            stages.append(StagePlan(
                key=f"level{i}.stage{j}", path=f"hrnet.branches[{i}]",
                label=f"B{i}{j} (level {i}, stage {j})",
                block=_stage_block(branches[i], blocks[i]),
                in_channels=spec.in_channels if (i, j) == (0, 0) else ch[i],
                out_channels=ch[i], scale=2**i, level=i,
                layers=_stage_layers(spec, branches[i], 2**i),
            ))  # fmt: skip
    for i in range(n):
        stages.append(StagePlan(
            key=f"output{i}", path=f"hrnet.branches[{i}]", label=f"output block, level {i}",
            block=_stage_block(branches[i], blocks[i]), in_channels=ch[i], out_channels=ch[i],
            scale=2**i, level=i, layers=_stage_layers(spec, branches[i], 2**i),
        ))  # fmt: skip
    features = tuple(
        {"channels": ch[i], "reduction": 2**i, "module": f"output{i}"} for i in range(n)
    )
    return Plan(
        spec,
        tuple(stages),
        sum(ch),
        features,
        resample_scale=2 ** (n - 1),
        extras={"channels": ch, "stages": s},
    )


def _plan_llm(spec: ArchSpec, body: LLMSpec) -> Plan:
    n = body.num_blocks
    ch = _broadcast(body.channels, n)
    blocks = _broadcast(body.blocks, n)
    overrides = body.stages or [None] * n
    if body.dense_skips and len(set(ch)) > 1:
        raise SpecError(
            "dense_skips sums the outputs of earlier blocks, so every block needs the same "
            f"channels (got {ch}); use one channel count or set dense_skips: false",
            "llm.channels",
        )
    stages = tuple(
        StagePlan(
            key=f"blocks.{k}", path=f"llm.stages[{k}]", label=f"block {k}",
            block=_stage_block(overrides[k], blocks[k]),
            in_channels=spec.in_channels if k == 0 else ch[k - 1], out_channels=ch[k],
            scale=1, level=0, layers=_stage_layers(spec, overrides[k], 1),
        )
        for k in range(n)
    )  # fmt: skip
    features = tuple({"channels": ch[k], "reduction": 1, "module": f"blocks.{k}"} for k in range(n))
    return Plan(spec, stages, ch[-1], features, resample_scale=1, extras={"channels": ch})


def _apply_overrides(plan: Plan) -> Plan:
    """Per-stage overrides by name (`overrides: {decoder_0: {...}}`): a layer stronger
    than the stage lists, and optionally another block string."""
    overrides = plan.spec.body.overrides
    if not overrides:
        return plan
    by_name = {stage.key.replace(".", "_"): stage for stage in plan.stages}
    topology = plan.spec.topology
    for name in overrides:
        if name not in by_name:
            raise SpecError(
                f"no stage called {name!r}{did_you_mean(name, by_name)}; stages: "
                + ", ".join(by_name),
                f"{topology}.overrides.{name}",
            )
    stages = []
    for stage in plan.stages:
        extra = overrides.get(stage.key.replace(".", "_"))
        if extra is not None:
            layers = (*stage.layers, (f"overrides.{stage.key.replace('.', '_')}", extra.options()))
            stage = replace(stage, layers=_move_input_size_last(layers),
                            block=extra.blocks if extra.blocks is not None else stage.block)
        stages.append(stage)
    return replace(plan, stages=tuple(stages))


def _move_input_size_last(layers: tuple[Layer, ...]) -> tuple[Layer, ...]:
    return tuple(sorted(layers, key=lambda layer: layer[0] == "input_size"))


def make_plan(source: Any) -> Plan:
    """The plan of anything `load_spec` accepts."""
    spec = load_spec(source)
    body = spec.body
    if isinstance(body, UNetSpec):
        plan = _plan_unet(spec, body)
    elif isinstance(body, HRNetSpec):
        plan = _plan_hrnet(spec, body)
    else:
        plan = _plan_llm(spec, body)
    return _apply_overrides(plan)
