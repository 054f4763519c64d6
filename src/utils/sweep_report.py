"""What a sweep leaves in its directory, rewritten from the study after every trial by whichever worker ran it:
results.csv and results.md (one row per trial), best.yaml (the best trial as a plain run), summary.csv (seeds,
folds: mean, std, 95% confidence interval) and the optimization-history and parameter-importance plots.
"""

import copy
import csv
import math
import warnings
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from src.utils.atomic import atomic_write
from src.utils.optuna_study import SURPLUS_ATTR, WORKER_ATTR, retried_numbers
from src.utils.sweep_space import Sweep, set_path

RETRIED = "FAIL (retried)"


def result_rows(study: optuna.Study, sweep: Sweep) -> list[dict[str, Any]]:
    trials = study.get_trials(deepcopy=False)
    retried = retried_numbers(trials)
    rows = []
    for t in trials:
        if t.system_attrs.get(SURPLUS_ATTR):
            continue
        row = {"trial": t.number, "state": RETRIED if t.number in retried and t.state == TrialState.FAIL
               else t.state.name}
        row.update({key: t.params.get(key) for key in sweep.params})
        row[sweep.metric] = t.user_attrs.get("best_value")
        row.update(t.user_attrs.get("test_metrics") or {})
        row.update({"startup_s": t.user_attrs.get("startup_s"), "duration_s": t.user_attrs.get("duration_s"),
                    "worker": (t.system_attrs.get(WORKER_ATTR) or {}).get("host"),
                    "run_dir": t.user_attrs.get("run_dir"), "error": t.user_attrs.get("error"),
                    "log": t.user_attrs.get("log") if t.state == TrialState.FAIL else None})
        rows.append(row)
    return rows


def summary(rows: list[dict[str, Any]], sweep: Sweep) -> list[dict[str, Any]]:
    """Mean, sample std and a t-distribution 95% confidence interval per metric over the COMPLETE trials."""
    from scipy import stats

    done = [row for row in rows if row["state"] == "COMPLETE"]
    names = [sweep.metric, *dict.fromkeys(k for row in done for k in row if str(k).startswith("test/"))]
    table = []
    for name in names:
        values = [float(row[name]) for row in done if row.get(name) is not None]
        if not values:
            continue
        n, mean = len(values), sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else float("nan")
        half = float(stats.t.ppf(0.975, n - 1)) * std / math.sqrt(n) if n > 1 else float("nan")
        table.append({"metric": f"{name} (best)" if name == sweep.metric else name, "n": n, "mean": mean,
                      "std": std, "ci95_low": mean - half, "ci95_high": mean + half})
    return table


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    try:
        return study.best_trial
    except ValueError:  # no COMPLETE trial yet
        return None


def best_config(config: dict[str, Any], sweep: Sweep, trial: FrozenTrial) -> dict[str, Any]:
    """The complete config of `trial`, logging like a plain run of the experiment (logs/<experiment>/version_N)."""
    best = copy.deepcopy(config)
    for key, value in {**sweep.fixed, **trial.params}.items():
        set_path(best, sweep.paths.get(key, key), value)
    return best


def write_reports(study: optuna.Study, sweep: Sweep, sweep_dir: Path, config: dict[str, Any]) -> dict[str, Any]:
    """Every file rewritten whole from the study (a reader sees one version), so any worker can write them."""
    rows = result_rows(study, sweep)
    best = best_trial(study)
    table = summary(rows, sweep) if sweep.mode != "space" else []
    tests = dict.fromkeys(key for row in rows for key in row if key.startswith("test/"))
    columns = ["trial", "state", *sweep.params, sweep.metric, *tests, "startup_s", "duration_s", "worker", "run_dir",
               "error", "log"]
    try:
        _write_csv(sweep_dir / "results.csv", columns, rows)
        if table:
            _write_csv(sweep_dir / "summary.csv", list(table[0]), table)
        if best is not None:
            header = (f"# The best trial ({best.number}, {sweep.metric} {best.value:.4f}) of sweep {sweep.name}, as a "
                      f"plain run:\n#   python -m src.cli fit --config {sweep_dir / 'best.yaml'}\n")
            with atomic_write(sweep_dir / "best.yaml") as temp:
                temp.write_text(header + yaml.safe_dump(best_config(config, sweep, best), sort_keys=False))
        notes = write_plots(study, sweep, sweep_dir)
        with atomic_write(sweep_dir / "results.md") as temp:
            temp.write_text(markdown(rows, columns, table, sweep, best, sweep_dir, notes))
    except FileNotFoundError:  # another worker rewrote the same file at this moment: its version stands
        pass
    return {"rows": rows, "best": best, "summary": table}


def _write_csv(path: Path, columns: list[str], rows: list[dict[str, Any]]) -> None:
    with atomic_write(path) as temp, open(temp, "w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def write_plots(study: optuna.Study, sweep: Sweep, sweep_dir: Path) -> list[str]:
    """optimization_history.png, and param_importances.png for a space (Optuna's own PED-ANOVA evaluator)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as plots

    drawings = {"optimization_history.png": plots.plot_optimization_history}
    if sweep.mode == "space":
        drawings["param_importances.png"] = plots.plot_param_importances
    complete = sum(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False))
    notes = []
    for filename, draw in drawings.items():
        if complete < 2:
            notes.append(f"{filename}: drawn once 2 trials are COMPLETE")
            continue
        try:
            with warnings.catch_warnings():  # the matplotlib plots are experimental in Optuna
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                axes = draw(study, target_name=sweep.metric)
        except (ValueError, RuntimeError) as err:
            notes.append(f"{filename}: not drawn ({err})")
            continue
        figure = axes.figure
        figure.set_size_inches(9, 5)
        figure.tight_layout()
        with atomic_write(sweep_dir / filename) as temp:
            figure.savefig(temp, format="png", dpi=110)
        plt.close(figure)
    return notes


def markdown(rows: list[dict[str, Any]], columns: list[str], table: list[dict[str, Any]], sweep: Sweep,
             best: FrozenTrial | None, sweep_dir: Path, notes: list[str]) -> str:
    states: dict[str, int] = {}
    for row in rows:
        states[row["state"]] = states.get(row["state"], 0) + 1
    lines = [f"# Sweep {sweep.name}", "",
             f"{sweep.mode} sweep, objective {sweep.metric} ({sweep.direction}), {len(rows)} trials: "
             + ", ".join(f"{n} {state}" for state, n in states.items()), ""]
    if best is not None:
        lines += [f"Best: trial {best.number}, {sweep.metric} {best.value:.4f} ({params_text(best.params)}); rerun "
                  f"it: `python -m src.cli fit --config {sweep_dir / 'best.yaml'}`", ""]
    if table:
        lines += [f"## Over {sweep.mode}: mean, std, 95% confidence interval (t-distribution)", "",
                  "| metric | n | mean | std | 95% CI |", "|---|---|---|---|---|"]
        lines += [f"| {r['metric']} | {r['n']} | {r['mean']:.4f} | {r['std']:.4f} | "
                  f"[{r['ci95_low']:.4f}, {r['ci95_high']:.4f}] |" for r in table]
        lines.append("")
    lines += ["## Trials", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    lines += ["", *(f"- {note}" for note in notes)]
    return "\n".join(lines) + "\n"


def params_text(params: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}"
                     for key, value in params.items())


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")
