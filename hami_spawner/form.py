"""The spawn form of the single-machine spawner: HTML out, a GPU choice back in.

Rendering takes plain data (the offers and whether each fits now), so it needs
no hub; everything shown is HTML-escaped.  The form posts ``profile`` (a
profile name, the CPU choice or ``custom``) and, for a custom size,
``custom_memory`` (GiB), ``custom_cores`` (percent) and ``custom_count``;
:func:`choice_from_form` turns that into the choice dict that
:class:`~hami_spawner.choice.GpuChoiceMixin` resolves.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from html import escape
from typing import Any, Mapping, Sequence

from hami_kernel.slice import GIB, Slice, format_memory
from hami_spawner.choice import http_error
from hami_spawner.profiles import CUSTOM, CustomRange

NO_GPU_MESSAGE = "This machine has no NVIDIA GPU; only CPU servers are offered."


@dataclass(frozen=True)
class Offer:
    """One radio button: a profile offered to this user, and why it cannot be chosen now."""

    name: str
    display_name: str
    description: str = ""
    size: str = ""             # e.g. "20 GiB of GPU memory · 25% of compute", "" for CPU
    models: str = ""           # GPU models it would run on
    unavailable: str = ""      # non-empty: shown disabled, with this reason
    default: bool = False


def describe_size(size: Slice, gpu_memory: int | None = None) -> str:
    """Per-GPU memory and compute of a slice, in words."""
    if size.memory is None:
        memory = "all GPU memory" + (f" ({format_memory(gpu_memory)})" if gpu_memory else "")
    else:
        memory = f"{format_memory(size.memory)} of GPU memory"
    cores = "all compute" if size.cores is None else f"{size.cores}% of compute"
    text = f"{memory} · {cores}"
    return text if size.count == 1 else f"{size.count} GPUs, each {text}"


def _gib(nbytes: int) -> str:
    return format(Decimal(nbytes) / GIB, "f").rstrip("0").rstrip(".") if nbytes % GIB else str(nbytes // GIB)


def render_form(offers: Sequence[Offer], custom: CustomRange | None = None,
                custom_unavailable: str = "", no_gpu: bool = False) -> str:
    """The options form: one radio button per offer, then the custom size inputs."""
    chosen = next((o.name for o in offers if o.default and not o.unavailable), None) or next(
        (o.name for o in offers if not o.unavailable), None)
    parts = ['<div class="hami-gpu-form">']
    if no_gpu:
        parts.append(f'<p class="alert alert-info hami-no-gpu">{escape(NO_GPU_MESSAGE)}</p>')
    if not offers and not custom:
        parts.append('<p class="alert alert-warning">No server choice is offered to you; '
                     'ask your administrator.</p>')
    parts.append('<fieldset><legend>GPU slice for this server</legend>')
    for offer in offers:
        parts.append(_radio(offer, offer.name == chosen))
    if custom is not None:
        parts.append(_custom(custom, custom_unavailable, chosen is None and not custom_unavailable))
    parts.append("</fieldset></div>")
    return "\n".join(parts)


def _radio(offer: Offer, checked: bool) -> str:
    ident = escape(f"hami-profile-{offer.name}")
    attrs = (" checked" if checked else "") + (" disabled" if offer.unavailable else "")
    details = " · ".join(escape(t) for t in (offer.size, offer.models and f"on {offer.models}") if t)
    lines = [f"<strong>{escape(offer.display_name)}</strong>"]
    if details:
        lines.append(f'<span class="hami-size">{details}</span>')
    if offer.description:
        lines.append(f'<small class="text-muted">{escape(offer.description)}</small>')
    if offer.unavailable:
        lines.append(f'<small class="text-danger hami-unavailable">Not available now: '
                     f'{escape(offer.unavailable)}</small>')
    return (f'<div class="form-check">'
            f'<input class="form-check-input" type="radio" name="profile" id="{ident}" '
            f'value="{escape(offer.name)}"{attrs}>'
            f'<label class="form-check-label" for="{ident}">{"<br>".join(lines)}</label></div>')


def _custom(bounds: CustomRange, unavailable: str, checked: bool) -> str:
    disabled = " disabled" if unavailable else ""
    memory = (f'<input type="number" class="form-control" name="custom_memory" '
              f'min="{_gib(bounds.memory_min)}" max="{_gib(bounds.memory_max)}" '
              f'step="{_gib(bounds.memory_step)}" value="{_gib(bounds.memory_min)}"{disabled}>')
    cores = (f'<input type="number" class="form-control" name="custom_cores" '
             f'min="{bounds.cores_min}" max="{bounds.cores_max}" step="{bounds.cores_step}" '
             f'value="{bounds.cores_min}"{disabled}>')
    count = ""
    if bounds.count_max > 1:
        count = (f'<label>GPUs <input type="number" class="form-control" name="custom_count" '
                 f'min="1" max="{bounds.count_max}" step="1" value="1"{disabled}></label>')
    note = (f'<small class="text-danger hami-unavailable">Not available now: '
            f'{escape(unavailable)}</small>' if unavailable else "")
    attrs = (" checked" if checked else "") + disabled
    return (f'<div class="form-check hami-custom">'
            f'<input class="form-check-input" type="radio" name="profile" id="hami-profile-custom" '
            f'value="{CUSTOM}"{attrs}>'
            f'<label class="form-check-label" for="hami-profile-custom"><strong>Custom size</strong> '
            f'(per GPU: {escape(format_memory(bounds.memory_min))} to '
            f'{escape(format_memory(bounds.memory_max))}, {bounds.cores_min}% to '
            f'{bounds.cores_max}% of compute)</label>'
            f'<div class="hami-custom-fields"><label>GPU memory (GiB) {memory}</label> '
            f'<label>Compute (%) {cores}</label> {count}</div>{note}</div>')


def _one(form: Mapping[str, Any], key: str) -> str:
    value = form[key]
    if isinstance(value, (list, tuple)) and len(value) == 1:
        value = value[0]
    if not isinstance(value, str):
        raise http_error(400, f"form field {key!r} must be one value")
    return value.strip()


def choice_from_form(form: Mapping[str, Any]) -> dict[str, str]:
    """Form data (lists of strings) as ``{"profile": name}`` or a custom size.

    Only the fields of the chosen kind are kept, so the hidden custom inputs
    that every form posts do not make a fixed profile look forged.  Values are
    checked later, by :meth:`GpuProfiles.resolve`.
    """
    if "profile" not in form:
        return {}  # nothing chosen: the default choice applies
    profile = _one(form, "profile")
    if profile != CUSTOM:
        return {"profile": profile}
    choice = {"profile": CUSTOM}
    for field, key in (("custom_memory", "memory"), ("custom_cores", "cores"),
                       ("custom_count", "count")):
        if field in form:
            choice[key] = _one(form, field)
    if "memory" in choice:
        choice["memory"] += "GiB"
    return choice
