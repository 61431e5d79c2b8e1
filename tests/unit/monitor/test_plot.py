"""`zerospeed plot`: finding the CSV directory, reading appended files, clear errors, a PNG out."""

from __future__ import annotations

import pytest

from zerospeed.launcher.cli import main
from zerospeed.launcher.plot import find_csv_dir, plot_run, read_series


def write(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{a},{b}\r\n" for a, b in rows))


def test_read_series_skips_repeated_headers(tmp_path):
    path = tmp_path / "Train_Samples_lr.csv"
    write(path, [("step", "lr"), (8, 0.1), ("step", "lr"), (16, 0.2)])  # a resumed run appends a header
    assert read_series(path) == ([8.0, 16.0], [0.1, 0.2])


def test_find_csv_dir_descends_into_one_job_and_names_what_is_missing(tmp_path):
    write(tmp_path / "out" / "job" / "Train_Samples_train_loss.csv", [("step", "train_loss"), (8, 1.0)])
    assert find_csv_dir(tmp_path / "out") == tmp_path / "out" / "job"
    assert find_csv_dir(tmp_path / "out" / "job") == tmp_path / "out" / "job"
    with pytest.raises(FileNotFoundError, match="Train_Samples_train_loss.csv"):
        find_csv_dir(tmp_path)  # two levels down: not searched
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_csv_dir(tmp_path / "nope")
    write(tmp_path / "out" / "job2" / "Train_Samples_lr.csv", [("step", "lr"), (8, 1.0)])
    with pytest.raises(FileNotFoundError, match="several jobs"):
        find_csv_dir(tmp_path / "out")


def test_plot_cli_writes_png(tmp_path, capsys):
    for name, values in (("train_loss", [3.0, 2.5, 2.2]), ("lr", [0.1, 0.2, 0.3]), ("throughput", [10, 11, 12])):
        write(tmp_path / f"Train_Samples_{name}.csv", [("step", name)] + [(8 * (i + 1), v) for i, v in enumerate(values)])
    assert main(["plot", str(tmp_path)]) == 0
    out = tmp_path / "training.png"
    assert capsys.readouterr().out.strip() == str(out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    assert plot_run(tmp_path, tmp_path / "x" / "y.png").exists()
