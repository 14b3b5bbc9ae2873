"""results.md: the summary of results.json for a person (and for benchmarks/RESULTS.md), section by section.
Every number comes from results.json; a section without a result says why."""

from __future__ import annotations


def fmt(x, digits: int = 3) -> str:
    """A number in a few significant digits; '-' for a missing one."""
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        if x == 0:
            return "0"
        return f"{x:.{digits}g}" if 1e-3 <= abs(x) < 1e6 else f"{x:.{digits - 1}e}"
    return str(x)


def pct(x) -> str:
    return "-" if not isinstance(x, (int, float)) or isinstance(x, bool) else f"{100 * x:.1f}%"


def table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(c if isinstance(c, str) else fmt(c) for c in row) + " |" for row in rows]


def _result(data: dict, name: str) -> dict:
    return (data["sections"].get(name) or {}).get("result") or {}


def _network(r: dict) -> list[str]:
    if not r.get("rows"):
        return []
    peak = r.get("bf16_peak") or {}
    mm = r.get("bf16_matmul") or {}
    lines = [f"FLOPs per evaluation: {fmt(r.get('flops_per_eval', 0) / 1e9)} GFLOP ({r.get('flops_counted_by')}); "
             f"bf16 peak {fmt(peak.get('tflops'))} TFLOP/s ({peak.get('source')}); a {mm.get('n')}^3 bf16 matmul "
             f"attains {fmt(mm.get('tflops'))} TFLOP/s.", ""]
    batches = sorted({row["batch"] for row in r["rows"]})
    keys = []
    for row in r["rows"]:
        key = (row["precision"], row["channels_last"], row.get("compile"))
        if key not in keys:
            keys.append(key)
    body = []
    for p, cl, comp in keys:
        cells = {row["batch"]: (fmt(row["evals_per_s"]) if row.get("status") == "ok" else row.get("status", "-")[:12])
                 for row in r["rows"] if (row["precision"], row["channels_last"], row.get("compile")) == (p, cl, comp)}
        body.append([p, fmt(cl), comp or "off", *[cells.get(b, "") for b in batches]])
    lines += ["Evaluations per second by pairs per call:", ""]
    lines += table(["precision", "channels-last", "compile", *[str(b) for b in batches]], body) + [""]
    best = [[p, fmt(b["batch"]), fmt(b["channels_last"]), fmt(b["evals_per_s"]), fmt(b["tflops"]),
             pct(b.get("fraction_of_bf16_peak")), pct(b.get("fraction_of_bf16_matmul"))]
            for p, b in (r.get("best") or {}).items() if b]
    comp = r.get("best_compiled")
    if comp:
        best.append([f"{comp['precision']}, compiled ({fmt(comp.get('compile_seconds'))} s to compile)",
                     fmt(comp["batch"]), fmt(comp["channels_last"]), fmt(comp["evals_per_s"]), fmt(comp["tflops"]),
                     pct(comp.get("fraction_of_bf16_peak")), pct(comp.get("fraction_of_bf16_matmul"))])
    cb = r.get("cudnn_benchmark") or {}
    if "evals_per_s" in cb:
        best.append([f"{cb['precision']}, cudnn.benchmark on", fmt(cb["batch"]), fmt(cb["channels_last"]),
                     fmt(cb["evals_per_s"]), fmt(cb["tflops"]), pct(cb.get("fraction_of_bf16_peak")),
                     pct(cb.get("fraction_of_bf16_matmul"))])
    return lines + table(["best of", "batch", "channels-last", "evals/s", "TFLOP/s", "of bf16 peak",
                          "of bf16 matmul"], best)


def _rows(r: dict, header: list[str], keys: list[str]) -> list[str]:
    body = [[row.get("status", "-") if k == "status" else fmt(row.get(k)) for k in keys] for row in r.get("rows", [])]
    return table(header, body) if body else []


def _invariance(r: dict) -> list[str]:
    lines = []
    b = r.get("batch_sizes")
    if b:
        differ = f" (first: {b['first_terms_differing']})" if b["terms_differing"] else ""
        lines.append(f"- batch sizes {b['batches']} ({b['images']} images): identical terms {fmt(b['identical'])}; "
                     f"{b['terms_differing']} terms differ{differ}, at most {fmt(b['max_abs_term_diff'])} bits/dim "
                     f"per term, {fmt(b['max_abs_total_diff'])} per image total")
    k = r.get("kill_and_resume")
    if k and "identical" in k:
        lines.append(f"- kill-and-resume ({k['images']} images, shards of {k['shard_size']}): SIGKILL after "
                     f"{fmt(k['killed_after_s'])} s with {k['shards_at_kill']} of {k['shards_total']} shards written; "
                     f"resumed: identical terms {fmt(k['identical'])} (max {fmt(k['max_abs_term_diff'])}); {k['note']}")
    elif k:
        lines.append(f"- kill-and-resume: {k.get('status')}")
    return lines


def _projection(r: dict) -> list[str]:
    if not r.get("rows"):
        return []
    body = [[row["what"], fmt(row["work"]), f"{fmt(row['defaults']['rate'])} {row['defaults']['unit']}",
             fmt(_h(row["defaults"]["seconds"])), f"{fmt(row['fastest']['rate'])} {row['fastest']['unit']}",
             fmt(_h(row["fastest"]["seconds"])), fmt(row["in_goal_protocol"])] for row in r["rows"]]
    t = r["totals"]
    body.append(["**all rows**", "", "", fmt(_h(t["defaults"]["all_rows_s"])), "", fmt(_h(t["fastest"]["all_rows_s"])),
                 ""])
    body.append(["**the goal's protocol**", "", "", fmt(_h(t["defaults"]["goal_protocol_s"])), "",
                 fmt(_h(t["fastest"]["goal_protocol_s"])), ""])
    tr = r["training"]
    body.append([f"training, {fmt(tr['defaults']['steps'])} steps at batch {fmt(tr['defaults'].get('batch'))}", "",
                 f"{fmt(tr['defaults']['rate'])} steps/s", fmt(_h(tr["defaults"]["seconds"])),
                 f"{fmt(tr['fastest']['rate'])} steps/s", fmt(_h(tr["fastest"]["seconds"])), ""])
    lines = table(["part", "work", "rate at defaults", "hours", "fastest rate", "hours", "in the goal's protocol"], body)
    return lines + ["", f"The goal's protocol: {r['goal_protocol']}."]


def _h(seconds):
    return None if seconds is None else seconds / 3600


def _goals(r: dict) -> list[str]:
    g = r.get("goals")
    if not g:
        return []
    e, n, p = g["engine_share_at_most_10pct"], g["network_at_least_40pct_of_bf16_peak"], g["protocol_under_1h"]
    return [f"- the bound engine's own work at most 10% of the network's time: "
            f"{', '.join(f'{k} {pct(v)}' for k, v in e['measured'].items()) or '-'}",
            f"- the network at least 40% of bf16 peak: best by precision "
            f"{', '.join(f'{k} {pct(v)}' for k, v in n['best_fraction_by_precision'].items()) or '-'}; compiled "
            f"{pct(n['best_compiled'])} ({n['note']})",
            f"- the goal's protocol under one hour on one H200: {fmt(_h(p['fastest_goal_protocol_s']))} h at the fastest "
            f"settings on {p['device']} (complete: {fmt(p['complete'])}; {p['note']})"]


def markdown(data: dict) -> str:
    env = data.get("environment") or {}
    lines = [f"# ddpm-bench on a GPU: {env.get('device_name', '?')}{' (smoke run on the CPU)' if data.get('smoke') else ''}",
             "",
             f"- machine: {env.get('device_name')} ({env.get('memory_gib', '-')} GiB), driver {env.get('driver')}, "
             f"{env.get('cpu_count')} CPUs; Python {env.get('python')}, torch {env.get('torch')}, CUDA "
             f"{env.get('cuda')}, cuDNN {env.get('cudnn')}; ddpm-bench {data.get('ddpm_bench')}",
             f"- command: `{data.get('command')}`; plan {data.get('plan')}, started {data.get('started')}, "
             f"wall {fmt(data.get('wall_s'))} s of {fmt(data.get('budget_s'))} s"
             + (f", restarted {data['restarts']} time(s) after a section overran" if data.get("restarts") else ""),
             f"- model: {(data.get('model') or {}).get('recipe')} {(data.get('model') or {}).get('overrides') or ''}, "
             f"{fmt((data.get('model') or {}).get('params'))} parameters, {(data.get('model') or {}).get('weights')}",
             f"- install: {'; '.join(f'{k}: {v}' for k, v in (data.get('install') or {}).items()) or '-'}",
             "", "## Sections", ""]
    lines += table(["section", "status", "seconds", "budget s"],
                   [[name, s.get("status", "-"), fmt(s.get("seconds")), fmt(s.get("budget_s"))]
                    for name, s in data["sections"].items()])
    parts = {
        "Network alone": _network(_result(data, "network")),
        "Bound engine (nll, exact)": _rows(_result(data, "bound"), [
            "setting", "precision", "channels-last", "pairs/call", "images", "evals/s", "network alone evals/s",
            "engine's own share", "bits/dim", "status"], ["setting", "precision", "channels_last", "batch", "images",
                                                          "evals_per_s", "network_alone_evals_per_s", "engine_share",
                                                          "total_bpd", "status"]),
        "Bits/dim cost against fp32 (same images and noise)": _rows(_result(data, "precision"), [
            "variant", "bits/dim", "paired difference", "its s.e.", "max per image", "max per term", "at term",
            "terms differing", "identical", "status"], ["variant", "total_bpd", "paired_diff_mean", "paired_diff_stderr",
                                                       "max_abs_image_diff", "max_abs_term_diff", "term_of_max",
                                                       "terms_differing", "identical", "status"]),
        "Invariance on the device": _invariance(_result(data, "invariance")),
        "Sampler": _rows(_result(data, "sampler"), [
            "setting", "precision", "batch", "sampler", "steps", "s per step", "samples/s", "status"],
            ["setting", "precision", "batch", "sampler", "steps", "seconds_per_step", "samples_per_s", "status"]),
        "ODE likelihood (nll --ode)": _ode(_result(data, "ode")),
        f"Trainer (the recipe at batch {_result(data, 'trainer').get('batch', '-')})": _rows(_result(data, "trainer"), [
            "setting", "faithful", "steps/s", "ms/step", "status"], ["setting", "faithful", "steps_per_s",
                                                                      "ms_per_step", "status"]),
        "FID features": _fid(_result(data, "fid")),
        "Projection: the paper's protocol on this device": _projection(_result(data, "projection")),
        "Goals": _goals(_result(data, "projection")),
    }
    for title, body in parts.items():
        lines += ["", f"## {title}", ""] + (body or ["no result (see the section's status)"])
    return "\n".join(lines) + "\n"


def _ode(r: dict) -> list[str]:
    lines = _rows(r, ["images per solve", "images", "NFE per image", "s per image", "bits/dim", "status"],
                  ["batch", "images", "nfe_mean", "seconds_per_image", "total_bpd", "status"])
    t = r.get("trained_model")
    if t and t.get("status") == "ok":
        lines += ["", f"The packaged trained model: {fmt(t['nfe_mean'])} evaluations per image at rtol {fmt(t['rtol'])} "
                      f"({t['images']} images, {fmt(t['total_bpd'])} bits/dim)."]
    elif t:
        lines += ["", f"The packaged trained model: {t.get('status')}."]
    return lines


def _fid(r: dict) -> list[str]:
    if "features_per_s" not in r:
        return []
    f = r.get("fid_same_features") or {}
    return [f"{fmt(r['features_per_s'])} images/s ({r['images']} images, batch {r['batch']}, {r['precision']}); "
            f"extractor: {r['extractor']}.",
            f"FIDs on the same features ({f.get('what')}): torch-fidelity {fmt(f.get('torch-fidelity'))}, clean-fid "
            f"{fmt(f.get('clean-fid'))}, difference {fmt(f.get('abs_difference'))} (relative "
            f"{fmt(f.get('relative_difference'))})."]
