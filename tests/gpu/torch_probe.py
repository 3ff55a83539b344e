"""A PyTorch program run under (or without) libvgpu by tests/gpu.

    python torch_probe.py limits GIB MORE   # mem_get_info, take GIB, try MORE more, free, retake
    python torch_probe.py hold GIB [TRY]    # (try TRY first,) take GIB, say "ready", wait to be killed
    python torch_probe.py try GIB           # try to take GIB once

Prints one JSON object (after "ready" for hold) so the test can read what happened.
"""
import json
import sys
import time

import torch

GiB = 1 << 30


def take(gib: float) -> object:
    return torch.empty(int(gib * GiB), dtype=torch.uint8, device="cuda")


def attempt(gib: float) -> tuple[str, object]:
    try:
        return "ok", take(gib)
    except torch.cuda.OutOfMemoryError:
        return "OutOfMemoryError", None
    except Exception as exc:  # the point is to see any other error class
        return f"{type(exc).__name__}: {exc}", None


def main() -> None:
    action, gib = sys.argv[1], float(sys.argv[2])
    if action == "limits":
        more = float(sys.argv[3])
        free, total = torch.cuda.mem_get_info()
        held = take(gib)
        extra, _ = attempt(more)
        del held
        torch.cuda.empty_cache()
        again, block = attempt(gib)
        free_after, _ = torch.cuda.mem_get_info()
        print(json.dumps({"total": total, "free": free, "first": "ok", "more": extra,
                          "again": again, "free_after_again": free_after}))
    elif action == "hold":
        tried = attempt(float(sys.argv[3]))[0] if len(sys.argv) > 3 else None
        block = take(gib)
        torch.cuda.synchronize()
        print("ready", json.dumps({"tried": tried}), flush=True)
        while True:
            time.sleep(1)
    elif action == "try":
        result, block = attempt(gib)
        print(json.dumps({"result": result}))
    else:
        raise SystemExit(f"unknown action {action!r}")


if __name__ == "__main__":
    main()
