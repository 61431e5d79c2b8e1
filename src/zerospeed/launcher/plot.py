"""`zerospeed plot RUN_DIR -o out.png`: loss, learning rate and throughput of a run from its CSV monitor files.

RUN_DIR is the CSV monitor's directory (`csv_monitor.output_path/job_name`) or its
`output_path` when that holds one job. Reads `Train_Samples_train_loss.csv`,
`Train_Samples_lr.csv` and `Train_Samples_throughput.csv` (DeepSpeed's CSV format: a
`step,<name>` header, then `step,value` rows; the step is the global sample count) and
draws what is there with matplotlib's Agg backend. From Python: `plot_run(run_dir, out_png)`.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

HELP = "plot loss, lr and throughput of a training run from its csv_monitor files into a PNG"

# event file stem -> (panel title, y label)
PANELS = {
    "Train_Samples_train_loss": ("training loss", "loss"),
    "Train_Samples_lr": ("learning rate", "lr"),
    "Train_Samples_throughput": ("throughput", "samples/s"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="the csv_monitor directory (output_path/job_name) of the run")
    parser.add_argument("-o", "--output", default=None, help="PNG to write (default: RUN_DIR/training.png)")
    parser.add_argument("--title", default=None, help="figure title (default: the run directory's name)")


def run(args: argparse.Namespace) -> int:
    out = plot_run(args.run_dir, args.output, title=args.title)
    print(out)
    return 0


def find_csv_dir(run_dir: str | Path) -> Path:
    """The directory holding the event CSVs: run_dir itself, or its only job subdirectory."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"zerospeed plot: run directory {run_dir} does not exist")
    if any((run_dir / f"{stem}.csv").exists() for stem in PANELS):
        return run_dir
    jobs = [d for d in sorted(run_dir.iterdir()) if d.is_dir() and any((d / f"{s}.csv").exists() for s in PANELS)]
    if len(jobs) == 1:
        return jobs[0]
    wanted = ", ".join(f"{s}.csv" for s in PANELS)
    if jobs:
        raise FileNotFoundError(f"zerospeed plot: {run_dir} holds several jobs ({', '.join(d.name for d in jobs)}); "
                                "pass one of them")
    raise FileNotFoundError(f"zerospeed plot: no csv_monitor files ({wanted}) in {run_dir} or its subdirectories; "
                            "enable csv_monitor in the config and pass its output_path/job_name")


def read_series(path: Path) -> tuple[list[float], list[float]]:
    """(steps, values) of one CSV monitor file; repeated header rows (appended runs) are skipped."""
    steps, values = [], []
    with open(path, newline="") as handle:
        for row in csv.reader(handle):
            if len(row) < 2 or row[0] == "step":
                continue
            try:
                steps.append(float(row[0]))
                values.append(float(row[1]))
            except ValueError:
                continue
    return steps, values


def plot_run(run_dir: str | Path, out_png: str | Path | None = None, title: str | None = None) -> Path:
    """Draw the run's loss, lr and throughput (those present) into `out_png`; return its path."""
    try:
        import matplotlib
    except ImportError as error:
        raise ImportError("zerospeed plot needs matplotlib: pip install matplotlib") from error
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    csv_dir = find_csv_dir(run_dir)
    series = {stem: read_series(csv_dir / f"{stem}.csv") for stem in PANELS if (csv_dir / f"{stem}.csv").exists()}
    series = {stem: data for stem, data in series.items() if data[0]}
    if not series:
        raise ValueError(f"zerospeed plot: the csv_monitor files in {csv_dir} have no rows yet")
    out = Path(out_png) if out_png else csv_dir / "training.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(len(series), 1, figsize=(8, 2.6 * len(series)), sharex=True, squeeze=False)
    for ax, (stem, (steps, values)) in zip(axes[:, 0], series.items()):
        panel_title, ylabel = PANELS[stem]
        ax.plot(steps, values, marker="." if len(steps) < 50 else None, linewidth=1.2)
        ax.set_title(panel_title, fontsize=10)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        if stem == "Train_Samples_lr":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    axes[-1, 0].set_xlabel("samples")
    fig.suptitle(title or csv_dir.name)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
