"""`archc report`: one self-contained HTML page for reviewing a design — its picture, its facts,
the training and inference estimate, its lint findings, and the semantic diff against a base spec. No scripts, no
fonts, no network: the page opens from a CI artifact or an e-mail the same way.

Everything that comes from a spec reaches the page through Jinja's autoescaping; the picture is
the native SVG of `compiler/svg.py`, which escapes its own text.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import jinja2

from archlang.compiler.diff import Diff
from archlang.compiler.facts import Facts
from archlang.estimate import Estimate

__all__ = ["Report", "render"]


@dataclass
class Report:
    spec: str  # as the user named it
    model: str
    family: str
    version: str  # archc's
    picture_svg: str
    facts: Facts
    estimate: Estimate
    base: str | None = None
    diff: Diff | None = None
    findings: list = field(default_factory=list)  # archc lint's, on this spec


def _gb(n: float) -> str:
    return f"{n / 1e9:,.2f} GB"


def _seconds(s: float) -> str:
    return f"{s * 1e3:,.3f} ms" if s < 1 else f"{s:,.3f} s"


def _si(n: float, unit: str = "") -> str:
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= factor:
            return f"{n / factor:,.2f} {prefix}{unit}"
    return f"{n:,.0f} {unit}".rstrip()


def _fact_rows(f: Facts) -> list[tuple[str, str, str]]:
    rows = [
        ("parameters (total)", f"{f.params_total:,}", _si(f.params_total)),
        ("parameters (active / token)", f"{f.params_active:,}", _si(f.params_active)),
        (f"weights ({f.dtype})", f"{f.weight_bytes:,} B", _si(f.weight_bytes, "B")),
        ("FLOPs / token (forward)", f"{f.flops_per_token:,}", _si(f.flops_per_token, "FLOP")),
        ("KV cache / token", f"{f.kv_cache_bytes_per_token:,} B", _si(f.kv_cache_bytes_per_token, "B")),
        (f"KV cache at {f.context:,} tokens", f"{f.kv_cache_bytes_at_context:,} B", _si(f.kv_cache_bytes_at_context, "B")),
    ]
    if f.ssm_state_bytes_per_sequence:
        rows.append(("recurrent state / sequence", f"{f.ssm_state_bytes_per_sequence:,} B",
                     _si(f.ssm_state_bytes_per_sequence, "B")))
    rows.append(("activations / token (training, est.)", f"{f.activation_bytes_per_token:,} B",
                 _si(f.activation_bytes_per_token, "B")))
    return rows


def _estimate_rows(e: Estimate) -> list[tuple[str, str, str, str]]:
    tr, inf = e.training, e.inference
    return [
        ("weights", _gb(tr["weights_bytes"]), "weights", _gb(inf["weights_bytes"])),
        ("gradients", _gb(tr["gradients_bytes"]), "KV cache + state", _gb(inf["cache_bytes"])),
        ("optimizer states", _gb(tr["optimizer_bytes"]), "", ""),
        ("activations", _gb(tr["activations_bytes"]), "", ""),
        ("total", _gb(tr["total_bytes"]), "total", _gb(inf["total_bytes"])),
        ("fits", "yes" if tr["fits"] else "no", "fits", "yes" if inf["fits"] else "no"),
        ("step time", _seconds(tr["step_seconds"]), "prefill", _seconds(inf["prefill_seconds"])),
        ("tokens / s", f"{tr['tokens_per_second']:,.0f}", "decode step", _seconds(inf["decode_step_seconds"])),
        ("bound by", str(tr["bound"]), "decode tokens / s", f"{inf['decode_tokens_per_second']:,.1f}"),
        ("", "", "bound by", str(inf["bound"])),
    ]


def _diff_rows(d: Diff) -> list[tuple[str, str, str, str, str]]:
    rows = []
    for k, (a, b) in d.facts.items():
        pct = "" if a == 0 else f"{100 * (b - a) / a:+.2f}%"
        rows.append((k, f"{a:,}", f"{b:,}", f"{b - a:+,}", pct))
    return rows


_ENV = jinja2.Environment(loader=jinja2.PackageLoader("archlang.report", "."), autoescape=True,
                          undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                          trim_blocks=True, lstrip_blocks=True)


def render(report: Report) -> str:
    """The report as one HTML document."""
    e = report.estimate
    par = e.parallel
    setup = (f"{e.gpus} × {e.hardware} (dp {par['dp']}, tp {par['tp']}, pp {par['pp']}, ep {par['ep']}"
             f"{', fsdp' if par['fsdp'] else ''}); {e.batch} × {e.seq:,} tokens, {e.dtype}, recompute {e.recompute}")
    return _ENV.get_template("report.html.j2").render(
        r=report, facts=_fact_rows(report.facts),
        breakdown=[(k, f"{v:,}", report.facts.breakdown_active.get(k, 0)) for k, v in report.facts.breakdown.items()],
        setup=setup, estimate=_estimate_rows(e), assumptions=e.assumptions,
        diff_rows=_diff_rows(report.diff) if report.diff is not None else [],
        # the picture is SVG that compiler/svg.py escaped itself; everything else is autoescaped
        picture=jinja2.utils.markupsafe.Markup(report.picture_svg),
    )
