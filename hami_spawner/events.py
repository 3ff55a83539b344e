"""Kubernetes events of a spawning pod, as sentences a notebook user understands.

KubeSpawner relays the pod's events to JupyterHub's progress page verbatim
("0/3 nodes are available: 3 1/1 CardInsufficientMemory. preemption: ...").
:func:`translate` turns the ones we know into a plain sentence; the raw text
stays available as a detail.  The texts matched here are those of
kube-scheduler (``FailedScheduling``, run as hami-scheduler), of HAMi's
scheduler extender (``FilteringFailed``: "no available node, 2 nodes do not
meet" and "2 nodes CardInsufficientMemory(node-a,node-b)";
``FilteringSucceed``, ``BindingSucceed``/``BindingFailed``; reason codes from
HAMi's pkg/device/common), and of the kubelet (pulling, started, ...).
"""

from __future__ import annotations

import html
import re
from typing import Any, Mapping

# Why a GPU pod cannot be placed: (pattern in the event text, what it means).  Order is
# the order of the sentence; each matched meaning appears once.
SCHEDULING_REASONS: list[tuple[re.Pattern[str], str]] = [(re.compile(p, re.I), s) for p, s in [
    (r"CardTypeMismatch", "no free GPU is of the type this profile asks for"),
    (r"CardInsufficientMemory|Insufficient [\w.]+/gpumem\b",
     "no GPU has enough free memory for this slice"),
    (r"CardInsufficientCore|Insufficient [\w.]+/gpucores\b",
     "no GPU has enough unallocated compute share for this slice"),
    (r"ExclusiveDeviceAllocateConflict",
     "a whole GPU is asked for, but every GPU is partly in use"),
    (r"CardComputeUnitsExhausted", "the compute of every GPU is fully allotted"),
    (r"CardTimeSlicingExhausted", "every GPU already holds as many slices as it may share"),
    (r"NodeInsufficientDevice|AllocatedCardsInsufficientRequest|Insufficient [\w.]+/gpu\b",
     "no node has enough GPUs for this profile"),
    (r"CardUuidMismatch", "no GPU is among those this server is pinned to"),
    (r"NumaNotFit", "the GPUs asked for do not fit in one NUMA node"),
    (r"CardNotHealth", "a GPU is unhealthy"),
    (r"ResourceQuotaNotFit|exceeded quota", "the GPU quota of this namespace is used up"),
    (r"node unregistered", "the GPU scheduler knows no GPUs on the nodes (is HAMi's device "
                           "plugin running there?)"),
    (r"Insufficient cpu\b", "no node has enough free CPU"),
    (r"Insufficient memory\b", "no node has enough free memory (RAM)"),
    (r"untolerated taint|didn't match (Pod's )?node (affinity|selector)",
     "no node matches where this server may run"),
]]
_NO_NODE = re.compile(r"no available node, (\d+) nodes? do(?:es)? not meet")
_NODE_FIT = re.compile(r"find fit node\(([^)]*)\)")
_BOUND = re.compile(r"Successfully binding node \[([^\]]*)\]")
_ASSIGNED = re.compile(r"Successfully assigned \S+ to (\S+)")
_IMAGE = re.compile(r'image "([^"]+)"')


# Events whose sentence does not depend on their message.
FIXED_SENTENCES = {
    "BindingFailed": "The GPU could not be reserved on the chosen node; trying again.",
    "Pulled": "The server image is ready.",
    "Created": "The server container is created.",
    "Started": "The server container started; waiting for Jupyter to answer.",
    "FailedMount": "A storage volume is not mounted yet.",
    "UnexpectedAdmissionError": "The node could not hand out the GPU slice (device plugin error); see the details.",
    "TriggeredScaleUp": "Adding a node to the cluster for this server (this takes a few minutes).",
    "NotTriggerScaleUp": "No node can be added to the cluster for this server.",
    "Preempted": "The server's pod is being stopped.",
    "Killing": "The server's pod is being stopped.",
}


def scheduling_sentence(message: str) -> str:
    """Why a pod waits for a GPU, from a FailedScheduling or FilteringFailed text."""
    reasons = [meaning for pattern, meaning in SCHEDULING_REASONS if pattern.search(message)]
    if not reasons:
        match = _NO_NODE.search(message)
        if match:
            reasons = [f"none of the {match.group(1)} GPU nodes can take this slice right now"]
    if not reasons:
        return ("Waiting for a place to run: the cluster cannot start this server yet. "
                "It starts as soon as room frees up.")
    text = "; ".join(reasons)
    return (f"Waiting for a GPU: {text}. The server starts as soon as one frees up; "
            f"a smaller slice may start sooner.")


def translate(event: Mapping[str, Any]) -> str | None:
    """A plain sentence for a Kubernetes event (a dict as the API returns it), or None."""
    reason = str(event.get("reason") or "")
    message = str(event.get("message") or "")
    if reason in ("FailedScheduling", "FilteringFailed"):
        return scheduling_sentence(message)
    image = _IMAGE.search(message)
    image_name = f" {image.group(1)}" if image else ""
    if reason == "FilteringSucceed":
        match = _NODE_FIT.search(message)
        return f"Found a GPU for this slice{f' on node {match.group(1)}' if match else ''}."
    if reason == "BindingSucceed":
        match = _BOUND.search(message)
        return f"GPU slice reserved{f' on node {match.group(1)}' if match else ''}."
    if reason == "Scheduled":
        match = _ASSIGNED.search(message)
        return f"Placed on node {match.group(1)}." if match else "Placed on a node."
    if reason == "Pulling":
        return (f"Downloading the server image{image_name} (the first start on a node "
                f"can take a few minutes).")
    if reason == "Failed" and ("ErrImagePull" in message or "pull" in message.lower()):
        return f"The server image{image_name} could not be downloaded."
    if reason == "BackOff":
        if "pulling image" in message.lower():
            return f"Trying again to download the server image{image_name}."
        return "The server keeps stopping right after it starts; see the details."
    return FIXED_SENTENCES.get(reason)


def translate_progress(progress: Mapping[str, Any]) -> dict[str, Any]:
    """A progress event of KubeSpawner with our sentence as its message.

    The original text becomes ``detail`` and a collapsed "details" line of
    ``html_message`` (the progress page shows html_message when present).
    """
    out = dict(progress)
    raw = progress.get("raw_event")
    if not isinstance(raw, Mapping):
        return out
    sentence = translate(raw)
    if sentence is None:
        return out
    detail = str(progress.get("message") or raw.get("message") or "")
    out["message"] = sentence
    out["detail"] = detail
    out["html_message"] = (f"{html.escape(sentence)} <details><summary>details</summary>"
                           f"<code>{html.escape(detail)}</code></details>")
    return out
