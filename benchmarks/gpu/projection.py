"""The paper's CIFAR-10 evaluation protocol and its 800k-step training, projected from the measured rates:
work / rate for each part, at ddpm-bench's defaults and at the fastest measured setting, with every input
written beside the result. Also the issue's three goals against the numbers."""

from __future__ import annotations

TEST_IMAGES, TRAIN_IMAGES, T = 10_000, 50_000, 1000
GAP_TERMS = 25  # nll --terms 25 for the gap: L_0 and 25 drawn KL terms per image, the proposal from the exact test bound
SAMPLES, ANCESTRAL_STEPS, DDIM_STEPS = 50_000, 1000, 100
FID_IMAGES = 2 * 50_000  # 50,000 samples and the 50,000 training images of the reference statistics (cached after)
TRAIN_STEPS = 800_000
SAMPLE_DEFAULT_BATCH = 128  # ddpm_bench.jobs.sample.DEFAULT_BATCH_SIZE
GOAL_ENGINE_SHARE, GOAL_PEAK_FRACTION, GOAL_PROTOCOL_S = 0.10, 0.40, 3600.0


def _ok(section: dict | None) -> list[dict]:
    return [r for r in (section or {}).get("rows", []) if r.get("status") == "ok"]


def _rate(value: float | None, unit: str, source: str) -> dict:
    return {"rate": value, "unit": unit, "from": source}


def _at_default_batch(rows: list[dict]) -> dict | None:
    """The row at `sample`'s default batch, else the largest batch below it, else the smallest."""
    if not rows:
        return None
    below = [r for r in rows if r["batch"] <= SAMPLE_DEFAULT_BATCH]
    return max(below, key=lambda r: r["batch"]) if below else min(rows, key=lambda r: r["batch"])


def rates(sections: dict) -> dict:
    """The measured rates the projection uses, for `defaults` and `fastest`: {what: {column: rate}}."""
    res = {name: (sections.get(name) or {}).get("result") or {} for name in
           ("bound", "sampler", "ode", "trainer", "fid")}
    out: dict[str, dict] = {}
    bound = {r["setting"]: r for r in _ok(res["bound"])}
    out["bound"] = {col: _rate(bound[key]["evals_per_s"] if key in bound else None, "evaluations/s",
                               f"bound section, setting '{key}'") for col, key in (("defaults", "defaults"),
                                                                                   ("fastest", "fastest"))}
    for sampler in ("ancestral", "ddim"):
        rows = [r for r in _ok(res["sampler"]) if r["sampler"] == sampler]
        default = _at_default_batch([r for r in rows if r["setting"] == "defaults"])
        fastest = max(rows, key=lambda r: r["samples_per_s"]) if rows else None
        out[sampler] = {
            "defaults": _rate(default["samples_per_s"] if default else None, "samples/s",
                              f"sampler section, defaults at batch {default['batch']} (sample's default: "
                              f"{SAMPLE_DEFAULT_BATCH})" if default else "sampler section, defaults"),
            "fastest": _rate(fastest["samples_per_s"] if fastest else None, "samples/s",
                             f"sampler section, {fastest['setting']} at batch {fastest['batch']}" if fastest else
                             "sampler section")}
    fid = res["fid"].get("features_per_s")
    out["fid"] = {col: _rate(fid, "images/s", "fid section") for col in ("defaults", "fastest")}
    ode_rows = _ok(res["ode"])
    widest = max(ode_rows, key=lambda r: r["batch"]) if ode_rows else None
    trained = res["ode"].get("trained_model") or {}
    nfe = trained.get("nfe_mean") or (widest or {}).get("nfe_mean")
    per_nfe = widest["seconds_per_nfe_per_image"] if widest else None
    ode = 1.0 / (nfe * per_nfe) if nfe and per_nfe else None
    source = (f"ode section: {per_nfe and round(per_nfe, 6)} s per evaluation per image at batch "
              f"{widest and widest['batch']}, x {nfe and round(nfe)} evaluations per image "
              f"({'the packaged trained model' if trained.get('nfe_mean') else 'the seeded U-Net'})")
    out["ode"] = {col: _rate(ode, "images/s", source) for col in ("defaults", "fastest")}
    train = {r["setting"]: r for r in _ok(res["trainer"])}
    default = next((r for name, r in train.items() if name.startswith("as the trainer runs")), None)
    fastest = (res["trainer"].get("fastest_faithful") or {})
    out["training"] = {
        "defaults": _rate(default["steps_per_s"] if default else None, "steps/s", "trainer section, as it runs"),
        "fastest": _rate(fastest.get("steps_per_s"), "steps/s", f"trainer section, {fastest.get('setting')}")}
    return out


# what, work (units of the rate), the rate's key, whether it is in the goal's protocol
PROTOCOL = (
    ("exact bound, test split", TEST_IMAGES * T, "bound", True),
    ("exact bound, train split", TRAIN_IMAGES * T, "bound", False),
    (f"--terms {GAP_TERMS} for the gap, both splits", (TEST_IMAGES + TRAIN_IMAGES) * (GAP_TERMS + 1), "bound", True),
    (f"{SAMPLES} samples x {ANCESTRAL_STEPS} ancestral steps", SAMPLES, "ancestral", True),
    (f"{SAMPLES} samples x {DDIM_STEPS} DDIM steps", SAMPLES, "ddim", True),
    (f"FID of {SAMPLES} (features of the samples and of the {FID_IMAGES // 2} reference images)", FID_IMAGES, "fid", True),
    ("ODE likelihood, test split", TEST_IMAGES, "ode", True),
)


def project(sections: dict, device_name: str | None = None) -> dict:
    r = rates(sections)
    rows, totals = [], {}
    for col in ("defaults", "fastest"):
        totals[col] = {"all_rows_s": 0.0, "goal_protocol_s": 0.0, "missing": []}
    for what, work, key, in_goal in PROTOCOL:
        row = {"what": what, "work": work, "rate_of": key, "in_goal_protocol": in_goal}
        for col in ("defaults", "fastest"):
            rate = r[key][col]
            seconds = work / rate["rate"] if rate["rate"] else None
            row[col] = {**rate, "seconds": seconds}
            t = totals[col]
            if seconds is None:
                t["missing"].append(what)
            for total, counts in (("all_rows_s", True), ("goal_protocol_s", in_goal)):
                if counts:  # a total with a part missing is no total
                    t[total] = None if seconds is None or t[total] is None else t[total] + seconds
        rows.append(row)
    batch = ((sections.get("trainer") or {}).get("result") or {}).get("batch")
    training = {col: {**r["training"][col], "steps": TRAIN_STEPS, "batch": batch,
                      "seconds": TRAIN_STEPS / r["training"][col]["rate"] if r["training"][col]["rate"] else None}
                for col in ("defaults", "fastest")}
    return {"rows": rows, "totals": totals, "training": training,
            "goal_protocol": f"every row but the exact bound of the train split (its mean and the gap from --terms "
                             f"{GAP_TERMS}, the proposal from the exact test bound)",
            "goals": goals(sections, totals, device_name)}


def goals(sections: dict, totals: dict, device_name: str | None) -> dict:
    bound = {r["setting"]: r["engine_share"] for r in _ok((sections.get("bound") or {}).get("result"))}
    network = (sections.get("network") or {}).get("result") or {}
    peak = {p: (b or {}).get("fraction_of_bf16_peak") for p, b in (network.get("best") or {}).items()}
    compiled = network.get("best_compiled") or {}
    fastest = totals["fastest"]
    return {
        "engine_share_at_most_10pct": {"measured": bound,
                                       "met": {k: v <= GOAL_ENGINE_SHARE for k, v in bound.items()}},
        "network_at_least_40pct_of_bf16_peak": {
            "best_fraction_by_precision": peak, "best_compiled": compiled.get("fraction_of_bf16_peak"),
            "met_by_precision": {k: v >= GOAL_PEAK_FRACTION for k, v in peak.items() if v is not None},
            "note": "the docs name no precision for Table 1 yet: the precision section's bits/dim decide"},
        "protocol_under_1h": {"device": device_name, "fastest_goal_protocol_s": fastest["goal_protocol_s"],
                              "complete": fastest["goal_protocol_s"] is not None,
                              "met": fastest["goal_protocol_s"] is not None and fastest["goal_protocol_s"] < GOAL_PROTOCOL_S,
                              "note": "the goal is for one H200; compare on that device"}}


def measure(ctx) -> dict:
    return project(ctx.results["sections"], (ctx.results.get("environment") or {}).get("device_name"))
