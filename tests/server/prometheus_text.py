"""A strict parser for Prometheus' text exposition format 0.0.4, for checking /metrics
without depending on prometheus_client. Raises ValueError on anything malformed."""

from __future__ import annotations

import math
import re

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_TYPES = {"counter", "gauge", "histogram", "summary", "untyped"}


def _value(text: str) -> float:
    if text in ("+Inf", "Inf"):
        return math.inf
    if text == "-Inf":
        return -math.inf
    if text == "NaN":
        return math.nan
    if not re.fullmatch(r"[-+]?(\d+\.?\d*([eE][-+]?\d+)?|\.\d+([eE][-+]?\d+)?)", text):
        raise ValueError(f"bad sample value {text!r}")
    return float(text)


def _labels(text: str, i: int) -> tuple[dict, int]:
    """Parse `{a="x",b="y"}` starting at text[i] == '{'; return (labels, index after '}')."""
    labels = {}
    i += 1
    while True:
        if text[i] == "}":
            return labels, i + 1
        m = _LABEL.match(text, i)
        if not m:
            raise ValueError(f"bad label name at {text[i:]!r}")
        name = m.group()
        i = m.end()
        if text[i:i + 2] != '="':
            raise ValueError(f"expected =\" after label {name}")
        i += 2
        value = []
        while text[i] != '"':
            if text[i] == "\\":
                nxt = text[i + 1]
                if nxt not in 'n"\\':
                    raise ValueError(f"bad escape \\{nxt}")
                value.append("\n" if nxt == "n" else nxt)
                i += 2
            else:
                if text[i] == "\n":
                    raise ValueError("raw newline in label value")
                value.append(text[i])
                i += 1
        i += 1
        if name in labels:
            raise ValueError(f"label {name} repeated")
        labels[name] = "".join(value)
        if text[i] == ",":
            i += 1
        elif text[i] != "}":
            raise ValueError(f"expected , or }} at {text[i:]!r}")


def _family_of(sample: str, families: dict) -> str:
    if sample in families:
        return sample
    for suffix in ("_bucket", "_sum", "_count"):
        base = sample[: -len(suffix)] if sample.endswith(suffix) else None
        if base and families.get(base, {}).get("type") in ("histogram", "summary"):
            return base
    raise ValueError(f"sample {sample} has no # TYPE line before it")


def parse(text: str) -> dict[str, dict]:
    if not text.endswith("\n"):
        raise ValueError("the exposition must end with a newline")
    families: dict[str, dict] = {}
    for line in text.split("\n"):
        if not line:
            continue
        if line.startswith("#"):
            parts = line.split(" ", 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                name = parts[2]
                if not _NAME.fullmatch(name):
                    raise ValueError(f"bad metric name {name!r}")
                fam = families.setdefault(name, {"type": None, "help": None, "samples": []})
                key = parts[1].lower()
                if fam[key] is not None:
                    raise ValueError(f"second {parts[1]} line for {name}")
                if key == "type":
                    if fam["samples"]:
                        raise ValueError(f"TYPE for {name} after its samples")
                    if len(parts) != 4 or parts[3] not in _TYPES:
                        raise ValueError(f"bad TYPE line {line!r}")
                fam[key] = parts[3] if len(parts) == 4 else ""
            continue
        m = _NAME.match(line)
        if not m:
            raise ValueError(f"bad sample line {line!r}")
        name, i = m.group(), m.end()
        labels = {}
        if i < len(line) and line[i] == "{":
            labels, i = _labels(line, i)
        if i >= len(line) or line[i] != " ":
            raise ValueError(f"expected a space before the value in {line!r}")
        fields = line[i + 1:].split(" ")
        if not 1 <= len(fields) <= 2:
            raise ValueError(f"bad value/timestamp in {line!r}")
        value = _value(fields[0])
        if len(fields) == 2 and not re.fullmatch(r"-?\d+", fields[1]):
            raise ValueError(f"bad timestamp in {line!r}")
        families[_family_of(name, families)]["samples"].append((name, labels, value))
    for name, fam in families.items():
        if fam["type"] == "histogram":
            _check_histogram(name, fam["samples"])
        if fam["type"] == "counter" and any(v < 0 for _, _, v in fam["samples"]):
            raise ValueError(f"counter {name} is negative")
    return families


def _check_histogram(name: str, samples: list) -> None:
    series: dict[tuple, dict] = {}
    for sample, labels, value in samples:
        rest = tuple(sorted((k, v) for k, v in labels.items() if k != "le"))
        s = series.setdefault(rest, {"buckets": [], "count": None, "sum": None})
        if sample == name + "_bucket":
            s["buckets"].append((_value(labels["le"]), value))
        elif sample == name + "_count":
            s["count"] = value
        elif sample == name + "_sum":
            s["sum"] = value
        else:
            raise ValueError(f"unexpected sample {sample} in histogram {name}")
    for s in series.values():
        bounds = [b for b, _ in s["buckets"]]
        counts = [c for _, c in s["buckets"]]
        if bounds != sorted(bounds) or not bounds or bounds[-1] != math.inf:
            raise ValueError(f"histogram {name}: buckets not ascending or no +Inf bucket")
        if counts != sorted(counts):
            raise ValueError(f"histogram {name}: bucket counts are not cumulative")
        if s["count"] != counts[-1] or s["sum"] is None:
            raise ValueError(f"histogram {name}: _count differs from the +Inf bucket or _sum missing")
