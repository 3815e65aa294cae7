"""lpt.analysis.data_stats and ``lpt data-stats``: counts, shot groups, imbalance, the count plot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from lpt.analysis.data_stats import count_figure, count_stats, default_plot_path, split_stats
from lpt.cli import main
from lpt.config import ConfigError


def shared_splits() -> Path:
    """The shared split lists beside the repository, else /work/shared/splits."""
    here = Path(__file__).resolve().parents[2] / "shared" / "splits"
    return here if here.is_dir() else Path("/work/shared/splits")


def places_train() -> Path:
    path = shared_splits() / "places_lt" / "Places_LT_train.txt"
    if not path.is_file():
        pytest.skip(f"{path} not present: the shared split lists are not beside this checkout")
    return path


# ----------------------------------------------------------------------------- counts


def test_count_stats_groups_both_rules_at_the_boundaries():
    stats = count_stats([150, 101, 100, 21, 20, 19, 0, 150], ["a", "b", "c", "d", "e", "f", "g", "h"])
    assert stats["num_classes"] == 8 and stats["num_images"] == 561
    assert stats["largest"] == {"label": 0, "name": "a", "count": 150}  # the first of two equal classes
    assert stats["smallest"] == {"label": 6, "name": "g", "count": 0}
    assert stats["imbalance_ratio"] is None and stats["empty_classes"] == 1
    assert stats["shots"]["standard"] == {"many": 3, "medium": 3, "few": 2}  # 20 is medium
    assert stats["shots"]["official"] == {"many": 3, "medium": 2, "few": 3}  # 20 is few


def test_count_stats_imbalance_ratio():
    stats = count_stats([500, 50, 5])
    assert stats["imbalance_ratio"] == 100.0 and stats["smallest"]["name"] == "2"


def test_places_lt_train_list_statistics():
    stats = split_stats(str(places_train()))
    assert (stats["num_classes"], stats["num_images"]) == (365, 62_500)
    assert stats["largest"] == {"label": 7, "name": "amusement_park", "count": 4_980}
    assert stats["smallest"] == {"label": 88, "name": "chemistry_lab", "count": 5}
    assert stats["imbalance_ratio"] == 996.0 and stats["empty_classes"] == 0
    assert stats["shots"]["standard"] == {"many": 131, "medium": 163, "few": 71}
    assert stats["shots"]["official"] == {"many": 131, "medium": 157, "few": 77}


def test_places_lt_through_the_preset_gives_the_same_counts():
    path = places_train()
    by_preset = split_stats("places_lt", [f"data.train_list={path}"])
    assert by_preset["counts"] == split_stats(str(path))["counts"]
    assert by_preset["source"] == "training split of config 'places_lt' (data.source=list)"


def test_config_stats_apply_the_long_tail_profile(tmp_path):
    (tmp_path / "train.txt").write_text("".join(f"x/{i}.png {i % 10}\n" for i in range(200)))
    config = tmp_path / "lt.yaml"
    config.write_text(f"data: {{source: list, train_list: {tmp_path / 'train.txt'}, imbalance_ratio: 10}}\n")
    stats = split_stats(str(config))
    assert stats["counts"] == [20, 15, 11, 9, 7, 5, 4, 3, 2, 2]  # int(20 * 10 ** (-i / 9)); no image is opened
    assert stats["imbalance_ratio"] == 10.0


def test_inat_annotation_file_statistics(tmp_path):
    cats = [{"id": i, "name": f"sp{i}"} for i in range(3)]
    labels = [0, 0, 0, 2]
    (tmp_path / "train2018.json").write_text(json.dumps({
        "images": [{"id": i, "file_name": f"absent/{i}.jpg"} for i in range(4)],
        "annotations": [{"image_id": i, "category_id": y} for i, y in enumerate(labels)], "categories": cats}))
    stats = split_stats(str(tmp_path / "train2018.json"))
    assert stats["counts"] == [3, 0, 1] and stats["smallest"]["name"] == "sp1" and stats["empty_classes"] == 1


def test_target_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"'nowhere.txt' is neither a split list file.*presets: .*places_lt"):
        split_stats("nowhere.txt")
    (tmp_path / "l.txt").write_text("a.png 0\n")
    with pytest.raises(ConfigError, match=r"overrides \(data.root=x, ...\) apply to a preset or YAML config"):
        split_stats(str(tmp_path / "l.txt"), ["data.root=x"])
    (tmp_path / "bad.txt").write_text("a.png 0\nb.png one\n")
    with pytest.raises(ConfigError, match=r"bad.txt:2: label 'one' is not an integer"):
        split_stats(str(tmp_path / "bad.txt"))


# ----------------------------------------------------------------------------- plot


def test_count_figure_draws_log_counts_and_shot_boundaries():
    stats = count_stats([5, 500, 50, 150, 19, 100, 20])
    ax = count_figure(stats).axes[0]
    assert ax.get_yscale() == "log"
    (steps,) = ax.patches  # one artist, whatever the number of classes
    values, edges, _ = steps.get_data()
    assert values.tolist() == [500, 150, 100, 50, 20, 19, 5]  # sorted, largest first
    assert edges.tolist() == [-0.5, 0.5, 1.5, 2.5, 3.5, 4.5, 5.5, 6.5]
    lines = [(tuple(line.get_xdata()), tuple(line.get_ydata())) for line in ax.get_lines()]
    assert ((0, 1), (100, 100)) in lines and ((0, 1), (20, 20)) in lines  # axhline: axes-fraction x
    assert ((1.5, 1.5), (0, 1)) in lines and ((4.5, 4.5), (0, 1)) in lines  # many | medium | few


def test_count_figure_leaves_out_boundaries_no_class_reaches():
    ax = count_figure(count_stats([12, 3])).axes[0]
    assert len(ax.get_lines()) == 0 and len(ax.texts) == 0  # all classes few: no line at 20 or 100
    assert ax.get_ylim()[1] < 20


def test_default_plot_path():
    assert default_plot_path("/data/Places_LT_train.txt") == Path("Places_LT_train_counts.png")
    assert default_plot_path("places_lt", "out") == Path("out/places_lt_counts.png")


# ----------------------------------------------------------------------------- command line


def test_cli_prints_places_lt_statistics_and_writes_the_plot(tmp_path, capsys):
    assert main(["data-stats", str(places_train()), "--out", str(tmp_path / "plots")]) == 0
    out = capsys.readouterr().out
    for line in ("classes: 365", "images: 62,500", "largest class: 4,980 images (label 7, amusement_park)",
                 "smallest class: 5 images (label 88, chemistry_lab)", "imbalance ratio: 996.00",
                 "  standard           131     163    71   (many > 100, medium 20..100, few < 20)",
                 "  official           131     157    77   (many > 100, medium 21..100, few <= 20)"):
        assert line in out.splitlines(), line
    plot = tmp_path / "plots" / "Places_LT_train_counts.png"
    assert f"plot: {plot}" in out
    with Image.open(plot) as img:
        assert img.format == "PNG" and img.size == (960, 540)


@pytest.mark.filterwarnings("error")  # matplotlib's layout warnings included
def test_cli_default_plot_lands_in_the_current_folder(tmp_path, monkeypatch, capsys):
    (tmp_path / "split.txt").write_text("a.png 0\nb.png 0\nc.png 1\n")
    monkeypatch.chdir(tmp_path)
    assert main(["data-stats", "split.txt"]) == 0
    assert "imbalance ratio: 2.00" in capsys.readouterr().out
    assert (tmp_path / "split_counts.png").is_file()


def test_cli_error_is_one_line(capsys):
    assert main(["data-stats", "no_such_split.txt"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("lpt data-stats: error: 'no_such_split.txt'")
